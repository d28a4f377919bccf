//! Lingering close, as nginx's `lingering_close`: after answering a request whose body was not
//! read (413, a malformed body, an upstream that answered early), the client may still be
//! sending. Closing a socket with unread input makes the kernel send a RST, and a client that
//! gets a RST while still writing typically reports "connection reset" and never reads the
//! answer waiting in its buffer. So the proxy stops writing (FIN after the answer), reads and
//! discards what still comes for a bounded time, then closes.

use super::context::Registration;
use super::{ClientConn, WorkerCtx};
use crate::net::io::{read_more, HalfClose};
use std::time::{Duration, Instant};

/// Longest silence from the client while lingering (nginx's `lingering_timeout`).
const LINGER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time spent lingering in all (nginx's `lingering_time`).
const LINGER_TOTAL: Duration = Duration::from_secs(30);
/// Read size for the discarded input.
const LINGER_READ_BYTES: usize = 64 * 1024;

/// Half-closes the connection and discards the client's input until it closes its side, stays
/// silent for `LINGER_READ_TIMEOUT`, `LINGER_TOTAL` passes, or the proxy shuts down.
pub async fn linger_close(conn: &mut ClientConn, ctx: &WorkerCtx, registration: &Registration<'_>) {
    conn.stream.half_close();
    // Marked idle so a shutdown of the proxy ends the wait (its pending read sees EOF).
    registration.set_idle(true);
    let until = Instant::now() + LINGER_TOTAL;
    let mut discarded = conn.rbuf.len() as u64;
    while !ctx.shared.is_draining() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        conn.rbuf.clear();
        let read = read_more(
            &mut conn.stream,
            &mut conn.rbuf,
            LINGER_READ_BYTES,
            left.min(LINGER_READ_TIMEOUT),
        );
        match read.await {
            Ok(n) if n > 0 => discarded += n as u64,
            _ => break,
        }
    }
    tracing::debug!(client = %conn.peer, worker = ctx.worker_id, discarded, "lingering close done");
}
