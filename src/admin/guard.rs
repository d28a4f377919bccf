//! Who may use the admin API. With a token, the bearer token; without one, only requests
//! addressed to an IP address or `localhost` (a DNS-rebinding page names its own host). Changes
//! must not come from another origin's page (CSRF) and carry a JSON body or none, which an HTML
//! form cannot send.

use super::{AdminRequest, Response};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `Ok` if `req` may be routed; else the refusal to send. `local` is the address the
/// connection came in on.
pub fn admit(req: &AdminRequest, token: Option<&str>, local: SocketAddr) -> Result<(), Response> {
    let host = req.header("host");
    match token {
        Some(token) => {
            if !authorized(token, req.header("authorization")) {
                return Err(Response::text(
                    401,
                    "401 Unauthorized: send Authorization: Bearer <token>\n",
                ));
            }
        }
        None => {
            if host.is_some_and(|h| !names_this_machine(h)) {
                return Err(Response::text(
                    421,
                    "421 Misdirected Request: without admin.token, the admin API answers only \
                     requests to an IP address or localhost (Host), against DNS rebinding\n",
                ));
            }
        }
    }
    if matches!(req.method.as_str(), "GET" | "HEAD") {
        return Ok(());
    }
    if req
        .headers_named("origin")
        .any(|origin| !is_own_origin(origin, host, local))
    {
        return Err(Response::text(
            403,
            "403 Forbidden: changes are refused from another origin (Origin header)\n",
        ));
    }
    if !json_or_nothing(req) {
        return Err(Response::text(
            415,
            "415 Unsupported Media Type: send Content-Type: application/json, or no body\n",
        ));
    }
    Ok(())
}

fn authorized(token: &str, header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    // Compare in constant time so the token cannot be guessed byte by byte.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A body only as `application/json`; no body with no media type (or an empty one, as some
/// clients send). A form's types (urlencoded, multipart, text/plain) never pass, empty or not.
fn json_or_nothing(req: &AdminRequest) -> bool {
    let types: Vec<&str> = req
        .headers_named("content-type")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    match types.as_slice() {
        [] => req.body.is_empty(),
        [one] => one
            .split(';')
            .next()
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json")),
        _ => false,
    }
}

/// How a Host header or an origin names a host.
#[derive(Debug, PartialEq)]
enum HostName<'a> {
    Ip(IpAddr),
    Localhost,
    /// A DNS name (or anything else): only the token can vouch for these.
    Other(&'a str),
}

/// `host[:port]` (host an IPv4 literal, `[IPv6]`, or a name) split and classified; `None` if
/// malformed.
fn authority(s: &str) -> Option<(HostName<'_>, Option<u16>)> {
    let (host, rest) = match s.strip_prefix('[') {
        Some(v6) => {
            let end = v6.find(']')?;
            let ip = v6[..end].parse::<Ipv6Addr>().ok()?;
            (HostName::Ip(IpAddr::V6(ip)), &v6[end + 1..])
        }
        None => {
            let (host, rest) = s.find(':').map_or((s, ""), |i| s.split_at(i));
            let name = if let Ok(ip) = host.parse::<Ipv4Addr>() {
                HostName::Ip(IpAddr::V4(ip))
            } else if host.eq_ignore_ascii_case("localhost") {
                HostName::Localhost
            } else if !host.is_empty() {
                HostName::Other(host)
            } else {
                return None;
            };
            (name, rest)
        }
    };
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        Some(p) if (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        _ => return None,
    };
    Some((host, port))
}

/// An IP literal or `localhost`, with or without a port: what a DNS-rebinding page cannot send.
fn names_this_machine(host: &str) -> bool {
    matches!(
        authority(host),
        Some((HostName::Ip(_) | HostName::Localhost, _))
    )
}

/// `Origin: http://<authority>` naming the same host and port as the request's `Host`, which
/// in turn names the address the connection came in on (a name is let through here only with a
/// token, by then checked). `null` (sandboxed or privacy-stripped origins) is another origin.
fn is_own_origin(origin: &str, host: Option<&str>, local: SocketAddr) -> bool {
    let (Some(host), Some(scheme)) = (host, origin.get(..7)) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http://") {
        return false;
    }
    let (Some(from), Some(to)) = (authority(&origin[7..]), authority(host)) else {
        return false;
    };
    let same_host = match (&from.0, &to.0) {
        (HostName::Other(a), HostName::Other(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a == b,
    };
    let port = to.1.unwrap_or(80);
    let at_listener = match to.0 {
        HostName::Ip(ip) => ip.to_canonical() == local.ip().to_canonical(),
        HostName::Localhost => local.ip().to_canonical().is_loopback(),
        HostName::Other(_) => true,
    };
    same_host && from.1.unwrap_or(80) == port && port == local.port() && at_listener
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "127.0.0.1:9901".parse().unwrap()
    }

    #[test]
    fn bearer_token_check() {
        assert!(authorized("s3cret", Some("Bearer s3cret")));
        assert!(!authorized("s3cret", Some("Bearer s3cre")));
        assert!(!authorized("s3cret", Some("s3cret")));
        assert!(!authorized("s3cret", None));
    }

    #[test]
    fn hosts_that_name_this_machine() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9901",
            "localhost",
            "LocalHost:9901",
        ] {
            assert!(names_this_machine(host), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:9901",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "::1",
            "[::1",
            "[evil]:1",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:+80",
            "0127.0.0.1",
            "",
            ":9901",
        ] {
            assert!(!names_this_machine(host), "{host}");
        }
    }

    #[test]
    fn own_origin_is_the_host_at_this_listener() {
        let own = |origin: &str, host: &str| is_own_origin(origin, Some(host), local());
        assert!(own("http://127.0.0.1:9901", "127.0.0.1:9901"));
        assert!(own("http://localhost:9901", "localhost:9901"));
        assert!(own("HTTP://LOCALHOST:9901", "localhost:9901"));
        assert!(!own("null", "127.0.0.1:9901"));
        assert!(!own("http://attacker.example", "127.0.0.1:9901"));
        assert!(!own("http://127.0.0.1:8080", "127.0.0.1:9901"));
        assert!(!own("https://127.0.0.1:9901", "127.0.0.1:9901"));
        assert!(!own("http://127.0.0.1:9901/", "127.0.0.1:9901"));
        assert!(
            !own("http://10.0.0.1:9901", "10.0.0.1:9901"),
            "not this listener"
        );
        assert!(!own("http://127.0.0.1", "127.0.0.1"), "port 80 is not 9901");
        // A name passes the origin check only when it matches; it got here through the token.
        assert!(own("http://admin.internal:9901", "admin.internal:9901"));
        assert!(!own("http://attacker.example:9901", "admin.internal:9901"));
        assert!(!is_own_origin("http://127.0.0.1:9901", None, local()));
    }
}
