//! Semantic checks on a parsed config and conversion into the typed settings the proxy runs on
//! (durations, sizes, resolved backend addresses). All problems are reported, not just the first.

use super::admission::{self, IpRanges, RateLimitRule};
use super::check::{parse_status_ranges, Checker, Problem};
use super::routing::{self, GroupConfig, RouteAction, RouteDefaults, RouteRule};
use super::schema::*;
use super::settings::{HealthSettings, PassiveSettings, PoolSettings, Timeouts};
use super::tls::{TlsCheck, TlsSettings};
use crate::http::HeadLimits;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Limits {
    /// What a request head may be; the framing layer's own limits.
    pub head: HeadLimits,
    pub max_connections: usize,
    /// Forward request header fields whose name contains `_`.
    pub allow_underscores: bool,
    /// `[limits] max_body_bytes` (`None` = unlimited), which routes may override; the parser's
    /// own bound (`head.max_body_bytes`) is the loosest of them, each route checks its own.
    pub max_body_bytes: Option<u64>,
    /// Open connections per client address over all workers (`None` = unlimited).
    pub max_connections_per_ip: Option<u32>,
    /// Requests served on one connection before it closes (`None` = unlimited).
    pub max_requests_per_connection: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub allow_unauthenticated_remote: bool,
}

impl AdminSettings {
    /// Serving on an address other hosts can reach, with nothing but the network to guard it.
    pub fn exposed_without_token(&self) -> bool {
        self.enabled && !self.listen.ip().to_canonical().is_loopback() && self.token.is_none()
    }

    /// Why this admin setup must not run, if it must not: an unauthenticated listener beyond
    /// loopback lets any host, and any web page a browser on the network opens, change backends.
    pub fn exposure_problem(&self) -> Option<String> {
        (self.exposed_without_token() && !self.allow_unauthenticated_remote).then(|| {
            format!(
                "the admin API on {} would be reachable from other hosts without a token \
                 (and from any web page a browser there opens): set admin.token, listen on \
                 127.0.0.1, or set admin.allow_unauthenticated_remote = true",
                self.listen
            )
        })
    }
}

/// Bounds of `logging.buffer_bytes`: room for a few long lines at least, and a sane ceiling.
pub const LOG_BUFFER_BYTES_RANGE: (i64, i64) = (64 << 10, 1 << 30);

/// A config that passed validation, in the types the proxy uses.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    pub listen: SocketAddr,
    /// `None` = one per allowed CPU.
    pub workers: Option<usize>,
    pub pin_cores: bool,
    pub shutdown_timeout: Duration,
    /// Upstream groups: `default` (`[[backends]]`) first if there is one, then
    /// `[upstreams.<name>]` by name. Each has its settings resolved.
    pub groups: Vec<GroupConfig>,
    /// Index of the group `default` in `groups`, where requests no route matched go.
    pub default_group: Option<usize>,
    /// `[[routes]]` in file order.
    pub routes: Vec<RouteRule>,
    /// Merge repeated slashes of the path matched and forwarded.
    pub merge_slashes: bool,
    /// Proxies whose word on the client's address is taken (PROXY protocol, X-Forwarded-For).
    pub trusted_proxies: IpRanges,
    /// Connections start with a PROXY protocol header (from `trusted_proxies` only).
    pub proxy_protocol: bool,
    /// `[rate_limits.<name>]` in name order; routes and `server_rate_limits` refer to them by
    /// index.
    pub rate_limits: Vec<RateLimitRule>,
    /// `[server] rate_limits`: every request must pass them.
    pub server_rate_limits: Vec<usize>,
    /// The global `[health_checks]`, `[passive_health]` and `[upstream]` settings (the group
    /// `default`'s, and what other groups do not override).
    pub health: HealthSettings,
    pub logging: LoggingConfig,
    pub timeouts: Timeouts,
    pub pool: PoolSettings,
    pub passive: PassiveSettings,
    pub limits: Limits,
    pub admin: AdminSettings,
    /// The HTTPS listener (`[tls]`), if any.
    pub tls: Option<TlsSettings>,
    /// What is allowed but worth saying (a certificate about to expire, unverified backends).
    pub warnings: Vec<super::ConfigError>,
}

