//! The route table: exact hosts in a hash map, wildcard hosts in a hash map by suffix (longest
//! first), then any host; for each, a path table: exact paths in a hash map, prefixes in a trie
//! of path segments (the longest match in one walk down the path, however many routes there
//! are), regexes in file order, tried only when nothing cheaper matched. Within one host and
//! path, the routes with more conditions come first. Also the per-route request counters, one
//! array per worker.

use crate::config::{HeaderCondition, HostPattern, PathMatch, RouteRule};
use crate::http::head::trim_ows;
use crate::http::RequestHead;
use crate::metrics::{bump, read};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Keys are the config's (routes are not added at runtime), so a lookup with client input costs
/// what the config's own collisions cost: a fast unkeyed hash is safe here.
type Map<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<FxHasher>>;

pub struct RouteTable {
    exact_hosts: Map<PathTable>,
    /// By suffix with its dot: `*.example.com` is `.example.com`.
    wildcard_hosts: Map<PathTable>,
    any_host: PathTable,
    routes: usize,
    /// `RouteRule::label` of each route, to carry counters over a reload.
    labels: Vec<String>,
    /// Requests per route, one array per worker (each worker writes only its own).
    hits: Box<[WorkerHits]>,
}

#[repr(align(64))]
struct WorkerHits(Box<[AtomicU64]>);

/// The routes of one host (or of any host), by path.
#[derive(Default)]
struct PathTable {
    exact: Map<Vec<usize>>,
    prefixes: Node,
    /// In file order.
    regexes: Vec<usize>,
}

/// A trie node: the path segments from the root lead here.
#[derive(Default)]
struct Node {
    children: Map<Node>,
    /// Prefixes ending here without a slash (`/api`): the path ends here or goes on with `/`.
    here: Vec<usize>,
    /// Prefixes ending here with a slash (`/api/`, and `/` at the root): the path goes on past
    /// a `/`. More specific than `here`.
    below: Vec<usize>,
}

impl RouteTable {
    /// The table for `rules` (a valid configuration's, so no two compete at the same
    /// specificity), with counters for `workers`; counts of routes whose label was in
    /// `previous` carry over.
    pub fn build(rules: &[RouteRule], workers: usize, previous: Option<&RouteTable>) -> Self {
        let mut table = RouteTable {
            exact_hosts: Map::default(),
            wildcard_hosts: Map::default(),
            any_host: PathTable::default(),
            routes: rules.len(),
            labels: rules.iter().map(|r| r.label.clone()).collect(),
            hits: (0..workers.max(1))
                .map(|_| WorkerHits(rules.iter().map(|_| AtomicU64::new(0)).collect()))
                .collect(),
        };
        for (index, rule) in rules.iter().enumerate() {
            if rule.hosts.is_empty() {
                table.any_host.add(index, &rule.path);
            }
            for host in &rule.hosts {
                let (map, key) = match host {
                    HostPattern::Exact(h) => (&mut table.exact_hosts, h),
                    HostPattern::Suffix(s) => (&mut table.wildcard_hosts, s),
                };
                let key: Box<[u8]> = key.as_bytes().into();
                map.entry(key).or_default().add(index, &rule.path);
            }
        }
        let by_specificity = |list: &mut Vec<usize>| {
            list.sort_by_key(|&i| (std::cmp::Reverse(rules[i].specificity()), i));
        };
        let tables = table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.values_mut())
            .chain(std::iter::once(&mut table.any_host));
        for paths in tables {
            paths.exact.values_mut().for_each(&by_specificity);
            paths.prefixes.visit(&mut |node| {
                by_specificity(&mut node.here);
                by_specificity(&mut node.below);
            });
        }
        if let Some(previous) = previous {
            table.carry_counts(previous);
        }
        table
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// The most specific route `req` matches, by its normalised `host` and `path`.
    pub fn find(
        &self,
        rules: &[RouteRule],
        req: &RequestHead,
        host: Option<&[u8]>,
        path: &[u8],
    ) -> Option<usize> {
        if let Some(host) = host {
            let exact = self.exact_hosts.get(host);
            if let Some(found) = exact.and_then(|t| t.find(rules, req, path)) {
                return Some(found);
            }
            if !self.wildcard_hosts.is_empty() {
                // Longest suffix first: `a.b.example.com` tries `.b.example.com`, then
                // `.example.com`, then `.com`.
                let dots = host.iter().enumerate().filter(|(_, &b)| b == b'.');
                for (at, _) in dots {
                    let table = self.wildcard_hosts.get(&host[at..]);
                    if let Some(found) = table.and_then(|t| t.find(rules, req, path)) {
                        return Some(found);
                    }
                }
            }
        }
        self.any_host.find(rules, req, path)
    }

