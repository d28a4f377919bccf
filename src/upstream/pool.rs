//! Per-worker keep-alive connections to backends. Owned by one worker, so plain data: no lock.
//! Connections are reused most-recently-idle first (keeps the hot set small and warm) and
//! closed after `idle_timeout`, or when more than `max_idle_per_backend` wait (both per group).

use super::Upstreams;
use crate::config::tls::UpstreamTls;
use crate::net::deadline::{self, Deadline};
use crate::net::fd_budget::{self, FdOp, Lease};
use crate::net::io::{read_more_until, IdleState, IoFail};
use crate::net::posted_read::PostedRead;
use crate::net::stream::UpstreamStream;
use crate::net::tls::{HandshakeError, TlsStream};
use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read buffer of a fresh upstream connection; it grows for large heads and bodies.
const UPSTREAM_READ_BUF: usize = 16 * 1024;

pub struct UpstreamConn {
    pub stream: UpstreamStream,
    /// Its descriptor on the worker's budget.
    _descriptor: Lease,
    pub rbuf: BytesMut,
    /// The backend's identity (`Backend::id`), never its position in a list: a reload may
    /// renumber backends while requests of the old configuration are still in flight.
    pub backend_id: u64,
    /// Taken from the pool rather than freshly connected.
    pub reused: bool,
    /// The client a PROXY protocol header announced on it (`send_proxy_protocol`): it carries
    /// that client's requests only.
    pub proxied_for: Option<SocketAddr>,
    /// The receive posted when it went idle (plain connections), holding `rbuf`: while it is
    /// here, `read_more_until` is the only way to read.
    posted: Option<PostedRead>,
}

impl UpstreamConn {
    /// Reads more of the answer into `rbuf`, until `deadline`: the receive posted while the
    /// connection idled, if it has one (its first read after check-out), else a new one. `Ok(0)`
    /// is EOF.
    pub async fn read_more_until(
        &mut self,
        reserve: usize,
        deadline: Deadline,
    ) -> Result<usize, IoFail> {
        match self.posted.take() {
            Some(posted) => posted.finish(&mut self.rbuf, deadline).await,
            None => read_more_until(&mut self.stream, &mut self.rbuf, reserve, deadline).await,
        }
    }

    /// Whether nothing arrived while it idled, and it is ready for a request: the posted
    /// receive looked at (no syscall), kept when `keep_posted`; else the socket peeked.
    fn ready(mut self, keep_posted: bool) -> Result<UpstreamConn, IdleState> {
        let posted = self.posted.take().map(PostedRead::check).transpose()?;
        match posted {
            Some(posted) if keep_posted => self.posted = Some(posted),
            Some(posted) => {
                // Something else reads first (a streamed body's watcher): the receive is
                // cancelled (the kernel takes the cancel before any byte of the request), then
                // the socket is looked at directly, as if none had been posted.
                drop(posted);
                self.rbuf = BytesMut::with_capacity(UPSTREAM_READ_BUF);
                clean(self.stream.idle_state())?;
            }
            None => clean(self.stream.idle_state())?,
        }
        self.reused = true;
        Ok(self)
    }
}

fn clean(state: IdleState) -> Result<(), IdleState> {
    match state {
        IdleState::Clean => Ok(()),
        dirty => Err(dirty),
    }
}

struct IdleConn {
    conn: UpstreamConn,
    /// When it went idle, on the worker's coarse clock (`deadline::coarse_now`, 10 ms ticks):
    /// idle timeouts are seconds, and no clock is read per request.
    since: u64,
}

/// Backend ids are small sequential numbers: they hash to themselves.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdMap<T> = HashMap<u64, T, BuildHasherDefault<IdHasher>>;

/// How many idle connections a backend keeps, and how long (its group's `[upstream]` keys).
#[derive(Clone, Copy)]
struct Keep {
    max_idle: usize,
    idle_timeout: Duration,
}

pub struct UpstreamPool {
    idle: IdMap<VecDeque<IdleConn>>,
    /// The backends of the configuration in force, with their limits: a connection to another
    /// one (a request of the previous configuration finishing after a reload) is not taken back.
    current: IdMap<Keep>,
}

