//! Retry verdicts end to end: a request the upstream took and then closed on without answering
//! is sent again only when that is harmless (an idempotent method) or the operator opted in
//! (`[upstream] retry_non_idempotent`); a pooled connection the upstream closed while idle
//! never costs a request, whatever its method.

use crate::common::*;
use std::thread;
use std::time::Duration;

/// Reads each request, records it, and closes without a byte of answer.
fn closes_without_answering() -> Backend {
    Backend::recording(|_| Reply::SendClose(Vec::new()))
}

/// Sends `request` through a proxy in front of [A, B] where A (picked first: round robin
/// starts at the first backend, and tests run one worker) takes the request and closes.
/// Returns the response and the requests A and B received.
/// The proxy's config is changed by `change`.
fn first_backend_closes(
    request: &[u8],
    change: impl FnOnce(&mut TestConfig),
) -> (Message, Vec<Recorded>, Vec<Recorded>) {
    let a = closes_without_answering();
    let b = Backend::fixed("b");
    let proxy = Proxy::start(&TestConfig::new(&[a.port, b.port]).with(change));
    let response = proxy.connect().roundtrip(request);
    (response, a.requests(), b.requests())
}

/// The request reached A, A did not answer: 502, and B never saw it.
fn assert_not_repeated(request: &[u8]) {
    let (response, on_a, on_b) = first_backend_closes(request, |_| {});
    let line = String::from_utf8_lossy(&request[..request.len().min(40)]).into_owned();
    assert_eq!(response.status(), 502, "{line:?}: {response:?}");
    assert_eq!(on_a.len(), 1, "{line:?} never reached A: {on_a:?}");
    assert!(
        on_b.is_empty(),
        "{line:?} was sent again to B after A may have acted on it: {on_b:?}"
    );
}

#[test]
fn post_with_an_empty_body_is_not_repeated_on_another_backend() {
    let request = b"POST /charge HTTP/1.1\r\nHost: test.local\r\nContent-Length: 0\r\n\r\n";
    assert_not_repeated(request);
}

#[test]
fn bodiless_patch_is_not_repeated_on_another_backend() {
    assert_not_repeated(b"PATCH /account HTTP/1.1\r\nHost: test.local\r\n\r\n");
}

#[test]
fn post_with_a_small_body_is_not_repeated_on_another_backend() {
    assert_not_repeated(&request_bytes("POST", "/charge", &[], b"amount=5"));
}

#[test]
fn get_is_retried_on_the_next_backend() {
    let (response, on_a, on_b) = first_backend_closes(&get_request("/idempotent"), |_| {});
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "b");
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_b[0].req.head.target(), "/idempotent");
}

#[test]
fn post_is_retried_when_the_operator_opts_in() {
    let request = request_bytes("POST", "/charge", &[], b"amount=5");
    let (response, on_a, on_b) = first_backend_closes(&request, |c| {
        c.upstream.retry_non_idempotent = Some(true);
    });
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "b");
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_b[0].req.body, b"amount=5");
}

#[test]
fn post_after_the_upstream_closed_the_idle_connection_goes_on_a_fresh_one() {
    // Each connection serves one request with a keep-alive answer, then the upstream closes
    // it: the close reaches the proxy while the connection idles in its pool.
    let backend = Backend::recording(|r| {
        let reply = response_bytes("200 OK", &[("X-Conn", &r.conn.to_string())], b"ok");
        Reply::SendClose(reply)
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut client = proxy.connect();
    assert_eq!(client.get_ok("/warm").header("x-conn"), Some("0"));
    thread::sleep(Duration::from_millis(300));

    let response = client.roundtrip(&request_bytes("POST", "/charge", &[], b"amount=5"));
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.header("x-conn"), Some("1"), "{response:?}");
    let posts: Vec<_> = backend
        .requests()
        .into_iter()
        .filter(|r| r.req.head.method() == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].conn, 1);
    assert_eq!(posts[0].req.body, b"amount=5");
}
