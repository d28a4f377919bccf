//! TLS on the worker's own sockets: rustls's connection state driven here over monoio's
//! owned-buffer I/O, for clients (`accept`) and upstreams (`connect`).
//!
//! Why not `monoio-rustls`: it owns the socket inside one stream object, so the read and write
//! sides cannot be driven at once by two tasks (WebSocket tunnels, answers relayed while an
//! upload still streams), an idle connection cannot leave its task with its session (parking),
//! and a read dropped half-way loses the ciphertext it had taken. Here the rustls state lives
//! in a `Session` shared (`Rc<RefCell<_>>`, one thread, never borrowed across an await) by the
//! stream and an optional second handle on a second descriptor of the same socket (`TlsHalf`);
//! ciphertext not yet given to rustls stays in the session, so a cancelled read
//! (`read_more_or_give_up`) loses nothing, and an idle connection is parked as its socket plus
//! its session (`into_parked`). Only one handle reads and one writes at a time; while split,
//! the writing handle sends what rustls queues for the peer (alerts, key updates). A kernel TLS
//! (kTLS) path would hand rustls's secrets to the socket and make `tcp()` answer `Some` again.

use super::io::{second_stream, HalfClose, IdleState, SecondStream, Socket};
use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::CancelableAsyncReadRent;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};
use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Ciphertext asked for per socket read: two full records (16 KiB of payload plus overhead
/// each), so a large body takes half as many reads as record-sized ones would.
const CIPHER_READ: usize = 34 * 1024;
/// Plaintext taken per write: what one flush sends at most, so a write's memory is bounded.
const PLAIN_WRITE_MAX: usize = 64 * 1024;
/// The first byte of a TLS handshake record (RFC 8446 §5.1, ContentType handshake).
const HANDSHAKE_RECORD: u8 = 0x16;

/// The rustls connection state and what goes with it; shared by a stream and its second half.
pub struct Session {
    conn: Connection,
    /// Ciphertext read from the socket and not yet handed to rustls.
    cipher_in: BytesMut,
    /// Plaintext rustls holds for the reader, and whether close_notify came (from the last
    /// `process_new_packets`): a read asks rustls only when it has something to give, not
    /// once to hear "would block" before every socket read.
    plain_left: usize,
    peer_closed: bool,
    /// The socket said EOF.
    eof: bool,
    /// A read (write) is under way; still set when a new one starts means the last one was
    /// dropped half-way and the stream is out of step.
    reading: bool,
    writing: bool,
    /// The connection is to end with a reset, not a close_notify (a truncated response).
    reset: bool,
    /// close_notify was queued.
    notified: bool,
    /// EOF without close_notify ends the stream quietly (clients: browsers close that way
    /// between requests) or is an error (upstreams: a cut close-delimited body must not pass
    /// for a complete one).
    lenient_eof: bool,
}

/// How a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The client spoke plain HTTP to the TLS port: the socket, to answer it.
    PlainHttp(TcpStream),
    /// Not TLS, not HTTP.
    NotTls,
    Timeout,
    Io(io::Error),
    Tls(rustls::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::PlainHttp(_) => f.write_str("plain HTTP sent to the TLS port"),
            HandshakeError::NotTls => f.write_str("not a TLS handshake"),
            HandshakeError::Timeout => f.write_str("handshake timed out"),
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
        }
    }
}

impl HandshakeError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::PlainHttp(_) => "plain_http",
            HandshakeError::Timeout => "timeout",
            HandshakeError::NotTls | HandshakeError::Io(_) | HandshakeError::Tls(_) => "failed",
        }
    }
}

/// What was agreed in a handshake.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
    /// The server name the client asked for (clients only).
    pub sni: Option<Box<str>>,
    pub resumed: bool,
}

/// A TLS stream on a socket.
pub struct TlsStream {
    tcp: TcpStream,
    session: Rc<RefCell<Session>>,
    /// Ciphertext on its way to the socket (this handle's writes).
    out: BytesMut,
}

