//! One client connection, request after request: read a head (bounded by the header and
//! idle timeouts), hand it to `handle`, and between requests wait for the next one; a
//! connection quiet long enough leaves its task for the parking lot. Heads the parser refuses
//! are answered (400-505), logged and counted here.

use super::access_log::{self, AccessContext, AccessRecord};
use super::client_ip::{self, ClientIp, Unidentified};
use super::context::ParkedConn;
use super::context::Registration;
use super::handle::{handle, record_metrics, Next};
use super::linger::linger_close;
use super::{handshake, parking, ClientConn, ConnectionSlot, WorkerCtx};
use crate::http::{parse_request, status, RequestError, RequestHead};
use crate::metrics::bump;
use crate::net::deadline::Deadline;
use crate::net::io::{read_more_or_give_up, read_more_until, write_buf, IoFail};
use crate::net::listener;
use crate::net::stream::ClientStream;
use bytes::BytesMut;
use monoio::net::TcpStream;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Client read buffer to start with (nginx's `client_header_buffer_size` is 1k): most request
/// heads fit; larger ones grow it. Kept small because every new connection allocates one.
const CLIENT_READ_BUF: usize = 2 * 1024;
/// Keep-alive silence after which a connection ends its task and waits in the parking lot.
const IDLE_PARK_AFTER: Duration = Duration::from_millis(500);
/// Buffers grown past this (large heads or bodies) are released before the next request.
const KEEP_BUF_MAX: usize = 64 * 1024;

enum ReadError {
    /// Closed, or idle past the keep-alive timeout, between requests: close quietly.
    Closed,
    /// Quiet between requests for `IDLE_PARK_AFTER`, with `Duration` of idle timeout left.
    Park(Duration),
    /// The head did not arrive in time: 408. When its first byte came.
    Timeout(Instant),
    /// Refused by the parser; when its first byte came.
    Invalid(RequestError, Instant),
}

/// Serves a client connection in its own task: a newly accepted one (`resumed` false) or one
/// coming back from the parking lot readable. If it goes quiet between requests, the task ends
/// and the connection waits in the lot, holding almost no memory.
pub fn spawn_connection(
    ctx: Rc<WorkerCtx>,
    stream: ClientStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    resumed: bool,
) {
    monoio::spawn(async move {
        let mut slot = slot;
        // A new connection's client first: a PROXY header, the per-address cap.
        let peer = match (resumed, stream.tcp()) {
            (false, Some(tcp)) => match admit_connection(tcp, peer, &ctx, &mut slot).await {
                Some(client) => client,
                None => return,
            },
            _ => peer,
        };
        run_connection(ctx, stream, peer, slot, resumed).await;
    });
}

/// Serves a connection accepted on the TLS listener in its own task: the handshake first.
pub fn spawn_tls_connection(
    ctx: Rc<WorkerCtx>,
    tcp: monoio::net::TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
) {
    monoio::spawn(async move {
        let mut slot = slot;
        let Some(peer) = admit_connection(&tcp, peer, &ctx, &mut slot).await else {
            return;
        };
        if let Some(stream) = handshake::accept(&ctx, tcp, peer).await {
            run_connection(ctx, ClientStream::Tls(stream), peer, slot, false).await;
        }
    });
}

async fn run_connection(
    ctx: Rc<WorkerCtx>,
    stream: ClientStream,
    peer: SocketAddr,
    mut slot: ConnectionSlot,
    resumed: bool,
) {
    let served = serve_connection(stream, peer, &ctx, resumed, &mut slot).await;
    let Some((stream, idle_left)) = served else {
        return;
    };
    if ctx.shared.is_draining() {
        return;
    }
    // The socket waits in the lot, with its TLS session if it has one.
    let Ok((socket, tls)) = stream.into_parked() else {
        return;
    };
    let parked = ParkedConn { slot, tls };
    let parked = ctx
        .parking
        .borrow_mut()
        .park(socket, peer, parked, idle_left);
    if let Err(e) = parked {
        tracing::warn!(client = %peer, worker = ctx.worker_id, error = %e, "cannot park an idle connection; closing it");
    }
}

/// A new connection's client (see `client_ip`), counted against `max_connections_per_ip`;
/// `None`: closed (a PROXY header missing or broken, an untrusted peer where one is expected,
/// the address over its cap), and counted.
async fn admit_connection(
    tcp: &TcpStream,
    peer: SocketAddr,
    ctx: &WorkerCtx,
    slot: &mut ConnectionSlot,
) -> Option<SocketAddr> {
    let view = ctx.view();
    let config = &view.config;
    let client = client_ip::of_connection(tcp, peer, config).await;
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            let m = &ctx.metrics;
            let (counter, reason) = match e {
                Unidentified::Untrusted => {
                    (&m.proxy_protocol_untrusted, "peer not in trusted_proxies")
                }
                Unidentified::Header(h) => (&m.proxy_protocol_refused, h.reason()),
            };
            bump(counter);
            tracing::debug!(%peer, reason, worker = ctx.worker_id, "connection closed before its PROXY protocol header was accepted");
            return None;
        }
    };
    let Some(max) = config.limits.max_connections_per_ip else {
        return Some(client);
    };
    // A trusted proxy's own connection carries many clients (named by X-Forwarded-For):
    // not capped as one.
    if client == peer && config.trusted_proxies.contains(peer.ip()) {
        return Some(client);
    }
    match ctx.shared.connection_counts().acquire(client.ip(), max) {
        Ok(counted) => {
            slot.count_for_address(counted);
            Some(client)
        }
        Err(_) => {
            bump(&ctx.metrics.connections_refused_per_ip);
            tracing::debug!(client = %client.ip(), max, worker = ctx.worker_id, "max_connections_per_ip reached; closing");
            None
        }
    }
}

