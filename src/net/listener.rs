//! The client-facing listening sockets: one `SO_REUSEPORT` socket per worker, so the kernel
//! spreads connections across cores with no shared accept queue.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

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
    // Accepted sockets inherit it on Linux (see `accepted_sockets_have_nodelay`), which saves
    // a setsockopt per connection.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Whether a socket accepted from a listener with `TCP_NODELAY` has it too, so a connection
/// needs no setsockopt of its own. Linux copies the listener's flag into the accepted socket,
/// but the issue of kernels that do not is settled by asking this one, once per process: a
/// loopback listener, one connection, and a look at the accepted socket. Any failure of the
/// probe answers no (each connection then sets the flag itself, as before).
pub fn accepted_sockets_have_nodelay() -> bool {
    static INHERITED: OnceLock<bool> = OnceLock::new();
    *INHERITED.get_or_init(|| probe_nodelay_inheritance().unwrap_or(false))
}

/// `TCP_NODELAY` on a newly accepted client socket, unless it came with it from the listener.
pub fn ensure_nodelay(socket: &monoio::net::TcpStream) {
    if !accepted_sockets_have_nodelay() {
        let _ = socket.set_nodelay(true);
    }
}

fn probe_nodelay_inheritance() -> io::Result<bool> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Socket::from(listener.try_clone()?).set_nodelay(true)?;
    let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (accepted, _) = listener.accept()?;
    accepted.nodelay()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection setsockopt is skipped only when a socket accepted from a worker's
    /// listener really has `TCP_NODELAY`: if the listener stopped setting it, or the probe
    /// answered yes where the kernel does not copy it, this fails.
    #[test]
    fn sockets_accepted_from_a_worker_listener_have_nodelay_when_the_probe_says_so() {
        let listener = bind_worker_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.nodelay().unwrap(), accepted_sockets_have_nodelay());
        // Linux copies the flag (inet_csk_clone_lock copies the listener's tcp_sock).
        assert!(accepted_sockets_have_nodelay());
    }
}