/// A second handle on a TLS stream, on a second descriptor of its socket, so one task reads
/// while another writes (tunnels, answers relayed while an upload streams). Held with its
/// descriptor's lease.
pub struct TlsHalf {
    tcp: SecondStream,
    session: Rc<RefCell<Session>>,
    out: BytesMut,
}

/// A stream's session and socket, to open a second handle on (`second_half`).
pub struct SessionRef {
    fd: RawFd,
    session: Rc<RefCell<Session>>,
}

impl SessionRef {
    /// A second handle on the stream, on a second descriptor of its socket (leased from the
    /// worker's budget), so one task may read while another writes. The stream must outlive it.
    pub fn second_half(&self) -> io::Result<TlsHalf> {
        Ok(TlsHalf {
            tcp: second_stream(self.fd)?,
            session: self.session.clone(),
            out: BytesMut::new(),
        })
    }
}

/// An idle TLS connection's state without its task: the session, kept while the socket waits
/// in the parking lot.
pub struct ParkedSession(Rc<RefCell<Session>>);

fn out_of_step() -> io::Error {
    io::Error::other("TLS stream out of step after an abandoned read or write")
}

impl Session {
    fn new(conn: Connection, lenient_eof: bool) -> Self {
        Session {
            conn,
            cipher_in: BytesMut::new(),
            plain_left: 0,
            peer_closed: false,
            eof: false,
            reading: false,
            writing: false,
            reset: false,
            notified: false,
            lenient_eof,
        }
    }

    /// Plaintext from what has been read, into `dst`: `Some(0)` at the end of the stream,
    /// `None` when more ciphertext is needed.
    fn plaintext_into(&mut self, dst: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            if self.plain_left > 0 || self.peer_closed {
                match self.conn.reader().read(dst) {
                    Ok(n) => {
                        self.plain_left = self.plain_left.saturating_sub(n);
                        return Ok(Some(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.plain_left = 0,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return if self.lenient_eof {
                            Ok(Some(0))
                        } else {
                            Err(e)
                        };
                    }
                    Err(e) => return Err(e),
                }
            }
            if self.cipher_in.is_empty() {
                if !self.eof {
                    return Ok(None);
                }
                // Tell rustls; the reader then reports a clean or an unclean end.
                self.conn.read_tls(&mut &b""[..])?;
                return match self.conn.reader().read(dst) {
                    Ok(n) => Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !self.lenient_eof => {
                        Err(e)
                    }
                    Err(_) => Ok(Some(0)),
                };
            }
            self.feed()?;
        }
    }

    /// Hands buffered ciphertext to rustls and processes it.
    fn feed(&mut self) -> io::Result<()> {
        let taken = self.conn.read_tls(&mut &self.cipher_in[..])?;
        if taken == 0 {
            // close_notify came: what follows it is not part of the stream.
            self.cipher_in.clear();
        }
        self.cipher_in.advance(taken);
        let state = self
            .conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.plain_left = state.plaintext_bytes_to_read();
        self.peer_closed = state.peer_has_closed();
        Ok(())
    }

    /// The ciphertext rustls has queued, appended to `out`.
    fn take_output(&mut self, out: &mut BytesMut) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut Appender(out))?;
        }
        Ok(())
    }

    /// Queues close_notify and returns everything queued, for a last send.
    fn closing_bytes(&mut self) -> BytesMut {
        let mut pending = BytesMut::new();
        if !self.notified {
            self.notified = true;
            self.conn.send_close_notify();
        }
        let _ = self.take_output(&mut pending);
        pending
    }

    fn info(&self) -> TlsInfo {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "-",
        };
        let cipher = self
            .conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("-");
        let sni = match &self.conn {
            Connection::Server(s) => s.server_name().map(Box::from),
            Connection::Client(_) => None,
        };
        TlsInfo {
            version,
            cipher,
            sni,
            resumed: self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

/// `io::Write` into a `BytesMut`, taking every slice of a vectored write (rustls hands its
/// queued records as one).
struct Appender<'a>(&'a mut BytesMut);

