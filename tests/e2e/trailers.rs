//! Trailer fields of chunked bodies pass through the proxy in both directions (as HAProxy does),
//! with the `Trailer` field that announces them; fields that frame, route or describe the
//! connection (those the head's `Connection` names included), and the X-Forwarded-* fields the
//! proxy sets, are not passed as trailers; an HTTP/1.0 client, whose body is close-delimited, gets
//! neither.

use crate::common::*;

/// A chunked response whose trailer section holds two end-to-end fields and four that must not
/// pass (one of them named by the head's `Connection`).
fn response_with_trailers() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nTrailer: X-Checksum, Server-Timing\r\nConnection: X-Internal\r\n\
      Transfer-Encoding: chunked\r\n\r\n\
      5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\nContent-Length: 99\r\n\
      Server-Timing: db;dur=5\r\nHost: elsewhere\r\nX-Internal: secret\r\nConnection: close\r\n\r\n"
        .to_vec()
}

fn trailer_backend() -> Backend {
    Backend::recording(|_| Reply::Send(response_with_trailers()))
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn response_trailers_reach_an_http11_client() {
    let backend = trailer_backend();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(b"GET /t HTTP/1.1\r\nHost: test.local\r\nTE: trailers\r\n\r\n");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "hello world");
    assert_eq!(
        response.header("trailer"),
        Some("X-Checksum, Server-Timing")
    );
    assert_eq!(
        response.trailers,
        fields(&[("X-Checksum", "abc123"), ("Server-Timing", "db;dur=5")])
    );
    // The trailer section ended the message where it should: the connection is in sync (the
    // Connection trailer field was not taken for a close either).
    let again = conn.roundtrip(&get_request("/again"));
    assert_eq!(again.trailers.len(), 2);
    assert_eq!(backend.requests().len(), 2);
}

#[test]
fn http10_client_gets_the_body_without_trailers() {
    let backend = trailer_backend();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    conn.send(b"GET /t HTTP/1.0\r\n\r\n");
    let raw = conn.read_to_close().expect("close-delimited response");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("trailer"),
        "no trailers follow a close-delimited body, so none are announced: {head}"
    );
    assert_eq!(body, "hello world");
}

#[test]
fn request_trailers_reach_the_upstream() {
    let backend = Backend::recording(|_| Reply::Send(response_bytes("200 OK", &[], b"ok")));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(
        b"POST /up HTTP/1.1\r\nHost: test.local\r\nTrailer: Digest\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n0\r\nDigest: sha-256=xyz\r\nTransfer-Encoding: gzip\r\n\
          X-Forwarded-For: 10.9.9.9\r\nX-Late: 1\r\n\r\n",
    );
    assert_eq!(response.status(), 200);
    // A Content-Length body cannot carry trailers, so its `Trailer` field is not passed on.
    let response = conn.roundtrip(
        b"POST /len HTTP/1.1\r\nHost: test.local\r\nTrailer: Digest\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(response.status(), 200);

    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    let chunked = &requests[0].req;
    assert_eq!(chunked.body, b"abc");
    assert_eq!(chunked.head.get("trailer"), Some("Digest"));
    assert_eq!(
        chunked.trailers,
        fields(&[("Digest", "sha-256=xyz"), ("X-Late", "1")])
    );
    let with_length = &requests[1].req;
    assert_eq!(with_length.body, b"abc");
    assert!(!with_length.head.has("trailer"), "{:?}", with_length.head);
}
