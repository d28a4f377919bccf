//! Request-smuggling defences: every ambiguous or malformed request head or chunked body is
//! refused with its exact status and the connection closed, with a second request glued behind
//! it that must never reach the backend; malformed upstream answers give 502 and their
//! connection is never reused; slow or stalled clients are cut off by the timeouts.

use crate::common::smuggling::{
    assert_family_refused, check_error_response, chunked_post, expect_closed_within, post_with,
    refusal,
};
use crate::common::*;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A proxy in front of an echo backend, for the request families.
fn echo_proxy() -> (Backend, Proxy) {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    (backend, proxy)
}

#[test]
fn ambiguous_content_length_is_refused() {
    let (backend, proxy) = echo_proxy();
    let cases = [
        refusal(
            "cl-then-te",
            post_with(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
            400,
        ),
        refusal(
            "te-then-cl",
            post_with(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                b"0\r\n\r\n",
            ),
            400,
        ),
        refusal(
            "cl-zero-and-te",
            post_with(
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
        ),
        refusal(
            "two-cl-differ",
            post_with("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
            400,
        ),
        refusal(
            "cl-list-differ",
            post_with("Content-Length: 5, 6\r\n", b"hello!"),
            400,
        ),
        refusal(
            "cl-not-numeric",
            post_with("Content-Length: five\r\n", b"hello"),
            400,
        ),
        refusal(
            "cl-hex",
            post_with("Content-Length: 0x5\r\n", b"hello"),
            400,
        ),
        refusal(
            "cl-trailing-junk",
            post_with("Content-Length: 5a\r\n", b"hello"),
            400,
        ),
        refusal(
            "cl-inner-space",
            post_with("Content-Length: 1 0\r\n", b"helloworld"),
            400,
        ),
        refusal("cl-empty", post_with("Content-Length: \r\n", b""), 400),
        refusal(
            "cl-plus",
            post_with("Content-Length: +5\r\n", b"hello"),
            400,
        ),
        refusal(
            "cl-minus",
            post_with("Content-Length: -5\r\n", b"hello"),
            400,
        ),
        refusal(
            "cl-overflow-u64",
            post_with("Content-Length: 18446744073709551616\r\n", b"hello"),
            400,
        ),
        refusal(
            "cl-overflow-20-digits",
            post_with("Content-Length: 99999999999999999999\r\n", b"hello"),
            400,
        ),
    ];
    assert_family_refused(&proxy, &backend, &cases);
}

#[test]
fn transfer_encoding_other_than_chunked_is_refused() {
    let (backend, proxy) = echo_proxy();
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    let cases = [
        refusal(
            "gzip-chunked",
            post_with("Transfer-Encoding: gzip, chunked\r\n", body),
            501,
        ),
        refusal(
            "chunked-identity",
            post_with("Transfer-Encoding: chunked, identity\r\n", body),
            400,
        ),
        refusal(
            "chunked-then-identity-line",
            post_with(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                body,
            ),
            400,
        ),
        refusal(
            "xchunked",
            post_with("Transfer-Encoding: xchunked\r\n", body),
            400,
        ),
        refusal(
            "identity",
            post_with("Transfer-Encoding: identity\r\n", body),
            400,
        ),
        refusal("te-empty", post_with("Transfer-Encoding: \r\n", body), 400),
        refusal(
            "te-on-http10",
            [
                &b"POST /refused HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                body,
            ]
            .concat(),
            400,
        ),
    ];
    assert_family_refused(&proxy, &backend, &cases);
}

#[test]
fn malformed_header_syntax_is_refused() {
    let (backend, proxy) = echo_proxy();
    let get =
        |lines: &[u8]| [&b"GET /refused HTTP/1.1\r\nHost: x\r\n"[..], lines, b"\r\n"].concat();
    let cases = [
        refusal("obs-fold-space", get(b"X-A: a\r\n b\r\n"), 400),
        refusal("obs-fold-tab", get(b"X-A: a\r\n\tb\r\n"), 400),
        refusal(
            "obs-fold-first-line",
            &b"GET /refused HTTP/1.1\r\n Host: x\r\nHost: x\r\n\r\n"[..],
            400,
        ),
        refusal("space-before-colon", get(b"X-A : b\r\n"), 400),
        refusal("tab-before-colon", get(b"X-A\t: b\r\n"), 400),
        refusal(
            "te-space-before-colon",
            post_with("Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
            400,
        ),
        refusal(
            "cl-space-before-colon",
            post_with("Content-Length : 5\r\n", b"hello"),
            400,
        ),
        refusal("nul-in-value", get(b"X-A: a\0b\r\n"), 400),
        refusal("nul-in-name", get(b"X\0A: b\r\n"), 400),
        refusal("bare-cr-in-value", get(b"X-A: a\rb\r\n"), 400),
        refusal("bare-cr-in-name", get(b"X\rA: b\r\n"), 400),
        refusal("bare-cr-line-end", get(b"X-A: b\r"), 400),
        refusal("ctl-01-in-value", get(b"X-A: a\x01b\r\n"), 400),
        refusal("ctl-1b-in-value", get(b"X-A: a\x1bb\r\n"), 400),
        refusal("del-in-value", get(b"X-A: a\x7fb\r\n"), 400),
        refusal("ctl-01-in-name", get(b"X\x01A: b\r\n"), 400),
        refusal(
            "vt-before-chunked",
            post_with("Transfer-Encoding: \x0bchunked\r\n", b"0\r\n\r\n"),
            400,
        ),
        refusal("no-colon", get(b"X-A b\r\n"), 400),
        refusal("empty-name", get(b": b\r\n"), 400),
        refusal(
            "ctl-in-target",
            &b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            400,
        ),
    ];
    assert_family_refused(&proxy, &backend, &cases);
}

#[test]
fn malformed_chunked_body_is_refused_before_any_response() {
    let (backend, proxy) = echo_proxy();
    let cases = [
        refusal(
            "size-not-hex",
            chunked_post(b"zz\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal("size-0x", chunked_post(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
        refusal(
            "size-negative",
            chunked_post(b"-5\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "size-leading-space",
            chunked_post(b" 5\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "size-junk-after",
            chunked_post(b"5 x\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "size-overflow-18-digits",
            chunked_post(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "size-overflow-17-digits",
            chunked_post(b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal("size-bare-lf", chunked_post(b"5\nhello\r\n0\r\n\r\n"), 400),
        refusal(
            "size-bare-cr",
            chunked_post(b"5\r\r\nhello\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "data-longer-than-size",
            chunked_post(b"5\r\nhelloXX\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "data-not-followed-by-crlf",
            chunked_post(b"5\r\nhello0\r\n\r\n"),
            400,
        ),
        refusal(
            "data-followed-by-bare-lf",
            chunked_post(b"5\r\nhello\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "second-chunk-bad",
            chunked_post(b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n"),
            400,
        ),
        refusal(
            "bad-trailer",
            chunked_post(b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n"),
            400,
        ),
    ];
    assert_family_refused(&proxy, &backend, &cases);
}

#[test]
fn unknown_version_and_bad_host_are_refused() {
    let (backend, proxy) = echo_proxy();
    let cases = [
        refusal(
            "http-2-0",
            &b"GET /refused HTTP/2.0\r\nHost: x\r\n\r\n"[..],
            505,
        ),
        refusal(
            "http-1-2",
            &b"GET /refused HTTP/1.2\r\nHost: x\r\n\r\n"[..],
            505,
        ),
        refusal(
            "http-3-0",
            &b"GET /refused HTTP/3.0\r\nHost: x\r\n\r\n"[..],
            505,
        ),
        refusal(
            "http-0-9",
            &b"GET /refused HTTP/0.9\r\nHost: x\r\n\r\n"[..],
            505,
        ),
        refusal("no-host", &b"GET /refused HTTP/1.1\r\n\r\n"[..], 400),
        refusal(
            "no-host-with-body",
            &b"POST /refused HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"[..],
            400,
        ),
        refusal(
            "two-hosts",
            &b"GET /refused HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"[..],
            400,
        ),
        refusal(
            "two-same-hosts",
            &b"GET /refused HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n"[..],
            400,
        ),
        refusal(
            "two-hosts-http10",
            &b"GET /refused HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n"[..],
            400,
        ),
    ];
    assert_family_refused(&proxy, &backend, &cases);
}

// ---- Upstream side ----

/// Requests sent after each bad answer: the first must open a new upstream connection, the
/// second must reuse that one (proving the pool is in use, so the first check means something).
const GOOD_PATHS: &[&str] = &["/next", "/again"];

/// A recording backend answering `/bad/<i>` with `bad[i]` (connection kept open) and
/// anything else with 200 and the target.
fn misbehaving_upstream(bad: Vec<Vec<u8>>) -> Backend {
    Backend::recording(move |r| {
        let target = r.req.head.target();
        match target
            .strip_prefix("/bad/")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => Reply::Send(bad[i].clone()),
            None => Reply::Send(response_bytes("200 OK", &[], target.as_bytes())),
        }
    })
}

/// Upstream connection index of the request with this target.
fn upstream_conn_of(backend: &Backend, target: &str) -> usize {
    let requests = backend.requests();
    requests
        .iter()
        .find(|r| r.req.head.target() == target)
        .unwrap_or_else(|| panic!("backend never saw {target}: {requests:?}"))
        .conn
}

/// Once `/bad/<i>` was answered: checks that `/next/<i>` reaches the backend on a connection
/// other than the bad answer's, and that `/again/<i>` reuses that new one.
fn check_not_reused_after(proxy: &Proxy, backend: &Backend, i: usize) -> Result<(), String> {
    let bad_conn = upstream_conn_of(backend, &format!("/bad/{i}"));
    let mut conns = Vec::new();
    for path in GOOD_PATHS {
        let target = format!("{path}/{i}");
        let response = proxy.connect().roundtrip(&get_request(&target));
        if response.status() != 200 || response.text() != target {
            return Err(format!(
                "{target}: {} {:?}",
                response.status(),
                response.text()
            ));
        }
        conns.push(upstream_conn_of(backend, &target));
    }
    if conns[0] == bad_conn {
        return Err(format!(
            "the connection that carried the bad answer ({bad_conn}) was reused for /next/{i}"
        ));
    }
    if conns[1] != conns[0] {
        return Err(format!(
            "pooling looks off: /next/{i} on {}, /again/{i} on {}",
            conns[0], conns[1]
        ));
    }
    Ok(())
}

#[test]
fn malformed_upstream_head_gives_502_and_is_not_reused() {
    let cases: Vec<(&str, &[u8])> = vec![
        (
            "two-content-lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "content-length-list",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ),
        (
            "content-length-signed",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
        ),
        (
            "content-length-not-numeric",
            b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello",
        ),
        ("garbage-status-line", b"this is not http\r\n\r\n"),
        (
            "status-not-numeric",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "status-four-digits",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        ("version-2", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
        (
            "space-before-colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
        ),
        (
            "nul-in-header",
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "gzip-chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "unrequested-101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        ),
    ];
    let backend = misbehaving_upstream(cases.iter().map(|(_, b)| b.to_vec()).collect());
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    // Warm the pool: the first bad answer then arrives on a reused connection.
    proxy.connect().get_ok("/warm");
    let mut failures = Vec::new();
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let response = proxy
            .connect()
            .roundtrip(&get_request(&format!("/bad/{i}")));
        let outcome = match response.status() {
            502 => check_not_reused_after(&proxy, &backend, i),
            other => Err(format!("status {other} {:?}", response.text())),
        };
        if let Err(why) = outcome {
            failures.push(format!("{name} ({}): {why}", smuggling::escape(bytes)));
        }
    }
    let warm = upstream_conn_of(&backend, "/warm");
    assert_eq!(
        upstream_conn_of(&backend, "/bad/0"),
        warm,
        "the first bad answer should have come on the pooled connection"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

#[test]
fn bad_upstream_chunk_before_anything_was_forwarded_gives_502() {
    let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    let backend = misbehaving_upstream(vec![bad.to_vec()]);
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    conn.send(&get_request("/bad/0"));
    let response = conn.read_response("GET");
    match response {
        Ok(response) => assert_eq!(response.status(), 502, "{response:?}"),
        Err(e) => panic!(
            "no 502: the head and the bad first chunk ({}) came in one write, nothing was \
             forwarded yet, but the client got {e}",
            smuggling::escape(bad)
        ),
    }
    check_not_reused_after(&proxy, &backend, 0).unwrap();
}

/// Answers `/break` with a head and a first chunk, a pause (so they are forwarded), then a broken
/// chunk size; anything else with its path. Logs (connection index, path) of every request.
fn breaking_backend(log: Arc<Mutex<Vec<(usize, String)>>>) -> Backend {
    let seen = log;
    Backend::raw(move |mut conn, index| {
        while let Ok(Some(req)) = conn.read_request() {
            let target = req.head.target().to_string();
            seen.lock().expect("log").push((index, target.clone()));
            if target == "/break" {
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
                if conn.try_send(head).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(300));
                let _ = conn.try_send(b"zz\r\nworld\r\n0\r\n\r\n");
            } else if conn
                .try_send(&response_bytes("200 OK", &[], target.as_bytes()))
                .is_err()
            {
                return;
            }
        }
    })
}

#[test]
fn upstream_failing_after_the_head_was_forwarded_resets_the_client() {
    let log: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let backend = breaking_backend(log.clone());
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    conn.send(&get_request("/break"));
    match conn.read_response("GET") {
        Ok(response) => panic!("a broken body must not look complete: {response:?}"),
        Err(e) => assert!(is_closed_error(&e), "expected a reset, got {e}"),
    }
    proxy.connect().get_ok("/next");
    let log = log.lock().expect("log").clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_ne!(
        log[0].0, log[1].0,
        "broken upstream connection reused: {log:?}"
    );
}

/// An HTTP/1.0 client's body is close-delimited, so only a reset tells it the body is cut short;
/// a request pipelined behind must not turn that reset into a lingering close (a FIN).
#[test]
fn cut_close_delimited_body_ends_in_a_reset_even_with_a_pipelined_request() {
    let backend = breaking_backend(Arc::default());
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    conn.send(b"GET /break HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /next HTTP/1.0\r\n\r\n");
    match conn.read_to_close() {
        Ok(bytes) => panic!(
            "a cut body ended in a clean close, so it looks complete: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn upstream_response_with_both_lengths_is_chunked_and_not_reused() {
    let both =
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let backend = misbehaving_upstream(vec![both.to_vec()]);
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let response = proxy.connect().roundtrip(&get_request("/bad/0"));
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(response.text(), "hello", "Transfer-Encoding must win");
    assert_ne!(
        response.header("content-length"),
        Some("3"),
        "{:?}",
        response.head
    );
    check_not_reused_after(&proxy, &backend, 0).unwrap();
}

// ---- Slow and stalled clients ----

#[test]
fn trickled_request_head_gets_408_at_the_header_timeout() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port])
            .with(|c| c.timeouts.client_header_timeout_seconds = Some(1.0)),
    );
    let mut conn = proxy.connect();
    let mut writer = conn.stream().try_clone().expect("clone stream");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_writer = stop.clone();
    let started = Instant::now();
    // One byte every 0.3 s: each one arrives well within any per-read timeout.
    let trickle = thread::spawn(move || {
        let head = b"GET /slow HTTP/1.1\r\nHost: test.local\r\nX-Padding: aaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in head.iter() {
            if stop_writer.load(Ordering::SeqCst) || writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(300));
        }
    });
    let response = conn.read_response("GET");
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let response = response.expect("a 408 response");
    check_error_response(&response, 408).unwrap();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "408 after {elapsed:?}, expected about 1 s"
    );
    expect_closed_within(&mut conn, Duration::from_secs(2)).unwrap();
    trickle.join().expect("trickle thread");
    thread::sleep(smuggling::SETTLE);
    assert_eq!(backend.connections(), 0, "{:?}", backend.requests());
    proxy.connect().get_ok("/after");
}

#[test]
fn stalled_request_body_is_cut_off_after_io_timeout() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.io_timeout_seconds = Some(0.5)),
    );
    let mut conn = proxy.connect();
    let started = Instant::now();
    conn.send(b"POST /stall HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n0123456789");
    let response = conn.read_response("POST").expect("a response");
    let elapsed = started.elapsed();
    check_error_response(&response, 408).unwrap();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(3),
        "cut off after {elapsed:?}, expected about 0.5 s"
    );
    expect_closed_within(&mut conn, Duration::from_secs(2)).unwrap();
    thread::sleep(smuggling::SETTLE);
    assert!(
        backend.requests().is_empty(),
        "incomplete body reached the backend as complete: {:?}",
        backend.requests()
    );
    proxy.connect().get_ok("/after");
}

/// What the large-response backend saw: bytes written before its writes failed, and when.
type SendOutcome = (usize, Result<(), io::ErrorKind>, Instant);

#[test]
fn client_not_reading_a_large_response_is_cut_off_after_io_timeout() {
    // Far more than loopback socket buffers can absorb on both hops (tcp_rmem max is 32 MiB).
    const TOTAL: usize = 64 << 20;
    let (tx, rx) = mpsc::channel::<SendOutcome>();
    let tx = Mutex::new(tx);
    let backend = Backend::raw(move |mut conn, _| {
        let Ok(Some(req)) = conn.read_request() else {
            return;
        };
        if req.head.target() != "/huge" {
            let _ = conn.try_send(&response_bytes("200 OK", &[], b"small"));
            return;
        }
        let block = pattern(64 * 1024, 5);
        let mut sent = 0;
        let mut result =
            conn.try_send(format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes());
        while result.is_ok() && sent < TOTAL {
            result = conn.try_send(&block);
            sent += block.len();
        }
        let outcome = (sent, result.map_err(|e| e.kind()), Instant::now());
        let _ = tx.lock().expect("lock").send(outcome);
    });
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.io_timeout_seconds = Some(0.5)),
    );

    // A client with a small receive buffer that never reads.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], proxy.port));
    socket
        .connect_timeout(&addr.into(), IO_TIMEOUT)
        .expect("connect");
    let mut client: TcpStream = socket.into();
    let started = Instant::now();
    client.write_all(&get_request("/huge")).expect("send");

    let (sent, result, at) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("backend still sending: the proxy never gave up on the stalled client");
    let elapsed = at.duration_since(started);
    match result {
        Ok(()) => panic!("backend sent all {sent} bytes: buffers absorbed the response"),
        // A write timeout would mean the upstream connection was left hanging.
        Err(kind) => assert!(
            is_closed_error(&io::Error::from(kind)),
            "backend write failed with {kind:?} after {elapsed:?}: upstream not closed"
        ),
    }
    assert!(
        elapsed < Duration::from_secs(8),
        "upstream closed only after {elapsed:?} ({sent} bytes sent)"
    );
    // The client finds the response cut short: EOF or reset before Content-Length was reached.
    client
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if is_closed_error(&e) => break,
            Err(e) => panic!("client connection not closed by the proxy: {e}"),
        }
    }
    assert!(received < TOTAL, "client got {received} bytes");
    proxy.connect().get_ok("/after");
}
