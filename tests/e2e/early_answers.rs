//! Answers that come before the request body is all sent. An upstream that rejects an upload
//! after its head (413, 401) has its answer relayed at once, whether it then closes or just
//! stops reading, instead of a 502 or a stall until `io_timeout`. Any answer given while the
//! client is still sending ends in a lingering close: the proxy half-closes and discards the
//! rest, so the client's upload is not cut off by a reset before it can read the answer. So does
//! a close after a request that has a pipelined one behind it.

use crate::common::*;
use std::io::{self, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// Size of an upload the upstream never reads: more than the socket buffers between client,
/// proxy and upstream can absorb (loopback buffers grow to several MiB each), so the body
/// cannot have been sent whole before the answer.
const UNREAD_UPLOAD: usize = 32 << 20;
/// Size of an upload that is read whole.
const READ_UPLOAD: usize = 4 << 20;

fn post_head(framing: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: test.local\r\n{framing}\r\n").into_bytes()
}

/// The two framings of the same `size`-byte body: (name, head, body bytes on the wire).
fn uploads(size: usize) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let data = pattern(size, 7);
    let mut chunked = Vec::new();
    for piece in data.chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    vec![
        (
            "content-length",
            post_head(&format!("Content-Length: {size}\r\n")),
            data,
        ),
        (
            "chunked",
            post_head("Transfer-Encoding: chunked\r\n"),
            chunked,
        ),
    ]
}

/// Sends `head` and then `body` from another thread, so the caller can read the answer while
/// the upload is still going. The thread returns the upload's outcome.
fn upload_in_background(
    conn: &HttpConn,
    head: &[u8],
    body: Vec<u8>,
) -> thread::JoinHandle<io::Result<()>> {
    let mut writer: TcpStream = conn.stream().try_clone().expect("clone client socket");
    writer.write_all(head).expect("send request head");
    thread::spawn(move || {
        for piece in body.chunks(64 * 1024) {
            writer.write_all(piece)?;
        }
        Ok(())
    })
}

fn rejection() -> Vec<u8> {
    response_bytes(
        "413 Payload Too Large",
        &[("Connection", "close")],
        b"too large",
    )
}

/// Reads the answer to an upload still in progress, checks it is `status` with `body` and the
/// connection's last, then that the upload itself went through (no reset) and the connection
/// closes.
fn assert_answered_during_upload(
    conn: &mut HttpConn,
    upload: thread::JoinHandle<io::Result<()>>,
    status: u16,
    body: &str,
    case: &str,
) {
    let response = conn
        .read_response("POST")
        .unwrap_or_else(|e| panic!("{case}: no answer while uploading: {e}"));
    assert_eq!(response.status(), status, "{case}: {response:?}");
    assert_eq!(response.text(), body, "{case}");
    assert!(
        response.head.connection_has("close"),
        "{case}: {response:?}"
    );
    let uploaded = upload.join().expect("upload thread");
    assert!(
        uploaded.is_ok(),
        "{case}: the client's upload was cut off instead of discarded: {uploaded:?}"
    );
    conn.expect_closed();
}

#[test]
fn upstream_rejection_before_the_body_ends_reaches_the_client() {
    // Reads the head only, answers, and closes with the body unread (the kernel sends a RST).
    let backend = Backend::raw(|mut conn, _| {
        if let Ok(Some(_)) = conn.read_head() {
            let _ = conn.try_send(&rejection());
        }
    });
    for (driver, env) in DRIVERS {
        let proxy = Proxy::start_with_env(&TestConfig::new(&[backend.port]), env);
        for (name, head, body) in uploads(UNREAD_UPLOAD) {
            let mut conn = proxy.connect();
            let upload = upload_in_background(&conn, &head, body);
            let case = format!("{driver}, {name}");
            assert_answered_during_upload(&mut conn, upload, 413, "too large", &case);
        }
    }
    // The upstream connections were out of step and not pooled: each upload opened its own.
    assert_eq!(backend.connections(), 4);
}

