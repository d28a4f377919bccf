//! Response heads: `parse_response` never panics; it agrees with `httparse` run on the same
//! bytes on its own, refusing more only by the rules listed in `extra_refusals`; the body
//! framing it picks follows RFC 9112 §6.3; and a head that arrives in two reads gets the same
//! answer as one that arrives in one.
//!
//! Input: two parameter bytes, then the bytes the upstream sent.
//!   [0] bit 0: the request was HEAD
//!   [1] where the first read ends
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringproxy::http::response::MAX_RESPONSE_HEAD_BYTES;
use ringproxy::http::{parse_response, BodyKind, ResponseError, ResponseHead, Version};
use ringproxy_fuzz::fields::{self, Codings, ContentLength};
use ringproxy_fuzz::{input, known};

/// The proxy's cap on upstream header fields (`MAX_RESPONSE_HEADERS`, private to it).
const MAX_HEADERS: usize = 128;

fuzz_target!(|data: &[u8]| {
    let Some((p, raw)) = input::params::<2>(data) else {
        return;
    };
    let was_head = p[0] & 1 == 1;

    let mut buf = BytesMut::from(raw);
    let whole = parse_response(&mut buf, was_head);
    check_against_reference(raw, was_head, &whole);

    let split = input::split_point(raw.len(), p[1]);
    let mut buf2 = BytesMut::from(&raw[..split]);
    let mut two_reads = parse_response(&mut buf2, was_head);
    buf2.extend_from_slice(&raw[split..]);
    if matches!(two_reads, Ok(None)) {
        two_reads = parse_response(&mut buf2, was_head);
    }
    assert_eq!(
        format!("{whole:?} rest {:?}", &buf[..]),
        format!("{two_reads:?} rest {:?}", &buf2[..]),
        "one read and two reads (split at {split}) disagree"
    );
});

fn check_against_reference(
    raw: &[u8],
    was_head: bool,
    ours: &Result<Option<ResponseHead>, ResponseError>,
) {
    let mut table = vec![httparse::EMPTY_HEADER; raw.len() / 2 + 1];
    let mut res = httparse::Response::new(&mut table);
    match (res.parse(raw), ours) {
        (Err(e), ours) => assert!(
            ours.is_err(),
            "httparse refuses ({e}), the proxy accepted: {ours:?}"
        ),
        (Ok(httparse::Status::Partial), Ok(None)) => {}
        (Ok(httparse::Status::Partial), Err(ResponseError::TooLarge)) => {
            let lines = raw.iter().filter(|&&b| b == b'\n').count();
            assert!(
                raw.len() > MAX_RESPONSE_HEAD_BYTES || lines > MAX_HEADERS,
                "TooLarge on a small head"
            )
        }
        (Ok(httparse::Status::Partial), ours) => {
            panic!("httparse wants more, the proxy says {ours:?}")
        }
        (Ok(httparse::Status::Complete(len)), ours) => {
            let framing = rfc_framing(&res, was_head);
            let extra = extra_refusals(&res, len, was_head);
            match ours {
                Ok(Some(head)) => {
                    let Some(mut body) = framing else {
                        panic!(
                            "accepted a head whose framing RFC 9112 §6.3 calls invalid: {head:?}"
                        )
                    };
                    if known::EMPTY_TE_FIELD_ENDS_CHUNKED
                        && body != BodyKind::Empty
                        && has_empty_te_field(&res)
                    {
                        body = BodyKind::UntilClose;
                    }
                    check_accepted(&res, len, raw, head, body);
                }
                Ok(None) => panic!("complete head (length {len}) taken as incomplete"),
                Err(e) => assert!(
                    framing.is_none() || !extra.is_empty(),
                    "refused with {e:?}, but RFC 9112 frames it and no extra rule applies"
                ),
            }
        }
    }
}

/// The body framing of RFC 9112 §6.3, items 1 to 7 (`None`: invalid framing, item 5).
fn rfc_framing(res: &httparse::Response, was_head: bool) -> Option<BodyKind> {
    let status = res.code.unwrap_or_default();
    if was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(BodyKind::Empty);
    }
    let te = fields::values_of(res.headers, "transfer-encoding");
    match fields::codings(te.iter().copied()) {
        Codings::Chunked | Codings::ChunkedAfterOthers => return Some(BodyKind::Chunked),
        Codings::NotChunked => return Some(BodyKind::UntilClose),
        Codings::Absent => {}
    }
    match fields::content_length(fields::values_of(res.headers, "content-length")) {
        ContentLength::Invalid => None,
        // `Content-Length: 0` stays a length: the client must be told the body is empty.
        ContentLength::Valid(n) => Some(BodyKind::Length(n)),
        ContentLength::Absent => Some(BodyKind::UntilClose),
    }
}

