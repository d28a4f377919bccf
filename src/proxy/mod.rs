//! The proxy: one client connection, request after request. The phases of a request are named
//! functions: `read_request` -> `forward` (pick backend, send request, read response head,
//! stream response) -> `access_log`. Errors before a response starts get a status; after, a reset.

mod access_log;
mod context;
mod forward;
pub mod io;
pub mod transfer;
mod wire;

pub use context::{View, WorkerCtx};

use crate::http::{parse_request, status, RequestError, RequestHead};
use bytes::BytesMut;
use io::{read_more_or_give_up, read_more_until, wait_readable, write_buf, IoFail};
use monoio::net::TcpStream;
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Client read buffer to start with (nginx's `client_header_buffer_size` is 1k): most request
/// heads fit; larger ones grow it. Kept small because every new connection allocates one.
const CLIENT_READ_BUF: usize = 2 * 1024;
/// Keep-alive silence after which a connection gives its buffers back while it waits.
const IDLE_PARK_AFTER: Duration = Duration::from_millis(500);
/// Buffers grown past this (large heads or bodies) are released before the next request.
const KEEP_BUF_MAX: usize = 64 * 1024;

/// One client connection's state that outlives a request.
pub struct ClientConn {
    pub stream: TcpStream,
    /// Bytes read from the client not yet consumed (pipelined requests wait here).
    pub rbuf: BytesMut,
    /// Pending output to the client (heads, small bodies, chunk framing), reused.
    pub out: BytesMut,
    /// Pending output to the upstream, reused.
    pub upstream_out: BytesMut,
    pub peer: SocketAddr,
    pub peer_ip: String,
}

enum ReadError {
    /// Closed, or idle past the keep-alive timeout, between requests: close quietly.
    Closed,
    /// The head did not arrive in time: 408.
    Timeout,
    Invalid(RequestError),
}

/// Serves one accepted client connection until it closes or must be closed.
pub async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: Rc<WorkerCtx>) {
    let _ = stream.set_nodelay(true);
    let handle = ctx.register(stream.as_raw_fd());
    let mut conn = ClientConn {
        stream,
        rbuf: BytesMut::with_capacity(CLIENT_READ_BUF),
        out: BytesMut::new(),
        upstream_out: BytesMut::new(),
        peer,
        peer_ip: peer.ip().to_string(),
    };
    let mut first = true;
    loop {
        let request = match read_request(&mut conn, &ctx, &handle.idle, first).await {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Timeout) => {
                tracing::info!(client = %conn.peer, worker = ctx.worker_id, "request head timed out (408)");
                respond_error(&mut conn, &ctx, 408).await;
                return;
            }
            Err(ReadError::Invalid(e)) => {
                tracing::info!(client = %conn.peer, worker = ctx.worker_id, status = e.status(), reason = e.reason(), "bad request");
                respond_error(&mut conn, &ctx, e.status()).await;
                return;
            }
        };
        first = false;
        let (head, started) = request;
        // Boxed: the request's state lives on the heap only while a request is in flight, so an
        // idle connection's task stays small.
        let keep = Box::pin(forward::handle(&mut conn, head, started, &ctx)).await;
        if !keep || ctx.shared.is_draining() {
            return;
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
/// within the client header timeout, however slowly it trickles. `idle` is set while nothing of
/// the next request has arrived, so shutdown may close the connection.
async fn read_request(
    conn: &mut ClientConn,
    ctx: &WorkerCtx,
    idle: &Cell<bool>,
    first: bool,
) -> Result<(RequestHead, Instant), ReadError> {
    let view = ctx.view();
    let timeouts = &view.config.timeouts;
    if !first && conn.rbuf.is_empty() {
        idle.set(true);
        if ctx.shared.is_draining() {
            return Err(ReadError::Closed);
        }
        wait_for_next_request(conn, timeouts.idle).await?;
    }
    idle.set(false);
    let started = Instant::now();
    let deadline = started + timeouts.client_header;
    // Whether any byte of this request has arrived: decides 408 versus a quiet close on timeout
    // (the read buffer itself is gone after a timed-out read).
    let mut arrived = !conn.rbuf.is_empty();
    loop {
        if !conn.rbuf.is_empty() {
            if let Some(head) =
                parse_request(&mut conn.rbuf, &view.config.limits).map_err(ReadError::Invalid)?
            {
                return Ok((head, started));
            }
        }
        let read = read_more_until(&mut conn.stream, &mut conn.rbuf, CLIENT_READ_BUF, deadline);
        match read.await {
            Ok(0) | Err(IoFail::Io(_)) => return Err(ReadError::Closed),
            Ok(_) => arrived = true,
            Err(IoFail::Timeout) if arrived => return Err(ReadError::Timeout),
            // Nothing sent at all: close quietly, as nginx does for an idle connection.
            Err(IoFail::Timeout) => return Err(ReadError::Closed),
        }
    }
}

/// Between requests on a kept-alive connection: waits for the next request's first bytes, up to
/// the idle timeout. After `IDLE_PARK_AFTER` of silence the connection releases its buffers and
/// waits for readability alone, so a parked keep-alive connection holds almost no memory (as
/// nginx frees its buffers); a busy one keeps its read posted and pays nothing extra.
async fn wait_for_next_request(
    conn: &mut ClientConn,
    idle_timeout: Duration,
) -> Result<(), ReadError> {
    let parks_at = IDLE_PARK_AFTER.min(idle_timeout);
    match read_more_or_give_up(&mut conn.stream, &mut conn.rbuf, CLIENT_READ_BUF, parks_at).await {
        Ok(Some(0)) | Err(_) => return Err(ReadError::Closed),
        Ok(Some(_)) => return Ok(()),
        Ok(None) if parks_at >= idle_timeout => return Err(ReadError::Closed),
        Ok(None) => {}
    }
    conn.rbuf = BytesMut::new();
    conn.out = BytesMut::new();
    conn.upstream_out = BytesMut::new();
    match wait_readable(&conn.stream, idle_timeout - parks_at).await {
        Ok(()) => Ok(()),
        Err(_) => Err(ReadError::Closed),
    }
}

/// Sends a proxy-made error response that ends the connection.
async fn respond_error(conn: &mut ClientConn, ctx: &WorkerCtx, status: u16) {
    conn.out.clear();
    status::write_error(&mut conn.out, status, false);
    let _ = write_buf(&mut conn.stream, &mut conn.out, io_timeout(ctx)).await;
}

fn io_timeout(ctx: &WorkerCtx) -> Duration {
    ctx.view().config.timeouts.io
}
