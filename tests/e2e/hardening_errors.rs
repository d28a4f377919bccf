//! Hardened edges of the exchange: no `100 Continue` to an HTTP/1.0 client; response transfer
//! codings other than chunked and statuses outside 100-599 are 502; requests the proxy refuses
//! itself are access-logged (with the reason and what arrived of the target, cut at 2 KiB) and
//! counted; `Content-Length: 0` kept both ways, so empty answers on keep-alive stay prompt.

use crate::common::admin::start_with_admin;
use crate::common::*;
use std::time::{Duration, Instant};

/// Sends a `POST` head with `Expect: 100-continue` in `version`, then the body once the proxy
/// said `100 Continue` or, for an HTTP/1.0 client, after half a second of silence (such a
/// client sends its body anyway); the body must arrive whole.
fn upload_expecting_continue(version: &str) {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let head = format!(
        "POST /up {version}\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    );
    conn.send(head.as_bytes());
    if version == "HTTP/1.0" {
        // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
        conn.expect_silence(Duration::from_millis(500));
    } else {
        let interim = conn.read_response("POST").expect("100 Continue");
        assert_eq!(interim.status(), 100, "{interim:?}");
    }
    conn.send(b"hello");
    let response = conn.read_response("POST").expect("final response");
    assert_eq!(response.status(), 200, "{version}: {response:?}");
    assert_eq!(response.text(), sha256_hex(b"hello"));
}

#[test]
fn http10_client_never_gets_100_continue() {
    upload_expecting_continue("HTTP/1.0");
}

#[test]
fn http11_client_still_gets_100_continue() {
    upload_expecting_continue("HTTP/1.1");
}

/// A proxy in front of a backend that answers every request with `reply` and closes.
fn answering(reply: &[u8]) -> (Backend, Proxy) {
    let reply = reply.to_vec();
    let backend = Backend::recording(move |_| Reply::SendClose(reply.clone()));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    (backend, proxy)
}

#[test]
fn response_transfer_coding_other_than_chunked_is_502() {
    let (_backend, proxy) =
        answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08coded bytes");
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let request = format!("GET /gz {version}\r\nHost: test.local\r\n\r\n");
        let response = proxy.connect().roundtrip(request.as_bytes());
        assert_eq!(response.status(), 502, "{version}: {response:?}");
    }
}

#[test]
fn response_status_outside_100_to_599_is_502() {
    for status in ["600 Odd", "999 Odder"] {
        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
        let (_backend, proxy) = answering(reply.as_bytes());
        let response = proxy.connect().roundtrip(&get_request("/status"));
        assert_eq!(response.status(), 502, "{status}: {response:?}");
    }
}

