//! `GET /metrics` in the Prometheus text exposition format (version 0.0.4). Per-worker counters
//! are summed here, on read.

use crate::limits::{Limiter, RateLimits};
use crate::metrics::{
    read, HistogramTotals, WorkerMetrics, CLASS_LABELS, FD_EXHAUSTED, FD_OP_LABELS, FD_SHARE_FULL,
    LATENCY_BUCKETS, TLS_HANDSHAKE_LABELS,
};
use crate::state::Shared;
use crate::upstream::passive::now_ms;
use crate::upstream::Backend;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub fn render(shared: &Shared) -> String {
    let snapshot = shared.snapshot();
    let workers = &shared.workers;
    let mut out = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| workers.iter().map(|w| f(w)).sum::<u64>();

    family(
        &mut out,
        "ringproxy_build_info",
        "gauge",
        "Build information.",
    );
    let _ = writeln!(
        out,
        "ringproxy_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "ringproxy_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    );
    let _ = writeln!(
        out,
        "ringproxy_uptime_seconds {}",
        shared.started_at.elapsed().as_secs_f64()
    );
    family(
        &mut out,
        "ringproxy_config_generation",
        "gauge",
        "Config snapshot in use (1 at start, +1 per reload).",
    );
    let _ = writeln!(out, "ringproxy_config_generation {}", snapshot.generation);

    family(
        &mut out,
        "ringproxy_requests_total",
        "counter",
        "Requests answered, by status class.",
    );
    for (i, class) in CLASS_LABELS.iter().enumerate() {
        let n = sum(&|w| read(&w.requests_by_class[i]));
        let _ = writeln!(out, "ringproxy_requests_total{{class=\"{class}\"}} {n}");
    }
    counter(&mut out, "ringproxy_requests_unanswered_total", "Requests that got no response (client gone, or reset after an upstream failure mid-response).", sum(&|w| read(&w.requests_unanswered)));
    per_worker(
        &mut out,
        (
            "ringproxy_worker_requests_total",
            "counter",
            "Requests handled by each worker.",
        ),
        workers,
        |w| w.requests_total(),
    );
    per_worker(
        &mut out,
        (
            "ringproxy_active_connections",
            "gauge",
            "Open client connections, by worker.",
        ),
        workers,
        |w| w.active_connections.load(Ordering::Relaxed),
    );
    per_worker(
        &mut out,
        (
            "ringproxy_parked_connections",
            "gauge",
            "Idle keep-alive client connections parked without a task (part of active), by worker.",
        ),
        workers,
        |w| w.parked_connections.load(Ordering::Relaxed),
    );
    per_worker(
        &mut out,
        (
            "ringproxy_tunnels",
            "gauge",
            "Client connections switched to another protocol (WebSocket tunnels; part of active), by worker.",
        ),
        workers,
        |w| w.tunnels.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ringproxy_connections_refused_total",
        "Client connections refused over limits.max_connections.",
        sum(&|w| read(&w.connections_refused_over_cap)),
    );
    counter(
        &mut out,
        "ringproxy_connections_refused_per_ip_total",
        "Client connections closed at accept over limits.max_connections_per_ip.",
        sum(&|w| read(&w.connections_refused_per_ip)),
    );
    by_reason(
        &mut out,
        "ringproxy_proxy_protocol_refused_total",
        "Connections closed before a request on a PROXY protocol listener: from a peer not in trusted_proxies (untrusted), or with a missing, broken or late header (header).",
        &[
            ("untrusted", sum(&|w| read(&w.proxy_protocol_untrusted))),
            ("header", sum(&|w| read(&w.proxy_protocol_refused))),
        ],
    );
    by_reason(
        &mut out,
        "ringproxy_access_refused_total",
        "Requests refused by a route's access rules: allow/deny (forbidden, 403), basic_auth (unauthorized, 401).",
        &[
            ("forbidden", sum(&|w| read(&w.access_forbidden))),
            ("unauthorized", sum(&|w| read(&w.access_unauthorized))),
        ],
    );
    rate_limits(&mut out, &snapshot.limits);
    family(
        &mut out,
        "ringproxy_fd_exhausted_total",
        "counter",
        "Operations that found no file descriptor (EMFILE/ENFILE, or the worker's splice pipes all in use), by what was shed or done without.",
    );
    for (op, n) in FD_OP_LABELS.iter().zip(&FD_EXHAUSTED) {
        let _ = writeln!(
            out,
            "ringproxy_fd_exhausted_total{{op=\"{op}\"}} {}",
            read(n)
        );
    }
    family(
        &mut out,
        "ringproxy_fd_share_full_total",
        "counter",
        "Operations a worker did without because its share of the open-files limit was full (before the kernel ran out), by what was shed or done without.",
    );
    for (op, n) in FD_OP_LABELS.iter().zip(&FD_SHARE_FULL) {
        let _ = writeln!(
            out,
            "ringproxy_fd_share_full_total{{op=\"{op}\"}} {}",
            read(n)
        );
    }
    counter(
        &mut out,
        "ringproxy_retries_total",
        "Requests sent again to a backend after a retryable failure.",
        sum(&|w| read(&w.retries)),
    );
    histogram(
        &mut out,
        "ringproxy_request_duration_seconds",
        "Time from request head to the end of the response.",
        workers,
        |w| &w.request_duration,
    );
    histogram(
        &mut out,
        "ringproxy_upstream_response_duration_seconds",
        "Time from sending the request upstream to its response head.",
        workers,
        |w| &w.upstream_duration,
    );

    per_worker(
        &mut out,
        (
            "ringproxy_upstream_pool_idle_connections",
            "gauge",
            "Idle keep-alive upstream connections, by worker.",
        ),
        workers,
        |w| w.pool_idle.load(Ordering::Relaxed),
    );
    per_worker(
        &mut out,
        (
            "ringproxy_worker_descriptors",
            "gauge",
            "Descriptors each worker holds by its own count (client and upstream connections, second descriptors, splice pipes), against its share of the open-files limit.",
        ),
        workers,
        |w| w.descriptors.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "ringproxy_upstream_connections_opened_total",
        "New upstream connections.",
        sum(&|w| read(&w.upstream_opened)),
    );
    counter(
        &mut out,
        "ringproxy_upstream_connections_reused_total",
        "Requests sent on a pooled upstream connection.",
        sum(&|w| read(&w.upstream_reused)),
    );
    by_reason(
        &mut out,
        "ringproxy_upstream_connections_discarded_total",
        "Idle upstream connections closed instead of reused: bytes had arrived on them that belong to no request (stray_bytes), or they were closed (closed).",
        &[
            ("stray_bytes", sum(&|w| read(&w.upstream_discarded_stray))),
            ("closed", sum(&|w| read(&w.upstream_discarded_closed))),
        ],
    );
    tls(&mut out, &snapshot.config, workers);
    counter(
        &mut out,
        "ringproxy_log_lines_dropped_total",
        "Log lines dropped: over logging.buffer_bytes while stdout lagged, or stdout failing.",
        read(&crate::metrics::LOG_LINES_DROPPED),
    );

    family(
        &mut out,
        "ringproxy_route_requests_total",
        "counter",
        "Requests matched by each route (by its name, or its index in the file).",
    );
    for (i, r) in snapshot.config.routes.iter().enumerate() {
        let _ = writeln!(
            out,
            "ringproxy_route_requests_total{{route=\"{}\"}} {}",
            escape(&r.label),
            snapshot.routes.hits(i)
        );
    }

    let now = now_ms();
    let backends: Vec<(&str, &Backend)> = snapshot
        .upstreams
        .backends()
        .map(|(g, b)| (g.name.as_str(), &**b))
        .collect();
    family(
        &mut out,
        "ringproxy_backend_requests_total",
        "counter",
        "Requests answered by each backend, by status class.",
    );
    for &(group, b) in &backends {
        for (i, class) in CLASS_LABELS.iter().enumerate() {
            let n = b.total(|s| &s.requests_by_class[i]);
            let _ = writeln!(
                out,
                "ringproxy_backend_requests_total{{upstream=\"{}\",backend=\"{}\",class=\"{class}\"}} {n}",
                escape(group),
                escape(&b.url)
            );
        }
    }
    let per_backend: [BackendFamily; 7] = [
        (
            "ringproxy_backend_connect_errors_total",
            "counter",
            "Failed connects to each backend.",
            &|b| b.total(|s| &s.connect_errors) as f64,
        ),
        (
            "ringproxy_backend_timeouts_total",
            "counter",
            "Connect or response-head timeouts per backend.",
            &|b| b.total(|s| &s.timeouts) as f64,
        ),
        (
            "ringproxy_backend_ejections_total",
            "counter",
            "Passive-health ejections per backend.",
            &|b| b.ejections.load(Ordering::Relaxed) as f64,
        ),
        (
            "ringproxy_backend_in_flight",
            "gauge",
            "Requests in flight to each backend.",
            &|b| b.in_flight() as f64,
        ),
        (
            "ringproxy_backend_up",
            "gauge",
            "1 if the backend passes active health checks.",
            &|b| f64::from(u8::from(b.is_up())),
        ),
        (
            "ringproxy_backend_available",
            "gauge",
            "1 if new requests may go to the backend (up, not drained, not ejected).",
            &|b| f64::from(u8::from(b.is_available(now))),
        ),
        (
            "ringproxy_backend_weight",
            "gauge",
            "Effective weight of the backend.",
            &|b| f64::from(b.weight()),
        ),
    ];
    for (name, kind, help, value) in per_backend {
        family(&mut out, name, kind, help);
        for &(group, b) in &backends {
            let _ = writeln!(
                out,
                "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                escape(group),
                escape(&b.url),
                value(b)
            );
        }
    }
    out
}

