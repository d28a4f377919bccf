//! How validation reports problems (all of them, each at its key) and the checks more than one
//! part of the config makes: ranges, durations, status lists, backends.

use super::schema::BackendConfig;
use super::settings::ResolvedBackend;
use super::tls::{self, UpstreamTls};
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

pub use super::problem::Problem;

#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            related: None,
        });
    }

    /// A problem at `key` that involves `related` too (named with its place in the file).
    pub(super) fn fail_related(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        related: impl Into<String>,
    ) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            related: Some(related.into()),
        });
    }

    pub(super) fn seconds(&mut self, key: &str, value: f64) -> Duration {
        if value.is_finite() && value > 0.0 && value <= 1e9 {
            Duration::from_secs_f64(value)
        } else {
            self.fail(
                key,
                format!("must be a positive number of seconds, got {value}"),
            );
            Duration::from_secs(1)
        }
    }

    pub(super) fn range(&mut self, key: &str, value: i64, min: i64, max: i64) -> i64 {
        if value < min || value > max {
            self.fail(key, format!("must be between {min} and {max}, got {value}"));
            min
        } else {
            value
        }
    }
}

/// `"200-399"`, `"200,204,301-302"` -> inclusive ranges; `None` if malformed or out of 100-599.
pub(super) fn parse_status_ranges(spec: &str) -> Option<Vec<(u16, u16)>> {
    spec.split(',')
        .map(|part| {
            let part = part.trim();
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
            ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi))
        })
        .collect()
}

/// A backend at `at` (`backends[0]`, `upstreams.api.backends[1]`), its address resolved;
/// without a `health_check_path` of its own it takes its group's `group_path`.
/// The TLS client settings a group's `https://` backends get (from `[upstream]` or the group).
pub(super) struct UpstreamTlsChoice<'a> {
    /// `None` when they could not be built (the problems say why) or none is needed.
    pub(super) config: Option<Arc<rustls::ClientConfig>>,
    pub(super) server_name: Option<&'a str>,
    /// Where `server_name` was set, for its errors.
    pub(super) at: &'a str,
}

pub(super) fn resolve_backend(
    ck: &mut Checker,
    at: &str,
    b: &BackendConfig,
    group_path: Option<&str>,
    upstream_tls: &UpstreamTlsChoice<'_>,
) -> Option<ResolvedBackend> {
    let key = |field: &str| format!("{at}.{field}");
    let weight = ck.range(&key("weight"), b.weight, 1, 1_000_000) as u32;
    if b.health_check_path
        .as_ref()
        .is_some_and(|p| !p.starts_with('/'))
    {
        ck.fail(key("health_check_path"), "must start with '/'");
    }
    let url = match url::Url::parse(&b.url) {
        Ok(u) => u,
        Err(e) => {
            ck.fail(key("url"), format!("invalid URL {:?}: {e}", b.url));
            return None;
        }
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        ck.fail(
            key("url"),
            format!(
                "only http:// and https:// backends are supported, got {:?}",
                b.url
            ),
        );
        return None;
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        ck.fail(
            key("url"),
            "must not have a path or query: requests keep their own path",
        );
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    // url keeps IPv6 literals in brackets, which `ToSocketAddrs` does not accept.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tls = if url.scheme() == "https" {
        let config = upstream_tls.config.clone()?;
        let name = b
            .tls_server_name
            .as_deref()
            .or(upstream_tls.server_name)
            .unwrap_or(host);
        match tls::server_name(name) {
            Ok(server_name) => Some(UpstreamTls {
                config,
                server_name,
            }),
            Err(e) => {
                let field = if b.tls_server_name.is_some() {
                    key("tls_server_name")
                } else {
                    format!("{}.tls_server_name", upstream_tls.at)
                };
                ck.fail(field, e);
                return None;
            }
        }
    } else {
        None
    };
    match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(ResolvedBackend {
            url: b.url.clone(),
            addr,
            weight,
            health_check_path: b
                .health_check_path
                .clone()
                .or_else(|| group_path.map(str::to_string)),
            tls,
        }),
        _ => {
            ck.fail(key("url"), format!("cannot resolve host {host:?}"));
            None
        }
    }
}
