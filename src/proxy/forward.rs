//! Forwarding one request: pick a backend, send the request, read the response head, stream the
//! response back. A connect failure moves on to a backend not yet tried; a reused connection that
//! fails before any response byte is retried once on a fresh connection when the request can be
//! replayed (nothing of a streamed body consumed yet). Failures before the response starts get a
//! status; after it started, the client connection is reset.

use super::access_log::{self, AccessContext, AccessRecord};
use super::answer::{read_response_head, send_body_watching, BodySent, Watcher};
use super::io::{reset_on_close, write_buf, IoFail};
use super::transfer::{transfer_body, OutFraming, Source, SourceFault, TransferError};
use super::tunnel;
use super::wire::{response_framing, write_request_head, write_response_head};
use super::{ClientConn, WorkerCtx};
use crate::http::{status, BodyDecoder, BodyError, BodyKind, RequestHead, ResponseHead};
use crate::metrics::{add_gauge, bump, status_class};
use crate::state::Snapshot;
use crate::upstream::passive::{now_ms, Circuit};
use crate::upstream::{connect, ConnectError, UpstreamConn};
use bytes::Bytes;
use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Request bodies up to this size that already sit in the read buffer are sent with the head in
/// one write, and kept so the request can be replayed on a retry.
const BUFFERED_BODY_MAX: u64 = 64 * 1024;
/// After the upstream stopped taking the request body, how long an answer it sent before
/// closing may take to be read (it is normally in the socket buffer already).
const EARLY_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// The request body, as far as the client side is concerned.
enum RequestBody {
    Empty,
    /// Complete and already taken off the client connection.
    Buffered(Bytes),
    /// Still (partly) on the client connection; `started` once any of it was consumed.
    Streaming {
        decoder: BodyDecoder,
        started: bool,
    },
}

impl RequestBody {
    fn new(req: &RequestHead, rbuf: &mut bytes::BytesMut) -> Self {
        match req.body {
            BodyKind::Empty => RequestBody::Empty,
            BodyKind::Length(n) if n <= BUFFERED_BODY_MAX && rbuf.len() as u64 >= n => {
                RequestBody::Buffered(rbuf.split_to(n as usize).freeze())
            }
            kind => RequestBody::Streaming {
                decoder: BodyDecoder::new(kind),
                started: false,
            },
        }
    }

    /// Fully read from the client, so its connection is positioned at the next request.
    fn complete(&self) -> bool {
        match self {
            RequestBody::Empty | RequestBody::Buffered(_) => true,
            RequestBody::Streaming { decoder, .. } => decoder.is_done(),
        }
    }

    /// Safe to send again after a stale pooled connection failed before any response byte:
    /// the body must still be at hand, and a non-idempotent request must not have sent one.
    fn may_retry(&self, req: &RequestHead) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Buffered(_) => req.is_idempotent(),
            RequestBody::Streaming { started, .. } => !started && req.is_idempotent(),
        }
    }

    fn framing(&self, req: &RequestHead) -> OutFraming {
        match req.body {
            BodyKind::Empty => OutFraming::None,
            BodyKind::Length(_) => OutFraming::Length,
            BodyKind::Chunked | BodyKind::UntilClose => OutFraming::Chunked,
        }
    }
}