/// The TLS listener's handshakes (by outcome, with their duration and the share resumed) and
/// its certificates' expiry.
fn tls(
    out: &mut String,
    config: &crate::config::ValidConfig,
    workers: &[std::sync::Arc<WorkerMetrics>],
) {
    let Some(tls) = &config.tls else {
        return;
    };
    family(
        out,
        "ringproxy_tls_handshakes_total",
        "counter",
        "TLS handshakes with clients, by result: full, resumed (session ticket or cache), failed, timeout, plain_http (plain HTTP sent to the TLS port).",
    );
    let mut counts = [0u64; TLS_HANDSHAKE_LABELS.len()];
    for w in workers {
        for (n, c) in counts.iter_mut().zip(&w.tls_handshakes) {
            *n += read(c);
        }
    }
    for (result, n) in TLS_HANDSHAKE_LABELS.iter().zip(counts) {
        let _ = writeln!(
            out,
            "ringproxy_tls_handshakes_total{{result=\"{result}\"}} {n}"
        );
    }
    let (full, resumed) = (counts[0], counts[1]);
    family(
        out,
        "ringproxy_tls_resumption_ratio",
        "gauge",
        "Share of successful TLS handshakes that resumed a session, since start.",
    );
    let ratio = if full + resumed == 0 {
        0.0
    } else {
        resumed as f64 / (full + resumed) as f64
    };
    let _ = writeln!(out, "ringproxy_tls_resumption_ratio {ratio}");
    histogram(
        out,
        "ringproxy_tls_handshake_seconds",
        "Time from accepting a TLS connection to the end of its handshake.",
        workers,
        |w| &w.tls_handshake_duration,
    );
    family(
        out,
        "ringproxy_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "When each served certificate expires (seconds since the epoch), by its first name.",
    );
    for cert in &tls.certs.certs {
        let _ = writeln!(
            out,
            "ringproxy_tls_certificate_expiry_timestamp_seconds{{name=\"{}\"}} {}",
            escape(&cert.name),
            cert.not_after
        );
    }
}

