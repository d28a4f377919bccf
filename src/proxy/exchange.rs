//! The exchange phase: pick a backend of the route's group, get a connection (a clean pooled
//! one, or a new one), send the request, read the answer. A failed attempt comes back with its
//! retry verdict (`error::Retry`), decided where the failure is known; this loop only follows
//! it: another backend, one fresh connection to the same backend, or stop.

use super::access_log::AccessRecord;
use super::answer::{
    read_response_head, send_body_watching, BodySent, HeadError, Interim, Watcher,
};
use super::duplex::{relay_duplex, Duplexed, EarlyAnswer};
use super::error::{request_body_failure, AttemptError, Failure, Retry};
use super::forwarding::{
    write_request_head, ForwardedFor, Outgoing, Redirects, ResponsePolicy, TrailerPolicy,
};
use super::https;
use super::request_body::RequestBody;
use super::route::Route;
use super::transfer::{transfer_body, Sink, Source, TransferError};
use super::{ClientConn, WorkerCtx};
use crate::config::HostHeader;
use crate::http::{status, BodyDecoder, OutFraming, RequestHead, ResponseHead, Version};
use crate::metrics::bump;
use crate::net::deadline::Deadline;
use crate::net::io::{write_buf, write_buf_tracked, IoFail};
use crate::net::proxy_protocol;
use crate::upstream::{connect, group, proxy_version, ConnectError, InFlight, UpstreamConn};
use bytes::BytesMut;
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// After the upstream stopped taking the request body, how long an answer it sent before
/// closing may take to be read (it is normally in the socket buffer already).
const EARLY_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// A request that reached an upstream and got an answer.
pub struct Exchanged<'v> {
    pub up: UpstreamConn,
    /// The backend's index in the route's group.
    pub backend: usize,
    /// Counts the request in flight to that backend until the answer is relayed.
    pub in_flight: InFlight<'v>,
    pub answer: Answer,
}

/// What the upstream answered.
// `Head` is the common case: boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// A response head; its body is still to be relayed.
    Head(ResponseHead),
    /// Answered while the request body was still streaming, and already relayed both ways.
    Duplexed(Duplexed),
}

/// Sends the request to backends of `route` until one answers or the failures' verdicts say
/// stop. The last backend tried is noted in `rec` for the log.
pub async fn exchange<'v>(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    route: &Route<'v>,
    ctx: &WorkerCtx,
    rec: &mut AccessRecord<'v>,
) -> Result<Exchanged<'v>, Failure> {
    let settings = &route.group.settings;
    let max_backends = 1 + settings.pool.retries;
    let key = route.hash_key(req, conn.client.as_str());
    let (proxied_for, preface) = announcement(conn, route);
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
                    .then(|| {
                        let mut balancer = ctx.balancer(route.group_index);
                        let backends = route.backends();
                        group::pick(&mut balancer, backends, &settings.passive, &tried, key)
                    })
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
        let target = &*route.backends()[backend];
        rec.backend = Some(target);
        let in_flight = target.start_request(ctx.worker_id);
        let announce = (proxied_for, preface.as_deref());
        let whole = !matches!(body, RequestBody::Streaming { .. });
        let connection = upstream_connection(ctx, route, backend, (fresh_only, whole), announce);
        let failed = match connection.await {
            Ok(mut up) => match attempt(conn, req, body, &mut up, route, ctx, backend, rec).await {
                Ok(answer) => {
                    return Ok(Exchanged {
                        up,
                        backend,
                        in_flight,
                        answer,
                    })
                }
                Err(failed) => failed,
            },
            Err(failed) => failed,
        };
        if let Failure::Connect(ConnectError::NoDescriptor(_)) = failed.failure {
            // This proxy's failure: not the backend's 5xx, nor its access-log entry.
            rec.backend = None;
        }
        match failed.retry {
            Retry::Never => return Err(failed.failure),
            Retry::FreshConnection if !fresh_used => {
                tracing::debug!(backend = %target.url, reason = %failed.failure, "pooled connection was closed by the upstream; retrying on a fresh one");
                bump(&ctx.metrics.retries);
                fresh_for = Some(backend);
                fresh_used = true;
            }
            Retry::FreshConnection | Retry::AnotherBackend => {}
        }
        last_failure = Some(failed.failure);
    }
}

