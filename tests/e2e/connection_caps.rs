//! `max_connections_per_ip`, exact over all workers (one shared count per address), closed at
//! accept and counted; addresses named by the PROXY protocol counted apart; and
//! `max_requests_per_connection`.

use crate::common::admin::start_with_admin;
use crate::common::{get_request, is_closed_error, poll, Backend, HttpConn, Proxy, TestConfig};
use std::io::Read;
use std::time::Duration;

/// Whether a new connection is closed without an answer to a GET.
fn refused(mut conn: HttpConn) -> bool {
    let _ = conn.try_send(&get_request("/"));
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => is_closed_error(&e),
    }
}

#[test]
fn connections_per_address_are_capped_over_all_workers() {
    let backend = Backend::fixed("ok");
    let config = TestConfig::new(&[backend.port]).with(|c| {
        c.server.workers = Some(2);
        c.limits.max_connections_per_ip = Some(3);
    });
    let (proxy, admin) = start_with_admin(config);
    // The harness's readiness probes came from this address too: wait until the proxy has seen
    // them close, so the three held below are the address's only connections.
    let probes_closed = poll(Duration::from_secs(5), || {
        let metrics = admin.metrics();
        let open: f64 = ["0", "1"]
            .iter()
            .map(|w| metrics.value("ringproxy_active_connections", &[("worker", w)]))
            .sum();
        open == 0.0
    });
    assert!(probes_closed.is_some(), "the readiness probes stayed open");
    let mut held: Vec<HttpConn> = (0..3).map(|_| proxy.connect()).collect();
    for conn in &mut held {
        conn.get_ok("/held");
    }
    // Ten more: whichever worker takes one, the address has its three already. (Counts kept
    // per worker would let through those that land on the worker holding fewer.)
    for _ in 0..10 {
        assert!(refused(proxy.connect()), "a fourth connection was served");
    }
    let metrics = admin.metrics();
    assert_eq!(
        metrics.value("ringproxy_connections_refused_per_ip_total", &[]),
        10.0
    );
    let per_worker: Vec<f64> = (0..2)
        .map(|w| {
            let w = w.to_string();
            metrics.value("ringproxy_worker_requests_total", &[("worker", &w)])
        })
        .collect();
    eprintln!("held connections' requests by worker: {per_worker:?}");
    // One closed (and one parked idle, which still counts): room for exactly one more.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(700));
    let served = poll(Duration::from_secs(5), || {
        let mut conn = proxy.connect();
        let ok = conn.try_send(&get_request("/again")).is_ok() && conn.read_response("GET").is_ok();
        if ok {
            held.push(conn);
        }
        ok
    });
    assert!(
        served.is_some(),
        "the closed connection's place was not given back"
    );
    assert!(refused(proxy.connect()));
    assert_eq!(backend.requests().len(), 4);
}

#[test]
fn addresses_from_the_proxy_protocol_are_counted_apart() {
    let backend = Backend::fixed("ok");
    let config = TestConfig::new(&[backend.port]).with(|c| {
        c.server.proxy_protocol = Some(true);
        c.server.trusted_proxies = Some(vec!["127.0.0.1".into()]);
        c.limits.max_connections_per_ip = Some(1);
    });
    let proxy = Proxy::start(&config);
    let from = |client: &str| {
        let mut conn = proxy.connect();
        conn.send(format!("PROXY TCP4 {client} 192.0.2.1 4000 80\r\n").as_bytes());
        conn
    };
    let mut first = from("203.0.113.1");
    first.get_ok("/");
    assert!(
        refused(from("203.0.113.1")),
        "a second from the same client"
    );
    let mut other = from("203.0.113.2");
    other.get_ok("/");
    first.get_ok("/still");
}

#[test]
fn max_requests_per_connection_closes_after_the_last() {
    let backend = Backend::fixed("ok");
    let config =
        TestConfig::new(&[backend.port]).with(|c| c.limits.max_requests_per_connection = Some(3));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    assert!(!conn.get_ok("/1").head.connection_has("close"));
    assert!(!conn.get_ok("/2").head.connection_has("close"));
    assert!(
        conn.get_ok("/3").head.connection_has("close"),
        "the third is the last"
    );
    conn.expect_closed();
}
