//! Reading the upstream's answer: the final response head after the request was sent, or one
//! that arrives while the request body is still streaming. A server may answer before it has
//! the whole body (413 for an upload too large, 401 before a PUT, or a full-duplex API that
//! echoes as it reads); RFC 9112 §9.3 asks the sender to watch for that, and HAProxy forwards
//! such answers. Without watching, the proxy would sit in a blocked write until `io_timeout`,
//! or see the write fail, and the client would get a 502 instead of the server's answer.

use super::error::Failure;
use super::forwarding::write_interim_head;
use super::transfer::TransferError;
use crate::http::{parse_response, RequestHead, ResponseHead};
use crate::net::deadline::Deadline;
use crate::net::io::{write_buf, IoFail};
use crate::net::stream::ClientStream;
use crate::net::stream::SecondHandle;
use crate::net::stream::UpstreamStream;
use crate::upstream::UpstreamConn;
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Read size while waiting for an upstream response head.
const UPSTREAM_HEAD_READ: usize = 16 * 1024;

/// How reading a response head failed.
#[derive(Debug)]
pub enum HeadError {
    /// Closed or reset before any byte of an answer: whether the upstream saw the request is
    /// unknown, which decides whether it may be sent again.
    ClosedBeforeAnswer,
    Failed(Failure),
}

/// Takes the final response head off `buf` if it is complete; interim 1xx answers before it
/// are handed to `interim` (or dropped). 101 is final, and only valid as the answer to an
/// upgrade request.
fn take_final_head(
    buf: &mut BytesMut,
    req: &RequestHead,
    mut interim: impl FnMut(ResponseHead),
) -> Result<Option<ResponseHead>, Failure> {
    loop {
        match parse_response(buf, req.is_head()) {
            Ok(Some(head)) if head.is_interim() => interim(head),
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

/// Where interim answers (102 Processing, 103 Early Hints) go on their way to the client:
/// RFC 9110 §15.2 has a proxy forward them (not to an HTTP/1.0 client, which may not get any).
/// `100 Continue` is not among them: the proxy answers `Expect` itself and does not pass it on.
pub struct Interim<'a> {
    pub client: &'a mut ClientStream,
    pub out: &'a mut BytesMut,
    pub timeout: Duration,
    /// Some interim answer went to the client (so nothing may be retried).
    pub forwarded: bool,
}

impl Interim<'_> {
    async fn forward(&mut self, heads: &mut Vec<ResponseHead>) -> Result<(), HeadError> {
        for head in heads.drain(..).filter(|h| h.status != 100) {
            self.out.clear();
            write_interim_head(self.out, &head);
            write_buf(self.client, self.out, self.timeout)
                .await
                .map_err(|_| HeadError::Failed(Failure::ClientGone))?;
            self.forwarded = true;
        }
        Ok(())
    }
}

/// Reads until a final (non-1xx) response head; interim 1xx answers are forwarded through
/// `interim` where given, else skipped.
pub async fn read_response_head(
    up: &mut UpstreamConn,
    req: &RequestHead,
    deadline: Deadline,
    mut interim: Option<&mut Interim<'_>>,
) -> Result<ResponseHead, HeadError> {
    let mut received_any = false;
    let mut interims = Vec::new();
    loop {
        if !up.rbuf.is_empty() {
            received_any = true;
            let collect = |head| {
                if interim.is_some() {
                    interims.push(head);
                }
            };
            let taken = take_final_head(&mut up.rbuf, req, collect).map_err(HeadError::Failed);
            if let Some(sink) = interim.as_deref_mut() {
                sink.forward(&mut interims).await?;
            }
            if let Some(head) = taken? {
                return Ok(head);
            }
        }
        match up.read_more_until(UPSTREAM_HEAD_READ, deadline).await {
            Ok(0) | Err(IoFail::Io(_)) if !received_any => {
                return Err(HeadError::ClosedBeforeAnswer)
            }
            Ok(0) | Err(IoFail::Io(_)) => {
                return Err(HeadError::Failed(Failure::Upstream(
                    "upstream closed inside the response head",
                )))
            }
            Ok(_) => {}
            Err(IoFail::Timeout) => return Err(HeadError::Failed(Failure::UpstreamTimeout)),
        }
    }
}

/// How sending a streamed request body ended.
pub enum BodySent {
    /// The transfer finished first, well or not.
    Finished(Result<u64, TransferError>),
    /// A final response head arrived first; the transfer has not finished (it stays with the
    /// caller, who may go on with it).
    AnsweredEarly(Box<ResponseHead>),
    /// The upstream sent something that is not a response.
    Broken(Failure),
}

/// A second handle on the upstream stream (a second descriptor of its socket, sharing the TLS
/// session if any), to wait for its answer while the body transfer holds the stream itself.
/// `None` if it could not be had: the body is then just sent.
pub struct Watcher(Option<SecondHandle>);

impl Watcher {
    pub fn new(upstream: &UpstreamStream) -> Watcher {
        match upstream.second_source().open() {
            Ok(watcher) => Watcher(Some(watcher)),
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the upstream for an early answer");
                Watcher(None)
            }
        }
    }

    /// The second handle, to read the rest of an early answer from.
    pub fn into_stream(self) -> Option<SecondHandle> {
        self.0
    }
}

/// Polls `transfer` (the request body going upstream) while watching the upstream for an
/// answer. Bytes the upstream sends meanwhile land in `rbuf`, where `read_response_head` finds
/// them if the transfer finishes first. The transfer is the caller's, pinned: when an answer
/// comes first it is left unfinished, for the caller to go on with or drop.
pub async fn send_body_watching<F>(
    mut transfer: Pin<&mut F>,
    watcher: &Watcher,
    rbuf: &mut BytesMut,
    req: &RequestHead,
) -> BodySent
where
    F: Future<Output = Result<u64, TransferError>>,
{
    let Watcher(Some(watcher)) = watcher else {
        return BodySent::Finished(transfer.await);
    };
    loop {
        monoio::select! {
            // The transfer first: when the body is all sent and the answer is already in, this
            // is a normal exchange, and the upstream connection stays reusable.
            biased;
            sent = &mut transfer => return BodySent::Finished(sent),
            ready = watcher.readable() => {
                let received = ready.and_then(|()| watcher.recv_now(rbuf, UPSTREAM_HEAD_READ));
                match received {
                    Ok(Some(0)) | Err(_) => {
                        // Closed or failed: the transfer will see it too, and the caller then
                        // looks for an answer sent before the close.
                        return BodySent::Finished(transfer.await);
                    }
                    Ok(_) => match take_final_head(rbuf, req, drop) {
                        Ok(Some(head)) => return BodySent::AnsweredEarly(Box::new(head)),
                        Ok(None) => {}
                        Err(f) => return BodySent::Broken(f),
                    },
                }
            }
        }
    }
}
