//! Everything about backends: their shared state (`backend.rs`), how one is chosen
//! (`balance.rs`), the per-worker keep-alive connection pool (`pool.rs`), active health checks
//! (`health.rs`) and passive ejection on real traffic (`passive.rs`).

pub mod backend;
pub mod balance;
pub mod health;
pub mod passive;
pub mod pool;

pub use backend::{Backend, BackendSet};
pub use balance::Balancer;
pub use pool::{connect, ConnectError, UpstreamConn, UpstreamPool};
