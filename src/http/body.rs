//! Body framing: how a message's body ends, and a decoder that takes body data off the front of a
//! read buffer without copying (each piece is a `Bytes` split from it). Used for both directions.

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size + extensions) accepted.
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    /// Response body that ends when the upstream closes the connection.
    UntilClose,
}

/// How the outgoing side of a transfer delimits the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFraming {
    /// No body is sent (HEAD, 204, 304, or an empty request body).
    None,
    /// Content-Length was sent: the bytes go as they are.
    Length,
    /// Re-framed as chunked.
    Chunked,
    /// HTTP/1.0 client: bytes as they are, end marked by closing the connection.
    Close,
}

impl BodyKind {
    /// No body bytes follow: none at all, or `Content-Length: 0`.
    pub fn is_bodiless(self) -> bool {
        matches!(self, BodyKind::Empty | BodyKind::Length(0))
    }
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body payload, framing removed.
    Data(Bytes),
    /// One field line of a chunked body's trailer section (validated), without its CRLF.
    Trailer(Bytes),
    /// The buffer holds no complete piece: read more, then call again.
    NeedMore,
    /// The body is complete; bytes after it (if any) stay in the buffer.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The peer closed before the body was complete.
    Truncated,
    BadChunkSize,
    BadChunkEnd,
    ChunkLineTooLong,
    BadTrailer,
    TrailerTooLarge,
}

impl BodyError {
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::Truncated => "connection closed before the body was complete",
            BodyError::BadChunkSize => "invalid chunk size",
            BodyError::BadChunkEnd => "chunk data not followed by CRLF",
            BodyError::ChunkLineTooLong => "chunk size line too long",
            BodyError::BadTrailer => "invalid trailer section",
            BodyError::TrailerTooLarge => "trailer section too large",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    ChunkSize,
    ChunkData { remaining: u64 },
    ChunkDataEnd,
    Trailers { seen: usize },
    UntilClose,
    Done,
}

#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length { remaining: n },
            BodyKind::Chunked => State::ChunkSize,
            BodyKind::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come of a Content-Length body (`None` for other framings).
    pub fn length_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            _ => None,
        }
    }

    /// Counts the rest of a Content-Length body as received, when it was moved past the
    /// buffer (spliced).
    pub fn finish_length(&mut self) {
        if matches!(self.state, State::Length { .. }) {
            self.state = State::Done;
        }
    }

    /// Takes the next piece of body off the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Length { remaining } | State::ChunkData { remaining } => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = remaining.min(buf.len() as u64) as usize;
                    let left = remaining - take as u64;
                    self.state = match self.state {
                        State::Length { .. } if left == 0 => State::Done,
                        State::Length { .. } => State::Length { remaining: left },
                        _ if left == 0 => State::ChunkDataEnd,
                        _ => State::ChunkData { remaining: left },
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) =
                        take_line(buf, MAX_CHUNK_LINE_BYTES, BodyError::ChunkLineTooLong)?
                    else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers { seen: 0 }
                    } else {
                        State::ChunkData { remaining: size }
                    };
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::BadChunkEnd);
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers { seen } => {
                    let budget = MAX_TRAILER_BYTES.saturating_sub(seen);
                    let Some(line) = take_line(buf, budget, BodyError::TrailerTooLarge)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if !is_valid_trailer(&line) {
                        return Err(BodyError::BadTrailer);
                    } else {
                        self.state = State::Trailers {
                            seen: seen + line.len() + 2,
                        };
                        return Ok(Decoded::Trailer(line));
                    }
                }
            }
        }
    }

    /// The source reached EOF: fine for a close-delimited body, truncation otherwise.
    pub fn finish_at_eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off `buf`. A bare LF or CR is an error:
