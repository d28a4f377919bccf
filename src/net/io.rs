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
fn spare_tail(buf: &mut BytesMut, reserve: usize) -> SliceMut<BytesMut> {
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
    match deadline::timeout_at(deadline, stream.read(tail)).await {
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

/// What an idle keep-alive connection holds: it must have nothing to read. One non-blocking
/// peek: stray bytes after a response (a broken upstream) or an EOF make it unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    Clean,
    /// Bytes arrived that belong to no request.
    StrayBytes,
    /// The peer closed, or the socket failed.
    Closed,
}

pub fn idle_state(fd: std::os::fd::RawFd) -> IdleState {
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
