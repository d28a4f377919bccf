//! Counters, gauges and histograms. Every worker owns its `WorkerMetrics` (and its slot in each
//! backend's stats) and is the only writer, so an increment is a plain load+store on a cache line
//! no other core writes; the admin thread sums the workers on read.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Index into per-class counters: 0 = 1xx ... 4 = 5xx.
pub fn status_class(status: u16) -> Option<usize> {
    (100..600)
        .contains(&status)
        .then(|| usize::from(status / 100 - 1))
}

pub const CLASS_LABELS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Outcomes of TLS handshakes with clients (`WorkerMetrics::tls_handshakes`): a full one, a
/// resumed one (ticket or session cache), and the failures.
pub const TLS_HANDSHAKE_LABELS: [&str; 5] = ["full", "resumed", "failed", "timeout", "plain_http"];

/// Log lines that never reached stdout: over `logging.buffer_bytes`, or stdout failing. Any
/// thread may add to it (so `fetch_add`), only when a line is lost.
pub static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Increment for single-writer counters: no locked read-modify-write needed.
#[inline]
pub fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[inline]
pub fn add_gauge(gauge: &AtomicI64, delta: i64) {
    gauge.store(gauge.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
}

/// Operations that found no descriptor, by `fd_budget::FdOp` (labels in its order).
pub const FD_OP_LABELS: [&str; 6] = [
    "accept",
    "connect",
    "health_check",
    "pipe",
    "pipe_budget",
    "dup",
];

/// Counts of `FD_OP_LABELS`. Process-wide rather than per worker: the health thread counts
/// here too, and the events are rare.
pub static FD_EXHAUSTED: [AtomicU64; FD_OP_LABELS.len()] =
    [const { AtomicU64::new(0) }; FD_OP_LABELS.len()];

/// Operations a worker did without because its descriptor share was full (the kernel was never
/// asked), by `FD_OP_LABELS`.
pub static FD_SHARE_FULL: [AtomicU64; FD_OP_LABELS.len()] =
    [const { AtomicU64::new(0) }; FD_OP_LABELS.len()];

pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        bump(&self.buckets[i]);
        let sum = &self.sum_micros;
        sum.store(
            sum.load(Ordering::Relaxed) + d.as_micros() as u64,
            Ordering::Relaxed,
        );
    }

    /// Adds this histogram's per-bucket counts and sum (µs) into `into`.
    pub fn accumulate(&self, into: &mut HistogramTotals) {
        for (t, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *t += read(b);
        }
        into.sum_micros += read(&self.sum_micros);
    }
}

#[derive(Default, Clone)]
pub struct HistogramTotals {
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum_micros: u64,
}

/// What one worker counts.
#[repr(align(64))]
#[derive(Default)]
pub struct WorkerMetrics {
    pub requests_by_class: [AtomicU64; 5],
    /// Requests that got no response (client gone, reset mid-response).
    pub requests_unanswered: AtomicU64,
    pub active_connections: AtomicI64,
    /// Of the active connections, those idle in the parking lot (no task, no buffers).
    pub parked_connections: AtomicI64,
    /// Of the active connections, those switched to another protocol (WebSocket tunnels).
    pub tunnels: AtomicI64,
    pub connections_refused_over_cap: AtomicU64,
    /// Connections closed at accept over `max_connections_per_ip`.
    pub connections_refused_per_ip: AtomicU64,
    /// Connections closed before a request because their PROXY protocol header was missing,
    /// broken or late, or (`untrusted`) their peer may not send one.
    pub proxy_protocol_refused: AtomicU64,
    pub proxy_protocol_untrusted: AtomicU64,
    /// Requests refused by a route's `allow`/`deny` (403) and `basic_auth` (401).
    pub access_forbidden: AtomicU64,
    pub access_unauthorized: AtomicU64,
    pub retries: AtomicU64,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub pool_idle: AtomicI64,
    /// Descriptors the worker holds by its own count (connections, pooled, second ones, pipes),
    /// refreshed every second.
    pub descriptors: AtomicI64,
    pub upstream_opened: AtomicU64,
    pub upstream_reused: AtomicU64,
    /// Idle upstream connections not reused because bytes had arrived on them that belong to
    /// no request (a broken upstream), or because they were closed.
    pub upstream_discarded_stray: AtomicU64,
    pub upstream_discarded_closed: AtomicU64,
    /// The CPU the worker is pinned to, -1 if none.
    pub core: AtomicI64,
    /// TLS handshakes with clients, by `TLS_HANDSHAKE_LABELS`.
    pub tls_handshakes: [AtomicU64; TLS_HANDSHAKE_LABELS.len()],
    /// Time from accept to the end of a successful handshake.
    pub tls_handshake_duration: Histogram,
}

impl WorkerMetrics {
    pub fn requests_total(&self) -> u64 {
        self.requests_by_class.iter().map(read).sum::<u64>() + read(&self.requests_unanswered)
    }
}

/// One worker's counts for one backend (a slot in the backend's per-worker array).
#[repr(align(64))]
#[derive(Default, Debug)]
pub struct BackendStats {
    pub requests_by_class: [AtomicU64; 5],
    pub connect_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub in_flight: AtomicI64,
}