/// Behind `send_proxy_protocol`, a connection announces its client and carries only its
/// requests: whose they are (the connection's own port when the client is the connection's
/// address), and the header a new connection sends first (HAProxy's `send-proxy`), to the
/// address the client reached this proxy on; sent on the socket itself, before any TLS.
fn announcement(conn: &ClientConn, route: &Route<'_>) -> (Option<SocketAddr>, Option<BytesMut>) {
    let Some(version) = route.group.settings.pool.send_proxy_protocol else {
        return (None, None);
    };
    let source = match conn.client.forwarded_entries {
        0 => conn.peer,
        _ => SocketAddr::new(conn.client.ip, 0),
    };
    let destination = local_address(conn.stream.socket_fd()).unwrap_or(source);
    let mut header = BytesMut::new();
    proxy_protocol::write_header(&mut header, proxy_version(version), source, destination);
    (Some(source), Some(header))
}

/// A connection to `backend`: the most recently idle clean one from the pool, or a new one
/// (always a new one when `fresh_only`). `whole_request`: the request goes in one write (no
/// streamed body), so a pooled connection's posted receive reads the answer.
async fn upstream_connection(
    ctx: &WorkerCtx,
    route: &Route<'_>,
    backend: usize,
    (fresh_only, whole_request): (bool, bool),
    (proxied_for, preface): (Option<SocketAddr>, Option<&[u8]>),
) -> Result<UpstreamConn, AttemptError> {
    let target = &route.backends()[backend];
    if !fresh_only {
        let pooled = ctx
            .pool()
            .checkout(target.id, proxied_for, whole_request, |state| {
                ctx.note_discarded(&target.url, state)
            });
        if let Some(up) = pooled {
            bump(&ctx.metrics.upstream_reused);
            return Ok(up);
        }
    }
    let timeout = route.timeouts.connect;
    let mut connected = connect(target.id, target.addr, target.tls(), preface, timeout).await;
    if let Err(ConnectError::NoDescriptor(_)) = connected {
        // The worker's share is full: an idle pooled connection gives its descriptor up.
        if ctx.pool().close_oldest() {
            connected = connect(target.id, target.addr, target.tls(), preface, timeout).await;
        }
    }
    match connected {
        Ok(mut up) => {
            bump(&ctx.metrics.upstream_opened);
            up.proxied_for = proxied_for;
            Ok(up)
        }
        Err(e) if !e.is_backend_failure() => {
            // Out of descriptors here: shed (503). No failure counted against the backend, its
            // half-open trial (if this was it) given back, no other backend tried.
            target.passive.release_trial();
            Err(AttemptError::never_local(Failure::Connect(e)))
        }
        Err(e) => {
            tracing::warn!(backend = %target.url, error = %e, worker = ctx.worker_id, "upstream connect failed");
            let stats = target.stats(ctx.worker_id);
            bump(&stats.connect_errors);
            if matches!(e, ConnectError::Timeout) {
                bump(&stats.timeouts);
            }
            let passive = &route.group.settings.passive;
            group::report_failure(route.backends(), backend, passive, ctx.worker_id);
            // Nothing reached the upstream: always safe to try another backend.
            Err(AttemptError {
                failure: Failure::Connect(e),
                retry: Retry::AnotherBackend,
                blame: false,
            })
        }
    }
}

