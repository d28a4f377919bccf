//! Config schema. Every field has a default so a file with one `[[backends]]` entry is complete;
//! the defaults follow nginx where it has an equivalent directive.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub load_balancing: LoadBalancingConfig,
    #[serde(default)]
    pub health_checks: HealthCheckConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub passive_health: PassiveHealthConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Named upstream groups (`[upstreams.<name>]`); `[[backends]]` is the group `default`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamGroupConfig>,
    /// Host and path routes (`[[routes]]`), matched by specificity, never by file order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[tls]`: the HTTPS listener; absent, none.
    #[serde(default)]
    pub tls: Option<super::tls::TlsConfig>,
    /// Named rate limits (`[rate_limits.<name>]`), applied by routes and `[server] rate_limits`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1`).
    pub host: String,
    /// Port to listen on (default 3000). Kept wide here so range errors name the key.
    pub port: i64,
    /// Worker threads: `"auto"` (one per CPU the process may run on) or a count.
    pub workers: Workers,
    /// Pin worker N to the N-th allowed CPU (default true).
    pub pin_cores: bool,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish (default 30).
    pub shutdown_timeout_seconds: f64,
    /// Merge repeated slashes in the path that is matched and forwarded (default true, as
    /// Envoy's `merge_slashes` and nginx's).
    pub merge_slashes: bool,
    /// Addresses and ranges (`"10.0.0.0/8"`, `"127.0.0.1"`) of the proxies in front whose word
    /// on the client's address is taken (PROXY protocol, `X-Forwarded-For`); default none.
    pub trusted_proxies: Vec<String>,
    /// Every connection starts with a PROXY protocol header (v1 or v2), accepted from
    /// `trusted_proxies` only (default false).
    pub proxy_protocol: bool,
    /// Rate limits every request must pass (names of `[rate_limits.<name>]`).
    pub rate_limits: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 3000,
            workers: Workers::Auto,
            pin_cores: true,
            shutdown_timeout_seconds: 30.0,
            merge_slashes: true,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            rate_limits: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Count(i64),
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WorkersVisitor;
        impl Visitor<'_> for WorkersVisitor {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""auto" or a positive integer"#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Workers, E> {
                Ok(Workers::Count(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Workers, E> {
                if v == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(WorkersVisitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `http://host:port`; resolved once at load time.
    pub url: String,
    /// Relative weight for the `weighted` strategy (default 1, at least 1).
    #[serde(default = "default_weight")]
    pub weight: i64,
    /// Path probed by HTTP health checks; none (the default): a TCP connect check.
    #[serde(default)]
    pub health_check_path: Option<String>,
    /// An `https://` backend's name for SNI and verification (default: `[upstream]
    /// tls_server_name`, else the URL's host).
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

fn default_weight() -> i64 {
    1
}

/// Serialized (for `/status`) under the same names as in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Smooth weighted round robin, as nginx's and HAProxy's round robin (`weighted` is an alias).
    #[default]
    #[serde(alias = "weighted")]
    RoundRobin,
    /// Fewest requests in flight (over all workers) relative to weight, as nginx's `least_conn`
    /// and HAProxy's `leastconn`; ties rotate.
    LeastConn,
    /// The less loaded (in flight for weight) of two backends drawn at random by weight
    /// (Envoy's least-request).
    Random2,
    /// Consistent hashing of `hash_key` with bounded loads.
    Hash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadBalancingConfig {
    pub strategy: Strategy,
    /// What `strategy = "hash"` hashes: `client_ip`, `header:NAME`, `cookie:NAME` or `path`.
    pub hash_key: Option<String>,
    /// No backend gets more than this times the average load under `hash` (default 1.25).
    pub hash_balance_factor: f64,
}

impl Default for LoadBalancingConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            hash_key: None,
            hash_balance_factor: 1.25,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    pub interval_seconds: f64,
    pub timeout_seconds: f64,
    pub failure_threshold: i64,
    pub success_threshold: i64,
    /// Status codes that count as healthy: ranges and codes, e.g. `"200-399"` or `"200,204"`.
    pub expected_status: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: 30.0,
            timeout_seconds: 5.0,
            failure_threshold: 3,
            success_threshold: 2,
            expected_status: "200-399".into(),
        }
    }
}

/// Circuit breaking on real traffic (nginx's `max_fails`/`fail_timeout`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PassiveHealthConfig {
    pub enabled: bool,
    /// Failures within `fail_timeout_seconds` that eject a backend (default 3).
    pub max_fails: i64,
    /// Failure window and ejection cool-down (default 10).
    pub fail_timeout_seconds: f64,
    /// Count 5xx responses as failures (default false: only connect errors, resets, timeouts).
    pub eject_on_5xx: bool,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_fails: 3,
            fail_timeout_seconds: 10.0,
            eject_on_5xx: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    /// tracing filter directive; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
    /// Bytes of log lines queued for stdout at most; past it lines are dropped and counted.
    pub buffer_bytes: i64,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
            buffer_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// TCP connect to a backend (nginx `proxy_connect_timeout`, default 10).
    pub connect_timeout_seconds: f64,
    /// From the request sent to the upstream's response head (default 30) -> 504.
    pub request_timeout_seconds: f64,
    /// Whole client request head (nginx `client_header_timeout`, default 10) -> 408.
    pub client_header_timeout_seconds: f64,
    /// Client keep-alive wait between requests (default 60).
    pub idle_timeout_seconds: f64,
    /// Longest stall of one body read or write on either side (nginx `send_timeout`, default 60).
    pub io_timeout_seconds: f64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect_timeout_seconds: 10.0,
            request_timeout_seconds: 30.0,
            client_header_timeout_seconds: 10.0,
            idle_timeout_seconds: 60.0,
            io_timeout_seconds: 60.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Idle keep-alive connections kept per backend, per worker (nginx `keepalive`, default 64).
    pub max_idle_per_backend: i64,
    /// Idle pooled connections are closed after this (default 60).
    pub idle_timeout_seconds: f64,
    /// Further backends tried after a retryable failure; default: the number of other
    /// backends, at most 2.
    pub retries: Option<i64>,
    /// Also retry non-idempotent requests (POST, PATCH) that may have reached the upstream
    /// (default false: never, RFC 9110 §9.2.2).
    pub retry_non_idempotent: bool,
    /// Rewrite absolute redirects (`Location`, `Refresh`) in which a backend names itself to the
    /// address the client used (default true, as nginx's `proxy_redirect default`).
    pub rewrite_redirects: bool,
    /// The Host sent upstream: `client` (default), `backend` (the backend URL's authority) or a
    /// literal host.
    pub host_header: String,
    /// `https://` backends: PEM file of the CAs to verify them with (default: the webpki roots,
    /// Mozilla's list).
    pub tls_ca: Option<String>,
    /// `https://` backends: the name to send (SNI) and verify (default: the URL's host).
    pub tls_server_name: Option<String>,
    /// `https://` backends: verify their certificates (default true; false is for labs).
    pub tls_verify: bool,
    /// `https://` backends: a client certificate (PEM chain) and key for mutual TLS.
    pub tls_client_cert: Option<String>,
    pub tls_client_key: Option<String>,
    /// Start each upstream connection with a PROXY protocol header, `"v1"` or `"v2"` (default
    /// none), as HAProxy's `send-proxy`.
    pub send_proxy_protocol: Option<String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            max_idle_per_backend: 64,
            idle_timeout_seconds: 60.0,
            retries: None,
            retry_non_idempotent: false,
            rewrite_redirects: true,
            host_header: "client".into(),
            tls_ca: None,
            tls_server_name: None,
            tls_verify: true,
            tls_client_cert: None,
            tls_client_key: None,
            send_proxy_protocol: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request line (default 8 KiB) -> 414.
    pub max_request_line_bytes: i64,
    /// Largest request head (default 64 KiB) -> 431.
    pub max_header_bytes: i64,
    /// Most header fields in a request (default 100) -> 431.
    pub max_headers: i64,
    /// Largest request body, 0 = unlimited (default 0) -> 413.
    pub max_body_bytes: i64,
    /// Client connections per worker; beyond it new ones get a 503 and are closed (default 16384).
    pub max_connections: i64,
    /// Keep request header fields whose name contains `_` (default false: dropped, as nginx's
    /// `underscores_in_headers off`).
    pub allow_underscores_in_headers: bool,
    /// Open connections per client address over all workers, 0 = unlimited (nginx's
    /// `limit_conn`); default 0.
    pub max_connections_per_ip: i64,
    /// Requests served on one client connection before it is closed, 0 = unlimited (nginx's
    /// `keepalive_requests`); default 0.
    pub max_requests_per_connection: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 0,
            max_connections: 16384,
            allow_underscores_in_headers: false,
            max_connections_per_ip: 0,
            max_requests_per_connection: 0,
        }
    }
}

