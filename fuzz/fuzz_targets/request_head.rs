//! Request heads: `parse_request` never panics; it agrees with `httparse` run on the same bytes
//! on its own; it refuses a complete head only for a rule of RFC 9112 or of the proxy's stated
//! policy, and when it accepts, the head says what the bytes say; and a head that arrives in two
//! reads gets the same answer as one that arrives in one.
//!
//! Input: five parameter bytes, then the bytes the client sent.
//!   [0] max_request_line_bytes = 64 + 8 * b   (64 is the config minimum)
//!   [1] max_header_bytes       = 256 + 16 * b (256 is the config minimum)
//!   [2] max_headers            = 1 + 4 * b    (up to 1021: past 128 the header table is on the heap)
//!   [3] max_body_bytes         = unlimited if b is 0, else 16 * b
//!   [4] where the first read ends
//! Limits come from the input so every limit branch and its exact boundary is within reach; the
//! ranges stay inside what config validation admits.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringproxy::http::{parse_request, BodyKind, HeadLimits, RequestError, RequestHead, Version};
use ringproxy_fuzz::fields::{self, Codings, ContentLength, Target};
use ringproxy_fuzz::{input, known};
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    let Some((p, raw)) = input::params::<5>(data) else {
        return;
    };
    let limits = limits_from(p);

    let mut buf = BytesMut::from(raw);
    let whole = parse_request(&mut buf, &limits);
    check_against_reference(raw, &limits, &whole, buf.len());

    let split = input::split_point(raw.len(), p[4]);
    let mut buf2 = BytesMut::from(&raw[..split]);
    let mut two_reads = parse_request(&mut buf2, &limits);
    if matches!(two_reads, Ok(None)) {
        buf2.extend_from_slice(&raw[split..]);
        two_reads = parse_request(&mut buf2, &limits);
    } else {
        buf2.extend_from_slice(&raw[split..]);
    }
    if known::REFUSAL_STATUS_DEPENDS_ON_READS && whole.is_err() && two_reads.is_err() {
        return;
    }
    assert_eq!(
        format!("{whole:?} rest {:?}", &buf[..]),
        format!("{two_reads:?} rest {:?}", &buf2[..]),
        "one read and two reads (split at {split}) disagree"
    );
});

/// The parameter bytes over the limits of a minimal valid config, so that fields added to
/// `HeadLimits` later keep their configured defaults.
fn limits_from(p: &[u8; 5]) -> HeadLimits {
    static BASE: OnceLock<HeadLimits> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let source = "[[backends]]\nurl = \"http://127.0.0.1:9\"\n";
        ringproxy::config::parse(std::path::Path::new("fuzz.toml"), source)
            .expect("the minimal config is valid")
            .limits
            .head
    });
    HeadLimits {
        max_request_line_bytes: 64 + 8 * usize::from(p[0]),
        max_header_bytes: 256 + 16 * usize::from(p[1]),
        max_headers: 1 + 4 * usize::from(p[2]),
        max_body_bytes: (p[3] != 0).then(|| 16 * u64::from(p[3])),
        ..base.clone()
    }
}

fn check_against_reference(
    raw: &[u8],
    limits: &HeadLimits,
    ours: &Result<Option<RequestHead>, RequestError>,
    buffered: usize,
) {
    // Room for every header field the input could hold, so the reference never runs short.
    let mut table = vec![httparse::EMPTY_HEADER; raw.len() / 2 + 1];
    let mut req = httparse::Request::new(&mut table);
    match (req.parse(raw), ours) {
        (Err(e), ours) => assert!(
            ours.is_err(),
            "httparse refuses ({e}), the proxy accepted: {ours:?}"
        ),
        (Ok(httparse::Status::Partial), ours) => check_unfinished(raw, limits, ours, buffered),
        (Ok(httparse::Status::Complete(len)), ours) => {
            let Refusals { must, may } = refusals(&req, len, raw, limits);
            match ours {
                Ok(Some(head)) => {
                    assert!(
                        must.is_empty(),
                        "accepted, but must refuse with one of {must:?}"
                    );
                    check_accepted(&req, len, raw, head);
                }
                Ok(None) => panic!("complete head (length {len}) taken as incomplete"),
                Err(e) => assert!(
                    must.contains(&e.status()) || may.contains(&e.status()),
                    "refused with {e:?}, but the refusals due are {must:?}, allowed {may:?}"
                ),
            }
        }
    }
}

