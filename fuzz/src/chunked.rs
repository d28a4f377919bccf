//! A reference chunked decoder written from RFC 9112 §7.1 for clarity, not speed: it sees the
//! whole input at once and walks the grammar with an index.
//!
//! ```text
//! chunked-body    = *chunk last-chunk trailer-section CRLF
//! chunk           = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk      = 1*("0") [ chunk-ext ] CRLF
//! trailer-section = *( field-line CRLF )
//! field-line      = field-name ":" OWS field-value OWS
//! ```
//! Chunk extensions are checked loosely, as a recipient ignores them: `BWS ";"` followed by any
//! bytes but controls (HTAB allowed). Every line ends in CRLF; a CR or LF elsewhere is an error.

use crate::fields::{is_field_value, is_token};

/// What the grammar makes of a whole input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A complete body: its payload, its trailer field lines (without CRLF), and the offset
    /// where the bytes after it begin.
    Body {
        data: Vec<u8>,
        trailers: Vec<Vec<u8>>,
        end: usize,
    },
    /// The input breaks the grammar.
    Invalid,
    /// A valid beginning that stops before the body is complete.
    Truncated,
    /// Valid so far but past one of the decoder's size limits: no answer is required there.
    OverLimit,
}

/// The size limits a decoder may set (the grammar itself has none), and how trailer field names
/// are checked.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Longest chunk-size line (size and extensions, without CRLF).
    pub line_bytes: usize,
    /// Most hex digits in a chunk size (leading zeros included).
    pub size_digits: usize,
    /// Largest trailer section: each field line with its CRLF, without the final CRLF.
    pub trailer_bytes: usize,
    /// `true`: field names are tokens, as RFC 9110 §5.1 says. `false`: any visible ASCII but ':'.
    pub token_trailer_names: bool,
}

pub fn decode(input: &[u8], rules: &Rules) -> Reference {
    match decode_inner(input, rules) {
        Ok(body) | Err(body) => body,
    }
}

// `Err` carries every outcome other than a complete body, so `?` can end the walk.
fn decode_inner(input: &[u8], rules: &Rules) -> Result<Reference, Reference> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let line = take_line(input, &mut at)?;
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || !is_chunk_ext(&line[digits..]) {
            return Err(Reference::Invalid);
        }
        if line.len() > rules.line_bytes || digits > rules.size_digits {
            return Err(Reference::OverLimit);
        }
        let size = line[..digits]
            .iter()
            .try_fold(0u64, |acc, &b| {
                acc.checked_mul(16)?.checked_add(hex_value(b))
            })
            .ok_or(Reference::OverLimit)?;
        if size == 0 {
            break;
        }
        let available = (input.len() - at) as u64;
        if available < size {
            return Err(Reference::Truncated);
        }
        let end = at + size as usize;
        data.extend_from_slice(&input[at..end]);
        at = end;
        match input.get(at..at + 2) {
            Some(b"\r\n") => at += 2,
            None if b"\r\n".starts_with(&input[at..]) => return Err(Reference::Truncated),
            _ => return Err(Reference::Invalid),
        }
    }
    let mut trailer_bytes = 0;
    let mut trailers = Vec::new();
    loop {
        let line = take_line(input, &mut at)?;
        if line.is_empty() {
            return Ok(Reference::Body {
                data,
                trailers,
                end: at,
            });
        }
        if !is_field_line(line, rules.token_trailer_names) {
            return Err(Reference::Invalid);
        }
        trailer_bytes += line.len() + 2;
        if trailer_bytes > rules.trailer_bytes {
            return Err(Reference::OverLimit);
        }
        trailers.push(line.to_vec());
    }
}

/// The line starting at `*at`, without its CRLF; `*at` moves past the CRLF.
fn take_line<'a>(input: &'a [u8], at: &mut usize) -> Result<&'a [u8], Reference> {
    let rest = &input[*at..];
    let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Err(Reference::Truncated);
    };
    match (rest[i], rest.get(i + 1)) {
        (b'\r', Some(b'\n')) => {
            *at += i + 2;
            Ok(&rest[..i])
        }
        (b'\r', None) => Err(Reference::Truncated),
        _ => Err(Reference::Invalid),
    }
}

