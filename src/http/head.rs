//! Rules shared by request and response heads: spans into the raw head, token lists,
//! Content-Length and Transfer-Encoding validation, and which headers are hop-by-hop.

/// A byte range inside a message's raw head (which is kept as one `Bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span that `part` occupies in `base`; `part` must be a sub-slice of `base`.
    pub fn within(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    pub fn of<'a>(&self, raw: &'a [u8]) -> &'a [u8] {
        raw.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// The part `start..end` of this span (offsets relative to its start).
    pub fn sub(&self, start: usize, end: usize) -> Span {
        let end = (self.start as usize + end).min(self.end as usize);
        let start = (self.start as usize + start).min(end);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
}

/// The header fields of a message, inline up to a typical count (no allocation per request).
pub type HeaderList = smallvec::SmallVec<[HeaderField; 16]>;

/// One header field kept for forwarding.
#[derive(Debug, Clone, Copy)]
pub struct HeaderField {
    pub name: Span,
    pub value: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A byte class by table (one lookup per byte on the request path): ASCII letters and digits,
/// and `extra`.
pub(crate) const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Token characters (RFC 9110 §5.6.2), by table: looked up per byte of names and hosts.
const TCHAR: [bool; 256] = byte_class(b"!#$%&'*+-.^_`|~");

/// A token character (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// A non-empty token (RFC 9110 §5.6.2).
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Trimmed, non-empty elements of a comma-separated header value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Headers a proxy never forwards: they describe one connection, not the message
/// (RFC 9110 §7.6.1). Transfer-Encoding and Content-Length are re-framed by the proxy.
/// `Trailer` is not among them: it goes wherever the trailer fields it announces can go.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
        b"http2-settings",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

impl Version {
    /// From httparse's minor version (it accepts only HTTP/1.0 and HTTP/1.1).
    pub fn from_minor(minor: u8) -> Version {
        if minor == 1 {
            Version::Http11
        } else {
            Version::Http10
        }
    }
}

/// What the `Connection` header(s) said.
#[derive(Debug, Default)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    /// Other tokens: names of further hop-by-hop headers to remove. Allocates only when present.
    pub named: Vec<Span>,
}

impl ConnectionOptions {
    /// Collects every `Connection` field of a parsed head; done first, because it can name
    /// further headers to drop.
    pub fn of(raw: &[u8], headers: &[httparse::Header<'_>]) -> Self {
        let mut conn = ConnectionOptions::default();
        for h in headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        {
            conn.add(raw, h.value);
        }
        conn
    }

    pub fn add(&mut self, raw: &[u8], value: &[u8]) {
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.named.push(Span::within(raw, token));
            }
        }
    }

    /// Whether `name` is listed as a connection option, so a field of that name is hop-by-hop
    /// (RFC 9110 §7.6.1), `close` and `keep-alive` included.
    pub fn names(&self, raw: &[u8], name: &[u8]) -> bool {
        (self.close && name.eq_ignore_ascii_case(b"close"))
            || (self.keep_alive && name.eq_ignore_ascii_case(b"keep-alive"))
            || self
                .named
                .iter()
                .any(|s| s.of(raw).eq_ignore_ascii_case(name))
    }
}

/// Accumulates Content-Length headers: every value must be the same plain decimal number.
#[derive(Debug, Default)]
pub struct ContentLength {
    value: Option<u64>,
    invalid: bool,
    pub raw: Option<Span>,
}

impl ContentLength {
    pub fn add(&mut self, raw: &[u8], value: &[u8]) {
        // A list form ("5, 5") is refused outright: stricter than RFC 9110's allowance, as HAProxy.
        let parsed = parse_decimal(trim_ows(value));
        match (parsed, self.value) {
            (Some(v), None) if !self.invalid => {
                self.value = Some(v);
                self.raw = Some(Span::within(raw, value));
            }
            (Some(v), Some(prev)) if v == prev => {}
            _ => self.invalid = true,
        }
    }

    /// `Ok(None)` when absent, `Err` when malformed or contradictory.
    pub fn get(&self) -> Result<Option<u64>, InvalidContentLength> {
        if self.invalid {
            Err(InvalidContentLength)
        } else {
            Ok(self.value)
        }
    }
}

