//! Test configs (to be replaced by a typed builder): sections as TOML text, and the proxy
//! started with the admin API on a port of its own.

use super::admin::Admin;
use super::free_port;
use super::proxy::{config_toml, Proxy};

/// A health section with the given interval, timeout and thresholds (all active).
pub fn health_toml(interval: f64, timeout: f64, fall: u32, rise: u32) -> String {
    format!(
        "[health_checks]\nenabled = true\ninterval_seconds = {interval}\ntimeout_seconds = {timeout}\n\
         failure_threshold = {fall}\nsuccess_threshold = {rise}\n\n"
    )
}

/// An `[admin]` section on `port`, with a bearer token if given.
pub fn admin_toml(port: u16, token: Option<&str>) -> String {
    let mut toml = format!("[admin]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n");
    if let Some(token) = token {
        toml.push_str(&format!("token = \"{token}\"\n"));
    }
    toml.push('\n');
    toml
}

/// Adds `lines` (e.g. `shutdown_timeout_seconds = 1`) to the `[server]` section of a config
/// made by `config_toml`, and sets its worker count.
pub fn with_server(toml: &str, workers: usize, lines: &str) -> String {
    let anchor = "workers = 1\npin_cores = false\n";
    assert!(toml.contains(anchor), "unexpected base config:\n{toml}");
    toml.replacen(
        anchor,
        &format!("workers = {workers}\npin_cores = false\n{lines}"),
        1,
    )
}

/// Two different free ports: the proxy's and the admin listener's.
pub fn two_ports() -> (u16, u16) {
    let proxy = free_port();
    loop {
        let admin = free_port();
        if admin != proxy {
            return (proxy, admin);
        }
    }
}

/// What `OpsConfig::start` runs: the backends, the extra TOML, workers and `[server]` lines.
#[derive(Clone, Copy)]
pub struct OpsConfig<'a> {
    pub backends: &'a [(u16, u32)],
    pub extra: &'a str,
    pub workers: usize,
    pub server: &'a str,
    pub token: Option<&'a str>,
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> OpsConfig<'a> {
    pub fn new(backends: &'a [(u16, u32)], extra: &'a str) -> Self {
        OpsConfig {
            backends,
            extra,
            workers: 1,
            server: "",
            token: None,
            env: &[],
        }
    }

    /// The full config file text for the proxy on `port` with admin on `admin_port`.
    pub fn toml(&self, port: u16, admin_port: u16) -> String {
        let extra = format!("{}{}", admin_toml(admin_port, self.token), self.extra);
        with_server(
            &config_toml(port, self.backends, &extra),
            self.workers,
            self.server,
        )
    }

    /// Starts the proxy with the admin API on a port of its own.
    pub fn start(&self) -> (Proxy, Admin) {
        let (port, admin_port) = two_ports();
        let proxy = Proxy::launch(port, &self.toml(port, admin_port), &[], self.env);
        let admin = Admin {
            port: admin_port,
            token: self.token.map(str::to_string),
        };
        (proxy, admin)
    }
}

/// Proxy with weight-1 `backends`, `extra` TOML and the admin API; one worker.
pub fn start_with_admin(backends: &[u16], extra: &str) -> (Proxy, Admin) {
    let weighted: Vec<(u16, u32)> = backends.iter().map(|&p| (p, 1)).collect();
    OpsConfig::new(&weighted, extra).start()
}
