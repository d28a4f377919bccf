//! Reload and shutdown end to end: SIGHUP under load swapping backends with no failed request;
//! `POST /reload` answering the changes; an invalid config kept out (SIGHUP and POST); SIGTERM
//! letting an in-flight request finish while refusing new connections and closing idle ones;
//! the shutdown timeout; sd_notify messages; and `systemd-analyze verify` of the unit file.

use crate::common::config::Strategy;
use crate::common::proxy::wait_or_kill;
use crate::common::*;
use crate::common::{admin::*, live_backend::*, load::*, notify::*};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A client thread sending `GET path` on its own connection; yields the outcome and its time.
fn spawn_request(
    port: u16,
    path: &'static str,
) -> std::thread::JoinHandle<(std::io::Result<Message>, Duration)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut conn = HttpConn::connect(port);
        conn.send(&get_request(path));
        (conn.read_response("GET"), started.elapsed())
    })
}

#[test]
fn sighup_under_load_adds_removes_and_reweights_without_a_failed_request() {
    let (a, b, c) = (
        LiveBackend::start("a"),
        LiveBackend::start("b"),
        LiveBackend::start("c"),
    );
    let config = TestConfig::weighted(&[(a.port, 1), (b.port, 1)])
        .health_checks(0.2, 0.5, 2, 1)
        .with(|c| {
            c.load_balancing.strategy = Some(Strategy::Weighted);
            c.server.workers = Some(2);
        });
    let (proxy, admin) = start_with_admin(config.clone());
    let new_toml = config
        .admin_api()
        .in_front_of(&[(a.port, 3), (c.port, 1)])
        .to_toml();
    b.wait_probes(1);

    let clients = 4;
    let load = Load::start(proxy.port, clients, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(600));
    proxy.write_config(&new_toml);
    let signalled = Instant::now();
    proxy.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(3), "config generation 2", || {
        admin.status()["config_generation"] == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let settled = Instant::now();
    let (b_requests, b_probes) = (b.requests(), b.probes());
    std::thread::sleep(Duration::from_millis(1200));
    let report = load.stop();

    report.assert_no_failures();
    report.assert_every_client_active_after(clients, settled);
    assert!(
        report
            .outcomes
            .iter()
            .any(|o| o.at < signalled && o.result.as_deref() == Ok("b")),
        "b served nothing before the reload"
    );
    assert_eq!(
        b.requests(),
        b_requests,
        "the removed backend got new requests"
    );
    assert_eq!(b.probes(), b_probes, "the removed backend is still probed");
    let counts = report.counts_since(settled);
    assert_eq!(counts.get("b"), None, "{counts:?}");
    let (on_a, on_c) = (
        counts.get("a").copied().unwrap_or(0),
        counts.get("c").copied().unwrap_or(0),
    );
    assert!(on_c > 0, "the added backend got no traffic: {counts:?}");
    assert!(
        on_a.abs_diff(3 * on_c) <= (on_a + on_c) / 10 + 4,
        "expected a:c = 3:1 after the reload, got {counts:?}"
    );
    proxy.wait_log_lines(1, "the reload", |l| l.contains("configuration reloaded"));
    wait_until(
        Duration::from_secs(3),
        "pooled connections to b closed",
        || b.open_connections() == 0,
    );
}

#[test]
fn post_reload_answers_the_changes_as_json() {
    let (a, b, c) = (
        LiveBackend::start("a"),
        LiveBackend::start("b"),
        LiveBackend::start("c"),
    );
    let config = TestConfig::weighted(&[(a.port, 1), (b.port, 1)]).admin_api();
    let (proxy, admin) = (Proxy::start(&config), Admin::of(&config));
    let counts = spread(&proxy, 10);
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&5), Some(&5)));

    proxy.write_config(&config.in_front_of(&[(a.port, 2), (c.port, 1)]).to_toml());
    let response = admin.post("/reload", "");
    assert_eq!(response.status(), 200, "{response:?}");
    let body = json_body(&response);
    assert_eq!(body["reloaded"], true, "{body:#}");
    let changes = &body["changes"];
    assert_eq!(changes["generation"], 2, "{body:#}");
    assert_eq!(changes["added"], serde_json::json!([c.url()]), "{body:#}");
    assert_eq!(changes["removed"], serde_json::json!([b.url()]), "{body:#}");
    assert_eq!(
        changes["reweighted"],
        serde_json::json!([[a.url(), 1, 2]]),
        "{body:#}"
    );
    assert_eq!(
        changes["restart_required"],
        serde_json::json!([]),
        "{body:#}"
    );

    let status = admin.status();
    assert_eq!(status["config_generation"], 2);
    let urls: Vec<&str> = status["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["url"].as_str().expect("url"))
        .collect();
    assert_eq!(urls, [a.url(), c.url()]);
    let b_requests = b.requests();
    let counts = spread(&proxy, 12);
    // Weights 2:1 (round robin is weighted).
    assert_eq!(
        (counts.get("a"), counts.get("c")),
        (Some(&8), Some(&4)),
        "{counts:?}"
    );
    assert_eq!(b.requests(), b_requests);
}

