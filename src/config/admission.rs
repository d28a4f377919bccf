//! Who may send what, as data: address ranges (`trusted_proxies`, a route's `allow` and `deny`),
//! the `[rate_limits.<name>]` definitions and the references to them, and a route's basic-auth
//! users, read from their htpasswd file (each hash checked to be bcrypt or argon2) at load, so
//! a reload re-reads it. Enforcing them is the `limits` and `access` modules' business.

use super::check::Checker;
use super::schema::{
    BasicAuthConfig, Config, RateLimitConfig, RateLimitMode, RouteConfig, StoreErrorPolicy,
};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The users file is read whole at load: bounded so a wrong path cannot pull in a huge file.
const USERS_FILE_MAX_BYTES: u64 = 4 << 20;
/// Keys a limit may track at most: 16 bytes each, so 160 MiB.
const MAX_KEYS_CEILING: i64 = 10_000_000;

/// Address ranges; an address matches when some range holds it (an IPv4-mapped IPv6 address
/// as the IPv4 address it maps).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRanges(Vec<IpNet>);

impl IpRanges {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client address (see `trusted_proxies`).
    ClientIp,
    /// The first such request field, by lowercase name; requests without it are not limited.
    Header(String),
    /// The normalised host; requests without one are not limited.
    Host,
    /// The route (its name): each route has its own bucket.
    Route,
    /// The client address on each route.
    ClientIpRoute,
}

/// What a limit does beyond its burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    Reject,
    /// Wait until the rate admits the request, up to this long.
    Delay(Duration),
}

/// A fleet-wide limit's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `redis://host:port[/db]`.
    pub url: String,
    pub sync_interval: Duration,
    pub on_error: StoreErrorPolicy,
}

/// One `[rate_limits.<name>]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitRule {
    pub name: String,
    pub key: LimitKey,
    /// Nanoseconds between two requests at the steady rate (GCRA's emission interval).
    pub interval_ns: u64,
    /// Requests allowed at once after idle.
    pub burst: u64,
    pub mode: LimitMode,
    pub max_keys: usize,
    pub store: Option<StoreSettings>,
    /// The limit as `RateLimit-Policy` states it: this many requests per this many seconds.
    pub quota: (u64, u64),
}

/// A route's users: name -> bcrypt or argon2 hash (PHC string), from an htpasswd file.
#[derive(Debug)]
pub struct BasicAuth {
    /// Unique per load: what a verified password is remembered under (a reload that changes
    /// the users forgets what was verified against the old ones).
    pub id: u64,
    pub realm: String,
    pub users: HashMap<String, Arc<str>>,
    /// Pass the checked `Authorization` on upstream.
    pub forward_authorization: bool,
    pub file: PathBuf,
}

/// What a request must pass on a route before it goes on: client address ranges, basic auth,
/// rate limits (by index in `ValidConfig::rate_limits`).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub allow: Option<IpRanges>,
    pub deny: Option<IpRanges>,
    pub basic_auth: Option<Arc<BasicAuth>>,
    pub rate_limits: Vec<usize>,
}

impl Admission {
    /// Nothing to check: the request pays nothing for admission.
    pub fn is_open(&self) -> bool {
        self.allow.is_none()
            && self.deny.is_none()
            && self.basic_auth.is_none()
            && self.rate_limits.is_empty()
    }

    /// The client address may pass the route's `allow` and `deny` (deny wins).
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        !self.deny.as_ref().is_some_and(|d| d.contains(ip))
            && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

/// A list of addresses and ranges at `key`: `"10.0.0.0/8"`, `"2001:db8::/32"`, `"127.0.0.1"`.
pub(super) fn ip_ranges(ck: &mut Checker, key: &str, list: &[String]) -> IpRanges {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) if net.trunc() != net => ck.fail(
                format!("{key}[{i}]"),
                format!(
                    "{text:?} has bits set past its prefix length: the range is {}",
                    net.trunc()
                ),
            ),
            Ok(net) => out.push(net),
            Err(_) => ck.fail(
                format!("{key}[{i}]"),
                format!("expected an address or a range like \"10.0.0.0/8\", got {text:?}"),
            ),
        }
    }
    IpRanges(out)
}