/// A per-limit metric: name, type, help, and how to read it from a limit (none: not this one).
type LimitFamily<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a dyn Fn(&Limiter) -> Option<u64>,
);

/// Per rate limit: requests refused (429) and delayed, and for fleet-wide limits whether the
/// store answers.
fn rate_limits(out: &mut String, limits: &RateLimits) {
    let families: [LimitFamily; 4] = [
        (
            "ringproxy_rate_limited_total",
            "counter",
            "Requests refused with 429 by each rate limit.",
            &|l| Some(l.refused_total()),
        ),
        (
            "ringproxy_rate_limit_delayed_total",
            "counter",
            "Requests a rate limit in mode = \"delay\" held back until the rate admitted them.",
            &|l| Some(l.delayed_total()),
        ),
        (
            "ringproxy_rate_limit_store_up",
            "gauge",
            "1 while a fleet-wide limit's store (Redis) answers its sync, 0 while it does not (the limit then falls back as on_store_error says).",
            &|l| l.store_up().map(u64::from),
        ),
        (
            "ringproxy_rate_limit_table_bytes",
            "gauge",
            "Memory of each rate limit's key table (fixed by max_keys).",
            &|l| Some(l.table_bytes() as u64),
        ),
    ];
    for (name, kind, help, value) in families {
        family(out, name, kind, help);
        for limit in limits.iter() {
            if let Some(v) = value(limit) {
                let _ = writeln!(out, "{name}{{limit=\"{}\"}} {v}", escape(limit.name()));
            }
        }
    }
}

/// A per-backend metric: name, type, help, and how to read it from a backend.
type BackendFamily<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&Backend) -> f64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family with one sample per worker: (name, type, help) and how to read a worker's value.
fn per_worker<V: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    workers: &[std::sync::Arc<WorkerMetrics>],
    value: impl Fn(&WorkerMetrics) -> V,
) {
    family(out, name, kind, help);
    for (id, w) in workers.iter().enumerate() {
        let _ = writeln!(out, "{name}{{worker=\"{id}\"}} {}", value(w));
    }
}

/// A counter family with one sample per `reason`.
fn by_reason(out: &mut String, name: &str, help: &str, counts: &[(&str, u64)]) {
    family(out, name, "counter", help);
    for (reason, n) in counts {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    workers: &[std::sync::Arc<WorkerMetrics>],
    pick: impl Fn(&WorkerMetrics) -> &crate::metrics::Histogram,
) {
    let mut totals = HistogramTotals::default();
    workers.iter().for_each(|w| pick(w).accumulate(&mut totals));
    family(out, name, "histogram", help);
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += totals.buckets[i];
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += totals.buckets[LATENCY_BUCKETS.len()];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", totals.sum_micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
