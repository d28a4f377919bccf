//! Connection persistence: keep-alive and pipelining on the client side, HTTP/1.0 clients,
//! `Connection: close`, the client idle timeout, and reuse and expiry of pooled upstream
//! connections.

use crate::common::*;
use std::thread;
use std::time::{Duration, Instant};

const HTTP10_GET: &[u8] = b"GET /ten HTTP/1.0\r\nHost: test.local\r\n\r\n";
const HTTP10_KEEPALIVE_GET: &[u8] =
    b"GET /ten HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n";

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    for i in 0..5 {
        let path = format!("/ka/{i}");
        let response = conn.get_ok(&path);
        assert_eq!(response.text(), path);
        assert_eq!(response.framing, Framing::Length(path.len()));
    }
    let targets: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.req.head.target().to_string())
        .collect();
    assert_eq!(targets, ["/ka/0", "/ka/1", "/ka/2", "/ka/3", "/ka/4"]);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::recording(|r| {
        if r.req.head.target() == "/slow" {
            // Give a proxy that answers out of order the chance to do so.
            thread::sleep(Duration::from_millis(200));
        }
        let body = format!(
            "{} {} {}",
            r.req.head.method(),
            r.req.head.target(),
            r.req.body.len()
        );
        Reply::Send(response_bytes("200 OK", &[], body.as_bytes()))
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let batch = [
        get_request("/slow"),
        request_bytes("POST", "/post", &[], b"hello"),
        get_request("/third"),
        request_bytes("PUT", "/fourth", &[], b"0123456789"),
    ]
    .concat();
    conn.send(&batch);
    for (method, expected) in [
        ("GET", "GET /slow 0"),
        ("POST", "POST /post 5"),
        ("GET", "GET /third 0"),
        ("PUT", "PUT /fourth 10"),
    ] {
        let response = conn.read_response(method).expect("pipelined response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), expected);
    }
    assert_eq!(conn.get_ok("/after").text(), "GET /after 0");
    let bodies: Vec<Vec<u8>> = backend.requests().into_iter().map(|r| r.req.body).collect();
    assert_eq!(bodies[1], b"hello");
    assert_eq!(bodies[3], b"0123456789");
}

#[test]
fn http11_connection_close_is_honoured() {
    let backend = Backend::fixed("bye");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&request_bytes("GET", "/", &[("Connection", "close")], b""));
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "bye");
    conn.expect_closed();
}

#[test]
fn http10_client_without_keep_alive_gets_response_then_close() {
    let backend = Backend::fixed("hello-ten");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(HTTP10_GET);
    assert_eq!(response.status(), 200);
    assert!(
        !response.head.has("transfer-encoding"),
        "{:?}",
        response.head
    );
    assert_eq!(response.text(), "hello-ten");
    conn.expect_closed();
}

#[test]
fn http10_keep_alive_client_stays_open_when_response_has_length() {
    let backend = Backend::fixed("hello-ten");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    for _ in 0..2 {
        let response = conn.roundtrip(HTTP10_KEEPALIVE_GET);
        assert_eq!(response.status(), 200);
        assert_eq!(response.framing, Framing::Length(9));
        assert_eq!(response.text(), "hello-ten");
        assert!(
            response.head.connection_has("keep-alive"),
            "{:?}",
            response.head
        );
        assert!(
            !response.head.has("transfer-encoding"),
            "{:?}",
            response.head
        );
    }
    assert_eq!(backend.requests().len(), 2);
}

/// A chunked upstream answer must reach an HTTP/1.0 client decoded and close-delimited.
fn assert_chunked_upstream_unchunked_for_http10(request: &[u8]) {
    let reply = chunked_response_bytes("200 OK", &[], &[b"hello", b", ", b"world", &[b'x'; 3000]]);
    let backend = Backend::recording(move |_| Reply::Send(reply.clone()));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(request);
    assert_eq!(response.status(), 200);
    assert!(
        !response.head.has("transfer-encoding"),
        "{:?}",
        response.head
    );
    assert!(!response.head.has("content-length"), "{:?}", response.head);
    assert_eq!(response.framing, Framing::Close);
    assert!(
        !response.head.connection_has("keep-alive"),
        "{:?}",
        response.head
    );
    let expected = [&b"hello, world"[..], &[b'x'; 3000]].concat();
    assert_eq!(response.body, expected);
}

#[test]
fn chunked_upstream_reaches_http10_client_close_delimited() {
    assert_chunked_upstream_unchunked_for_http10(HTTP10_GET);
}

#[test]
fn chunked_upstream_reaches_http10_keep_alive_client_close_delimited() {
    assert_chunked_upstream_unchunked_for_http10(HTTP10_KEEPALIVE_GET);
}

#[test]
fn idle_client_connection_is_closed_silently() {
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.idle_timeout_seconds = Some(0.5)),
    );
    let mut conn = proxy.connect();
    conn.get_ok("/");
    conn.expect_closed();
}

#[test]
fn upstream_connection_is_reused_across_requests() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    for client in 0..2 {
        let mut conn = proxy.connect();
        for i in 0..3 {
            conn.get_ok(&format!("/reuse/{client}/{i}"));
        }
    }
    let requests = backend.requests();
    assert_eq!(requests.len(), 6);
    for r in &requests {
        assert_eq!(r.req.head.request_version(), "HTTP/1.1");
        assert!(!r.req.head.connection_has("close"), "{:?}", r.req.head);
    }
    assert_eq!(
        backend.connections(),
        1,
        "sequential requests should share one pooled upstream connection"
    );
}

