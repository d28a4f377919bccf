//! What one worker owns for proxying: its view of the current config snapshot, its balancer
//! cursor and connection pool (plain `RefCell`s: one thread, never borrowed across an await),
//! its metrics, its count of client connections, the registry of the busy ones and the lot of
//! the parked ones (both used to close idle connections on shutdown).

use super::parking::ParkingLot;
use crate::metrics::WorkerMetrics;
use crate::state::{Shared, Snapshot};
use crate::upstream::{Balancer, UpstreamPool};
use slab::Slab;
use std::cell::{Cell, RefCell, RefMut};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
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
    /// Connections with a task: descriptor, and whether it waits idle for its next request.
    /// A slab rather than a heap object per connection, which would scatter small long-lived
    /// allocations among request buffers and keep freed memory from going back to the OS.
    connections: RefCell<Slab<(RawFd, bool)>>,
    /// Client connections open on this worker (served or parked), for `max_connections`.
    active: Cell<usize>,
    pub parking: RefCell<ParkingLot<ConnectionSlot>>,
}

/// A connection task's entry in the worker's registry; removed when dropped.
pub struct Registration<'a> {
    ctx: &'a WorkerCtx,
    key: usize,
}

impl Registration<'_> {
    /// Marks the connection as waiting for its next request with nothing buffered (safe to
    /// close on shutdown), or not.
    pub fn set_idle(&self, idle: bool) {
        if let Some(entry) = self.ctx.connections.borrow_mut().get_mut(self.key) {
            entry.1 = idle;
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.ctx.connections.borrow_mut().try_remove(self.key);
    }
}

impl WorkerCtx {
    pub fn new(worker_id: usize, shared: Arc<Shared>) -> std::io::Result<Self> {
        let snapshot = shared.snapshot();
        let config = &snapshot.config;
        let local = Local {
            balancer: Balancer::new(config.strategy, snapshot.backends.len()),
            pool: UpstreamPool::new(config.pool.clone()),
            view: Rc::new(snapshot),
        };
        Ok(WorkerCtx {
            worker_id,
            metrics: shared.workers[worker_id].clone(),
            shared,
            local: RefCell::new(local),
            connections: RefCell::new(Slab::new()),
            active: Cell::new(0),
            parking: RefCell::new(ParkingLot::new()?),
        })
    }

    /// Client connections open on this worker, busy or parked.
    pub fn active_connections(&self) -> usize {
        self.active.get()
    }

    /// Client connections with a task (not parked).
    pub fn busy_connections(&self) -> usize {
        self.connections.borrow().len()
    }

    fn set_active(&self, n: usize) {
        self.active.set(n);
        self.metrics
            .active_connections
            .store(n as i64, Ordering::Relaxed);
    }

    /// The current snapshot; switches to a newer one first if a reload published it.
    pub fn view(&self) -> View {
        let generation = self.shared.generation();
        let mut local = self.local.borrow_mut();
        if local.view.generation != generation {
            let next = self.shared.snapshot();
            local.balancer = Balancer::new(next.config.strategy, next.backends.len());
            local.pool.rebuild(&next.backends, next.config.pool.clone());
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

    pub fn register(&self, fd: RawFd) -> Registration<'_> {
        let key = self.connections.borrow_mut().insert((fd, false));
        Registration { ctx: self, key }
    }

    /// Shutdown: closes parked connections and wakes every connection task waiting idle for its
    /// next request, which then closes.
    pub fn close_idle_connections(&self) {
        self.parking.borrow_mut().close_all();
        for &(fd, idle) in self.connections.borrow().iter().map(|(_, entry)| entry) {
            if idle {
                // SAFETY: the fd belongs to a live connection of this worker; SHUT_RD only ends
                // its pending read (which then sees EOF), the task closes the fd itself.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            }
        }
    }
}

/// Counts one open client connection for `max_connections` and the gauge; released on drop.
/// Travels with the connection, through its task and the parking lot.
pub struct ConnectionSlot {
    ctx: Rc<WorkerCtx>,
}

impl ConnectionSlot {
    pub fn take(ctx: &Rc<WorkerCtx>) -> Self {
        ctx.set_active(ctx.active.get() + 1);
        ConnectionSlot { ctx: ctx.clone() }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.ctx.set_active(self.ctx.active.get() - 1);
    }
}
