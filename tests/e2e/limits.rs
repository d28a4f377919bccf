//! `[limits]` end to end: oversized request lines, heads, header counts and bodies are refused
//! with 414/431/413 and the connection closed (nothing smuggled behind them reaches the
//! backend); the per-worker connection cap answers 503 and recovers; and a thousand
//! concurrent client connections are all served.

use crate::common::smuggling::{
    assert_family_refused, check_error_response, chunked_post, expect_closed_within, post_with,
    refusal,
};
use crate::common::*;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// `count` header lines `X-N: v`.
fn header_lines(count: usize) -> String {
    (0..count).map(|i| format!("X-{i}: v\r\n")).collect()
}

/// A chunked body of `count` chunks of `size` bytes each, terminated.
fn chunks(count: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..count {
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        out.extend_from_slice(&pattern(size, i as u64));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn oversized_requests_are_refused_and_nothing_is_smuggled() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]).with(|c| {
        c.limits.max_request_line_bytes = Some(256);
        c.limits.max_header_bytes = Some(1024);
        c.limits.max_headers = Some(8);
        c.limits.max_body_bytes = Some(64);
    }));
    let long_target = format!("/{}", "a".repeat(400));
    let cases = [
        refusal(
            "request-line-414",
            format!("GET {long_target} HTTP/1.1\r\nHost: x\r\n\r\n"),
            414,
        ),
        refusal(
            "request-line-414-with-body",
            format!("POST {long_target} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
            414,
        ),
        refusal(
            "head-bytes-431",
            format!(
                "GET /refused HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
                "v".repeat(2000)
            ),
            431,
        ),
        refusal(
            "head-bytes-431-over-one-read",
            format!(
                "GET /refused HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
                "v".repeat(20_000)
            ),
            431,
        ),
        refusal(
            "header-count-431-one-over",
            format!(
                "GET /refused HTTP/1.1\r\nHost: x\r\n{}\r\n",
                header_lines(8)
            ),
            431,
        ),
        refusal(
            "header-count-431-many",
            format!(
                "GET /refused HTTP/1.1\r\nHost: x\r\n{}\r\n",
                header_lines(40)
            ),
            431,
        ),
        refusal(
            "content-length-413",
            post_with("Content-Length: 65\r\n", &[b'x'; 65]),
            413,
        ),
        refusal(
            "content-length-413-huge",
            post_with("Content-Length: 1000000000000\r\n", b"x"),
            413,
        ),
        refusal("chunked-413-growing", chunked_post(&chunks(3, 30)), 413),
        refusal("chunked-413-one-chunk", chunked_post(&chunks(1, 65)), 413),
    ];
    assert_family_refused(&proxy, &backend, &cases);

    // At the limits exactly, requests pass (the refusals above were not for some other reason).
    let at_limit = [
        post_with("Content-Length: 64\r\n", &[b'y'; 64]),
        chunked_post(&chunks(2, 32)),
        format!(
            "GET /at-limit HTTP/1.1\r\nHost: x\r\n{}\r\n",
            header_lines(7)
        )
        .into_bytes(),
    ];
    for request in at_limit {
        let response = proxy.connect().roundtrip(&request);
        assert_eq!(
            response.status(),
            200,
            "{}: {response:?}",
            smuggling::escape(&request)
        );
    }
    let bodies: Vec<usize> = backend
        .requests()
        .iter()
        .map(|r| r.req.body.len())
        .collect();
    assert_eq!(
        bodies,
        [0, 64, 64, 0],
        "family check, then the three at the limits"
    );
}

/// A held connection to the proxy that has had one request answered.
fn served_connection(proxy: &Proxy, path: &str) -> HttpConn {
    let mut conn = proxy.connect();
    conn.get_ok(path);
    conn
}

/// Opens connections until one is served (slots free up once the proxy sees the closes).
fn served_connection_eventually(proxy: &Proxy, path: &str) -> HttpConn {
    let mut served = None;
    wait_until(IO_TIMEOUT, "a connection served under the cap", || {
        let mut conn = proxy.connect();
        let response = conn.roundtrip(&get_request(path));
        match response.status() {
            200 => served = Some(conn),
            503 => {}
            other => panic!("unexpected {other} while waiting for a free slot: {response:?}"),
        }
        served.is_some()
    });
    served.expect("served connection")
}

