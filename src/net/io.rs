//! Socket reads and writes with a bound on every wait. monoio takes buffers by value (io_uring
//! owns them while the kernel works), so these helpers move the buffer in and put it back.

use super::deadline;
use super::fd_budget::{FdOp, Lease};
use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, CancelableAsyncReadRent};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// How a bounded read or write failed.
#[derive(Debug)]
pub enum IoFail {
    Io(std::io::Error),
    Timeout,
}

impl std::fmt::Display for IoFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoFail::Io(e) => write!(f, "{e}"),
            IoFail::Timeout => f.write_str("timed out"),
        }
    }
}

/// Takes `buf` for a read that appends: grown to at least `reserve / 2` spare bytes (never 0,
/// which a read would report as EOF) and sliced past its filled part, because monoio's `read`
/// writes at the buffer's start. `into_inner()` gives the buffer back with the new bytes.
pub(super) fn spare_tail(buf: &mut BytesMut, reserve: usize) -> SliceMut<BytesMut> {
    if buf.capacity() - buf.len() < reserve / 2 {
        buf.reserve(reserve);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    std::mem::take(buf).slice_mut(len..cap)
}

/// Reads more bytes after the existing content of `buf`, growing it by at least `reserve` spare
/// bytes first. `Ok(0)` is EOF. On timeout the buffer is lost (the connection is finished anyway).
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    reserve: usize,
    timeout: Duration,
) -> Result<usize, IoFail> {
    read_more_until(stream, buf, reserve, deadline::Deadline::after(timeout)).await
}

/// Waits up to `timeout` for more bytes without ever losing any: on timeout the read is cancelled
/// and its outcome collected, so bytes that raced the cancel are kept (a plain timed-out read
/// drops its buffer, fine only when the connection is closed next). `Ok(None)`: nothing came.
pub async fn read_more_or_give_up<S: CancelableAsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    reserve: usize,
    timeout: Duration,
) -> std::io::Result<Option<usize>> {
    let tail = spare_tail(buf, reserve);
    let canceller = cancellers::take();
    let mut read = std::pin::pin!(stream.cancelable_read(tail, canceller.handle()));
    let (result, tail) = match deadline::timeout(timeout, &mut read).await {
        Ok(done) => {
            cancellers::give(canceller);
            done
        }
        Err(deadline::Elapsed) => {
            // Not kept: `cancel` hands back a new Canceller, allocated now, and a connection
            // that waited this long is usually about to park. Kept, thousands of them made while
            // connections park would outlive the tasks around them and pin the heap pages the
            // tasks freed (10,000 parked connections held 11 MiB more).
            let _spent = canceller.cancel();
            read.await
        }
    };
    *buf = tail.into_inner();
    match result {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Ok(None),
        Err(e) => Err(e),
    }
}

/// monoio's `Canceller`s, kept for reuse by this thread: a new one allocates its shared state
/// and, at its first read, a hash set; an idle keep-alive wait takes one per request.
mod cancellers {
    use monoio::io::Canceller;
    use std::cell::RefCell;

    /// At most this many kept: enough for the keep-alive waits of a busy worker, few enough
    /// that those kept after a burst pin little of the heap.
    const KEEP: usize = 1024;

    thread_local! {
        static FREE: RefCell<Vec<Canceller>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take() -> Canceller {
        FREE.with(|f| f.borrow_mut().pop()).unwrap_or_default()
    }

    /// Back for reuse, once no read is associated with it any more.
    pub fn give(canceller: Canceller) {
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(canceller);
            }
        });
    }
}

/// Reads with a deadline (on the coarse clock) instead of a duration: for a limit on the whole
/// of a head that arrives in several reads.
pub async fn read_more_until<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    reserve: usize,
    deadline: deadline::Deadline,
) -> Result<usize, IoFail> {
    let tail = spare_tail(buf, reserve);
    landed(deadline::timeout_at(deadline, stream.read(tail)).await, buf)
}

