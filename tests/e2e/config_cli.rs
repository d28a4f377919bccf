//! The command line and the process lifecycle: `--version`, `--help`, `--check` on valid and
//! invalid configs (errors name file, key and line), startup failures (bad config, port in
//! use even with SO_REUSEPORT), the default config path, and stopping on SIGTERM/SIGINT.

use crate::common::*;
use std::net::TcpListener;

fn start(config: &TempConfig) -> RunOutcome {
    run_to_exit(&["-c".as_ref(), config.path.as_os_str()], &[], None)
}

fn assert_config_ok(outcome: &RunOutcome) {
    assert_eq!(outcome.code(), Some(0), "{outcome:?}");
    assert!(outcome.stdout.contains("config ok"), "{outcome:?}");
}

/// True when `text` has `line N` or `:N:` for this line number.
fn names_line(text: &str, line: usize) -> bool {
    text.contains(&format!(":{line}:")) || text.contains(&format!("line {line}"))
}

#[test]
fn version_and_help_exit_zero() {
    let version = run_to_exit(&["--version"], &[], None);
    assert_eq!(version.code(), Some(0), "{version:?}");
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    let help = run_to_exit(&["--help"], &[], None);
    assert_eq!(help.code(), Some(0), "{help:?}");
    for flag in ["--config", "--check", "--workers"] {
        assert!(help.stdout.contains(flag), "help lacks {flag}: {help:?}");
    }
}

#[test]
fn check_accepts_a_valid_config_without_binding() {
    // Holding the configured port proves --check binds nothing.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("local_addr").port();
    let config = TestConfig::weighted(&[(free_port(), 2), (free_port(), 1)])
        .with(|c| c.server.port = Some(port))
        .write();
    assert_config_ok(&check_config(&config));
}

#[test]
fn check_accepts_a_minimal_config() {
    let config = TempConfig::new("[[backends]]\nurl = \"http://127.0.0.1:9001\"\n");
    assert_config_ok(&check_config(&config));
}

#[test]
fn check_accepts_every_documented_key() {
    let config = TempConfig::new(
        r#"[server]
host = "127.0.0.1"
port = 3000
workers = "auto"
pin_cores = true

[[backends]]
url = "http://127.0.0.1:9001"
weight = 1
health_check_path = "/health"

[[backends]]
url = "http://localhost:9002"
weight = 5

[load_balancing]
strategy = "weighted"

[health_checks]
enabled = true
interval_seconds = 30
timeout_seconds = 5
failure_threshold = 3
success_threshold = 2

[logging]
level = "info"
format = "json"
access_log = true

[timeouts]
connect_timeout_seconds = 10
request_timeout_seconds = 0.2
client_header_timeout_seconds = 10
idle_timeout_seconds = 60
io_timeout_seconds = 60

[upstream]
max_idle_per_backend = 64
idle_timeout_seconds = 60

[limits]
max_request_line_bytes = 8192
max_header_bytes = 65536
max_headers = 100
max_body_bytes = 0
"#,
    );
    assert_config_ok(&check_config(&config));
}

const BACKEND: &str = "[[backends]]\nurl = \"http://127.0.0.1:9001\"\n";

/// (what, config text, text the error must contain besides the path, line of the error).
fn invalid_configs() -> Vec<(&'static str, String, &'static str, Option<usize>)> {
    vec![
        (
            "syntax error",
            "[server]\nport = 3000\nworkers = 1\n[[backends]]\nurl = \"http://127.0.0.1:9001\n"
                .into(),
            "",
            Some(5),
        ),
        (
            "unknown key",
            format!("[server]\nport = 3000\nbogus_key = true\n{BACKEND}"),
            "bogus_key",
            Some(3),
        ),
        (
            "wrong type",
            format!("[server]\nport = \"eighty\"\n{BACKEND}"),
            "port",
            Some(2),
        ),
        (
            "port out of range",
            format!("[server]\nhost = \"127.0.0.1\"\nport = 70000\n{BACKEND}"),
            "port",
            Some(3),
        ),
        (
            "bad url scheme",
            format!("[server]\nport = 3000\n{BACKEND}[[backends]]\nurl = \"ftp://127.0.0.1:21\"\n"),
            "backends[1].url",
            Some(6),
        ),
        (
            "url host not an IP",
            "[[backends]]\nurl = \"http://example.com:80\"\n".into(),
            "backends[0].url",
            Some(2),
        ),
        (
            "weight 0",
            format!("{BACKEND}weight = 0\n"),
            "backends[0].weight",
            Some(3),
        ),
        (
            "workers 0",
            format!("[server]\nworkers = 0\n{BACKEND}"),
            "workers",
            Some(2),
        ),
        (
            "unknown strategy",
            format!("{BACKEND}[load_balancing]\nstrategy = \"random\"\n"),
            "strategy",
            Some(4),
        ),
        (
            "empty backends",
            "backends = []\n".into(),
            "backends",
            Some(1),
        ),
        (
            "no backends",
            "[server]\nport = 3000\n".into(),
            "backends",
            None,
        ),
    ]
}

#[test]
fn invalid_configs_are_rejected_naming_file_key_and_line() {
    for (what, toml, key, line) in invalid_configs() {
        let config = TempConfig::new(&toml);
        let path = config.path.to_str().expect("utf-8 temp path");
        for (mode, outcome) in [
            ("--check", check_config(&config)),
            ("startup", start(&config)),
        ] {
            assert_eq!(outcome.code(), Some(1), "{what} ({mode}): {outcome:?}");
            assert!(
                !outcome.stdout.contains("config ok"),
                "{what} ({mode}): {outcome:?}"
            );
            let stderr = &outcome.stderr;
            assert!(
                stderr.contains(path),
                "{what} ({mode}): path missing: {outcome:?}"
            );
            assert!(
                stderr.contains(key),
                "{what} ({mode}): {key:?} missing: {outcome:?}"
            );
            match line {
                Some(line) => assert!(
                    names_line(stderr, line),
                    "{what} ({mode}): line {line} missing: {outcome:?}"
                ),
                None => assert!(
                    (1..=3).any(|l| names_line(stderr, l)),
                    "{what} ({mode}): no line number: {outcome:?}"
                ),
            }
        }
    }
}

#[test]
fn default_config_path_is_config_toml_in_the_working_directory() {
    let config = TempConfig::new(BACKEND);
    assert_config_ok(&run_to_exit(&["--check"], &[], Some(config.dir.path())));
}

fn assert_port_in_use_fails(port: u16) {
    let config = TestConfig::new(&[free_port()])
        .with(|c| c.server.port = Some(port))
        .write();
    let outcome = start(&config);
    assert_ne!(outcome.code(), Some(0), "{outcome:?}");
    assert!(
        outcome
            .stderr
            .to_lowercase()
            .contains("address already in use"),
        "{outcome:?}"
    );
}

#[test]
fn port_held_by_a_plain_listener_fails_startup() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    assert_port_in_use_fails(held.local_addr().expect("local_addr").port());
}

#[test]
fn port_held_by_a_reuseport_listener_fails_startup() {
    let (_held, port) = raw_listener(true, 16);
    assert_port_in_use_fails(port);
}

#[test]
fn sigterm_and_sigint_stop_the_proxy() {
    let backend = Backend::fixed("ok");
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut proxy = Proxy::start(&TestConfig::new(&[backend.port]));
        proxy.connect().get_ok("/");
        proxy.signal_and_wait(signal);
    }
}