#[test]
fn invalid_config_on_sighup_or_post_reload_keeps_the_running_one() {
    let (a, b, c) = (
        LiveBackend::start("a"),
        LiveBackend::start("b"),
        LiveBackend::start("c"),
    );
    let config = TestConfig::weighted(&[(a.port, 1), (b.port, 1)]).admin_api();
    let (proxy, admin) = (Proxy::start(&config), Admin::of(&config));
    let expect_old_spread = || {
        let counts = spread(&proxy, 10);
        assert_eq!(
            (counts.get("a"), counts.get("b")),
            (Some(&5), Some(&5)),
            "traffic changed: {counts:?}"
        );
        assert_eq!(
            c.requests(),
            0,
            "a backend of the refused config got traffic"
        );
    };
    expect_old_spread();

    // Weight 0 is out of range; c would be added if the file were taken.
    proxy.write_config(&config.in_front_of(&[(a.port, 0), (c.port, 1)]).to_toml());
    proxy.signal(libc::SIGHUP);
    proxy.wait_log_lines(1, "the refused reload", |l| {
        l.contains("ERROR") && l.contains("reload refused") && l.contains("backends[0].weight")
    });
    assert_eq!(admin.status()["config_generation"], 1);
    expect_old_spread();

    let response = admin.post("/reload", "");
    assert_eq!(response.status(), 422, "{response:?}");
    let body = json_body(&response);
    assert_eq!(body["reloaded"], false, "{body:#}");
    let errors = body["errors"].as_array().expect("errors array");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap_or("").contains("backends[0].weight")),
        "{body:#}"
    );

    // Not TOML at all: refused the same way.
    proxy.write_config("this is = = not toml\n");
    assert_eq!(admin.post("/reload", "").status(), 422);
    proxy.signal(libc::SIGHUP);
    proxy.wait_log_lines(2, "two refused SIGHUP reloads", |l| {
        l.contains("reload refused")
    });
    assert_eq!(admin.status()["config_generation"], 1);
    expect_old_spread();
}

/// A proxy with one live backend and the given `[server] shutdown_timeout_seconds`.
fn proxy_with_shutdown_timeout(seconds: f64) -> (LiveBackend, Proxy) {
    let backend = LiveBackend::start("a");
    let (proxy, _admin) = start_with_admin(
        TestConfig::new(&[backend.port])
            .with(|c| c.server.shutdown_timeout_seconds = Some(seconds)),
    );
    (backend, proxy)
}

/// Sends SIGTERM and returns when it was sent.
fn sigterm(proxy: &Proxy) -> Instant {
    proxy.signal(libc::SIGTERM);
    Instant::now()
}