/// The outcome of a bounded read into `spare_tail(buf, ..)`, with `buf` given back (on timeout
/// it is lost: the connection is finished anyway).
pub(super) fn landed(
    outcome: Result<monoio::BufResult<usize, SliceMut<BytesMut>>, deadline::Elapsed>,
    buf: &mut BytesMut,
) -> Result<usize, IoFail> {
    match outcome {
        Ok((result, tail)) => {
            *buf = tail.into_inner();
            result.map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes all of `buf`, then empties it for reuse. On failure, also says whether any byte of
/// it was written (`Err((fail, false))`: the peer demonstrably got nothing of it).
pub async fn write_buf_tracked<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<(), (IoFail, bool)> {
    let deadline = deadline::Deadline::after(timeout);
    let mut written_any = false;
    while !buf.is_empty() {
        let pending = std::mem::take(buf);
        let (result, returned) = match deadline::timeout_at(deadline, stream.write(pending)).await {
            Ok(done) => done,
            Err(_) => return Err((IoFail::Timeout, written_any)),
        };
        *buf = returned;
        match result {
            Ok(0) => {
                let eof = std::io::Error::from(std::io::ErrorKind::WriteZero);
                return Err((IoFail::Io(eof), written_any));
            }
            Ok(n) => {
                bytes::Buf::advance(buf, n);
                written_any = true;
            }
            Err(e) => return Err((IoFail::Io(e), written_any)),
        }
    }
    buf.clear();
    Ok(())
}

/// Writes all of `buf`, then empties it for reuse.
pub async fn write_buf<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<(), IoFail> {
    if buf.is_empty() {
        return Ok(());
    }
    match deadline::timeout(timeout, stream.write_all(std::mem::take(buf))).await {
        Ok((result, mut returned)) => {
            returned.clear();
            *buf = returned;
            result.map(drop).map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes a frozen slice (body data split off a read buffer) without copying it.
pub async fn write_bytes<S: AsyncWriteRent>(
    stream: &mut S,
    data: Bytes,
    timeout: Duration,
) -> Result<(), IoFail> {
    match deadline::timeout(timeout, stream.write_all(data)).await {
        Ok((result, _)) => result.map(drop).map_err(IoFail::Io),
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes `head` and then `piece` with one `writev` (more only when the socket takes part of
/// them), so a body piece goes out behind the message head without being copied into it; `head`
/// is emptied for reuse. Not monoio's `write_vectored_all`: on a partial write its iovec
/// bookkeeping shortens an iovec without moving its start, which would send bytes twice.
pub async fn write_head_and_piece<S: AsyncWriteRent>(
    stream: &mut S,
    head: &mut BytesMut,
    piece: Bytes,
    timeout: Duration,
) -> Result<(), IoFail> {
    let deadline = deadline::Deadline::after(timeout);
    let mut pair = HeadAndPiece::new(std::mem::take(head), piece);
    while !pair.is_written() {
        let (result, back) = match deadline::timeout_at(deadline, stream.writev(pair)).await {
            Ok(done) => done,
            Err(_) => return Err(IoFail::Timeout),
        };
        pair = back;
        match result {
            Ok(0) => return Err(IoFail::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => pair.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFail::Io(e)),
        }
    }
    *head = pair.head;
    head.clear();
    Ok(())
}

/// Two owned buffers as the iovecs of one `writev`, and how much of them has been written. The
/// iovecs are boxed: monoio moves the value after taking their address.
struct HeadAndPiece {
    head: BytesMut,
    piece: Bytes,
    written: usize,
    iov: Box<[libc::iovec; 2]>,
    iov_len: usize,
}

impl HeadAndPiece {
    fn new(head: BytesMut, piece: Bytes) -> HeadAndPiece {
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut pair = HeadAndPiece {
            head,
            piece,
            written: 0,
            iov: Box::new([empty, empty]),
            iov_len: 0,
        };
        pair.point();
        pair
    }

    fn is_written(&self) -> bool {
        self.written >= self.head.len() + self.piece.len()
    }

    /// `n` more bytes went out.
    fn advance(&mut self, n: usize) {
        self.written = (self.written + n).min(self.head.len() + self.piece.len());
        self.point();
    }

    /// The iovecs of what is still to be written.
    fn point(&mut self) {
        let parts: [&[u8]; 2] = if self.written < self.head.len() {
            [&self.head[self.written..], &self.piece]
        } else {
            [&self.piece[self.written - self.head.len()..], &[]]
        };
        self.iov_len = 0;
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            self.iov[self.iov_len] = libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            };
            self.iov_len += 1;
        }
    }
}

// SAFETY: the iovecs are in a box whose address does not change when the value moves, and
// point into the heap storage of `head` and `piece`, which are not touched while the runtime
// owns the value; `iov_len` of them are valid.
unsafe impl monoio::buf::IoVecBuf for HeadAndPiece {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.iov_len
    }
}

/// Makes the coming close send a RST instead of a FIN, so a peer that got a truncated body
/// sees an error rather than what could pass for a complete close-delimited message.
pub fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) with a plain struct of the right size; a bad fd only makes it fail.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A second descriptor for the socket of `stream` (close-on-exec), for a moment: the parking lot
/// closes the first right after. Not leased: one descriptor stays.
pub fn dup_fd(stream: &TcpStream) -> std::io::Result<OwnedFd> {
    // SAFETY: `stream` keeps the descriptor open while it is borrowed here.
    let dup = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    super::fd_budget::note(super::fd_budget::FdOp::Dup, dup)
}

/// A second stream on a socket, held with its lease on the worker's descriptor budget.
pub struct SecondStream {
    pub stream: TcpStream,
    _lease: Lease,
}

/// A second stream on the socket `fd`, so that one task can wait on it (or write to it) while
/// the first is busy in another operation; the caller keeps the first open meanwhile. `Err` when
/// the worker's descriptor budget has no room or the dup fails: the caller does without.
pub fn second_stream(fd: std::os::fd::RawFd) -> std::io::Result<SecondStream> {
    let no_room = || std::io::Error::from_raw_os_error(libc::EMFILE);
    let lease = super::fd_budget::lease(1, FdOp::Dup).ok_or_else(no_room)?;
    // SAFETY: the caller's stream owns `fd` and outlives this call.
    let dup = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
    let owned = super::fd_budget::note(FdOp::Dup, dup)?;
    Ok(SecondStream {
        stream: TcpStream::from_std(std::net::TcpStream::from(owned))?,
        _lease: lease,
    })
}

/// Stopping to send (a FIN after what is queued) while reading goes on.
pub trait HalfClose {
    fn half_close(&self);
}

impl HalfClose for TcpStream {
    fn half_close(&self) {
        half_close(self);
    }
}

/// Stops sending on the socket (a FIN after what is queued) while it stays open for reading.
pub fn half_close(stream: &TcpStream) {
    // SAFETY: shutdown(2) on the descriptor `stream` keeps open.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
}

/// What a body transfer needs of a socket: reads that append, writes of whole buffers, each
/// bounded by a timeout, and the socket itself where splice(2) may be used on it.
// Single-threaded runtime: the futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait BodyIo {
    async fn read_more(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        timeout: Duration,
    ) -> Result<usize, IoFail>;
    async fn write_buf(&mut self, buf: &mut BytesMut, timeout: Duration) -> Result<(), IoFail>;
    async fn write_bytes(&mut self, data: Bytes, timeout: Duration) -> Result<(), IoFail>;
    /// Writes `head`, then `piece`, and empties `head`. Copies the piece behind the head unless
    /// the stream can take both at once (a plain socket's `writev`).
    async fn write_head_and_piece(
        &mut self,
        head: &mut BytesMut,
        piece: Bytes,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        head.extend_from_slice(&piece);
        self.write_buf(head, timeout).await
    }
    /// The socket to splice from or into; `None` where bytes must pass through user space.
    fn spliceable(&self) -> Option<&TcpStream>;
}

/// A stream the body transfer may use with io_uring reads and writes (the client's or the
/// upstream's, plain or not), with the plain socket under it where there is one to splice.
pub trait Socket: CancelableAsyncReadRent + AsyncWriteRent {
    /// The plain TCP socket, for what only works on one (splice, a second descriptor).
    fn tcp(&self) -> Option<&TcpStream>;
}

impl Socket for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<S: Socket> BodyIo for S {
    async fn read_more(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        timeout: Duration,
    ) -> Result<usize, IoFail> {
        read_more(self, buf, reserve, timeout).await
    }
    async fn write_buf(&mut self, buf: &mut BytesMut, timeout: Duration) -> Result<(), IoFail> {
        write_buf(self, buf, timeout).await
    }
    async fn write_bytes(&mut self, data: Bytes, timeout: Duration) -> Result<(), IoFail> {
        write_bytes(self, data, timeout).await
    }
    async fn write_head_and_piece(
        &mut self,
        head: &mut BytesMut,
        piece: Bytes,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        if self.tcp().is_none() {
            // TLS: records are sealed from a copy anyway.
            head.extend_from_slice(&piece);
            return write_buf(self, head, timeout).await;
        }
        write_head_and_piece(self, head, piece, timeout).await
    }
    fn spliceable(&self) -> Option<&TcpStream> {
        self.tcp()
    }
}

/// A socket used by readiness and non-blocking `recv`/`send`, never by an io_uring read or
/// write: for a second descriptor used while the first one may be in the middle of a splice,
/// which switches the (shared) file to O_NONBLOCK, where an io_uring read would fail with EAGAIN
/// instead of waiting. Never spliced itself.
pub struct ReadyStream(pub SecondStream);

impl ReadyStream {
    /// Waits up to `timeout` for readiness, `writable` or readable.
    async fn wait(&self, writable: bool, timeout: Duration) -> Result<(), IoFail> {
        let ready = async {
            if writable {
                self.0.stream.writable(false).await
            } else {
                self.0.stream.readable(false).await
            }
        };
        match deadline::timeout(timeout, ready).await {
            Ok(r) => r.map_err(IoFail::Io),
            Err(_) => Err(IoFail::Timeout),
        }
    }

    async fn send_all(&mut self, mut data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        let deadline = Instant::now() + timeout;
        while !data.is_empty() {
            // SAFETY: plain send(2) from a live slice on a descriptor this stream keeps open.
            let n = unsafe {
                libc::send(
                    self.0.stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                data = &data[n as usize..];
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.wait(true, left).await?;
                }
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(IoFail::Io(e)),
            }
        }
        Ok(())
    }
}

impl BodyIo for ReadyStream {
    async fn read_more(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        timeout: Duration,
    ) -> Result<usize, IoFail> {
        let deadline = Instant::now() + timeout;
        loop {
            match recv_now(&self.0.stream, buf, reserve) {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.wait(false, left).await?;
                }
                Err(e) => return Err(IoFail::Io(e)),
            }
        }
    }
    async fn write_buf(&mut self, buf: &mut BytesMut, timeout: Duration) -> Result<(), IoFail> {
        let data = std::mem::take(buf);
        let sent = self.send_all(&data, timeout).await;
        *buf = data;
        buf.clear();
        sent
    }
    async fn write_bytes(&mut self, data: Bytes, timeout: Duration) -> Result<(), IoFail> {
        self.send_all(&data, timeout).await
    }
    fn spliceable(&self) -> Option<&TcpStream> {
        None
    }
}

/// Appends what the socket holds right now, without waiting (at least `reserve / 2` spare bytes
/// are made). `Ok(None)`: nothing to read yet; `Ok(Some(0))`: EOF.
pub fn recv_now(
    stream: &TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
) -> std::io::Result<Option<usize>> {
    use bytes::BufMut;
    if buf.capacity() - buf.len() < reserve / 2 {
        buf.reserve(reserve);
    }
    let spare = buf.chunk_mut();
    // SAFETY: `spare` is writable capacity of `buf`, at least `spare.len()` bytes; recv writes
    // at most that many and reports how many.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.advance_mut(n as usize) };
    Ok(Some(n as usize))
}

/// What an idle keep-alive connection holds: it must have nothing to read. Stray bytes after a
/// response (a broken upstream) or an EOF make it unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    Clean,
    /// Bytes arrived that belong to no request.
    StrayBytes,
    /// The peer closed, or the socket failed.
    Closed,
}

/// The socket's state now, without waiting: one `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte,
/// which leaves what it sees in the socket. Pooled connections use it where no posted receive
/// can (`posted_read`): TLS ones, a streamed upload's, and after a spliced body. As the check of
/// every reuse it cost about 2.3% of the worker's CPU per proxied request on small-c64 (1.0-3.5%
/// across runs; `bash bench/inproc_ab.sh idle-check=peek,none`). A `poll(2)` with a zero
/// timeout, which skips the socket lock, measured the same; the peek also tells bytes before a
/// FIN from a close.
pub fn idle_state(fd: std::os::fd::RawFd) -> IdleState {
    #[cfg(feature = "bench-ab")]
    match super::bench_ab::idle_check() {
        super::bench_ab::IdleCheck::Normal => {}
        super::bench_ab::IdleCheck::Poll => return polled(fd),
        super::bench_ab::IdleCheck::Skip => return IdleState::Clean,
    }
    let mut byte = 0u8;
    // SAFETY: recv(2) into a one-byte stack buffer; a closed or foreign fd only makes it fail.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => IdleState::Closed,
        n if n > 0 => IdleState::StrayBytes,
        _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => {
            IdleState::Clean
        }
        _ => IdleState::Closed,
    }
}

/// The same question by `poll(2)` with a zero timeout, which takes no socket lock (only in
/// `bench/inproc_ab.sh idle-check=...`'s build, to compare).
#[cfg(feature = "bench-ab")]
fn polled(fd: std::os::fd::RawFd) -> IdleState {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack.
    match unsafe { libc::poll(&mut pfd, 1, 0) } {
        0 => IdleState::Clean,
        n if n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) == 0 => {
            IdleState::StrayBytes
        }
        _ => IdleState::Closed,
    }
}

