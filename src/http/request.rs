//! Client request heads: parse with `httparse`, then apply the proxy's framing rules
//! (RFC 9112 §6, stricter where two parsers could disagree) and sort the headers into
//! forwarded, hop-by-hop and rewritten ones.

use super::body::BodyKind;
use super::head::*;
use super::target::{self, TargetForm};
use bytes::{Bytes, BytesMut};

/// Heads up to this many header fields are parsed with a stack table; larger limits use the heap.
const STACK_HEADERS: usize = 128;

/// What a request head may be (from `[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_request_line_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// A larger Content-Length is refused up front (413); `None` = unlimited.
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug)]
pub struct RequestHead {
    pub raw: Bytes,
    pub method: Span,
    /// The request target as received (for logs).
    pub target: Span,
    /// What goes upstream as the target: the origin-form path and query. Empty, or starting
    /// with `?`, for an absolute-form target without a path: the writer puts `/` in front.
    pub path: Span,
    pub version: Version,
    /// The end-to-end header fields, as they came (all but Host, which is `host`). What the
    /// proxy forwards of them, adds and rewrites is `proxy::forwarding`'s business.
    pub headers: HeaderList,
    /// The authority of an absolute-form target, else the Host field (validated).
    pub host: Option<Span>,
    pub body: BodyKind,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` from an HTTP/1.1 client with a body to send.
    pub expect_continue: bool,
    /// The client sent `TE: trailers`; passed on (the only TE value that is).
    pub te_trailers: bool,
    /// The protocols of an `Upgrade` request (e.g. `websocket`) the proxy passes on: HTTP/1.1,
    /// `Connection: upgrade`, and no body. Otherwise `Upgrade` is dropped as hop-by-hop.
    pub upgrade: Option<Span>,
    /// What `Connection` said; the fields it names are hop-by-hop in the trailers too.
    pub connection: ConnectionOptions,
}

impl RequestHead {
    pub fn method(&self) -> &[u8] {
        self.method.of(&self.raw)
    }
    pub fn target(&self) -> &[u8] {
        self.target.of(&self.raw)
    }
    pub fn path(&self) -> &[u8] {
        self.path.of(&self.raw)
    }
    pub fn host(&self) -> Option<&[u8]> {
        self.host.map(|h| h.of(&self.raw))
    }
    /// The values of the end-to-end fields named `name` (case-insensitive), in order.
    pub fn fields<'a>(&'a self, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let raw = &self.raw[..];
        self.headers
            .iter()
            .filter(move |h| h.name.of(raw).eq_ignore_ascii_case(name))
            .map(move |h| h.value.of(raw))
    }
    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }
    /// RFC 9110 §9.2.2: safe to send twice.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
        )
    }
}

/// Why a request head was refused, each with the status the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    BadRequest(&'static str),
    UriTooLong,
    HeadersTooLarge(&'static str),
    PayloadTooLarge,
    NotImplemented(&'static str),
    VersionNotSupported,
}

impl RequestError {
    pub fn status(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::UriTooLong => 414,
            RequestError::HeadersTooLarge(_) => 431,
            RequestError::PayloadTooLarge => 413,
            RequestError::NotImplemented(_) => 501,
            RequestError::VersionNotSupported => 505,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::BadRequest(why) => why,
            RequestError::UriTooLong => "request line too long",
            RequestError::HeadersTooLarge(why) => why,
            RequestError::PayloadTooLarge => "body larger than max_body_bytes",
            RequestError::NotImplemented(why) => why,
            RequestError::VersionNotSupported => "unsupported HTTP version",
        }
    }
}

/// Parses a request head from the front of `buf`. `Ok(None)`: incomplete, read more.
/// On success the head's bytes are split off `buf`; body bytes stay in it.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, RequestError> {
    let n = limits.max_headers;
    let parsed = if n <= STACK_HEADERS {
        let mut table = [httparse::EMPTY_HEADER; STACK_HEADERS];
        parse_into(buf, limits, &mut table[..n])?
    } else {
        let mut table = vec![httparse::EMPTY_HEADER; n];
        parse_into(buf, limits, &mut table)?
    };
    let Some((len, mut head)) = parsed else {
        return Ok(None);
    };
    head.raw = buf.split_to(len).freeze();
    Ok(Some(head))
}

/// Parses and classifies; returns the head's length and the head with spans into `buf`
/// (its `raw` is filled in by the caller once the bytes are split off).
fn parse_into<'b>(
    buf: &'b [u8],
    limits: &HeadLimits,
    table: &mut [httparse::Header<'b>],
) -> Result<Option<(usize, RequestHead)>, RequestError> {
    // Limits first, on the raw bytes: the verdict must not depend on how the head was split
    // into reads (syntax is checked only on what is within the limits).
    check_size_limits(buf, limits)?;
    let mut req = httparse::Request::new(table);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => return Err(RequestError::VersionNotSupported),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::HeadersTooLarge("too many header fields"))
        }
        Err(_) => return Err(RequestError::BadRequest("malformed request head")),
    };
    let mut head = request_line(buf, &req)?;
    let fields = sort_fields(buf, req.headers, &mut head)?;
    check_hosts_and_connection(&mut head, &fields)?;
    head.body = body_framing(&fields, head.version)?;
    if let (BodyKind::Length(n), Some(max)) = (head.body, limits.max_body_bytes) {
        if n > max {
            return Err(RequestError::PayloadTooLarge);
        }
    }
    settle_expect_and_upgrade(buf, &mut head, &fields.connection);
    head.connection = fields.connection;
    Ok(Some((len, head)))
}

/// The request line: method, target form (RFC 9112 §3.2), version.
fn request_line(buf: &[u8], req: &httparse::Request<'_, '_>) -> Result<RequestHead, RequestError> {
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::BadRequest("malformed request line"));
    };
    let version = Version::from_minor(minor);
    if method == "CONNECT" {
        return Err(RequestError::NotImplemented("CONNECT is not supported"));
    }
    let target_span = Span::within(buf, target.as_bytes());
    let (path, authority) = match target::classify(target.as_bytes()) {
        Ok(TargetForm::Origin) => (target_span, None),
        Ok(TargetForm::Asterisk) if method == "OPTIONS" => (target_span, None),
        Ok(TargetForm::Asterisk) => {
            // RFC 9112 §3.2.4: only OPTIONS applies to the server as a whole.
            return Err(RequestError::BadRequest(
                "asterisk-form target without OPTIONS",
            ));
        }
        Ok(TargetForm::Absolute { authority, path }) => (
            target_span.sub(path.start, path.end),
            Some(target_span.sub(authority.start, authority.end)),
        ),
        Err(why) => return Err(RequestError::BadRequest(why)),
    };
    Ok(RequestHead {
        raw: Bytes::new(),
        method: Span::within(buf, method.as_bytes()),
        target: target_span,
        path,
        version,
        headers: HeaderList::new(),
        host: authority,
        body: BodyKind::Empty,
        keep_alive: version == Version::Http11,
        expect_continue: false,
        te_trailers: false,
        upgrade: None,
        connection: ConnectionOptions::default(),
    })
}

/// What the header fields said about framing and the connection.
struct FieldFacts {
    connection: ConnectionOptions,
    content_length: ContentLength,
    coding: TransferCoding,
    hosts: usize,
}

/// Sorts the fields: Host (validated), framing, TE, Expect and Upgrade are taken in; the
/// connection's own fields are dropped; the rest are the message's, kept in order.
fn sort_fields(
    buf: &[u8],
    fields: &[httparse::Header<'_>],
    head: &mut RequestHead,
) -> Result<FieldFacts, RequestError> {
    let mut facts = FieldFacts {
        connection: ConnectionOptions::of(buf, fields),
        content_length: ContentLength::default(),
        coding: TransferCoding::default(),
        hosts: 0,
    };
    for h in fields {
        let name = h.name.as_bytes();
        let field = HeaderField {
            name: Span::within(buf, name),
            value: Span::within(buf, h.value),
        };
        if name.eq_ignore_ascii_case(b"host") {
            facts.hosts += 1;
            let value = trim_ows(h.value);
            if !target::is_valid_host(value) {
                return Err(RequestError::BadRequest("invalid Host"));
            }
            // An absolute-form target's authority wins (RFC 9112 §3.2.2).
            head.host.get_or_insert(Span::within(buf, value));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            facts.content_length.add(buf, h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if tokens(h.value).next().is_none() {
                // Lists may have empty elements, but a request whose only coding field is
                // empty is ambiguous framing: refuse rather than guess.
                return Err(RequestError::BadRequest("empty Transfer-Encoding"));
            }
            facts.coding.add(h.value);
        } else if name.eq_ignore_ascii_case(b"te") {
            head.te_trailers |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        } else if name.eq_ignore_ascii_case(b"expect") {
            // The proxy answers 100 itself; other expectations are refused as RFC 9110 §10.1.1 allows.
            if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                return Err(RequestError::BadRequest("unsupported Expect"));
            }
            head.expect_continue = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            if head.upgrade.is_none() && !trim_ows(h.value).is_empty() {
                head.upgrade = Some(field.value);
            }
        } else if !(is_hop_by_hop(name) || facts.connection.names(buf, name)) {
            // Hop-by-hop fields are this connection's, not the message's (RFC 9110 §7.6.1).
            head.headers.push(field);
        }
    }
    Ok(facts)
}

/// Exactly one Host for HTTP/1.1 (at most one for 1.0); whether the client keeps the connection.
fn check_hosts_and_connection(
    head: &mut RequestHead,
    fields: &FieldFacts,
) -> Result<(), RequestError> {
    let conn = &fields.connection;
    match head.version {
        Version::Http11 if fields.hosts != 1 => Err(RequestError::BadRequest(
            "HTTP/1.1 request needs exactly one Host",
        )),
        Version::Http10 if fields.hosts > 1 => Err(RequestError::BadRequest("more than one Host")),
        Version::Http11 => {
            head.keep_alive = !conn.close;
            Ok(())
        }
        Version::Http10 => {
            head.keep_alive = conn.keep_alive && !conn.close;
            Ok(())
        }
    }
}

/// How the request body is delimited (RFC 9112 §6), stricter where parsers could disagree.
fn body_framing(fields: &FieldFacts, version: Version) -> Result<BodyKind, RequestError> {
    let length = fields
        .content_length
        .get()
        .map_err(|_| RequestError::BadRequest("invalid Content-Length"))?;
    match (fields.coding, length) {
        (TransferCoding::Absent, None) => Ok(BodyKind::Empty),
        // `Content-Length: 0` stays a length: it goes upstream as such (servers that need a
        // length for a POST answer 411 without one).
        (TransferCoding::Absent, Some(n)) => Ok(BodyKind::Length(n)),
        // RFC 9112 §6.1 would allow TE to win; both present is a smuggling signature, so refuse.
        (_, Some(_)) => Err(RequestError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        )),
        _ if version == Version::Http10 => Err(RequestError::BadRequest(
            "Transfer-Encoding in an HTTP/1.0 request",
        )),
        (TransferCoding::Chunked, None) => Ok(BodyKind::Chunked),
        (TransferCoding::ChunkedAfterOthers, None) => Err(RequestError::NotImplemented(
            "transfer codings other than chunked",
        )),
        (TransferCoding::NotChunked | TransferCoding::OnlyEmpty, None) => Err(
            RequestError::BadRequest("Transfer-Encoding must end in chunked"),
        ),
    }
}

/// `Expect: 100-continue` only where there is a body and the client speaks HTTP/1.1 (no 1xx to
/// an HTTP/1.0 client, RFC 9110 §15.2); `Upgrade` only where it may be passed on.
fn settle_expect_and_upgrade(buf: &[u8], head: &mut RequestHead, conn: &ConnectionOptions) {
    if head.body.is_bodiless() || head.version == Version::Http10 {
        head.expect_continue = false;
    }
    // h2c is never passed on: it would tunnel HTTP/2 to the upstream past every rule the proxy
    // enforces on HTTP/1.1 (limits, framing checks), the "h2c smuggling" of security advisories.
    let h2c = head
        .upgrade
        .is_some_and(|u| tokens(u.of(buf)).any(|t| t.eq_ignore_ascii_case(b"h2c")));
    let upgradable = head.version == Version::Http11
        && head.body.is_bodiless()
        && conn.names(buf, b"upgrade")
        && !h2c;
    if !upgradable {
        head.upgrade = None;
    }
}

/// Length of the request line (leading empty lines excluded), or of all of `buf` if unfinished.
fn request_line_len(buf: &[u8]) -> usize {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    buf[start..]
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(buf.len() - start)
}

/// 414 for a request line over the limit, 431 for a head (complete or not yet) over it.
/// Empty lines before the request line (which httparse skips) count against the head limit.
fn check_size_limits(buf: &[u8], limits: &HeadLimits) -> Result<(), RequestError> {
    if request_line_len(buf) > limits.max_request_line_bytes {
        return Err(RequestError::UriTooLong);
    }
    if buf.len() > limits.max_header_bytes
        && head_end(buf).is_none_or(|end| end > limits.max_header_bytes)
    {
        return Err(RequestError::HeadersTooLarge(
            "request head larger than max_header_bytes",
        ));
    }
    Ok(())
}

/// Where the head ends (after its empty line, CRLF or bare LF as httparse accepts), if it does.
/// Leading empty lines are not the end of a head.
fn head_end(buf: &[u8]) -> Option<usize> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let head = &buf[start..];
    head.iter().enumerate().skip(1).find_map(|(i, &b)| {
        let blank_line = b == b'\n'
            && (head[i - 1] == b'\n' || (i >= 2 && head[i - 1] == b'\r' && head[i - 2] == b'\n'));
        blank_line.then_some(start + i + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeadLimits {
        HeadLimits {
            max_request_line_bytes: 64,
            max_header_bytes: 256,
            max_headers: 4,
            max_body_bytes: Some(1000),
        }
    }

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, RequestError> {
        parse_request(&mut BytesMut::from(raw), &limits())
    }

    fn status(raw: &[u8]) -> u16 {
        match parse(raw) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn framing_smuggling_vectors_are_refused() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX\x01: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501),
            (b"GET nothing HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413),
        ];
        for (raw, want) in cases {
            assert_eq!(status(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn limits_give_414_and_431() {
        let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(80));
        assert_eq!(status(long_target.as_bytes()), 414);
        // Still incomplete, but already over the line limit: refused without waiting for more.
        assert_eq!(status(format!("GET /{}", "a".repeat(80)).as_bytes()), 414);
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n";
        assert_eq!(status(many.as_bytes()), 431);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n",
            "x".repeat(300)
        );
        assert_eq!(status(big.as_bytes()), 431);
        assert_eq!(
            status(format!("GET / HTTP/1.1\r\nA: {}", "x".repeat(300)).as_bytes()),
            431
        );
    }

    #[test]
    fn leading_empty_lines_count_against_the_head_limit() {
        let padded = format!(
            "\n\nGET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(300)
        );
        assert_eq!(status(padded.as_bytes()), 431);
        let unfinished = format!(
            "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nX: {}",
            "a".repeat(10_000)
        );
        assert_eq!(status(unfinished.as_bytes()), 431);
        assert_eq!(status("\n".repeat(10_000).as_bytes()), 431);
        assert_eq!(status(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    }

    #[test]
    fn upgrade_is_kept_only_where_it_may_be_passed_on() {
        let upgrade = |raw: &[u8]| {
            let head = parse(raw).unwrap().unwrap();
            head.upgrade
                .map(|u| String::from_utf8_lossy(u.of(&head.raw)).into_owned())
        };
        let ws = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(upgrade(ws).as_deref(), Some("websocket"));
        for refused in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: \r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, H2C\r\n\r\n",
        ] {
            assert_eq!(upgrade(refused), None, "{:?}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn valid_requests_parse_with_their_framing() {
        let head = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.body, BodyKind::Chunked);
        assert!(head.keep_alive);
        let head = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.keep_alive && head.version == Version::Http10);
        let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!head.keep_alive);
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\n"), 0);
    }

    #[test]
    fn head_is_split_off_and_body_stays() {
        let mut buf =
            BytesMut::from(&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
        let head = parse_request(&mut buf, &limits()).unwrap().unwrap();
        assert_eq!(head.body, BodyKind::Length(3));
        assert_eq!(&buf[..], b"abcGET");
        assert_eq!(head.target(), b"/");
    }
}