    /// Counts a request routed by `route`, on `worker`'s counters.
    pub fn count(&self, worker: usize, route: usize) {
        if let Some(counter) = self.hits[worker % self.hits.len()].0.get(route) {
            bump(counter);
        }
    }

    /// Requests routed by `route` so far, over all workers.
    pub fn hits(&self, route: usize) -> u64 {
        self.hits
            .iter()
            .filter_map(|w| w.0.get(route))
            .map(read)
            .sum()
    }

    fn carry_counts(&self, previous: &RouteTable) {
        for (i, label) in self.labels.iter().enumerate() {
            let Some(j) = previous.labels.iter().position(|l| l == label) else {
                continue;
            };
            for (now, before) in self.hits.iter().zip(previous.hits.iter()) {
                now.0[i].store(read(&before.0[j]), Ordering::Relaxed);
            }
        }
    }
}

impl PathTable {
    fn add(&mut self, index: usize, path: &PathMatch) {
        match path {
            PathMatch::Exact(p) => self
                .exact
                .entry(p.as_bytes().into())
                .or_default()
                .push(index),
            PathMatch::Regex(_) => self.regexes.push(index),
            PathMatch::Prefix(p) => {
                let (segments, below) = match p.strip_suffix('/') {
                    Some(stripped) => (stripped, true),
                    None => (p.as_str(), false),
                };
                let mut node = &mut self.prefixes;
                for segment in segments.split('/').skip(1) {
                    node = node.children.entry(segment.as_bytes().into()).or_default();
                }
                if below {
                    node.below.push(index);
                } else {
                    node.here.push(index);
                }
            }
        }
    }

    /// Exact path, then the longest prefix, then regexes in file order; at each, the first
    /// route (most conditions first) whose conditions `req` meets.
    fn find(&self, rules: &[RouteRule], req: &RequestHead, path: &[u8]) -> Option<usize> {
        if !self.exact.is_empty() {
            let exact = self.exact.get(path);
            if let Some(found) = exact.and_then(|c| first_admitted(c, rules, req)) {
                return Some(found);
            }
        }
        if let Some(found) = self.prefixes.longest(rules, req, path) {
            return Some(found);
        }
        self.regexes.iter().copied().find(|&i| {
            matches!(&rules[i].path, PathMatch::Regex(re) if re.is_match(path))
                && admits(&rules[i], req)
        })
    }
}

impl Node {
    /// The route of the deepest node on `path` (which starts with `/`) that has one `req` meets.
    fn longest(&self, rules: &[RouteRule], req: &RequestHead, path: &[u8]) -> Option<usize> {
        let mut node = self;
        let mut found = None;
        // What follows the segments matched so far: empty, or starting with `/`.
        let mut rest = path;
        loop {
            let deeper = if rest.is_empty() {
                None
            } else {
                first_admitted(&node.below, rules, req)
            };
            if let Some(route) = deeper.or_else(|| first_admitted(&node.here, rules, req)) {
                found = Some(route);
            }
            let Some(after_slash) = rest.get(1..) else {
                break;
            };
            let end = after_slash
                .iter()
                .position(|&b| b == b'/')
                .unwrap_or(after_slash.len());
            match node.children.get(&after_slash[..end]) {
                Some(child) => {
                    node = child;
                    rest = &after_slash[end..];
                }
                None => break,
            }
        }
        found
    }

    fn visit(&mut self, f: &mut impl FnMut(&mut Node)) {
        f(self);
        for child in self.children.values_mut() {
            child.visit(f);
        }
    }
}

fn first_admitted(candidates: &[usize], rules: &[RouteRule], req: &RequestHead) -> Option<usize> {
    candidates.iter().copied().find(|&i| admits(&rules[i], req))
}

