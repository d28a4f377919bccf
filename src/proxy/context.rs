//! What one worker owns for proxying: its config snapshot, the shared backend states, and its
//! own balancer cursor and connection pool (plain `RefCell`s: one thread, never borrowed across
//! an await).

use crate::config::ValidConfig;
use crate::upstream::{BackendSet, Balancer, UpstreamPool};
use std::cell::RefCell;
use std::sync::Arc;

pub struct WorkerCtx {
    pub worker_id: usize,
    pub config: Arc<ValidConfig>,
    pub backends: BackendSet,
    pub balancer: RefCell<Balancer>,
    pub pool: RefCell<UpstreamPool>,
}

impl WorkerCtx {
    pub fn new(worker_id: usize, config: Arc<ValidConfig>, backends: BackendSet) -> Self {
        WorkerCtx {
            worker_id,
            balancer: RefCell::new(Balancer::new(config.strategy, backends.len())),
            pool: RefCell::new(UpstreamPool::new(config.pool.clone(), backends.len())),
            config,
            backends,
        }
    }
}