impl UpstreamPool {
    pub fn new(upstreams: &Upstreams) -> Self {
        let mut pool = UpstreamPool {
            idle: HashMap::default(),
            current: HashMap::default(),
        };
        pool.rebuild(upstreams);
        pool
    }

    /// After a reload: idle connections to backends still present stay (they are keyed by
    /// identity); those to removed backends are closed.
    pub fn rebuild(&mut self, upstreams: &Upstreams) {
        self.current = upstreams
            .backends()
            .map(|(group, b)| {
                let settings = &group.settings.pool;
                let keep = Keep {
                    max_idle: settings.max_idle_per_backend,
                    idle_timeout: settings.idle_timeout,
                };
                (b.id, keep)
            })
            .collect();
        let current = &self.current;
        self.idle.retain(|id, _| current.contains_key(id));
    }

    /// Closes the connection idle the longest, to give its descriptor to new work; false when
    /// none idles.
    pub fn close_oldest(&mut self) -> bool {
        let oldest = self
            .idle
            .values_mut()
            .filter_map(|q| q.front().map(|c| c.since).zip(Some(q)))
            .min_by_key(|(since, _)| *since);
        oldest.is_some_and(|(_, queue)| queue.pop_front().is_some())
    }

    /// Closes every idle connection (shutdown).
    pub fn clear(&mut self) {
        self.idle.clear();
    }

