//! The request target and the Host: which of RFC 9112 §3.2's forms a target has, the authority
//! of an absolute-form target, and whether a Host value is a valid `host[:port]` (RFC 3986
//! §3.2.2-3.2.3). A proxy that passes on what it cannot parse lets the next hop read the request
//! differently from the rules that looked at it (cache poisoning, routing around rules).

use std::ops::Range;

/// Where the parts of a valid request target are, as byte ranges of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    Origin,
    /// `http://authority/path?query`: the authority replaces Host (RFC 9112 §3.2.2) and the
    /// path (possibly empty, or just `?query`) goes upstream in origin-form.
    Absolute {
        authority: Range<usize>,
        path: Range<usize>,
    },
    /// `*` (OPTIONS only).
    Asterisk,
}

/// Classifies a request target; the error says why it is refused (400).
pub fn classify(target: &[u8]) -> Result<TargetForm, &'static str> {
    if target.contains(&b'#') {
        // A fragment is never sent (RFC 9110 §4.1); one in a request is a broken or hostile client.
        return Err("fragment in request target");
    }
    if target.first() == Some(&b'/') {
        return Ok(TargetForm::Origin);
    }
    if target == b"*" {
        return Ok(TargetForm::Asterisk);
    }
    let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
        return Err("malformed request target");
    };
    let scheme = &target[..scheme_end];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err("request target scheme is not http or https");
    }
    let start = scheme_end + 3;
    let end = target[start..]
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .map_or(target.len(), |p| start + p);
    let authority = &target[start..end];
    if authority.contains(&b'@') {
        return Err("userinfo in request target");
    }
    if !is_valid_host(authority) {
        return Err("invalid authority in request target");
    }
    Ok(TargetForm::Absolute {
        authority: start..end,
        path: end..target.len(),
    })
}

/// `host [ ":" port ]` where host is a reg-name, an IPv4 address or `[IPv6]` and port is digits
/// (at most 65535). Empty is invalid.
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => {
            let Some(close) = value.iter().position(|&b| b == b']') else {
                return false;
            };
            let inside = std::str::from_utf8(&value[1..close]).unwrap_or("");
            if inside.parse::<std::net::Ipv6Addr>().is_err() {
                return false;
            }
            match &value[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (&value[..=close], port),
                _ => return false,
            }
        }
        Some(_) => {
            let name_len = reg_name_len(value);
            match &value[name_len..] {
                _ if name_len == 0 => return false,
                [] => return true,
                [b':', port @ ..] => (&value[..name_len], port),
                _ => return false,
            }
        }
        None => return false,
    };
    let port_ok = port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535;
    port_ok && !host.is_empty()
}

/// The bytes a reg-name may hold as they are: unreserved and sub-delims (RFC 3986 §3.2.2).
const REG_NAME: [bool; 256] = super::head::byte_class(b"-._~!$&'()*+,;=");

/// How long the RFC 3986 reg-name (which an IPv4 address also is: unreserved, sub-delims and
/// `%XX`) at the start of `s` is; one pass, by table.
fn reg_name_len(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if REG_NAME[usize::from(b)] {
            i += 1;
        } else if b == b'%'
            && s.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            i += 3;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for good in [
            &b"example.com"[..],
            b"example.com:8080",
            b"EXAMPLE.com.",
            b"127.0.0.1",
            b"127.0.0.1:80",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"a_b.example",
            b"xn--bcher-kva.example",
            b"host:",
            b"[::1]:",
            b"%41.example",
        ] {
            assert!(is_valid_host(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"a b",
            b"good.example@evil.example:80/x?",
            b"evil/x",
            b"host:80:80",
            b"host:99999",
            b"host:8o",
            b"[::1",
            b"[::1]x",
            b"[zz::1]",
            b":80",
            b"a\\b",
            b"%4",
            b"h#x",
        ] {
            assert!(!is_valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn target_forms() {
        assert_eq!(classify(b"/a?b"), Ok(TargetForm::Origin));
        assert_eq!(classify(b"*"), Ok(TargetForm::Asterisk));
        assert_eq!(
            classify(b"http://evil.example/x?y"),
            Ok(TargetForm::Absolute {
                authority: 7..19,
                path: 19..23
            })
        );
        assert_eq!(
            classify(b"HTTPS://a.example"),
            Ok(TargetForm::Absolute {
                authority: 8..17,
                path: 17..17
            })
        );
        assert_eq!(
            classify(b"http://a.example?q=1"),
            Ok(TargetForm::Absolute {
                authority: 7..16,
                path: 16..20
            })
        );
        for bad in [
            &b"http://user:pw@evil/"[..],
            b"ftp://a/",
            b"/a#frag",
            b"http:///x",
            b"http://a b/",
            b"nothing",
            b"javascript://x",
        ] {
            assert!(classify(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