/// The admin listener: metrics, status and runtime changes. Never the proxy's port.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub enabled: bool,
    pub host: String,
    pub port: i64,
    /// When set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Start even when `host` is not a loopback address and no `token` is set (default false).
    pub allow_unauthenticated_remote: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            host: "127.0.0.1".into(),
            port: 9901,
            token: None,
            allow_unauthenticated_remote: false,
        }
    }
}

/// `[upstreams.<name>]`: a group of backends with its own balancer, health checks, pool and
/// retries. Every key but `backends` is optional and overrides the global section it comes from.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamGroupConfig {
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Group default of each backend's `health_check_path`.
    pub health_check_path: Option<String>,
    // [load_balancing]
    pub strategy: Option<Strategy>,
    pub hash_key: Option<String>,
    pub hash_balance_factor: Option<f64>,
    // [upstream]
    pub max_idle_per_backend: Option<i64>,
    pub idle_timeout_seconds: Option<f64>,
    pub retries: Option<i64>,
    pub retry_non_idempotent: Option<bool>,
    pub rewrite_redirects: Option<bool>,
    pub host_header: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_server_name: Option<String>,
    pub tls_verify: Option<bool>,
    pub tls_client_cert: Option<String>,
    pub tls_client_key: Option<String>,
    pub send_proxy_protocol: Option<String>,
    /// Overrides of `[health_checks]` keys for this group.
    pub health_checks: Option<HealthCheckOverrides>,
    /// Overrides of `[passive_health]` keys for this group.
    pub passive_health: Option<PassiveHealthOverrides>,
}