/// Hard ceiling on `max_headers`: the parser's header table is sized from it.
pub const MAX_HEADERS_CEILING: i64 = 1024;

/// Validates `c`; files it names are found relative to `base`. Returns the config and its
/// warnings, or every problem found.
pub fn validate(c: Config, base: &Path) -> Result<(ValidConfig, Vec<Problem>), Vec<Problem>> {
    let mut ck = Checker::default();
    let mut warnings = Vec::new();

    let port = ck.range("server.port", c.server.port, 1, 65535) as u16;
    let listen = match c.server.host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => {
            ck.fail(
                "server.host",
                format!("not an IP address: {:?}", c.server.host),
            );
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let workers = match c.server.workers {
        Workers::Auto => None,
        Workers::Count(n) => Some(ck.range("server.workers", n, 1, 1024) as usize),
    };

    let shutdown_timeout = ck.seconds(
        "server.shutdown_timeout_seconds",
        c.server.shutdown_timeout_seconds,
    );
    let a = &c.admin;
    let admin_port = ck.range("admin.port", a.port, 1, 65535) as u16;
    let admin = AdminSettings {
        enabled: a.enabled,
        listen: match a.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, admin_port),
            Err(_) => {
                ck.fail("admin.host", format!("not an IP address: {:?}", a.host));
                SocketAddr::from(([127, 0, 0, 1], admin_port))
            }
        },
        token: a.token.clone().filter(|t| !t.is_empty()),
        allow_unauthenticated_remote: a.allow_unauthenticated_remote,
    };
    if let Some(problem) = admin.exposure_problem() {
        ck.fail("admin.host", problem);
    }
    if admin.enabled && admin_port == port {
        ck.fail(
            "admin.port",
            "must differ from server.port: the admin API never shares the proxy's port",
        );
    }
    if a.token
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()))
    {
        ck.fail(
            "admin.token",
            "must be non-empty printable ASCII without spaces",
        );
    }

    let tls = c.tls.as_ref().and_then(|t| {
        let host = t.host.as_deref().unwrap_or(&c.server.host);
        let tls_port = ck.range("tls.port", t.port, 1, 65535) as u16;
        let ip = host.parse::<IpAddr>().unwrap_or_else(|_| {
            ck.fail("tls.host", format!("not an IP address: {host:?}"));
            IpAddr::from([127, 0, 0, 1])
        });
        if tls_port == port && ip == listen.ip() {
            ck.fail(
                "tls.port",
                "must differ from server.port (the plain listener)",
            );
        }
        if admin.enabled && tls_port == admin_port {
            ck.fail("tls.port", "must differ from admin.port");
        }
        let timeout = ck.seconds("tls.handshake_timeout_seconds", t.handshake_timeout_seconds);
        let mut check = TlsCheck {
            base,
            problems: &mut ck.problems,
            warnings: &mut warnings,
        };
        check.listener(t, SocketAddr::new(ip, tls_port), timeout)
    });

    let h = &c.health_checks;
    let health = HealthSettings {
        enabled: h.enabled,
        interval: ck.seconds("health_checks.interval_seconds", h.interval_seconds),
        timeout: ck.seconds("health_checks.timeout_seconds", h.timeout_seconds),
        failure_threshold: ck.range(
            "health_checks.failure_threshold",
            h.failure_threshold,
            1,
            1000,
        ) as u32,
        success_threshold: ck.range(
            "health_checks.success_threshold",
            h.success_threshold,
            1,
            1000,
        ) as u32,
        expected_status: parse_status_ranges(&h.expected_status).unwrap_or_else(|| {
            ck.fail(
                "health_checks.expected_status",
                format!(
                    "expected status codes like \"200-399\" or \"200,204\", got {:?}",
                    h.expected_status
                ),
            );
            vec![]
        }),
        proxy_header: None,
    };
    let p = &c.passive_health;
    let passive = PassiveSettings {
        enabled: p.enabled,
        max_fails: ck.range("passive_health.max_fails", p.max_fails, 1, 1_000_000) as u32,
        fail_timeout: ck.seconds(
            "passive_health.fail_timeout_seconds",
            p.fail_timeout_seconds,
        ),
        eject_on_5xx: p.eject_on_5xx,
    };

    if c.logging.level.trim().is_empty() {
        ck.fail("logging.level", "must not be empty (e.g. \"info\")");
    } else if tracing_subscriber::EnvFilter::try_new(&c.logging.level).is_err() {
        ck.fail(
            "logging.level",
            format!("not a valid level or filter: {:?}", c.logging.level),
        );
    }
    let (min, max) = LOG_BUFFER_BYTES_RANGE;
    ck.range("logging.buffer_bytes", c.logging.buffer_bytes, min, max);

    let t = &c.timeouts;
    let timeouts = Timeouts {
        connect: ck.seconds(
            "timeouts.connect_timeout_seconds",
            t.connect_timeout_seconds,
        ),
        request: ck.seconds(
            "timeouts.request_timeout_seconds",
            t.request_timeout_seconds,
        ),
        client_header: ck.seconds(
            "timeouts.client_header_timeout_seconds",
            t.client_header_timeout_seconds,
        ),
        idle: ck.seconds("timeouts.idle_timeout_seconds", t.idle_timeout_seconds),
        io: ck.seconds("timeouts.io_timeout_seconds", t.io_timeout_seconds),
    };

    let u = &c.upstream;
    let pool = PoolSettings {
        max_idle_per_backend: ck.range(
            "upstream.max_idle_per_backend",
            u.max_idle_per_backend,
            0,
            100_000,
        ) as usize,
        idle_timeout: ck.seconds("upstream.idle_timeout_seconds", u.idle_timeout_seconds),
        retries: match u.retries {
            Some(n) => ck.range("upstream.retries", n, 0, 100) as usize,
            None => c.backends.len().saturating_sub(1).min(2),
        },
        retry_non_idempotent: u.retry_non_idempotent,
        rewrite_redirects: u.rewrite_redirects,
        send_proxy_protocol: None,
    };

    let global = routing::global_settings(&mut ck, &c, health.clone(), passive, pool.clone());
    let tls_files = routing::TlsFiles {
        base,
        warnings: &mut warnings,
    };
    let (groups, default_group) = routing::groups(&mut ck, &c, &global, tls_files);

    let l = &c.limits;
    let max_body_bytes = match ck.range("limits.max_body_bytes", l.max_body_bytes, 0, i64::MAX) {
        0 => None,
        n => Some(n as u64),
    };
    let trusted_proxies =
        admission::ip_ranges(&mut ck, "server.trusted_proxies", &c.server.trusted_proxies);
    if c.server.proxy_protocol && trusted_proxies.is_empty() {
        ck.fail(
            "server.proxy_protocol",
            "PROXY protocol headers are taken from server.trusted_proxies only, and there are none",
        );
    }
    let rate_limits = admission::rate_limits(&mut ck, &c);
    let mut used = vec![false; rate_limits.len()];
    let server_rate_limits = admission::limit_refs(
        &mut ck,
        "server.rate_limits",
        &c.server.rate_limits,
        &rate_limits,
        &mut used,
    );
    let defaults = RouteDefaults {
        groups: &groups,
        timeouts: &timeouts,
        max_body_bytes,
        rate_limits: &rate_limits,
        base_dir: base,
    };
    let routes = routing::routes(&mut ck, &c, &defaults, &mut used);
    admission::unused_limits(&mut ck, &rate_limits, &used);
    // The parser refuses a Content-Length over the loosest limit any route has (413 before
    // routing); the route then holds the request to its own.
    let parser_max_body = routes
        .iter()
        .filter_map(|r| match &r.action {
            RouteAction::Forward(f) => Some(f.max_body_bytes),
            _ => None,
        })
        .chain([max_body_bytes])
        .try_fold(0, |loosest, max| max.map(|m| loosest.max(m)));
    let limits = Limits {
        head: HeadLimits {
            max_request_line_bytes: ck.range(
                "limits.max_request_line_bytes",
                l.max_request_line_bytes,
                64,
                1 << 20,
            ) as usize,
            max_header_bytes: ck.range("limits.max_header_bytes", l.max_header_bytes, 256, 16 << 20)
                as usize,
            max_headers: ck.range("limits.max_headers", l.max_headers, 1, MAX_HEADERS_CEILING)
                as usize,
            max_body_bytes: parser_max_body,
        },
        max_body_bytes,
        allow_underscores: l.allow_underscores_in_headers,
        max_connections: ck.range("limits.max_connections", l.max_connections, 1, 1 << 24) as usize,
        max_connections_per_ip: match ck.range(
            "limits.max_connections_per_ip",
            l.max_connections_per_ip,
            0,
            1 << 24,
        ) {
            0 => None,
            n => Some(n as u32),
        },
        max_requests_per_connection: match ck.range(
            "limits.max_requests_per_connection",
            l.max_requests_per_connection,
            0,
            i64::MAX,
        ) {
            0 => None,
            n => Some(n as u64),
        },
    };

    if !ck.problems.is_empty() {
        return Err(ck.problems);
    }
    let config = ValidConfig {
        listen,
        workers,
        pin_cores: c.server.pin_cores,
        shutdown_timeout,
        groups,
        default_group,
        routes,
        merge_slashes: c.server.merge_slashes,
        trusted_proxies,
        proxy_protocol: c.server.proxy_protocol,
        rate_limits,
        server_rate_limits,
        health,
        logging: c.logging,
        timeouts,
        pool,
        passive,
        limits,
        admin,
        tls,
        warnings: Vec::new(),
    };
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn problems(toml: &str) -> Vec<String> {
        match crate::config::parse(Path::new("t.toml"), toml) {
            Ok(_) => vec![],
            Err(errs) => errs.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = crate::config::parse(
            Path::new("t.toml"),
            "[[backends]]\nurl = \"http://127.0.0.1:9001\"\n",
        )
        .expect("valid");
        assert_eq!(c.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.workers, None);
        assert!(c.pin_cores);
        let default = &c.groups[c.default_group.expect("the group default")];
        assert_eq!(default.name, "default");
        assert_eq!(default.backends[0].weight, 1);
        assert_eq!(
            default.backends[0].health_check_path, None,
            "a TCP check by default"
        );
        assert_eq!(c.timeouts.connect, Duration::from_secs(10));
        assert_eq!(c.timeouts.request, Duration::from_secs(30));
        assert_eq!(c.limits.head.max_headers, 100);
        assert_eq!(c.limits.head.max_body_bytes, None);
        assert_eq!(default.settings.strategy, Strategy::RoundRobin);
        assert!(c.routes.is_empty() && c.merge_slashes);
    }

    #[test]
    fn fractional_durations_accepted() {
        let c = crate::config::parse(
            Path::new("t.toml"),
            "[timeouts]\nrequest_timeout_seconds = 0.25\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .expect("valid");
        assert_eq!(c.timeouts.request, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let errs = problems(
            "[server]\nport = 70000\n\n[[backends]]\nurl = \"http://127.0.0.1:1\"\nweight = 0\n",
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("t.toml:2:1: server.port: must be between 1 and 65535"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("t.toml:6:1: backends[0].weight: must be between 1"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_key_and_wrong_type_are_errors_with_lines() {
        let errs = problems("[server]\nprot = 1\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n");
        assert!(
            errs[0].contains("t.toml:2:") && errs[0].contains("unknown field `prot`"),
            "{errs:?}"
        );
        let errs =
            problems("[server]\npin_cores = \"yes\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n");
        assert!(
            errs[0].contains("t.toml:2:") && errs[0].contains("server.pin_cores"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_backends_refused() {
        assert!(problems("")[0].contains("backends: at least one"));
        assert!(problems("[[backends]]\nurl = \"ftp://x\"\n")[0].contains("backends[0].url"));
        assert!(problems("[[backends]]\nurl = \"https://127.0.0.1:1\"\n").is_empty());
        assert!(problems("[[backends]]\nurl = \"not a url\"\n")[0].contains("backends[0].url"));
        assert!(problems("[[backends]]\nurl = \"http://127.0.0.1:1/api\"\n")[0].contains("path"));
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_ranges("200-399"), Some(vec![(200, 399)]));
        assert_eq!(
            parse_status_ranges("200, 204,301-302"),
            Some(vec![(200, 200), (204, 204), (301, 302)])
        );
        assert_eq!(parse_status_ranges("300-200"), None);
        assert_eq!(parse_status_ranges("abc"), None);
        assert_eq!(parse_status_ranges(""), None);
        assert!(problems("[health_checks]\nexpected_status = \"2xx\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n")[0]
            .contains("t.toml:2:1: health_checks.expected_status"));
    }

    #[test]
    fn retries_default_to_other_backends_at_most_two() {
        let one = "[[backends]]\nurl = \"http://127.0.0.1:1\"\n";
        let parse = |s: &str| {
            crate::config::parse(Path::new("t.toml"), s)
                .unwrap()
                .pool
                .retries
        };
        assert_eq!(parse(one), 0);
        assert_eq!(parse(&one.repeat(2)), 1);
        assert_eq!(parse(&one.repeat(5)), 2);
        assert_eq!(
            parse(&format!("[upstream]\nretries = 4\n{}", one.repeat(2))),
            4
        );
    }

    #[test]
    fn log_buffer_bytes_bounded() {
        let with = |v: &str| {
            format!("[logging]\nbuffer_bytes = {v}\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n")
        };
        for bad in ["0", "-1", "65535", "1073741825"] {
            let errs = problems(&with(bad));
            assert!(
                errs[0].starts_with("t.toml:2:1: logging.buffer_bytes: must be between 65536"),
                "{bad}: {errs:?}"
            );
        }
        assert!(problems(&with("65536")).is_empty());
        let parsed = crate::config::parse(
            Path::new("t.toml"),
            "[[backends]]\nurl = \"http://127.0.0.1:1\"\n",
        );
        assert_eq!(parsed.unwrap().logging.buffer_bytes, 4 << 20);
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token_or_consent() {
        let with =
            |admin: &str| format!("[admin]\n{admin}\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n");
        for host in ["0.0.0.0", "::", "10.0.0.1"] {
            let errs = problems(&with(&format!("port = 9901\nhost = \"{host}\"")));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].starts_with("t.toml:3:1: admin.host: "), "{errs:?}");
            assert!(errs[0].contains("allow_unauthenticated_remote"), "{errs:?}");
        }
        for ok in [
            "host = \"0.0.0.0\"\ntoken = \"t0ken\"",
            "host = \"0.0.0.0\"\nallow_unauthenticated_remote = true",
            "host = \"0.0.0.0\"\nenabled = false",
            "host = \"127.0.0.2\"",
            "host = \"::1\"",
            "host = \"::ffff:127.0.0.1\"",
        ] {
            assert!(problems(&with(ok)).is_empty(), "{ok}");
        }
    }

    #[test]
    fn workers_auto_or_count() {
        assert!(problems(
            "[server]\nworkers = \"many\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n"
        )[0]
        .contains("server.workers"));
        assert!(
            problems("[server]\nworkers = 0\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n")[0]
                .contains("server.workers: must be between 1")
        );
    }
}