/// The `[rate_limits.<name>]` sections, in name order (their index is how routes refer to them).
pub(super) fn rate_limits(ck: &mut Checker, c: &Config) -> Vec<RateLimitRule> {
    c.rate_limits
        .iter()
        .map(|(name, l)| rate_limit(ck, name, l))
        .collect()
}

fn rate_limit(ck: &mut Checker, name: &str, l: &RateLimitConfig) -> RateLimitRule {
    let key = |field: &str| format!("rate_limits.{name}.{field}");
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        ck.fail(
            format!("rate_limits.{name}"),
            format!("limit names are letters, digits, '_' and '-' (for metrics and headers), got {name:?}"),
        );
    }
    let limit_key = match l.key.as_deref().unwrap_or("client_ip") {
        "client_ip" => LimitKey::ClientIp,
        "host" => LimitKey::Host,
        "route" => LimitKey::Route,
        "client_ip+route" => LimitKey::ClientIpRoute,
        spec => match spec.strip_prefix("header:") {
            Some(field) if super::routing::is_token(field) && field_reaches_routes(field) => {
                LimitKey::Header(field.to_ascii_lowercase())
            }
            _ => {
                ck.fail(
                    key("key"),
                    format!(
                        "expected client_ip, header:NAME, host, route or client_ip+route, got \
                         {spec:?}"
                    ),
                );
                LimitKey::ClientIp
            }
        },
    };
    let per_second = match (l.requests_per_second, l.requests_per_minute) {
        (Some(rps), None) => rate(ck, &key("requests_per_second"), rps),
        (None, Some(rpm)) => rate(ck, &key("requests_per_minute"), rpm) / 60.0,
        (Some(_), Some(_)) => {
            ck.fail(
                key("requests_per_minute"),
                "give requests_per_second or requests_per_minute, not both",
            );
            1.0
        }
        (None, None) => {
            ck.fail(
                format!("rate_limits.{name}"),
                "needs requests_per_second or requests_per_minute",
            );
            1.0
        }
    };
    let interval_ns = ((1e9 / per_second).round() as u64).max(1);
    // As `RateLimit-Policy` says it: whole requests per second, else per minute.
    let quota = match l.requests_per_minute {
        Some(rpm) if rpm.fract() == 0.0 => (rpm as u64, 60),
        _ if per_second.fract() == 0.0 => (per_second as u64, 1),
        _ => (((per_second * 60.0).round() as u64).max(1), 60),
    };
    let burst = ck.range(&key("burst"), l.burst.unwrap_or(1), 1, 1_000_000_000) as u64;
    let mode = match (l.mode, l.max_delay_ms) {
        (RateLimitMode::Reject, Some(_)) => {
            ck.fail(key("max_delay_ms"), "applies to mode = \"delay\" only");
            LimitMode::Reject
        }
        (RateLimitMode::Reject, None) => LimitMode::Reject,
        (RateLimitMode::Delay, ms) => {
            let ms = ck.range(&key("max_delay_ms"), ms.unwrap_or(500), 1, 60_000);
            LimitMode::Delay(Duration::from_millis(ms as u64))
        }
    };
    let max_keys = ck.range(
        &key("max_keys"),
        l.max_keys.unwrap_or(100_000),
        16,
        MAX_KEYS_CEILING,
    ) as usize;
    let store = match &l.store {
        Some(url) => store(ck, name, url, l),
        None => {
            for (set, field) in [
                (l.sync_interval_ms.is_some(), "sync_interval_ms"),
                (l.on_store_error.is_some(), "on_store_error"),
            ] {
                if set {
                    ck.fail(key(field), "applies to a limit with a store only");
                }
            }
            None
        }
    };
    RateLimitRule {
        name: name.to_string(),
        key: limit_key,
        interval_ns,
        burst,
        mode,
        max_keys,
        store,
        quota,
    }
}

/// Whether a request field of this name reaches the proxy's rules (hop-by-hop and framing
/// fields are the connection's).
fn field_reaches_routes(name: &str) -> bool {
    !crate::http::head::is_hop_by_hop(name.as_bytes()) && !name.eq_ignore_ascii_case("host")
}

fn rate(ck: &mut Checker, key: &str, value: f64) -> f64 {
    if value.is_finite() && value > 0.0 && value <= 1e9 {
        value
    } else {
        ck.fail(
            key,
            format!("must be a positive number up to 1e9, got {value}"),
        );
        1.0
    }
}

