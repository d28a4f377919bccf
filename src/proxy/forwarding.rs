//! What the proxy adds to, removes from and rewrites in what it forwards, in one place: the
//! request head it sends upstream (the route's target, Host from an absolute-form target's
//! authority or the group's `host_header`, `X-Forwarded-For/-Proto/-Host` and `Forwarded`,
//! underscored names, the route's field edits), the response head it sends the client (framing
//! for the client's version, `Connection`, redirects naming the backend, the route's field
//! edits), and which trailer fields pass.
//! The listener's scheme is an input: `X-Forwarded-Proto` says what the client used.

use super::route::Route;
use crate::config::HeaderEdits;
use crate::http::{head, Version};
use crate::http::{
    BodyKind, ConnectionOptions, HeaderField, OutFraming, RequestHead, ResponseHead,
};
use crate::net::stream::Scheme;
use bytes::BytesMut;
use std::net::SocketAddr;

/// Who the request came from and how, for the forwarding fields.
pub struct ForwardedFor<'a> {
    /// The client's address as text (an IPv6 address without brackets).
    pub client_ip: &'a str,
    /// The rightmost `X-Forwarded-For` entries the client was found with (trusted hops and its
    /// own): not passed on, since `client_ip` goes last in their place.
    pub forwarded_entries: u16,
    pub scheme: Scheme,
    /// Forward request fields whose name contains `_` (`[limits] allow_underscores_in_headers`).
    pub allow_underscores: bool,
    /// The client's verified certificate (mutual TLS): subject and subjectAltName, sent as
    /// `X-Client-Cert-Subject` and `X-Client-Cert-SAN`.
    pub client_cert: Option<&'a (String, String)>,
}

/// The request fields the proxy itself answers for: dropped from what the client sent, then
/// written by the proxy (`X-Forwarded-For` and `Forwarded` with the client's values first).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vouched {
    ForwardedFor,
    Forwarded,
    /// `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Client-Cert-Subject`, `X-Client-Cert-SAN`:
    /// replaced (the client-certificate fields dropped when no certificate was verified, so a
    /// client cannot claim one).
    Replaced,
}

fn vouched(name: &[u8]) -> Option<Vouched> {
    // Lengths first: most fields are ruled out without a comparison.
    match name.len() {
        15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => Some(Vouched::ForwardedFor),
        9 if name.eq_ignore_ascii_case(b"forwarded") => Some(Vouched::Forwarded),
        16 if name.eq_ignore_ascii_case(b"x-forwarded-host") => Some(Vouched::Replaced),
        17 if name.eq_ignore_ascii_case(b"x-forwarded-proto") => Some(Vouched::Replaced),
        17 if name.eq_ignore_ascii_case(b"x-client-cert-san") => Some(Vouched::Replaced),
        21 if name.eq_ignore_ascii_case(b"x-client-cert-subject") => Some(Vouched::Replaced),
        _ => None,
    }
}

/// Room reserved at once for what a forwarded head adds to the received one (forwarding fields,
/// framing): a new connection's empty buffer then takes one allocation, not a growth per field.
const HEAD_GROWTH: usize = 256;

/// What the route makes of the request it sends upstream.
pub struct Outgoing<'a> {
    /// The origin-form target: the request's own, or as the route normalised and rewrote it.
    pub target: &'a [u8],
    /// The Host to send instead of the client's (`host_header = "backend"` or a literal).
    pub host: Option<&'a [u8]>,
    /// Fields the route sets and removes.
    pub edits: &'a HeaderEdits,
}