#[cfg(test)]
mod write_tests {
    use super::{write_head_and_piece, HeadAndPiece};
    use bytes::{Bytes, BytesMut};
    use monoio::io::AsyncWriteRent;
    use std::io::Read;
    use std::time::Duration;

    /// What the iovecs point at now, concatenated.
    fn pending(pair: &HeadAndPiece) -> Vec<u8> {
        let mut out = Vec::new();
        for iov in &pair.iov[..pair.iov_len] {
            // SAFETY: each iovec points into `pair`'s live buffers, `iov_len` bytes long.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len)
            });
        }
        out
    }

    #[test]
    fn partial_writes_move_through_head_then_piece() {
        let mut pair = HeadAndPiece::new(BytesMut::from(&b"abc"[..]), Bytes::from_static(b"defgh"));
        assert_eq!(pending(&pair), b"abcdefgh");
        assert_eq!(pair.iov_len, 2);
        pair.advance(2);
        assert_eq!(pending(&pair), b"cdefgh");
        pair.advance(1);
        assert_eq!((pending(&pair), pair.iov_len), (b"defgh".to_vec(), 1));
        pair.advance(3);
        assert_eq!(pending(&pair), b"gh");
        assert!(!pair.is_written());
        pair.advance(2);
        assert!(pair.is_written());
        assert_eq!(pair.iov_len, 0);
    }

    #[test]
    fn an_empty_head_leaves_one_iovec() {
        let pair = HeadAndPiece::new(BytesMut::new(), Bytes::from_static(b"xyz"));
        assert_eq!((pending(&pair), pair.iov_len), (b"xyz".to_vec(), 1));
    }

    /// A piece far larger than the socket buffers, read slowly: the writev is taken in many
    /// parts, and every byte arrives once, in order.
    #[monoio::test(enable_timer = true)]
    async fn head_and_piece_arrive_whole_over_a_slow_reader() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let piece: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 8388608\r\n\r\n".to_vec();
        let expected = [head.clone(), piece.clone()].concat();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 7000];
            loop {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() % 11 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let mut stream = monoio::net::TcpStream::connect(addr)
            .await
            .expect("connect");
        let mut out = BytesMut::from(&head[..]);
        write_head_and_piece(
            &mut stream,
            &mut out,
            Bytes::from(piece),
            Duration::from_secs(20),
        )
        .await
        .expect("written");
        assert!(out.is_empty(), "head emptied for reuse");
        // A FIN now (a dropped monoio stream closes on the next turn, which the join blocks).
        stream.shutdown().await.expect("shutdown");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }
}

