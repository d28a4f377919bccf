//! The proxy's config as the tests build it: one struct per section, every key optional,
//! serialized to TOML with the `toml` crate, so a test names only the keys it is about and
//! sections compose. `TestConfig::new` applies what the harness wants unless a test says else.

use super::free_port;
use super::proxy::TempConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A whole config file; a section nobody set writes nothing.
///
/// Adding a section is adding a field here, in the file's order:
/// - a table (`[tls]`): a struct of `Option` keys (each `skip_serializing_if =
///   "Option::is_none"`) deriving `Serialize, Clone, Debug, Default, PartialEq`, on a field
///   marked `skip_serializing_if = "is_unset"`, as `timeouts`;
/// - a repeated table (`[[routes]]`): a `Vec` of such structs, `skip_serializing_if =
///   "Vec::is_empty"`, as `backends`; a repeated table inside a section
///   (`[[tls.certificates]]`) the same, as a field of the section's struct;
/// - named tables (`[upstreams.<name>]`, `[rate_limits.<name>]`): a `BTreeMap<String, _>` of
///   such structs, `skip_serializing_if = "BTreeMap::is_empty"`;
/// - inside an entry, an inline table (`redirect = { to = "/new", status = 308 }`) or a
///   sub-table (`[tls.client_auth]`) is an `Option` of a struct, a map
///   (`set_request_headers = { "X-Env" = "prod" }`) an `Option<BTreeMap<String, String>>`;
///   `toml` writes them as sub-tables (`[routes.redirect]`), which TOML reads the same.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct TestConfig {
    pub server: ServerSection,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendEntry>,
    #[serde(skip_serializing_if = "is_unset")]
    pub load_balancing: LoadBalancingSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub health_checks: HealthChecksSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub passive_health: PassiveHealthSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub logging: LoggingSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub timeouts: TimeoutsSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub upstream: UpstreamSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub limits: LimitsSection,
    #[serde(skip_serializing_if = "is_unset")]
    pub admin: AdminSection,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, UpstreamGroupSection>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteEntry>,
    /// `[tls]`; present or not, as the TLS listener is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, RateLimitSection>,
}

/// True for a section with no key set, which is left out of the file.
fn is_unset<T: Default + PartialEq>(section: &T) -> bool {
    *section == T::default()
}

/// `[server]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ServerSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A count; `None` leaves the proxy's default, `"auto"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin_cores: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<String>>,
}

/// One `[[backends]]` entry.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct BackendEntry {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
}

impl BackendEntry {
    /// `http://127.0.0.1:<port>` with this weight, for each `(port, weight)`.
    pub fn list(backends: &[(u16, u32)]) -> Vec<BackendEntry> {
        backends
            .iter()
            .map(|&(port, weight)| BackendEntry {
                url: format!("http://127.0.0.1:{port}"),
                weight: Some(weight),
                health_check_path: None,
                tls_server_name: None,
            })
            .collect()
    }
}

/// `[load_balancing] strategy`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    Weighted,
    LeastConn,
    Random2,
    Hash,
}

/// `[load_balancing]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct LoadBalancingSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_balance_factor: Option<f64>,
}

/// `[health_checks]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct HealthChecksSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<String>,
}

/// `[passive_health]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct PassiveHealthSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fails: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eject_on_5xx: Option<bool>,
}

/// `[logging] format`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

/// `[logging]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct LoggingSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
}

/// `[timeouts]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct TimeoutsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_header_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_timeout_seconds: Option<f64>,
}

/// `[upstream]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct UpstreamSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_per_backend: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_redirects: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_proxy_protocol: Option<String>,
}

/// One `[upstreams.<name>]` group: its backends and the keys it overrides.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct UpstreamGroupSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_balance_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_idle_per_backend: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_redirects: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_proxy_protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<HealthChecksSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive_health: Option<PassiveHealthSection>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendEntry>,
}

/// One `[[routes]]` entry.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct RouteEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_request_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_response_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_authorization: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_request_headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_response_headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthEntry>,
}

/// `basic_auth = { users_file, realm }`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct BasicAuthEntry {
    pub users_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// One `[rate_limits.<name>]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct RateLimitSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<String>,
}

impl RateLimitSection {
    /// `requests_per_second` with `burst`, by `key`.
    pub fn per_second(key: &str, rate: f64, burst: u64) -> RateLimitSection {
        RateLimitSection {
            key: Some(key.into()),
            requests_per_second: Some(rate),
            burst: Some(burst),
            ..RateLimitSection::default()
        }
    }
}

/// `redirect = { to, status, keep_path }`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct RedirectEntry {
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_path: Option<bool>,
}

/// `respond = { status, body, content_type }`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct RespondEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl RouteEntry {
    /// A route to the upstream group `group` (conditions and the rest set with `with`).
    pub fn to(group: &str) -> RouteEntry {
        RouteEntry {
            upstream: Some(group.into()),
            ..RouteEntry::default()
        }
    }

    /// `change` applied: `RouteEntry::to("api").with(|r| r.path_prefix = Some("/v1/".into()))`.
    pub fn with(mut self, change: impl FnOnce(&mut RouteEntry)) -> RouteEntry {
        change(&mut self);
        self
    }
}

/// `[limits]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct LimitsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_line_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_underscores_in_headers: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u64>,
}

/// `[admin]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct AdminSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated_remote: Option<bool>,
}

