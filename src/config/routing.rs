//! Upstream groups and routes as data: each `[upstreams.<name>]` with its settings resolved
//! against the global sections it may override, and each `[[routes]]` entry checked and compiled
//! (hosts lowercased, paths required in normalised form, regexes compiled once with size
//! limits). Two routes that would match the same requests at the same specificity are refused,
//! naming both: which one wins must never depend on file order. The lookup structure built
//! from these rules is `route::RouteTable`'s business.

use super::admission::{self, Admission, RateLimitRule};
use super::check::{parse_status_ranges, resolve_backend, Checker, Problem, UpstreamTlsChoice};
use super::schema::*;
use super::settings::{
    HealthSettings, PassiveSettings, PoolSettings, ProxyHeader, ResolvedBackend, Timeouts,
};
use super::tls::{TlsCheck, UpstreamTlsConfig};
use crate::http::head::is_hop_by_hop;
use crate::http::normalize;
use crate::http::target::is_valid_host;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The name of the group `[[backends]]` forms.
pub const DEFAULT_GROUP: &str = "default";

/// Compiled regexes are refused past this size (the `regex` crate's own default is 10 MiB):
/// a route table is built on every reload and must stay small.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What `strategy = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// A request field, by lowercase name (`host` is the normalised host).
    Header(String),
    Cookie(String),
    /// The normalised path, without the query.
    Path,
}

/// The Host a request carries upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's (an absolute-form target's authority, else its Host field).
    Client,
    /// The backend URL's authority.
    Backend,
    Literal(String),
}

/// A group's settings: the global sections with the group's own keys over them.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub strategy: Strategy,
    pub hash_key: HashKey,
    pub hash_balance_factor: f64,
    pub host_header: HostHeader,
    pub health: HealthSettings,
    pub passive: PassiveSettings,
    pub pool: PoolSettings,
}

/// One upstream group, as configured.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub name: String,
    pub backends: Vec<ResolvedBackend>,
    pub settings: GroupSettings,
}

/// Which hosts a route is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    /// A lowercase name without port or trailing dot.
    Exact(String),
    /// `*.example.com` as `.example.com`: any name ending so (nginx's leading wildcard).
    Suffix(String),
}

/// A route's path condition, on the normalised path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    /// On segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    Regex(regex::bytes::Regex),
}

/// A request field a route requires: present (`None`) or with exactly this value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCondition {
    /// Lowercase.
    pub name: String,
    pub value: Option<String>,
}

/// Fields a route sets (replacing every field of that name) and removes.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    /// Lowercase.
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// No edits, for requests no route edits.
    pub fn none() -> &'static HeaderEdits {
        static NONE: HeaderEdits = HeaderEdits {
            set: Vec::new(),
            remove: Vec::new(),
        };
        &NONE
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Whether an incoming field of this name is dropped (removed, or replaced by a set one).
    #[inline]
    pub fn touches(&self, name: &[u8]) -> bool {
        if self.set.is_empty() && self.remove.is_empty() {
            return false;
        }
        self.remove
            .iter()
            .map(String::as_bytes)
            .chain(self.set.iter().map(|(n, _)| n.as_bytes()))
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// What becomes of a request that matches a route.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Forward),
    Redirect(Redirect),
    Respond(Respond),
}

/// Sent to an upstream group.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Index into `ValidConfig::groups`.
    pub group: usize,
    pub rewrite: Option<PathRewrite>,
    pub request_headers: HeaderEdits,
    /// `[timeouts]` with the route's overrides.
    pub timeouts: Timeouts,
    /// `[limits] max_body_bytes` or the route's; `None` = unlimited.
    pub max_body_bytes: Option<u64>,
}

/// How the matched prefix is changed on the way upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// `/v1/users` -> `/users`.
    Strip,
    /// The prefix replaced by this one.
    Replace(String),
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub to: String,
    pub status: u16,
    pub keep_path: bool,
}

#[derive(Debug, Clone)]
pub struct Respond {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// One `[[routes]]` entry, checked.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// `name`, or the route's index.
    pub label: String,
    /// Empty: any host.
    pub hosts: Vec<HostPattern>,
    pub path: PathMatch,
    /// Empty: any method.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderCondition>,
    pub action: RouteAction,
    pub response_headers: HeaderEdits,
    /// Address rules, basic auth and rate limits its requests must pass.
    pub admission: Admission,
}

impl RouteRule {
    /// Conditions beyond host and path: a route with more is tried before one with fewer.
    pub fn specificity(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len()
    }

    /// The matched prefix of a prefix route.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) => Some(p),
            _ => None,
        }
    }
}

/// `[load_balancing]`, `[health_checks]`, `[passive_health]` and `[upstream]` as the settings of
/// the group `default` and of every group that does not override them.
pub(super) fn global_settings(
    ck: &mut Checker,
    c: &Config,
    health: HealthSettings,
    passive: PassiveSettings,
    pool: PoolSettings,
) -> GroupSettings {
    let lb = &c.load_balancing;
    let hash_key = match &lb.hash_key {
        Some(spec) => {
            let uses_hash = lb.strategy == Strategy::Hash
                || c.upstreams
                    .values()
                    .any(|g| g.strategy == Some(Strategy::Hash));
            if !uses_hash {
                ck.fail(
                    "load_balancing.hash_key",
                    "applies to strategy = \"hash\", which no upstream group uses",
                );
            }
            hash_key(ck, "load_balancing.hash_key", spec)
        }
        None => HashKey::ClientIp,
    };
    let mut settings = GroupSettings {
        strategy: lb.strategy,
        hash_key,
        hash_balance_factor: balance_factor(
            ck,
            "load_balancing.hash_balance_factor",
            lb.hash_balance_factor,
        ),
        host_header: host_header(ck, "upstream.host_header", &c.upstream.host_header),
        health,
        passive,
        pool: PoolSettings {
            send_proxy_protocol: c
                .upstream
                .send_proxy_protocol
                .as_deref()
                .and_then(|v| proxy_header(ck, "upstream.send_proxy_protocol", v)),
            ..pool
        },
    };
    settings.health.proxy_header = settings.pool.send_proxy_protocol;
    settings
}

