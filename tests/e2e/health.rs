//! Health checks end to end: a killed backend goes down within `interval x failure_threshold`
//! plus one interval and comes back after `success_threshold` good checks; a 500 or a hanging
//! health endpoint takes a backend down; all backends down gives fast 503s; passive ejection
//! with active checks off, with its half-open trial; no probes when checks are disabled; no
//! failed request while a backend dies under load; a backend down at startup gets no request.

use crate::common::*;
use crate::common::{admin::*, live_backend::*, load::*};
use std::time::{Duration, Instant};

/// The proxy in front of `backends` with active checks every 0.2 s, a 0.5 s timeout and the
/// given fall/rise thresholds.
fn checks(backends: &[u16], fall: u32, rise: u32) -> TestConfig {
    TestConfig::new(backends).health_checks(0.2, 0.5, fall, rise)
}

/// Slack on top of a documented bound, for scheduling on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(350);

/// `count` GETs on one connection; every one must be answered 200 by `expected`.
fn assert_all_served_by(proxy: &Proxy, count: usize, expected: &str) {
    let mut conn = proxy.connect();
    for i in 0..count {
        let got = get_backend(&mut conn, &format!("/after/{i}"));
        assert_eq!(got, expected, "request {i} went to the wrong backend");
    }
}

fn connect_errors(admin: &Admin, port: u16) -> f64 {
    admin.metrics().value(
        "ringproxy_backend_connect_errors_total",
        &[("backend", &backend_url(port))],
    )
}

#[test]
fn killed_backend_is_taken_out_in_time_and_returns_after_rise_checks() {
    let a = LiveBackend::start("a");
    let mut b = LiveBackend::start("b");
    // Passive ejection off: the active checks alone must take b out.
    let (proxy, admin) = start_with_admin(
        checks(&[a.port, b.port], 2, 2).with(|c| c.passive_health.enabled = Some(false)),
    );
    b.wait_probes(2); // passed its first check: from now on it takes two failures

    b.kill();
    let took = admin.wait_up(1, false, IO_TIMEOUT);
    let bound = Duration::from_secs_f64(0.2 * 2.0 + 0.2);
    assert!(
        took <= bound + SLACK,
        "down after {took:?}, documented bound {bound:?}"
    );
    assert!(
        took >= Duration::from_millis(150),
        "down after {took:?}: one failed check must not take it down (failure_threshold = 2)"
    );
    proxy.wait_log_lines(1, "marking b down", |l| {
        l.contains("backend is down") && l.contains(&b.url()) && l.contains("connection refused")
    });

    // Down: the proxy does not even try it (no connect errors, no retries).
    let errors_before = connect_errors(&admin, b.port);
    let retries_before = admin.metrics().value("ringproxy_retries_total", &[]);
    assert_all_served_by(&proxy, 20, "a");
    assert_eq!(connect_errors(&admin, b.port), errors_before);
    assert_eq!(
        admin.metrics().value("ringproxy_retries_total", &[]),
        retries_before
    );

    // Back on its port: traffic returns only after success_threshold = 2 good checks.
    b.revive();
    let revived = Instant::now();
    let mut conn = proxy.connect();
    wait_until(IO_TIMEOUT, "b back in rotation", || {
        get_backend(&mut conn, "/back") == "b"
    });
    let hits = b.hits();
    let first_request = hits
        .iter()
        .find(|h| !h.probe && h.at > revived)
        .expect("a request to b");
    let probes_before = hits
        .iter()
        .filter(|h| h.probe && h.at > revived && h.at < first_request.at)
        .count();
    assert!(
        probes_before >= 2,
        "b got traffic after {probes_before} good check(s); success_threshold is 2"
    );
    proxy.wait_log_lines(1, "marking b up", |l| {
        l.contains("backend is up") && l.contains(&b.url())
    });
}

#[test]
fn health_500_takes_backend_down_although_it_accepts_connections() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    let (proxy, admin) = start_with_admin(checks(&[a.port, b.port], 2, 1));
    b.wait_probes(1);
    admin.wait_up(1, true, IO_TIMEOUT);

    let sick_since = Instant::now();
    b.set_health(HealthReply::Status(500));
    let took = admin.wait_up(1, false, IO_TIMEOUT);
    assert!(
        took <= Duration::from_secs_f64(0.6) + SLACK,
        "took {took:?}"
    );
    let failed_checks = b
        .hits()
        .iter()
        .filter(|h| h.probe && h.at > sick_since && h.at < sick_since + took)
        .count();
    assert!(
        failed_checks >= 2,
        "down after {failed_checks} failed check(s); failure_threshold is 2"
    );
    proxy.wait_log_lines(1, "b down with status 500", |l| {
        l.contains("backend is down") && l.contains(&b.url()) && l.contains("status 500")
    });
    let last = &admin.backend(1)["last_check"];
    assert_eq!(last["result"], "status 500", "{last}");
    assert_eq!(last["ok"], false, "{last}");

    let requests_before = b.requests();
    assert_all_served_by(&proxy, 20, "a");
    assert_eq!(b.requests(), requests_before, "regular traffic reached b");
    // b still accepts connections and serves; the checks keep probing it.
    assert_eq!(get_backend(&mut HttpConn::connect(b.port), "/direct"), "b");
    let probes = b.probes();
    b.wait_probes(probes + 2);

    b.set_health(HealthReply::Ok);
    let mut conn = proxy.connect();
    wait_until(IO_TIMEOUT, "b back in rotation", || {
        get_backend(&mut conn, "/back") == "b"
    });
}

