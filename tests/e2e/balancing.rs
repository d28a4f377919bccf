//! Load balancing: round-robin spreads evenly, and by weight (smooth weighted round robin, as
//! nginx's and HAProxy's; `weighted` is its alias), least-connections steers around a backend busy with slow
//! requests, a backend refusing connections is skipped, and a backend failing its health check
//! gets no traffic until it passes again.

use crate::common::config::Strategy;
use crate::common::live_backend::{backend_of, HealthReply, LiveBackend};
use crate::common::*;
use std::collections::HashMap;
use std::time::Duration;

/// Sends `requests` GETs over a few keep-alive connections and counts answers per body.
fn spread(proxy: &Proxy, requests: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut conns: Vec<HttpConn> = (0..3).map(|_| proxy.connect()).collect();
    let spread_over = conns.len();
    for i in 0..requests {
        let body = conns[i % spread_over]
            .get_ok(&format!("/spread/{i}"))
            .text();
        *counts.entry(body).or_insert(0) += 1;
    }
    counts
}

fn assert_near(counts: &HashMap<String, usize>, name: &str, expected: usize, tolerance: usize) {
    let got = counts.get(name).copied().unwrap_or(0);
    assert!(
        got.abs_diff(expected) <= tolerance,
        "backend {name}: {got} requests, expected {expected} ± {tolerance}; all: {counts:?}"
    );
}

#[test]
fn round_robin_spreads_evenly() {
    let backends = [
        Backend::fixed("a"),
        Backend::fixed("b"),
        Backend::fixed("c"),
    ];
    let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
    let proxy = Proxy::start(
        &TestConfig::new(&ports).with(|c| c.load_balancing.strategy = Some(Strategy::RoundRobin)),
    );
    let counts = spread(&proxy, 300);
    for name in ["a", "b", "c"] {
        assert_near(&counts, name, 100, 5);
    }
}

/// The defect issue 14 fixed: `round_robin` ignored weights, unlike nginx's and HAProxy's.
#[test]
fn round_robin_follows_weights() {
    let (a, b) = (Backend::fixed("a"), Backend::fixed("b"));
    let proxy = Proxy::start(
        &TestConfig::weighted(&[(a.port, 3), (b.port, 1)])
            .with(|c| c.load_balancing.strategy = Some(Strategy::RoundRobin)),
    );
    let counts = spread(&proxy, 200);
    assert_near(&counts, "a", 150, 2);
    assert_near(&counts, "b", 50, 2);
}

#[test]
fn weighted_follows_weights() {
    let (a, b) = (Backend::fixed("a"), Backend::fixed("b"));
    let proxy = Proxy::start(
        &TestConfig::weighted(&[(a.port, 3), (b.port, 1)])
            .with(|c| c.load_balancing.strategy = Some(Strategy::Weighted)),
    );
    let counts = spread(&proxy, 400);
    assert_near(&counts, "a", 300, 8);
    assert_near(&counts, "b", 100, 8);
}

#[test]
fn refused_backend_is_skipped_by_retrying_the_other() {
    let live = Backend::fixed("live");
    let dead = free_port();
    let proxy = Proxy::start(
        &TestConfig::new(&[dead, live.port])
            .with(|c| c.load_balancing.strategy = Some(Strategy::RoundRobin)),
    );
    let counts = spread(&proxy, 20);
    assert_eq!(counts.get("live"), Some(&20), "{counts:?}");
}

#[test]
fn backend_failing_health_checks_gets_no_traffic_until_it_recovers() {
    let a = Backend::fixed("a");
    let b = LiveBackend::start("b");
    b.set_health(HealthReply::Status(500));
    let proxy = Proxy::start(&TestConfig::new(&[a.port, b.port]).fast_health_checks());
    let mut conn = proxy.connect();
    let mut run_of_a = 0;
    wait_until(IO_TIMEOUT, "b taken out of rotation", || {
        run_of_a = if conn.get_ok("/").text() == "a" {
            run_of_a + 1
        } else {
            0
        };
        run_of_a >= 10
    });
    let counts = spread(&proxy, 30);
    assert_eq!(counts.get("a"), Some(&30), "{counts:?}");
    b.set_health(HealthReply::Ok);
    wait_until(IO_TIMEOUT, "b back in rotation", || {
        conn.get_ok("/").text() == "b"
    });
}

#[test]
fn least_conn_steers_around_a_backend_busy_with_slow_requests() {
    let slow = Duration::from_secs(3);
    let (a, b) = (
        LiveBackend::with_delay("a", slow),
        LiveBackend::with_delay("b", slow),
    );
    let proxy = Proxy::start(
        &TestConfig::new(&[a.port, b.port])
            .with(|c| c.load_balancing.strategy = Some(Strategy::LeastConn)),
    );
    // One slow request holds one backend (whichever the rotation gives it).
    let port = proxy.port;
    let held =
        std::thread::spawn(move || backend_of(&HttpConn::connect(port).get_ok("/slow/held")));
    wait_until(IO_TIMEOUT, "the slow request reached a backend", || {
        a.requests_to("/slow") + b.requests_to("/slow") == 1
    });
    let busy = if a.requests_to("/slow") == 1 {
        "a"
    } else {
        "b"
    };
    // Every quick request meanwhile goes to the other one (round robin would alternate).
    let mut conn = proxy.connect();
    let served: Vec<String> = (0..8)
        .map(|i| conn.get_ok(&format!("/quick/{i}")).text())
        .collect();
    assert!(
        served.iter().all(|name| name != busy),
        "busy backend {busy} got quick requests: {served:?}"
    );
    assert_eq!(held.join().expect("slow client"), busy);
}
