//! The admit phase: whether a routed request may go on, and the answer when it may not. First
//! the route's own body limit (the parser held a Content-Length only to the loosest limit any
//! route has); then, as nginx orders its phases, the rate limits (`[server] rate_limits`, then
//! the route's; all must admit), the route's `allow`/`deny` on the client address (403) and its
//! basic auth (401). A request a limit in `delay` mode holds back waits last, once everything
//! else let it through, and before any upstream connection is taken. A route with none of
//! these pays one branch.

use super::access_log::AccessRecord;
use super::client_ip::ClientIp;
use super::error::Failure;
use super::reply::send_own_answer;
use super::request_body::RequestBody;
use super::route::Route;
use super::{ClientConn, WorkerCtx};
use crate::access::{authenticate, Authenticated};
use crate::config::{Admission, LimitKey, RouteRule};
use crate::http::head::trim_ows;
use crate::http::{normalize, status, BodyKind, RequestHead};
use crate::limits::{key, Limiter, Pass, Verdict};
use crate::metrics::bump;
use crate::net::deadline;
use crate::state::Snapshot;
use smallvec::SmallVec;
use std::time::{Duration, Instant};

/// Why a request is not let through.
pub enum Refusal<'v> {
    /// 429: over this limit; one request would fit after `retry_after`.
    Limited {
        limit: &'v Limiter,
        retry_after: Duration,
    },
    /// 403: the client address is denied, or not allowed.
    Forbidden,
    /// 401: no credentials, or wrong ones (`sent`).
    Unauthorized { realm: &'v str, sent: bool },
    /// 503: the password verifier is saturated.
    AuthBusy,
}

/// The route's body limit: 413 for a Content-Length over it.
pub fn body_fits(req: &RequestHead, route: &Route<'_>) -> Result<(), Failure> {
    if let (BodyKind::Length(n), Some(max)) = (req.body, route.max_body_bytes) {
        if n > max {
            return Err(Failure::BodyTooLarge);
        }
    }
    Ok(())
}

/// Rate limits and access rules for `req` from `client` on `rule` (none: no route matched).
/// A limit that delays the request is waited for here, after the access rules passed.
pub async fn admit<'v>(
    req: &RequestHead,
    rule: Option<&'v RouteRule>,
    view: &'v Snapshot,
    client: &ClientIp,
    worker: usize,
    rec: &mut AccessRecord<'v>,
) -> Result<(), Refusal<'v>> {
    let admission = rule.map(|r| &r.admission);
    let server_limits = &view.config.server_rate_limits;
    if server_limits.is_empty() && admission.is_none_or(Admission::is_open) {
        return Ok(());
    }
    // The clock is read here, when the request is decided: a connection's first request may
    // come long after its accept.
    let now = Instant::now();
    let route_label = rule.map_or("-", |r| r.label.as_str());
    let route_limits = admission.map_or(&[][..], |a| &a.rate_limits[..]);
    let mut delay = Duration::ZERO;
    let mut passed: SmallVec<[(&Limiter, Pass); 4]> = SmallVec::new();
    for &index in server_limits.iter().chain(route_limits) {
        let limiter = view.limits.get(index);
        let Some(key) = limit_key(&limiter.rule.key, req, client, route_label) else {
            continue; // a request without the key is not limited by it (as nginx's limit_req)
        };
        let (verdict, pass) = limiter.check(key, now);
        match verdict {
            Verdict::Admit => {}
            Verdict::Delay(wait) => {
                delay = delay.max(wait);
                rec.limit = Some(limiter.name());
                limiter.note_delayed(worker);
            }
            Verdict::Refuse { retry_after } => {
                // All must admit: what the others let through is given back.
                for (other, pass) in passed {
                    other.refund(pass);
                }
                limiter.note_refused(worker);
                return Err(Refusal::Limited {
                    limit: limiter,
                    retry_after,
                });
            }
        }
        passed.extend(pass.map(|p| (limiter, p)));
    }
    if let Some(a) = admission {
        if !a.address_allowed(client.ip) {
            return Err(Refusal::Forbidden);
        }
        if let Some(auth) = &a.basic_auth {
            match authenticate(auth, req.fields(b"authorization").next()).await {
                Authenticated::Yes => {}
                Authenticated::Missing => {
                    return Err(Refusal::Unauthorized {
                        realm: &auth.realm,
                        sent: false,
                    })
                }
                Authenticated::Refused => {
                    return Err(Refusal::Unauthorized {
                        realm: &auth.realm,
                        sent: true,
                    })
                }
                Authenticated::Busy => return Err(Refusal::AuthBusy),
            }
        }
    }
    if !delay.is_zero() {
        let _ = deadline::sleep(delay).await;
    }
    Ok(())
}