    /// The most recently idle connection to the backend `backend_id` that is still clean,
    /// however briefly it was idle, so an upstream that sent bytes after its response (a broken
    /// server, a HEAD answered with a body) or closed never hands them to the next request: a
    /// plain one by the receive posted when it went idle (`PostedRead`: no syscall), a TLS one
    /// by a non-blocking look at its socket. Each one discarded is reported to `discarded`.
    /// `keep_posted`: the caller writes a whole request, then reads only with
    /// `UpstreamConn::read_more_until`, so the posted receive reads the answer; else it is
    /// cancelled and the socket peeked. Only a connection announced for `proxied_for` (by a
    /// PROXY protocol header) is taken, none for a plain one.
    pub fn checkout(
        &mut self,
        backend_id: u64,
        proxied_for: Option<SocketAddr>,
        keep_posted: bool,
        mut discarded: impl FnMut(IdleState),
    ) -> Option<UpstreamConn> {
        let keep = *self.current.get(&backend_id)?;
        let expired = expired_before(keep.idle_timeout);
        let queue = self.idle.get_mut(&backend_id)?;
        if proxied_for.is_some() {
            // Each client's connections apart: the most recent of this client's, if any.
            let at = queue
                .iter()
                .rposition(|c| c.conn.proxied_for == proxied_for)?;
            let IdleConn { conn, since } = queue.remove(at)?;
            if since < expired {
                return None;
            }
            return conn.ready(keep_posted).map_err(discarded).ok();
        }
        while let Some(IdleConn { conn, since }) = queue.pop_back() {
            if since < expired {
                // Everything older is expired too.
                queue.clear();
                return None;
            }
            match conn.ready(keep_posted) {
                Ok(conn) => return Some(conn),
                Err(dirty) => discarded(dirty),
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly; `Err` with what was wrong if it
    /// cannot be kept. Bytes already read past the response (`rbuf`) disqualify it at no cost;
    /// bytes that come later are caught at checkout. A body spliced to its exact length read
    /// nothing past it, so its socket is peeked here (such bodies are large: one syscall is
    /// nothing next to them). A plain connection kept gets the receive of its next answer.
    pub fn checkin(&mut self, mut conn: UpstreamConn, spliced: bool) -> Result<(), IdleState> {
        debug_assert!(conn.posted.is_none(), "a posted receive was never read");
        if !conn.rbuf.is_empty() {
            return Err(IdleState::StrayBytes);
        }
        let Some(keep) = self.current.get(&conn.backend_id) else {
            return Ok(()); // a backend a reload removed: closed
        };
        let max = keep.max_idle;
        if spliced {
            clean(conn.stream.idle_state())?;
        }
        if max == 0 {
            return Ok(());
        }
        match conn
            .stream
            .post_read(std::mem::take(&mut conn.rbuf), UPSTREAM_READ_BUF)
        {
            Ok(posted) => conn.posted = Some(posted),
            Err(rbuf) => conn.rbuf = rbuf,
        }
        let queue = self.idle.entry(conn.backend_id).or_default();
        if queue.len() >= max {
            queue.pop_front();
        }
        queue.push_back(IdleConn {
            conn,
            since: deadline::coarse_now(),
        });
        Ok(())
    }

    /// Closes connections idle longer than the timeout; run periodically by the worker.
    pub fn sweep(&mut self) {
        for (id, queue) in self.idle.iter_mut() {
            let timeout = self
                .current
                .get(id)
                .map_or(Duration::ZERO, |k| k.idle_timeout);
            let expired = expired_before(timeout);
            while queue.front().is_some_and(|c| c.since < expired) {
                queue.pop_front();
            }
        }
        self.idle.retain(|_, queue| !queue.is_empty());
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(VecDeque::len).sum()
    }
}

/// Connections idle since before this tick (of the coarse clock) have been idle for `timeout`.
fn expired_before(timeout: Duration) -> u64 {
    deadline::coarse_now().saturating_sub(deadline::coarse_ticks(timeout))
}

#[derive(Debug)]
pub enum ConnectError {
    Failed(std::io::Error),
    Timeout,
    /// The TLS handshake with an `https://` backend failed (its certificate did not verify,
    /// it does not speak TLS, ...): why, as rustls says it.
    Handshake(String),
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
            ConnectError::Failed(_) | ConnectError::Handshake(_) => 502,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect to upstream timed out"),
            ConnectError::Failed(e) => write!(f, "connect to upstream failed: {e}"),
            ConnectError::Handshake(e) => write!(f, "TLS handshake with upstream failed: {e}"),
            ConnectError::NoDescriptor(e) => {
                write!(f, "no descriptor for an upstream connection: {e}")
            }
        }
    }
}

/// Opens a new connection to a backend within `timeout` (with its TLS handshake, for an
/// `https://` one: `tls`), on a descriptor leased from the worker's budget (none to lease:
/// `NoDescriptor`, as when the kernel has none).
pub async fn connect(
    backend_id: u64,
    addr: SocketAddr,
    tls: Option<Arc<UpstreamTls>>,
    preface: Option<&[u8]>,
    timeout: Duration,
) -> Result<UpstreamConn, ConnectError> {
    let deadline = Instant::now() + timeout;
    let no_room = || ConnectError::NoDescriptor(std::io::Error::from_raw_os_error(libc::EMFILE));
    let descriptor = fd_budget::lease(1, FdOp::Connect).ok_or_else(no_room)?;
    let connecting = monoio::time::timeout(timeout, TcpStream::connect_addr(addr));
    let stream = match connecting.await.map(|r| fd_budget::note(FdOp::Connect, r)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if fd_budget::is_exhaustion(&e) => return Err(ConnectError::NoDescriptor(e)),
        Ok(Err(e)) => return Err(ConnectError::Failed(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    // Heads and small bodies go out in one write; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    // A PROXY protocol header goes first, on the socket itself (under any TLS).
    let mut stream = stream;
    if let Some(preface) = preface {
        let left = deadline.saturating_duration_since(Instant::now());
        match deadline::timeout(left, stream.write_all(preface.to_vec())).await {
            Ok((Ok(_), _)) => {}
            Ok((Err(e), _)) => return Err(ConnectError::Failed(e)),
            Err(_) => return Err(ConnectError::Timeout),
        }
    }
    let stream = match tls {
        None => UpstreamStream::Plain(stream),
        Some(tls) => {
            let name = tls.server_name.clone();
            match TlsStream::connect(stream, tls.config.clone(), name, deadline).await {
                Ok(s) => UpstreamStream::Tls(s),
                Err(HandshakeError::Timeout) => return Err(ConnectError::Timeout),
                Err(e) => return Err(ConnectError::Handshake(e.to_string())),
            }
        }
    };
    Ok(UpstreamConn {
        stream,
        _descriptor: descriptor,
        rbuf: BytesMut::with_capacity(UPSTREAM_READ_BUF),
        backend_id,
        reused: false,
        proxied_for: None,
        posted: None,
    })
}