#[test]
fn hanging_health_endpoint_fails_at_the_check_timeout() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    // One failure takes it down; the timeout (0.5 s) is longer than the interval (0.2 s).
    let (proxy, admin) = start_with_admin(checks(&[a.port, b.port], 1, 1));
    b.wait_probes(1);
    admin.wait_up(1, true, IO_TIMEOUT);

    b.set_health(HealthReply::Hang);
    let took = admin.wait_up(1, false, IO_TIMEOUT);
    // The next probe starts within one interval and fails when its 0.5 s run out.
    assert!(
        took >= Duration::from_millis(450),
        "down after {took:?}, before the 0.5 s check timeout could expire"
    );
    assert!(
        took <= Duration::from_secs_f64(0.7) + SLACK,
        "down after {took:?}"
    );
    let last = &admin.backend(1)["last_check"];
    assert_eq!(last["result"], "timeout", "{last}");
    proxy.wait_log_lines(1, "b down by timeout", |l| {
        l.contains("backend is down") && l.contains(&b.url()) && l.contains("reason=timeout")
    });
    // The prober gave up on the hanging probe (closed it) at its timeout.
    wait_until(IO_TIMEOUT, "a hanging probe to be closed", || {
        !b.hung_probes().is_empty()
    });
    let held = b.hung_probes()[0];
    assert!(
        held >= Duration::from_millis(400) && held <= Duration::from_secs_f64(0.5) + SLACK,
        "hanging probe held for {held:?}, timeout_seconds = 0.5"
    );
    let requests_before = b.requests();
    assert_all_served_by(&proxy, 10, "a");
    assert_eq!(b.requests(), requests_before);
}

#[test]
fn all_backends_down_gives_fast_503_with_retry_after() {
    // Both backends hang on everything: a request forwarded to them would hang too.
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    a.set_health(HealthReply::Hang);
    b.set_health(HealthReply::Hang);
    let (proxy, admin) =
        start_with_admin(TestConfig::new(&[a.port, b.port]).health_checks(0.2, 0.3, 1, 1));
    admin.wait_up(0, false, IO_TIMEOUT);
    admin.wait_up(1, false, IO_TIMEOUT);

    let mut conn = proxy.connect();
    for i in 0..10 {
        // Alternately on a fresh connection and on a kept-alive one.
        let fresh = i % 2 == 0;
        let request = get_request(&format!("/hang/{i}"));
        let started = Instant::now();
        let response = if fresh {
            proxy.connect().roundtrip(&request)
        } else {
            conn.roundtrip(&request)
        };
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "{response:?}");
        assert_eq!(
            response.header("retry-after"),
            Some("1"),
            "{:?}",
            response.head
        );
        assert!(took < Duration::from_secs(1), "503 took {took:?}");
        if !fresh && response.head.connection_has("close") {
            conn = proxy.connect();
        }
    }
    assert_eq!(a.requests() + b.requests(), 0, "a request was forwarded");
    // The checks keep running while everything is down.
    let probes = a.probes();
    a.wait_probes(probes + 1);
}

/// A backend that accepts, reads the request, and after a pause resets the connection
/// without answering (the pause keeps a trial request in flight while others arrive).
fn resetting_backend() -> Backend {
    Backend::raw(|mut conn, _| {
        let _ = conn.read_request();
        std::thread::sleep(Duration::from_millis(300));
        let _ = socket2::SockRef::from(conn.stream()).set_linger(Some(Duration::ZERO));
    })
}

/// Active checks off, passive ejection after 2 failures for 1 s.
fn passive_only(backends: &[u16]) -> TestConfig {
    TestConfig::new(backends).with(|c| {
        c.health_checks.enabled = Some(false);
        c.passive_health.enabled = Some(true);
        c.passive_health.max_fails = Some(2);
        c.passive_health.fail_timeout_seconds = Some(1.0);
    })
}