#[cfg(test)]
mod tests {
    use super::{idle_state, IdleState};
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// A connected pair on loopback: (ours, the peer's).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        (ours, peer)
    }

    /// What the peer did reaches our socket asynchronously: wait (bounded) until the state
    /// is no longer clean.
    fn settled(ours: &TcpStream) -> IdleState {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let state = idle_state(ours.as_raw_fd());
            if state != IdleState::Clean || Instant::now() > until {
                return state;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_idle_connection_is_clean_until_the_peer_acts() {
        let (ours, _peer) = pair();
        assert_eq!(idle_state(ours.as_raw_fd()), IdleState::Clean);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(idle_state(ours.as_raw_fd()), IdleState::Clean);
    }

    #[test]
    fn one_stray_byte_is_seen_and_left_unread() {
        let (ours, mut peer) = pair();
        peer.write_all(b"x").expect("write");
        assert_eq!(settled(&ours), IdleState::StrayBytes);
        assert_eq!(
            idle_state(ours.as_raw_fd()),
            IdleState::StrayBytes,
            "not consumed"
        );
    }

    #[test]
    fn a_close_without_bytes_is_closed() {
        let (ours, peer) = pair();
        peer.shutdown(Shutdown::Write).expect("shutdown");
        assert_eq!(settled(&ours), IdleState::Closed);
        drop(peer);
        assert_eq!(settled(&ours), IdleState::Closed);
    }

    #[test]
    fn bytes_before_the_close_count_as_stray() {
        let (ours, mut peer) = pair();
        peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").expect("write");
        drop(peer);
        // Both have arrived once the FIN has: the bytes ahead of it are what is reported.
        let until = Instant::now() + Duration::from_secs(2);
        let mut state = idle_state(ours.as_raw_fd());
        while state == IdleState::Clean && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
            state = idle_state(ours.as_raw_fd());
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(idle_state(ours.as_raw_fd()), IdleState::StrayBytes);
    }

    #[test]
    fn a_reset_is_closed() {
        let (ours, peer) = pair();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt with a linger struct of the right size on a live socket.
        let rc = unsafe {
            libc::setsockopt(
                peer.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(peer); // RST
        assert_eq!(settled(&ours), IdleState::Closed);
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_closed() {
        assert_eq!(idle_state(-1), IdleState::Closed);
    }
}