fn proxy_header(ck: &mut Checker, key: &str, value: &str) -> Option<ProxyHeader> {
    match value {
        "v1" => Some(ProxyHeader::V1),
        "v2" => Some(ProxyHeader::V2),
        other => {
            ck.fail(key, format!("expected \"v1\" or \"v2\", got {other:?}"));
            None
        }
    }
}

/// The upstream groups: `[[backends]]` as `default` (if any), then `[upstreams.<name>]` in name
/// order. Returns them and the index of `default`.
pub(super) fn groups(
    ck: &mut Checker,
    c: &Config,
    global: &GroupSettings,
    mut files: TlsFiles<'_>,
) -> (Vec<GroupConfig>, Option<usize>) {
    let mut groups = Vec::new();
    if !c.backends.is_empty() {
        let tls = files.choice(ck, "upstream", &c.backends, &c.upstream, None);
        let backends = c
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| resolve_backend(ck, &format!("backends[{i}]"), b, None, &tls))
            .collect();
        groups.push(GroupConfig {
            name: DEFAULT_GROUP.into(),
            backends,
            settings: global.clone(),
        });
    }
    for (name, g) in &c.upstreams {
        let key = format!("upstreams.{name}");
        if name == DEFAULT_GROUP && !c.backends.is_empty() {
            ck.fail(
                &key,
                "the [[backends]] list is the group \"default\" already: give this group another \
                 name, or move those backends here",
            );
            continue;
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            ck.fail(
                &key,
                format!("group names are letters, digits, '_' and '-', got {name:?}"),
            );
            continue;
        }
        if g.backends.is_empty() {
            ck.fail(
                format!("{key}.backends"),
                "an upstream group needs at least one backend ([[upstreams.<name>.backends]])",
            );
        }
        let group_path = g.health_check_path.as_deref();
        if group_path.is_some_and(|p| !p.starts_with('/')) {
            ck.fail(format!("{key}.health_check_path"), "must start with '/'");
        }
        let tls = files.choice(ck, &key, &g.backends, &c.upstream, Some(g));
        let backends = g
            .backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                resolve_backend(ck, &format!("{key}.backends[{i}]"), b, group_path, &tls)
            })
            .collect();
        let settings = group_settings(ck, &key, g, global, c.upstream.retries);
        groups.push(GroupConfig {
            name: name.clone(),
            backends,
            settings,
        });
    }
    let default = groups.iter().position(|g| g.name == DEFAULT_GROUP);
    if groups.is_empty() && c.routes.is_empty() {
        ck.fail("backends", "at least one [[backends]] entry is required");
    } else if default.is_none() && c.routes.is_empty() {
        ck.fail(
            "backends",
            "without [[routes]] every request goes to the group \"default\" ([[backends]]), \
             and there is none",
        );
    }
    (groups, default)
}

/// What building the TLS client settings of `https://` backends needs: where the files they
/// name are found, and where warnings go.
pub(super) struct TlsFiles<'a> {
    pub(super) base: &'a Path,
    pub(super) warnings: &'a mut Vec<Problem>,
}

impl TlsFiles<'_> {
    /// The TLS client settings of a group's `https://` backends (none without any): the keys of
    /// `[upstream]`, each one the group (`group`, at `at`) sets taking its place.
    fn choice<'c>(
        &mut self,
        ck: &mut Checker,
        at: &'c str,
        backends: &[BackendConfig],
        u: &'c UpstreamConfig,
        group: Option<&'c UpstreamGroupConfig>,
    ) -> UpstreamTlsChoice<'c> {
        let own = |f: fn(&UpstreamGroupConfig) -> bool| group.is_some_and(f);
        let sets_tls = own(|g| {
            g.tls_ca.is_some()
                || g.tls_verify.is_some()
                || g.tls_client_cert.is_some()
                || g.tls_client_key.is_some()
        });
        let config = backends
            .iter()
            .any(|b| b.url.starts_with("https:"))
            .then(|| {
                let settings = UpstreamTlsConfig {
                    tls_ca: group.and_then(|g| g.tls_ca.clone()).or(u.tls_ca.clone()),
                    tls_verify: group.and_then(|g| g.tls_verify).unwrap_or(u.tls_verify),
                    tls_client_cert: group
                        .and_then(|g| g.tls_client_cert.clone())
                        .or(u.tls_client_cert.clone()),
                    tls_client_key: group
                        .and_then(|g| g.tls_client_key.clone())
                        .or(u.tls_client_key.clone()),
                };
                let mut check = TlsCheck {
                    base: self.base,
                    problems: &mut ck.problems,
                    warnings: self.warnings,
                };
                check.upstream(if sets_tls { at } else { "upstream" }, &settings)
            })
            .flatten();
        let own_name = group.and_then(|g| g.tls_server_name.as_deref());
        UpstreamTlsChoice {
            config,
            server_name: own_name.or(u.tls_server_name.as_deref()),
            at: if own_name.is_some() { at } else { "upstream" },
        }
    }
}

