//! ringproxy: a thread-per-core io_uring HTTP/1.1 reverse proxy and load balancer.
//!
//! Follow a request: `main.rs` -> `server::run` (workers, listeners) -> `worker` (one monoio
//! runtime per core, accept loop) -> `proxy::serve_connection` (request phases) ->
//! `upstream` (balancer, pool) and `http` (framing).

pub mod admin;
pub mod config;
pub mod fd_budget;
pub mod http;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state;
pub mod upstream;
pub mod worker;
