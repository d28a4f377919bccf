//! Everything about backends: their shared state (`backend.rs`), the groups they form and how
//! one is chosen (`balance/`, one algorithm a file; `group.rs` with health and the passive
//! circuit, and the feedback of each request), the per-worker keep-alive connection pool (`pool.rs`), active health checks
//! (`health.rs`) and passive ejection on real traffic (`passive.rs`). Nothing here knows the
//! proxy's request handling; it knows the config only as data.

pub mod backend;
pub mod balance;
pub mod group;
pub mod health;
pub mod passive;
pub mod pool;

pub use backend::{Backend, InFlight};
pub use balance::{hash_key, Balancer};
pub use group::{UpstreamGroup, Upstreams};
pub use pool::{connect, ConnectError, UpstreamConn, UpstreamPool};

use crate::config::ProxyHeader;
use crate::net::proxy_protocol;

/// The PROXY protocol version a group's `send_proxy_protocol` names.
pub fn proxy_version(header: ProxyHeader) -> proxy_protocol::Version {
    match header {
        ProxyHeader::V1 => proxy_protocol::Version::V1,
        ProxyHeader::V2 => proxy_protocol::Version::V2,
    }
}
