//! The log queue is bounded in bytes: with stdout a pipe nobody reads, tens of thousands of
//! access lines with long targets leave the proxy's memory within `[logging] buffer_bytes` of
//! where it started, every request is still answered (workers never wait on the log), and the
//! lines that did not fit are counted in `ringproxy_log_lines_dropped_total`.

use crate::common::admin::Admin;
use crate::common::config::LogFormat;
use crate::common::*;
use std::thread;

/// The log budget under test; small, so the bound below is tight next to what leaks without it.
const BUFFER_BYTES: u64 = 1 << 20;
/// Clients, and requests each sends in pipelined batches on its keep-alive connection.
const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 6_000;
const BATCH: usize = 16;
/// A target of 8 KiB of `"`: each doubles under JSON escaping, so each access line is ~16 KiB
/// (24,000 of them would be ~400 MB of log).
const QUOTES: usize = 8 * 1024;

/// A backend answering every request with a short 200, recording nothing (the targets are long).
fn quiet_backend() -> Backend {
    let reply = response_bytes("200 OK", &[], b"ok");
    Backend::raw(move |mut conn, _| {
        while let Ok(Some(_)) = conn.read_request() {
            if conn.try_send(&reply).is_err() {
                return;
            }
        }
    })
}

/// Sends `REQUESTS_PER_CLIENT` GETs for `target`, `BATCH` at a time; every one must get a 200.
fn client(port: u16, target: String) {
    let mut conn = HttpConn::connect(port);
    let request = get_request(&target);
    let batch: Vec<u8> = request.repeat(BATCH);
    for _ in 0..REQUESTS_PER_CLIENT / BATCH {
        conn.send(&batch);
        for _ in 0..BATCH {
            let response = conn
                .read_response("GET")
                .unwrap_or_else(|e| panic!("no response while stdout stalls: {e}"));
            assert_eq!(response.status(), 200);
        }
    }
}

#[test]
fn stalled_stdout_holds_log_memory_to_buffer_bytes_and_counts_dropped_lines() {
    let backend = quiet_backend();
    let config = TestConfig::new(&[backend.port])
        .with(|c| {
            c.limits.max_request_line_bytes = Some(QUOTES as u64 + 1024);
            c.logging.format = Some(LogFormat::Json);
            c.logging.buffer_bytes = Some(BUFFER_BYTES);
        })
        .admin_api();
    let toml = config.to_toml();
    assert!(toml.contains("buffer_bytes"), "{toml}");
    let (proxy, _unread_stdout) = Proxy::start_with_unread_stdout(&config);
    let admin = Admin::of(&config);
    let port = proxy.port;
    // The baseline: started, with one request through (pools, buffers, the formatter's).
    HttpConn::connect(port).get_ok("/warm-up");
    let baseline = proxy.rss_kib();

    let target = format!("/{}", "\"".repeat(QUOTES));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let target = target.clone();
            thread::spawn(move || client(port, target))
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }

    // The bound: baseline + 2 x `BUFFER_BYTES` + 8 MiB. The queue holds at most `BUFFER_BYTES`;
    // the rest is headroom for allocator slack, the writer's batch and per-connection buffers.
    // Without the byte bound (the old 65,536-line queue) the same run peaks near 400 MiB.
    let bound = baseline + BUFFER_BYTES / 1024 * 2 + 8 * 1024;
    let peak = peak_rss_kib(proxy.pid());
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB over the bound {bound} KiB (baseline {baseline} KiB)"
    );
    let dropped = admin
        .metrics()
        .value("ringproxy_log_lines_dropped_total", &[]);
    let total = (CLIENTS * REQUESTS_PER_CLIENT) as f64;
    assert!(
        dropped > 0.0 && dropped <= total,
        "{dropped} lines counted as dropped of {total}"
    );
}
