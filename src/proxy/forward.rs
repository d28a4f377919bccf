//! Forwarding one request: pick a backend, send the request, read the response head, stream the
//! response back. Every failed attempt carries its own retry verdict (`Retry`), decided where the
//! failure is known, as Pingora's errors do: a connect failure, or a request write that failed
//! before any byte left, may go elsewhere for any method; a request that may have reached the
//! upstream is sent again only if it is idempotent (RFC 9110 §9.2.2, RFC 9112 §9.3.1) or its
//! group opted in. Failures before the response starts get a status; after it started, the
//! client connection is reset.

use super::access_log::{self, AccessContext, AccessRecord};
use super::answer::{read_response_head, send_body_watching, BodySent, HeadError, Watcher};
use super::io::{
    dup_raw_fd, reset_on_close, write_buf, write_buf_tracked, IdleState, IoFail, ReadyStream,
};
use super::splice::SPLICE_MIN_BYTES;
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
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Request bodies up to this size that already sit in the read buffer are sent with the head in
/// one write, and kept so the request can be replayed on a retry.
const BUFFERED_BODY_MAX: u64 = 64 * 1024;
/// After the upstream stopped taking the request body, how long an answer it sent before
/// closing may take to be read (it is normally in the socket buffer already).
const EARLY_ANSWER_GRACE: Duration = Duration::from_secs(1);
/// The scheme clients reach this listener with, for X-Forwarded-Proto and Forwarded.
const LISTENER_SCHEME: &str = "http";

/// The request body, as far as the client side is concerned.
enum RequestBody {
    Empty,
    /// Complete and already taken off the client connection (`Content-Length: 0` included).
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

