//! Switched protocols (WebSocket and other `Upgrade`s). Once the upstream answers 101, HTTP is
//! over on this pair of connections: the proxy moves bytes both ways as they come, passes a
//! half-close on, and ends the tunnel when both sides have closed, either fails, or nothing has
//! moved either way for `idle` (HAProxy's tunnel mode; nginx needs the `Upgrade` recipe in its
//! config for the same).

use super::forwarding::write_switching_head;
use super::ClientConn;
use crate::http::ResponseHead;
use crate::net::io::{read_more_or_give_up, second_stream, write_buf, HalfClose, SecondStream};
use crate::net::stream::{ClientStream, UpstreamStream};
use crate::upstream::UpstreamConn;
use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, CancelableAsyncReadRent};
use monoio::net::TcpStream;
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
    let ends = Ends {
        client: &mut conn.stream,
        upstream: &mut up.stream,
        client_dup: &mut client_dup.stream,
        upstream_dup: &mut upstream_dup.stream,
    };
    let (tunneled, ended) = tunnel(ends, idle).await;
    tracing::debug!(client = %conn.peer, ?ended, ?tunneled, "tunnel closed");
    moved.to_upstream += tunneled.to_upstream;
    moved.to_client += tunneled.to_client;
    Ok(moved)
}

/// Second descriptors of both sockets: each direction of the tunnel reads one socket and
/// writes the other, and they run at once without sharing a stream.
fn second_streams(
    client: &ClientStream,
    upstream: &UpstreamStream,
) -> Result<(SecondStream, SecondStream), SwitchError> {
    let (Some(_), Some(_)) = (client.tcp(), upstream.tcp()) else {
        tracing::warn!("cannot set up a tunnel over a stream that is not plain TCP");
        return Err(SwitchError::NoDescriptor);
    };
    match (
        second_stream(client.socket_fd()),
        second_stream(upstream.socket_fd()),
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

/// The four ends of a tunnel: both streams and a second descriptor of each.
struct Ends<'a> {
    client: &'a mut ClientStream,
    upstream: &'a mut UpstreamStream,
    client_dup: &'a mut TcpStream,
    upstream_dup: &'a mut TcpStream,
}

/// Moves bytes both ways until the tunnel ends.
async fn tunnel(ends: Ends<'_>, idle: Duration) -> (Moved, Ended) {
    let last_moved = Cell::new(Instant::now());
    let (to_upstream, to_client) = (Cell::new(0), Cell::new(0));
    let mut up = std::pin::pin!(pump(
        ends.client,
        ends.upstream,
        idle,
        &last_moved,
        &to_upstream
    ));
    let mut down = std::pin::pin!(pump(
        ends.upstream_dup,
        ends.client_dup,
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
