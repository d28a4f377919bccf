//! The client-facing listening sockets: one `SO_REUSEPORT` socket per worker, so the kernel
//! spreads connections across cores with no shared accept queue.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Listen backlog per worker socket (nginx's default on Linux is 511; busy boxes raise somaxconn).
const BACKLOG: i32 = 4096;

/// Fails with `AddrInUse` if anything else listens on `addr`, including a process that uses
/// `SO_REUSEPORT` too: without this check the kernel would silently share our traffic with it.
pub fn ensure_address_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only tolerates TIME_WAIT leftovers; no SO_REUSEPORT, so any listener conflicts.
    probe.set_reuse_address(true)?;
    // bind alone detects the conflict; listening would open a window in which a connection
    // could land on this probe and be reset when it closes.
    probe.bind(&addr.into())
}

/// One worker's listening socket, and the scheme clients reach it with.
pub struct Listener {
    pub socket: std::net::TcpListener,
    pub scheme: super::stream::Scheme,
}

/// One worker's listening socket.
pub fn bind_worker_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
