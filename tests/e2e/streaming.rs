//! Response streaming: a 50 MB body flows through before the backend has finished and without
//! the proxy buffering it; close-delimited and chunked upstream bodies are re-framed as chunked
//! for HTTP/1.1 clients; an upstream dying mid-body never yields a complete response.

use crate::common::*;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

const BLOCK: usize = 1 << 20;
const BLOCKS: usize = 50;
/// Blocks the backend sends before it waits for the client to have seen the first bytes.
const BLOCKS_BEFORE_GATE: usize = 4;
/// Allowed growth of the proxy's resident memory while streaming 50 MB.
const MAX_RSS_GROWTH_KIB: u64 = 24 * 1024;

#[test]
fn large_response_streams_through_with_bounded_memory() {
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let gate_rx = Mutex::new(gate_rx);
    let backend = Backend::raw(move |mut conn, _| {
        if !matches!(conn.read_request(), Ok(Some(_))) {
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            BLOCK * BLOCKS
        );
        conn.send(head.as_bytes());
        for i in 0..BLOCKS {
            if i == BLOCKS_BEFORE_GATE {
                let gate = gate_rx.lock().expect("gate lock");
                if gate.recv_timeout(IO_TIMEOUT).is_err() {
                    return; // the client never saw the first bytes: it fails on its own
                }
            }
            if conn.try_send(&pattern(BLOCK, i as u64)).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let baseline = proxy.rss_kib();

    let mut conn = proxy.connect();
    conn.send(&get_request("/big"));
    let head = conn
        .read_head()
        .expect("response head while the backend is still blocked")
        .expect("a response head");
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.get("content-length"),
        Some(&*(BLOCK * BLOCKS).to_string())
    );

    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut peak = baseline;
    let mut gate_open = false;
    let mut paused = false;
    let mut buf = vec![0u8; 64 * 1024];
    while received < BLOCK * BLOCKS {
        let n = conn.read(&mut buf).expect("read body");
        assert!(n > 0, "connection closed after {received} body bytes");
        hasher.update(&buf[..n]);
        received += n;
        if !gate_open && received >= 64 * 1024 {
            gate_tx.send(()).expect("backend waiting on the gate");
            gate_open = true;
        }
        if !paused && received >= 10 * BLOCK {
            // Stop reading so the proxy faces a slow client while the backend keeps writing.
            for _ in 0..5 {
                thread::sleep(Duration::from_millis(200));
                peak = peak.max(proxy.rss_kib());
            }
            paused = true;
        }
        if received % (4 * BLOCK) < n {
            peak = peak.max(proxy.rss_kib());
        }
    }
    peak = peak.max(proxy.rss_kib());
    assert_eq!(received, BLOCK * BLOCKS);

    let mut expected = Sha256::new();
    for i in 0..BLOCKS {
        expected.update(pattern(BLOCK, i as u64));
    }
    assert_eq!(
        hex(&hasher.finalize()),
        hex(&expected.finalize()),
        "50 MB body differs"
    );
    println!("proxy RSS: baseline {baseline} KiB, peak {peak} KiB");
    assert!(
        peak - baseline < MAX_RSS_GROWTH_KIB,
        "proxy RSS grew from {baseline} KiB to {peak} KiB while streaming"
    );
    // Nothing follows the announced length.
    conn.expect_silence(Duration::from_millis(200));
}

/// Equal bodies, or a message saying how they differ (length, first differing offset).
fn assert_same_body(got: &[u8], want: &[u8]) {
    if got != want {
        let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "body differs: got {} bytes, want {}; first differing offset {:?}; sha {} vs {}",
            got.len(),
            want.len(),
            first_diff,
            sha256_hex(got),
            sha256_hex(want)
        );
    }
}

#[test]
fn close_delimited_upstream_is_rechunked_for_http11_client() {
    let body = pattern(100_000, 9);
    let sent = body.clone();
    let backend = Backend::recording(move |_| {
        let mut reply =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        reply.extend_from_slice(&sent);
        Reply::SendClose(reply)
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&get_request("/close-delimited"));
    assert_eq!(response.status(), 200);
    assert_eq!(response.framing, Framing::Chunked, "{:?}", response.head);
    assert!(!response.head.has("content-length"), "{:?}", response.head);
    assert_same_body(&response.body, &body);
    if !response.head.connection_has("close") {
        let again = conn.roundtrip(&get_request("/close-delimited"));
        assert_eq!(sha256_hex(&again.body), sha256_hex(&body));
    }
}

#[test]
fn chunked_upstream_reaches_http11_client_chunked() {
    let tail = pattern(70_000, 3);
    let reply = chunked_response_bytes(
        "200 OK",
        &[("X-Kind", "chunked")],
        &[b"first;", b"second;", &tail],
    );
    let backend = Backend::recording(move |_| Reply::Send(reply.clone()));
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    for _ in 0..2 {
        let response = conn.roundtrip(&get_request("/chunked"));
        assert_eq!(response.status(), 200);
        assert_eq!(response.framing, Framing::Chunked, "{:?}", response.head);
        assert_eq!(response.header("x-kind"), Some("chunked"));
        assert_eq!(response.body, [&b"first;second;"[..], &tail].concat());
    }
}

/// The backend sends a head plus `partial` body bytes, then closes (or, with `hold`, stalls until
/// the proxy gives up); the client must see the connection end without a complete response.
/// The proxy's config is changed by `change`.
fn assert_upstream_failure_is_not_a_complete_response(
    partial: Vec<u8>,
    hold: bool,
    change: impl FnOnce(&mut TestConfig),
) {
    let backend = Backend::raw(move |mut conn, _| {
        if let Ok(Some(_)) = conn.read_request() {
            conn.send(&partial);
            if hold {
                let _ = conn.read_to_close();
            }
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]).with(change));
    let mut conn = proxy.connect();
    conn.send(&get_request("/dies"));
    match conn.read_response("GET") {
        Ok(response) => panic!(
            "got a complete response from a failed upstream: {:?}, {} body bytes",
            response.head,
            response.body.len()
        ),
        Err(e) => assert!(is_closed_error(&e), "expected close/reset, got {e}"),
    }
}

fn content_length_head_and_1000_of_100000_bytes() -> Vec<u8> {
    let mut partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    partial.extend_from_slice(&pattern(1000, 1));
    partial
}

/// Large enough that the proxy splices the rest of the body (socket -> pipe -> socket).
fn content_length_head_and_300k_of_1_mib() -> Vec<u8> {
    let mut partial =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1 << 20).into_bytes();
    partial.extend_from_slice(&pattern(300_000, 4));
    partial
}

#[test]
fn upstream_dying_mid_spliced_body_closes_client() {
    assert_upstream_failure_is_not_a_complete_response(
        content_length_head_and_300k_of_1_mib(),
        false,
        |_| {},
    );
}

#[test]
fn upstream_stalling_mid_spliced_body_closes_client_after_io_timeout() {
    assert_upstream_failure_is_not_a_complete_response(
        content_length_head_and_300k_of_1_mib(),
        true,
        |c| c.timeouts.io_timeout_seconds = Some(0.5),
    );
}

#[test]
fn spliced_bodies_arrive_whole_and_both_connections_stay_usable() {
    // 1 MiB bodies are spliced; afterwards the same client and upstream connections carry
    // ordinary (copied) requests and bodies again, in both directions.
    let large = pattern(1 << 20, 9);
    let reply = response_bytes("200 OK", &[], &large);
    let backend = Backend::recording(move |req| {
        if req.req.head.target() == "/large" {
            Reply::Send(reply.clone())
        } else {
            Reply::Send(response_bytes(
                "200 OK",
                &[],
                &sha256_hex(&req.req.body).into_bytes(),
            ))
        }
    });
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    for round in 0..2 {
        let response = conn.roundtrip(&get_request("/large"));
        assert_eq!(response.status(), 200);
        assert!(
            response.body == large,
            "round {round}: {} bytes differ",
            response.body.len()
        );
        let upload = pattern((1 << 20) + round, 10 + round as u64);
        let request = request_bytes("POST", "/digest", &[], &upload);
        assert_eq!(conn.roundtrip(&request).text(), sha256_hex(&upload));
        assert_eq!(
            conn.roundtrip(&get_request("/small")).text(),
            sha256_hex(b"")
        );
    }
    assert_eq!(
        backend.connections(),
        1,
        "the upstream connection was not reused"
    );
}

#[test]
fn upstream_dying_mid_content_length_body_closes_client() {
    assert_upstream_failure_is_not_a_complete_response(
        content_length_head_and_1000_of_100000_bytes(),
        false,
        |_| {},
    );
}

#[test]
fn upstream_dying_mid_chunk_never_sends_terminator() {
    let mut partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n".to_vec();
    partial.extend_from_slice(&pattern(500, 2));
    assert_upstream_failure_is_not_a_complete_response(partial, false, |_| {});
}

#[test]
fn upstream_dying_between_chunks_never_sends_terminator() {
    let partial = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
    assert_upstream_failure_is_not_a_complete_response(partial, false, |_| {});
}

#[test]
fn upstream_stalling_mid_body_closes_client_after_io_timeout() {
    assert_upstream_failure_is_not_a_complete_response(
        content_length_head_and_1000_of_100000_bytes(),
        true,
        |c| c.timeouts.io_timeout_seconds = Some(0.5),
    );
}
