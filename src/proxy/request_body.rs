//! The request body, as far as the client side is concerned: none, small and already read
//! (kept, so the request can be sent again), or still streaming from the client.

use crate::http::{BodyDecoder, BodyKind, OutFraming, RequestHead};
use bytes::Bytes;

/// Request bodies up to this size that already sit in the read buffer are sent with the head in
/// one write, and kept so the request can be replayed on a retry.
const BUFFERED_BODY_MAX: u64 = 64 * 1024;

/// The request body, as far as the client side is concerned.
pub enum RequestBody {
    Empty,
    /// Complete and already taken off the client connection (`Content-Length: 0` included).
    Buffered(Bytes),
    /// Still (partly) on the client connection; `started` once any of it was consumed.
    Streaming {
        decoder: BodyDecoder,
        started: bool,
    },
}

impl RequestBody {
    pub fn new(req: &RequestHead, rbuf: &mut bytes::BytesMut) -> Self {
        match req.body {
            BodyKind::Empty => RequestBody::Empty,
            BodyKind::Length(n) if n <= BUFFERED_BODY_MAX && rbuf.len() as u64 >= n => {
                RequestBody::Buffered(rbuf.split_to(n as usize).freeze())
            }
            kind => RequestBody::Streaming {
                decoder: BodyDecoder::new(kind),
                started: false,
            },
        }
    }

    /// Fully read from the client, so its connection is positioned at the next request.
    pub fn complete(&self) -> bool {
        match self {
            RequestBody::Empty | RequestBody::Buffered(_) => true,
            RequestBody::Streaming { decoder, .. } => decoder.is_done(),
        }
    }

    /// Still at hand in full, so the request could be sent again.
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Empty | RequestBody::Buffered(_) => true,
            RequestBody::Streaming { started, .. } => !started,
        }
    }

    /// How it goes upstream: as it came, except that a body of unknown length is chunked.
    pub fn framing(&self, req: &RequestHead) -> OutFraming {
        match req.body {
            BodyKind::Empty => OutFraming::None,
            BodyKind::Length(_) => OutFraming::Length,
            BodyKind::Chunked | BodyKind::UntilClose => OutFraming::Chunked,
        }
    }
}