/// Empty, or `BWS ";"` and then no control bytes but HTAB.
fn is_chunk_ext(s: &[u8]) -> bool {
    let after_bws = s.iter().position(|&b| b != b' ' && b != b'\t');
    match after_bws {
        None => s.is_empty(),
        Some(p) => s[p] == b';' && s.iter().all(|&b| b == b'\t' || !(b < 0x20 || b == 0x7f)),
    }
}

fn is_field_line(line: &[u8], token_names: bool) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = &line[..colon];
    let name_ok = if token_names {
        is_token(name)
    } else {
        !name.is_empty() && name.iter().all(u8::is_ascii_graphic)
    };
    name_ok && is_field_value(&line[colon + 1..])
}

fn hex_value(b: u8) -> u64 {
    (b as char).to_digit(16).map_or(0, u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        line_bytes: 64,
        size_digits: 15,
        trailer_bytes: 64,
        token_trailer_names: true,
    };

    fn body(data: &[u8], end: usize) -> Reference {
        with_trailers(data, &[], end)
    }

    fn with_trailers(data: &[u8], trailers: &[&[u8]], end: usize) -> Reference {
        Reference::Body {
            data: data.to_vec(),
            trailers: trailers.iter().map(|t| t.to_vec()).collect(),
            end,
        }
    }

    #[test]
    fn valid_bodies() {
        assert_eq!(decode(b"0\r\n\r\n", &RULES), body(b"", 5));
        assert_eq!(decode(b"000\r\n\r\nXY", &RULES), body(b"", 7));
        assert_eq!(decode(b"3\r\nabc\r\n0\r\n\r\n", &RULES), body(b"abc", 13));
        assert_eq!(
            decode(b"A;x=\"y z\"\r\n0123456789\r\n0 ;q\r\nT: v\r\n\r\n", &RULES).clone(),
            with_trailers(b"0123456789", &[b"T: v"], 37)
        );
        assert_eq!(
            decode(b"1\r\n\n\r\n0\r\nX-A:\t b \r\n\r\n", &RULES),
            with_trailers(b"\n", &[b"X-A:\t b "], 21)
        );
    }

    #[test]
    fn invalid_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"3\nabc\r\n0\r\n\r\n",
            b"3\r\nabcX\n0\r\n\r\n",
            b"3 \r\nabc\r\n0\r\n\r\n",
            b"3;a\x01\r\nabc\r\n0\r\n\r\n",
            b"3\r\r\nabc\r\n0\r\n\r\n",
            b"0\r\nA b: c\r\n\r\n",
            b"0\r\nA(b): c\r\n\r\n",
            b"0\r\n: c\r\n\r\n",
            b"0\r\nA: c\x7f\r\n\r\n",
            b"0\r\n\n",
        ] {
            assert_eq!(
                decode(bad, &RULES),
                Reference::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn truncated_and_over_limit() {
        for short in [
            &b""[..],
            b"3",
            b"3\r",
            b"3\r\nab",
            b"3\r\nabc\r",
            b"0\r\n",
            b"0\r\nA: b\r\n",
        ] {
            assert_eq!(
                decode(short, &RULES),
                Reference::Truncated,
                "{:?}",
                String::from_utf8_lossy(short)
            );
        }
        assert_eq!(
            decode(b"0000000000000001\r\n", &RULES),
            Reference::OverLimit
        );
        assert_eq!(decode(b"fffffffffffffff\r\n", &RULES), Reference::Truncated);
        let lenient = Rules {
            token_trailer_names: false,
            ..RULES
        };
        assert_eq!(
            decode(b"0\r\nA(b): c\r\n\r\n", &lenient),
            with_trailers(b"", &[b"A(b): c"], 14)
        );
        let long = format!("1;{}\r\n", "x".repeat(63));
        assert_eq!(decode(long.as_bytes(), &RULES), Reference::OverLimit);
    }
}