#[test]
fn sigterm_finishes_the_in_flight_request_and_refuses_new_connections() {
    let (backend, mut proxy) = proxy_with_shutdown_timeout(5.0);
    let slow = spawn_request(proxy.port, "/slow");
    wait_until(IO_TIMEOUT, "the slow request at the backend", || {
        backend.requests_to("/slow") == 1
    });

    let signalled = sigterm(&proxy);
    let took = wait_until(Duration::from_secs(1), "new connections refused", || {
        proxy.refuses_new_connections()
    });
    eprintln!("new connections refused {took:?} after SIGTERM");

    let (response, _) = slow.join().expect("slow client");
    let response = response.expect("the in-flight request must complete");
    assert_eq!(response.status(), 200);
    assert!(
        response.body == pattern(SLOW_BODY_LEN, SLOW_BODY_SEED),
        "in-flight body cut or altered ({} of {SLOW_BODY_LEN} bytes)",
        response.body.len()
    );
    assert!(
        response.head.connection_has("close"),
        "the last response while draining must say Connection: close: {:?}",
        response.head
    );
    let status = proxy.wait_exit();
    let exited = signalled.elapsed();
    assert!(status.success(), "exit {status}:\n{}", proxy.logs());
    assert!(
        exited < Duration::from_secs(5),
        "exited {exited:?} after SIGTERM"
    );
}

#[test]
fn sigterm_closes_an_idle_keep_alive_connection_promptly() {
    assert_sigterm_closes_idle_connection(Duration::ZERO);
}

#[test]
fn sigterm_closes_a_parked_keep_alive_connection_promptly() {
    // Quiet past the parking point: the connection has no task, only its parking-lot record.
    assert_sigterm_closes_idle_connection(Duration::from_millis(1200));
}

fn assert_sigterm_closes_idle_connection(quiet_before: Duration) {
    let (_backend, mut proxy) = proxy_with_shutdown_timeout(5.0);
    let mut conn = proxy.connect();
    conn.get_ok("/one");
    thread::sleep(quiet_before);

    let signalled = sigterm(&proxy);
    conn.expect_closed();
    let closed = signalled.elapsed();
    assert!(
        closed < Duration::from_secs(1),
        "idle connection closed after {closed:?}"
    );
    let status = proxy.wait_exit();
    assert!(status.success(), "exit {status}");
    // Nothing in flight: it must not sit out the 5 s shutdown timeout.
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
}