#[test]
fn refused_requests_are_access_logged_and_counted() {
    let backend = Backend::fixed("ok");
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]).with(|c| {
        c.limits.max_body_bytes = Some(100);
        c.limits.max_headers = Some(10);
        c.timeouts.client_header_timeout_seconds = Some(0.5);
    }));
    let long = format!("/long-{}", "a".repeat(3000));
    let too_long = format!("/too-long-{}", "b".repeat(9000));
    let many_headers: String = (0..11).map(|i| format!("X-H{i}: v\r\n")).collect();
    // (status, request, logged target prefix)
    let cases: Vec<(u16, String, String)> = vec![
        (
            400,
            // No Host.
            format!("GET {long} HTTP/1.1\r\n\r\n"),
            "/long-".into(),
        ),
        (
            413,
            "POST /too-big HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1000\r\n\r\n".into(),
            "/too-big".into(),
        ),
        (
            414,
            format!("GET {too_long} HTTP/1.1\r\nHost: test.local\r\n\r\n"),
            "/too-long-".into(),
        ),
        (
            431,
            format!("GET /many-headers HTTP/1.1\r\nHost: test.local\r\n{many_headers}\r\n"),
            "/many-headers".into(),
        ),
        (
            501,
            "POST /coded HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                .into(),
            "/coded".into(),
        ),
        (
            505,
            "GET /future HTTP/2.0\r\nHost: test.local\r\n\r\n".into(),
            "/future".into(),
        ),
    ];
    for (status, request, _) in &cases {
        let response = proxy.connect().roundtrip(request.as_bytes());
        assert_eq!(response.status(), *status, "{response:?}");
    }
    // 408: the head never completes.
    let mut slow = proxy.connect();
    slow.send(b"GET /slow-head HTTP/1.1\r\nHost: test.local\r\n");
    let started = Instant::now();
    let response = slow.read_response("GET").expect("a 408");
    assert_eq!(response.status(), 408, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // A forwarded request with a long target is logged cut as well.
    assert_eq!(proxy.connect().get_ok(&long).text(), "ok");

    let mut expected: Vec<(u16, &str)> = cases
        .iter()
        .map(|(status, _, target)| (*status, target.as_str()))
        .collect();
    expected.push((408, "/slow-head"));
    // Every status's line, the forwarded 200's included (its line is written after its answer):
    // waited for by status, not by count, so no other line can stand in for a missing one.
    let wanted: Vec<String> = expected
        .iter()
        .map(|(status, _)| status.to_string())
        .chain(std::iter::once("200".to_string()))
        .collect();
    let mut lines = Vec::new();
    let all_logged = poll(IO_TIMEOUT, || {
        lines = proxy.wait_log_lines(0, "access lines", |l| l.contains(" access: "));
        wanted
            .iter()
            .all(|s| lines.iter().any(|l| log_field(l, "status=") == Some(s)))
    });
    assert!(all_logged.is_some(), "access lines missing: {lines:#?}");
    for (status, target) in &expected {
        let line = lines
            .iter()
            .find(|l| log_field(l, "status=") == Some(&status.to_string()))
            .unwrap_or_else(|| panic!("no access line with status {status}: {lines:#?}"));
        let path = log_field(line, "path=").unwrap_or("");
        assert!(path.starts_with(target), "{status}: {line}");
        let reason = log_field(line, "reason=").unwrap_or("-");
        assert!(reason != "-" && reason.starts_with('"'), "{status}: {line}");
        assert!(
            path.len() <= 2048 + "...[truncated]".len(),
            "{status}: {line}"
        );
    }
    // Targets over 2 KiB: the first 2048 bytes and a mark.
    let cut = format!("{}...[truncated]", &long[..2048]);
    for status in ["400", "414", "200"] {
        let line = lines
            .iter()
            .find(|l| log_field(l, "status=") == Some(status))
            .expect("line found above");
        let path = log_field(line, "path=").unwrap_or("");
        if status == "414" {
            assert!(
                path.len() == 2048 + 14 && path.ends_with("...[truncated]"),
                "414: {line}"
            );
        } else {
            assert_eq!(path, cut, "{status}: {line}");
        }
    }

    let metrics = admin.metrics();
    let class = |c: &str| metrics.value("ringproxy_requests_total", &[("class", c)]);
    assert_eq!(class("4xx"), 5.0, "400, 408, 413, 414, 431");
    assert_eq!(class("5xx"), 2.0, "501, 505");
    assert_eq!(class("2xx"), 1.0);
}

#[test]
fn empty_answers_keep_content_length_zero_on_a_keep_alive_connection() {
    let backend = Backend::recording(|r| {
        Reply::Send(match r.req.head.target() {
            "/moved" => response_bytes("302 Found", &[("Location", "/new")], b""),
            _ => response_bytes("200 OK", &[], b""),
        })
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    conn.stream()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set_read_timeout");
    for (path, status) in [("/moved", 302), ("/empty", 200)] {
        let response = conn.roundtrip(&get_request(path));
        assert_eq!(response.status(), status, "{response:?}");
        assert_eq!(
            response.header("content-length"),
            Some("0"),
            "{path}: {response:?}"
        );
        assert!(!response.head.connection_has("close"), "{response:?}");
    }
    let response = conn.roundtrip(&request_bytes("POST", "/submit", &[], b""));
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(backend.connections(), 1, "one upstream connection for all");
    let post = backend
        .requests()
        .into_iter()
        .find(|r| r.req.head.method() == "POST")
        .expect("the POST reached the upstream");
    assert_eq!(
        post.req.head.get("content-length"),
        Some("0"),
        "{:?}",
        post.req.head
    );
}