/// `[tls]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct TlsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_tickets: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict_sni: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts_max_age_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_exchange_groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuthSection>,
}

/// One `[[tls.certificates]]` entry: file paths.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct CertificateEntry {
    pub cert: String,
    pub key: String,
}

/// `[tls.client_auth]`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ClientAuthSection {
    pub ca: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

impl TestConfig {
    /// The TLS listener on a port of its own with `certificates`, unless already set.
    pub fn tls(mut self, certificates: Vec<CertificateEntry>) -> Self {
        let tls = self.tls.get_or_insert_with(TlsSection::default);
        tls.port.get_or_insert_with(free_port);
        tls.certificates = certificates;
        self
    }

    /// The TLS listener's port.
    pub fn tls_port(&self) -> u16 {
        self.tls
            .as_ref()
            .and_then(|t| t.port)
            .expect("a TestConfig with [tls] and a port")
    }

    /// The harness's config in front of `backends` (weight 1 each): a fresh port on 127.0.0.1,
    /// one unpinned worker, text logs with the access log, active health checks off (so
    /// backends see only the tests' requests) and the admin listener off (its default port is
    /// fixed, and tests run side by side).
    pub fn new(backends: &[u16]) -> TestConfig {
        let weighted: Vec<(u16, u32)> = backends.iter().map(|&port| (port, 1)).collect();
        TestConfig::weighted(&weighted)
    }

    /// As `new`, with a `(port, weight)` per backend.
    pub fn weighted(backends: &[(u16, u32)]) -> TestConfig {
        let mut config = TestConfig {
            backends: BackendEntry::list(backends),
            ..TestConfig::default()
        };
        config.server = ServerSection {
            host: Some("127.0.0.1".into()),
            port: Some(free_port()),
            workers: Some(1),
            pin_cores: Some(false),
            ..ServerSection::default()
        };
        config.logging.format = Some(LogFormat::Text);
        config.logging.access_log = Some(true);
        config.health_checks.enabled = Some(false);
        config.admin.enabled = Some(false);
        config
    }

    /// The upstream group `name` in front of `(port, weight)` backends, as `[upstreams.<name>]`.
    pub fn group(mut self, name: &str, backends: &[(u16, u32)]) -> Self {
        self.upstreams.insert(
            name.into(),
            UpstreamGroupSection {
                backends: BackendEntry::list(backends),
                ..UpstreamGroupSection::default()
            },
        );
        self
    }

    /// With the rate limit `name` defined.
    pub fn rate_limit(mut self, name: &str, limit: RateLimitSection) -> Self {
        self.rate_limits.insert(name.into(), limit);
        self
    }

    /// With `route` appended to `[[routes]]`.
    pub fn route(mut self, route: RouteEntry) -> Self {
        self.routes.push(route);
        self
    }

    /// `change` applied: `config.with(|c| c.timeouts.io_timeout_seconds = Some(0.5))`.
    pub fn with(mut self, change: impl FnOnce(&mut TestConfig)) -> TestConfig {
        change(&mut self);
        self
    }

    /// A copy in front of other `(port, weight)` backends, for the next file of a reload test.
    pub fn in_front_of(&self, backends: &[(u16, u32)]) -> TestConfig {
        let mut config = TestConfig {
            backends: BackendEntry::list(backends),
            ..self.clone()
        };
        config.check_health_urls();
        config
    }

    /// Active HTTP health checks of `/health` (the test backends' health URL) every `interval`
    /// seconds with a `timeout`, down after `fall` failures, up after `rise` successes.
    pub fn health_checks(mut self, interval: f64, timeout: f64, fall: u32, rise: u32) -> Self {
        self.health_checks = HealthChecksSection {
            enabled: Some(true),
            interval_seconds: Some(interval),
            timeout_seconds: Some(timeout),
            failure_threshold: Some(fall),
            success_threshold: Some(rise),
            expected_status: None,
        };
        self.check_health_urls();
        self
    }

    /// With health checks on, backends without a path of their own are checked at `/health`.
    fn check_health_urls(&mut self) {
        if self.health_checks.enabled != Some(true) {
            return;
        }
        let groups = self.upstreams.values_mut().flat_map(|g| &mut g.backends);
        for b in self.backends.iter_mut().chain(groups) {
            b.health_check_path.get_or_insert_with(|| "/health".into());
        }
    }

    /// Active checks every 0.2 s, one probe to go down or up: for tests of up and down.
    pub fn fast_health_checks(self) -> Self {
        self.health_checks(0.2, 1.0, 1, 1)
    }

    /// The admin API on, on 127.0.0.1 and a port of its own unless already set.
    pub fn admin_api(mut self) -> Self {
        self.admin.enabled = Some(true);
        self.admin.host.get_or_insert_with(|| "127.0.0.1".into());
        self.admin.port.get_or_insert_with(free_port);
        self
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.server.port.expect("a TestConfig has a port")
    }

    /// The proxy's listening address (`[server] host`, 127.0.0.1 unless set).
    pub fn ip(&self) -> IpAddr {
        let host = self.server.host.as_deref().unwrap_or("127.0.0.1");
        host.parse()
            .unwrap_or_else(|e| panic!("[server] host {host:?}: {e}"))
    }

    /// The config file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TestConfig serializes to TOML")
    }

    /// The config written to a file of its own.
    pub fn write(&self) -> TempConfig {
        TempConfig::new(&self.to_toml())
    }
}
