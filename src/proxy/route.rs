//! The route phase: where a request goes. Its host and path are normalised first (the path that
//! is matched is the path that is forwarded, so the backend sees what the route saw), the route
//! table picks the most specific route, and the outcome is either what the request runs with
//! (an upstream group, the target it goes upstream with, header edits, timeouts and limits) or
//! a reply the proxy makes itself (a redirect, a fixed response, 404 when nothing matched and
//! there is no group `default`).

use crate::config::{
    HashKey, HeaderEdits, PathRewrite, Redirect, Respond, RouteAction, RouteRule, Strategy,
    Timeouts, ValidConfig,
};
use crate::http::head::trim_ows;
use crate::http::{normalize, RequestHead};
use crate::state::Snapshot;
use crate::upstream::{hash_key, Backend, UpstreamGroup};
use std::borrow::Cow;
use std::sync::Arc;

/// What routing decided.
pub enum Routed<'v> {
    Forward(Route<'v>),
    Reply(Reply<'v>),
}

impl<'v> Routed<'v> {
    /// The route that matched (index and rule), if one did.
    pub fn rule(&self) -> Option<(usize, &'v RouteRule)> {
        match self {
            Routed::Forward(route) => route.rule,
            Routed::Reply(reply) => reply.rule,
        }
    }
}

/// What a request sent upstream runs with: the worker-independent parts of its environment.
pub struct Route<'v> {
    /// The configuration in force for this request.
    pub config: &'v ValidConfig,
    /// The upstream group the request is balanced over, and its index.
    pub group: &'v UpstreamGroup,
    pub group_index: usize,
    /// The route that matched (index and rule); `None` for the group `default` as fallback.
    pub rule: Option<(usize, &'v RouteRule)>,
    /// The normalised host (lowercase, no port, no trailing dot), if the request named one.
    pub host: Option<Cow<'v, [u8]>>,
    /// The normalised path, without the query.
    pub path: Cow<'v, [u8]>,
    /// The target that goes upstream: the request's own when normalising and rewriting changed
    /// nothing (no allocation), else the rewritten path with the query as it came.
    pub target: Cow<'v, [u8]>,
    pub timeouts: &'v Timeouts,
    pub max_body_bytes: Option<u64>,
    pub request_headers: &'v HeaderEdits,
    pub response_headers: &'v HeaderEdits,
    /// For a route that rewrites its prefix: (the prefix upstream, the client's), so that the
    /// backend's own absolute redirects get the client's prefix back.
    pub prefix_map: Option<(&'v [u8], &'v [u8])>,
}

impl<'v> Route<'v> {
    pub fn backends(&self) -> &'v [Arc<Backend>] {
        &self.group.backends
    }

    /// The request's key on the group's hash ring, for `strategy = "hash"`; `None` otherwise
    /// or when the request has no such key (the balancer then spreads by weight).
    pub fn hash_key(&self, req: &RequestHead, client_ip: &str) -> Option<u64> {
        let settings = &self.group.settings;
        if settings.strategy != Strategy::Hash {
            return None;
        }
        match &settings.hash_key {
            HashKey::ClientIp => Some(hash_key(client_ip.as_bytes())),
            HashKey::Path => Some(hash_key(&self.path)),
            HashKey::Header(name) if name == "host" => self.host.as_deref().map(hash_key),
            HashKey::Header(name) => req
                .fields(name.as_bytes())
                .next()
                .map(|v| hash_key(trim_ows(v))),
            HashKey::Cookie(name) => cookie(req, name.as_bytes()).map(hash_key),
        }
    }
}

/// A reply the proxy makes itself.
pub struct Reply<'v> {
    /// The route that asked for it; `None` for a 404 when nothing matched.
    pub rule: Option<(usize, &'v RouteRule)>,
    pub kind: ReplyKind<'v>,
}

pub enum ReplyKind<'v> {
    Redirect { status: u16, location: Vec<u8> },
    Respond(&'v Respond),
    NotFound,
}