impl Write for Appender<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for b in bufs {
            self.0.extend_from_slice(b);
            n += b.len();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads ciphertext from the socket into the session (one read). A cancelled read returns its
/// error with nothing lost; a read whose future is dropped leaves the session out of step.
async fn fill(
    tcp: &mut TcpStream,
    session: &RefCell<Session>,
    cancel: Option<&CancelHandle>,
) -> io::Result<()> {
    let mut cipher = {
        let mut s = session.borrow_mut();
        if s.reading {
            return Err(out_of_step());
        }
        s.reading = true;
        std::mem::take(&mut s.cipher_in)
    };
    // An empty buffer is read into from its start again (`reserve` moves the start back, no
    // allocation): small requests then land in the same few cache lines each time instead of
    // walking through the buffer.
    if cipher.capacity() - cipher.len() < CIPHER_READ / 2
        || (cipher.is_empty() && cipher.capacity() < CIPHER_READ)
    {
        cipher.reserve(CIPHER_READ);
    }
    let (len, cap) = (cipher.len(), cipher.capacity());
    let tail = cipher.slice_mut(len..cap);
    let (result, tail) = match cancel {
        Some(c) => tcp.cancelable_read(tail, c.clone()).await,
        None => tcp.read(tail).await,
    };
    let mut s = session.borrow_mut();
    s.cipher_in = tail.into_inner();
    s.reading = false;
    match result {
        Ok(0) => {
            s.eof = true;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sends everything rustls has queued for the peer.
async fn flush(
    tcp: &mut TcpStream,
    session: &RefCell<Session>,
    out: &mut BytesMut,
) -> io::Result<()> {
    loop {
        {
            let mut s = session.borrow_mut();
            if s.writing {
                return Err(out_of_step());
            }
            out.clear();
            s.take_output(out)?;
            if out.is_empty() {
                return Ok(());
            }
            s.writing = true;
        }
        let (result, returned) = tcp.write_all(std::mem::take(out)).await;
        *out = returned;
        let mut s = session.borrow_mut();
        s.writing = false;
        result?;
        if !s.conn.wants_write() {
            return Ok(());
        }
    }
}

/// Reads plaintext into `buf`: from what is buffered, else after reading the socket.
async fn read_plain<T: IoBufMut>(
    tcp: &mut TcpStream,
    session: &Rc<RefCell<Session>>,
    out: &mut BytesMut,
    mut buf: T,
    cancel: Option<&CancelHandle>,
) -> BufResult<usize, T> {
    loop {
        // SAFETY: `buf` is owned here and not lent to the kernel (ciphertext is read into the
        // session's buffer); its spare capacity is `bytes_total` bytes from `write_ptr`.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        if dst.is_empty() {
            return (Ok(0), buf);
        }
        let step = session.borrow_mut().plaintext_into(dst);
        match step {
            Ok(Some(n)) => {
                // SAFETY: rustls wrote `n` bytes at the start of the spare capacity.
                unsafe { buf.set_init(n) };
                return (Ok(n), buf);
            }
            Ok(None) => {}
            Err(e) => {
                send_pending_now(tcp.as_raw_fd(), session);
                return (Err(e), buf);
            }
        }
        // Alone on the session, this read sends what rustls queued (a key update's answer);
        // split, the writing half does.
        if Rc::strong_count(session) == 1 && session.borrow().conn.wants_write() {
            if let Err(e) = flush(tcp, session, out).await {
                return (Err(e), buf);
            }
        }
        if let Err(e) = fill(tcp, session, cancel).await {
            return (Err(e), buf);
        }
    }
}

/// Encrypts (up to `PLAIN_WRITE_MAX` of) `buf` and sends it.
async fn write_plain<T: IoBuf>(
    tcp: &mut TcpStream,
    session: &RefCell<Session>,
    out: &mut BytesMut,
    buf: T,
) -> BufResult<usize, T> {
    // SAFETY: `buf` is owned here and initialised for `bytes_init` bytes from `read_ptr`.
    let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
    let taken = {
        let mut s = session.borrow_mut();
        if s.writing {
            return (Err(out_of_step()), buf);
        }
        let data = &data[..data.len().min(PLAIN_WRITE_MAX)];
        match s.conn.writer().write(data) {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        }
    };
    match flush(tcp, session, out).await {
        Ok(()) => (Ok(taken), buf),
        Err(e) => (Err(e), buf),
    }
}

/// Sends what rustls queued (a fatal alert after a protocol error) without waiting; a socket
/// with no room for it just misses it, as the connection is closed next anyway.
fn send_pending_now(fd: RawFd, session: &RefCell<Session>) {
    let mut pending = BytesMut::new();
    if session.borrow_mut().take_output(&mut pending).is_ok() {
        send_now(fd, &pending);
    }
}

fn send_now(fd: RawFd, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // SAFETY: send(2) from a live slice on a descriptor the caller keeps open.
    unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

/// Sends close_notify and stops sending on the socket (FIN after it), without waiting.
fn close_notify_and_half_close(fd: RawFd, session: &RefCell<Session>) {
    let pending = session.borrow_mut().closing_bytes();
    send_now(fd, &pending);
    // SAFETY: shutdown(2) on a descriptor the caller keeps open.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

async fn until<F: Future>(deadline: Instant, f: F) -> Result<F::Output, HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    monoio::time::timeout(left, f)
        .await
        .map_err(|_| HandshakeError::Timeout)
}

impl TlsStream {
    /// The server side of a handshake on an accepted socket, within `deadline`. A client that
    /// sends a plain HTTP request instead gets its socket back (`PlainHttp`) to be answered.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        deadline: Instant,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
        let mut stream = TlsStream::new(tcp, Connection::Server(conn), true);
        until(deadline, fill(&mut stream.tcp, &stream.session, None))
            .await?
            .map_err(HandshakeError::Io)?;
        let first = stream.session.borrow().cipher_in.first().copied();
        match first {
            Some(HANDSHAKE_RECORD) => {}
            Some(b) if b.is_ascii_uppercase() => return Err(stream.into_plain_http()),
            Some(_) => return Err(HandshakeError::NotTls),
            None => {
                return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        stream.handshake(deadline).await?;
        Ok(stream)
    }

    /// The client side of a handshake on a connected socket, within `deadline`.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        deadline: Instant,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = ClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
        let mut stream = TlsStream::new(tcp, Connection::Client(conn), false);
        stream.handshake(deadline).await?;
        Ok(stream)
    }

    fn new(tcp: TcpStream, conn: Connection, lenient_eof: bool) -> TlsStream {
        TlsStream {
            tcp,
            session: Rc::new(RefCell::new(Session::new(conn, lenient_eof))),
            out: BytesMut::new(),
        }
    }

    /// The socket back, for an answer in plain HTTP: nothing of the session goes on.
    fn into_plain_http(self) -> HandshakeError {
        let (tcp, _session, _out) = self.into_parts();
        HandshakeError::PlainHttp(tcp)
    }

    /// Runs the handshake to its end: feed what came, send what rustls wants sent, read more.
    async fn handshake(&mut self, deadline: Instant) -> Result<(), HandshakeError> {
        loop {
            let fed = {
                let mut s = self.session.borrow_mut();
                let mut fed = Ok(());
                while s.conn.is_handshaking() && !s.cipher_in.is_empty() && fed.is_ok() {
                    fed = s.feed();
                }
                fed
            };
            if let Err(e) = fed {
                // The alert rustls queued (bad_certificate, no_application_protocol, ...).
                let _ = until(deadline, flush(&mut self.tcp, &self.session, &mut self.out)).await;
                let tls = e
                    .into_inner()
                    .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                    .map_or(HandshakeError::Io(io::ErrorKind::InvalidData.into()), |e| {
                        HandshakeError::Tls(*e)
                    });
                return Err(tls);
            }
            until(deadline, flush(&mut self.tcp, &self.session, &mut self.out))
                .await?
                .map_err(HandshakeError::Io)?;
            let (handshaking, eof) = {
                let s = self.session.borrow();
                (s.conn.is_handshaking(), s.eof)
            };
            if !handshaking {
                return Ok(());
            }
            if eof {
                return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            until(deadline, fill(&mut self.tcp, &self.session, None))
                .await?
                .map_err(HandshakeError::Io)?;
        }
    }

    /// What the handshake agreed.
    pub fn info(&self) -> TlsInfo {
        self.session.borrow().info()
    }

    /// The peer's certificate (a client's, with mutual TLS), if it sent one.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        let s = self.session.borrow();
        s.conn
            .peer_certificates()?
            .first()
            .map(|c| c.clone().into_owned())
    }

    fn fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    pub fn tcp_stream(&self) -> &TcpStream {
        &self.tcp
    }

    /// What a second handle on this stream is made from, taken now (while the stream is free
    /// to borrow) and opened later, if at all.
    pub fn session_ref(&self) -> SessionRef {
        SessionRef {
            fd: self.fd(),
            session: self.session.clone(),
        }
    }

    /// An idle connection's state (see `UpstreamStream::idle_state`): what has arrived is read
    /// without waiting and processed.
    pub fn idle_state(&self) -> IdleState {
        let mut s = self.session.borrow_mut();
        if s.reading || s.writing || s.eof {
            return IdleState::Closed;
        }
        // Nothing arrived (the common case): one peek, as for a plain socket, and no buffer.
        if super::io::idle_state(self.fd()) != IdleState::Clean {
            loop {
                match super::io::recv_now(&self.tcp, &mut s.cipher_in, CIPHER_READ) {
                    Ok(None) => break,
                    Ok(Some(0)) => {
                        s.eof = true;
                        break;
                    }
                    Ok(Some(_)) => {}
                    Err(_) => return IdleState::Closed,
                }
            }
        }
        let mut probe = [0u8; 1];
        match s.plaintext_into(&mut probe) {
            Ok(None) if !s.eof => IdleState::Clean,
            Ok(Some(n)) if n > 0 => IdleState::StrayBytes,
            _ => IdleState::Closed,
        }
    }

    /// The connection is to end with a reset: no close_notify (which would vouch that what was
    /// sent is complete).
    pub fn mark_reset(&self) {
        self.session.borrow_mut().reset = true;
    }

    /// The socket and session of an idle connection, to wait in the parking lot; the stream
    /// back if it is not idle and whole (split, a read or write abandoned, input pending).
    pub fn into_parked(self) -> Result<(TcpStream, ParkedSession), TlsStream> {
        {
            let s = self.session.borrow();
            let busy = s.reading || s.writing || !s.cipher_in.is_empty();
            if busy || Rc::strong_count(&self.session) != 1 {
                drop(s);
                return Err(self);
            }
        }
        let (tcp, session, _out) = self.into_parts();
        // The read buffer goes: a parked connection holds only rustls's state.
        session.borrow_mut().cipher_in = BytesMut::new();
        Ok((tcp, ParkedSession(session)))
    }

    /// Back from the parking lot on a (new) socket.
    pub fn resume(tcp: TcpStream, parked: ParkedSession) -> TlsStream {
        TlsStream {
            tcp,
            session: parked.0,
            out: BytesMut::new(),
        }
    }

    /// Takes the stream apart without its close (which `Drop` does).
    fn into_parts(self) -> (TcpStream, Rc<RefCell<Session>>, BytesMut) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: each field is read exactly once from a value that is never dropped.
        unsafe {
            (
                std::ptr::read(&this.tcp),
                std::ptr::read(&this.session),
                std::ptr::read(&this.out),
            )
        }
    }
}

impl Drop for TlsStream {
    /// A connection that ends cleanly says so (close_notify), unless it is to be reset or is
    /// out of step; sent without waiting, as nginx's SSL_shutdown on close.
    fn drop(&mut self) {
        let Ok(mut s) = self.session.try_borrow_mut() else {
            return;
        };
        let handshaken = !s.conn.is_handshaking();
        if s.reset || s.reading || s.writing || s.notified || !handshaken {
            return;
        }
        let pending = s.closing_bytes();
        drop(s);
        send_now(self.tcp.as_raw_fd(), &pending);
    }
}

impl TlsHalf {
    fn fd(&self) -> RawFd {
        self.tcp.stream.as_raw_fd()
    }

    /// Plaintext that can be had now without waiting, appended to `buf` (at least `reserve / 2`
    /// spare bytes are made): `Some(0)` at the end, `None` when nothing (or only part of a
    /// record) has come. Together with `readable`, a wait that loses nothing when dropped.
    pub fn recv_now(&self, buf: &mut BytesMut, reserve: usize) -> io::Result<Option<usize>> {
        use bytes::BufMut;
        loop {
            if buf.capacity() - buf.len() < reserve / 2 {
                buf.reserve(reserve);
            }
            let spare = buf.chunk_mut();
            // SAFETY: the spare capacity of `buf`, written by rustls before `advance_mut`.
            let dst = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr(), spare.len()) };
            let step = self.session.borrow_mut().plaintext_into(dst)?;
            if let Some(n) = step {
                // SAFETY: rustls initialised `n` bytes of the spare capacity.
                unsafe { buf.advance_mut(n) };
                return Ok(Some(n));
            }
            let mut s = self.session.borrow_mut();
            let cipher = &mut s.cipher_in;
            match super::io::recv_now(&self.tcp.stream, cipher, CIPHER_READ)? {
                None => return Ok(None),
                Some(0) => s.eof = true,
                Some(_) => {}
            }
        }
    }

    /// Waits until the socket has something to read.
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp.stream.readable(false).await
    }
}