/// Content-Length headers that are malformed or disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidContentLength;

/// Digits only: no sign, no whitespace inside, no overflow.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit()
            .then(|| acc.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Transfer-Encoding as declared (possibly over several header lines).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub enum TransferCoding {
    #[default]
    Absent,
    /// Present, but every field was empty: no coding at all.
    OnlyEmpty,
    /// Exactly `chunked`.
    Chunked,
    /// `chunked` last, after other codings we cannot undo (e.g. `gzip, chunked`).
    ChunkedAfterOthers,
    /// Final coding is not chunked (or unknown, like `xchunked`).
    NotChunked,
}

impl TransferCoding {
    /// Adds one field's codings; empty list elements are ignored (RFC 9110 §5.6.1), but a
    /// field that is present with no coding at all is remembered as such.
    pub fn add(&mut self, value: &[u8]) {
        if *self == TransferCoding::Absent && tokens(value).next().is_none() {
            *self = TransferCoding::OnlyEmpty;
        }
        for token in tokens(value) {
            let chunked = token.eq_ignore_ascii_case(b"chunked");
            *self = match (*self, chunked) {
                (TransferCoding::Absent | TransferCoding::OnlyEmpty, true) => {
                    TransferCoding::Chunked
                }
                (_, true) => TransferCoding::ChunkedAfterOthers,
                (_, false) => TransferCoding::NotChunked,
            };
        }
    }
}

pub fn is_bodiless_status(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_rules() {
        let mut cl = ContentLength::default();
        cl.add(b"", b"42");
        cl.add(b"", b" 42 ");
        assert_eq!(cl.get(), Ok(Some(42)));
        for bad in [
            &b"+1"[..],
            b"-1",
            b"1 2",
            b"0x10",
            b"",
            b"99999999999999999999",
            b"5, 5",
        ] {
            let mut cl = ContentLength::default();
            cl.add(b"", bad);
            assert_eq!(
                cl.get(),
                Err(InvalidContentLength),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut cl = ContentLength::default();
        cl.add(b"", b"1");
        cl.add(b"", b"2");
        assert_eq!(cl.get(), Err(InvalidContentLength));
    }

    #[test]
    fn transfer_coding_rules() {
        let te = |vals: &[&[u8]]| {
            let mut t = TransferCoding::default();
            vals.iter().for_each(|v| t.add(v));
            t
        };
        assert_eq!(te(&[b"chunked"]), TransferCoding::Chunked);
        assert_eq!(te(&[b"Chunked "]), TransferCoding::Chunked);
        assert_eq!(te(&[b"gzip, chunked"]), TransferCoding::ChunkedAfterOthers);
        assert_eq!(
            te(&[b"gzip", b"chunked"]),
            TransferCoding::ChunkedAfterOthers
        );
        assert_eq!(te(&[b"chunked, identity"]), TransferCoding::NotChunked);
        assert_eq!(te(&[b"xchunked"]), TransferCoding::NotChunked);
        assert_eq!(te(&[b""]), TransferCoding::OnlyEmpty);
        assert_eq!(te(&[b"", b"chunked"]), TransferCoding::Chunked);
        assert_eq!(te(&[b"chunked", b" , "]), TransferCoding::Chunked);
        assert_eq!(
            te(&[b"chunked", b"chunked"]),
            TransferCoding::ChunkedAfterOthers
        );
    }

    #[test]
    fn connection_tokens() {
        let raw = b"close, X-Secret , keep-alive";
        let mut c = ConnectionOptions::default();
        c.add(raw, raw);
        assert!(c.close && c.keep_alive);
        assert!(c.names(raw, b"x-secret"));
        assert!(!c.names(raw, b"x-other"));
        // A field named like an option is hop-by-hop too, `close` included (RFC 9110 §7.6.1).
        assert!(c.names(raw, b"Close") && c.names(raw, b"keep-alive"));
        let only = b"x-a";
        let mut c = ConnectionOptions::default();
        c.add(only, only);
        assert!(!c.names(only, b"close"));
    }
}