/// lenient line endings are where parsers disagree.
fn take_line(
    buf: &mut BytesMut,
    max: usize,
    too_long: BodyError,
) -> Result<Option<Bytes>, BodyError> {
    let Some(lf) = buf.iter().take(max + 2).position(|&b| b == b'\n') else {
        return if buf.len() > max + 1 {
            Err(too_long)
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
        return Err(BodyError::BadChunkSize);
    }
    let line = buf.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

/// `1*HEXDIG *( BWS ";" ext )`; extensions are allowed and ignored, controls are not.
fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::BadChunkSize);
    }
    let rest = &line[digits..];
    let ext_ok = {
        let after_ws = rest
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .map_or(&[][..], |p| &rest[p..]);
        after_ws.is_empty() && rest.is_empty()
            || after_ws.first() == Some(&b';')
                && after_ws
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
    };
    if !ext_ok {
        return Err(BodyError::BadChunkSize);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::BadChunkSize)?;
    u64::from_str_radix(hex, 16).map_err(|_| BodyError::BadChunkSize)
}

/// `name: value` with a token name and no control bytes.
fn is_valid_trailer(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon].iter().all(|&b| super::head::is_tchar(b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || b >= b' ' && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(kind: BodyKind, input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut dec = BodyDecoder::new(kind);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::Trailer(_) => {}
                Decoded::Done => return Ok((out, buf.to_vec())),
                Decoded::NeedMore => {
                    dec.finish_at_eof()?;
                    return Ok((out, buf.to_vec()));
                }
            }
        }
    }

    /// Feeds `input` one byte at a time, as a slow peer would.
    fn decode_bytewise(kind: BodyKind, input: &[u8]) -> Result<Vec<u8>, BodyError> {
        let mut dec = BodyDecoder::new(kind);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            loop {
                match dec.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::Trailer(_) => {}
                    Decoded::NeedMore => break,
                    Decoded::Done => return Ok(out),
                }
            }
        }
        Err(BodyError::Truncated)
    }

    #[test]
    fn length_body_leaves_next_request_in_buffer() {
        let (body, rest) = decode_all(BodyKind::Length(5), b"helloGET / HTTP/1.1").unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(rest, b"GET / HTTP/1.1");
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let input = b"5;foo=bar\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let (body, rest) = decode_all(BodyKind::Chunked, input).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(rest, b"NEXT");
        assert_eq!(
            decode_bytewise(BodyKind::Chunked, input).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn trailer_lines_come_out_one_by_one_after_the_data() {
        let input = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nServer-Timing: db;dur=5\r\n\r\nNEXT";
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        let mut buf = BytesMut::from(&input[..]);
        let mut steps = Vec::new();
        loop {
            match dec.decode(&mut buf).unwrap() {
                Decoded::Done => break,
                step => steps.push(step),
            }
        }
        assert_eq!(
            steps,
            [
                Decoded::Data(Bytes::from_static(b"abc")),
                Decoded::Trailer(Bytes::from_static(b"X-Sum: 1")),
                Decoded::Trailer(Bytes::from_static(b"Server-Timing: db;dur=5")),
            ]
        );
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nX(y): 1\r\n\r\n",
            b"5\r\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(BodyKind::Chunked, bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_line_and_trailer_caps() {
        let long = format!(
            "5;{}\r\nhello\r\n0\r\n\r\n",
            "x".repeat(MAX_CHUNK_LINE_BYTES)
        );
        assert_eq!(
            decode_all(BodyKind::Chunked, long.as_bytes()),
            Err(BodyError::ChunkLineTooLong)
        );
        let trailers = format!(
            "0\r\n{}\r\n",
            "X-A: b\r\n".repeat(MAX_TRAILER_BYTES / 8 + 1)
        );
        assert_eq!(
            decode_all(BodyKind::Chunked, trailers.as_bytes()),
            Err(BodyError::TrailerTooLarge)
        );
    }

    #[test]
    fn truncation_is_an_error_except_until_close() {
        assert_eq!(
            decode_all(BodyKind::Length(10), b"short"),
            Err(BodyError::Truncated)
        );
        assert_eq!(
            decode_all(BodyKind::Chunked, b"5\r\nhel"),
            Err(BodyError::Truncated)
        );
        assert_eq!(
            decode_all(BodyKind::UntilClose, b"all of it").unwrap().0,
            b"all of it"
        );
    }
}