/// Reading, writing and half-closing for both handles.
macro_rules! tls_io {
    ($name:ident, $tcp:ident) => {
        impl AsyncReadRent for $name {
            fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                read_plain($tcp!(self), &self.session, &mut self.out, buf, None)
            }

            fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move { (Err(io::ErrorKind::Unsupported.into()), buf) }
            }
        }

        impl CancelableAsyncReadRent for $name {
            fn cancelable_read<T: IoBufMut>(
                &mut self,
                buf: T,
                c: CancelHandle,
            ) -> impl Future<Output = BufResult<usize, T>> {
                async move { read_plain($tcp!(self), &self.session, &mut self.out, buf, Some(&c)).await }
            }

            fn cancelable_readv<T: IoVecBufMut>(
                &mut self,
                buf: T,
                _c: CancelHandle,
            ) -> impl Future<Output = BufResult<usize, T>> {
                async move { (Err(io::ErrorKind::Unsupported.into()), buf) }
            }
        }

        impl AsyncWriteRent for $name {
            fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                write_plain($tcp!(self), &self.session, &mut self.out, buf)
            }

            fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move { (Err(io::ErrorKind::Unsupported.into()), buf) }
            }

            fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
                flush($tcp!(self), &self.session, &mut self.out)
            }

            /// close_notify, then a FIN.
            fn shutdown(&mut self) -> impl Future<Output = io::Result<()>> {
                async move {
                    let pending = self.session.borrow_mut().closing_bytes();
                    let (result, _) = $tcp!(self).write_all(pending).await;
                    result?;
                    $tcp!(self).shutdown().await
                }
            }
        }

        impl HalfClose for $name {
            fn half_close(&self) {
                close_notify_and_half_close(self.fd(), &self.session);
            }
        }

        impl Socket for $name {
            fn tcp(&self) -> Option<&TcpStream> {
                None
            }
        }
    };
}

macro_rules! own_tcp {
    ($s:expr) => {
        &mut $s.tcp
    };
}
macro_rules! second_tcp {
    ($s:expr) => {
        &mut $s.tcp.stream
    };
}

tls_io!(TlsStream, own_tcp);
tls_io!(TlsHalf, second_tcp);
