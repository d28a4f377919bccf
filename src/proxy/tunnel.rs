//! Switched protocols (WebSocket and other `Upgrade`s). Once the upstream answers 101, HTTP is
//! over on this pair of connections: the proxy moves bytes both ways as they come, passes a
//! half-close on, and ends the tunnel when both sides have closed, either fails, or nothing has
//! moved either way for `idle` (HAProxy's tunnel mode; nginx needs the `Upgrade` recipe in its
//! config for the same).

use super::forwarding::write_switching_head;
use super::ClientConn;
use crate::http::ResponseHead;
use crate::net::io::{read_more_or_give_up, write_buf, HalfClose, ReadyStream, SecondStream};
use crate::net::stream::{ClientStream, SecondHandle, SecondSource, UpstreamStream};
use crate::net::tls::TlsHalf;
use crate::upstream::UpstreamConn;
use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, CancelableAsyncReadRent};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Read size of each direction.
const TUNNEL_READ: usize = 16 * 1024;

/// Bytes moved each way, for the access log and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Why a switch could not go through.
pub enum SwitchError {
    /// No second descriptors for the tunnel (nothing was sent to the client yet).
    NoDescriptor,
    /// The client could not be sent the 101.
    ClientGone,
}

/// Sends the 101 head (and anything the upstream sent after it) to the client, then tunnels.
/// The tunnel's second descriptors are taken first, so that a worker out of descriptors can
/// still answer 503 instead of a 101 it cannot keep.
pub async fn switch_protocols(
    conn: &mut ClientConn,
    mut up: UpstreamConn,
    resp: &ResponseHead,
    idle: Duration,
) -> Result<Moved, SwitchError> {
    let (mut client_dup, mut upstream_dup) = second_streams(&conn.stream, &up.stream)?;
    conn.out.clear();
    write_switching_head(&mut conn.out, resp);
    let mut moved = Moved {
        to_client: up.rbuf.len() as u64,
        ..Moved::default()
    };
    conn.out.extend_from_slice(&up.rbuf);
    up.rbuf.clear();
    write_buf(&mut conn.stream, &mut conn.out, idle)
        .await
        .map_err(|_| SwitchError::ClientGone)?;
    // Bytes the client sent right behind its request belong to the new protocol.
    moved.to_upstream = conn.rbuf.len() as u64;
    if write_buf(&mut up.stream, &mut conn.rbuf, idle)
        .await
        .is_err()
    {
        return Ok(moved);
    }
    // Each direction reads one socket and writes the other; the second handles take the
    // direction from upstream to client, plain sockets or TLS halves.
    let (client, upstream) = (&mut conn.stream, &mut up.stream);
    let (tunneled, ended) = match (&mut client_dup, &mut upstream_dup) {
        (Second::Plain(c), Second::Plain(u)) => {
            tunnel(client, upstream, &mut u.stream, &mut c.stream, idle).await
        }
        (Second::Plain(c), Second::Tls(u)) => {
            tunnel(client, upstream, u, &mut c.stream, idle).await
        }
        (Second::Tls(c), Second::Plain(u)) => {
            tunnel(client, upstream, &mut u.stream, c, idle).await
        }
        (Second::Tls(c), Second::Tls(u)) => tunnel(client, upstream, u, c, idle).await,
    };
    tracing::debug!(client = %conn.peer, ?ended, ?tunneled, "tunnel closed");
    moved.to_upstream += tunneled.to_upstream;
    moved.to_client += tunneled.to_client;
    Ok(moved)
}

/// A second handle on one end of the tunnel: a second descriptor of a plain socket (used with
/// io_uring reads and writes like the first: nothing splices in a tunnel), or a TLS half
/// sharing the stream's session.
enum Second {
    Plain(SecondStream),
    Tls(TlsHalf),
}

/// A second handle on a stream, as the tunnel uses it.
fn open_second(source: SecondSource) -> std::io::Result<Second> {
    Ok(match source.open()? {
        SecondHandle::Plain(ReadyStream(s)) => Second::Plain(s),
        SecondHandle::Tls(half) => Second::Tls(half),
    })
}

/// Second handles on both streams: each direction of the tunnel reads one socket and writes
/// the other, and they run at once without sharing a stream.
fn second_streams(
    client: &ClientStream,
    upstream: &UpstreamStream,
) -> Result<(Second, Second), SwitchError> {
    match (
        open_second(client.second_source()),
        open_second(upstream.second_source()),
    ) {
        (Ok(c), Ok(u)) => Ok((c, u)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot set up a tunnel: no descriptor for it");
            Err(SwitchError::NoDescriptor)
        }
    }
}

/// How one direction of a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Its source closed; the close was passed on as a half-close.
    Closed,
    /// Nothing moved either way for the idle time.
    Idle,
    Failed,
}

/// Moves bytes both ways until the tunnel ends: client to upstream on the streams themselves,
/// upstream to client on their second handles.
async fn tunnel<R, W>(
    client: &mut ClientStream,
    upstream: &mut UpstreamStream,
    upstream_second: &mut R,
    client_second: &mut W,
    idle: Duration,
) -> (Moved, Ended)
where
    R: CancelableAsyncReadRent,
    W: AsyncWriteRent + HalfClose,
{
    let last_moved = Cell::new(Instant::now());
    let (to_upstream, to_client) = (Cell::new(0), Cell::new(0));
    let mut up = std::pin::pin!(pump(client, upstream, idle, &last_moved, &to_upstream));
    let mut down = std::pin::pin!(pump(
        upstream_second,
        client_second,
        idle,
        &last_moved,
        &to_client
    ));
    let ended = monoio::select! {
        first = &mut up => match first {
            Ended::Closed => down.await,
            other => other,
        },
        first = &mut down => match first {
            Ended::Closed => up.await,
            other => other,
        },
    };
    let moved = Moved {
        to_upstream: to_upstream.get(),
        to_client: to_client.get(),
    };
    (moved, ended)
}

/// One direction: read from `from`, write to `to`, until `from` closes (then half-close `to`),
/// either fails, or the whole tunnel has been quiet for `idle`.
async fn pump<R: CancelableAsyncReadRent, W: AsyncWriteRent + HalfClose>(
    from: &mut R,
    to: &mut W,
    idle: Duration,
    last_moved: &Cell<Instant>,
    moved: &Cell<u64>,
) -> Ended {
    let mut buf = BytesMut::with_capacity(TUNNEL_READ);
    loop {
        // A read that times out is collected, not dropped: the tunnel may go on, and bytes that
        // raced the timeout must not be lost.
        match read_more_or_give_up(from, &mut buf, TUNNEL_READ, idle).await {
            Ok(Some(0)) => {
                to.half_close();
                return Ended::Closed;
            }
            Ok(Some(n)) => {
                if write_buf(to, &mut buf, idle).await.is_err() {
                    return Ended::Failed;
                }
                moved.set(moved.get() + n as u64);
                last_moved.set(Instant::now());
            }
            Ok(None) if last_moved.get().elapsed() < idle => {}
            Ok(None) => return Ended::Idle,
            Err(_) => return Ended::Failed,
        }
    }
}
