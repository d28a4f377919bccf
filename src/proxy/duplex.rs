//! An answer that comes while the request body is still streaming (full-duplex APIs answer at
//! once and echo as they read; a 413 or 401 answers before the upload ends): relayed to the
//! client at once while the body goes on, both directions at the same time, so neither waits
//! for the other and bodies larger than the socket buffers never deadlock.

use super::error::Failure;
use super::forwarding::{
    response_framing, write_response_head, Redirects, ResponsePolicy, TrailerPolicy,
};
use super::transfer::{transfer_body, Sink, Source, TransferError};
use crate::http::{BodyDecoder, RequestHead, ResponseHead};
use crate::net::stream::SecondHandle;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The answer to a request whose body was still streaming, relayed both ways at once.
pub struct Duplexed {
    pub status: u16,
    /// From sending the request to the answer's head.
    pub head_after: Duration,
    /// What reached the client, and how relaying ended.
    pub relayed: Relayed,
}

/// Relays `resp` to the client while `transfer` goes on sending the request body, both at
/// once (the upstream may need more of the body before it sends more of the answer, so neither
/// may wait for the other). Through second handles on both streams (`ends`: the upstream's to
/// read, the client's to write): by readiness and non-blocking calls on plain sockets, which the
/// body transfer may be splicing (that puts them in non-blocking mode); sharing the session of
/// a TLS one. Ends when the response is complete,
/// with the client told `Connection: close` (whether the body will complete is not known when
/// the head goes out). A client body that fails meanwhile aborts the exchange: the client
/// connection is reset.
pub async fn relay_duplex<F>(
    mut transfer: Pin<&mut F>,
    ends: (SecondHandle, SecondHandle),
    out: &mut bytes::BytesMut,
    up_rbuf: &mut bytes::BytesMut,
    answer: EarlyAnswer<'_>,
    io_timeout: Duration,
) -> Result<Relayed, Failure>
where
    F: Future<Output = Result<u64, TransferError>>,
{
    let (mut reader, mut writer) = ends;
    let EarlyAnswer {
        req,
        resp,
        redirects,
        policy,
    } = answer;
    let framing = response_framing(req, resp);
    out.clear();
    write_response_head(out, req, resp, framing, false, redirects.as_ref(), policy);
    let mut decoder = BodyDecoder::new(resp.body);
    let source = Source {
        stream: &mut reader,
        buf: up_rbuf,
        decoder: &mut decoder,
        trailers: TrailerPolicy::of_response(resp),
    };
    let mut sink = Sink::new(&mut writer, out, framing);
    let outcome = {
        let mut relay = std::pin::pin!(transfer_body(source, &mut sink, io_timeout, None));
        let mut body_done = false;
        loop {
            monoio::select! {
                biased;
                relayed = &mut relay => break relayed.map(drop),
                sent = &mut transfer, if !body_done => match sent {
                    // All sent, or the upstream stopped taking it (closed or reset its side):
                    // the answer goes on alone.
                    Ok(_) | Err(TransferError::Destination(_)) => body_done = true,
                    Err(e) => {
                        tracing::debug!(error = ?e, "client body failed while the answer was streaming");
                        return Err(Failure::Aborted("client body failed while the answer was streaming"));
                    }
                },
            }
        }
    };
    Ok(Relayed {
        written: sink.written,
        outcome,
    })
}

/// The answer that came early: to which request, how the backend's redirects are rewritten,
/// and the route's response field edits.
pub struct EarlyAnswer<'a> {
    pub req: &'a RequestHead,
    pub resp: &'a ResponseHead,
    pub redirects: Option<Redirects<'a>>,
    pub policy: ResponsePolicy<'a>,
}

/// How relaying the response went: the bytes the client got, and whether it was whole.
pub struct Relayed {
    pub written: u64,
    pub outcome: Result<(), TransferError>,
}