    /// Still at hand in full, so the request could be sent again.
    fn replayable(&self) -> bool {
        match self {
            RequestBody::Empty | RequestBody::Buffered(_) => true,
            RequestBody::Streaming { started, .. } => !started,
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

/// Whether a failed attempt may be made again: the verdict travels with the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Never: the upstream may have acted on the request, or its body is gone.
    Never,
    /// On a fresh connection to the same backend: a pooled connection turned out closed.
    FreshConnection,
    /// On another backend.
    AnotherBackend,
}

impl Retry {
    /// The request never reached the upstream (connect failed, or its write failed before any
    /// byte left): safe to repeat whatever the method, as long as the body is at hand.
    fn unsent(body_replayable: bool, reused: bool) -> Retry {
        match (body_replayable, reused) {
            (false, _) => Retry::Never,
            (true, true) => Retry::FreshConnection,
            (true, false) => Retry::AnotherBackend,
        }
    }

    /// The request went, and the connection closed before any byte of an answer: the upstream
    /// may have acted on it. Repeated only when that is harmless (an idempotent method) or the
    /// operator said so (`retry_non_idempotent`).
    fn unanswered(body_replayable: bool, reused: bool, idempotent: bool, opt_in: bool) -> Retry {
        if idempotent || opt_in {
            Retry::unsent(body_replayable, reused)
        } else {
            Retry::Never
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

impl Failure {
    /// A short fixed text for the access log.
    fn summary(&self) -> &'static str {
        match self {
            Failure::NoBackendUp => "no backend is up",
            Failure::Connect(ConnectError::Timeout) => "connect to upstream timed out",
            Failure::Connect(ConnectError::Failed(_)) => "connect to upstream failed",
            Failure::Connect(ConnectError::NoDescriptor(_)) => "out of file descriptors",
            Failure::UpstreamTimeout => "upstream response head timed out",
            Failure::Upstream(why) | Failure::Aborted(why) => why,
            Failure::BadRequestBody(e) => e.reason(),
            Failure::BodyTooLarge => "request body larger than max_body_bytes",
            Failure::ClientBodyTimeout => "client stalled sending the body",
            Failure::ClientGone => "client closed the connection",
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

/// One attempt that failed, with its verdict.
struct Attempt {
    failure: Failure,
    retry: Retry,
    /// Counts against the backend's passive health.
    blame: bool,
}

impl Attempt {
    /// Not to be repeated; the backend is blamed when the failure is its own.
    fn never(failure: Failure) -> Attempt {
        let blame = matches!(failure, Failure::UpstreamTimeout | Failure::Upstream(_));
        Attempt {
            failure,
            retry: Retry::Never,
            blame,
        }
    }

    /// A failure of this proxy (out of descriptors), not of the backend: not repeated, and not
    /// logged against the backend.
    fn never_local(failure: Failure) -> Attempt {
        Attempt {
            failure,
            retry: Retry::Never,
            blame: false,
        }
    }

    /// The connection closed under the request. A pooled one closed by the upstream while
    /// idle says nothing about its health (keep-alive timeouts differ); a fresh one does.
    fn closed(why: &'static str, retry: Retry, reused: bool) -> Attempt {
        Attempt {
            failure: Failure::Upstream(why),
            retry,
            blame: !reused,
        }
    }
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

/// Counts a finished request (answered or not) in the worker's and its backend's metrics.
pub(super) fn record_metrics(
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &AccessRecord,
    total: Duration,
) {
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

/// What the upstream answered.
// `Head` is the common case: boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Answer {
    /// A response head; its body is still to be relayed.
    Head(ResponseHead),
    /// Answered while the request body was still streaming, and already relayed both ways.
    Duplexed(Duplexed),
}

async fn forward(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord,
) -> Result<bool, Failure> {
    let (up, backend, answer) = exchange(conn, req, body, ctx, view, rec).await?;
    match answer {
        Answer::Head(resp) if resp.status == 101 => tunnel(conn, up, &resp, ctx, view, rec).await,
        Answer::Head(resp) => {
            relay_response(conn, req, body, up, resp, ctx, view, rec, backend).await
        }
        Answer::Duplexed(done) => {
            rec.status = done.status;
            match done.relayed {
                Ok(moved) => {
                    rec.bytes_out = moved;
                    // The response said `Connection: close`: the body's end was unknown then.
                    Ok(false)
                }
                Err(e) => Err(relay_failure(ctx, view, backend, e, rec)),
            }
        }
    }
}

/// Sends the request to backends until one answers or the failures' verdicts say stop.
/// Returns the connection, the index of its backend in `view` and the answer.
async fn exchange(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord,
) -> Result<(UpstreamConn, usize, Answer), Failure> {
    let max_backends = 1 + view.config.pool.retries;
    // Inline: no allocation on the common path of one or two backends.
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let mut last_failure: Option<Failure> = None;
    // A pooled connection found closed gets one free retry on a fresh connection, same backend.
    let mut fresh_for: Option<usize> = None;
    let mut fresh_used = false;
    loop {
        let (backend, fresh_only) = match fresh_for.take() {
            Some(b) => (b, true),
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
                (b, false)
            }
        };
        set_backend(rec, view, ctx, Some(backend));
        let attempt = match upstream_connection(ctx, view, backend, fresh_only).await {
            Ok(mut up) => match attempt(conn, req, body, &mut up, ctx, view, backend, rec).await {
                Ok(answer) => return Ok((up, backend, answer)),
                Err(failed) => failed,
            },
            Err(failed) => failed,
        };
        if let Failure::Connect(ConnectError::NoDescriptor(_)) = attempt.failure {
            // This proxy's failure: not the backend's 5xx, nor its access-log entry.
            rec.backend_seen = None;
        }
        match attempt.retry {
            Retry::Never => return Err(attempt.failure),
            Retry::FreshConnection if !fresh_used => {
                tracing::debug!(backend = %view.backends[backend].url, reason = %attempt.failure, "pooled connection was closed by the upstream; retrying on a fresh one");
                bump(&ctx.metrics.retries);
                fresh_for = Some(backend);
                fresh_used = true;
            }
            Retry::FreshConnection | Retry::AnotherBackend => {}
        }
        last_failure = Some(attempt.failure);
    }
}

/// A connection to `backend`: the most recently idle clean one from the pool, or a new one
/// (always a new one when `fresh_only`).
async fn upstream_connection(
    ctx: &WorkerCtx,
    view: &Snapshot,
    backend: usize,
    fresh_only: bool,
) -> Result<UpstreamConn, Attempt> {
    let target = &view.backends[backend];
    if !fresh_only {
        let pooled = ctx
            .pool()
            .checkout(target.id, |state| count_discarded(ctx, &target.url, state));
        if let Some(up) = pooled {
            bump(&ctx.metrics.upstream_reused);
            return Ok(up);
        }
    }
    match connect(target.id, target.addr, view.config.timeouts.connect).await {
        Ok(up) => {
            bump(&ctx.metrics.upstream_opened);
            Ok(up)
        }
        Err(e) if !e.is_backend_failure() => {
            // Out of descriptors here: shed (503). No failure counted against the backend, its
            // half-open trial (if this was it) given back, no other backend tried.
            target.passive.release_trial();
            Err(Attempt::never_local(Failure::Connect(e)))
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
            Err(Attempt {
                failure: Failure::Connect(e),
                retry: Retry::AnotherBackend,
                blame: false,
            })
        }
    }
}

/// An idle upstream connection was found unusable: counted, and a broken upstream logged.
fn count_discarded(ctx: &WorkerCtx, backend: &str, state: IdleState) {
    match state {
        IdleState::StrayBytes => {
            bump(&ctx.metrics.upstream_discarded_stray);
            tracing::warn!(
                backend,
                worker = ctx.worker_id,
                "upstream sent bytes after its response; connection closed, not reused"
            );
        }
        IdleState::Closed | IdleState::Clean => bump(&ctx.metrics.upstream_discarded_closed),
    }
}

/// Sends the request on `up` and reads the answer; a failure comes with its retry verdict.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    up: &mut UpstreamConn,
    ctx: &WorkerCtx,
    view: &Snapshot,
    backend: usize,
    rec: &mut AccessRecord,
) -> Result<Answer, Attempt> {
    let sent_at = Instant::now();
    let sent = send_request(conn, req, body, up, view, view.backends[backend].addr).await;
    let answered = match sent {
        Ok(Sent::Whole) => {
            let deadline = Instant::now() + view.config.timeouts.request;
            read_response_head(up, req, deadline)
                .await
                .map(Answer::Head)
                .map_err(|e| head_failure(e, req, body, up.reused, view))
        }
        Ok(Sent::AnsweredEarly(head)) => Ok(Answer::Head(*head)),
        Ok(Sent::Duplexed(done)) => Ok(Answer::Duplexed(done)),
        Err(failed) => Err(failed),
    };
    match &answered {
        Ok(Answer::Head(resp)) => {
            rec.upstream_time = Some(sent_at.elapsed());
            report_response(ctx, view, backend, resp.status);
        }
        Ok(Answer::Duplexed(done)) => {
            rec.upstream_time = Some(done.head_after);
            report_response(ctx, view, backend, done.status);
        }
        Err(failed) => {
            if let Failure::UpstreamTimeout = failed.failure {
                bump(&view.backends[backend].stats(ctx.worker_id).timeouts);
            }
            if failed.blame {
                report_failure(ctx, view, backend);
            }
        }
    }
    answered
}

/// The verdict on a response head that did not come.
fn head_failure(
    e: HeadError,
    req: &RequestHead,
    body: &RequestBody,
    reused: bool,
    view: &Snapshot,
) -> Attempt {
    match e {
        HeadError::ClosedBeforeAnswer => {
            let retry = Retry::unanswered(
                body.replayable(),
                reused,
                req.is_idempotent(),
                view.config.pool.retry_non_idempotent,
            );
            let why = "upstream closed the connection without a response";
            Attempt::closed(why, retry, reused)
        }
        // A timeout is never retried: the upstream may still be working on the request.
        HeadError::Failed(f) => Attempt::never(f),
    }
}

/// What became of sending the request.
enum Sent {
    /// All of it went: the answer is to be read.
    Whole,
    /// The upstream stopped taking the body and answered: that answer is relayed, and the
    /// connection (out of step) not reused.
    AnsweredEarly(Box<ResponseHead>),
    /// The upstream answered while the body was still streaming; relayed both ways already.
    Duplexed(Duplexed),
}

/// Sends the request (head and body) on `up`, a connection to `backend_addr`.
async fn send_request(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    up: &mut UpstreamConn,
    view: &Snapshot,
    backend_addr: std::net::SocketAddr,
) -> Result<Sent, Attempt> {
    let timeouts = &view.config.timeouts;
    let framing = body.framing(req);
    conn.upstream_out.clear();
    write_request_head(
        &mut conn.upstream_out,
        req,
        &conn.peer_ip,
        LISTENER_SCHEME,
        framing,
        backend_addr,
    );
    match body {
        RequestBody::Empty | RequestBody::Buffered(_) => {
            if let RequestBody::Buffered(data) = body {
                conn.upstream_out.extend_from_slice(data);
            }
            let written = write_buf_tracked(&mut up.stream, &mut conn.upstream_out, timeouts.io);
            match written.await {
                Ok(()) => Ok(Sent::Whole),
                Err((IoFail::Timeout, _)) => Err(Attempt::never(Failure::Upstream(
                    "timed out sending the request",
                ))),
                Err((IoFail::Io(_), sent_any)) => {
                    let replayable = body.replayable();
                    let retry = if sent_any {
                        Retry::unanswered(
                            replayable,
                            up.reused,
                            req.is_idempotent(),
                            view.config.pool.retry_non_idempotent,
                        )
                    } else {
                        Retry::unsent(replayable, up.reused)
                    };
                    let why = "upstream closed the connection before taking the request";
                    Err(Attempt::closed(why, retry, up.reused))
                }
            }
        }
        RequestBody::Streaming { decoder, started } => {
            if req.expect_continue && !*started && conn.rbuf.is_empty() {
                conn.out.clear();
                conn.out.extend_from_slice(status::CONTINUE);
                write_buf(&mut conn.stream, &mut conn.out, timeouts.io)
                    .await
                    .map_err(|_| Attempt::never(Failure::ClientGone))?;
            }
            *started = true;
            // Boxed: this state is several KiB (two transfers' worth of timers) and only
            // streamed uploads need it; inline, every connection's task would carry it.
            Box::pin(send_streaming_body(conn, req, decoder, up, view, framing))
                .await
                .map_err(Attempt::never)
        }
    }
}

/// The answer to a request whose body was still streaming, relayed both ways at once.
struct Duplexed {
    status: u16,
    /// From sending the request to the answer's head.
    head_after: Duration,
    /// The response's payload bytes relayed, or how relaying failed.
    relayed: Result<u64, TransferError>,
}

/// Streams the request body upstream while watching for an answer. One that comes before the
/// body is all sent is relayed at once, while the body keeps going (full-duplex APIs answer
/// and echo as they read). The body stops only when the upstream stops taking it (the write
/// fails: it closed or reset), or once the response is complete.
async fn send_streaming_body(
    conn: &mut ClientConn,
    req: &RequestHead,
    decoder: &mut BodyDecoder,
    up: &mut UpstreamConn,
    view: &Snapshot,
    framing: OutFraming,
) -> Result<Sent, Failure> {
    let io_timeout = view.config.timeouts.io;
    let sent_at = Instant::now();
    let client_fd = conn.stream.as_raw_fd();
    let ClientConn {
        stream,
        rbuf,
        out,
        upstream_out,
        ..
    } = conn;
    let watcher = Watcher::new(&up.stream);
    let source = Source {
        stream,
        buf: rbuf,
        decoder,
        head: (&req.raw, &req.connection),
        drop_underscored: !view.config.limits.head.allow_underscores,
    };
    let max = view.config.limits.head.max_body_bytes;
    let mut transfer = Box::pin(transfer_body(
        source,
        &mut up.stream,
        upstream_out,
        framing,
        io_timeout,
        max,
    ));
    match send_body_watching(transfer.as_mut(), &watcher, &mut up.rbuf, req).await {
        BodySent::Finished(Ok(_)) => Ok(Sent::Whole),
        BodySent::Finished(Err(e @ TransferError::Destination(IoFail::Io(_)))) => {
            drop(transfer);
            // The upstream stopped taking the body: it may have answered, then closed.
            let grace = Instant::now() + EARLY_ANSWER_GRACE;
            match read_response_head(up, req, grace).await {
                Ok(mut head) => {
                    // Out of step (part of the body unsent): not reused.
                    head.reusable = false;
                    Ok(Sent::AnsweredEarly(Box::new(head)))
                }
                Err(_) => Err(request_body_failure(e)),
            }
        }
        BodySent::Finished(Err(e)) => Err(request_body_failure(e)),
        BodySent::Broken(f) => Err(f),
        BodySent::AnsweredEarly(head) => {
            let head_after = sent_at.elapsed();
            let (Some(reader), Ok(writer)) = (watcher.into_stream(), dup_raw_fd(client_fd)) else {
                return Err(Failure::Upstream("cannot relay an early answer"));
            };
            let relayed = relay_duplex(
                transfer.as_mut(),
                ReadyStream(reader),
                ReadyStream(writer),
                out,
                &mut up.rbuf,
                req,
                &head,
                io_timeout,
            );
            let relayed = relayed.await?;
            Ok(Sent::Duplexed(Duplexed {
                status: head.status,
                head_after,
                relayed,
            }))
        }
    }
}

/// Relays `resp` to the client while `transfer` goes on sending the request body, both at
/// once (the upstream may need more of the body before it sends more of the answer, so neither
/// may wait for the other). Through readiness and non-blocking calls on second descriptors
/// (`ReadyStream`): the body transfer may be splicing, which puts the sockets in non-blocking
/// mode. Ends when the response is complete, with the client told `Connection: close` (whether
/// the body will complete is not known when the head goes out). A client body that fails
/// meanwhile aborts the exchange: the client connection is reset.
#[allow(clippy::too_many_arguments)]
async fn relay_duplex<F>(
    mut transfer: std::pin::Pin<&mut F>,
    mut reader: ReadyStream,
    mut writer: ReadyStream,
    out: &mut bytes::BytesMut,
    up_rbuf: &mut bytes::BytesMut,
    req: &RequestHead,
    resp: &ResponseHead,
    io_timeout: Duration,
) -> Result<Result<u64, TransferError>, Failure>
where
    F: std::future::Future<Output = Result<u64, TransferError>>,
{
    let framing = response_framing(req, resp);
    out.clear();
    write_response_head(out, req, resp, framing, false);
    let head_bytes = out.len() as u64;
    let mut decoder = BodyDecoder::new(resp.body);
    let source = Source {
        stream: &mut reader,
        buf: up_rbuf,
        decoder: &mut decoder,
        head: (&resp.raw, &resp.connection),
        drop_underscored: false,
    };
    let mut relay = std::pin::pin!(transfer_body(
        source,
        &mut writer,
        out,
        framing,
        io_timeout,
        None
    ));
    let mut body_done = false;
    loop {
        monoio::select! {
            biased;
            relayed = &mut relay => return Ok(relayed.map(|n| n + head_bytes)),
            sent = &mut transfer, if !body_done => match sent {
                // All sent, or the upstream stopped taking it (closed or reset its side): the
                // answer goes on alone.
                Ok(_) | Err(TransferError::Destination(_)) => body_done = true,
                Err(e) => {
                    tracing::debug!(error = ?e, "client body failed while the answer was streaming");
                    return Err(Failure::Aborted("client body failed while the answer was streaming"));
                }
            },
        }
    }
}

/// The answer was a `101 Switching Protocols` (only an upgrade request gets here): the two
/// connections become a byte tunnel.
async fn tunnel(
    conn: &mut ClientConn,
    up: UpstreamConn,
    resp: &ResponseHead,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord,
) -> Result<bool, Failure> {
    rec.status = 101;
    add_gauge(&ctx.metrics.tunnels, 1);
    // Boxed for the same reason as the upload watch: only tunnels need this state.
    let tunnel = Box::pin(tunnel::switch_protocols(
        conn,
        up,
        resp,
        view.config.timeouts.io,
    ));
    let moved = tunnel.await;
    add_gauge(&ctx.metrics.tunnels, -1);
    let moved = moved.ok_or(Failure::ClientGone)?;
    rec.bytes_in += moved.to_upstream;
    rec.bytes_out += moved.to_client;
    Ok(false)
}

/// Streams the response body to the client, then returns a cleanly finished upstream
/// connection to the pool. Returns whether the client connection stays open.
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &RequestBody,
    mut up: UpstreamConn,
    resp: ResponseHead,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord,
    backend: usize,
) -> Result<bool, Failure> {
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
        drop_underscored: false,
    };
    let io_timeout = view.config.timeouts.io;
    let moved = transfer_body(
        source,
        &mut conn.stream,
        &mut conn.out,
        framing,
        io_timeout,
        None,
    );
    match moved.await {
        Ok(moved) => {
            rec.bytes_out += moved;
            if resp.reusable && decoder.is_done() {
                // Only a Content-Length body this large can have been spliced: exactly its
                // length was taken from the socket, so what follows is still in there.
                let maybe_spliced =
                    matches!(resp.body, BodyKind::Length(n) if n >= SPLICE_MIN_BYTES);
                check_in(ctx, view, up, backend, maybe_spliced);
            }
            Ok(client_keep)
        }
        Err(e) => Err(relay_failure(ctx, view, backend, e, rec)),
    }
}

/// Returns a finished upstream connection to the pool, unless bytes wait on it already.
fn check_in(ctx: &WorkerCtx, view: &Snapshot, up: UpstreamConn, backend: usize, spliced: bool) {
    let mut pool = ctx.pool();
    if let Err(state) = pool.checkin(up, spliced) {
        count_discarded(ctx, &view.backends[backend].url, state);
    }
    ctx.metrics
        .pool_idle
        .store(pool.idle_count() as i64, Ordering::Relaxed);
}

/// What a failed response relay means for the client.
fn relay_failure(
    ctx: &WorkerCtx,
    view: &Snapshot,
    backend: usize,
    e: TransferError,
    rec: &mut AccessRecord,
) -> Failure {
    let url = &view.backends[backend].url;
    match e {
        TransferError::Source {
            fault,
            sent_any: false,
        } => {
            // Broken before a byte reached the client: it can still get a clean 502.
            report_failure(ctx, view, backend);
            tracing::warn!(backend = %url, fault = ?fault, worker = ctx.worker_id, "upstream response body broken before anything was sent");
            rec.bytes_out = 0;
            Failure::Upstream("malformed upstream response body")
        }
        TransferError::Source {
            fault,
            sent_any: true,
        } => {
            report_failure(ctx, view, backend);
            tracing::warn!(backend = %url, fault = ?fault, worker = ctx.worker_id, "upstream failed mid-response; resetting client connection");
            Failure::Aborted("upstream failed mid-response")
        }
        TransferError::Destination(_) | TransferError::TooLarge => Failure::ClientGone,
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
        rec.reason = Some(failure.summary());
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
    rec.reason = Some(failure.summary());
    let keep = req.keep_alive && body.complete() && code >= 500 && !ctx.shared.is_draining();
    conn.out.clear();
    status::write_error(&mut conn.out, code, keep);
    rec.bytes_out = conn.out.len() as u64;
    write_buf(&mut conn.stream, &mut conn.out, view.config.timeouts.io)
        .await
        .is_ok()
        && keep
}

#[cfg(test)]
mod tests {
    use super::Retry;

    #[test]
    fn unsent_requests_go_anywhere_if_their_body_is_at_hand() {
        assert_eq!(Retry::unsent(true, true), Retry::FreshConnection);
        assert_eq!(Retry::unsent(true, false), Retry::AnotherBackend);
        assert_eq!(Retry::unsent(false, true), Retry::Never);
        assert_eq!(Retry::unsent(false, false), Retry::Never);
    }

    #[test]
    fn unanswered_requests_are_repeated_only_when_idempotent_or_opted_in() {
        // (replayable, reused, idempotent, opt_in) -> verdict
        let cases = [
            ((true, true, true, false), Retry::FreshConnection),
            ((true, false, true, false), Retry::AnotherBackend),
            ((true, true, false, false), Retry::Never),
            ((true, false, false, false), Retry::Never),
            ((true, false, false, true), Retry::AnotherBackend),
            ((true, true, false, true), Retry::FreshConnection),
            ((false, false, true, false), Retry::Never),
            ((false, true, true, true), Retry::Never),
        ];
        for ((replayable, reused, idempotent, opt_in), want) in cases {
            assert_eq!(
                Retry::unanswered(replayable, reused, idempotent, opt_in),
                want,
                "replayable {replayable}, reused {reused}, idempotent {idempotent}, opt-in {opt_in}"
            );
        }
    }
}
