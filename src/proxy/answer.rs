//! Reading the upstream's answer: the final response head after the request was sent, or one
//! that arrives while the request body is still streaming. A server may answer before it has
//! the whole body (413 for an upload too large, 401 before a PUT) and then stop reading or
//! close; RFC 9112 §9.3 asks the sender to watch for that, and HAProxy forwards such answers.
//! Without watching, the proxy would sit in a blocked write until `io_timeout`, or see the write
//! fail, and the client would get a 502 instead of the server's answer.

use super::forward::{Failure, HeadFailure};
use super::io::{dup_stream, read_more_until, IoFail};
use super::transfer::TransferError;
use crate::http::{parse_response, RequestHead, ResponseHead};
use crate::upstream::UpstreamConn;
use bytes::{BufMut, BytesMut};
use monoio::net::TcpStream;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Read size while waiting for an upstream response head.
const UPSTREAM_HEAD_READ: usize = 16 * 1024;

/// Takes the final response head off `buf` if it is complete; interim 1xx answers are dropped.
/// 101 is final, and only valid as the answer to an upgrade request.
fn take_final_head(buf: &mut BytesMut, req: &RequestHead) -> Result<Option<ResponseHead>, Failure> {
    loop {
        match parse_response(buf, req.is_head()) {
            Ok(Some(head)) if head.is_interim() => continue,
            Ok(Some(head)) if head.status == 101 && req.upgrade.is_none() => {
                return Err(Failure::Upstream(
                    "101 Switching Protocols without an upgrade request",
                ))
            }
            Ok(head) => return Ok(head),
            Err(e) => return Err(Failure::Upstream(e.reason())),
        }
    }
}

/// Reads until a final (non-1xx) response head; interim 1xx answers are skipped.
pub async fn read_response_head(
    up: &mut UpstreamConn,
    req: &RequestHead,
    deadline: Instant,
) -> Result<ResponseHead, HeadFailure> {
    let mut received_any = false;
    loop {
        if !up.rbuf.is_empty() {
            received_any = true;
            if let Some(head) = take_final_head(&mut up.rbuf, req).map_err(HeadFailure::Failed)? {
                return Ok(head);
            }
        }
        match read_more_until(&mut up.stream, &mut up.rbuf, UPSTREAM_HEAD_READ, deadline).await {
            Ok(0) | Err(IoFail::Io(_)) if !received_any => return Err(HeadFailure::Stale),
            Ok(0) | Err(IoFail::Io(_)) => {
                return Err(HeadFailure::Failed(Failure::Upstream(
                    "upstream closed inside the response head",
                )))
            }
            Ok(_) => {}
            Err(IoFail::Timeout) => return Err(HeadFailure::Failed(Failure::UpstreamTimeout)),
        }
    }
}

/// How sending a streamed request body ended.
pub enum BodySent {
    /// The transfer finished first, well or not.
    Finished(Result<u64, TransferError>),
    /// A final response head arrived first; the rest of the body was not sent.
    AnsweredEarly(Box<ResponseHead>),
    /// The upstream sent something that is not a response.
    Broken(Failure),
}

/// A second descriptor of the upstream socket, to wait for its answer while the body transfer
/// holds the stream itself. `None` if it could not be had: the body is then just sent.
pub struct Watcher(Option<TcpStream>);

impl Watcher {
    pub fn new(upstream: &TcpStream) -> Watcher {
        match dup_stream(upstream) {
            Ok(watcher) => Watcher(Some(watcher)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the upstream for an early answer");
                Watcher(None)
            }
        }
    }
}

/// Runs `transfer` (the request body going upstream) while watching the upstream for an answer.
/// Bytes the upstream sends meanwhile land in `rbuf`, where `read_response_head` finds them if
/// the transfer finishes first.
pub async fn send_body_watching(
    transfer: impl Future<Output = Result<u64, TransferError>>,
    watcher: Watcher,
    rbuf: &mut BytesMut,
    req: &RequestHead,
) -> BodySent {
    let Watcher(Some(watcher)) = watcher else {
        return BodySent::Finished(transfer.await);
    };
    let mut transfer = std::pin::pin!(transfer);
    loop {
        monoio::select! {
            // The transfer first: when the body is all sent and the answer is already in, this
            // is a normal exchange, and the upstream connection stays reusable.
            biased;
            sent = &mut transfer => return BodySent::Finished(sent),
            ready = watcher.readable(false) => {
                let received = ready.and_then(|()| receive_now(&watcher, rbuf));
                match received {
                    Ok(Some(0)) | Err(_) => {
                        // Closed or failed: the transfer will see it too, and the caller then
                        // looks for an answer sent before the close.
                        return BodySent::Finished(transfer.await);
                    }
                    Ok(_) => match take_final_head(rbuf, req) {
                        Ok(Some(head)) => return BodySent::AnsweredEarly(Box::new(head)),
                        Ok(None) => {}
                        Err(f) => return BodySent::Broken(f),
                    },
                }
            }
        }
    }
}

/// Appends what the socket holds right now, without waiting. `Ok(None)`: nothing after all
/// (a spurious wake-up).
fn receive_now(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    buf.reserve(UPSTREAM_HEAD_READ);
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
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.advance_mut(n as usize) };
    Ok(Some(n as usize))
}