/// Whether `req` meets the route's method and field conditions.
fn admits(rule: &RouteRule, req: &RequestHead) -> bool {
    (rule.methods.is_empty() || rule.methods.iter().any(|m| m.as_bytes() == req.method()))
        && rule.headers.iter().all(|h| has_field(req, h))
}

fn has_field(req: &RequestHead, condition: &HeaderCondition) -> bool {
    let name = condition.name.as_bytes();
    let wanted = condition.value.as_deref().map(str::as_bytes);
    if name == b"upgrade" {
        // Kept apart by the parser (it is hop-by-hop); protocol names are case-insensitive.
        let offered = req.upgrade.map(|u| trim_ows(u.of(&req.raw)));
        return match (offered, wanted) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(w)) => v.eq_ignore_ascii_case(w),
        };
    }
    req.fields(name)
        .any(|value| wanted.is_none_or(|w| trim_ows(value) == w))
}

/// rustc's FxHash: a multiply and a rotate per word.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{normalize, parse_request, HeadLimits};
    use bytes::BytesMut;

    /// Routes given as TOML `[[routes]]` entries (each `upstream = "a"` unless it says else).
    fn rules(routes: &str) -> Vec<RouteRule> {
        let text =
            format!("[upstreams.a]\nbackends = [{{ url = \"http://127.0.0.1:1\" }}]\n{routes}");
        crate::config::parse(std::path::Path::new("t.toml"), &text)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .routes
    }

    /// The label of the route `raw` (a request head) matches.
    fn matched(table: &RouteTable, rules: &[RouteRule], raw: &str) -> Option<String> {
        let limits = HeadLimits {
            max_request_line_bytes: 8192,
            max_header_bytes: 65536,
            max_headers: 100,
            max_body_bytes: None,
        };
        let req = parse_request(&mut BytesMut::from(raw), &limits)
            .unwrap()
            .unwrap();
        let host = req.host().map(normalize::host);
        let path = req.path().split(|&b| b == b'?').next().unwrap();
        let path = normalize::path(path, true).unwrap();
        table
            .find(rules, &req, host.as_deref(), &path)
            .map(|i| rules[i].label.clone())
    }

    fn get(host: &str, path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
    }

    #[test]
    fn precedence_is_by_specificity_not_file_order() {
        let rules = rules(
            r#"
            [[routes]]
            name = "any"
            upstream = "a"
            [[routes]]
            name = "regex"
            path_regex = "^/v1/u/[0-9]+$"
            upstream = "a"
            [[routes]]
            name = "v1"
            path_prefix = "/v1/"
            upstream = "a"
            [[routes]]
            name = "v1-users"
            path_prefix = "/v1/users"
            upstream = "a"
            [[routes]]
            name = "exact"
            path = "/v1/users/me"
            upstream = "a"
            [[routes]]
            name = "wild"
            hosts = ["*.example.com"]
            upstream = "a"
            [[routes]]
            name = "deeper-wild"
            hosts = ["*.api.example.com"]
            upstream = "a"
            [[routes]]
            name = "api"
            hosts = ["api.example.com"]
            path_prefix = "/v1/"
            upstream = "a"
            [[routes]]
            name = "api-post"
            hosts = ["api.example.com"]
            path_prefix = "/v1/"
            methods = ["POST"]
            upstream = "a"
            [[routes]]
            name = "canary"
            hosts = ["api.example.com"]
            path_prefix = "/v1/"
            methods = ["POST"]
            headers = { "X-Canary" = "1" }
            upstream = "a"
            "#,
        );
        let table = RouteTable::build(&rules, 1, None);
        let m = |raw: &str| matched(&table, &rules, raw);
        assert_eq!(m(&get("other", "/")).as_deref(), Some("any"));
        assert_eq!(
            m(&get("other", "/v1")).as_deref(),
            Some("any"),
            "/v1/ needs the slash"
        );
        assert_eq!(m(&get("other", "/v1/")).as_deref(), Some("v1"));
        assert_eq!(
            m(&get("other", "/v1/u/12")).as_deref(),
            Some("v1"),
            "prefix beats regex"
        );
        assert_eq!(m(&get("other", "/v1/users")).as_deref(), Some("v1-users"));
        assert_eq!(m(&get("other", "/v1/users/x")).as_deref(), Some("v1-users"));
        assert_eq!(
            m(&get("other", "/v1/usersx")).as_deref(),
            Some("v1"),
            "segment boundary"
        );
        assert_eq!(m(&get("other", "/v1/users/me")).as_deref(), Some("exact"));
        assert_eq!(
            m(&get("other", "/v1/users/me/x")).as_deref(),
            Some("v1-users")
        );
        assert_eq!(m(&get("www.example.com", "/v1/")).as_deref(), Some("wild"));
        assert_eq!(m(&get("a.b.example.com", "/")).as_deref(), Some("wild"));
        assert_eq!(m(&get("example.com", "/")).as_deref(), Some("any"));
        assert_eq!(
            m(&get("x.api.example.com", "/")).as_deref(),
            Some("deeper-wild")
        );
        assert_eq!(
            m(&get("API.example.com.:8443", "/v1/x")).as_deref(),
            Some("api")
        );
        // The exact host has no route for this path: the wildcard's catches it.
        assert_eq!(
            m(&get("api.example.com", "/other")).as_deref(),
            Some("wild")
        );
        let post = |extra: &str| {
            format!(
                "POST /v1/x HTTP/1.1\r\nHost: api.example.com\r\n{extra}Content-Length: 0\r\n\r\n"
            )
        };
        assert_eq!(m(&post("")).as_deref(), Some("api-post"));
        assert_eq!(m(&post("X-Canary: 1\r\n")).as_deref(), Some("canary"));
        assert_eq!(m(&post("X-Canary: 2\r\n")).as_deref(), Some("api-post"));
    }

    #[test]
    fn regexes_go_in_file_order_after_everything_cheaper() {
        let rules = rules(
            r#"
            [[routes]]
            name = "second-in-file"
            path_regex = "^/u/"
            upstream = "a"
            [[routes]]
            name = "first-in-file-but-later"
            path_regex = "^/u/[0-9]+$"
            upstream = "a"
            [[routes]]
            name = "exact"
            path = "/u/7"
            upstream = "a"
            "#,
        );
        let table = RouteTable::build(&rules, 1, None);
        let m = |path: &str| matched(&table, &rules, &get("h", path));
        assert_eq!(m("/u/7").as_deref(), Some("exact"));
        assert_eq!(m("/u/8").as_deref(), Some("second-in-file"));
        assert_eq!(m("/x").as_deref(), None);
    }

    #[test]
    fn upgrade_and_presence_conditions() {
        let rules = rules(
            r#"
            [[routes]]
            name = "ws"
            path_prefix = "/live"
            headers = { "Upgrade" = "websocket" }
            upstream = "a"
            [[routes]]
            name = "flagged"
            path_prefix = "/live"
            headers = { "X-Flag" = "*" }
            methods = ["GET"]
            upstream = "a"
            [[routes]]
            name = "plain"
            path_prefix = "/live"
            upstream = "a"
            "#,
        );
        let table = RouteTable::build(&rules, 1, None);
        let m = |raw: &str| matched(&table, &rules, raw);
        let ws =
            "GET /live HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n";
        assert_eq!(m(ws).as_deref(), Some("ws"));
        assert_eq!(
            m("GET /live/x HTTP/1.1\r\nHost: h\r\nX-Flag: \r\n\r\n").as_deref(),
            Some("flagged")
        );
        assert_eq!(m(&get("h", "/live")).as_deref(), Some("plain"));
    }

    #[test]
    fn counters_carry_over_by_name() {
        let before = rules("[[routes]]\nname = \"kept\"\nupstream = \"a\"\n");
        let old = RouteTable::build(&before, 2, None);
        old.count(0, 0);
        old.count(1, 0);
        let after = rules(
            "[[routes]]\nname = \"new\"\npath = \"/n\"\nupstream = \"a\"\n\
             [[routes]]\nname = \"kept\"\nupstream = \"a\"\n",
        );
        let new = RouteTable::build(&after, 2, Some(&old));
        assert_eq!((new.hits(0), new.hits(1)), (0, 2));
    }
}