/// A group's settings: the global ones with each key the group sets.
fn group_settings(
    ck: &mut Checker,
    key: &str,
    g: &UpstreamGroupConfig,
    global: &GroupSettings,
    global_retries: Option<i64>,
) -> GroupSettings {
    let k = |field: &str| format!("{key}.{field}");
    let mut s = global.clone();
    if let Some(strategy) = g.strategy {
        s.strategy = strategy;
    }
    if let Some(spec) = &g.hash_key {
        if s.strategy != Strategy::Hash {
            ck.fail(k("hash_key"), "applies to strategy = \"hash\" only");
        }
        s.hash_key = hash_key(ck, &k("hash_key"), spec);
    }
    if let Some(f) = g.hash_balance_factor {
        s.hash_balance_factor = balance_factor(ck, &k("hash_balance_factor"), f);
    }
    if let Some(v) = &g.host_header {
        s.host_header = host_header(ck, &k("host_header"), v);
    }
    if let Some(n) = g.max_idle_per_backend {
        s.pool.max_idle_per_backend = ck.range(&k("max_idle_per_backend"), n, 0, 100_000) as usize;
    }
    if let Some(t) = g.idle_timeout_seconds {
        s.pool.idle_timeout = ck.seconds(&k("idle_timeout_seconds"), t);
    }
    s.pool.retries = match g.retries.or(global_retries) {
        Some(n) if g.retries.is_some() => ck.range(&k("retries"), n, 0, 100) as usize,
        Some(n) => n.clamp(0, 100) as usize,
        None => g.backends.len().saturating_sub(1).min(2),
    };
    if let Some(v) = g.retry_non_idempotent {
        s.pool.retry_non_idempotent = v;
    }
    if let Some(v) = g.rewrite_redirects {
        s.pool.rewrite_redirects = v;
    }
    if let Some(v) = &g.send_proxy_protocol {
        s.pool.send_proxy_protocol = proxy_header(ck, &k("send_proxy_protocol"), v);
    }
    if let Some(h) = &g.health_checks {
        let hk = |field: &str| format!("{key}.health_checks.{field}");
        let health = &mut s.health;
        if let Some(v) = h.enabled {
            health.enabled = v;
        }
        if let Some(v) = h.interval_seconds {
            health.interval = ck.seconds(&hk("interval_seconds"), v);
        }
        if let Some(v) = h.timeout_seconds {
            health.timeout = ck.seconds(&hk("timeout_seconds"), v);
        }
        if let Some(v) = h.failure_threshold {
            health.failure_threshold = ck.range(&hk("failure_threshold"), v, 1, 1000) as u32;
        }
        if let Some(v) = h.success_threshold {
            health.success_threshold = ck.range(&hk("success_threshold"), v, 1, 1000) as u32;
        }
        if let Some(v) = &h.expected_status {
            match parse_status_ranges(v) {
                Some(ranges) => health.expected_status = ranges,
                None => ck.fail(
                    hk("expected_status"),
                    format!("expected status codes like \"200-399\" or \"200,204\", got {v:?}"),
                ),
            }
        }
    }
    if let Some(p) = &g.passive_health {
        let pk = |field: &str| format!("{key}.passive_health.{field}");
        let passive = &mut s.passive;
        if let Some(v) = p.enabled {
            passive.enabled = v;
        }
        if let Some(v) = p.max_fails {
            passive.max_fails = ck.range(&pk("max_fails"), v, 1, 1_000_000) as u32;
        }
        if let Some(v) = p.fail_timeout_seconds {
            passive.fail_timeout = ck.seconds(&pk("fail_timeout_seconds"), v);
        }
        if let Some(v) = p.eject_on_5xx {
            passive.eject_on_5xx = v;
        }
    }
    s.health.proxy_header = s.pool.send_proxy_protocol;
    s
}

fn hash_key(ck: &mut Checker, key: &str, spec: &str) -> HashKey {
    let parsed = match spec.split_once(':') {
        None if spec == "client_ip" => Some(HashKey::ClientIp),
        None if spec == "path" => Some(HashKey::Path),
        Some(("header", name)) if is_token(name) && header_is_forwarded(name) => {
            Some(HashKey::Header(name.to_ascii_lowercase()))
        }
        Some(("cookie", name)) if is_token(name) => Some(HashKey::Cookie(name.to_string())),
        _ => None,
    };
    parsed.unwrap_or_else(|| {
        ck.fail(
            key,
            format!(
                "expected client_ip, path, header:NAME or cookie:NAME (NAME a field or cookie \
                 name; not a hop-by-hop field), got {spec:?}"
            ),
        );
        HashKey::ClientIp
    })
}

fn balance_factor(ck: &mut Checker, key: &str, factor: f64) -> f64 {
    if (1.0..=100.0).contains(&factor) {
        factor
    } else {
        ck.fail(
            key,
            format!("must be between 1.0 and 100.0 (times the average load), got {factor}"),
        );
        1.25
    }
}