/// Appends the upstream request head: the request line in origin-form, `Host` first, the
/// client's end-to-end fields (less those the route replaces or removes), the route's fields,
/// then what the proxy vouches for, and the body's framing. `backend` is the upstream's address
/// (the Host of an HTTP/1.0 request that sent none).
pub fn write_request_head(
    out: &mut BytesMut,
    req: &RequestHead,
    outgoing: &Outgoing<'_>,
    from: &ForwardedFor<'_>,
    framing: OutFraming,
    backend: SocketAddr,
) {
    let raw = &req.raw[..];
    out.reserve(raw.len() + HEAD_GROWTH);
    out.extend_from_slice(req.method());
    out.extend_from_slice(b" ");
    let path = outgoing.target;
    if path.is_empty() && req.method() == b"OPTIONS" {
        // `OPTIONS http://a.example` asks about the server as a whole: the last proxy sends
        // it on as `OPTIONS *` (RFC 9112 §3.2.4).
        out.extend_from_slice(b"*");
    } else if path.first().is_none_or(|&b| b == b'?') {
        // An absolute-form target without a path (`http://a.example?q`) goes in origin-form.
        out.extend_from_slice(b"/");
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match outgoing.host.or(req.host()) {
        Some(host) => push_header(out, b"Host", host),
        // HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require one.
        None => push_header(out, b"Host", backend.to_string().as_bytes()),
    }
    let mut vouched_seen = false;
    // One scan of the whole head: most have no `_` at all, and then no name needs a look.
    let check_underscores = !from.allow_underscores && memchr::memchr(b'_', raw).is_some();
    for h in &req.headers {
        let name = h.name.of(raw);
        if vouched(name).is_some() {
            vouched_seen = true;
        } else if check_underscores && name.contains(&b'_') {
            // Dropped, as nginx does by default: CGI-style servers fold `_` and `-` together,
            // so `X_Forwarded_Proto` would reach an app as the proxy's `X-Forwarded-Proto`.
        } else if framing != OutFraming::Chunked && name.eq_ignore_ascii_case(b"trailer") {
            // It announces trailer fields, which only a chunked body carries.
        } else if !outgoing.edits.touches(name) {
            push_header(out, name, h.value.of(raw));
        }
    }
    push_set_fields(out, outgoing.edits);
    write_vouched(out, req, from, vouched_seen);
    if req.te_trailers {
        out.extend_from_slice(b"TE: trailers\r\n");
    }
    if let Some(protocols) = req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_header(out, b"Upgrade", protocols.of(raw));
    }
    match (framing, req.body) {
        (OutFraming::Chunked, _) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        (_, BodyKind::Length(n)) => push_content_length(out, n),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// The fields the proxy vouches for: `X-Forwarded-For` and `Forwarded` with the client's values
/// first (`prior_seen`: the client sent some of them), `X-Forwarded-Proto` and `-Host` replaced.
fn write_vouched(out: &mut BytesMut, req: &RequestHead, from: &ForwardedFor<'_>, prior_seen: bool) {
    let raw = &req.raw[..];
    let prior = |kind: Vouched| {
        req.headers
            .iter()
            .filter(move |h| prior_seen && vouched(h.name.of(raw)) == Some(kind))
            .map(|h| h.value.of(raw))
            .filter(|v| !v.is_empty())
    };
    // X-Forwarded-For is appended to, so its leftmost entries are the client's own word. When
    // the client was found in it (behind trusted proxies), the entries from the client's on
    // are dropped and the client goes last: the rightmost entry is always the client as this
    // proxy determined it.
    out.extend_from_slice(b"X-Forwarded-For: ");
    if from.forwarded_entries == 0 {
        for v in prior(Vouched::ForwardedFor) {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    } else {
        let entries = || {
            prior(Vouched::ForwardedFor)
                .flat_map(|v| v.split(|&b| b == b','))
                .map(head::trim_ows)
                .filter(|e| !e.is_empty())
        };
        let kept = entries()
            .count()
            .saturating_sub(usize::from(from.forwarded_entries));
        for entry in entries().take(kept) {
            out.extend_from_slice(entry);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(from.client_ip.as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(from.scheme.as_str().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(host) = req.host() {
        push_header(out, b"X-Forwarded-Host", host);
    }
    if let Some((subject, san)) = from.client_cert {
        push_header(out, b"X-Client-Cert-Subject", subject.as_bytes());
        push_header(out, b"X-Client-Cert-SAN", san.as_bytes());
    }
    out.extend_from_slice(b"Forwarded: ");
    for v in prior(Vouched::Forwarded) {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    write_forwarded_element(out, from, req.host());
}

/// The proxy's own `Forwarded` element (RFC 7239) and the line end: `for=<client>;proto=<scheme>`
/// and `;host=<host>`. An IPv6 address is a quoted `"[...]"` (RFC 7239 §6); a host that is not a
/// token (one with a port: `:`) is quoted. Hosts were validated, so they hold no `"` or `\`.
fn write_forwarded_element(out: &mut BytesMut, from: &ForwardedFor<'_>, host: Option<&[u8]>) {
    if from.client_ip.bytes().any(|b| b == b':') {
        out.extend_from_slice(b"for=\"[");
        out.extend_from_slice(from.client_ip.as_bytes());
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(b"for=");
        out.extend_from_slice(from.client_ip.as_bytes());
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(from.scheme.as_str().as_bytes());
    if let Some(host) = host {
        out.extend_from_slice(b";host=");
        if head::is_token(host) {
            out.extend_from_slice(host);
        } else {
            out.extend_from_slice(b"\"");
            out.extend_from_slice(host);
            out.extend_from_slice(b"\"");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body goes to this client: HTTP/1.0 clients never get chunked.
pub fn response_framing(req: &RequestHead, resp: &ResponseHead) -> OutFraming {
    match resp.body {
        BodyKind::Empty => OutFraming::None,
        BodyKind::Length(_) => OutFraming::Length,
        BodyKind::Chunked | BodyKind::UntilClose if req.version == Version::Http11 => {
            OutFraming::Chunked
        }
        BodyKind::Chunked | BodyKind::UntilClose => OutFraming::Close,
    }
}

/// Absolute redirects in which a backend names itself (`Location: http://127.0.0.1:9001/x`,
/// `Refresh: 0; url=...`), rewritten to the address the client used, as nginx's
/// `proxy_redirect default` does: otherwise the client follows the redirect around the proxy.
pub struct Redirects<'a> {
    /// The backend's own origins (`Backend::own_origins`).
    pub origins: &'a [String],
    /// The Host the client asked for.
    pub client_host: &'a [u8],
    pub scheme: Scheme,
    /// (prefix upstream, prefix of the client) of a route that rewrites its prefix: a path
    /// after the backend's origin that starts with the former gets the latter back (as nginx's
    /// `proxy_redirect default` maps `proxy_pass`'s URI to the location's).
    pub prefix_map: Option<(&'a [u8], &'a [u8])>,
}

impl<'a> Redirects<'a> {
    /// How the route's `backend` has its own absolute redirects rewritten for `req`, if it does
    /// (`[upstream] rewrite_redirects`, and a Host to rewrite to).
    pub fn for_request(
        route: &'a Route<'_>,
        backend: usize,
        req: &'a RequestHead,
        scheme: Scheme,
    ) -> Option<Self> {
        let client_host = req.host()?;
        let settings = &route.group.settings.pool;
        settings.rewrite_redirects.then(|| Redirects {
            origins: &route.backends()[backend].own_origins,
            client_host,
            scheme,
            prefix_map: route.prefix_map,
        })
    }

    /// `url` with a backend origin in front replaced by the client's, if it has one.
    fn rewrite(&self, url: &[u8]) -> Option<Vec<u8>> {
        self.origins.iter().find_map(|origin| {
            let o = origin.as_bytes();
            let head = url.get(..o.len())?;
            let rest = &url[o.len()..];
            let boundary = rest.first().is_none_or(|b| matches!(b, b'/' | b'?' | b'#'));
            (head.eq_ignore_ascii_case(o) && boundary).then(|| {
                let scheme = self.scheme.as_str().as_bytes();
                let mapped = self.prefix_map.and_then(|(upstream, client)| {
                    let after = rest.strip_prefix(upstream)?;
                    rest.starts_with(b"/").then(|| [client, after].concat())
                });
                let rest = mapped.as_deref().unwrap_or(rest);
                [scheme, b"://", self.client_host, rest].concat()
            })
        })
    }

    /// A `Location` or `Refresh` value with the backend's origin rewritten, if it names it.
    fn rewrite_field(&self, name: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        match name.len() {
            8 if name.eq_ignore_ascii_case(b"location") => return self.rewrite(value),
            7 if name.eq_ignore_ascii_case(b"refresh") => {}
            _ => return None,
        }
        // `5; url=http://...`, the URL possibly quoted.
        let at = value
            .windows(4)
            .position(|w| w.eq_ignore_ascii_case(b"url="))?
            + 4;
        let quote = value.get(at).filter(|&&q| q == b'\'' || q == b'"');
        let start = at + usize::from(quote.is_some());
        let rewritten = self.rewrite(&value[start..])?;
        Some([&value[..start], &rewritten[..]].concat())
    }
}

/// What the proxy sets in every response to a client: `Strict-Transport-Security` over HTTPS
/// (`[tls] hsts_max_age_seconds`), in place of the upstream's.
/// And the route's edits of response fields (`response_headers`).
#[derive(Clone, Copy)]
pub struct ResponsePolicy<'a> {
    pub hsts: Option<&'a str>,
    pub edits: &'a HeaderEdits,
}

impl Default for ResponsePolicy<'_> {
    fn default() -> Self {
        ResponsePolicy {
            hsts: None,
            edits: HeaderEdits::none(),
        }
    }
}

/// Appends the client response head; `redirects`, where given, rewrites the backend's own
/// absolute redirects; `edits` are the route's response fields.
pub fn write_response_head(
    out: &mut BytesMut,
    req: &RequestHead,
    resp: &ResponseHead,
    framing: OutFraming,
    keep_alive: bool,
    redirects: Option<&Redirects<'_>>,
    policy: ResponsePolicy<'_>,
) {
    let raw = &resp.raw[..];
    out.reserve(raw.len() + HEAD_GROWTH);
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.format(resp.status).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(resp.reason.of(raw));
    out.extend_from_slice(b"\r\n");
    for h in &resp.headers {
        let (name, value) = (h.name.of(raw), h.value.of(raw));
        if (framing != OutFraming::Chunked && name.eq_ignore_ascii_case(b"trailer"))
            || policy.edits.touches(name)
        {
            continue;
        }
        if policy.hsts.is_some() && name.eq_ignore_ascii_case(b"strict-transport-security") {
            continue;
        }
        match redirects.and_then(|r| r.rewrite_field(name, value)) {
            Some(rewritten) => push_header(out, name, &rewritten),
            None => push_header(out, name, value),
        }
    }
    push_set_fields(out, policy.edits);
    match (framing, resp.body) {
        (OutFraming::Length, BodyKind::Length(n)) => push_content_length(out, n),
        (OutFraming::Chunked, _) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        (OutFraming::None, _) if req.is_head() || resp.status == 304 => {
            // A bodiless answer still describes the body it stands for (RFC 9110 §8.6).
            if let Some(cl) = resp.content_length {
                push_header(out, b"Content-Length", cl.of(raw));
            } else if resp.declared_chunked && req.version == Version::Http11 {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
        }
        _ => {}
    }
    if let Some(hsts) = policy.hsts {
        push_header(out, b"Strict-Transport-Security", hsts.as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an interim (1xx) answer for the client: its status and end-to-end fields.
pub fn write_interim_head(out: &mut BytesMut, resp: &ResponseHead) {
    let raw = &resp.raw[..];
    out.reserve(raw.len() + HEAD_GROWTH);
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.format(resp.status).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(resp.reason.of(raw));
    out.extend_from_slice(b"\r\n");
    push_fields(out, &resp.headers, raw, OutFraming::None);
    out.extend_from_slice(b"\r\n");
}

/// Appends the client's `101 Switching Protocols` head: the upstream's end-to-end headers and
/// the protocol it switched to.
pub fn write_switching_head(out: &mut BytesMut, resp: &ResponseHead) {
    let raw = &resp.raw[..];
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(resp.reason.of(raw));
    out.extend_from_slice(b"\r\n");
    push_fields(out, &resp.headers, raw, OutFraming::None);
    out.extend_from_slice(b"Connection: upgrade\r\n");
    if let Some(protocol) = resp.upgrade {
        push_header(out, b"Upgrade", protocol.of(raw));
    }
    out.extend_from_slice(b"\r\n");
}

/// Which trailer fields of a body pass (those of a chunked body going out chunked).
pub struct TrailerPolicy<'a> {
    /// The message head's bytes, and what its `Connection` said.
    pub raw: &'a [u8],
    pub connection: &'a ConnectionOptions,
    /// Drop names containing `_`: a client's request, as for its header fields.
    pub drop_underscored: bool,
}

impl<'a> TrailerPolicy<'a> {
    /// A client's request: underscored names dropped unless allowed, as its header fields.
    pub fn of_request(req: &'a RequestHead, allow_underscores: bool) -> Self {
        TrailerPolicy {
            raw: &req.raw,
            connection: &req.connection,
            drop_underscored: !allow_underscores,
        }
    }

    /// An upstream's response.
    pub fn of_response(resp: &'a ResponseHead) -> Self {
        TrailerPolicy {
            raw: &resp.raw,
            connection: &resp.connection,
            drop_underscored: false,
        }
    }

    /// Whether a (valid) trailer field line is passed on. Not the fields that frame, route or
    /// describe the connection, which belong in a head (RFC 9110 §6.5.1); a recipient must not
    /// act on them in trailers, so forwarding them could only confuse the next hop. Nor the
    /// fields the proxy itself vouches for in the head: an upstream that merges trailers into
    /// the header section would otherwise take a client's `X-Forwarded-For` trailer for the
    /// proxy's. Nor those the message's `Connection` named, which are hop-by-hop wherever they
    /// appear (RFC 9110 §7.6.1). Nor underscored names where the head's are dropped.
    pub fn passes(&self, line: &[u8]) -> bool {
        const NOT_AS_TRAILERS: [&[u8]; 2] = [b"host", b"trailer"];
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let underscored = self.drop_underscored && name.contains(&b'_');
        !(underscored
            || head::is_hop_by_hop(name)
            || vouched(name).is_some()
            || NOT_AS_TRAILERS.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self.connection.names(self.raw, name))
    }
}

/// Appends the end-to-end fields kept from the incoming head. `Trailer` announces trailer fields,
/// so it goes only with a chunked body, the one framing that carries them.
fn push_fields(out: &mut BytesMut, fields: &[HeaderField], raw: &[u8], framing: OutFraming) {
    for h in fields {
        let name = h.name.of(raw);
        if framing != OutFraming::Chunked && name.eq_ignore_ascii_case(b"trailer") {
            continue;
        }
        push_header(out, name, h.value.of(raw));
    }
}

/// The fields a route sets.
fn push_set_fields(out: &mut BytesMut, edits: &HeaderEdits) {
    for (name, value) in &edits.set {
        push_header(out, name.as_bytes(), value.as_bytes());
    }
}

pub fn push_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn push_content_length(out: &mut BytesMut, n: u64) {
    let mut buf = itoa::Buffer::new();
    push_header(out, b"Content-Length", buf.format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, parse_response, HeadLimits};

    fn limits() -> HeadLimits {
        HeadLimits {
            max_request_line_bytes: 8192,
            max_header_bytes: 65536,
            max_headers: 100,
            max_body_bytes: None,
        }
    }

    fn from(client_ip: &str) -> ForwardedFor<'_> {
        ForwardedFor {
            client_ip,
            forwarded_entries: 0,
            scheme: Scheme::Http,
            allow_underscores: false,
            client_cert: None,
        }
    }

    /// The request as it came: no route rewrote it.
    fn plain(req: &RequestHead) -> Outgoing<'_> {
        Outgoing {
            target: req.path(),
            host: None,
            edits: HeaderEdits::none(),
        }
    }

    fn request(raw: &str) -> RequestHead {
        parse_request(&mut BytesMut::from(raw), &limits())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn request_head_drops_hop_by_hop_and_adds_forwarded() {
        let req = request(
            "POST /p?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: s\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers, gzip\r\nUpgrade: h2c\r\n\
             X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n\
             Content-Length: 3\r\nAccept: */*\r\n\r\n",
        );
        let mut out = BytesMut::new();
        write_request_head(
            &mut out,
            &req,
            &plain(&req),
            &from("127.0.0.1"),
            OutFraming::Length,
            "127.0.0.1:9000".parse().unwrap(),
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\
             X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example.com\r\n\
             Forwarded: for=127.0.0.1;proto=http;host=example.com\r\n\
             TE: trailers\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn a_client_found_in_x_forwarded_for_goes_last_without_the_trusted_hops() {
        let req = request(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.5\r\n\
             X-Forwarded-For: 10.0.0.2\r\n\r\n",
        );
        let mut out = BytesMut::new();
        // The client is 203.0.113.5, found two entries from the right.
        let from = ForwardedFor {
            forwarded_entries: 2,
            ..from("203.0.113.5")
        };
        let backend = "127.0.0.1:9000".parse().unwrap();
        write_request_head(
            &mut out,
            &req,
            &plain(&req),
            &from,
            OutFraming::None,
            backend,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains("\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.5\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Forwarded: for=203.0.113.5;proto=http;host=a\r\n"),
            "{text}"
        );
    }

    #[test]
    fn http10_request_without_host_gets_one() {
        let req = request("GET / HTTP/1.0\r\n\r\n");
        let mut out = BytesMut::new();
        write_request_head(
            &mut out,
            &req,
            &plain(&req),
            &from("::1"),
            OutFraming::None,
            "127.0.0.1:9000".parse().unwrap(),
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nX-Forwarded-For: ::1\r\n")
        );
        assert!(text.contains("\r\nForwarded: for=\"[::1]\";proto=http\r\n"));
        assert!(!req.keep_alive);
    }

    #[test]
    fn absolute_form_goes_upstream_in_origin_form_with_its_authority_as_host() {
        let req = request(
            "GET http://evil.example:8080?x=1 HTTP/1.1\r\nHost: good.example\r\n\
             Forwarded: for=10.1.1.1\r\nX_Forwarded_Proto: https\r\n\r\n",
        );
        let mut out = BytesMut::new();
        write_request_head(
            &mut out,
            &req,
            &plain(&req),
            &from("192.0.2.7"),
            OutFraming::None,
            "127.0.0.1:9000".parse().unwrap(),
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "GET /?x=1 HTTP/1.1\r\nHost: evil.example:8080\r\nX-Forwarded-For: 192.0.2.7\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: evil.example:8080\r\n\
             Forwarded: for=10.1.1.1, for=192.0.2.7;proto=http;host=\"evil.example:8080\"\r\n\r\n"
        );
    }

    #[test]
    fn trailers_the_proxy_vouches_for_or_that_frame_are_not_passed() {
        let raw = b"Connection: x-hop, close";
        let mut connection = ConnectionOptions::default();
        connection.add(raw, &raw[12..]);
        let policy = TrailerPolicy {
            raw,
            connection: &connection,
            drop_underscored: true,
        };
        for kept in [
            "X-Sum: 1",
            "Server-Timing: x",
            "grpc-status: 0",
            "Digest: sha-256=x",
        ] {
            assert!(policy.passes(kept.as_bytes()), "{kept}");
        }
        for dropped in [
            "Content-Length: 5",
            "transfer-encoding: chunked",
            "Host: evil",
            "Connection: close",
            "Keep-Alive: 5",
            "TE: trailers",
            "Trailer: X",
            "Upgrade: h2c",
            "X-Forwarded-For: 10.0.0.1",
            "forwarded: for=10.0.0.1",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil",
            "X-Client-Cert-Subject: CN=admin",
            "x-client-cert-san: DNS:admin",
            "X-Hop: named in Connection",
            "Close: named in Connection",
            "X_Forwarded_Proto: https",
        ] {
            assert!(!policy.passes(dropped.as_bytes()), "{dropped}");
        }
        let upstream = TrailerPolicy {
            drop_underscored: false,
            ..policy
        };
        assert!(upstream.passes(b"X_Upstream_Sum: 1"));
    }

    #[test]
    fn a_backends_own_absolute_redirects_point_back_at_the_proxy() {
        let origins = vec![
            "http://app.internal".to_string(),
            "http://app.internal:80".to_string(),
            "http://10.0.0.5:80".to_string(),
        ];
        let r = Redirects {
            origins: &origins,
            client_host: b"www.example.com",
            scheme: Scheme::Http,
            prefix_map: None,
        };
        let rewrite = |name: &str, value: &str| {
            r.rewrite_field(name.as_bytes(), value.as_bytes())
                .map(|v| String::from_utf8(v).unwrap())
        };
        let to = Some("http://www.example.com/dir/".to_string());
        assert_eq!(rewrite("Location", "http://app.internal/dir/"), to);
        assert_eq!(rewrite("location", "HTTP://APP.INTERNAL:80/dir/"), to);
        assert_eq!(rewrite("Location", "http://10.0.0.5:80/dir/"), to);
        assert_eq!(
            rewrite("Location", "http://app.internal?x=1").as_deref(),
            Some("http://www.example.com?x=1")
        );
        assert_eq!(
            rewrite("Refresh", "5; url=http://app.internal/next").as_deref(),
            Some("5; url=http://www.example.com/next")
        );
        assert_eq!(
            rewrite("Refresh", "0;URL='http://app.internal/'").as_deref(),
            Some("0;URL='http://www.example.com/'")
        );
        // Not the backend's own origin, or only a prefix of another name: left alone.
        assert_eq!(rewrite("Location", "http://app.internal.evil/x"), None);
        assert_eq!(rewrite("Location", "http://app.internal:8080/x"), None);
        assert_eq!(rewrite("Location", "https://app.internal/x"), None);
        assert_eq!(rewrite("Location", "/relative"), None);
        assert_eq!(rewrite("Content-Location", "http://app.internal/x"), None);
    }

    #[test]
    fn options_for_the_whole_server_goes_on_as_asterisk() {
        let addr = "127.0.0.1:9000".parse().unwrap();
        for (raw, line) in [
            (
                "OPTIONS http://a.example HTTP/1.1\r\nHost: a\r\n\r\n",
                "OPTIONS * HTTP/1.1\r\n",
            ),
            (
                "OPTIONS http://a.example?x HTTP/1.1\r\nHost: a\r\n\r\n",
                "OPTIONS /?x HTTP/1.1\r\n",
            ),
            (
                "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
                "OPTIONS * HTTP/1.1\r\n",
            ),
            (
                "GET http://a.example HTTP/1.1\r\nHost: a\r\n\r\n",
                "GET / HTTP/1.1\r\n",
            ),
        ] {
            let mut out = BytesMut::new();
            let req = request(raw);
            write_request_head(
                &mut out,
                &req,
                &plain(&req),
                &from("1.2.3.4"),
                OutFraming::None,
                addr,
            );
            assert!(
                std::str::from_utf8(&out).unwrap().starts_with(line),
                "{raw}"
            );
        }
    }

    #[test]
    fn empty_responses_keep_their_zero_length() {
        let get = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        for (raw, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "Content-Length: 0\r\n",
            ),
            (
                "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
                "Content-Length: 0\r\n",
            ),
        ] {
            let resp = parse_response(&mut BytesMut::from(raw), false)
                .unwrap()
                .unwrap();
            let framing = response_framing(&get, &resp);
            assert_eq!(framing, OutFraming::Length, "{raw}");
            let mut out = BytesMut::new();
            write_response_head(
                &mut out,
                &get,
                &resp,
                framing,
                true,
                None,
                ResponsePolicy::default(),
            );
            assert!(std::str::from_utf8(&out).unwrap().contains(want), "{raw}");
        }
        let post = request("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        let mut out = BytesMut::new();
        let addr = "127.0.0.1:9000".parse().unwrap();
        write_request_head(
            &mut out,
            &post,
            &plain(&post),
            &from("1.2.3.4"),
            OutFraming::Length,
            addr,
        );
        assert!(std::str::from_utf8(&out)
            .unwrap()
            .ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn response_reframed_for_http10_and_head_keeps_length() {
        let req10 = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: 1\r\nX-A: b\r\n\r\n",
        );
        let resp = parse_response(&mut buf, false).unwrap().unwrap();
        let framing = response_framing(&req10, &resp);
        assert_eq!(framing, OutFraming::Close);
        let mut out = BytesMut::new();
        write_response_head(
            &mut out,
            &req10,
            &resp,
            framing,
            false,
            None,
            ResponsePolicy::default(),
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 200 OK\r\nX-A: b\r\nConnection: close\r\n\r\n"
        );

        let head = request("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
        let resp = parse_response(&mut buf, true).unwrap().unwrap();
        let mut out = BytesMut::new();
        let framing = response_framing(&head, &resp);
        write_response_head(
            &mut out,
            &head,
            &resp,
            framing,
            true,
            None,
            ResponsePolicy::default(),
        );
        assert_eq!(&out[..], b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    }

    #[test]
    fn route_edits_replace_and_remove_fields_both_ways() {
        let req = request(
            "GET /a HTTP/1.1\r\nHost: client.example\r\nCookie: s=1\r\nX-Env: dev\r\n\
             x-env: dev2\r\nAccept: */*\r\n\r\n",
        );
        let edits = HeaderEdits {
            set: vec![("X-Env".into(), "prod".into())],
            remove: vec!["cookie".into()],
        };
        let outgoing = Outgoing {
            target: b"/rewritten?q",
            host: Some(b"backend.internal:8080"),
            edits: &edits,
        };
        let mut out = BytesMut::new();
        let addr = "127.0.0.1:9000".parse().unwrap();
        write_request_head(
            &mut out,
            &req,
            &outgoing,
            &from("1.2.3.4"),
            OutFraming::None,
            addr,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.starts_with(
                "GET /rewritten?q HTTP/1.1\r\nHost: backend.internal:8080\r\nAccept: */*\r\nX-Env: prod\r\n"
            ),
            "{text}"
        );
        assert!(!text.contains("Cookie") && !text.contains("dev"), "{text}");
        // X-Forwarded-Host stays the client's.
        assert!(
            text.contains("X-Forwarded-Host: client.example\r\n"),
            "{text}"
        );

        let resp = parse_response(
            &mut BytesMut::from("HTTP/1.1 200 OK\r\nServer: app\r\nCache-Control: max-age=60\r\nContent-Length: 0\r\n\r\n"),
            false,
        )
        .unwrap()
        .unwrap();
        let edits = HeaderEdits {
            set: vec![("Cache-Control".into(), "no-store".into())],
            remove: vec!["server".into()],
        };
        let mut out = BytesMut::new();
        write_response_head(
            &mut out,
            &req,
            &resp,
            OutFraming::Length,
            true,
            None,
            ResponsePolicy {
                hsts: None,
                edits: &edits,
            },
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn redirects_naming_the_backend_get_the_routes_prefix_back() {
        let origins = vec!["http://app.internal".to_string()];
        let r = |prefix_map| Redirects {
            origins: &origins,
            client_host: b"www.example.com",
            scheme: Scheme::Http,
            prefix_map,
        };
        let rewrite = |r: &Redirects<'_>, v: &str| {
            String::from_utf8(r.rewrite_field(b"Location", v.as_bytes()).unwrap()).unwrap()
        };
        // strip_prefix of /v1/: the backend's /users is the client's /v1/users.
        let strip = r(Some((b"/", b"/v1/")));
        assert_eq!(
            rewrite(&strip, "http://app.internal/users"),
            "http://www.example.com/v1/users"
        );
        // rewrite_prefix /api/ for /v1/.
        let replace = r(Some((b"/api/", b"/v1/")));
        assert_eq!(
            rewrite(&replace, "http://app.internal/api/u?x"),
            "http://www.example.com/v1/u?x"
        );
        assert_eq!(
            rewrite(&replace, "http://app.internal/other"),
            "http://www.example.com/other"
        );
        // strip_prefix of /v1 (no slash): everything gets /v1 in front.
        let bare = r(Some((b"", b"/v1")));
        assert_eq!(
            rewrite(&bare, "http://app.internal/u"),
            "http://www.example.com/v1/u"
        );
        assert_eq!(
            rewrite(&bare, "http://app.internal?q"),
            "http://www.example.com?q"
        );
    }
}