#[test]
fn upstream_closing_an_idle_connection_does_not_fail_the_next_request() {
    // The backend answers with keep-alive framing, then closes the connection shortly after.
    let backend = Backend::raw(|mut conn, index| {
        if let Ok(Some(_)) = conn.read_request() {
            conn.send(&response_bytes(
                "200 OK",
                &[],
                format!("conn {index}").as_bytes(),
            ));
            thread::sleep(Duration::from_millis(100));
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    assert_eq!(conn.get_ok("/first").text(), "conn 0");
    thread::sleep(Duration::from_millis(400));
    let second = conn.get_ok("/second").text();
    assert!(
        second.starts_with("conn ") && second != "conn 0",
        "{second:?}"
    );
}

#[test]
fn pooled_upstream_connection_is_closed_after_idle_timeout() {
    let (backend, closed_rx) = Backend::watch_close(response_bytes("200 OK", &[], b"pooled"));
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.upstream.idle_timeout_seconds = Some(0.5)),
    );
    assert_eq!(proxy.connect().get_ok("/").text(), "pooled");
    let outcome = closed_rx
        .recv_timeout(IO_TIMEOUT + IO_TIMEOUT)
        .expect("backend report");
    assert_eq!(
        outcome,
        Ok(0),
        "the idle pooled connection must be closed by the proxy"
    );
}

#[test]
fn connection_idle_past_the_buffer_release_point_keeps_serving() {
    // A kept-alive connection that stays quiet for a while gives its buffers back and waits for
    // readability alone; the next requests (one, then a pipelined pair) must be served whole.
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    assert_eq!(conn.get_ok("/before").text(), "/before");
    thread::sleep(Duration::from_millis(900));
    assert_eq!(conn.get_ok("/after-idle").text(), "/after-idle");
    thread::sleep(Duration::from_millis(900));
    conn.send(&[get_request("/p1"), get_request("/p2")].concat());
    for path in ["/p1", "/p2"] {
        let response = conn
            .read_response("GET")
            .expect("pipelined response after idle");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text(), path);
    }
}

#[test]
fn parked_connection_is_closed_at_its_idle_timeout() {
    // Past half a second of silence the connection waits in the parking lot, whose expiry
    // closes it at the idle timeout, not much later.
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.idle_timeout_seconds = Some(2.0)),
    );
    let mut conn = proxy.connect();
    conn.get_ok("/");
    let answered = Instant::now();
    conn.expect_closed();
    let closed = answered.elapsed();
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_millis(2600),
        "closed {closed:?} after the response; idle timeout 2 s"
    );
}

#[test]
fn many_parked_connections_resume_in_any_order() {
    // Connections parked together wake independently: every one is served, newest first.
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conns: Vec<HttpConn> = (0..50).map(|_| proxy.connect()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(conn.get_ok(&format!("/a/{i}")).text(), format!("/a/{i}"));
    }
    thread::sleep(Duration::from_millis(900));
    for (i, conn) in conns.iter_mut().enumerate().rev() {
        assert_eq!(conn.get_ok(&format!("/b/{i}")).text(), format!("/b/{i}"));
    }
}

#[test]
fn idle_connections_park_in_little_memory() {
    // Thousands of keep-alive clients gone quiet at once: each connection's task ends and its
    // socket waits in the parking lot, so little stays per connection once the worker has
    // handed the tasks' pages back. (Measured here: under 100 bytes each; 2 KiB when each
    // one's keep-alive wait left a freshly allocated canceller behind, pinning those pages.)
    const IDLE: usize = 2000;
    // The clients' sockets here, the proxy's (it inherits the limit) and the backend's.
    raise_open_files_limit(8192);
    let backend = Backend::echo_target();
    let config = TestConfig::new(&[backend.port])
        .with(|c| c.server.workers = Some(1))
        .admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    let open = |count: usize| -> Vec<HttpConn> {
        (0..count)
            .map(|i| {
                let mut conn = proxy.connect();
                let path = format!("/idle/{i}");
                assert_eq!(conn.get_ok(&path).text(), path);
                conn
            })
            .collect()
    };
    let parked = |n: usize| {
        admin
            .metrics()
            .value("ringproxy_parked_connections", &[("worker", "0")])
            == n as f64
    };
    drop(open(100)); // the allocator's first growth, not counted
    wait_until(IO_TIMEOUT, "the warm-up connections gone", || parked(0));
    let before = proxy.rss_kib();
    let mut idle = open(IDLE);
    wait_until(IO_TIMEOUT, "every idle connection parked", || parked(IDLE));
    // The worker hands freed pages back once 64 more connections have parked while no other
    // was busy, a second after its last trim (a busy worker trims at most every 10 s).
    thread::sleep(Duration::from_millis(1200));
    idle.extend(open(64));
    wait_until(IO_TIMEOUT, "the last ones parked", || parked(IDLE + 64));
    let per_conn = proxy.rss_kib().saturating_sub(before) * 1024 / idle.len() as u64;
    eprintln!("{per_conn} bytes per parked connection");
    assert!(
        per_conn < 1024,
        "{per_conn} bytes per parked connection (nginx holds about 550)"
    );
    drop(idle);
}