#[test]
fn upstream_that_answers_and_stops_reading_is_relayed_without_waiting() {
    // Answers after the head, then holds the connection without reading: the proxy's write of
    // the body would block until io_timeout if it did not watch for the answer.
    let backend = Backend::raw(|mut conn, _| {
        if let Ok(Some(_)) = conn.read_head() {
            let _ = conn.try_send(&response_bytes("401 Unauthorized", &[], b"login first"));
            thread::sleep(Duration::from_secs(20));
        }
    });
    for (driver, env) in DRIVERS {
        let proxy = Proxy::start_with_env(
            &TestConfig::new(&[backend.port]).with(|c| c.timeouts.io_timeout_seconds = Some(60.0)),
            env,
        );
        let (_, head, body) = uploads(UNREAD_UPLOAD).swap_remove(0);
        let mut conn = proxy.connect();
        let started = Instant::now();
        let upload = upload_in_background(&conn, &head, body);
        assert_answered_during_upload(&mut conn, upload, 401, "login first", driver);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{driver}: answer took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn proxy_rejection_of_an_oversized_upload_is_read_by_the_client() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.limits.max_body_bytes = Some(1000)),
    );
    for (name, head, body) in uploads(UNREAD_UPLOAD) {
        let mut conn = proxy.connect();
        let upload = upload_in_background(&conn, &head, body);
        let response = conn.read_response("POST").expect(name);
        assert_eq!(response.status(), 413, "{name}: {response:?}");
        let uploaded = upload.join().expect("upload thread");
        assert!(uploaded.is_ok(), "{name}: upload reset: {uploaded:?}");
        conn.expect_closed();
    }
}

#[test]
fn interim_answer_during_the_body_keeps_the_exchange_whole() {
    // 100 Continue as soon as the head is in, then the whole body is read and answered with
    // its digest; the connection stays usable.
    let backend = Backend::raw(|mut conn, _| loop {
        let Ok(Some(head)) = conn.read_head() else {
            return;
        };
        let len: usize = head
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if conn.try_send(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
            return;
        }
        let mut body = vec![0; len];
        if io::Read::read_exact(&mut conn, &mut body).is_err() {
            return;
        }
        let digest = sha256_hex(&body);
        if conn
            .try_send(&response_bytes("200 OK", &[], digest.as_bytes()))
            .is_err()
        {
            return;
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let (_, head, body) = uploads(READ_UPLOAD).swap_remove(0);
    let digest = sha256_hex(&body);
    let mut conn = proxy.connect();
    for round in 0..2 {
        let upload = upload_in_background(&conn, &head, body.clone());
        let response = conn.read_response("POST").expect("answer");
        upload.join().expect("upload thread").expect("upload");
        assert_eq!(response.status(), 200, "round {round}: {response:?}");
        assert_eq!(response.text(), digest, "round {round}");
    }
    assert_eq!(
        backend.connections(),
        1,
        "the upstream connection was reused"
    );
}

/// A client pipelines an upload behind a request that asks to close: the proxy answers the first
/// request, then discards the upload instead of closing on it (which would reset the client).
#[test]
fn upload_pipelined_behind_a_close_request_is_discarded_not_reset() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let mut head = b"GET /first HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n".to_vec();
    head.extend_from_slice(&post_head(&format!("Content-Length: {UNREAD_UPLOAD}\r\n")));
    let upload = upload_in_background(&conn, &head, pattern(UNREAD_UPLOAD, 3));
    let digest = sha256_hex(b"");
    assert_answered_during_upload(&mut conn, upload, 200, &digest, "pipelined behind close");
    assert_eq!(
        backend.requests().len(),
        1,
        "the pipelined request was served"
    );
}

/// After a rejected upload the client goes quiet without closing: the proxy keeps discarding
/// for a while (writes still succeed), then closes (writes fail).
#[test]
fn lingering_close_ends_after_five_silent_seconds() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.limits.max_body_bytes = Some(1000)),
    );
    let mut conn = proxy.connect();
    conn.send(&post_head("Content-Length: 100000\r\n"));
    conn.send(&[b'x'; 500]);
    let response = conn.read_response("POST").expect("413");
    assert_eq!(response.status(), 413);
    conn.expect_closed();
    let writes_succeed = |conn: &mut HttpConn| {
        let first = conn.try_send(b"more");
        thread::sleep(Duration::from_millis(300));
        first.and_then(|()| conn.try_send(b"more")).is_ok()
    };
    assert!(writes_succeed(&mut conn), "closed while lingering");
    thread::sleep(Duration::from_millis(7500));
    assert!(!writes_succeed(&mut conn), "still lingering after 7.5 s");
}

#[test]
fn shutdown_does_not_wait_for_a_lingering_connection() {
    let backend = Backend::body_digest();
    let mut proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.limits.max_body_bytes = Some(1000)),
    );
    let mut conn = proxy.connect();
    conn.send(&post_head("Content-Length: 100000\r\n"));
    let response = conn.read_response("POST").expect("413");
    assert_eq!(response.status(), 413);
    let started = Instant::now();
    let status = proxy.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
}
