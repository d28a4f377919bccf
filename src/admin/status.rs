//! `GET /status`: what runs, as JSON: config generation, uptime, workers, backends.

use crate::metrics::{WorkerMetrics, CLASS_LABELS};
use crate::state::Shared;
use crate::upstream::passive::{now_ms, Circuit};
use crate::upstream::Backend;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

pub fn render(shared: &Shared) -> Value {
    let snapshot = shared.snapshot();
    let now = now_ms();
    let workers: Vec<Value> = shared
        .workers
        .iter()
        .enumerate()
        .map(|(id, m)| worker(id, m))
        .collect();
    let backends: Vec<Value> = snapshot
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| backend(i, b, now))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_generation": snapshot.generation,
        "config_path": shared.config_path.display().to_string(),
        "uptime_seconds": shared.started_at.elapsed().as_secs_f64(),
        "started_unix": shared.started_unix,
        "draining": shared.is_draining(),
        "listen": snapshot.config.listen.to_string(),
        "strategy": snapshot.config.strategy,
        "driver": crate::net::driver_name(),
        "workers": workers,
        "backends": backends,
    })
}

fn worker(id: usize, m: &WorkerMetrics) -> Value {
    json!({
        "id": id,
        "driver": crate::net::driver_name(),
        "core": m.core.load(Ordering::Relaxed),
        "requests": m.requests_total(),
        "active_connections": m.active_connections.load(Ordering::Relaxed),
        "parked_connections": m.parked_connections.load(Ordering::Relaxed),
        "tunnels": m.tunnels.load(Ordering::Relaxed),
    })
}

pub fn backend(index: usize, b: &Backend, now: u64) -> Value {
    let last_check = b
        .last_check()
        .map(|(result, ok)| json!({ "result": result.to_string(), "ok": ok }));
    let requests: u64 = (0..CLASS_LABELS.len())
        .map(|class| b.total(|s| &s.requests_by_class[class]))
        .sum();
    json!({
        "index": index,
        "url": b.url,
        "address": b.addr.to_string(),
        "up": b.is_up(),
        "drained": b.is_drained(),
        "ejected": b.passive.circuit(now) == Circuit::Open,
        "available": b.is_available(now),
        "weight": b.weight(),
        "last_check": last_check,
        "in_flight": b.in_flight(),
        "requests": requests,
        "ejections": b.ejections.load(Ordering::Relaxed),
    })
}
