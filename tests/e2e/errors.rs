//! Error responses: 502 (nothing reachable, malformed upstream answer), 504 (upstream silent or
//! connect timed out), 503 (health checks took every backend down), 400/408 (bad or slow client head, then close), a client stalling its
//! body (close), and the 413/414/431/501/505 limits.

use crate::common::live_backend::{HealthReply, LiveBackend};
use crate::common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Asserts a short `text/plain` error body of the form `<code> <reason>\n`.
fn assert_error(response: &Message, code: u16) {
    assert_eq!(response.status(), code, "{response:?}");
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain"),
        "{:?}",
        response.head
    );
    let text = response.text();
    assert!(
        text.starts_with(&format!("{code} ")) && text.ends_with('\n') && text.len() < 100,
        "error body {text:?}"
    );
}

/// Sends `request` on a fresh connection to a proxy (its config changed by `change`) in front
/// of a live backend, and returns the response plus the connection.
fn respond_to(
    change: impl FnOnce(&mut TestConfig),
    request: &[u8],
) -> (Message, HttpConn, Backend, Proxy) {
    let backend = Backend::fixed("should not be reached");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]).with(change));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(request);
    (response, conn, backend, proxy)
}

/// A GET through `proxy` gets a 504 within a few seconds (its timeouts are set to 0.5 s).
fn assert_prompt_504(proxy: &Proxy) {
    let started = Instant::now();
    let response = proxy.connect().roundtrip(&get_request("/"));
    assert_error(&response, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "504 took {:?}",
        started.elapsed()
    );
}

#[test]
fn all_backends_refusing_gives_502() {
    let proxy = Proxy::start(&TestConfig::new(&[free_port(), free_port()]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&get_request("/"));
    assert_error(&response, 502);
    assert_eq!(response.text(), "502 Bad Gateway\n");
    if response.head.connection_has("close") {
        conn.expect_closed();
    } else {
        // Still usable; by now the backends may also count as down (503).
        let again = conn.roundtrip(&get_request("/"));
        assert!([502, 503].contains(&again.status()), "{again:?}");
    }
}

#[test]
fn no_backend_up_gives_503_until_one_recovers() {
    let backend = LiveBackend::start("recovered");
    backend.set_health(HealthReply::Status(500));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]).fast_health_checks());
    let mut conn = proxy.connect();
    let mut last = None;
    wait_until(IO_TIMEOUT, "a 503 once the health check failed", || {
        let response = conn.roundtrip(&get_request("/"));
        let down = response.status() == 503;
        last = Some(response);
        down
    });
    assert_error(last.as_ref().expect("a response"), 503);
    backend.set_health(HealthReply::Ok);
    let mut conn = proxy.connect();
    wait_until(IO_TIMEOUT, "a 200 once the health check passed", || {
        conn.roundtrip(&get_request("/")).status() == 200
    });
}

#[test]
fn malformed_upstream_response_gives_502() {
    let backend = Backend::recording(|_| Reply::SendClose(b"this is not http\r\n\r\n".to_vec()));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let response = proxy.connect().roundtrip(&get_request("/"));
    assert_error(&response, 502);
}

#[test]
fn silent_upstream_gives_504_after_request_timeout() {
    // The backend never answers; it reports whether the proxy then closed the upstream connection.
    let (backend, closed_rx) = Backend::watch_close(Vec::new());
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.request_timeout_seconds = Some(0.5)),
    );
    assert_prompt_504(&proxy);
    let upstream = closed_rx
        .recv_timeout(IO_TIMEOUT + IO_TIMEOUT)
        .expect("backend report");
    assert_eq!(
        upstream,
        Ok(0),
        "the timed-out upstream connection must be closed by the proxy"
    );
}

#[test]
fn connect_timeout_gives_504() {
    // A listener with backlog 0 whose one queue slot is taken: further SYNs are dropped,
    // so the proxy's connect hangs until connect_timeout.
    let (_listener, port) = raw_listener(false, 0);
    let _queued = TcpStream::connect(("127.0.0.1", port)).expect("fill the accept queue");
    let proxy = Proxy::start(
        &TestConfig::new(&[port]).with(|c| c.timeouts.connect_timeout_seconds = Some(0.5)),
    );
    assert_prompt_504(&proxy);
}

#[test]
fn garbage_request_line_gives_400_then_close() {
    let (response, mut conn, backend, _proxy) = respond_to(|_| {}, b"GARBAGE\r\n\r\n");
    assert_error(&response, 400);
    assert!(response.head.connection_has("close"), "{:?}", response.head);
    conn.expect_closed();
    assert!(backend.requests().is_empty());
}

#[test]
fn incomplete_request_head_gives_408_then_close() {
    let backend = Backend::fixed("unused");
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port])
            .with(|c| c.timeouts.client_header_timeout_seconds = Some(0.5)),
    );
    let mut conn = proxy.connect();
    conn.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n");
    let response = conn.read_response("GET").expect("408 response");
    assert_error(&response, 408);
    conn.expect_closed();
    assert!(backend.requests().is_empty());
}

#[test]
fn body_over_limit_gives_413() {
    let request = request_bytes("POST", "/big", &[], &[b'x'; 1000]);
    let (response, ..) = respond_to(|c| c.limits.max_body_bytes = Some(100), &request);
    assert_error(&response, 413);
}

#[test]
fn long_request_line_gives_414() {
    let path = format!("/{}", "a".repeat(300));
    let (response, ..) = respond_to(
        |c| c.limits.max_request_line_bytes = Some(200),
        &get_request(&path),
    );
    assert_error(&response, 414);
}

#[test]
fn too_many_headers_gives_431() {
    let headers: Vec<(String, String)> = (0..10).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let request = request_bytes("GET", "/", &headers, b"");
    let (response, ..) = respond_to(|c| c.limits.max_headers = Some(5), &request);
    assert_error(&response, 431);
}

#[test]
fn oversized_header_block_gives_431() {
    let long = "v".repeat(4000);
    let request = request_bytes("GET", "/", &[("X-Long", &long)], b"");
    let (response, ..) = respond_to(|c| c.limits.max_header_bytes = Some(1024), &request);
    assert_error(&response, 431);
}

#[test]
fn unsupported_transfer_encoding_gives_501() {
    let request = b"POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (response, _conn, backend, _proxy) = respond_to(|_| {}, request);
    assert_error(&response, 501);
    assert!(backend.requests().is_empty());
}

#[test]
fn unknown_http_version_gives_505() {
    for version in ["HTTP/1.2", "HTTP/2.0"] {
        let request = format!("GET / {version}\r\nHost: test.local\r\n\r\n");
        let (response, ..) = respond_to(|_| {}, request.as_bytes());
        assert_error(&response, 505);
    }
}

#[test]
fn client_stalling_its_body_is_disconnected_after_io_timeout() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.io_timeout_seconds = Some(0.5)),
    );
    let mut conn = proxy.connect();
    conn.send(b"POST /stall HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n0123456789");
    let rest = match conn.read_to_close() {
        Ok(rest) => rest,
        Err(e) if is_closed_error(&e) => Vec::new(),
        Err(e) => panic!("connection not closed after the body stalled: {e}"),
    };
    // Closing silently or after a 408 are both fine; a 200 would mean a body was invented.
    if !rest.is_empty() {
        assert!(
            rest.starts_with(b"HTTP/1.1 408 "),
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert!(
        backend.requests().is_empty(),
        "incomplete body reached the backend as complete"
    );
}