fn host_header(ck: &mut Checker, key: &str, value: &str) -> HostHeader {
    match value {
        "client" => HostHeader::Client,
        "backend" => HostHeader::Backend,
        literal if is_valid_host(literal.as_bytes()) => HostHeader::Literal(literal.into()),
        other => {
            ck.fail(
                key,
                format!("expected \"client\", \"backend\" or a host[:port], got {other:?}"),
            );
            HostHeader::Client
        }
    }
}

/// What routes take from the rest of the config.
pub(super) struct RouteDefaults<'a> {
    pub groups: &'a [GroupConfig],
    pub timeouts: &'a Timeouts,
    pub max_body_bytes: Option<u64>,
    pub rate_limits: &'a [RateLimitRule],
    /// Where relative paths (users files) are found: the config file's directory.
    pub base_dir: &'a Path,
}

/// The routes, checked, in file order (their index is their place in the file). The rate
/// limits each uses are marked in `used`.
pub(super) fn routes(
    ck: &mut Checker,
    c: &Config,
    d: &RouteDefaults<'_>,
    used: &mut [bool],
) -> Vec<RouteRule> {
    let mut labels: BTreeMap<String, usize> = BTreeMap::new();
    let mut rules = Vec::with_capacity(c.routes.len());
    for (i, r) in c.routes.iter().enumerate() {
        let Some(rule) = route(ck, i, r, d, used) else {
            continue;
        };
        if let Some(&first) = labels.get(&rule.label) {
            ck.fail_related(
                format!("routes[{i}].name"),
                format!("the name {:?} is taken by an earlier route", rule.label),
                format!("routes[{first}]"),
            );
        }
        labels.insert(rule.label.clone(), i);
        rules.push((i, rule));
    }
    conflicts(ck, &rules);
    rules.into_iter().map(|(_, rule)| rule).collect()
}

/// One route, checked; `None` when it is too broken to take part in the conflict check.
fn route(
    ck: &mut Checker,
    i: usize,
    r: &RouteConfig,
    d: &RouteDefaults<'_>,
    used: &mut [bool],
) -> Option<RouteRule> {
    let key = |field: &str| format!("routes[{i}].{field}");
    let label = match &r.name {
        Some(name) if is_label(name) => name.clone(),
        Some(name) => {
            ck.fail(
                key("name"),
                format!("names are letters, digits and '_', '-', '.', ':' (for metrics and logs), got {name:?}"),
            );
            name.clone()
        }
        None => i.to_string(),
    };
    let hosts = hosts(ck, &key("hosts"), r.hosts.as_deref());
    // Every key is checked even when one is broken, so one run shows every problem.
    let path = path_match(ck, i, r);
    let methods = methods(ck, &key("methods"), r.methods.as_deref());
    let headers = header_conditions(ck, &key("headers"), r.headers.as_ref());
    let response_headers = edits(
        ck,
        &key("set_response_headers"),
        &key("remove_response_headers"),
        &r.set_response_headers,
        &r.remove_response_headers,
        &NOT_EDITABLE_IN_RESPONSES,
    );
    let mut action = action(ck, i, r, path.as_ref(), d);
    let admission = admission::route_admission(ck, i, r, d.rate_limits, used, d.base_dir);
    if let (Some(auth), Some(RouteAction::Forward(f))) = (&admission.basic_auth, &mut action) {
        // The credentials were for this proxy: not passed on unless asked.
        if !auth.forward_authorization && !f.request_headers.touches(b"authorization") {
            f.request_headers.remove.push("authorization".into());
        }
    }
    Some(RouteRule {
        label,
        hosts,
        path: path?,
        methods,
        headers,
        action: action?,
        response_headers,
        admission,
    })
}

fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// RFC 9110 token: field names, methods, cookie names.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value the proxy may write: no control characters (CR and LF would split the head).
fn is_field_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Whether a request field of this name reaches the fields a route can see and an upstream
/// gets (hop-by-hop and framing fields are the connection's; Host is matched by `hosts`).
fn header_is_forwarded(name: &str) -> bool {
    let n = name.as_bytes();
    !(is_hop_by_hop(n) || n.eq_ignore_ascii_case(b"expect"))
}

/// A condition's list (`hosts`, `methods`): none given is no condition; an empty one would
/// match nothing, which is never what was meant.
fn listed<'a>(ck: &mut Checker, key: &str, list: Option<&'a [String]>) -> &'a [String] {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        let what = key.rsplit('.').next().unwrap_or(key);
        let why = format!("an empty list matches nothing: leave {what} out to match any");
        ck.fail(key, why);
    }
    list
}

fn hosts(ck: &mut Checker, key: &str, hosts: Option<&[String]>) -> Vec<HostPattern> {
    if hosts.is_none() {
        return Vec::new();
    }
    let hosts = listed(ck, key, hosts);
    let mut out = BTreeSet::new();
    for (j, raw) in hosts.iter().enumerate() {
        let name = raw.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        let (wildcard, bare) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let bad = |why: &str| format!("{raw:?}: {why}");
        let problem = if bare.contains('*') {
            Some("a wildcard is allowed only as a leading \"*.\" (\"*.example.com\")")
        } else if bare.contains("]:") || (!bare.starts_with('[') && bare.contains(':')) {
            Some("hosts are matched without a port: leave the port out")
        } else if !is_valid_host(bare.as_bytes()) || (wildcard && bare.starts_with('[')) {
            Some("not a host name")
        } else {
            None
        };
        match problem {
            Some(why) => ck.fail(format!("{key}[{j}]"), bad(why)),
            None if wildcard => {
                out.insert(HostPattern::Suffix(format!(".{bare}")));
            }
            None => {
                out.insert(HostPattern::Exact(bare.to_string()));
            }
        }
    }
    out.into_iter().collect()
}