/// Routes `req` within the snapshot it runs on. A path that cannot be normalised is refused
/// (400), with the reason.
pub fn route<'v>(req: &'v RequestHead, view: &'v Snapshot) -> Result<Routed<'v>, &'static str> {
    let config = &*view.config;
    let host = req.host().map(normalize::host);
    let target = req.path();
    let (raw_path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q..])),
        None => (target, None),
    };
    // An absolute-form target without a path, and `OPTIONS *`, are matched as `/` and go on
    // as they came.
    let path = if raw_path.starts_with(b"/") {
        normalize::path(raw_path, config.merge_slashes).map_err(|e| e.reason())?
    } else {
        Cow::Borrowed(&b"/"[..])
    };
    let found = if view.routes.is_empty() {
        None
    } else {
        view.routes
            .find(&config.routes, req, host.as_deref(), &path)
    };
    let Some(index) = found else {
        let Some(group) = view.upstreams.default else {
            return Ok(Routed::Reply(Reply {
                rule: None,
                kind: ReplyKind::NotFound,
            }));
        };
        let target = rewritten(target, &path, query, None);
        return Ok(Routed::Forward(Route {
            config,
            group: &view.upstreams.groups[group],
            group_index: group,
            rule: None,
            host,
            path,
            target,
            timeouts: &config.timeouts,
            max_body_bytes: config.limits.max_body_bytes,
            request_headers: HeaderEdits::none(),
            response_headers: HeaderEdits::none(),
            prefix_map: None,
        }));
    };
    let rule = &config.routes[index];
    let matched = Some((index, rule));
    match &rule.action {
        RouteAction::Forward(f) => {
            let rewrite = rule.prefix().zip(f.rewrite.as_ref());
            Ok(Routed::Forward(Route {
                config,
                group: &view.upstreams.groups[f.group],
                group_index: f.group,
                rule: matched,
                target: rewritten(target, &path, query, rewrite),
                host,
                path,
                timeouts: &f.timeouts,
                max_body_bytes: f.max_body_bytes,
                request_headers: &f.request_headers,
                response_headers: &rule.response_headers,
                prefix_map: rewrite.map(prefix_map),
            }))
        }
        RouteAction::Redirect(r) => Ok(Routed::Reply(Reply {
            rule: matched,
            kind: ReplyKind::Redirect {
                status: r.status,
                location: location(r, rule.prefix(), &path, query),
            },
        })),
        RouteAction::Respond(r) => Ok(Routed::Reply(Reply {
            rule: matched,
            kind: ReplyKind::Respond(r),
        })),
    }
}

/// The target upstream: the request's own if nothing changed, else the normalised path with
/// the matched prefix rewritten, and the query byte for byte.
fn rewritten<'v>(
    target: &'v [u8],
    path: &Cow<'v, [u8]>,
    query: Option<&[u8]>,
    rewrite: Option<(&str, &PathRewrite)>,
) -> Cow<'v, [u8]> {
    let mut out = match (rewrite, path) {
        // `OPTIONS *` is about the server as a whole: no path to rewrite.
        _ if target == b"*" => return Cow::Borrowed(target),
        (None, Cow::Borrowed(_)) => return Cow::Borrowed(target),
        (None, Cow::Owned(p)) => p.clone(),
        (Some((prefix, how)), _) => {
            let rest = &path[prefix.len()..];
            match how {
                PathRewrite::Strip if rest.starts_with(b"/") => rest.to_vec(),
                PathRewrite::Strip => [&b"/"[..], rest].concat(),
                PathRewrite::Replace(with) => [with.as_bytes(), rest].concat(),
            }
        }
    };
    out.extend_from_slice(query.unwrap_or_default());
    Cow::Owned(out)
}

/// (upstream prefix, client prefix) of a rewriting route, for redirects naming the backend.
fn prefix_map<'v>((prefix, how): (&'v str, &'v PathRewrite)) -> (&'v [u8], &'v [u8]) {
    let upstream: &[u8] = match how {
        PathRewrite::Strip if prefix.ends_with('/') => b"/",
        PathRewrite::Strip => b"",
        PathRewrite::Replace(with) => with.as_bytes(),
    };
    (upstream, prefix.as_bytes())
}