/// A head that is not complete yet: waiting for more is right unless what stays buffered (all
/// of it, or what is left after the parser dropped empty lines) is already over a limit;
/// buffering on would let one client hold memory without bound.
fn check_unfinished(
    raw: &[u8],
    limits: &HeadLimits,
    ours: &Result<Option<RequestHead>, RequestError>,
    buffered: usize,
) {
    let line = request_line(raw).len();
    match ours {
        Ok(None) => assert!(
            line <= limits.max_request_line_bytes && buffered <= limits.max_header_bytes,
            "an unfinished head over the limits ({line}-byte line, {buffered} bytes buffered) \
             must be refused, not buffered"
        ),
        // The line end may count: a trailing CR is already there.
        Err(RequestError::UriTooLong) => assert!(
            line + 2 > limits.max_request_line_bytes,
            "414 on a short line"
        ),
        Err(RequestError::HeadersTooLarge(_)) => {
            let lines = raw.iter().filter(|&&b| b == b'\n').count();
            assert!(
                raw.len() > limits.max_header_bytes || lines > limits.max_headers,
                "431 on a small head"
            )
        }
        ours => panic!("httparse wants more, the proxy says {ours:?}"),
    }
}

/// The bytes of the empty lines before the request line, which a server may ignore
/// (RFC 9112 §2.2) and httparse does.
fn leading_empty_lines(raw: &[u8]) -> usize {
    raw.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(raw.len())
}

/// The request line without its line end, after any empty lines before it.
fn request_line(raw: &[u8]) -> &[u8] {
    let line = &raw[leading_empty_lines(raw)..];
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    line[..end].strip_suffix(b"\r").unwrap_or(&line[..end])
}

/// The statuses a complete head is refused with: `must` by RFC 9112 or the proxy's stated policy
/// (limits, CONNECT, target forms, Host, Expect, CL with TE), `may` where either answer is sound.
struct Refusals {
    must: Vec<u16>,
    may: Vec<u16>,
}

fn refusals(req: &httparse::Request, len: usize, raw: &[u8], limits: &HeadLimits) -> Refusals {
    let mut out = Refusals {
        must: Vec::new(),
        may: Vec::new(),
    };
    let mut must = |status: u16, why: bool| {
        if why {
            out.must.push(status);
        }
    };
    let headers = &*req.headers;
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let minor = req.version.unwrap_or_default();
    let line = request_line(raw).len();
    must(414, line > limits.max_request_line_bytes);
    // The head limit may count the empty lines before the request line, and must count the rest.
    let head = len - leading_empty_lines(raw);
    must(
        431,
        head > limits.max_header_bytes || headers.len() > limits.max_headers,
    );
    must(501, method == "CONNECT");
    must(
        400,
        method != "CONNECT" && fields::target_form(method, target.as_bytes()) == Target::Invalid,
    );

    let hosts = fields::values_of(headers, "host");
    must(400, if minor == 1 { hosts.len() != 1 } else { hosts.len() > 1 });
    must(
        400,
        hosts
            .iter()
            .any(|h| !fields::is_host_and_port(fields::trim_ows(h))),
    );
    let expects = fields::values_of(headers, "expect");
    must(
        400,
        expects
            .iter()
            .any(|v| !fields::trim_ows(v).eq_ignore_ascii_case(b"100-continue")),
    );

    let te = fields::values_of(headers, "transfer-encoding");
    let cl = fields::content_length(fields::values_of(headers, "content-length"));
    must(400, cl == ContentLength::Invalid);
    // RFC 9112 §6.1 lets Transfer-Encoding win; both present is a smuggling signature: refused.
    must(400, !te.is_empty() && cl != ContentLength::Absent);
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
    must(400, !te.is_empty() && minor == 0);
    match fields::codings(te.iter().copied()) {
        Codings::ChunkedAfterOthers => must(501, true),
        Codings::NotChunked => must(400, true),
        Codings::Absent | Codings::Chunked => {}
    }
    if let (ContentLength::Valid(n), Some(max)) = (cl, limits.max_body_bytes) {
        must(413, n > max);
    }

    // The line limit may count the line end too.
    if line + 2 > limits.max_request_line_bytes {
        out.may.push(414);
    }
    if len > limits.max_header_bytes {
        out.may.push(431);
    }
    // A Transfer-Encoding field with no coding in it: an empty list, which may be refused.
    if te.iter().any(|v| fields::list_elements(v).next().is_none()) {
        out.may.extend([400, 501]);
    }
    out
}

