//! Chunked bodies: `BodyDecoder` never panics, never yields an empty piece (re-framed, that
//! would be a last-chunk), gives the same payload and the same end whether the body arrives in
//! one read or in many small ones (trailer fields included), and agrees with the reference decoder in
//! `ringproxy_fuzz::chunked` (strict RFC 9112 §7.1 grammar) wherever the reference is defined.
//!
//! Input: two parameter bytes, then the bytes that follow the message head.
//!   [0] largest read = 1 + b % 64 bytes
//!   [1] seed for the read lengths
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringproxy::http::body::{MAX_CHUNK_LINE_BYTES, MAX_TRAILER_BYTES};
use ringproxy::http::{BodyDecoder, BodyError, BodyKind, Decoded};
use ringproxy_fuzz::chunked::{self, Reference, Rules};
use ringproxy_fuzz::{input, known};

/// How a decoder ended: the payload, the trailer field lines, and the bytes left after the body
/// (or the error).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    data: Vec<u8>,
    trailers: Vec<Vec<u8>>,
    end: Result<Vec<u8>, BodyError>,
}

fuzz_target!(|data: &[u8]| {
    let Some((p, body)) = input::params::<2>(data) else {
        return;
    };
    let whole = decode_in_reads(body, &[body.len()]);
    let reads = input::pieces(body.len(), 1 + usize::from(p[0]) % 64, p[1]);
    let pieces = decode_in_reads(body, &reads);
    assert_eq!(whole, pieces, "one read and reads of {reads:?} disagree");

    let rules = Rules {
        line_bytes: MAX_CHUNK_LINE_BYTES,
        // The decoder takes at most 15 hex digits (60 bits), leading zeros included.
        size_digits: 15,
        trailer_bytes: MAX_TRAILER_BYTES,
        token_trailer_names: !known::TRAILER_NAMES_NOT_TOKENS,
    };
    match (chunked::decode(body, &rules), &whole.end) {
        (Reference::OverLimit, _) => {}
        (
            Reference::Body {
                data,
                trailers,
                end,
            },
            Ok(rest),
        ) => {
            assert_eq!(whole.data, data, "payload differs from the reference");
            assert_eq!(
                whole.trailers, trailers,
                "trailers differ from the reference"
            );
            assert_eq!(
                &rest[..],
                &body[end..],
                "body ends elsewhere than in the reference"
            );
        }
        (Reference::Invalid | Reference::Truncated, Err(_)) => {}
        (reference, _) => panic!("reference says {reference:?}, the decoder {whole:?}"),
    }
});

/// Delivers `body` in reads of the given lengths, decoding after each as the proxy does, and
/// reports end of input after the last.
fn decode_in_reads(body: &[u8], reads: &[usize]) -> Outcome {
    let mut decoder = BodyDecoder::new(BodyKind::Chunked);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut trailers = Vec::new();
    let mut fed = 0;
    for &n in reads {
        buf.extend_from_slice(&body[fed..fed + n]);
        fed += n;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(piece)) => {
                    assert!(!piece.is_empty(), "empty data piece");
                    out.extend_from_slice(&piece);
                }
                Ok(Decoded::Trailer(field)) => trailers.push(field.to_vec()),
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Done) => {
                    assert_eq!(
                        decoder.decode(&mut buf),
                        Ok(Decoded::Done),
                        "Done must stay Done"
                    );
                    assert_eq!(decoder.finish_at_eof(), Ok(()));
                    buf.extend_from_slice(&body[fed..]);
                    return Outcome {
                        data: out,
                        trailers,
                        end: Ok(buf.to_vec()),
                    };
                }
                Err(e) => {
                    return Outcome {
                        data: out,
                        trailers,
                        end: Err(e),
                    }
                }
            }
        }
    }
    let end = decoder.finish_at_eof().map(|()| buf.to_vec());
    Outcome {
        data: out,
        trailers,
        end,
    }
}