/// The parking lot's task: resumes parked connections that turn readable and closes those
/// idle past their timeout.
pub async fn run_parking_lot(ctx: Rc<WorkerCtx>) {
    let waker = match ctx.parking.borrow().waker() {
        Ok(waker) => waker,
        Err(e) => {
            tracing::error!(worker = ctx.worker_id, error = %e, "parking lot unavailable");
            return;
        }
    };
    let mut trim = parking::TrimPolicy::default();
    loop {
        let ready = monoio::time::timeout(parking::EXPIRY_CHECK, waker.readable(false)).await;
        if let Ok(Err(e)) = ready {
            tracing::warn!(worker = ctx.worker_id, error = %e, "parking lot wait failed");
            monoio::time::sleep(parking::EXPIRY_CHECK).await;
        }
        let woken = ctx.parking.borrow_mut().wake();
        for conn in woken {
            let ParkedConn { slot, tls } = conn.slot;
            let stream = ClientStream::unparked(conn.stream, tls);
            spawn_connection(ctx.clone(), stream, conn.peer, slot, true);
        }
        let now = Instant::now();
        let parked = {
            let mut lot = ctx.parking.borrow_mut();
            lot.expire(now);
            lot.len()
        };
        ctx.metrics
            .parked_connections
            .store(parked as i64, Ordering::Relaxed);
        trim.after_parking(parked, ctx.busy_connections(), now);
    }
}

/// Serves one client connection until it closes, must be closed, or goes quiet long enough
/// to be parked: then it returns the stream and how much of its idle timeout is left.
async fn serve_connection(
    stream: ClientStream,
    peer: SocketAddr,
    ctx: &WorkerCtx,
    resumed: bool,
    slot: &mut ConnectionSlot,
) -> Option<(ClientStream, Duration)> {
    if let (false, Some(socket)) = (resumed, stream.tcp()) {
        listener::ensure_nodelay(socket);
    }
    let registration = ctx.register(stream.socket_fd());
    let origin = ClientIp::new(peer.ip());
    let mut conn = ClientConn {
        tls: stream.tls().map(handshake::client_tls),
        scheme: stream.scheme(),
        stream,
        rbuf: BytesMut::with_capacity(CLIENT_READ_BUF),
        out: BytesMut::new(),
        upstream_out: BytesMut::new(),
        peer,
        origin,
        client: origin,
    };
    // A new or just resumed connection reads at once, bound by the client header timeout.
    let mut first = true;
    loop {
        let request = match read_request(&mut conn, ctx, &registration, first).await {
            Ok(r) => r,
            Err(ReadError::Closed) => return None,
            Err(ReadError::Park(idle_left)) => return Some((conn.stream, idle_left)),
            Err(ReadError::Timeout(started)) => {
                reject(&mut conn, ctx, 408, "request head timed out", started).await;
                return None;
            }
            Err(ReadError::Invalid(e, started)) => {
                if reject(&mut conn, ctx, e.status(), e.reason(), started).await {
                    linger_close(&mut conn, ctx, &registration).await;
                }
                return None;
            }
        };
        first = false;
        let (mut head, started) = request;
        if slot.serve_request(ctx.view().config.limits.max_requests_per_connection) {
            // The last this connection may carry (nginx's `keepalive_requests`): answered with
            // `Connection: close`.
            head.keep_alive = false;
        }
        match handle(&mut conn, head, started, ctx).await {
            Next::KeepAlive if !ctx.shared.is_draining() => {}
            Next::LingerClose => {
                linger_close(&mut conn, ctx, &registration).await;
                return None;
            }
            _ => return None,
        }
        if conn.rbuf.capacity() > KEEP_BUF_MAX && conn.rbuf.is_empty() {
            conn.rbuf = BytesMut::with_capacity(CLIENT_READ_BUF);
        }
        if conn.out.capacity() > KEEP_BUF_MAX {
            conn.out = BytesMut::new();
        }
    }
}

