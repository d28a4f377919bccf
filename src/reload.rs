//! Configuration reload (SIGHUP and `POST /reload`): re-read the file, and if it is valid publish
//! a new snapshot (config, upstream groups and routes, all at once) that every worker picks up on
//! its next request. Backends whose (group, URL) did not change keep their state; requests in
//! flight finish on the snapshot they started with. Certificates are read again (a bad file
//! refuses the reload: the running certificates stay, and the error says why); connections keep
//! the session they have. Settings that only take effect at start (listen addresses, workers,
//! pinning, admin listener) are reported.

use crate::config::{self, ConfigError, ValidConfig, DEFAULT_GROUP};
use crate::state::{build, Shared};
use crate::upstream::{Backend, Upstreams};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    /// Backends added, removed and reweighted: by URL in the group `default`, as
    /// `<group> <url>` in the others.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// (backend, old weight, new weight)
    pub reweighted: Vec<(String, u32, u32)>,
    /// Routes in force.
    pub routes: usize,
    /// Changed keys that need a restart; the running values are kept.
    pub restart_required: Vec<&'static str>,
}

pub fn reload(shared: &Shared) -> Result<ReloadReport, Vec<ConfigError>> {
    let _serialised = shared.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = config::load(&shared.config_path)?;
    let current = shared.snapshot();
    let old = &current.config;
    let restart_required = keep_startup_settings(&mut next, old);
    // The admin listener stays where it is: the file must not take away what guards it there.
    if let Some(problem) = next.admin.exposure_problem() {
        return Err(vec![ConfigError {
            file: shared.config_path.clone(),
            line: 0,
            column: 0,
            key: "admin.token".into(),
            message: problem,
        }]);
    }
    let old_weights: Vec<(u64, u32)> = current
        .upstreams
        .backends()
        .map(|(_, b)| (b.id, b.weight()))
        .collect();
    let built = build(&next, Some(&current), shared.workers.len());
    let added = only_in(&built.upstreams, &current.upstreams);
    let removed = only_in(&current.upstreams, &built.upstreams);
    let reweighted = built
        .upstreams
        .backends()
        .filter_map(|(group, b)| {
            let (_, before) = old_weights.iter().find(|(id, _)| *id == b.id)?;
            (*before != b.weight()).then(|| (named(&group.name, b), *before, b.weight()))
        })
        .collect();
    let routes = next.routes.len();
    for warning in &next.warnings {
        tracing::warn!(%warning, "config");
    }
    crate::logging::reconfigure(&next.logging);
    let generation = shared.publish(next, built);
    let report = ReloadReport {
        generation,
        added,
        removed,
        reweighted,
        routes,
        restart_required,
    };
    tracing::info!(
        generation,
        added = ?report.added,
        removed = ?report.removed,
        reweighted = ?report.reweighted,
        routes = report.routes,
        "configuration reloaded"
    );
    for key in &report.restart_required {
        tracing::warn!(
            key,
            "changed in the config file but only applied at start: restart to use it"
        );
    }
    Ok(report)
}

/// The backends of `these` that `those` does not have (by identity), named.
fn only_in(these: &Upstreams, those: &Upstreams) -> Vec<String> {
    these
        .backends()
        .filter(|(_, b)| !those.backends().any(|(_, o)| Arc::ptr_eq(o, b)))
        .map(|(group, b)| named(&group.name, b))
        .collect()
}

/// A backend in a report: its URL in the group `default`, else `<group> <url>`.
fn named(group: &str, b: &Backend) -> String {
    if group == DEFAULT_GROUP {
        b.url.clone()
    } else {
        format!("{group} {}", b.url)
    }
}

/// Keeps the running values of settings a reload cannot change and names those that differ.
fn keep_startup_settings(next: &mut ValidConfig, old: &ValidConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if next.listen != old.listen {
        changed.push("server.host/server.port");
        next.listen = old.listen;
    }
    if next.workers != old.workers {
        changed.push("server.workers");
        next.workers = old.workers;
    }
    if next.pin_cores != old.pin_cores {
        changed.push("server.pin_cores");
        next.pin_cores = old.pin_cores;
    }
    if next.admin.listen != old.admin.listen || next.admin.enabled != old.admin.enabled {
        changed.push("admin.host/admin.port/admin.enabled");
        next.admin.listen = old.admin.listen;
        next.admin.enabled = old.admin.enabled;
    }
    if next.logging.format != old.logging.format {
        changed.push("logging.format");
    }
    // The TLS listener is bound at start: its address stays, and a [tls] section added or
    // removed waits for a restart. Certificates and the rest of [tls] reload.
    match (&mut next.tls, &old.tls) {
        (Some(next_tls), Some(old_tls)) if next_tls.listen != old_tls.listen => {
            changed.push("tls.host/tls.port");
            next_tls.listen = old_tls.listen;
        }
        (None, Some(old_tls)) => {
            changed.push("tls (removed)");
            next.tls = Some(old_tls.clone());
        }
        (Some(_), None) => {
            changed.push("tls (added)");
            next.tls = None;
        }
        _ => {}
    }
    // The connection cap was fitted to the descriptor limit at start.
    if next.limits.max_connections != old.limits.max_connections {
        next.limits.max_connections = next.limits.max_connections.min(old.limits.max_connections);
    }
    changed
}
