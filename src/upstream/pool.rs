//! Per-worker keep-alive connections to backends. Owned by one worker, so plain data: no lock.
//! Connections are reused most-recently-idle first (keeps the hot set small and warm) and
//! closed after `idle_timeout`, or when more than `max_idle_per_backend` wait.

use super::BackendSet;
use crate::config::PoolSettings;
use crate::fd_budget::{self, FdOp};
use bytes::BytesMut;
use monoio::net::TcpStream;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read buffer of a fresh upstream connection; it grows for large heads and bodies.
const UPSTREAM_READ_BUF: usize = 16 * 1024;
/// A connection idle longer than this is checked for a close by the upstream before reuse;
/// a fresher one is trusted (and the request retried if it proves stale).
const PEEK_AFTER_IDLE: Duration = Duration::from_secs(2);

pub struct UpstreamConn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
    pub backend: usize,
    /// Taken from the pool rather than freshly connected.
    pub reused: bool,
    /// Config generation whose backend numbering `backend` refers to.
    pub generation: u64,
}

struct IdleConn {
    conn: UpstreamConn,
    since: Instant,
}

pub struct UpstreamPool {
    idle: Vec<VecDeque<IdleConn>>,
    settings: PoolSettings,
    generation: u64,
}

impl UpstreamPool {
    pub fn new(settings: PoolSettings, backends: usize, generation: u64) -> Self {
        UpstreamPool {
            idle: (0..backends).map(|_| VecDeque::new()).collect(),
            settings,
            generation,
        }
    }

    /// After a reload: idle connections to backends still present move to their new index;
    /// those to removed backends are closed.
    pub fn rebuild(
        &mut self,
        old: &BackendSet,
        new: &BackendSet,
        settings: PoolSettings,
        generation: u64,
    ) {
        let mut idle: Vec<VecDeque<IdleConn>> = (0..new.len()).map(|_| VecDeque::new()).collect();
        for (old_index, queue) in self.idle.drain(..).enumerate() {
            let Some(old_backend) = old.get(old_index) else {
                continue;
            };
            if let Some(new_index) = new.iter().position(|b| Arc::ptr_eq(b, old_backend)) {
                idle[new_index] = queue
                    .into_iter()
                    .map(|mut c| {
                        c.conn.backend = new_index;
                        c.conn.generation = generation;
                        c
                    })
                    .collect();
            }
        }
        self.idle = idle;
        self.settings = settings;
        self.generation = generation;
    }

    /// Closes every idle connection (shutdown).
    pub fn clear(&mut self) {
        self.idle.iter_mut().for_each(VecDeque::clear);
    }

    /// The most recently idle live connection to `backend`, if any.
    pub fn checkout(&mut self, backend: usize) -> Option<UpstreamConn> {
        let queue = self.idle.get_mut(backend)?;
        while let Some(IdleConn { mut conn, since }) = queue.pop_back() {
            let idle_for = since.elapsed();
            if idle_for >= self.settings.idle_timeout {
                // Everything older is expired too.
                queue.clear();
                return None;
            }
            if idle_for < PEEK_AFTER_IDLE || still_open(&conn.stream) {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub fn checkin(&mut self, conn: UpstreamConn) {
        let max = self.settings.max_idle_per_backend;
        let Some(queue) = self.idle.get_mut(conn.backend) else {
            return;
        };
        if max == 0 || !conn.rbuf.is_empty() || conn.generation != self.generation {
            return;
        }
        if queue.len() >= max {
            queue.pop_front();
        }
        queue.push_back(IdleConn {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle longer than the timeout; run periodically by the worker.
    pub fn sweep(&mut self) {
        let timeout = self.settings.idle_timeout;
        for queue in &mut self.idle {
            while queue.front().is_some_and(|c| c.since.elapsed() >= timeout) {
                queue.pop_front();
            }
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(VecDeque::len).sum()
    }
}

/// An idle keep-alive connection must have nothing to read: EOF or stray bytes mean it is
/// unusable. One non-blocking peek, done only for connections idle a while.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: valid fd owned by `stream`, one-byte buffer on the stack.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

#[derive(Debug)]
pub enum ConnectError {
    Failed(std::io::Error),
    Timeout,
    /// No descriptor for the socket (EMFILE/ENFILE): this process is short, the backend is not
    /// at fault and another backend would fare no better.
    NoDescriptor(std::io::Error),
}

impl ConnectError {
    /// Whether the failure tells something about the backend: only those count for passive
    /// health and the backend's connect-error counters, and only those move on to another one.
    pub fn is_backend_failure(&self) -> bool {
        !matches!(self, ConnectError::NoDescriptor(_))
    }

    /// The client's status: 504 for a timeout, 503 (with `Retry-After`) when the proxy itself is
    /// out of descriptors, as for any overload it sheds; 502 when the backend could not be reached.
    pub fn status(&self) -> u16 {
        match self {
            ConnectError::Timeout => 504,
            ConnectError::NoDescriptor(_) => 503,
            ConnectError::Failed(_) => 502,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect to upstream timed out"),
            ConnectError::Failed(e) => write!(f, "connect to upstream failed: {e}"),
            ConnectError::NoDescriptor(e) => {
                write!(f, "no descriptor for an upstream connection: {e}")
            }
        }
    }
}

/// Opens a new connection to a backend within `timeout`.
pub async fn connect(
    backend: usize,
    addr: SocketAddr,
    timeout: Duration,
    generation: u64,
) -> Result<UpstreamConn, ConnectError> {
    let connecting = monoio::time::timeout(timeout, TcpStream::connect_addr(addr));
    let stream = match connecting.await.map(|r| fd_budget::note(FdOp::Connect, r)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if fd_budget::is_exhaustion(&e) => return Err(ConnectError::NoDescriptor(e)),
        Ok(Err(e)) => return Err(ConnectError::Failed(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    // Heads and small bodies go out in one write; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    Ok(UpstreamConn {
        stream,
        rbuf: BytesMut::with_capacity(UPSTREAM_READ_BUF),
        backend,
        reused: false,
        generation,
    })
}
