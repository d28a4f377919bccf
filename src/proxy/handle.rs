//! One request's life, phase by phase: route (or a reply the proxy makes itself) -> admit ->
//! exchange (pick an upstream, send, read the answer; retried as each failure's verdict
//! allows) -> relay the answer -> log. Each phase
//! is a function of its own module; `handle` reads top to bottom. A failure before the response
//! started gets a status; after it started, the client connection is reset.

use super::access_log::{self, AccessContext, AccessRecord};
use super::client_ip;
use super::error::Failure;
use super::request_body::RequestBody;
use super::route::Routed;
use super::{admit, exchange, https, relay, reply, route};
use super::{ClientConn, WorkerCtx};
use crate::http::{status, RequestHead};
use crate::metrics::{bump, status_class};
use crate::net::io::write_buf;
use crate::state::Snapshot;
use std::time::{Duration, Instant};

/// What becomes of the client connection after a request.
pub enum Next {
    KeepAlive,
    Close,
    /// Answered while the client may still be sending (the request body was not fully read, or
    /// a pipelined request is behind it).
    LingerClose,
}

/// Handles one request; says what becomes of the client connection.
pub async fn handle(
    conn: &mut ClientConn,
    req: RequestHead,
    started: Instant,
    ctx: &WorkerCtx,
) -> Next {
    let view = ctx.view();
    conn.client = client_ip::of_request(&conn.origin, &req, &view.config.trusted_proxies);
    let mut rec = AccessRecord {
        bytes_in: req.raw.len() as u64,
        ..Default::default()
    };
    let mut body = RequestBody::new(&req, &mut conn.rbuf);
    let outcome = proxy_request(conn, &req, &mut body, ctx, &view, &mut rec).await;
    let keep = match outcome {
        Ok(keep) => keep,
        Err(failure) => answer_failure(conn, &req, &body, ctx, &view, failure, &mut rec).await,
    };
    log_request(conn, &req, ctx, &view, &rec, started.elapsed());
    // Answered, but the client may still be sending: the rest of this request's body, or a
    // pipelined request already arriving behind it (nginx lingers in both cases). Never after
    // an abort, whose reset must not become a FIN.
    let more_input = !body.complete() || !conn.rbuf.is_empty();
    if keep {
        Next::KeepAlive
    } else if rec.answered && more_input {
        Next::LingerClose
    } else {
        Next::Close
    }
}

/// The phases that may fail. Returns whether the client connection stays open.
async fn proxy_request<'v>(
    conn: &mut ClientConn,
    req: &'v RequestHead,
    body: &mut RequestBody,
    ctx: &WorkerCtx,
    view: &'v Snapshot,
    rec: &mut AccessRecord<'v>,
) -> Result<bool, Failure> {
    https::check(conn, req, &view.config)?;
    let routed = route::route(req, view).map_err(Failure::BadRequest)?;
    rec.route = routed.rule();
    if let Routed::Forward(route) = &routed {
        rec.upstream = Some(&route.group.name);
        admit::body_fits(req, route)?;
    }
    let rule = rec.route.map(|(_, rule)| rule);
    let (client, worker) = (&conn.client, ctx.worker_id);
    let admitted = admit::admit(req, rule, view, client, worker, rec).await;
    if let Err(refusal) = admitted {
        return admit::refuse(conn, req, body, refusal, ctx, view, rec).await;
    }
    let route = match routed {
        Routed::Forward(route) => route,
        Routed::Reply(answer) => return reply::send(conn, req, body, answer, ctx, view, rec).await,
    };
    let exchanged = exchange::exchange(conn, req, body, &route, ctx, rec).await?;
    relay::relay(conn, req, body, exchanged, &route, ctx, rec).await
}

/// Answers a failed request if the client can still be answered; returns whether to keep the
/// connection (only when the request was fully read and the error is the upstream's).
async fn answer_failure(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &RequestBody,
    ctx: &WorkerCtx,
    view: &Snapshot,
    failure: Failure,
    rec: &mut AccessRecord<'_>,
) -> bool {
    let backend = rec.backend.map_or("-", |b| b.url.as_str());
    rec.reason = Some(failure.summary());
    let Some(code) = failure.status() else {
        tracing::info!(client = conn.client.as_str(), backend, reason = %failure, worker = ctx.worker_id, "request abandoned");
        rec.answered = false;
        if let Failure::Aborted(_) = failure {
            conn.stream.reset_on_close();
        }
        // The status that went out, if a head did (nginx logs that too); else 502 for an
        // upstream that broke, or nginx's 499 for "client closed the connection".
        if rec.status == 0 {
            rec.status = if let Failure::Aborted(_) = failure {
                502
            } else {
                499
            };
        }
        return false;
    };
    if !failure.is_policy() {
        tracing::warn!(client = conn.client.as_str(), backend, status = code, reason = %failure, worker = ctx.worker_id, "request failed");
    }
    rec.status = code;
    let keep = req.keep_alive
        && body.complete()
        && (code >= 500 || failure.is_policy())
        && !ctx.shared.is_draining();
    conn.out.clear();
    match &failure {
        Failure::ToHttps(location) => status::write_redirect(&mut conn.out, code, location, keep),
        _ => status::write_error(&mut conn.out, code, keep),
    }
    rec.bytes_out = conn.out.len() as u64;
    write_buf(&mut conn.stream, &mut conn.out, view.config.timeouts.io)
        .await
        .is_ok()
        && keep
}

/// The log phase: metrics, then the access line.
fn log_request(
    conn: &ClientConn,
    req: &RequestHead,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &AccessRecord<'_>,
    total: Duration,
) {
    record_metrics(ctx, rec, total);
    if let Some((index, _)) = rec.route {
        view.routes.count(ctx.worker_id, index);
    }
    if view.config.logging.access_log {
        let access = AccessContext {
            client: conn.client.as_str(),
            method: req.method(),
            path: req.target(),
            backend_url: rec.backend.map(|b| b.url.as_str()),
            worker: ctx.worker_id,
            total,
            tls: conn.tls.as_ref().map(|t| &t.info),
        };
        access_log::emit(&access, rec);
    }
}

/// Counts a finished request (answered or not) in the worker's and its backend's metrics.
pub fn record_metrics(ctx: &WorkerCtx, rec: &AccessRecord<'_>, total: Duration) {
    let m = &ctx.metrics;
    let class = status_class(rec.status).filter(|_| rec.answered);
    match class {
        Some(c) => bump(&m.requests_by_class[c]),
        None => bump(&m.requests_unanswered),
    }
    m.request_duration.observe(total);
    if let Some(t) = rec.upstream_time {
        m.upstream_duration.observe(t);
    }
    if let (Some(c), Some(backend)) = (class, rec.backend) {
        bump(&backend.stats(ctx.worker_id).requests_by_class[c]);
    }
}