/// The next connection is refused at once with 503 and closed, without sending anything.
fn assert_refused_over_cap(proxy: &Proxy) {
    let mut conn = proxy.connect();
    conn.stream()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set_read_timeout");
    let response = conn
        .read_response("GET")
        .expect("503 at once for a connection over the cap");
    check_error_response(&response, 503).unwrap();
    expect_closed_within(&mut conn, Duration::from_secs(2)).unwrap();
}

#[test]
fn connection_cap_refuses_with_503_and_recovers() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.limits.max_connections = Some(5)),
    );
    // Two that send nothing, then three with a request answered and kept alive: once those are
    // answered, the silent ones (accepted before them) hold their slots too.
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", proxy.port)).expect("connect"))
        .collect();
    let mut held: Vec<HttpConn> = (0..3)
        .map(|i| served_connection(&proxy, &format!("/held/{i}")))
        .collect();
    assert_refused_over_cap(&proxy);
    // The refusal did not disturb the connections within the cap.
    for (i, conn) in held.iter_mut().enumerate() {
        conn.get_ok(&format!("/still/{i}"));
    }

    drop(silent);
    held.truncate(2);
    for i in 0..3 {
        held.push(served_connection_eventually(&proxy, &format!("/again/{i}")));
    }
    // Five held again: the cap is exact after connections came and went.
    assert_refused_over_cap(&proxy);
    for conn in held.iter_mut() {
        conn.get_ok("/last");
    }
}

#[test]
fn parked_idle_connections_hold_their_slots() {
    // Connections quiet for over half a second leave their task for the parking lot; they are
    // still open, so they still count against the cap, and closing one frees its slot.
    let backend = Backend::echo_target();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.limits.max_connections = Some(3)),
    );
    let mut held: Vec<HttpConn> = (0..3)
        .map(|i| served_connection(&proxy, &format!("/held/{i}")))
        .collect();
    thread::sleep(Duration::from_millis(1200));
    assert_refused_over_cap(&proxy);
    held.pop();
    held.push(served_connection_eventually(&proxy, "/after-close"));
    assert_refused_over_cap(&proxy);
    for (i, conn) in held.iter_mut().enumerate() {
        assert_eq!(
            conn.get_ok(&format!("/resumed/{i}")).text(),
            format!("/resumed/{i}")
        );
    }
}

#[test]
fn thousand_concurrent_connections_are_all_served() {
    const CLIENTS: usize = 1000;
    const THREADS: usize = 8;
    // Client sockets plus the test backend's side of as many upstream connections.
    raise_open_files_limit(4096);
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let deadline = Instant::now() + Duration::from_secs(20);

    // All open at the same time before any request is sent.
    let mut groups: Vec<Vec<(usize, HttpConn)>> = (0..THREADS).map(|_| Vec::new()).collect();
    for i in 0..CLIENTS {
        groups[i % THREADS].push((i, proxy.connect()));
    }
    let workers: Vec<_> = groups
        .into_iter()
        .map(|mut group| {
            thread::spawn(move || {
                for (i, conn) in group.iter_mut() {
                    conn.send(&get_request(&format!("/c/{i}")));
                }
                let mut failures = Vec::new();
                for (i, conn) in group.iter_mut() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let left = left.max(Duration::from_millis(1));
                    conn.stream()
                        .set_read_timeout(Some(left))
                        .expect("set_read_timeout");
                    let want = format!("/c/{i}");
                    match conn.read_response("GET") {
                        Ok(r) if r.status() == 200 && r.text() == want => {}
                        Ok(r) => failures.push(format!("{want}: {} {:?}", r.status(), r.text())),
                        Err(e) => failures.push(format!("{want}: {e}")),
                    }
                }
                failures
            })
        })
        .collect();
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("client thread"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let requests = backend.requests();
    assert_eq!(requests.len(), CLIENTS, "upstream requests");
    let mut targets: Vec<String> = requests
        .iter()
        .map(|r| r.req.head.target().to_string())
        .collect();
    targets.sort();
    targets.dedup();
    assert_eq!(
        targets.len(),
        CLIENTS,
        "each request reached the backend once"
    );
}