/// Reads the next request head. The first byte of a follow-up request may take up to the idle
/// timeout; from then on (or from accept, for the first request) the whole head must arrive
/// within the client header timeout, however slowly it trickles. The connection is marked idle
/// while nothing of the next request has arrived, so shutdown may close it.
async fn read_request(
    conn: &mut ClientConn,
    ctx: &WorkerCtx,
    registration: &Registration<'_>,
    first: bool,
) -> Result<(RequestHead, Instant), ReadError> {
    let view = ctx.view();
    let timeouts = &view.config.timeouts;
    if !first && conn.rbuf.is_empty() {
        registration.set_idle(true);
        if ctx.shared.is_draining() {
            return Err(ReadError::Closed);
        }
        wait_for_next_request(conn, timeouts.idle).await?;
        registration.set_idle(false);
    }
    let started = Instant::now();
    let deadline = Deadline::after(timeouts.client_header);
    // Whether any byte of this request has arrived: decides 408 versus a quiet close on timeout
    // (the read buffer itself is gone after a timed-out read).
    let mut arrived = !conn.rbuf.is_empty();
    loop {
        if !conn.rbuf.is_empty() {
            let parsed = parse_request(&mut conn.rbuf, &view.config.limits.head);
            if let Some(head) = parsed.map_err(|e| ReadError::Invalid(e, started))? {
                return Ok((head, started));
            }
        }
        if arrived {
            // Part of the head is in: a read that times out must keep it, for the log line.
            let left = deadline.left();
            let read =
                read_more_or_give_up(&mut conn.stream, &mut conn.rbuf, CLIENT_READ_BUF, left);
            match read.await {
                Ok(Some(0)) | Err(_) => return Err(ReadError::Closed),
                Ok(Some(_)) => {}
                Ok(None) => return Err(ReadError::Timeout(started)),
            }
            continue;
        }
        let read = read_more_until(&mut conn.stream, &mut conn.rbuf, CLIENT_READ_BUF, deadline);
        match read.await {
            Ok(0) | Err(IoFail::Io(_)) => return Err(ReadError::Closed),
            Ok(_) => arrived = true,
            // Nothing sent at all: close quietly, as nginx does for an idle connection.
            Err(IoFail::Timeout) => return Err(ReadError::Closed),
        }
    }
}

/// Between requests on a kept-alive connection: waits for the next request's first bytes, up to
/// the idle timeout. A busy connection keeps its read posted and pays nothing extra; after
/// `IDLE_PARK_AFTER` of silence it is to be parked (`ReadError::Park`), as nginx frees all but
/// its connection struct between requests.
async fn wait_for_next_request(
    conn: &mut ClientConn,
    idle_timeout: Duration,
) -> Result<(), ReadError> {
    let parks_at = IDLE_PARK_AFTER.min(idle_timeout);
    match read_more_or_give_up(&mut conn.stream, &mut conn.rbuf, CLIENT_READ_BUF, parks_at).await {
        Ok(Some(0)) | Err(_) => Err(ReadError::Closed),
        Ok(Some(_)) => Ok(()),
        Ok(None) if parks_at >= idle_timeout => Err(ReadError::Closed),
        Ok(None) => Err(ReadError::Park(idle_timeout - parks_at)),
    }
}

/// Answers a request head the proxy refused (or that never completed) with `status`, which
/// ends the connection, and logs and counts it like any request (nginx logs them too): the
/// access line has the reason and what arrived of the request line. Returns whether the
/// answer was sent.
async fn reject(
    conn: &mut ClientConn,
    ctx: &WorkerCtx,
    status: u16,
    reason: &'static str,
    started: Instant,
) -> bool {
    conn.out.clear();
    status::write_error(&mut conn.out, status, false);
    let bytes_out = conn.out.len() as u64;
    let sent = write_buf(&mut conn.stream, &mut conn.out, io_timeout(ctx))
        .await
        .is_ok();
    let view = ctx.view();
    let rec = AccessRecord {
        status,
        answered: sent,
        bytes_in: conn.rbuf.len() as u64,
        bytes_out,
        reason: Some(reason),
        ..AccessRecord::default()
    };
    let total = started.elapsed();
    record_metrics(ctx, &rec, total);
    if view.config.logging.access_log {
        let (method, target) = access_log::request_line_parts(&conn.rbuf);
        let access = AccessContext {
            client: conn.origin.as_str(),
            method,
            path: target,
            backend_url: None,
            worker: ctx.worker_id,
            total,
            tls: conn.tls.as_ref().map(|t| &t.info),
        };
        access_log::emit(&access, &rec);
    }
    sent
}

fn io_timeout(ctx: &WorkerCtx) -> Duration {
    ctx.view().config.timeouts.io
}