/// The path condition: exactly one of `path`, `path_prefix`, `path_regex`; none is prefix `/`.
fn path_match(ck: &mut Checker, i: usize, r: &RouteConfig) -> Option<PathMatch> {
    let key = |field: &str| format!("routes[{i}].{field}");
    let given = [&r.path, &r.path_prefix, &r.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if given > 1 {
        ck.fail(
            format!("routes[{i}]"),
            "a route has one path condition: path, path_prefix or path_regex",
        );
        return None;
    }
    if let Some(p) = &r.path {
        return normalised_path(ck, &key("path"), p).map(PathMatch::Exact);
    }
    if let Some(p) = &r.path_prefix {
        return normalised_path(ck, &key("path_prefix"), p).map(PathMatch::Prefix);
    }
    if let Some(src) = &r.path_regex {
        let built = regex::bytes::RegexBuilder::new(src)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build();
        return match built {
            Ok(re) => Some(PathMatch::Regex(re)),
            Err(e) => {
                let first = e.to_string();
                let why = first.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
                ck.fail(
                    key("path_regex"),
                    format!("invalid regular expression {src:?}: {}", why.trim()),
                );
                None
            }
        };
    }
    Some(PathMatch::Prefix("/".into()))
}

/// A configured path, which must be in the normalised form requests are matched in (else it
/// could never match).
fn normalised_path(ck: &mut Checker, key: &str, p: &str) -> Option<String> {
    if !p.starts_with('/') {
        ck.fail(key, format!("must start with '/', got {p:?}"));
        return None;
    }
    if p.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        ck.fail(
            key,
            format!("a path has no spaces, control characters, '?' or '#', got {p:?}"),
        );
        return None;
    }
    match normalize::path(p.as_bytes(), true) {
        Ok(n) if *n == *p.as_bytes() => Some(p.to_string()),
        Ok(n) => {
            ck.fail(
                key,
                format!(
                    "{p:?} would never match: requests are matched on their normalised path, \
                     which here is {:?}",
                    String::from_utf8_lossy(&n)
                ),
            );
            None
        }
        Err(e) => {
            ck.fail(key, format!("{p:?}: {}", e.reason()));
            None
        }
    }
}

fn methods(ck: &mut Checker, key: &str, methods: Option<&[String]>) -> Vec<String> {
    if methods.is_none() {
        return Vec::new();
    }
    let methods = listed(ck, key, methods);
    let mut out = BTreeSet::new();
    for (j, m) in methods.iter().enumerate() {
        if !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
            ck.fail(
                format!("{key}[{j}]"),
                format!("methods are matched as sent, in upper case (\"GET\"), got {m:?}"),
            );
        }
        out.insert(m.clone());
    }
    out.into_iter().collect()
}

fn header_conditions(
    ck: &mut Checker,
    key: &str,
    headers: Option<&BTreeMap<String, String>>,
) -> Vec<HeaderCondition> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    let mut out: Vec<HeaderCondition> = Vec::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let k = format!("{key}.{name}");
        if !is_token(name) {
            ck.fail(k, format!("not a field name: {name:?}"));
        } else if lower == "host" {
            ck.fail(k, "match hosts with `hosts`");
        } else if lower != "upgrade" && !header_is_forwarded(name) {
            ck.fail(k, "a hop-by-hop or framing field cannot be matched");
        } else if !is_field_value(value) {
            ck.fail(k, "a value has no control characters");
        } else if out.iter().any(|h| h.name == lower) {
            ck.fail(k, "named twice (names are case-insensitive)");
        } else {
            out.push(HeaderCondition {
                name: lower,
                value: (value != "*").then(|| value.clone()),
            });
        }
    }
    out
}

/// Request fields a route may not set or remove: the proxy writes them itself (framing, Host
/// by `host_header`, the forwarding fields it vouches for) or they are hop-by-hop.
const NOT_EDITABLE_IN_REQUESTS: [&str; 7] = [
    "host",
    "expect",
    "trailer",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];
const NOT_EDITABLE_IN_RESPONSES: [&str; 1] = ["trailer"];

fn edits(
    ck: &mut Checker,
    set_key: &str,
    remove_key: &str,
    set: &BTreeMap<String, String>,
    remove: &[String],
    not_editable: &[&str],
) -> HeaderEdits {
    let mut out = HeaderEdits::default();
    let editable = |name: &str| {
        let lower = name.to_ascii_lowercase();
        !(is_hop_by_hop(lower.as_bytes()) || not_editable.contains(&lower.as_str()))
    };
    for (name, value) in set {
        let k = format!("{set_key}.{name}");
        if !is_token(name) {
            ck.fail(k, format!("not a field name: {name:?}"));
        } else if !editable(name) {
            ck.fail(
                k,
                "the proxy writes this field itself (framing, Host, forwarding or hop-by-hop)",
            );
        } else if !is_field_value(value) {
            ck.fail(k, "a value has no control characters");
        } else if out.touches(name.as_bytes()) {
            ck.fail(k, "named twice (names are case-insensitive)");
        } else {
            out.set.push((name.clone(), value.clone()));
        }
    }
    for (j, name) in remove.iter().enumerate() {
        let k = format!("{remove_key}[{j}]");
        if !is_token(name) {
            ck.fail(k, format!("not a field name: {name:?}"));
        } else if !editable(name) {
            ck.fail(
                k,
                "the proxy writes this field itself (framing, Host, forwarding or hop-by-hop)",
            );
        } else if out.touches(name.as_bytes()) {
            ck.fail(
                k,
                "also set or removed already (names are case-insensitive)",
            );
        } else {
            out.remove.push(name.to_ascii_lowercase());
        }
    }
    out
}

