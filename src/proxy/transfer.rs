//! Streams one body from a source socket to a destination socket: decode the incoming framing,
//! re-frame for the outgoing side (trailer fields included), never hold more than a read's worth
//! in memory. The same loop serves request bodies (client -> upstream) and response bodies
//! (upstream -> client).

use super::forwarding::TrailerPolicy;
use crate::http::{BodyDecoder, BodyError, Decoded, OutFraming};
use crate::net::io::{BodyIo, IoFail};
use crate::net::splice::{self, SpliceError, SPLICE_MIN_BYTES};
use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;
use std::time::Duration;

/// Reads while streaming a body ask for this much buffer space.
const BODY_READ_BYTES: usize = 64 * 1024;
/// Pieces up to this size are copied into the pending output so that head, small bodies and
/// chunk framing leave in one write; larger ones are written as they are, without a copy,
/// behind the pending output in the same `writev`.
const COALESCE_MAX: usize = 16 * 1024;
/// The same for a Content-Length body, whose every read is one piece (there is nothing to
/// gather from the next): past this size a copy costs more than a second iovec (on `resp-16k`
/// the copy behind the head was 5% of the worker's CPU).
const COALESCE_MAX_LENGTH: usize = 4 * 1024;

#[derive(Debug)]
pub enum TransferError {
    /// The source failed, stalled or closed early: the body cannot be completed. `sent_any`
    /// says whether any byte (of `out`'s initial content or the body) reached the destination.
    Source { fault: SourceFault, sent_any: bool },
    /// The destination failed or stalled.
    Destination(IoFail),
    /// The body grew past the configured maximum.
    TooLarge,
}

#[derive(Debug)]
pub enum SourceFault {
    Io(IoFail),
    Framing(BodyError),
}

impl std::fmt::Display for SourceFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceFault::Io(e) => write!(f, "{e}"),
            SourceFault::Framing(e) => f.write_str(e.reason()),
        }
    }
}

/// The source side of a transfer: a socket and the bytes already read from it.
pub struct Source<'a, S> {
    pub stream: &'a mut S,
    pub buf: &'a mut BytesMut,
    pub decoder: &'a mut BodyDecoder,
    /// Which of its trailer fields pass.
    pub trailers: TrailerPolicy<'a>,
}

/// The outgoing side: a socket, the pending output (which may hold the head already), and how
/// the body is delimited on it; `written` counts the bytes that went out (head, framing and
/// payload), which the access log reports whether the transfer ends well or not.
pub struct Sink<'a, D> {
    pub stream: &'a mut D,
    pub out: &'a mut BytesMut,
    pub framing: OutFraming,
    pub written: u64,
}

impl<'a, D> Sink<'a, D> {
    pub fn new(stream: &'a mut D, out: &'a mut BytesMut, framing: OutFraming) -> Self {
        Sink {
            stream,
            out,
            framing,
            written: 0,
        }
    }
}

/// One body on its way: what has moved so far.
struct Progress {
    moved: u64,
    /// Some byte (head or body) reached the destination.
    sent_any: bool,
    /// The last-chunk went out ahead of the first trailer field passed on.
    trailer_started: bool,
}

/// Streams the rest of the body. The sink's output may hold bytes to send first (the message
/// head); everything is flushed on return. Returns the payload bytes moved.
pub async fn transfer_body<S: BodyIo, D: BodyIo>(
    mut src: Source<'_, S>,
    dst: &mut Sink<'_, D>,
    io_timeout: Duration,
    max_bytes: Option<u64>,
) -> Result<u64, TransferError> {
    let mut p = Progress {
        moved: 0,
        sent_any: false,
        trailer_started: false,
    };
    loop {
        let step = src.decoder.decode(src.buf);
        match step.map_err(|e| p.source_failed(SourceFault::Framing(e)))? {
            Decoded::Data(data) => {
                p.moved += data.len() as u64;
                if max_bytes.is_some_and(|max| p.moved > max) {
                    return Err(TransferError::TooLarge);
                }
                send_data(dst, data, io_timeout, &mut p).await?;
            }
            Decoded::Trailer(field) => {
                // Passed on only where the outgoing body is chunked too (an HTTP/1.0 client's
                // close-delimited body has no place for them, so they are dropped, as RFC 9110
                // §6.5.1 allows).
                if dst.framing == OutFraming::Chunked && src.trailers.passes(&field) {
                    if !p.trailer_started {
                        dst.out.extend_from_slice(b"0\r\n");
                        p.trailer_started = true;
                    }
                    dst.out.extend_from_slice(&field);
                    dst.out.extend_from_slice(b"\r\n");
                }
            }
            Decoded::NeedMore => {
                // Send what we have before waiting, so the destination sees progress.
                flush(dst, io_timeout, &mut p).await?;
                refill(&mut src, dst, io_timeout, max_bytes, &mut p).await?;
            }
            Decoded::Done => {
                if dst.framing == OutFraming::Chunked {
                    let end: &[u8] = if p.trailer_started {
                        b"\r\n"
                    } else {
                        b"0\r\n\r\n"
                    };
                    dst.out.extend_from_slice(end);
                }
                flush(dst, io_timeout, &mut p).await?;
                return Ok(p.moved);
            }
        }
    }
}