/// A redirect's `Location`: `to`, with what follows the matched prefix when `keep_path`, and
/// the request's query (always kept).
fn location(r: &Redirect, prefix: Option<&str>, path: &[u8], query: Option<&[u8]>) -> Vec<u8> {
    let mut out = r.to.as_bytes().to_vec();
    if let (true, Some(prefix)) = (r.keep_path, prefix) {
        let rest = &path[prefix.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        if !rest.is_empty() {
            if !out.ends_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rest);
        }
    }
    if let Some(query) = query {
        if out.contains(&b'?') {
            out.push(b'&');
            out.extend_from_slice(&query[1..]);
        } else {
            out.extend_from_slice(query);
        }
    }
    out
}

/// The value of cookie `name` in the request's `Cookie` fields (RFC 6265 §5.4), if sent.
fn cookie<'a>(req: &'a RequestHead, name: &[u8]) -> Option<&'a [u8]> {
    req.fields(b"cookie")
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = trim_ows(pair);
            let eq = pair.iter().position(|&b| b == b'=')?;
            let value = &pair[eq + 1..];
            let unquoted = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""));
            (&pair[..eq] == name).then(|| unquoted.unwrap_or(value))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_locations_keep_the_rest_and_the_query() {
        let r = |to: &str, keep_path| Redirect {
            to: to.into(),
            status: 308,
            keep_path,
        };
        let loc = |r: &Redirect, prefix, path: &str, query: Option<&str>| {
            String::from_utf8(location(
                r,
                Some(prefix),
                path.as_bytes(),
                query.map(str::as_bytes),
            ))
            .unwrap()
        };
        let to = r("https://example.com/new/", true);
        assert_eq!(
            loc(&to, "/old/", "/old/a/b", None),
            "https://example.com/new/a/b"
        );
        assert_eq!(
            loc(&to, "/old/", "/old/", Some("?x=1")),
            "https://example.com/new/?x=1"
        );
        assert_eq!(
            loc(&to, "/old", "/old/a", None),
            "https://example.com/new/a"
        );
        assert_eq!(loc(&to, "/old", "/old", None), "https://example.com/new/");
        let bare = r("https://example.com", true);
        assert_eq!(
            loc(&bare, "/old/", "/old/a", Some("?q")),
            "https://example.com/a?q"
        );
        let fixed = r("/elsewhere?from=old", false);
        assert_eq!(
            loc(&fixed, "/old/", "/old/a", Some("?q=1")),
            "/elsewhere?from=old&q=1"
        );
    }

    #[test]
    fn targets_are_rewritten_only_when_needed() {
        let t = |target: &str, path: Cow<'static, [u8]>, q: Option<&str>, rw| {
            let target: &'static [u8] = Box::leak(target.as_bytes().to_vec().into_boxed_slice());
            match rewritten(target, &path, q.map(str::as_bytes), rw) {
                Cow::Borrowed(b) => format!("borrowed {}", String::from_utf8_lossy(b)),
                Cow::Owned(o) => String::from_utf8(o).unwrap(),
            }
        };
        let b = |p: &'static str| Cow::Borrowed(p.as_bytes());
        assert_eq!(
            t("*", b("/"), None, Some(("/", &PathRewrite::Strip))),
            "borrowed *"
        );
        let o = |p: &str| Cow::Owned(p.as_bytes().to_vec());
        assert_eq!(t("/a?x", b("/a"), Some("?x"), None), "borrowed /a?x");
        assert_eq!(t("//a?x", o("/a"), Some("?x"), None), "/a?x");
        let strip = PathRewrite::Strip;
        assert_eq!(
            t(
                "/v1/users?q",
                b("/v1/users"),
                Some("?q"),
                Some(("/v1/", &strip))
            ),
            "/users?q"
        );
        assert_eq!(
            t("/v1/users", b("/v1/users"), None, Some(("/v1", &strip))),
            "/users"
        );
        assert_eq!(t("/v1", b("/v1"), None, Some(("/v1", &strip))), "/");
        let api = PathRewrite::Replace("/api/".into());
        assert_eq!(
            t(
                "/v1/u?a=%2F",
                b("/v1/u"),
                Some("?a=%2F"),
                Some(("/v1/", &api))
            ),
            "/api/u?a=%2F"
        );
    }
}