/// An accepted head carries exactly what the bytes say, under the proxy's forwarding rules.
fn check_accepted(req: &httparse::Request, len: usize, raw: &[u8], head: &RequestHead) {
    let headers = &*req.headers;
    assert_eq!(
        &head.raw[..],
        &raw[..len],
        "head length differs from httparse"
    );
    assert_eq!(head.method(), req.method.unwrap().as_bytes());
    assert_eq!(head.target(), req.path.unwrap().as_bytes());
    let minor = req.version.unwrap();
    assert_eq!(
        head.version,
        if minor == 1 {
            Version::Http11
        } else {
            Version::Http10
        }
    );

    let connection = fields::values_of(headers, "connection");
    let mut forwarded: Vec<(&[u8], &[u8])> = Vec::new();
    for h in headers.iter() {
        let name = h.name.as_bytes();
        // Every end-to-end field is kept (what is forwarded of them is the forwarding policy's
        // business, not the parser's); Host is kept apart, TE and Expect are interpreted.
        let kept = !(["host", "te", "expect"]
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
            || fields::is_connection_specific(name, &connection));
        if kept {
            forwarded.push((name, h.value));
        }
    }
    let ours: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .map(|f| (f.name.of(&head.raw), f.value.of(&head.raw)))
        .collect();
    assert_eq!(ours, forwarded, "forwarded header fields differ");
    assert!(ours.len() <= headers.len());
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2) and the target goes
    // on in origin-form.
    let target = req.path.unwrap().as_bytes();
    let (host, path) = match fields::target_form(req.method.unwrap(), target) {
        Target::Absolute { authority, rest } => (Some(authority), rest),
        _ => (
            fields::values_of(headers, "host")
                .first()
                .map(|h| fields::trim_ows(h)),
            target,
        ),
    };
    assert_eq!(head.host(), host, "host");
    assert_eq!(head.path(), path, "path");

    let te = fields::values_of(headers, "transfer-encoding");
    let body = match (
        fields::codings(te.iter().copied()),
        fields::content_length(fields::values_of(headers, "content-length")),
    ) {
        (Codings::Chunked, _) => BodyKind::Chunked,
        // `Content-Length: 0` stays a length (it goes upstream as one).
        (_, ContentLength::Valid(n)) => BodyKind::Length(n),
        _ => BodyKind::Empty,
    };
    let bodiless = matches!(body, BodyKind::Empty | BodyKind::Length(0));
    assert_eq!(head.body, body, "body framing");

    let (close, keep_alive) = fields::connection_options(&connection);
    assert_eq!(
        head.keep_alive,
        if minor == 1 {
            !close
        } else {
            keep_alive && !close
        }
    );
    let expects = !fields::values_of(headers, "expect").is_empty();
    // No 1xx to an HTTP/1.0 client (RFC 9110 §15.2).
    assert_eq!(head.expect_continue, expects && !bodiless && minor == 1);
    let te_trailers = fields::values_of(headers, "te")
        .iter()
        .any(|v| fields::list_elements(v).any(|t| t.eq_ignore_ascii_case(b"trailers")));
    assert_eq!(head.te_trailers, te_trailers);

    // Upgrade is passed on only for a bodiless HTTP/1.1 request whose Connection names it, and
    // never for h2c: the first Upgrade field with something besides whitespace.
    let names_upgrade = connection
        .iter()
        .flat_map(|v| fields::list_elements(v))
        .any(|o| o.eq_ignore_ascii_case(b"upgrade"));
    let upgrade = fields::values_of(headers, "upgrade")
        .into_iter()
        .find(|v| v.iter().any(|&b| b != b' ' && b != b'\t'))
        .filter(|v| !fields::list_elements(v).any(|p| p.eq_ignore_ascii_case(b"h2c")))
        .filter(|_| minor == 1 && bodiless && names_upgrade);
    assert_eq!(head.upgrade.map(|s| s.of(&head.raw)), upgrade, "upgrade");
}