impl Progress {
    fn source_failed(&self, fault: SourceFault) -> TransferError {
        TransferError::Source {
            fault,
            sent_any: self.sent_any,
        }
    }
}

/// Frames one piece of payload into the pending output, or writes a large one as it is.
async fn send_data<D: BodyIo>(
    dst: &mut Sink<'_, D>,
    data: Bytes,
    io_timeout: Duration,
    p: &mut Progress,
) -> Result<(), TransferError> {
    let Some(large) = frame(dst.out, dst.framing, data) else {
        return Ok(());
    };
    let len = (dst.out.len() + large.len()) as u64;
    let written = if dst.out.is_empty() {
        dst.stream.write_bytes(large, io_timeout).await
    } else {
        dst.stream
            .write_head_and_piece(dst.out, large, io_timeout)
            .await
    };
    written.map_err(TransferError::Destination)?;
    dst.written += len;
    p.sent_any = true;
    if dst.framing == OutFraming::Chunked {
        dst.out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// More of the body from the source: the rest of a large Content-Length body straight through
/// a pipe where both sockets allow it, else one read into the buffer.
async fn refill<S: BodyIo, D: BodyIo>(
    src: &mut Source<'_, S>,
    dst: &mut Sink<'_, D>,
    io_timeout: Duration,
    max_bytes: Option<u64>,
    p: &mut Progress,
) -> Result<(), TransferError> {
    let splice_len = (dst.framing == OutFraming::Length)
        .then(|| src.decoder.length_remaining())
        .flatten()
        .filter(|&left| left >= SPLICE_MIN_BYTES)
        .filter(|&left| max_bytes.is_none_or(|max| p.moved + left <= max));
    let sockets = src.stream.spliceable().zip(dst.stream.spliceable());
    if let (Some(left), Some((from, to))) = (splice_len, sockets) {
        // Boxed: its state (pipe, timers) is large and only big bodies need it.
        let splice = Box::pin(splice_rest(from, to, left, io_timeout, p.sent_any));
        if splice.await? {
            src.decoder.finish_length();
            p.moved += left;
            dst.written += left;
            p.sent_any = true;
            return Ok(());
        }
    }
    let n = src
        .stream
        .read_more(src.buf, BODY_READ_BYTES, io_timeout)
        .await
        .map_err(|e| p.source_failed(SourceFault::Io(e)))?;
    if n == 0 {
        src.decoder
            .finish_at_eof()
            .map_err(|e| p.source_failed(SourceFault::Framing(e)))?;
    }
    Ok(())
}

/// Splices the last `left` bytes of a Content-Length body. `Ok(false)`: splicing could not
/// start (nothing moved), copy instead.
async fn splice_rest(
    src: &TcpStream,
    dst: &TcpStream,
    left: u64,
    io_timeout: Duration,
    sent_any: bool,
) -> Result<bool, TransferError> {
    let failed = |fault, spliced: bool| TransferError::Source {
        fault,
        sent_any: sent_any || spliced,
    };
    match splice::forward_exact(src, dst, left, io_timeout).await {
        Ok(()) => Ok(true),
        Err(SpliceError::Unavailable(e)) => {
            tracing::debug!(error = %e, "splice unavailable; copying the body");
            Ok(false)
        }
        Err(SpliceError::Source { fail, sent_any }) => Err(failed(SourceFault::Io(fail), sent_any)),
        Err(SpliceError::SourceClosed { sent_any }) => {
            Err(failed(SourceFault::Framing(BodyError::Truncated), sent_any))
        }
        Err(SpliceError::Destination(e)) => Err(TransferError::Destination(e)),
    }
}

/// Writes the pending output, noting that the destination has now seen bytes.
async fn flush<D: BodyIo>(
    dst: &mut Sink<'_, D>,
    io_timeout: Duration,
    p: &mut Progress,
) -> Result<(), TransferError> {
    if dst.out.is_empty() {
        return Ok(());
    }
    let len = dst.out.len() as u64;
    dst.stream
        .write_buf(dst.out, io_timeout)
        .await
        .map_err(TransferError::Destination)?;
    dst.written += len;
    p.sent_any = true;
    Ok(())
}

/// Appends `data` to `out` with the outgoing framing; a piece too large to copy is handed back
/// to be written directly (its chunk header, if any, is already in `out`).
fn frame(out: &mut BytesMut, framing: OutFraming, data: Bytes) -> Option<Bytes> {
    if framing == OutFraming::None || data.is_empty() {
        return None;
    }
    if framing == OutFraming::Chunked {
        write_chunk_size(out, data.len());
    }
    let copy_max = match framing {
        OutFraming::Length if !copy_length_pieces() => COALESCE_MAX_LENGTH,
        _ => COALESCE_MAX,
    };
    if data.len() > copy_max {
        return Some(data);
    }
    out.extend_from_slice(&data);
    if framing == OutFraming::Chunked {
        out.extend_from_slice(b"\r\n");
    }
    None
}

/// Always false but in `bench/inproc_ab.sh coalesce=...`'s build, which alternates.
#[cfg(not(feature = "bench-ab"))]
fn copy_length_pieces() -> bool {
    false
}
#[cfg(feature = "bench-ab")]
use crate::net::bench_ab::copy_length_pieces;

fn write_chunk_size(out: &mut BytesMut, len: usize) {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = len;
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_framing() {
        let mut out = BytesMut::new();
        assert!(frame(
            &mut out,
            OutFraming::Chunked,
            Bytes::from_static(b"hello world!!!!!!")
        )
        .is_none());
        assert_eq!(&out[..], b"11\r\nhello world!!!!!!\r\n");
        let big = Bytes::from(vec![b'x'; COALESCE_MAX + 1]);
        let mut out = BytesMut::new();
        assert_eq!(frame(&mut out, OutFraming::Chunked, big.clone()), Some(big));
        assert_eq!(&out[..], b"4001\r\n");
    }

    #[test]
    fn a_content_length_piece_past_4k_is_not_copied() {
        let mut out = BytesMut::from(&b"HTTP/1.1 200 OK\r\n\r\n"[..]);
        let small = Bytes::from(vec![b'x'; COALESCE_MAX_LENGTH]);
        assert!(frame(&mut out, OutFraming::Length, small).is_none());
        assert_eq!(out.len(), 19 + COALESCE_MAX_LENGTH);
        let large = Bytes::from(vec![b'y'; COALESCE_MAX_LENGTH + 1]);
        assert_eq!(
            frame(&mut out, OutFraming::Length, large.clone()),
            Some(large)
        );
        assert_eq!(out.len(), 19 + COALESCE_MAX_LENGTH, "left for the writev");
        // Chunked pieces of that size are still gathered: several may come from one read.
        let mut out = BytesMut::new();
        let chunk = Bytes::from(vec![b'z'; COALESCE_MAX_LENGTH + 1]);
        assert!(frame(&mut out, OutFraming::Chunked, chunk).is_none());
    }

    #[test]
    fn none_framing_discards_and_length_copies_small() {
        let mut out = BytesMut::new();
        assert!(frame(&mut out, OutFraming::None, Bytes::from_static(b"abc")).is_none());
        assert!(out.is_empty());
        assert!(frame(&mut out, OutFraming::Length, Bytes::from_static(b"abc")).is_none());
        assert_eq!(&out[..], b"abc");
    }
}
