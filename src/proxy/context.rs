//! What one worker owns for proxying: its view of the current config snapshot, its balancer
//! cursor and connection pool (plain `RefCell`s: one thread, never borrowed across an await),
//! its metrics, and the registry of its client connections used to close idle ones on shutdown.

use crate::metrics::WorkerMetrics;
use crate::state::{Shared, Snapshot};
use crate::upstream::{Balancer, UpstreamPool};
use std::cell::{Cell, RefCell, RefMut};
use std::os::fd::RawFd;
use std::rc::{Rc, Weak};
use std::sync::Arc;

/// The snapshot a request runs on. Requests hold it until they finish, so a reload never
/// changes the rules under a request in flight.
pub type View = Rc<Arc<Snapshot>>;

struct Local {
    view: View,
    balancer: Balancer,
    pool: UpstreamPool,
}

pub struct WorkerCtx {
    pub worker_id: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<WorkerMetrics>,
    local: RefCell<Local>,
    connections: RefCell<Vec<Weak<ClientHandle>>>,
}

/// A client connection as the worker's shutdown logic sees it.
pub struct ClientHandle {
    pub fd: RawFd,
    /// Waiting for the next request with nothing buffered: safe to close on shutdown.
    pub idle: Cell<bool>,
}

impl WorkerCtx {
    pub fn new(worker_id: usize, shared: Arc<Shared>) -> Self {
        let snapshot = shared.snapshot();
        let config = &snapshot.config;
        let local = Local {
            balancer: Balancer::new(config.strategy, snapshot.backends.len()),
            pool: UpstreamPool::new(
                config.pool.clone(),
                snapshot.backends.len(),
                snapshot.generation,
            ),
            view: Rc::new(snapshot),
        };
        WorkerCtx {
            worker_id,
            metrics: shared.workers[worker_id].clone(),
            shared,
            local: RefCell::new(local),
            connections: RefCell::new(Vec::new()),
        }
    }

    /// The current snapshot; switches to a newer one first if a reload published it.
    pub fn view(&self) -> View {
        let generation = self.shared.generation();
        let mut local = self.local.borrow_mut();
        if local.view.generation != generation {
            let next = self.shared.snapshot();
            local.balancer = Balancer::new(next.config.strategy, next.backends.len());
            let old_backends = local.view.backends.clone();
            local.pool.rebuild(
                &old_backends,
                &next.backends,
                next.config.pool.clone(),
                next.generation,
            );
            local.view = Rc::new(next);
        }
        local.view.clone()
    }

    pub fn balancer(&self) -> RefMut<'_, Balancer> {
        RefMut::map(self.local.borrow_mut(), |l| &mut l.balancer)
    }

    pub fn pool(&self) -> RefMut<'_, UpstreamPool> {
        RefMut::map(self.local.borrow_mut(), |l| &mut l.pool)
    }

    pub fn register(&self, fd: RawFd) -> Rc<ClientHandle> {
        let handle = Rc::new(ClientHandle {
            fd,
            idle: Cell::new(false),
        });
        let mut conns = self.connections.borrow_mut();
        if conns.len() >= 64 && conns.len() == conns.capacity() {
            conns.retain(|w| w.strong_count() > 0);
        }
        conns.push(Rc::downgrade(&handle));
        handle
    }

    /// Shutdown: wakes every connection waiting idle for its next request, which then closes.
    pub fn close_idle_connections(&self) {
        let mut conns = self.connections.borrow_mut();
        conns.retain(|w| w.strong_count() > 0);
        for handle in conns.iter().filter_map(Weak::upgrade) {
            if handle.idle.get() {
                // SAFETY: the fd belongs to a live connection of this worker; SHUT_RD only ends
                // its pending read (which then sees EOF), the task closes the fd itself.
                unsafe { libc::shutdown(handle.fd, libc::SHUT_RD) };
            }
        }
    }
}
