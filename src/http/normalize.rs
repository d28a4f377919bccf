//! The normalised view of a request's host and path that routes match and the upstream gets:
//! hosts lowercased without port or trailing dot; paths with unreserved percent-escapes decoded,
//! `.` and `..` resolved (RFC 3986 §5.2.4) and repeated slashes merged, but `%2F` and `%5C`
//! kept encoded. Gateways that matched one form and forwarded another let `/public/../admin`,
//! `/%61dmin` or `//admin` past rules meant to guard `/admin`. Pure functions; no allocation
//! when nothing changes, which is the common case.

use std::borrow::Cow;

/// Why a path cannot be normalised (the request gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `..` segments climb above `/`: there is nothing there, and a backend that clamps at the
    /// root would read something else than a backend that does not.
    AboveRoot,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::AboveRoot => "path climbs above /",
            PathError::BadEscape => "invalid percent-escape in path",
        }
    }
}

/// The host a route matches (a valid `host[:port]`, see `target::is_valid_host`): port and one
/// trailing dot removed, lowercased, unreserved percent-escapes decoded. Borrowed unless it had
/// to change more than by cutting.
pub fn host(value: &[u8]) -> Cow<'_, [u8]> {
    let name = match value.first() {
        // `[v6]` or `[v6]:port`.
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(close) => &value[..=close],
            None => value,
        },
        _ => match value.iter().rposition(|&b| b == b':') {
            Some(colon) => &value[..colon],
            None => value,
        },
    };
    let name = match name.strip_suffix(b".") {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => name,
    };
    if !name.iter().any(|&b| b.is_ascii_uppercase() || b == b'%') {
        return Cow::Borrowed(name);
    }
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        match escape_at(name, i) {
            Some(Ok(decoded)) if is_unreserved(decoded) => {
                out.push(decoded.to_ascii_lowercase());
                i += 3;
            }
            Some(Ok(_)) => {
                push_escape(&mut out, &name[i + 1..i + 3]);
                i += 3;
            }
            _ => {
                out.push(name[i].to_ascii_lowercase());
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// The normalised form of an origin-form path (starting with `/`, without its query): escapes
/// of unreserved characters decoded and the others' hex digits in upper case (RFC 3986
/// §6.2.2.1-2), `%2F` and `%5C` kept encoded and never taken for separators, `.` and `..`
/// segments resolved, repeated slashes merged when `merge_slashes`. Borrowed when unchanged.
pub fn path(path: &[u8], merge_slashes: bool) -> Result<Cow<'_, [u8]>, PathError> {
    if !needs_work(path, merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let resolved = resolve_segments(&decoded, merge_slashes)?;
    if resolved == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(resolved))
    }
}

