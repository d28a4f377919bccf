//! Backends and the part of their state shared by all cores. Up/down and the effective weight
//! are atomics: workers read them on every pick without a lock; the health thread (and later the
//! admin API) writes them.

use super::passive::{Circuit, PassiveHealth};
use crate::config::tls::UpstreamTls;
use crate::config::ResolvedBackend;
use crate::metrics::{add_gauge, BackendStats};
use arc_swap::ArcSwapOption;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Source of `Backend::id`.
static NEXT_BACKEND_ID: AtomicU64 = AtomicU64::new(1);

/// Bumped whenever a weight changes at runtime, so balancers that derive a structure from the
/// weights (the hash ring) rebuild it on their next pick.
static WEIGHTS_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The number of runtime weight changes so far.
pub fn weights_epoch() -> u64 {
    WEIGHTS_EPOCH.load(Ordering::Relaxed)
}

#[derive(Debug)]
pub struct Backend {
    /// Unique for the life of the process: a backend kept across reloads keeps it, a new one
    /// (even at the same URL) gets a new one. Pooled connections are keyed by it.
    pub id: u64,
    pub url: String,
    pub addr: SocketAddr,
    /// The URL's `host[:port]`, the Host of its requests under `host_header = "backend"`.
    pub authority: String,
    /// How the backend may name itself in an absolute redirect (`http://host:port`, by its
    /// URL and by its address), for rewriting them to the address the client used.
    pub own_origins: Vec<String>,
    /// Probed with `GET` by active checks; none: a TCP connect check.
    pub health_check_path: Option<String>,
    /// An `https://` backend's TLS client settings; a reload may replace them (a new CA) while
    /// the backend keeps its state.
    tls: ArcSwapOption<UpstreamTls>,
    up: AtomicBool,
    weight: AtomicU32,
    /// Circuit breaker fed by every worker's traffic.
    pub passive: PassiveHealth,
    /// Last active check, for status reporting; written by the health thread only.
    last_check: Mutex<Option<(ProbeResult, bool)>>,
    /// Drained through the admin API: no new requests, in-flight ones finish.
    drained: AtomicBool,
    /// Passive ejections so far (rare, so one shared counter).
    pub ejections: AtomicU64,
    /// Per-worker counters, indexed by worker id; each worker writes only its own slot.
    pub stats: Box<[BackendStats]>,
}

impl Backend {
    pub fn new(b: &ResolvedBackend, workers: usize) -> Self {
        Backend {
            id: NEXT_BACKEND_ID.fetch_add(1, Ordering::Relaxed),
            url: b.url.clone(),
            addr: b.addr,
            authority: authority(&b.url),
            own_origins: own_origins(&b.url, b.addr),
            health_check_path: b.health_check_path.clone(),
            tls: ArcSwapOption::from(b.tls.clone().map(Arc::new)),
            // Until health checks run, every backend is taken to be up.
            up: AtomicBool::new(true),
            weight: AtomicU32::new(b.weight),
            passive: PassiveHealth::default(),
            last_check: Mutex::new(None),
            drained: AtomicBool::new(false),
            ejections: AtomicU64::new(0),
            stats: (0..workers.max(1))
                .map(|_| BackendStats::default())
                .collect(),
        }
    }

    /// Up by active checks, not drained, and not ejected by passive ones (as of `now_ms`).
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.accepts_traffic() && self.passive.circuit(now_ms) != Circuit::Open
    }

    /// Up by active checks and not drained by an operator.
    pub fn accepts_traffic(&self) -> bool {
        self.is_up() && !self.is_drained()
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// This worker's counters for this backend.
    pub fn stats(&self, worker: usize) -> &BackendStats {
        &self.stats[worker % self.stats.len()]
    }

    /// One per-worker counter summed over all workers (for the admin side, off the hot path).
    pub fn total(&self, counter: impl Fn(&BackendStats) -> &AtomicU64) -> u64 {
        self.stats
            .iter()
            .map(|s| crate::metrics::read(counter(s)))
            .sum()
    }

    /// Requests in flight to this backend, over all workers.
    pub fn in_flight(&self) -> i64 {
        self.stats
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    pub fn set_last_check(&self, result: &ProbeResult, ok: bool) {
        if let Ok(mut last) = self.last_check.lock() {
            *last = Some((result.clone(), ok));
        }
    }

    pub fn last_check(&self) -> Option<(ProbeResult, bool)> {
        self.last_check.lock().ok().and_then(|l| l.clone())
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn set_weight(&self, weight: u32) {
        if self.weight.swap(weight, Ordering::Relaxed) != weight {
            WEIGHTS_EPOCH.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How new connections to an `https://` backend speak TLS; `None` for `http://`.
    pub fn tls(&self) -> Option<Arc<UpstreamTls>> {
        self.tls.load_full()
    }

    pub fn set_tls(&self, tls: Option<UpstreamTls>) {
        self.tls.store(tls.map(Arc::new));
    }
}

/// The `host[:port]` of an `http(s)://host[:port][/]` URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.trim_end_matches('/').to_string()
}

/// `scheme://authority` forms of a backend: as its URL says (with and without a default port),
/// and by its address.
fn own_origins(url: &str, addr: SocketAddr) -> Vec<String> {
    let mut origins = Vec::with_capacity(3);
    let url = url.trim_end_matches('/');
    origins.push(url.to_ascii_lowercase());
    let (scheme, port) = if url.starts_with("https://") {
        ("https", ":443")
    } else {
        ("http", ":80")
    };
    if let Some(authority) = url.split_once("://").map(|(_, a)| a) {
        if !authority.contains(':') || authority.ends_with(']') {
            origins.push(format!(
                "{scheme}://{}{port}",
                authority.to_ascii_lowercase()
            ));
        } else if let Some(host) = authority.strip_suffix(port) {
            origins.push(format!("{scheme}://{}", host.to_ascii_lowercase()));
        }
    }
    let by_address = format!("{scheme}://{addr}");
    if !origins.contains(&by_address) {
        origins.push(by_address);
    }
    origins
}

/// A request in flight to a backend: counted in this worker's in-flight gauge for it (which
/// `least_conn` reads) from `Backend::start_request` until dropped, on every path.
pub struct InFlight<'a> {
    stats: &'a BackendStats,
}

impl Backend {
    pub fn start_request(&self, worker: usize) -> InFlight<'_> {
        let stats = self.stats(worker);
        add_gauge(&stats.in_flight, 1);
        InFlight { stats }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        add_gauge(&self.stats.in_flight, -1);
    }
}

/// What one active health probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Status(u16),
    /// A TCP check connected.
    Connected,
    Refused,
    Timeout,
    Failed(String),
    /// No probe was sent: this process had no descriptor for it. Not a verdict on the backend.
    Skipped,
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Status(s) => write!(f, "status {s}"),
            ProbeResult::Connected => f.write_str("connected"),
            ProbeResult::Refused => f.write_str("connection refused"),
            ProbeResult::Timeout => f.write_str("timeout"),
            ProbeResult::Failed(why) => f.write_str(why),
            ProbeResult::Skipped => f.write_str("skipped: no file descriptor"),
        }
    }
}

/// The backends of an upstream group, shared by every worker. Each is an `Arc` so a
/// reload can keep the ones that did not change, with their state.
pub type BackendSet = Arc<[Arc<Backend>]>;

impl AsRef<Backend> for Backend {
    fn as_ref(&self) -> &Backend {
        self
    }
}