fn store(ck: &mut Checker, name: &str, url: &str, l: &RateLimitConfig) -> Option<StoreSettings> {
    let key = |field: &str| format!("rate_limits.{name}.{field}");
    if !is_redis_url(url) {
        ck.fail(
            key("store"),
            format!("expected redis://host[:port][/db], got {url:?}"),
        );
        return None;
    }
    let interval = ck.range(
        &key("sync_interval_ms"),
        l.sync_interval_ms.unwrap_or(100),
        10,
        60_000,
    );
    Some(StoreSettings {
        url: url.to_string(),
        sync_interval: Duration::from_millis(interval as u64),
        on_error: l.on_store_error.unwrap_or_default(),
    })
}

/// `redis://[user:password@]host[:port][/db number]`.
fn is_redis_url(url: &str) -> bool {
    url::Url::parse(url).ok().is_some_and(|u| {
        let db = u.path().trim_start_matches('/');
        u.scheme() == "redis"
            && u.has_host()
            && u.query().is_none()
            && db.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Names of limits at `key` as indexes into `limits`; each limit used is marked in `used`.
pub(super) fn limit_refs(
    ck: &mut Checker,
    key: &str,
    names: &[String],
    limits: &[RateLimitRule],
    used: &mut [bool],
) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match limits.iter().position(|l| l.name == *name) {
            Some(at) if out.contains(&at) => {
                ck.fail(format!("{key}[{i}]"), format!("{name:?} is listed twice"))
            }
            Some(at) => {
                used[at] = true;
                out.push(at);
            }
            None => {
                let known: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
                ck.fail(
                    format!("{key}[{i}]"),
                    format!(
                        "no rate limit {name:?} (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }
    out
}

/// A limit no route and no `[server] rate_limits` uses is a mistake (a name mistyped where it
/// is used): refused like an unknown key.
pub(super) fn unused_limits(ck: &mut Checker, limits: &[RateLimitRule], used: &[bool]) {
    for (limit, _) in limits.iter().zip(used).filter(|(_, &u)| !u) {
        ck.fail(
            format!("rate_limits.{}", limit.name),
            "defined but used by no route and not in [server] rate_limits",
        );
    }
}

/// A route's admission: `allow`, `deny`, `basic_auth` (users read from their file) and
/// `rate_limits`.
pub(super) fn route_admission(
    ck: &mut Checker,
    i: usize,
    r: &RouteConfig,
    limits: &[RateLimitRule],
    used: &mut [bool],
    base_dir: &Path,
) -> Admission {
    let key = |field: &str| format!("routes[{i}].{field}");
    let mut ranges = |field: &str, list: &Option<Vec<String>>| {
        list.as_ref().map(|list| {
            if list.is_empty() {
                ck.fail(
                    key(field),
                    format!("an empty list matches nothing: leave {field} out to match any"),
                );
            }
            ip_ranges(ck, &key(field), list)
        })
    };
    let allow = ranges("allow", &r.allow);
    let deny = ranges("deny", &r.deny);
    let basic_auth = match &r.basic_auth {
        Some(b) => basic_auth(ck, &key("basic_auth"), b, r, base_dir).map(Arc::new),
        None => {
            if r.forward_authorization.is_some() {
                ck.fail(
                    key("forward_authorization"),
                    "applies to a route with basic_auth only",
                );
            }
            None
        }
    };
    let rate_limits = match &r.rate_limits {
        Some(names) => limit_refs(ck, &key("rate_limits"), names, limits, used),
        None => Vec::new(),
    };
    Admission {
        allow,
        deny,
        basic_auth,
        rate_limits,
    }
}

fn basic_auth(
    ck: &mut Checker,
    key: &str,
    b: &BasicAuthConfig,
    r: &RouteConfig,
    base_dir: &Path,
) -> Option<BasicAuth> {
    let realm = b.realm.clone().unwrap_or_else(|| "ringproxy".into());
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        ck.fail(
            format!("{key}.realm"),
            "printable ASCII without '\"' or '\\' (it goes in WWW-Authenticate)",
        );
    }
    let file = base_dir.join(&b.users_file);
    let file_key = format!("{key}.users_file");
    let text = match read_bounded(&file) {
        Ok(text) => text,
        Err(e) => {
            ck.fail(file_key, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let users = match parse_htpasswd(&text) {
        Ok(users) if users.is_empty() => {
            ck.fail(file_key, format!("{} has no users", file.display()));
            return None;
        }
        Ok(users) => users,
        Err((line, why)) => {
            ck.fail(file_key, format!("{}:{line}: {why}", file.display()));
            return None;
        }
    };
    static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Some(BasicAuth {
        id: LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        realm,
        users,
        forward_authorization: r.forward_authorization.unwrap_or(false),
        file,
    })
}

fn read_bounded(file: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(file)?;
    if meta.len() > USERS_FILE_MAX_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {USERS_FILE_MAX_BYTES} bytes"
        )));
    }
    std::fs::read_to_string(file)
}

/// `user:hash` lines (blank lines and `#` comments skipped), as Apache's `htpasswd -B` and
/// nginx's `auth_basic_user_file` have them; only bcrypt and argon2 hashes are taken (MD5,
/// SHA-1 and crypt(3) ones are too cheap to guess). Errors name the line.
pub fn parse_htpasswd(text: &str) -> Result<HashMap<String, Arc<str>>, (usize, String)> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err((at, "expected user:hash".into()));
        };
        // A trailing `:comment` field, as some htpasswd files have, is ignored.
        let hash = hash.split(':').next().unwrap_or(hash);
        if user.is_empty() || user.contains(|c: char| c.is_control()) {
            return Err((at, "empty or unprintable user name".into()));
        }
        if !is_supported_hash(hash) {
            return Err((
                at,
                format!(
                    "user {user:?}: not a bcrypt ($2y$/$2b$/$2a$) or argon2 ($argon2id$...) hash; \
                     MD5 ($apr1$), SHA-1 ({{SHA}}) and crypt hashes are refused (htpasswd -B \
                     makes bcrypt ones)"
                ),
            ));
        }
        if users.insert(user.to_string(), Arc::from(hash)).is_some() {
            return Err((at, format!("user {user:?} is listed twice")));
        }
    }
    Ok(users)
}

fn is_supported_hash(hash: &str) -> bool {
    if hash.starts_with("$2") {
        return hash.parse::<bcrypt::HashParts>().is_ok();
    }
    hash.starts_with("$argon2") && argon2::PasswordHash::new(hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hold_addresses_and_mapped_ones() {
        let mut ck = Checker::default();
        let r = ip_ranges(
            &mut ck,
            "k",
            &[
                "10.0.0.0/8".into(),
                "127.0.0.1".into(),
                "2001:db8::/32".into(),
            ],
        );
        assert!(ck.problems.is_empty());
        for yes in ["10.1.2.3", "127.0.0.1", "::ffff:10.9.9.9", "2001:db8::5"] {
            assert!(r.contains(yes.parse().unwrap()), "{yes}");
        }
        for no in ["11.0.0.1", "127.0.0.2", "2001:db9::1"] {
            assert!(!r.contains(no.parse().unwrap()), "{no}");
        }
        ip_ranges(&mut ck, "k", &["10.1.0.0/8".into(), "ten".into()]);
        assert_eq!(ck.problems.len(), 2);
        assert!(ck.problems[0].message.contains("10.0.0.0/8"));
    }

    #[test]
    fn htpasswd_takes_bcrypt_and_argon2_only() {
        let bcrypt = bcrypt::hash("secret", 4).unwrap();
        let argon = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                     dN6IGa2gMmM0QYuMsZ0HLwL5dXxF7B1ai36LXp+Cbv4";
        let text = format!("# users\nalice:{bcrypt}\n\nbob:{argon}\n");
        let users = parse_htpasswd(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(&*users["alice"], bcrypt);
        let md5 = "carol:$apr1$abc$0123456789abcdefghijkl";
        assert_eq!(parse_htpasswd(md5).unwrap_err().0, 1);
        let sha = format!("alice:{bcrypt}\ndave:{{SHA}}qUqP5cyxm6YcTAhz05Hph5gvu9M=");
        assert_eq!(parse_htpasswd(&sha).unwrap_err().0, 2);
        assert!(parse_htpasswd("nocolon").is_err());
        let twice = format!("a:{bcrypt}\na:{bcrypt}");
        assert!(parse_htpasswd(&twice).unwrap_err().1.contains("twice"));
    }
}
