//! Everything about backends: their shared state (`backend.rs`), how one is chosen
//! (`balance.rs`), and the per-worker keep-alive connection pool (`pool.rs`).

pub mod backend;
pub mod balance;
pub mod pool;

pub use backend::{Backend, BackendSet};
pub use balance::Balancer;
pub use pool::{connect, ConnectError, UpstreamConn, UpstreamPool};