/// Whether `path` may change: it has an escape, a `.` or `..` segment, or (merging) `//`.
fn needs_work(path: &[u8], merge_slashes: bool) -> bool {
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'%' => return true,
            b'/' => {
                let next = path.get(i + 1).copied();
                if merge_slashes && next == Some(b'/') {
                    return true;
                }
                if next == Some(b'.') {
                    let ends = |at: usize| path.get(at).is_none_or(|&b| b == b'/');
                    if ends(i + 2) || (path.get(i + 2) == Some(&b'.') && ends(i + 3)) {
                        return true;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// `Some(Ok(byte))` for a valid `%XX` at `i`, `Some(Err)` for a broken one, `None` if no `%`.
fn escape_at(s: &[u8], i: usize) -> Option<Result<u8, PathError>> {
    if s[i] != b'%' {
        return None;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let value = match (
        s.get(i + 1).and_then(|&b| hex(b)),
        s.get(i + 2).and_then(|&b| hex(b)),
    ) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(PathError::BadEscape),
    };
    Some(value)
}

/// RFC 3986 §2.3: ALPHA DIGIT `-` `.` `_` `~`; their escapes mean the same as the characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escape(out: &mut Vec<u8>, hex: &[u8]) {
    out.push(b'%');
    out.extend(hex.iter().map(u8::to_ascii_uppercase));
}

fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match escape_at(path, i) {
            None => {
                out.push(path[i]);
                i += 1;
            }
            Some(Err(e)) => return Err(e),
            Some(Ok(b)) if is_unreserved(b) => {
                out.push(b);
                i += 3;
            }
            Some(Ok(_)) => {
                push_escape(&mut out, &path[i + 1..i + 3]);
                i += 3;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on a decoded path, refusing to climb above the root instead of clamping.
fn resolve_segments(path: &[u8], merge_slashes: bool) -> Result<Vec<u8>, PathError> {
    let body = path.strip_prefix(b"/").unwrap_or(path);
    let segments: Vec<&[u8]> = body.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut kept: Vec<&[u8]> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (k, &segment) in segments.iter().enumerate() {
        trailing_slash = false;
        match segment {
            b"." => trailing_slash = k == last,
            b".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = k == last;
            }
            b"" if k == last => trailing_slash = true,
            b"" if merge_slashes => {}
            _ => kept.push(segment),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push(b'/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        path(p.as_bytes(), true).map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    #[test]
    fn paths_that_reach_around_rules_are_normalised() {
        for (raw, want) in [
            ("/v1/../admin", "/admin"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2e/admin", "/admin"),
            ("/v1/.%2e/admin", "/admin"),
            ("//admin", "/admin"),
            ("///admin//x", "/admin/x"),
            ("/%61dmin", "/admin"),
            ("/%41DMIN", "/ADMIN"),
            ("/public/./admin", "/public/admin"),
            ("/public/%2e/admin", "/public/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/", "/"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/b/../../c", "/c"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn encoded_separators_stay_encoded_and_are_not_separators() {
        assert_eq!(norm("/admin%2F..").as_deref(), Ok("/admin%2F.."));
        assert_eq!(norm("/admin%2f..").as_deref(), Ok("/admin%2F.."));
        assert_eq!(norm("/a%5C..%5Cb").as_deref(), Ok("/a%5C..%5Cb"));
        assert_eq!(
            norm("/public%2F..%2Fadmin").as_deref(),
            Ok("/public%2F..%2Fadmin")
        );
        // Reserved and other characters stay escaped, hex in upper case.
        assert_eq!(norm("/a%20b%3f%00").as_deref(), Ok("/a%20b%3F%00"));
    }

    #[test]
    fn climbing_above_the_root_and_broken_escapes_are_refused() {
        for raw in [
            "/..",
            "/../a",
            "/a/../..",
            "/%2e%2e",
            "//..",
            "/a/./../../b",
        ] {
            assert_eq!(norm(raw), Err(PathError::AboveRoot), "{raw}");
        }
        for raw in ["/a%", "/a%2", "/a%zz", "/%g0"] {
            assert_eq!(norm(raw), Err(PathError::BadEscape), "{raw}");
        }
    }

    #[test]
    fn unchanged_paths_are_borrowed() {
        for raw in [
            "/",
            "/small",
            "/a/b/c.txt",
            "/..a/...",
            "/a.",
            "/.well-known/x",
            "/a%20b",
        ] {
            assert!(
                matches!(path(raw.as_bytes(), true), Ok(Cow::Borrowed(_))),
                "{raw}"
            );
        }
        assert!(matches!(path(b"/a//b", false), Ok(Cow::Borrowed(_))));
        assert!(matches!(path(b"/a//b", true), Ok(Cow::Owned(_))));
    }

    #[test]
    fn without_merging_empty_segments_are_kept() {
        let keep = |p: &str| String::from_utf8(path(p.as_bytes(), false).unwrap().into_owned());
        assert_eq!(keep("//admin").unwrap(), "//admin");
        assert_eq!(keep("/a//../b").unwrap(), "/a/b");
        assert_eq!(keep("/a/.//b").unwrap(), "/a//b");
    }

    #[test]
    fn hosts_lose_port_and_trailing_dot_and_case() {
        let h = |v: &str| String::from_utf8(host(v.as_bytes()).into_owned()).unwrap();
        assert_eq!(h("API.Example.com:8080"), "api.example.com");
        assert_eq!(h("api.example.com."), "api.example.com");
        assert_eq!(h("api.example.com.:443"), "api.example.com");
        assert_eq!(h("[::1]:8080"), "[::1]");
        assert_eq!(h("[2001:DB8::1]"), "[2001:db8::1]");
        assert_eq!(h("127.0.0.1:3000"), "127.0.0.1");
        assert_eq!(h("%61pi.example.com"), "api.example.com");
        assert_eq!(h("a%2fb"), "a%2Fb");
        assert_eq!(h("host:"), "host");
        assert!(matches!(host(b"api.example.com:80"), Cow::Borrowed(_)));
    }

    /// RFC 3986 §5.2.4 as the RFC writes it (an input and an output buffer), refusing where it
    /// would clamp at the root; repeated slashes collapsed first when merging. A reference to
    /// check the segment-list version against.
    fn reference(path: &str, merge: bool) -> Result<String, PathError> {
        let mut decoded = String::new();
        let bytes = path.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                decoded.push(bytes[i] as char);
                i += 1;
                continue;
            }
            let hex = path.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEscape)?;
            if hex.starts_with('+') || hex.starts_with('-') {
                return Err(PathError::BadEscape);
            }
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                decoded.push(b as char);
            } else {
                decoded.push_str(&format!("%{}", hex.to_ascii_uppercase()));
            }
            i += 3;
        }
        let mut input = decoded;
        if merge {
            while input.contains("//") {
                input = input.replace("//", "/");
            }
        }
        let mut output = String::new();
        while !input.is_empty() {
            if let Some(rest) = input
                .strip_prefix("../")
                .or_else(|| input.strip_prefix("./"))
            {
                input = rest.to_string();
            } else if input.starts_with("/./") || input == "/." {
                input = format!("/{}", &input[input.len().min(3)..]);
            } else if input.starts_with("/../") || input == "/.." {
                input = format!("/{}", &input[input.len().min(4)..]);
                let cut = output.rfind('/').ok_or(PathError::AboveRoot)?;
                output.truncate(cut);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let end = input[1..].find('/').map_or(input.len(), |p| p + 1);
                output.push_str(&input[..end]);
                input = input[end..].to_string();
            }
        }
        Ok(output)
    }

    #[test]
    fn agrees_with_the_rfc_algorithm_on_random_paths_and_is_idempotent() {
        const PIECES: [&str; 18] = [
            "/", "a", "b", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%61", "%", "%z", "~",
            "-", "//", "/./", "/../",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut raw = String::from("/");
            for _ in 0..(next() % 10) {
                raw.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            for merge in [true, false] {
                let ours = path(raw.as_bytes(), merge)
                    .map(|p| String::from_utf8(p.into_owned()).expect("ascii"));
                assert_eq!(ours, reference(&raw, merge), "{raw:?} merge={merge}");
                let Ok(out) = ours else { continue };
                assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
                assert!(
                    matches!(path(out.as_bytes(), merge), Ok(Cow::Borrowed(_))),
                    "not idempotent: {raw:?} -> {out:?}"
                );
                let segments: Vec<&str> = out[1..].split('/').collect();
                assert!(
                    !segments.contains(&".") && !segments.contains(&".."),
                    "{out:?}"
                );
                assert!(!merge || !out.contains("//"), "{out:?}");
            }
        }
    }
}
