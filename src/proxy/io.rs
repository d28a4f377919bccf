//! Socket reads and writes with a bound on every wait. monoio takes buffers by value (io_uring
//! owns them while the kernel works), so these helpers move the buffer in and put it back.

use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::AsyncWriteRentExt;
use monoio::io::{AsyncReadRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub enum IoFail {
    Io(std::io::Error),
    Timeout,
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
pub async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
    timeout: Duration,
) -> Result<usize, IoFail> {
    let tail = spare_tail(buf, reserve);
    match monoio::time::timeout(timeout, stream.read(tail)).await {
        Ok((result, tail)) => {
            *buf = tail.into_inner();
            result.map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Waits up to `timeout` for more bytes without ever losing any: on timeout the read is cancelled
/// and its outcome collected, so bytes that raced the cancel are kept (a plain timed-out read
/// drops its buffer, fine only when the connection is closed next). `Ok(None)`: nothing came.
pub async fn read_more_or_give_up(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
    timeout: Duration,
) -> std::io::Result<Option<usize>> {
    let tail = spare_tail(buf, reserve);
    let canceller = Canceller::new();
    let mut read = std::pin::pin!(stream.cancelable_read(tail, canceller.handle()));
    let (result, tail) = monoio::select! {
        done = &mut read => done,
        _ = monoio::time::sleep(timeout) => {
            let _cancelled = canceller.cancel();
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

/// Reads with a deadline instead of a duration; an expired deadline is a timeout.
pub async fn read_more_until(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
    deadline: Instant,
) -> Result<usize, IoFail> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(IoFail::Timeout);
    }
    read_more(stream, buf, reserve, left).await
}

/// Writes all of `buf`, then empties it for reuse.
pub async fn write_buf(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timeout: Duration,
) -> Result<(), IoFail> {
    if buf.is_empty() {
        return Ok(());
    }
    match monoio::time::timeout(timeout, stream.write_all(std::mem::take(buf))).await {
        Ok((result, mut returned)) => {
            returned.clear();
            *buf = returned;
            result.map(drop).map_err(IoFail::Io)
        }
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Writes a frozen slice (body data split off a read buffer) without copying it.
pub async fn write_bytes(
    stream: &mut TcpStream,
    data: Bytes,
    timeout: Duration,
) -> Result<(), IoFail> {
    match monoio::time::timeout(timeout, stream.write_all(data)).await {
        Ok((result, _)) => result.map(drop).map_err(IoFail::Io),
        Err(_) => Err(IoFail::Timeout),
    }
}

/// Makes the coming close send a RST instead of a FIN, so a peer that got a truncated body
/// sees an error rather than what could pass for a complete close-delimited message.
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`; the option value is a plain struct of the right size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A second descriptor for the socket of `stream` (close-on-exec).
pub fn dup_fd(stream: &TcpStream) -> std::io::Result<OwnedFd> {
    // SAFETY: `stream` keeps the descriptor open while it is borrowed here.
    let dup = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned();
    crate::fd_budget::note(crate::fd_budget::FdOp::Dup, dup)
}

/// A second stream on the same socket, so that one task can wait on it (or write to it) while
/// the first is busy in another operation.
pub fn dup_stream(stream: &TcpStream) -> std::io::Result<TcpStream> {
    TcpStream::from_std(std::net::TcpStream::from(dup_fd(stream)?))
}

/// Stops sending on the socket (a FIN after what is queued) while it stays open for reading.
pub fn half_close(stream: &TcpStream) {
    // SAFETY: shutdown(2) on the descriptor `stream` keeps open.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
}
