//! The typed settings the config's sections become, shared by the checks of the global sections
//! (`validate`) and of the upstream groups and routes (`routing`).

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ResolvedBackend {
    /// As written in the config, used in logs and (later) the admin API.
    pub url: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Probed with `GET` by active checks; none: a TCP connect check.
    pub health_check_path: Option<String>,
    /// An `https://` backend's TLS client settings.
    pub tls: Option<super::tls::UpstreamTls>,
}

/// Passive health: how real traffic ejects a backend (`[passive_health]`).
#[derive(Debug, Clone, Copy)]
pub struct PassiveSettings {
    pub enabled: bool,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub eject_on_5xx: bool,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
    pub client_header: Duration,
    pub idle: Duration,
    pub io: Duration,
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_idle_per_backend: usize,
    pub idle_timeout: Duration,
    /// Further backends tried after a retryable failure.
    pub retries: usize,
    /// Retry requests that are not idempotent even when they may have reached the upstream.
    pub retry_non_idempotent: bool,
    /// Rewrite a backend's own absolute redirects to the client's address.
    pub rewrite_redirects: bool,
    /// Start each new connection with a PROXY protocol header of this version.
    pub send_proxy_protocol: Option<ProxyHeader>,
}

/// A PROXY protocol header version (`send_proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    V1,
    V2,
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub enabled: bool,
    pub interval: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// Inclusive status ranges that count as healthy.
    pub expected_status: Vec<(u16, u16)>,
    /// The PROXY header a probe starts with (`LOCAL`), for backends that expect one on every
    /// connection: the group's `send_proxy_protocol`.
    pub proxy_header: Option<ProxyHeader>,
}

impl HealthSettings {
    pub fn expects(&self, status: u16) -> bool {
        self.expected_status
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}