/// Exactly one of `upstream`, `redirect`, `respond`, with the keys that go with it.
fn action(
    ck: &mut Checker,
    i: usize,
    r: &RouteConfig,
    path: Option<&PathMatch>,
    d: &RouteDefaults<'_>,
) -> Option<RouteAction> {
    let key = |field: &str| format!("routes[{i}].{field}");
    let given = usize::from(r.upstream.is_some())
        + usize::from(r.redirect.is_some())
        + usize::from(r.respond.is_some());
    if given != 1 {
        ck.fail(
            format!("routes[{i}]"),
            format!("a route needs exactly one of upstream, redirect, respond (has {given})"),
        );
        return None;
    }
    let prefix = match path {
        Some(PathMatch::Prefix(p)) => Some(p.as_str()),
        _ => None,
    };
    if r.strip_prefix && r.path_prefix.is_none() {
        ck.fail(
            key("strip_prefix"),
            "needs path_prefix: the prefix is what it strips",
        );
    }
    if r.rewrite_prefix.is_some() && r.path_prefix.is_none() {
        ck.fail(
            key("rewrite_prefix"),
            "needs path_prefix: the prefix is what it replaces",
        );
    }
    let Some(upstream) = &r.upstream else {
        for (set, name) in [
            (r.strip_prefix, "strip_prefix"),
            (r.rewrite_prefix.is_some(), "rewrite_prefix"),
            (!r.set_request_headers.is_empty(), "set_request_headers"),
            (
                !r.remove_request_headers.is_empty(),
                "remove_request_headers",
            ),
            (
                r.connect_timeout_seconds.is_some(),
                "connect_timeout_seconds",
            ),
            (
                r.request_timeout_seconds.is_some(),
                "request_timeout_seconds",
            ),
            (r.io_timeout_seconds.is_some(), "io_timeout_seconds"),
            (r.max_body_bytes.is_some(), "max_body_bytes"),
        ] {
            if set {
                ck.fail(key(name), "applies to routes with an upstream only");
            }
        }
        if let Some(redirect) = &r.redirect {
            return redirect_action(ck, &key("redirect"), redirect, path)
                .map(RouteAction::Redirect);
        }
        return r
            .respond
            .as_ref()
            .and_then(|respond| respond_action(ck, &key("respond"), respond))
            .map(RouteAction::Respond);
    };
    let Some(group) = d.groups.iter().position(|g| g.name == *upstream) else {
        let known: Vec<&str> = d.groups.iter().map(|g| g.name.as_str()).collect();
        ck.fail(
            key("upstream"),
            format!(
                "no upstream group {upstream:?} (defined: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
        return None;
    };
    let rewrite = match (&r.rewrite_prefix, r.strip_prefix) {
        (Some(_), true) => {
            ck.fail(
                key("rewrite_prefix"),
                "strip_prefix and rewrite_prefix exclude each other",
            );
            None
        }
        (Some(to), false) => {
            let to = normalised_path(ck, &key("rewrite_prefix"), to);
            if let (Some(to), Some(from)) = (&to, prefix) {
                if to.ends_with('/') != from.ends_with('/') {
                    ck.fail(
                        key("rewrite_prefix"),
                        format!(
                            "{to:?} and path_prefix {from:?} must both end in '/' or both not, \
                             or the path would lose or gain a separator"
                        ),
                    );
                }
            }
            to.map(PathRewrite::Replace)
        }
        (None, true) => Some(PathRewrite::Strip),
        (None, false) => None,
    };
    let request_headers = edits(
        ck,
        &key("set_request_headers"),
        &key("remove_request_headers"),
        &r.set_request_headers,
        &r.remove_request_headers,
        &NOT_EDITABLE_IN_REQUESTS,
    );
    let mut timeouts = d.timeouts.clone();
    if let Some(s) = r.connect_timeout_seconds {
        timeouts.connect = ck.seconds(&key("connect_timeout_seconds"), s);
    }
    if let Some(s) = r.request_timeout_seconds {
        timeouts.request = ck.seconds(&key("request_timeout_seconds"), s);
    }
    if let Some(s) = r.io_timeout_seconds {
        timeouts.io = ck.seconds(&key("io_timeout_seconds"), s);
    }
    let max_body_bytes = match r.max_body_bytes {
        Some(n) => match ck.range(&key("max_body_bytes"), n, 0, i64::MAX) {
            0 => None,
            n => Some(n as u64),
        },
        None => d.max_body_bytes,
    };
    Some(RouteAction::Forward(Forward {
        group,
        rewrite,
        request_headers,
        timeouts,
        max_body_bytes,
    }))
}

fn redirect_action(
    ck: &mut Checker,
    key: &str,
    r: &RedirectConfig,
    path: Option<&PathMatch>,
) -> Option<Redirect> {
    let status = match r.status {
        s @ (301 | 302 | 303 | 307 | 308) => s as u16,
        other => {
            ck.fail(
                format!("{key}.status"),
                format!("a redirect is 301, 302, 303, 307 or 308, got {other}"),
            );
            return None;
        }
    };
    let to = r.to.as_str();
    let absolute = url::Url::parse(to)
        .ok()
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    let path_only = to.starts_with('/') && !to.starts_with("//");
    if !(absolute || path_only) || to.contains('#') || !to.bytes().all(|b| b > b' ' && b != 0x7f) {
        ck.fail(
            format!("{key}.to"),
            format!(
                "expected an http(s) URL or a path starting with '/', without '#', spaces or \
                 control characters, got {to:?}"
            ),
        );
        return None;
    }
    if r.keep_path {
        if matches!(path, Some(PathMatch::Exact(_) | PathMatch::Regex(_))) {
            ck.fail(
                format!("{key}.keep_path"),
                "keeps what follows a matched prefix: the route needs path_prefix (or no path condition)",
            );
        } else if to.contains('?') {
            ck.fail(
                format!("{key}.keep_path"),
                "the path would land in the query of `to`: leave the query out of `to`",
            );
        }
    }
    Some(Redirect {
        to: to.to_string(),
        status,
        keep_path: r.keep_path,
    })
}

fn respond_action(ck: &mut Checker, key: &str, r: &RespondConfig) -> Option<Respond> {
    if !(200..=599).contains(&r.status) {
        ck.fail(
            format!("{key}.status"),
            format!("must be between 200 and 599, got {}", r.status),
        );
        return None;
    }
    if matches!(r.status, 204 | 304) && !r.body.is_empty() {
        ck.fail(
            format!("{key}.body"),
            format!("a {} response has no body", r.status),
        );
    }
    if r.content_type.is_empty() || !is_field_value(&r.content_type) {
        ck.fail(
            format!("{key}.content_type"),
            "must be a media type without control characters",
        );
    }
    Some(Respond {
        status: r.status as u16,
        body: r.body.clone(),
        content_type: r.content_type.clone(),
    })
}

/// Where two routes could compete: the same host (or wildcard, or any host) and the same path
/// condition.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum HostKey<'a> {
    Pattern(&'a HostPattern),
    Any,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PathKey<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

/// Refuses every pair of routes that would match the same requests at the same specificity:
/// same host, same path condition, as many conditions, and conditions that do not exclude each
/// other (disjoint methods, or different values of one field).
fn conflicts(ck: &mut Checker, rules: &[(usize, RouteRule)]) {
    let mut buckets: BTreeMap<(HostKey<'_>, PathKey<'_>), Vec<usize>> = BTreeMap::new();
    for (at, (_, rule)) in rules.iter().enumerate() {
        let path = match &rule.path {
            PathMatch::Exact(p) => PathKey::Exact(p),
            PathMatch::Prefix(p) => PathKey::Prefix(p),
            PathMatch::Regex(re) => PathKey::Regex(re.as_str()),
        };
        if rule.hosts.is_empty() {
            buckets.entry((HostKey::Any, path)).or_default().push(at);
        }
        for host in &rule.hosts {
            buckets
                .entry((HostKey::Pattern(host), path))
                .or_default()
                .push(at);
        }
    }
    let mut reported = BTreeSet::new();
    for ((host, path), members) in &buckets {
        for (n, &a) in members.iter().enumerate() {
            for &b in &members[n + 1..] {
                let ((ia, ra), (ib, rb)) = (&rules[a], &rules[b]);
                if ra.specificity() != rb.specificity() || !may_overlap(ra, rb) {
                    continue;
                }
                if !reported.insert((*ia, *ib)) {
                    continue;
                }
                let host = match host {
                    HostKey::Any => "any host".to_string(),
                    HostKey::Pattern(HostPattern::Exact(h)) => format!("host {h:?}"),
                    HostKey::Pattern(HostPattern::Suffix(s)) => format!("host \"*{s}\""),
                };
                let path = match path {
                    PathKey::Exact(p) => format!("path {p:?}"),
                    PathKey::Prefix(p) => format!("path_prefix {p:?}"),
                    PathKey::Regex(p) => format!("path_regex {p:?}"),
                };
                ck.fail_related(
                    format!("routes[{ib}]"),
                    format!(
                        "matches the same requests as routes[{ia}] with the same specificity \
                         ({host}, {path}), so which one wins would depend on file order; make \
                         one more specific (methods, headers) or remove one"
                    ),
                    format!("routes[{ia}]"),
                );
            }
        }
    }
}

/// Whether some request could meet the conditions of both routes.
fn may_overlap(a: &RouteRule, b: &RouteRule) -> bool {
    let methods_disjoint = !a.methods.is_empty()
        && !b.methods.is_empty()
        && !a.methods.iter().any(|m| b.methods.contains(m));
    let values_differ = a.headers.iter().any(|ha| {
        b.headers.iter().any(|hb| {
            ha.name == hb.name && matches!((&ha.value, &hb.value), (Some(x), Some(y)) if x != y)
        })
    });
    !(methods_disjoint || values_differ)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    fn parse(text: &str) -> crate::config::ValidConfig {
        crate::config::parse(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn groups_take_the_global_sections_and_override_what_they_set() {
        let c = parse(
            r#"
            [load_balancing]
            strategy = "least_conn"
            [health_checks]
            interval_seconds = 7
            [passive_health]
            max_fails = 9
            [upstream]
            max_idle_per_backend = 5
            host_header = "backend"

            [[backends]]
            url = "http://127.0.0.1:1"

            [upstreams.api]
            strategy = "hash"
            hash_key = "cookie:sid"
            health_check_path = "/healthz"
            retries = 0
            health_checks = { interval_seconds = 2, expected_status = "200" }
            passive_health = { eject_on_5xx = true }
            [[upstreams.api.backends]]
            url = "http://127.0.0.1:2"
            [[upstreams.api.backends]]
            url = "http://127.0.0.1:3"
            health_check_path = "/own"
            [[upstreams.api.backends]]
            url = "http://127.0.0.1:4"

            [upstreams.static]
            host_header = "files.internal"
            backends = [{ url = "http://127.0.0.1:5" }, { url = "http://127.0.0.1:6" }]
            "#,
        );
        let names: Vec<&str> = c.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["default", "api", "static"]);
        assert_eq!(c.default_group, Some(0));
        let (default, api, files) = (&c.groups[0].settings, &c.groups[1], &c.groups[2]);
        assert_eq!(default.strategy, Strategy::LeastConn);
        assert_eq!(default.pool.retries, 0, "one backend: no other to retry on");
        let s = &api.settings;
        assert_eq!(s.strategy, Strategy::Hash);
        assert_eq!(s.hash_key, HashKey::Cookie("sid".into()));
        assert_eq!(s.hash_balance_factor, 1.25);
        assert_eq!(s.pool.retries, 0);
        assert_eq!(s.pool.max_idle_per_backend, 5, "inherited");
        assert_eq!(s.host_header, HostHeader::Backend, "inherited");
        assert_eq!(s.health.interval, Duration::from_secs(2));
        assert_eq!(s.health.expected_status, vec![(200, 200)]);
        assert_eq!(s.health.failure_threshold, 3, "the global default");
        assert!(s.passive.eject_on_5xx);
        assert_eq!(s.passive.max_fails, 9, "inherited");
        let paths: Vec<Option<&str>> = api
            .backends
            .iter()
            .map(|b| b.health_check_path.as_deref())
            .collect();
        assert_eq!(paths, [Some("/healthz"), Some("/own"), Some("/healthz")]);
        assert_eq!(files.settings.strategy, Strategy::LeastConn);
        assert_eq!(files.settings.pool.retries, 1, "two backends: one other");
        assert_eq!(
            files.settings.host_header,
            HostHeader::Literal("files.internal".into())
        );
        assert_eq!(files.settings.health.interval, Duration::from_secs(7));
    }

    #[test]
    fn routes_are_compiled_into_rules() {
        let c = parse(
            r#"
            [upstreams.api]
            backends = [{ url = "http://127.0.0.1:2" }]
            [[routes]]
            name = "v1"
            hosts = ["API.example.com.", "*.Example.com", "api.example.com"]
            path_prefix = "/v1/"
            methods = ["POST", "GET"]
            headers = { "X-Canary" = "1", "x-debug" = "*" }
            upstream = "api"
            rewrite_prefix = "/api/"
            request_timeout_seconds = 5
            max_body_bytes = 0
            [[routes]]
            path = "/robots.txt"
            respond = { body = "no" }
            "#,
        );
        let r = &c.routes[0];
        assert_eq!(r.label, "v1");
        assert_eq!(
            r.hosts,
            [
                HostPattern::Exact("api.example.com".into()),
                HostPattern::Suffix(".example.com".into())
            ]
        );
        assert_eq!(r.prefix(), Some("/v1/"));
        assert_eq!(r.methods, ["GET", "POST"]);
        assert_eq!(r.specificity(), 3);
        assert_eq!(r.headers[0].value.as_deref(), Some("1"));
        assert_eq!(
            r.headers[1],
            HeaderCondition {
                name: "x-debug".into(),
                value: None
            }
        );
        let RouteAction::Forward(f) = &r.action else {
            panic!("forward")
        };
        assert_eq!(f.rewrite, Some(PathRewrite::Replace("/api/".into())));
        assert_eq!(f.timeouts.request, Duration::from_secs(5));
        assert_eq!(f.max_body_bytes, None);
        assert_eq!(c.routes[1].label, "1");
        let RouteAction::Respond(respond) = &c.routes[1].action else {
            panic!("respond")
        };
        assert_eq!(
            (respond.status, respond.content_type.as_str()),
            (200, "text/plain; charset=utf-8")
        );
        // No default group, routes present: unmatched requests get 404, which is fine.
        assert_eq!(c.default_group, None);
    }

    #[test]
    fn the_parser_body_limit_is_the_loosest_of_the_routes() {
        let with = |route_max: &str| {
            parse(&format!(
                "[limits]\nmax_body_bytes = 100\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n\
                 [[routes]]\npath_prefix = \"/up/\"\nupstream = \"default\"\n{route_max}"
            ))
            .limits
        };
        let l = with("max_body_bytes = 5000\n");
        assert_eq!(
            (l.head.max_body_bytes, l.max_body_bytes),
            (Some(5000), Some(100))
        );
        let l = with("max_body_bytes = 0\n");
        assert_eq!((l.head.max_body_bytes, l.max_body_bytes), (None, Some(100)));
        let l = with("max_body_bytes = 10\n");
        assert_eq!(
            (l.head.max_body_bytes, l.max_body_bytes),
            (Some(100), Some(100))
        );
    }
}
