//! Request and response bodies: large Content-Length uploads, slow chunked uploads with
//! extensions and trailers, `Expect: 100-continue`, upstream interim responses, and the
//! responses that never have a body (HEAD, 204, 304).

use crate::common::*;
use std::thread;
use std::time::Duration;

#[test]
fn one_mib_content_length_post_arrives_intact() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    assert_large_post_arrives(&proxy, &backend);
}

#[test]
fn slow_chunked_post_with_extensions_and_trailer_is_decoded() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let big = pattern(0x1000, 5);
    let pieces: Vec<&[u8]> = vec![
        b"POST /chunked HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;fo",
        b"o=bar\r\nhel",
        b"lo\r\n",
        b"6\r\n world\r\n",
        b"1000;big=\"q\"\r\n",
        &big[..1000],
        &big[1000..],
        b"\r\nA\r\n0123456789\r",
        b"\n0\r\nX-Checksum: abc\r\n",
        b"\r\n",
    ];
    let mut conn = proxy.connect();
    for piece in pieces {
        conn.send(piece);
        thread::sleep(Duration::from_millis(30));
    }
    let expected = [&b"hello world"[..], &big, b"0123456789"].concat();
    let response = conn
        .read_response("POST")
        .expect("response to chunked POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), sha256_hex(&expected));
    let received = backend.single_request();
    assert_eq!(received.body.len(), expected.len());
    assert_upstream_body_framing(&received, expected.len());
    // The trailer was consumed as part of the request: the connection is in sync.
    assert_eq!(conn.get_ok("/next").text(), sha256_hex(b""));
}

#[test]
fn expect_100_continue_gets_interim_response_before_body() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    conn.send(
        b"POST /expect HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    );
    let interim = conn
        .read_response("POST")
        .expect("100 Continue before the body");
    assert_eq!(interim.head.start, "HTTP/1.1 100 Continue");
    conn.send(b"hello world");
    let response = conn.read_response("POST").expect("final response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), sha256_hex(b"hello world"));
    let received = backend.single_request();
    assert!(
        !received.head.has("expect"),
        "Expect must not be forwarded: {:?}",
        received.head
    );
}

#[test]
fn upstream_interim_responses_are_forwarded_and_not_taken_for_the_final_one() {
    let backend = Backend::raw(|mut conn, _| {
        while let Ok(Some(req)) = conn.read_request() {
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n");
            thread::sleep(Duration::from_millis(50));
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n");
            thread::sleep(Duration::from_millis(50));
            let body = format!("final {}", req.body.len());
            conn.send(&response_bytes("200 OK", &[], body.as_bytes()));
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    // The upstream's 103 reaches an HTTP/1.1 client as it comes (RFC 9110 §15.2), its own 100
    // does not (the proxy answers Expect itself and does not pass it on).
    let expect_hints = |conn: &mut HttpConn, what: &str| {
        let hints = conn.read_response("GET").expect("103 Early Hints");
        assert_eq!(hints.status(), 103, "{what}: {:?}", hints.head);
        assert_eq!(
            hints.header("link"),
            Some("</style.css>; rel=preload"),
            "{what}"
        );
    };
    conn.send(&request_bytes("POST", "/a", &[], b"abc"));
    expect_hints(&mut conn, "POST");
    let response = conn.read_response("POST").expect("final");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), "final 3");

    // With Expect, the client sees exactly one 100 (the proxy's own), the 103, then the answer.
    conn.send(b"POST /b HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    let interim = conn.read_response("POST").expect("100 Continue");
    assert_eq!(interim.status(), 100);
    conn.send(b"abcd");
    expect_hints(&mut conn, "POST with Expect");
    let response = conn.read_response("POST").expect("final response");
    assert_eq!(response.status(), 200, "{:?}", response.head);
    assert_eq!(response.text(), "final 4");

    conn.send(&get_request("/c"));
    expect_hints(&mut conn, "GET");
    assert_eq!(conn.read_response("GET").expect("final").text(), "final 0");

    // An HTTP/1.0 client gets no 1xx at all (RFC 9110 §15.2), only the final answer.
    let mut old = proxy.connect();
    old.send(b"GET /d HTTP/1.0\r\n\r\n");
    let response = old.read_response("GET").expect("final");
    assert_eq!(response.status(), 200, "{:?}", response.head);
    assert_eq!(response.text(), "final 0");
}

/// The backend answers `/probe` with `upstream_head` (no body bytes) and anything else with
/// `after`; the client's `method /probe` must get `status` with no body, and the connection
/// must then carry the next request. Returns the probe response for further checks.
fn assert_bodyless_response(method: &str, upstream_head: &'static str, status: u16) -> Message {
    let backend = Backend::recording(move |r| {
        if r.req.head.target() == "/probe" {
            Reply::Send(upstream_head.as_bytes().to_vec())
        } else {
            Reply::Send(response_bytes("200 OK", &[], b"after"))
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&request_bytes(method, "/probe", &[], b""));
    assert_eq!(response.status(), status, "{:?}", response.head);
    assert!(response.body.is_empty());
    assert!(
        !response.head.has("transfer-encoding"),
        "{:?}",
        response.head
    );
    conn.expect_silence(Duration::from_millis(300));
    assert_eq!(conn.get_ok("/after").text(), "after");
    response
}

#[test]
fn head_keeps_content_length_and_sends_no_body() {
    let response = assert_bodyless_response(
        "HEAD",
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n",
        200,
    );
    assert_eq!(response.header("content-length"), Some("1234"));
}

#[test]
fn status_204_has_no_body() {
    let response =
        assert_bodyless_response("GET", "HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n", 204);
    assert!(!response.head.has("content-length"), "{:?}", response.head);
    assert_eq!(response.header("x-done"), Some("yes"));
}

#[test]
fn status_304_with_content_length_has_no_body() {
    let response = assert_bodyless_response(
        "GET",
        "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n",
        304,
    );
    assert_eq!(response.header("etag"), Some("\"v1\""));
    if let Some(len) = response.header("content-length") {
        assert_eq!(len, "50", "a kept Content-Length must be the upstream's");
    }
}