/// The request's key for a limit, hashed from its bytes; `None` when it has none.
fn limit_key(kind: &LimitKey, req: &RequestHead, client: &ClientIp, route: &str) -> Option<u64> {
    let mut octets = [0u8; 16];
    Some(match kind {
        LimitKey::ClientIp => key::of(&[key::ip_octets(client.ip, &mut octets)]),
        LimitKey::ClientIpRoute => {
            key::of(&[key::ip_octets(client.ip, &mut octets), route.as_bytes()])
        }
        LimitKey::Route => key::of(&[route.as_bytes()]),
        LimitKey::Host => key::of(&[&normalize::host(req.host()?)]),
        LimitKey::Header(name) => key::of(&[trim_ows(req.fields(name.as_bytes()).next()?)]),
    })
}

/// Answers a refused request; returns whether the connection stays open (its body, if any,
/// is not read: then it closes, lingering).
pub async fn refuse<'v>(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &RequestBody,
    refusal: Refusal<'v>,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord<'v>,
) -> Result<bool, Failure> {
    let keep = req.keep_alive && body.complete() && !ctx.shared.is_draining();
    let out = &mut conn.out;
    out.clear();
    let answer = match refusal {
        Refusal::Limited { limit, retry_after } => {
            // Whole seconds, rounded up: a client waiting that long finds room.
            let wait = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            let wait = wait.max(1).to_string();
            let (quota, window) = limit.rule.quota;
            let name = limit.name();
            // draft-ietf-httpapi-ratelimit-headers: the policy, and none left for `t` seconds.
            let policy = format!("\"{name}\";q={quota};w={window}");
            let state = format!("\"{name}\";r=0;t={wait}");
            status::write_error_with(
                out,
                429,
                keep,
                &[
                    ("Retry-After", &wait),
                    ("RateLimit-Policy", &policy),
                    ("RateLimit", &state),
                ],
            );
            rec.limit = Some(name);
            (429, "rate limited")
        }
        Refusal::Forbidden => {
            bump(&ctx.metrics.access_forbidden);
            status::write_error(out, 403, keep);
            (403, "client address denied")
        }
        Refusal::Unauthorized { realm, sent } => {
            bump(&ctx.metrics.access_unauthorized);
            let challenge = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
            status::write_error_with(out, 401, keep, &[("WWW-Authenticate", &challenge)]);
            let why = if sent {
                "wrong credentials"
            } else {
                "authentication required"
            };
            (401, why)
        }
        Refusal::AuthBusy => {
            status::write_error(out, 503, keep);
            (503, "password verification busy")
        }
    };
    send_own_answer(conn, rec, answer, keep, view).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, HeadLimits};
    use bytes::BytesMut;

    fn request(raw: &str) -> RequestHead {
        let limits = HeadLimits {
            max_request_line_bytes: 8192,
            max_header_bytes: 65536,
            max_headers: 100,
            max_body_bytes: None,
        };
        parse_request(&mut BytesMut::from(raw), &limits)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn keys_come_from_the_named_parts_of_the_request() {
        let a = ClientIp::new("192.0.2.1".parse().unwrap());
        let b = ClientIp::new("192.0.2.2".parse().unwrap());
        let req = request("GET / HTTP/1.1\r\nHost: API.Example.com.:8080\r\nX-Key:  k1 \r\n\r\n");
        let same_host = request("GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
        let bare = request("GET / HTTP/1.0\r\n\r\n");
        let key = |kind: &LimitKey, req: &RequestHead, client: &ClientIp, route: &str| {
            limit_key(kind, req, client, route)
        };
        let ip = LimitKey::ClientIp;
        assert_eq!(key(&ip, &req, &a, "r1"), key(&ip, &bare, &a, "r2"));
        assert_ne!(key(&ip, &req, &a, "r1"), key(&ip, &req, &b, "r1"));
        let both = LimitKey::ClientIpRoute;
        assert_ne!(key(&both, &req, &a, "r1"), key(&both, &req, &a, "r2"));
        assert_ne!(key(&both, &req, &a, "r1"), key(&both, &req, &b, "r1"));
        let route = LimitKey::Route;
        assert_eq!(key(&route, &req, &a, "r1"), key(&route, &bare, &b, "r1"));
        // The normalised host: case, port and trailing dot do not make another key.
        let host = LimitKey::Host;
        assert_eq!(key(&host, &req, &a, "r"), key(&host, &same_host, &b, "r"));
        assert_eq!(key(&host, &bare, &a, "r"), None, "no host: not limited");
        let header = LimitKey::Header("x-key".into());
        assert_eq!(key(&header, &req, &a, "r"), Some(key::of(&[b"k1"])));
        assert_eq!(
            key(&header, &same_host, &a, "r"),
            None,
            "no field: not limited"
        );
    }
}