#[test]
fn shutdown_timeout_bounds_a_request_that_never_completes() {
    let (backend, mut proxy) = proxy_with_shutdown_timeout(1.0);
    let hanging = spawn_request(proxy.port, "/hang");
    wait_until(IO_TIMEOUT, "the hanging request at the backend", || {
        backend.requests_to("/hang") == 1
    });

    let signalled = sigterm(&proxy);
    let status = proxy.wait_exit();
    let exited = signalled.elapsed();
    assert!(status.success(), "exit {status}:\n{}", proxy.logs());
    assert!(
        exited >= Duration::from_millis(900),
        "exited after {exited:?}: it did not wait for the in-flight request"
    );
    assert!(
        exited <= Duration::from_millis(2000),
        "exited {exited:?} after SIGTERM, shutdown_timeout_seconds = 1"
    );
    let (outcome, _) = hanging.join().expect("hanging client");
    match outcome {
        Err(e) => assert!(is_closed_error(&e), "client saw {e}"),
        Ok(response) => assert!(response.status() >= 500, "{response:?}"),
    }
    assert!(
        proxy.stdout().contains("shutdown timeout"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn sd_notify_ready_reloading_and_stopping() {
    let mut notify = NotifySocket::bind();
    let socket_path = notify.path_str().to_string();
    let backend = LiveBackend::start("a");
    let config = TestConfig::new(&[backend.port]).admin_api();
    let env = [("NOTIFY_SOCKET", socket_path.as_str())];
    let mut proxy = Proxy::start_with_env(&config, &env);
    let admin = Admin::of(&config);
    notify.expect_line("READY=1");
    // A SIGHUP right at READY=1 can kill the process: that is
    // `sighup_as_soon_as_the_proxy_accepts_reloads_it`; this test is about the messages.
    std::thread::sleep(Duration::from_millis(100));

    proxy.signal(libc::SIGHUP);
    let reloading = notify.expect_line("RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC with RELOADING=1: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    let now = monotonic_usec();
    assert!(
        usec <= now && now - usec < 5_000_000,
        "MONOTONIC_USEC={usec} is not the monotonic clock now ({now})"
    );
    notify.expect_line("READY=1");
    assert_eq!(admin.status()["config_generation"], 2);

    proxy.signal(libc::SIGTERM);
    notify.expect_line("STOPPING=1");
    let status = proxy.wait_exit();
    assert!(status.success(), "exit {status}");
}

/// A proxy process started directly (not through `Proxy::launch`, which polls readiness every
/// 20 ms), so a signal can follow the first accepted connection within a millisecond.
struct EagerProxy {
    child: std::process::Child,
    config: TempConfig,
}

impl EagerProxy {
    fn start(config: &TestConfig) -> EagerProxy {
        let (port, config) = (config.port(), config.write());
        let log =
            |name: &str| std::fs::File::create(config.dir.path().join(name)).expect("log file");
        let child = Command::new(crate::common::proxy::BIN)
            .arg("-c")
            .arg(&config.path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .expect("spawn ringproxy");
        let proxy = EagerProxy { child, config };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + IO_TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "ringproxy never accepted:\n{}",
                proxy.stdout()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        proxy
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.config.dir.path().join("stdout.log")).unwrap_or_default()
    }
}

impl Drop for EagerProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_as_soon_as_the_proxy_accepts_reloads_it() {
    // Once it accepts connections (and once it told systemd READY=1), SIGHUP means reload: a
    // `systemctl reload` right after start must not kill the service. A few tries, since the
    // gap being checked is short.
    let backend = LiveBackend::start("a");
    for attempt in 0..5 {
        let config = TestConfig::new(&[backend.port]);
        let port = config.port();
        let mut proxy = EagerProxy::start(&config);
        let pid = libc::pid_t::try_from(proxy.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = proxy.child.try_wait().expect("try_wait") {
            panic!(
                "attempt {attempt}: ringproxy died ({status}) from a SIGHUP sent as soon as it \
                 accepted connections; log:\n{}",
                proxy.stdout()
            );
        }
        assert!(
            proxy.stdout().contains("configuration reloaded"),
            "{}",
            proxy.stdout()
        );
        get_backend(&mut HttpConn::connect(port), "/after-reload");
    }
}

/// Runs `command` with a time limit; `None` if it did not finish in time (it is killed).
fn run_bounded(command: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let status = wait_or_kill(&mut child, limit)?;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut stdout)
        .ok()?;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut stderr)
        .ok()?;
    Some(Output {
        status,
        stdout,
        stderr,
    })
}

fn verify_unit(unit: &Path) -> Option<Output> {
    run_bounded(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .arg(unit),
        Duration::from_secs(30),
    )
}

#[test]
fn systemd_unit_verifies_against_the_built_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A trivial unit first: if even that fails, systemd-analyze cannot run here.
    let probe = dir.path().join("probe.service");
    std::fs::write(
        &probe,
        "[Unit]\nDescription=probe\n\n[Service]\nExecStart=/bin/true\n",
    )
    .expect("write probe unit");
    match verify_unit(&probe) {
        Some(out) if out.status.success() => {}
        Some(out) => {
            eprintln!(
                "note: skipped: systemd-analyze verify cannot run here ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return;
        }
        None => {
            eprintln!("note: skipped: systemd-analyze is not installed or did not finish");
            return;
        }
    }

    let config = dir.path().join("config.toml");
    std::fs::write(&config, TestConfig::new(&[free_port()]).to_toml()).expect("config");
    let config = config.to_str().expect("UTF-8 path");
    // The unit's ExecStartPre, run for real: the config passes --check.
    let check = crate::common::proxy::run_to_exit(&["--check", "-c", config], &[], None);
    assert_eq!(check.code(), Some(0), "{check:?}");

    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ringproxy.service");
    let text = std::fs::read_to_string(&source).expect("read scripts/ringproxy.service");
    for original in ["/usr/local/bin/ringproxy", "/etc/ringproxy/config.toml"] {
        assert!(
            text.contains(original),
            "the unit no longer names {original}"
        );
    }
    let text = text
        .replace("/usr/local/bin/ringproxy", crate::common::proxy::BIN)
        .replace("/etc/ringproxy/config.toml", config);
    let unit = dir.path().join("ringproxy.service");
    std::fs::write(&unit, &text).expect("write unit");
    let out = verify_unit(&unit).expect("systemd-analyze verify of the unit finished");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{stderr}\n--- unit ---\n{text}",
        out.status
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ringproxy.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze warns about the unit:\n{}",
        complaints.join("\n")
    );
}