/// The rules by which the proxy may refuse upstream heads that RFC 9112 frames, each one seen to
/// apply while fuzzing (the last: only for some orders of the fields).
fn extra_refusals(res: &httparse::Response, len: usize, was_head: bool) -> Vec<&'static str> {
    let status = res.code.unwrap_or_default();
    let has_body = !(was_head || (100..200).contains(&status) || status == 204 || status == 304);
    let te = fields::values_of(res.headers, "transfer-encoding");
    let rules = [
        ("status below 100", status < 100),
        // 600-999 mean nothing (RFC 9110 §15): a broken response.
        ("status above 599", status > 599),
        (
            "more than 128 header fields",
            res.headers.len() > MAX_HEADERS,
        ),
        ("head over 64 KiB", len > MAX_RESPONSE_HEAD_BYTES),
        (
            "invalid or conflicting Content-Length, even where it does not frame the body",
            fields::content_length(fields::values_of(res.headers, "content-length"))
                == ContentLength::Invalid,
        ),
        (
            "codings before chunked (gzip, chunked; chunked twice)",
            has_body && fields::codings(te.iter().copied()) == Codings::ChunkedAfterOthers,
        ),
        (
            // HAProxy's rule: a coding the proxy cannot undo is a broken response.
            "a final transfer coding other than chunked (gzip)",
            has_body
                && te
                    .iter()
                    .flat_map(|v| fields::list_elements(v))
                    .last()
                    .is_some_and(|c| !c.eq_ignore_ascii_case(b"chunked")),
        ),
        (
            "a Transfer-Encoding field with no coding, before chunked",
            has_body && has_empty_te_field(res),
        ),
    ];
    rules
        .iter()
        .filter(|(_, applies)| *applies)
        .map(|(rule, _)| *rule)
        .collect()
}

/// A Transfer-Encoding field whose value lists no coding (empty, or commas only).
fn has_empty_te_field(res: &httparse::Response) -> bool {
    fields::values_of(res.headers, "transfer-encoding")
        .iter()
        .any(|v| fields::list_elements(v).next().is_none())
}

/// An accepted head carries exactly what the bytes say, under the proxy's forwarding rules.
fn check_accepted(
    res: &httparse::Response,
    len: usize,
    raw: &[u8],
    head: &ResponseHead,
    body: BodyKind,
) {
    assert_eq!(
        &head.raw[..],
        &raw[..len],
        "head length differs from httparse"
    );
    assert_eq!(head.status, res.code.unwrap());
    let minor = res.version.unwrap();
    assert_eq!(
        head.version,
        if minor == 1 {
            Version::Http11
        } else {
            Version::Http10
        }
    );
    assert_eq!(
        head.reason.of(&head.raw),
        res.reason.unwrap_or_default().as_bytes()
    );
    assert_eq!(head.body, body, "body framing differs from RFC 9112 §6.3");

    let connection = fields::values_of(res.headers, "connection");
    let forwarded: Vec<(&[u8], &[u8])> = res
        .headers
        .iter()
        .filter(|h| !fields::is_connection_specific(h.name.as_bytes(), &connection))
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    let ours: Vec<(&[u8], &[u8])> = head
        .headers
        .iter()
        .map(|f| (f.name.of(&head.raw), f.value.of(&head.raw)))
        .collect();
    assert_eq!(ours, forwarded, "forwarded header fields differ");

    let cl = fields::values_of(res.headers, "content-length");
    assert_eq!(
        head.content_length.map(|s| s.of(&head.raw)),
        cl.first().copied()
    );
    let te = fields::values_of(res.headers, "transfer-encoding");
    let declared_chunked = fields::codings(te.iter().copied()) == Codings::Chunked
        && !(known::EMPTY_TE_FIELD_ENDS_CHUNKED && has_empty_te_field(res));
    assert_eq!(head.declared_chunked, declared_chunked, "declared chunked");

    // The protocol a 101 switches to: the first Upgrade field, kept out of the forwarded ones.
    let upgrade = fields::values_of(res.headers, "upgrade");
    assert_eq!(
        head.upgrade.map(|s| s.of(&head.raw)),
        upgrade.first().copied(),
        "upgrade"
    );

    // Reuse: as the version and Connection allow, never after a close-delimited body, never
    // after a chunked body that also carried Content-Length (RFC 9112 §6.3 item 3), never after
    // a 101 (the connection has left HTTP).
    let (close, keep_alive) = fields::connection_options(&connection);
    let allowed = if minor == 1 {
        !close
    } else {
        keep_alive && !close
    };
    let chunked_with_length = body == BodyKind::Chunked && !cl.is_empty();
    let switched = head.status == 101;
    let reusable = allowed && body != BodyKind::UntilClose && !chunked_with_length && !switched;
    assert_eq!(head.reusable, reusable, "connection reuse");
}
