//! Header handling: hop-by-hop headers removed in both directions (TE: trailers passes),
//! X-Forwarded-* added, Host kept, the request line forwarded as HTTP/1.1, and end-to-end
//! headers (including repeated ones) passed through.

use crate::common::*;

/// Sends `request` (raw bytes) through a fresh proxy and returns the head the backend saw.
fn upstream_head_for(request: &[u8]) -> Head {
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(request);
    assert_eq!(response.status(), 200, "{response:?}");
    backend.single_request().head
}

/// Asserts any `Connection` header is the proxy's own (`close` or `keep-alive`), not the peer's.
fn assert_connection_is_proxys_own(head: &Head) {
    for value in head.get_all("connection") {
        for token in value.split(',').map(str::trim) {
            assert!(
                token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close"),
                "peer's Connection token {token:?} forwarded: {head:?}"
            );
        }
    }
}

#[test]
fn request_hop_by_hop_headers_are_removed() {
    let head = upstream_head_for(
        b"GET /hop HTTP/1.1\r\nHost: test.local\r\nConnection: keep-alive, x-secret\r\n\
          X-Secret: s\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n\
          Upgrade: h2c\r\nX-Keep: yes\r\nAccept: */*\r\n\r\n",
    );
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert!(!head.has(name), "{name} forwarded upstream: {head:?}");
    }
    assert_eq!(head.get("x-keep"), Some("yes"));
    assert_eq!(head.get("accept"), Some("*/*"));
}

#[test]
fn field_named_like_the_close_option_is_removed() {
    // RFC 9110 §7.6.1: a field named like any option in Connection is hop-by-hop, `close` too.
    let head = upstream_head_for(
        b"GET /close HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\nClose: c\r\n\
          X-Keep: yes\r\n\r\n",
    );
    assert!(!head.has("close"), "{head:?}");
    assert_eq!(head.get("x-keep"), Some("yes"));
}

#[test]
fn te_trailers_is_passed_upstream() {
    let head = upstream_head_for(b"GET /te HTTP/1.1\r\nHost: test.local\r\nTE: trailers\r\n\r\n");
    assert_eq!(head.get_all("te"), ["trailers"]);
}

#[test]
fn response_hop_by_hop_headers_are_removed() {
    let reply = response_bytes(
        "200 OK",
        &[
            ("Connection", "keep-alive, X-Internal"),
            ("X-Internal", "i"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"),
            ("X-End", "e"),
        ],
        b"body",
    );
    let backend = Backend::recording(move |_| Reply::Send(reply.clone()));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    for _ in 0..2 {
        let response = conn.get_ok("/hop");
        assert_connection_is_proxys_own(&response.head);
        for name in ["x-internal", "keep-alive", "proxy-connection", "upgrade"] {
            assert!(
                !response.head.has(name),
                "{name} forwarded to the client: {:?}",
                response.head
            );
        }
        assert_eq!(response.header("x-end"), Some("e"));
        assert_eq!(response.text(), "body");
    }
}

#[test]
fn forwarded_headers_extend_incoming_ones_and_host_is_kept() {
    let head = upstream_head_for(
        b"GET /fwd HTTP/1.1\r\nHost: example.test:8080\r\nX-Forwarded-For: 10.0.0.1\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    assert_eq!(head.get_all("host"), ["example.test:8080"]);
    assert_eq!(head.get_all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(head.get_all("x-forwarded-proto"), ["http"]);
    assert_eq!(head.get_all("x-forwarded-host"), ["example.test:8080"]);
}

#[test]
fn forwarded_headers_are_added_when_absent() {
    let head = upstream_head_for(&get_request("/fwd"));
    assert_eq!(head.get_all("host"), ["test.local"]);
    assert_eq!(head.get_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(head.get_all("x-forwarded-proto"), ["http"]);
    assert_eq!(head.get_all("x-forwarded-host"), ["test.local"]);
}

#[test]
fn several_x_forwarded_for_headers_are_merged() {
    let head = upstream_head_for(
        b"GET /fwd HTTP/1.1\r\nHost: test.local\r\nX-Forwarded-For: 10.0.0.1\r\n\
          X-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n\r\n",
    );
    assert_eq!(
        head.get_all("x-forwarded-for"),
        ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
    );
}

#[test]
fn request_line_is_forwarded_as_http11() {
    let head = upstream_head_for(b"DELETE /p/a%20b?q=1&r=%2F HTTP/1.0\r\nHost: test.local\r\n\r\n");
    assert_eq!(head.start, "DELETE /p/a%20b?q=1&r=%2F HTTP/1.1");
}

#[test]
fn repeated_end_to_end_headers_pass_in_order() {
    let reply = response_bytes(
        "200 OK",
        &[
            ("Set-Cookie", "a=1; Path=/"),
            ("Set-Cookie", "b=2"),
            ("Cache-Control", "no-store"),
        ],
        b"x",
    );
    let backend = Backend::recording(move |_| Reply::Send(reply.clone()));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let request = request_bytes("GET", "/multi", &[("X-Multi", "a"), ("X-Multi", "b")], b"");
    let response = conn.roundtrip(&request);
    assert_eq!(response.head.get_all("set-cookie"), ["a=1; Path=/", "b=2"]);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let upstream = backend.single_request().head;
    assert_eq!(upstream.get_all("x-multi").join(", "), "a, b");
}
