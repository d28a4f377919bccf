//! `GET /status`: what runs, as JSON: config generation, uptime, workers, upstream groups and
//! their backends (`backends`: the group `default`'s, as before groups), routes with their
//! request counts.

use crate::config::{HostPattern, PathMatch, RouteAction, RouteRule};
use crate::metrics::{WorkerMetrics, CLASS_LABELS};
use crate::state::Shared;
use crate::upstream::passive::{now_ms, Circuit};
use crate::upstream::{Backend, UpstreamGroup};
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
    let default = snapshot.upstreams.default_group();
    let upstreams: Vec<Value> = snapshot
        .upstreams
        .groups
        .iter()
        .map(|g| group(g, now))
        .collect();
    let routes: Vec<Value> = snapshot
        .config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(i, r, snapshot.routes.hits(i), &snapshot.upstreams.groups))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config_generation": snapshot.generation,
        "config_path": shared.config_path.display().to_string(),
        "uptime_seconds": shared.started_at.elapsed().as_secs_f64(),
        "started_unix": shared.started_unix,
        "draining": shared.is_draining(),
        "listen": snapshot.config.listen.to_string(),
        "strategy": default.map(|g| g.settings.strategy),
        "driver": crate::net::driver_name(),
        "workers": workers,
        "backends": default.map_or(Value::Array(vec![]), |g| backends(g, now)),
        "upstreams": upstreams,
        "routes": routes,
    })
}

fn group(g: &UpstreamGroup, now: u64) -> Value {
    json!({
        "name": g.name,
        "strategy": g.settings.strategy,
        "backends": backends(g, now),
    })
}

fn backends(g: &UpstreamGroup, now: u64) -> Value {
    g.backends
        .iter()
        .enumerate()
        .map(|(i, b)| backend(i, b, now))
        .collect()
}

fn route(index: usize, r: &RouteRule, requests: u64, groups: &[UpstreamGroup]) -> Value {
    let hosts: Vec<String> = r
        .hosts
        .iter()
        .map(|h| match h {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Suffix(suffix) => format!("*{suffix}"),
        })
        .collect();
    let (kind, path) = match &r.path {
        PathMatch::Exact(p) => ("path", p.clone()),
        PathMatch::Prefix(p) => ("path_prefix", p.clone()),
        PathMatch::Regex(re) => ("path_regex", re.as_str().to_string()),
    };
    let action = match &r.action {
        RouteAction::Forward(f) => json!({ "upstream": groups.get(f.group).map(|g| &g.name) }),
        RouteAction::Redirect(to) => json!({ "redirect": to.to, "status": to.status }),
        RouteAction::Respond(with) => json!({ "respond": with.status }),
    };
    json!({
        "index": index,
        "name": r.label,
        "hosts": hosts,
        kind: path,
        "methods": r.methods,
        "headers": r.headers.iter().map(|h| (h.name.clone(), h.value.clone().unwrap_or_else(|| "*".into()))).collect::<std::collections::BTreeMap<_, _>>(),
        "action": action,
        "requests": requests,
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
