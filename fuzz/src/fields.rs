//! Header-field rules as RFC 9110 and RFC 9112 state them, written apart from the proxy's
//! `http::head` so the targets can check it: tokens and values, list elements,
//! Content-Length, Transfer-Encoding, and the connection-specific fields a proxy drops.

/// `tchar` (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `token = 1*tchar`.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// `OWS field-value OWS`: visible ASCII, obs-text, SP and HTAB only (RFC 9110 §5.5).
pub fn is_field_value(s: &[u8]) -> bool {
    s.iter()
        .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

/// `OWS = *( SP / HTAB )` removed from both ends.
pub fn trim_ows(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |p| p + 1);
    &s[start..end]
}

/// Elements of a list-valued field (`#rule`, RFC 9110 §5.6.1): split on commas, OWS trimmed,
/// empty elements ignored.
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// All Content-Length fields of a message taken together (RFC 9112 §6.3 items 5 and 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentLength {
    Absent,
    Valid(u64),
    /// Not `1*DIGIT`, more than one different value, or beyond what a u64 holds.
    Invalid,
}

/// A list form ("5, 5") counts as invalid: RFC 9110 §8.6 lets a recipient accept it, but a proxy
/// that frames by it must agree with every other parser on the path, so refusing is the safe side.
/// Lengths of more than 19 digits count as invalid too (a representation limit, not grammar).
pub fn content_length<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> ContentLength {
    let mut seen = ContentLength::Absent;
    for value in values {
        let digits = trim_ows(value);
        let parsed =
            (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
                .flatten();
        seen = match (seen, parsed) {
            (ContentLength::Absent, Some(n)) => ContentLength::Valid(n),
            (ContentLength::Valid(prev), Some(n)) if prev == n => seen,
            _ => ContentLength::Invalid,
        };
    }
    seen
}

/// All Transfer-Encoding fields of a message taken together (RFC 9112 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codings {
    Absent,
    /// The list is exactly one `chunked`.
    Chunked,
    /// The final coding is `chunked`, after others (`gzip, chunked`, or `chunked` twice).
    ChunkedAfterOthers,
    /// The field is present but the final coding is not `chunked` (or there is none).
    NotChunked,
}

pub fn codings<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Codings {
    let mut list: Vec<&[u8]> = Vec::new();
    let mut present = false;
    for value in values {
        present = true;
        list.extend(list_elements(value));
    }
    let is_chunked = |c: &&[u8]| c.eq_ignore_ascii_case(b"chunked");
    match list.as_slice() {
        _ if !present => Codings::Absent,
        [only] if is_chunked(only) => Codings::Chunked,
        [.., last] if is_chunked(last) => Codings::ChunkedAfterOthers,
        _ => Codings::NotChunked,
    }
}

/// Whether a field describes one connection, not the message, so a proxy must not forward it
/// (RFC 9110 §7.6.1), or is re-framed by the proxy (Content-Length, Transfer-Encoding):
/// Connection and the fields it names, Keep-Alive, Proxy-Connection, TE, Upgrade,
/// HTTP2-Settings (RFC 9113 §3.2.1). Not Trailer: it announces the trailer section, which is
/// passed on with chunked bodies.
pub fn is_connection_specific(name: &[u8], connection_values: &[&[u8]]) -> bool {
    const FIXED: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "transfer-encoding",
        "content-length",
        "http2-settings",
    ];
    FIXED
        .iter()
        .any(|f| f.as_bytes().eq_ignore_ascii_case(name))
        || connection_values
            .iter()
            .flat_map(|v| list_elements(v))
            .any(|option| option.eq_ignore_ascii_case(name))
}

/// The Connection options of a message: (`close` present, `keep-alive` present).
pub fn connection_options(connection_values: &[&[u8]]) -> (bool, bool) {
    let has = |token: &[u8]| {
        connection_values
            .iter()
            .flat_map(|v| list_elements(v))
            .any(|o| o.eq_ignore_ascii_case(token))
    };
    (has(b"close"), has(b"keep-alive"))
}

/// The values of every field called `name`, in order.
pub fn values_of<'b>(headers: &[httparse::Header<'b>], name: &str) -> Vec<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

