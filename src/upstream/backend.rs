//! Backends and the part of their state shared by all cores. Up/down and the effective weight
//! are atomics: workers read them on every pick without a lock; the health thread (and later the
//! admin API) writes them.

use super::health::ProbeResult;
use super::passive::{Circuit, PassiveHealth};
use crate::config::ResolvedBackend;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct Backend {
    pub url: String,
    pub addr: SocketAddr,
    pub health_check_path: String,
    up: AtomicBool,
    weight: AtomicU32,
    /// Circuit breaker fed by every worker's traffic.
    pub passive: PassiveHealth,
    /// Last active check, for status reporting; written by the health thread only.
    last_check: Mutex<Option<(ProbeResult, bool)>>,
}

impl Backend {
    pub fn new(b: &ResolvedBackend) -> Self {
        Backend {
            url: b.url.clone(),
            addr: b.addr,
            health_check_path: b.health_check_path.clone(),
            // Until health checks run, every backend is taken to be up.
            up: AtomicBool::new(true),
            weight: AtomicU32::new(b.weight),
            passive: PassiveHealth::default(),
            last_check: Mutex::new(None),
        }
    }

    /// Up by active checks and not ejected by passive ones (as of `now_ms`).
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_up() && self.passive.circuit(now_ms) != Circuit::Open
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
        self.weight.store(weight, Ordering::Relaxed);
    }
}

/// The backends of the default upstream group, shared by every worker.
pub type BackendSet = Arc<[Backend]>;

pub fn backend_set(resolved: &[ResolvedBackend]) -> BackendSet {
    resolved.iter().map(Backend::new).collect()
}
