//! The admin API against browsers: cross-site form posts (403, 415), DNS rebinding (421 for a
//! Host that is not an IP or localhost, unless the token vouches), the JSON and no-body posts a
//! script sends still working, and no unauthenticated listener beyond loopback unless asked
//! for: refused by `--check`, at start and by a reload; started with a warning when allowed.

use crate::common::*;
use crate::common::{admin::*, live_backend::*};

/// The Host a script on this machine sends to the admin API.
fn own_host(admin: &Admin) -> String {
    format!("127.0.0.1:{}", admin.port)
}

/// `method path` with exactly `headers` and `body`, on a new connection.
fn raw(admin: &Admin, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Message {
    admin.send_raw(&admin_request_bytes(method, path, headers, body.as_bytes()))
}

/// Two live backends behind the proxy, the admin API on with its defaults (no token).
fn start_two() -> (LiveBackend, LiveBackend, Proxy, Admin) {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    let (proxy, admin) = start_with_admin(TestConfig::new(&[a.port, b.port]));
    (a, b, proxy, admin)
}

#[test]
fn cross_site_posts_are_refused_and_change_nothing() {
    let (a, _b, proxy, admin) = start_two();
    let host = own_host(&admin);
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    for origin in ["http://attacker.example", "null", "http://127.0.0.1:1"] {
        let response = raw(
            &admin,
            "POST",
            "/backends/0/drain",
            &[("Host", &host), ("Origin", origin), form],
            "x=1",
        );
        assert_eq!(response.status(), 403, "Origin {origin}: {response:?}");
        assert!(response.text().contains("origin"), "{response:?}");
        // The JSON type does not help another origin either.
        let response = raw(
            &admin,
            "POST",
            "/backends/0/drain",
            &[
                ("Host", &host),
                ("Origin", origin),
                ("Content-Type", "application/json"),
            ],
            "{}",
        );
        assert_eq!(response.status(), 403, "Origin {origin}: {response:?}");
    }
    // A form post without Origin (an old browser): its media type gives it away, body or not.
    for body in ["x=1", ""] {
        let response = raw(
            &admin,
            "POST",
            "/backends/0/drain",
            &[("Host", &host), form],
            body,
        );
        assert_eq!(response.status(), 415, "form body {body:?}: {response:?}");
    }
    let entry = admin.backend(0);
    assert_eq!(entry["drained"], false, "{entry}");
    // Traffic still reaches both backends.
    let counts = spread(&proxy, 10);
    assert_eq!(counts.get(a.name()), Some(&5), "{counts:?}");
}

#[test]
fn weight_needs_a_json_body_type() {
    let (_a, _b, _proxy, admin) = start_two();
    let host = own_host(&admin);
    for media in [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let response = raw(
            &admin,
            "POST",
            "/backends/1/weight",
            &[("Host", &host), ("Content-Type", media)],
            "5",
        );
        assert_eq!(response.status(), 415, "{media}: {response:?}");
        assert!(response.text().contains("application/json"), "{response:?}");
    }
    // A body without any type is no better.
    let response = raw(
        &admin,
        "POST",
        "/backends/1/weight",
        &[("Host", &host)],
        "5",
    );
    assert_eq!(response.status(), 415, "{response:?}");
    assert_eq!(admin.backend(1)["weight"], 1);
}

#[test]
fn json_posts_from_scripts_and_the_own_origin_work() {
    let (_a, _b, _proxy, admin) = start_two();
    let host = own_host(&admin);
    let localhost = format!("localhost:{}", admin.port);
    let own_origin = format!("http://{host}");
    let localhost_origin = format!("http://{localhost}");
    let json = ("Content-Type", "application/json");
    let set_weight = |headers: &[(&str, &str)], body: &str, weight: u64| {
        let response = raw(&admin, "POST", "/backends/1/weight", headers, body);
        assert_eq!(response.status(), 200, "{headers:?} {body}: {response:?}");
        assert_eq!(admin.backend(1)["weight"], weight);
    };
    // What the README's curl sends: a bare number, or the object, typed JSON.
    set_weight(&[("Host", &host), json], "5", 5);
    set_weight(
        &[
            ("Host", &host),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        "{\"weight\": 6}",
        6,
    );
    // From the admin's own page, by address or as localhost.
    set_weight(&[("Host", &host), json, ("Origin", &own_origin)], "7", 7);
    set_weight(
        &[("Host", &localhost), json, ("Origin", &localhost_origin)],
        "8",
        8,
    );
    // No body, no type, no Origin: how curl -X POST drains.
    let response = raw(&admin, "POST", "/backends/0/drain", &[("Host", &host)], "");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(admin.backend(0)["drained"], true);
    let response = raw(
        &admin,
        "POST",
        "/backends/0/enable",
        &[("Host", &host), ("Origin", &own_origin)],
        "",
    );
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(admin.backend(0)["drained"], false);
}

#[test]
fn a_host_that_is_not_an_address_is_misdirected_without_a_token() {
    let (_a, _b, _proxy, admin) = start_two();
    for host in [
        "attacker.example",
        &format!("attacker.example:{}", admin.port),
        "127.0.0.1.nip.io",
    ] {
        let response = raw(&admin, "GET", "/status", &[("Host", host)], "");
        assert_eq!(response.status(), 421, "Host {host}: {response:?}");
        let text = response.text();
        assert!(text.contains("IP address or localhost"), "{text}");
        assert!(!text.contains("127.0.0.1:"), "leaks an address: {text}");
        let response = raw(&admin, "POST", "/backends/0/drain", &[("Host", host)], "");
        assert_eq!(response.status(), 421, "Host {host}: {response:?}");
    }
    assert_eq!(admin.backend(0)["drained"], false);
    for host in [
        own_host(&admin),
        format!("localhost:{}", admin.port),
        "localhost".to_string(),
        format!("[::1]:{}", admin.port),
    ] {
        let response = raw(&admin, "GET", "/status", &[("Host", &host)], "");
        assert_eq!(response.status(), 200, "Host {host}: {response:?}");
    }
}

#[test]
fn with_a_token_any_host_may_ask_with_it() {
    let a = LiveBackend::start("a");
    let (_proxy, admin) = start_with_admin(
        TestConfig::new(&[a.port]).with(|c| c.admin.token = Some("s3cret-token".into())),
    );
    let host = "admin.example.internal";
    let response = raw(
        &admin,
        "GET",
        "/status",
        &[("Host", host), ("Authorization", "Bearer s3cret-token")],
        "",
    );
    assert_eq!(response.status(), 200, "{response:?}");
    let response = raw(&admin, "GET", "/status", &[("Host", host)], "");
    assert_eq!(response.status(), 401, "{response:?}");
    let response = raw(
        &admin,
        "POST",
        "/backends/0/weight",
        &[
            ("Host", host),
            ("Authorization", "Bearer s3cret-token"),
            ("Content-Type", "application/json"),
        ],
        "4",
    );
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(admin.backend(0)["weight"], 4);
}

/// A config with the admin API on `0.0.0.0`, and `change` applied.
fn remote_admin_config(change: impl FnOnce(&mut TestConfig)) -> TestConfig {
    TestConfig::new(&[free_port()])
        .with(|c| c.admin.host = Some("0.0.0.0".into()))
        .admin_api()
        .with(change)
}

/// The 1-based line of the first line of `toml` that starts with `prefix`.
fn line_of(toml: &str, prefix: &str) -> usize {
    toml.lines()
        .position(|l| l.starts_with(prefix))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no {prefix:?} in\n{toml}"))
}

#[test]
fn an_unauthenticated_admin_beyond_loopback_refuses_to_start() {
    let toml = remote_admin_config(|_| {}).to_toml();
    let config = TempConfig::new(&toml);
    let expected = format!(
        "{}:{}:1: admin.host:",
        config.path.display(),
        line_of(&toml, "host = \"0.0.0.0\"")
    );
    let path = config.path.as_os_str();
    for args in [
        vec!["--check".as_ref(), "-c".as_ref(), path],
        vec!["-c".as_ref(), path],
    ] {
        let outcome = run_to_exit(&args, &[], None);
        assert_ne!(outcome.code(), Some(0), "{outcome:?}");
        assert!(outcome.stderr.contains(&expected), "{outcome:?}");
        assert!(
            outcome.stderr.contains("allow_unauthenticated_remote"),
            "{outcome:?}"
        );
    }
}

#[test]
fn allowed_unauthenticated_remote_admin_starts_with_a_warning() {
    let config = remote_admin_config(|c| c.admin.allow_unauthenticated_remote = Some(true));
    let outcome = run_to_exit(
        &["--check", "-c", config.write().path.to_str().unwrap()],
        &[],
        None,
    );
    assert_eq!(outcome.code(), Some(0), "{outcome:?}");
    let proxy = Proxy::start(&config);
    let warning = proxy.wait_log_lines(1, "warning of the open admin API", |line| {
        line.contains("WARN") && line.contains("without a token")
    });
    assert!(
        warning[0].contains("allow_unauthenticated_remote"),
        "{warning:?}"
    );
    let admin = Admin::of(&config);
    assert_eq!(admin.get("/healthz").status(), 200);
}

#[test]
fn a_reload_cannot_take_the_token_from_a_remote_admin() {
    let config = remote_admin_config(|c| c.admin.token = Some("s3cret-token".into()));
    let proxy = Proxy::start(&config);
    let admin = Admin::of(&config);
    // The file moves the admin API to loopback (which needs a restart) and drops the token.
    let moved = config.with(|c| {
        c.admin.host = Some("127.0.0.1".into());
        c.admin.token = None;
    });
    proxy.write_config(&moved.to_toml());
    let response = admin.post("/reload", "");
    assert_eq!(response.status(), 422, "{response:?}");
    assert!(response.text().contains("admin.token"), "{response:?}");
    let anonymous = Admin {
        port: admin.port,
        token: None,
    };
    assert_eq!(anonymous.get("/status").status(), 401);
    assert_eq!(admin.status()["config_generation"], 1);
}
