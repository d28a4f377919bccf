//! Upstream response heads: parse with `httparse`, decide the body framing (RFC 9112 §6.3) and
//! whether the upstream connection may be reused. A malformed head is a 502, never passed on.

use super::body::BodyKind;
use super::head::*;
use bytes::{Bytes, BytesMut};

/// Upstream heads larger than this are refused (nginx's `proxy_buffer_size` is far smaller).
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Upstream header fields beyond this count are refused.
const MAX_RESPONSE_HEADERS: usize = 128;

#[derive(Debug)]
pub struct ResponseHead {
    pub raw: Bytes,
    pub version: Version,
    pub status: u16,
    pub reason: Span,
    /// End-to-end headers forwarded as they came.
    pub headers: HeaderList,
    /// The upstream's Content-Length, passed on verbatim for bodiless HEAD/304 answers.
    pub content_length: Option<Span>,
    pub declared_chunked: bool,
    pub body: BodyKind,
    /// The upstream allows another request on this connection after the body.
    pub reusable: bool,
    /// The `Upgrade` field (the protocol switched to), kept apart from the hop-by-hop headers
    /// so that a 101 answer can pass it on.
    pub upgrade: Option<Span>,
    /// What `Connection` said; the fields it names are hop-by-hop in the trailers too.
    pub connection: ConnectionOptions,
}

impl ResponseHead {
    /// 1xx other than 101: an interim answer, the final one follows on the same connection.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    Malformed(&'static str),
    TooLarge,
}

impl ResponseError {
    pub fn reason(&self) -> &'static str {
        match self {
            ResponseError::Malformed(why) => why,
            ResponseError::TooLarge => "upstream response head too large",
        }
    }
}

/// Parses a response head from the front of `buf`; `request_was_head` makes any body absent.
/// `Ok(None)`: incomplete, read more. On success the head's bytes are split off `buf`.
pub fn parse_response(
    buf: &mut BytesMut,
    request_was_head: bool,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut table = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let Some((len, mut head)) = parse_into(buf, request_was_head, &mut table)? else {
        return Ok(None);
    };
    head.raw = buf.split_to(len).freeze();
    Ok(Some(head))
}

/// Just the status code of a response head, for health probes; `Ok(None)` while incomplete.
pub fn status_of(buf: &[u8]) -> Result<Option<u16>, ResponseError> {
    let mut table = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut res = httparse::Response::new(&mut table);
    let malformed = ResponseError::Malformed("malformed response head");
    match res.parse(buf) {
        Ok(httparse::Status::Complete(_)) => res.code.map(Some).ok_or(malformed),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(malformed),
    }
}

fn parse_into<'b>(
    buf: &'b [u8],
    request_was_head: bool,
    table: &mut [httparse::Header<'b>],
) -> Result<Option<(usize, ResponseHead)>, ResponseError> {
    let mut res = httparse::Response::new(table);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD_BYTES => {
            return Err(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed("malformed upstream response head")),
    };
    if len > MAX_RESPONSE_HEAD_BYTES {
        return Err(ResponseError::TooLarge);
    }
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(ResponseError::Malformed("malformed status line"));
    };
    // httparse takes any three digits; 600-999 mean nothing (RFC 9110 §15), so they are a
    // broken response rather than something to relay and count as "unanswered".
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed("status code out of range"));
    }
    let version = Version::from_minor(minor);

    let conn = ConnectionOptions::of(buf, res.headers);
    let mut content_length = ContentLength::default();
    let mut coding = TransferCoding::default();
    let mut headers = HeaderList::new();
    let mut upgrade = None;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade.get_or_insert(Span::within(buf, h.value));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length.add(buf, h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coding.add(h.value);
        } else if !is_hop_by_hop(name) && !conn.names(buf, name) {
            headers.push(HeaderField {
                name: Span::within(buf, name),
                value: Span::within(buf, h.value),
            });
        }
    }
    let length = content_length
        .get()
        .map_err(|_| ResponseError::Malformed("invalid Content-Length from upstream"))?;
    let mut reusable = match version {
        Version::Http11 => !conn.close,
        Version::Http10 => conn.keep_alive && !conn.close,
    };
    let body = if request_was_head || is_bodiless_status(status) {
        BodyKind::Empty
    } else {
        body_framing(coding, length)?
    };
    // RFC 9112 §6.3: with Transfer-Encoding, Content-Length is ignored and the connection must
    // not be reused; a body until close ends the connection anyway.
    if body == BodyKind::UntilClose || (body == BodyKind::Chunked && length.is_some()) {
        reusable = false;
    }
    Ok(Some((
        len,
        ResponseHead {
            raw: Bytes::new(),
            version,
            status,
            reason: Span::within(buf, res.reason.unwrap_or_default().as_bytes()),
            headers,
            content_length: content_length.raw,
            declared_chunked: coding == TransferCoding::Chunked,
            body,
            // A switched connection never goes back to HTTP.
            reusable: reusable && status != 101,
            upgrade,
            connection: conn,
        },
    )))
}

/// How a response body that the status allows is delimited (RFC 9112 §6.3).
fn body_framing(coding: TransferCoding, length: Option<u64>) -> Result<BodyKind, ResponseError> {
    match (coding, length) {
        // TE wins over CL (the caller keeps such a connection out of the pool).
        (TransferCoding::Chunked, _) => Ok(BodyKind::Chunked),
        // A coding the proxy cannot undo (`gzip, chunked`, or `gzip` alone until close): an
        // HTTP/1.0 client cannot be sent any transfer coding, and passing one on would have
        // the client take coded bytes for the content. Refused, as HAProxy does.
        (TransferCoding::ChunkedAfterOthers | TransferCoding::NotChunked, _) => Err(
            ResponseError::Malformed("transfer codings other than chunked"),
        ),
        // Present with no coding at all: read until close.
        (TransferCoding::OnlyEmpty, _) => Ok(BodyKind::UntilClose),
        // `Content-Length: 0` stays a length, so the client is told the body is empty.
        (TransferCoding::Absent, Some(n)) => Ok(BodyKind::Length(n)),
        (TransferCoding::Absent, None) => Ok(BodyKind::UntilClose),
    }
}