#[test]
fn passive_ejection_of_a_resetting_backend_then_one_trial() {
    let a = LiveBackend::start("a");
    let bad = resetting_backend();
    let (proxy, admin) = start_with_admin(passive_only(&[a.port, bad.port]));

    // Every request succeeds (retried on a); bad is tried exactly max_fails times.
    assert_all_served_by(&proxy, 20, "a");
    assert_eq!(bad.connections(), 2, "attempts on the resetting backend");
    let status = admin.backend(1);
    assert_eq!(status["ejected"], true, "{status}");
    assert_eq!(status["available"], false, "{status}");
    let ejections = |admin: &Admin| {
        admin.metrics().value(
            "ringproxy_backend_ejections_total",
            &[("backend", &backend_url(bad.port))],
        )
    };
    assert_eq!(ejections(&admin), 1.0);
    proxy.wait_log_lines(1, "the ejection", |l| {
        l.contains("backend ejected") && l.contains(&backend_url(bad.port))
    });

    // After fail_timeout one trial request goes to it, however many arrive together; the
    // trial fails (and is retried on a), and bad is ejected again.
    std::thread::sleep(Duration::from_millis(1200));
    let port = proxy.port;
    let together = std::sync::Arc::new(std::sync::Barrier::new(4));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let together = together.clone();
            std::thread::spawn(move || {
                together.wait();
                get_backend(&mut HttpConn::connect(port), &format!("/together/{i}"))
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.join().expect("client"), "a");
    }
    assert_all_served_by(&proxy, 10, "a");
    assert_eq!(bad.connections(), 3, "exactly one trial after fail_timeout");
    assert_eq!(ejections(&admin), 2.0);
    assert_eq!(admin.backend(1)["ejected"], true);
}

#[test]
fn passive_ejection_of_a_refusing_backend_then_one_trial() {
    let a = LiveBackend::start("a");
    let dead = free_port();
    let (proxy, admin) = start_with_admin(passive_only(&[a.port, dead]));

    assert_all_served_by(&proxy, 20, "a");
    assert_eq!(
        connect_errors(&admin, dead),
        2.0,
        "connects to the dead port"
    );
    assert_eq!(admin.backend(1)["ejected"], true);
    std::thread::sleep(Duration::from_millis(1200));
    assert_all_served_by(&proxy, 10, "a");
    assert_eq!(
        connect_errors(&admin, dead),
        3.0,
        "exactly one trial after fail_timeout"
    );
}

#[test]
fn disabled_active_checks_send_no_probe() {
    let backend = Backend::fixed("a");
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]).with(|c| {
        c.health_checks.enabled = Some(false);
        c.health_checks.interval_seconds = Some(0.2);
    }));
    std::thread::sleep(Duration::from_millis(1000)); // five intervals
    let mut conn = proxy.connect();
    for i in 0..3 {
        conn.get_ok(&format!("/mine/{i}"));
    }
    let targets: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.req.head.target().to_string())
        .collect();
    assert_eq!(targets, ["/mine/0", "/mine/1", "/mine/2"]);
    let status = admin.backend(0);
    assert_eq!(status["up"], true, "{status}");
    assert!(status["last_check"].is_null(), "{status}");
}

#[test]
fn no_failed_request_while_a_backend_dies_under_load() {
    let a = LiveBackend::start("a");
    let mut b = LiveBackend::start("b");
    let (proxy, _admin) =
        start_with_admin(checks(&[a.port, b.port], 2, 2).with(|c| c.server.workers = Some(2)));
    b.wait_probes(1);

    let clients = 4;
    let load = Load::start(proxy.port, clients, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(700));
    b.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(1300));
    let report = load.stop();

    report.assert_no_failures();
    report.assert_every_client_active_after(clients, killed + Duration::from_millis(500));
    let before: usize = report
        .outcomes
        .iter()
        .filter(|o| o.at < killed && o.result.as_deref() == Ok("b"))
        .count();
    assert!(before > 0, "b served nothing before it was killed");
    let after = report.counts_since(killed + Duration::from_millis(50));
    assert_eq!(
        after.get("b"),
        None,
        "b answered after it was killed: {after:?}"
    );
}

#[test]
fn backend_down_at_startup_gets_no_request_once_checked() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    b.set_health(HealthReply::Status(503));
    // A long interval and failure_threshold = 3: only the startup rules can take b down fast.
    let (proxy, admin) =
        start_with_admin(TestConfig::new(&[a.port, b.port]).health_checks(5.0, 3.0, 3, 2));
    let started = Instant::now();
    b.wait_probes(1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "first check came {:?} after start; it must run at once",
        started.elapsed()
    );
    admin.wait_up(1, false, Duration::from_secs(2));
    assert_eq!(
        b.probes(),
        1,
        "one failed check must take a new backend down"
    );
    assert_all_served_by(&proxy, 20, "a");
    assert_eq!(b.requests(), 0, "b got a request");
}