/// Why a request could not be completed.
#[derive(Debug)]
pub(super) enum Failure {
    NoBackendUp,
    Connect(ConnectError),
    UpstreamTimeout,
    Upstream(&'static str),
    BadRequestBody(BodyError),
    BodyTooLarge,
    ClientBodyTimeout,
    /// The client closed or failed: nobody to answer.
    ClientGone,
    /// The response had started when the upstream failed: the client connection is reset.
    Aborted(&'static str),
}

impl Failure {
    /// Status sent to the client, `None` when no response can be sent.
    fn status(&self) -> Option<u16> {
        match self {
            Failure::NoBackendUp => Some(503),
            Failure::Connect(e) => Some(e.status()),
            Failure::UpstreamTimeout => Some(504),
            Failure::Upstream(_) => Some(502),
            Failure::BadRequestBody(_) => Some(400),
            Failure::BodyTooLarge => Some(413),
            Failure::ClientBodyTimeout => Some(408),
            Failure::ClientGone | Failure::Aborted(_) => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoBackendUp => f.write_str("no backend is up"),
            Failure::Connect(e) => write!(f, "{e}"),
            Failure::UpstreamTimeout => f.write_str("upstream response head timed out"),
            Failure::Upstream(why) | Failure::Aborted(why) => f.write_str(why),
            Failure::BadRequestBody(e) => write!(f, "bad request body: {}", e.reason()),
            Failure::BodyTooLarge => f.write_str("request body larger than max_body_bytes"),
            Failure::ClientBodyTimeout => f.write_str("client stalled sending the body"),
            Failure::ClientGone => f.write_str("client closed the connection"),
        }
    }
}

/// How reading a response head failed: `Stale` (closed before any byte) may be retried.
pub(super) enum HeadFailure {
    Stale,
    Failed(Failure),
}

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
    let mut rec = AccessRecord {
        bytes_in: req.raw.len() as u64,
        ..Default::default()
    };
    let mut body = RequestBody::new(&req, &mut conn.rbuf);
    let keep = match forward(conn, &req, &mut body, ctx, &view, &mut rec).await {
        Ok(keep) => keep,
        Err(failure) => answer_failure(conn, &req, &body, ctx, &view, failure, &mut rec).await,
    };
    set_backend(&mut rec, &view, ctx, None);
    let total = started.elapsed();
    record_metrics(ctx, &view, &rec, total);
    if view.config.logging.access_log {
        let backend_url = rec
            .backend_seen
            .and_then(|b| view.backends.get(b))
            .map(|b| b.url.as_str());
        let access = AccessContext {
            client: &conn.peer_ip,
            method: req.method(),
            path: req.target(),
            backend_url,
            worker: ctx.worker_id,
            total,
        };
        access_log::emit(&access, &rec);
    }
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

/// Moves the request to `backend` (or off any backend), keeping per-backend in-flight gauges.
fn set_backend(rec: &mut AccessRecord, view: &Snapshot, ctx: &WorkerCtx, backend: Option<usize>) {
    if let Some(prev) = rec.backend.take() {
        add_gauge(&view.backends[prev].stats(ctx.worker_id).in_flight, -1);
    }
    if let Some(b) = backend {
        add_gauge(&view.backends[b].stats(ctx.worker_id).in_flight, 1);
        rec.backend = Some(b);
        rec.backend_seen = Some(b);
    }
}

fn record_metrics(ctx: &WorkerCtx, view: &Snapshot, rec: &AccessRecord, total: Duration) {
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
    if let (Some(c), Some(b)) = (class, rec.backend_seen) {
        if let Some(backend) = view.backends.get(b) {
            bump(&backend.stats(ctx.worker_id).requests_by_class[c]);
        }
    }
}

async fn forward(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord,
) -> Result<bool, Failure> {
    let max_backends = 1 + view.config.pool.retries;
    // Inline: no allocation on the common path of one or two backends.
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let mut last_failure: Option<Failure> = None;
    // A pooled connection found closed gets one free retry on a fresh connection, same backend.
    let mut fresh_retry: Option<usize> = None;
    let mut fresh_retry_used = false;
    let (mut up, resp) = loop {
        let backend = match fresh_retry.take() {
            Some(b) => b,
            None => {
                let next = (tried.len() < max_backends)
                    .then(|| pick_backend(ctx, view, &tried))
                    .flatten();
                let Some(b) = next else {
                    return Err(last_failure.unwrap_or(Failure::NoBackendUp));
                };
                if !tried.is_empty() {
                    bump(&ctx.metrics.retries);
                }
                tried.push(b);
                b
            }
        };
        set_backend(rec, view, ctx, Some(backend));
        let pooled = match fresh_retry_used {
            true => None,
            false => ctx.pool().checkout(backend),
        };
        let target = &view.backends[backend];
        let mut up = match pooled {
            Some(up) => {
                bump(&ctx.metrics.upstream_reused);
                up
            }
            None => {
                let timeout = view.config.timeouts.connect;
                match connect(backend, target.addr, timeout, view.generation).await {
                    Ok(up) => {
                        bump(&ctx.metrics.upstream_opened);
                        up
                    }
                    Err(e) if !e.is_backend_failure() => {
                        // Out of descriptors here: shed (503). No failure counted against the
                        // backend, its half-open trial (if this was it) given back.
                        target.passive.release_trial();
                        rec.backend_seen = None;
                        return Err(Failure::Connect(e));
                    }
                    Err(e) => {
                        tracing::warn!(backend = %target.url, error = ?e, worker = ctx.worker_id, "upstream connect failed");
                        let stats = target.stats(ctx.worker_id);
                        bump(&stats.connect_errors);
                        if matches!(e, ConnectError::Timeout) {
                            bump(&stats.timeouts);
                        }
                        report_failure(ctx, view, backend);
                        // Nothing reached the upstream: always safe to try another backend.
                        last_failure = Some(Failure::Connect(e));
                        continue;
                    }
                }
            }
        };
        let sent_at = Instant::now();
        match exchange_head(conn, req, body, &mut up, view).await {
            Ok(resp) => {
                rec.upstream_time = Some(sent_at.elapsed());
                report_response(ctx, view, backend, resp.status);
                break (up, resp);
            }
            Err(HeadFailure::Stale) if up.reused && !fresh_retry_used && body.may_retry(req) => {
                tracing::debug!(backend = %view.backends[backend].url, "pooled connection was closed by the upstream; retrying on a fresh one");
                bump(&ctx.metrics.retries);
                fresh_retry = Some(backend);
                fresh_retry_used = true;
            }
            Err(HeadFailure::Stale) => {
                report_failure(ctx, view, backend);
                let failure =
                    Failure::Upstream("upstream closed the connection without a response");
                if !body.may_retry(req) {
                    return Err(failure);
                }
                last_failure = Some(failure);
            }
            Err(HeadFailure::Failed(f)) => {
                if let Failure::UpstreamTimeout = f {
                    bump(&view.backends[backend].stats(ctx.worker_id).timeouts);
                }
                if matches!(f, Failure::UpstreamTimeout | Failure::Upstream(_)) {
                    report_failure(ctx, view, backend);
                }
                return Err(f);
            }
        }
    };

    if resp.status == 101 {
        // Only an upgrade request gets here (a 101 to anything else is refused as broken).
        rec.status = 101;
        add_gauge(&ctx.metrics.tunnels, 1);
        // Boxed for the same reason as the upload watch: only tunnels need this state.
        let tunnel = Box::pin(tunnel::switch_protocols(
            conn,
            up,
            &resp,
            view.config.timeouts.io,
        ));
        let moved = tunnel.await;
        add_gauge(&ctx.metrics.tunnels, -1);
        let moved = moved.ok_or(Failure::ClientGone)?;
        rec.bytes_in += moved.to_upstream;
        rec.bytes_out += moved.to_client;
        return Ok(false);
    }
    let framing = response_framing(req, &resp);
    // While draining, this is the connection's last response.
    let client_keep = req.keep_alive
        && framing != OutFraming::Close
        && body.complete()
        && !ctx.shared.is_draining();
    conn.out.clear();
    write_response_head(&mut conn.out, req, &resp, framing, client_keep);
    rec.status = resp.status;
    rec.bytes_out = conn.out.len() as u64;
    let mut decoder = BodyDecoder::new(resp.body);
    let source = Source {
        stream: &mut up.stream,
        buf: &mut up.rbuf,
        decoder: &mut decoder,
        head: (&resp.raw, &resp.connection),
    };
    let io_timeout = view.config.timeouts.io;
    match transfer_body(
        source,
        &mut conn.stream,
        &mut conn.out,
        framing,
        io_timeout,
        None,
    )
    .await
    {
        Ok(moved) => {
            rec.bytes_out += moved;
            if resp.reusable && decoder.is_done() {
                let mut pool = ctx.pool();
                pool.checkin(up);
                ctx.metrics
                    .pool_idle
                    .store(pool.idle_count() as i64, Ordering::Relaxed);
            }
            Ok(client_keep)
        }
        Err(TransferError::Source {
            fault,
            sent_any: false,
        }) => {
            // Broken before a byte reached the client: it can still get a clean 502.
            report_failure(ctx, view, up.backend);
            tracing::warn!(backend = %view.backends[up.backend].url, fault = ?fault, worker = ctx.worker_id, "upstream response body broken before anything was sent");
            rec.bytes_out = 0;
            Err(Failure::Upstream("malformed upstream response body"))
        }
        Err(TransferError::Source {
            fault,
            sent_any: true,
        }) => {
            report_failure(ctx, view, up.backend);
            tracing::warn!(backend = %view.backends[up.backend].url, fault = ?fault, worker = ctx.worker_id, "upstream failed mid-response; resetting client connection");
            Err(Failure::Aborted("upstream failed mid-response"))
        }
        Err(TransferError::Destination(_)) | Err(TransferError::TooLarge) => {
            Err(Failure::ClientGone)
        }
    }
}

/// Chooses a backend not yet tried that is up and not ejected. A half-open backend admits one
/// trial request across all workers; losing that race means choosing again.
fn pick_backend(ctx: &WorkerCtx, view: &Snapshot, tried: &[usize]) -> Option<usize> {
    let now = now_ms();
    let passive = &view.config.passive;
    let mut lost_trial: SmallVec<[usize; 2]> = SmallVec::new();
    loop {
        let chosen = ctx.balancer().pick(&view.backends, |i| {
            let b = &view.backends[i];
            b.accepts_traffic()
                && b.passive.admits(now, passive)
                && !tried.contains(&i)
                && !lost_trial.contains(&i)
        })?;
        let health = &view.backends[chosen].passive;
        if health.circuit(now) != Circuit::HalfOpen || health.claim_trial(now) {
            return Some(chosen);
        }
        lost_trial.push(chosen);
    }
}

/// Feeds a connect error, reset, timeout or broken response into passive health. The last
/// available backend is never ejected: with nothing else to send to, ejecting it would turn
/// errors into a black hole of 503s while it may still answer some requests.
fn report_failure(ctx: &WorkerCtx, view: &Snapshot, backend: usize) {
    let now = now_ms();
    let settings = &view.config.passive;
    let b = &view.backends[backend];
    if !b.passive.record_failure(now, settings) {
        return;
    }
    let others_available = view
        .backends
        .iter()
        .enumerate()
        .any(|(i, o)| i != backend && o.is_available(now));
    if others_available {
        b.passive.eject(now, settings);
        b.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(backend = %b.url, cool_down_s = settings.fail_timeout.as_secs_f64(), worker = ctx.worker_id, "backend ejected after repeated failures");
    } else {
        b.passive.release_trial();
        tracing::warn!(backend = %b.url, worker = ctx.worker_id, "backend failing but it is the last one available; not ejected");
    }
}

fn report_response(ctx: &WorkerCtx, view: &Snapshot, backend: usize, status: u16) {
    if status >= 500 && view.config.passive.eject_on_5xx {
        report_failure(ctx, view, backend);
    } else if view.backends[backend].passive.record_success(now_ms()) {
        tracing::info!(backend = %view.backends[backend].url, worker = ctx.worker_id, "backend readmitted after a successful trial request");
    }
}

/// Sends the request (head and body) on `up` and reads the final response head.
async fn exchange_head(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    up: &mut UpstreamConn,
    view: &Snapshot,
) -> Result<ResponseHead, HeadFailure> {
    let timeouts = &view.config.timeouts;
    let framing = body.framing(req);
    conn.upstream_out.clear();
    let backend_addr = view.backends[up.backend].addr;
    write_request_head(
        &mut conn.upstream_out,
        req,
        &conn.peer_ip,
        framing,
        backend_addr,
    );
    match body {
        RequestBody::Empty | RequestBody::Buffered(_) => {
            if let RequestBody::Buffered(data) = body {
                conn.upstream_out.extend_from_slice(data);
            }
            match write_buf(&mut up.stream, &mut conn.upstream_out, timeouts.io).await {
                Ok(()) => {}
                Err(IoFail::Io(_)) => return Err(HeadFailure::Stale),
                Err(IoFail::Timeout) => {
                    return Err(HeadFailure::Failed(Failure::Upstream(
                        "timed out sending the request",
                    )))
                }
            }
        }
        RequestBody::Streaming { decoder, started } => {
            if req.expect_continue && !*started && conn.rbuf.is_empty() {
                conn.out.clear();
                conn.out.extend_from_slice(status::CONTINUE);
                write_buf(&mut conn.stream, &mut conn.out, timeouts.io)
                    .await
                    .map_err(|_| HeadFailure::Failed(Failure::ClientGone))?;
            }
            *started = true;
            let source = Source {
                stream: &mut conn.stream,
                buf: &mut conn.rbuf,
                decoder,
                head: (&req.raw, &req.connection),
            };
            let max = view.config.limits.max_body_bytes;
            let watcher = Watcher::new(&up.stream);
            let transfer = transfer_body(
                source,
                &mut up.stream,
                &mut conn.upstream_out,
                framing,
                timeouts.io,
                max,
            );
            // Boxed: this state is several KiB (two transfers' worth of timers) and only streamed
            // uploads need it; inline, every connection's task would carry it.
            let sending = Box::pin(send_body_watching(transfer, watcher, &mut up.rbuf, req));
            match sending.await {
                BodySent::Finished(Ok(_)) => {}
                BodySent::Finished(Err(e @ TransferError::Destination(IoFail::Io(_)))) => {
                    // The upstream stopped taking the body: it may have answered, then closed.
                    let grace = Instant::now() + EARLY_ANSWER_GRACE;
                    return match read_response_head(up, req, grace).await {
                        Ok(head) => Ok(answered_early(head)),
                        Err(_) => Err(HeadFailure::Failed(request_body_failure(e))),
                    };
                }
                BodySent::Finished(Err(e)) => {
                    return Err(HeadFailure::Failed(request_body_failure(e)))
                }
                BodySent::AnsweredEarly(head) => return Ok(answered_early(*head)),
                BodySent::Broken(f) => return Err(HeadFailure::Failed(f)),
            }
        }
    }
    read_response_head(up, req, Instant::now() + timeouts.request).await
}

/// An answer that came before the whole request body was sent: the upstream connection is
/// out of step (part of the body may be unsent), so it is not reused.
fn answered_early(mut head: ResponseHead) -> ResponseHead {
    head.reusable = false;
    head
}

fn request_body_failure(e: TransferError) -> Failure {
    match e {
        TransferError::Source { fault, .. } => match fault {
            SourceFault::Io(IoFail::Timeout) => Failure::ClientBodyTimeout,
            SourceFault::Io(IoFail::Io(_)) => Failure::ClientGone,
            SourceFault::Framing(BodyError::Truncated) => Failure::ClientGone,
            SourceFault::Framing(e) => Failure::BadRequestBody(e),
        },
        TransferError::TooLarge => Failure::BodyTooLarge,
        TransferError::Destination(_) => {
            Failure::Upstream("upstream failed while receiving the request body")
        }
    }
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
    rec: &mut AccessRecord,
) -> bool {
    let backend = rec
        .backend_seen
        .and_then(|b| view.backends.get(b))
        .map_or("-", |b| b.url.as_str());
    let Some(code) = failure.status() else {
        tracing::info!(client = %conn.peer, backend, reason = %failure, worker = ctx.worker_id, "request abandoned");
        if let Failure::Aborted(_) = failure {
            reset_on_close(&conn.stream);
            rec.status = if rec.status == 0 { 502 } else { rec.status };
            rec.answered = false;
        } else {
            // nginx's convention for "client closed the connection".
            rec.status = 499;
            rec.answered = false;
        }
        return false;
    };
    tracing::warn!(client = %conn.peer, backend, status = code, reason = %failure, worker = ctx.worker_id, "request failed");
    rec.status = code;
    let keep = req.keep_alive && body.complete() && code >= 500 && !ctx.shared.is_draining();
    conn.out.clear();
    status::write_error(&mut conn.out, code, keep);
    rec.bytes_out = conn.out.len() as u64;
    write_buf(&mut conn.stream, &mut conn.out, view.config.timeouts.io)
        .await
        .is_ok()
        && keep
}
