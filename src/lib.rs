//! ringproxy: a thread-per-core io_uring HTTP/1.1 reverse proxy and load balancer.
//!
//! Follow a request: `main.rs` -> `server::run` (workers, listeners, health and admin threads,
//! signals) -> `worker` (one monoio runtime per core, accept loop) -> `proxy` (a connection's
//! requests, each through its phases: route, admit, exchange, relay, log) -> `route` (the route
//! table), `upstream` (groups, balancers, pool, health), `http` (framing) and `net` (sockets). Arrows point that
//! way only; `config` is data every layer may read, and `state` what all threads share.
//!
//! Public: what the binary (`main.rs`) and the fuzz targets use.

mod access;
mod admin;
pub mod config;
pub mod http;
mod limits;
pub mod logging;
mod metrics;
mod net;
mod proxy;
mod reload;
mod route;
pub mod server;
mod state;
mod upstream;
mod worker;