/// `uri-host [ ":" port ]` of RFC 3986 §3.2.2-3.2.3 as a Host value (RFC 9110 §7.2): a
/// reg-name (unreserved, sub-delims, pct-encoded; an IPv4 address is one too) that is not empty,
/// or an IPv6 literal in brackets; a port of digits up to 65535 (possibly empty).
pub fn is_host_and_port(value: &[u8]) -> bool {
    let (host, port): (&[u8], &[u8]) = if value.starts_with(b"[") {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&value[1..end]).unwrap_or("-");
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match value[end + 1..].split_first() {
            None => return true,
            Some((b':', port)) => (b"x", port),
            Some(_) => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, b""),
        }
    };
    let reg_name = !host.is_empty()
        && host.iter().enumerate().all(|(i, &b)| match b {
            b'%' => {
                host.len() > i + 2
                    && host[i + 1].is_ascii_hexdigit()
                    && host[i + 2].is_ascii_hexdigit()
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            _ => false,
        });
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port
            .iter()
            .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
            <= 65535;
    reg_name && port_ok
}

/// The request-target forms of RFC 9112 §3.2 a reverse proxy takes: origin-form, `*` (OPTIONS
/// only) and absolute-form with an `http`/`https` scheme (any case) and an authority without
/// userinfo; no fragment anywhere (RFC 9110 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Origin,
    Asterisk,
    Absolute { authority: &'a [u8], rest: &'a [u8] },
    Invalid,
}

pub fn target_form<'a>(method: &str, target: &'a [u8]) -> Target<'a> {
    if target.contains(&b'#') {
        return Target::Invalid;
    }
    if target.starts_with(b"/") {
        return Target::Origin;
    }
    if target == b"*" {
        return if method == "OPTIONS" {
            Target::Asterisk
        } else {
            Target::Invalid
        };
    }
    let lower = target.to_ascii_lowercase();
    let after = if lower.starts_with(b"http://") {
        7
    } else if lower.starts_with(b"https://") {
        8
    } else {
        return Target::Invalid;
    };
    let rest = &target[after..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains(&b'@') || !is_host_and_port(authority) {
        return Target::Invalid;
    }
    Target::Absolute {
        authority,
        rest: &rest[end..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_targets() {
        for good in [&b"a.example"[..], b"a:80", b"[::1]:8080", b"[::1]", b"1.2.3.4", b"a:", b"%41b"] {
            assert!(is_host_and_port(good), "{good:?}");
        }
        for bad in [&b""[..], b"a b", b"a@b", b"a/b", b"a:99999", b"a:8x", b"[::1", b"[::g]", b"%4", b"a:1:2"] {
            assert!(!is_host_and_port(bad), "{bad:?}");
        }
        assert_eq!(target_form("GET", b"*"), Target::Invalid);
        assert_eq!(target_form("OPTIONS", b"*"), Target::Asterisk);
        assert_eq!(
            target_form("GET", b"HTTP://a?q"),
            Target::Absolute { authority: b"a", rest: b"?q" }
        );
        assert_eq!(target_form("GET", b"http://u@a/"), Target::Invalid);
        assert_eq!(target_form("GET", b"/a#b"), Target::Invalid);
    }

    #[test]
    fn content_length_forms() {
        assert_eq!(content_length([&b" 7 "[..], b"7"]), ContentLength::Valid(7));
        assert_eq!(content_length([]), ContentLength::Absent);
        for bad in [
            &b""[..],
            b"+1",
            b"1 2",
            b"5, 5",
            b"0x1",
            b"18446744073709551616",
            b"00000000000000000001",
        ] {
            assert_eq!(content_length([bad]), ContentLength::Invalid, "{bad:?}");
        }
        assert_eq!(content_length([&b"1"[..], b"2"]), ContentLength::Invalid);
    }

    #[test]
    fn coding_lists() {
        assert_eq!(codings([&b"Chunked"[..]]), Codings::Chunked);
        assert_eq!(codings([&b", chunked ,"[..]]), Codings::Chunked);
        assert_eq!(codings([&b""[..], b"chunked"]), Codings::Chunked);
        assert_eq!(
            codings([&b"gzip"[..], b"chunked"]),
            Codings::ChunkedAfterOthers
        );
        assert_eq!(
            codings([&b"chunked"[..], b"chunked"]),
            Codings::ChunkedAfterOthers
        );
        assert_eq!(codings([&b"chunked, gzip"[..]]), Codings::NotChunked);
        assert_eq!(codings([&b""[..]]), Codings::NotChunked);
        assert_eq!(codings(Vec::<&[u8]>::new()), Codings::Absent);
    }

    #[test]
    fn connection_specific_fields() {
        let conn: [&[u8]; 1] = [b"close, X-Private"];
        assert!(is_connection_specific(b"x-private", &conn));
        assert!(is_connection_specific(b"Keep-Alive", &[]));
        assert!(!is_connection_specific(b"x-other", &conn));
        assert_eq!(connection_options(&conn), (true, false));
    }
}