/// Sends the request on `up` and reads the answer; a failure comes with its retry verdict.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    up: &mut UpstreamConn,
    route: &Route<'_>,
    ctx: &WorkerCtx,
    backend: usize,
    rec: &mut AccessRecord<'_>,
) -> Result<Answer, AttemptError> {
    let sent_at = Instant::now();
    let answered = match send_request(conn, req, body, up, route, backend).await {
        Ok(Sent::Whole(body_bytes)) => {
            rec.bytes_in += body_bytes;
            let deadline = Deadline::after(route.timeouts.request);
            // 1xx answers go on to HTTP/1.1 clients as they come (not to HTTP/1.0 ones).
            let mut interim = (req.version == Version::Http11).then_some(Interim {
                client: &mut conn.stream,
                out: &mut conn.out,
                timeout: route.timeouts.io,
                forwarded: false,
            });
            let head = read_response_head(up, req, deadline, interim.as_mut()).await;
            let interim_sent = interim.is_some_and(|i| i.forwarded);
            head.map(Answer::Head).map_err(|e| {
                let mut failed = head_failure(e, req, body, up.reused, route);
                if interim_sent {
                    // The client has heard from this upstream already: no other may answer.
                    failed.retry = Retry::Never;
                }
                failed
            })
        }
        Ok(Sent::AnsweredEarly(head)) => Ok(Answer::Head(*head)),
        Ok(Sent::Duplexed(done)) => Ok(Answer::Duplexed(done)),
        Err(failed) => Err(failed),
    };
    let (backends, passive, worker) = (
        route.backends(),
        &route.group.settings.passive,
        ctx.worker_id,
    );
    match &answered {
        Ok(answer) => {
            let (status, head_after) = match answer {
                Answer::Head(resp) => (resp.status, sent_at.elapsed()),
                Answer::Duplexed(done) => (done.status, done.head_after),
            };
            rec.upstream_time = Some(head_after);
            group::report_response(backends, backend, passive, status, worker);
        }
        Err(failed) => {
            if let Failure::UpstreamTimeout = failed.failure {
                bump(&backends[backend].stats(worker).timeouts);
            }
            if failed.blame {
                group::report_failure(backends, backend, passive, worker);
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
    route: &Route<'_>,
) -> AttemptError {
    match e {
        HeadError::ClosedBeforeAnswer => {
            let retry = Retry::unanswered(
                body.replayable(),
                reused,
                req.is_idempotent(),
                route.group.settings.pool.retry_non_idempotent,
            );
            let why = "upstream closed the connection without a response";
            AttemptError::closed(why, retry, reused)
        }
        // A timeout is never retried: the upstream may still be working on the request.
        HeadError::Failed(f) => AttemptError::never(f),
    }
}

/// What became of sending the request.
enum Sent {
    /// All of it went (with this many body bytes): the answer is to be read.
    Whole(u64),
    /// The upstream stopped taking the body and answered: that answer is relayed, and the
    /// connection (out of step) not reused.
    AnsweredEarly(Box<ResponseHead>),
    /// The upstream answered while the body was still streaming; relayed both ways already.
    Duplexed(Duplexed),
}

/// Sends the request (head and body) on `up`, a connection to the route's `backend`.
async fn send_request(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &mut RequestBody,
    up: &mut UpstreamConn,
    route: &Route<'_>,
    backend: usize,
) -> Result<Sent, AttemptError> {
    let config = route.config;
    let framing = body.framing(req);
    let from = ForwardedFor {
        client_ip: conn.client.as_str(),
        forwarded_entries: conn.client.forwarded_entries,
        scheme: conn.scheme,
        allow_underscores: config.limits.allow_underscores,
        client_cert: conn.tls.as_ref().and_then(|t| t.client_cert.as_ref()),
    };
    let target = &route.backends()[backend];
    let outgoing = Outgoing {
        target: &route.target,
        host: match &route.group.settings.host_header {
            HostHeader::Client => None,
            HostHeader::Backend => Some(target.authority.as_bytes()),
            HostHeader::Literal(host) => Some(host.as_bytes()),
        },
        edits: route.request_headers,
    };
    let out = &mut conn.upstream_out;
    out.clear();
    write_request_head(out, req, &outgoing, &from, framing, target.addr);
    match body {
        RequestBody::Empty | RequestBody::Buffered(_) => {
            let mut body_bytes = 0;
            if let RequestBody::Buffered(data) = body {
                out.extend_from_slice(data);
                body_bytes = data.len() as u64;
            }
            let written = write_buf_tracked(&mut up.stream, out, route.timeouts.io).await;
            written
                .map(|()| Sent::Whole(body_bytes))
                .map_err(|(fail, sent_any)| {
                    unsent_failure(fail, sent_any, req, body.replayable(), up.reused, route)
                })
        }
        RequestBody::Streaming { decoder, started } => {
            if req.expect_continue && !*started && conn.rbuf.is_empty() {
                conn.out.clear();
                conn.out.extend_from_slice(status::CONTINUE);
                write_buf(&mut conn.stream, &mut conn.out, route.timeouts.io)
                    .await
                    .map_err(|_| AttemptError::never(Failure::ClientGone))?;
            }
            *started = true;
            // Boxed: this state is several KiB (two transfers' worth of timers) and only
            // streamed uploads need it; inline, every connection's task would carry it.
            Box::pin(send_streaming_body(
                conn, req, decoder, up, route, backend, framing,
            ))
            .await
            .map_err(AttemptError::never)
        }
    }
}

/// The local address of a socket (the client connection's: where the client reached us).
fn local_address(fd: std::os::fd::RawFd) -> Option<SocketAddr> {
    // SAFETY: the descriptor belongs to the open client stream for the whole call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed)
        .local_addr()
        .ok()?
        .as_socket()
}

/// The verdict on a request (head and buffered body) whose write failed: nothing of it left
/// (safe to repeat anywhere), or some of it did (as for a request the upstream may have read).
fn unsent_failure(
    fail: IoFail,
    sent_any: bool,
    req: &RequestHead,
    replayable: bool,
    reused: bool,
    route: &Route<'_>,
) -> AttemptError {
    if let IoFail::Timeout = fail {
        return AttemptError::never(Failure::Upstream("timed out sending the request"));
    }
    let retry = if sent_any {
        let opt_in = route.group.settings.pool.retry_non_idempotent;
        Retry::unanswered(replayable, reused, req.is_idempotent(), opt_in)
    } else {
        Retry::unsent(replayable, reused)
    };
    let why = "upstream closed the connection before taking the request";
    AttemptError::closed(why, retry, reused)
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
    route: &Route<'_>,
    backend: usize,
    framing: OutFraming,
) -> Result<Sent, Failure> {
    let io_timeout = route.timeouts.io;
    let sent_at = Instant::now();
    // The client's stream, for a second handle to answer on while the body still streams.
    let client_second = conn.stream.second_source();
    let policy = ResponsePolicy {
        hsts: https::hsts(conn, route.config),
        edits: route.response_headers,
    };
    let watcher = Watcher::new(&up.stream);
    let source = Source {
        stream: &mut conn.stream,
        buf: &mut conn.rbuf,
        decoder,
        trailers: TrailerPolicy::of_request(req, route.config.limits.allow_underscores),
    };
    let mut sink = Sink::new(&mut up.stream, &mut conn.upstream_out, framing);
    let max = route.max_body_bytes;
    let mut transfer = Box::pin(transfer_body(source, &mut sink, io_timeout, max));
    match send_body_watching(transfer.as_mut(), &watcher, &mut up.rbuf, req).await {
        BodySent::Finished(Ok(moved)) => Ok(Sent::Whole(moved)),
        BodySent::Finished(Err(e @ TransferError::Destination(IoFail::Io(_)))) => {
            drop(transfer);
            // The upstream stopped taking the body: it may have answered, then closed.
            let grace = Deadline::after(EARLY_ANSWER_GRACE);
            match read_response_head(up, req, grace, None).await {
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
        BodySent::AnsweredEarly(mut head) => {
            let head_after = sent_at.elapsed();
            let reader = watcher.into_stream();
            let writer = client_second.open();
            let (Some(reader), Ok(writer)) = (reader, writer) else {
                // No descriptors to go both ways at once: the answer is relayed alone and the
                // rest of the body is not sent (the connection is then out of step).
                drop(transfer);
                head.reusable = false;
                return Ok(Sent::AnsweredEarly(head));
            };
            let ends = (reader, writer);
            let answer = EarlyAnswer {
                req,
                resp: &head,
                redirects: Redirects::for_request(route, backend, req, conn.scheme),
                policy,
            };
            let relayed = relay_duplex(
                transfer.as_mut(),
                ends,
                &mut conn.out,
                &mut up.rbuf,
                answer,
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
