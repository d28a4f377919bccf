//! The end-to-end tests: the real `ringproxy` binary against raw-socket backends on 127.0.0.1,
//! one module per area. One test binary, so the harness in `common` is compiled once and every
//! helper in it is used by some test.

mod common;

mod access_rules;
mod admin_guard;
mod admin_metrics;
mod balancing;
mod balancing_strategies;
mod bodies;
mod client_identity;
mod config_cli;
mod connection_caps;
mod delimitation;
mod duplex;
mod early_answers;
mod errors;
mod fd_budget;
mod fleet_limits;
mod forwarding;
mod hardening;
mod hardening_errors;
mod headers;
mod health;
mod keepalive_pipelining;
mod limits;
mod limits_config_errors;
mod log_buffer;
mod rate_limits;
mod real_servers;
mod reload_shutdown;
mod retries;
mod routing;
mod routing_config_errors;
mod routing_normalize;
mod routing_ops;
mod routing_reload;
mod startup_logs;
mod streaming;
mod tls;
mod tls_config_errors;
mod tls_reload;
mod tls_upstream;
mod trailers;
mod upgrade;
mod upstream_reuse;