/// `[health_checks]` keys a group may override (each unset one keeps the global value).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckOverrides {
    pub enabled: Option<bool>,
    pub interval_seconds: Option<f64>,
    pub timeout_seconds: Option<f64>,
    pub failure_threshold: Option<i64>,
    pub success_threshold: Option<i64>,
    pub expected_status: Option<String>,
}

/// `[passive_health]` keys a group may override.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthOverrides {
    pub enabled: Option<bool>,
    pub max_fails: Option<i64>,
    pub fail_timeout_seconds: Option<f64>,
    pub eject_on_5xx: Option<bool>,
}

/// One `[[routes]]` entry: conditions (hosts, one path condition, methods, headers) and exactly
/// one of `upstream`, `redirect`, `respond`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label in metrics, `/status` and the access log (default: the route's index).
    pub name: Option<String>,
    /// Exact names or `*.suffix`; omitted: any host.
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Field name -> exact value, or `"*"` for present.
    pub headers: Option<BTreeMap<String, String>>,
    pub upstream: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rewrite_prefix: Option<String>,
    #[serde(default)]
    pub set_request_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    #[serde(default)]
    pub set_response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_response_headers: Vec<String>,
    pub connect_timeout_seconds: Option<f64>,
    pub request_timeout_seconds: Option<f64>,
    pub io_timeout_seconds: Option<f64>,
    pub max_body_bytes: Option<i64>,
    pub redirect: Option<RedirectConfig>,
    pub respond: Option<RespondConfig>,
    /// Rate limits this route's requests must pass (names of `[rate_limits.<name>]`).
    pub rate_limits: Option<Vec<String>>,
    /// Client addresses and ranges let in (absent: everyone not denied).
    pub allow: Option<Vec<String>>,
    /// Client addresses and ranges refused with 403; deny wins over allow.
    pub deny: Option<Vec<String>>,
    /// Users and password hashes the route's requests must authenticate as.
    pub basic_auth: Option<BasicAuthConfig>,
    /// Pass the client's `Authorization` on upstream (default false: removed once checked).
    pub forward_authorization: Option<bool>,
}

/// `basic_auth = { users_file = "/etc/ringproxy/users", realm = "admin" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// An htpasswd file (`user:hash` lines) of bcrypt or argon2 hashes; relative to the config
    /// file's directory.
    pub users_file: String,
    /// Shown by browsers in the login prompt (default `"ringproxy"`).
    pub realm: Option<String>,
}

/// What a rate limit does with a request beyond its burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitMode {
    /// 429 at once.
    #[default]
    Reject,
    /// Wait until the rate admits it, up to `max_delay_ms`, else 429 (nginx's `limit_req` with
    /// `burst` and `delay`).
    Delay,
}

/// What a fleet-wide limit does while its store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorPolicy {
    /// Keep enforcing this instance's share of the limit.
    #[default]
    Local,
    /// Let every request through.
    Allow,
}

/// `[rate_limits.<name>]`: a GCRA (token bucket) limit by a key.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `client_ip` (default), `header:NAME`, `host`, `route` or `client_ip+route`.
    pub key: Option<String>,
    pub requests_per_second: Option<f64>,
    pub requests_per_minute: Option<f64>,
    /// Requests allowed at once after idle (default 1).
    pub burst: Option<i64>,
    #[serde(default)]
    pub mode: RateLimitMode,
    /// Longest wait in `mode = "delay"` (default 500).
    pub max_delay_ms: Option<i64>,
    /// Keys tracked at most (default 100,000); the stalest are forgotten first.
    pub max_keys: Option<i64>,
    /// `redis://host:port[/db]`: enforce the limit over every instance sharing the store.
    pub store: Option<String>,
    /// How often the counts are exchanged with the store (default 100).
    pub sync_interval_ms: Option<i64>,
    pub on_store_error: Option<StoreErrorPolicy>,
}

/// `redirect = { to = "https://example.com/new/", status = 308, keep_path = true }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    pub to: String,
    /// 301, 302 (default, as Caddy: a mistake is not cached by browsers), 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: i64,
    /// Append what follows the matched prefix to `to`.
    #[serde(default)]
    pub keep_path: bool,
}

fn default_redirect_status() -> i64 {
    302
}

/// `respond = { status = 200, body = "...", content_type = "text/plain" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "default_respond_status")]
    pub status: i64,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_respond_status() -> i64 {
    200
}

fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}
