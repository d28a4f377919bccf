//! What one worker owns for proxying: its view of the current config snapshot, its balancers
//! (one per upstream group) and connection pool (each in a `RefCell` of its own: one thread, never borrowed across
//! an await, and the balancer and pool follow the view lazily, so no borrow of one ever needs
//! another), its metrics, its count of client connections, the registry of the busy ones and the
//! lot of the parked ones (both used to close idle connections on shutdown).

use super::parking::ParkingLot;
use crate::limits::CountedConnection;
use crate::metrics::{bump, WorkerMetrics};
use crate::net::fd_budget::{self, Lease};
use crate::net::io::IdleState;
use crate::net::tls::ParkedSession;
use crate::state::{Shared, Snapshot};
use crate::upstream::{Balancer, UpstreamPool, Upstreams};
use slab::Slab;
use std::cell::{Cell, RefCell, RefMut};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The snapshot a request runs on. Requests hold it until they finish, so a reload never
/// changes the rules under a request in flight.
pub type View = Rc<Arc<Snapshot>>;

/// Worker-local state built for one config generation, rebuilt when the view moves on.
struct ForGeneration<T> {
    generation: u64,
    value: T,
}

pub struct WorkerCtx {
    pub worker_id: usize,
    pub shared: Arc<Shared>,
    pub metrics: Arc<WorkerMetrics>,
    view: RefCell<View>,
    /// One per upstream group, by the group's index.
    balancers: RefCell<ForGeneration<Vec<Balancer>>>,
    pool: RefCell<ForGeneration<UpstreamPool>>,
    /// Connections with a task: descriptor, and whether it waits idle for its next request.
    /// A slab rather than a heap object per connection, which would scatter small long-lived
    /// allocations among request buffers and keep freed memory from going back to the OS.
    connections: RefCell<Slab<(RawFd, bool)>>,
    /// Client connections open on this worker (served or parked), for `max_connections`.
    active: Cell<usize>,
    pub parking: RefCell<ParkingLot<ParkedConn>>,
}

/// What a parked connection keeps besides its socket: its slot, and its TLS session.
pub struct ParkedConn {
    pub slot: ConnectionSlot,
    pub tls: Option<ParkedSession>,
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
        let generation = snapshot.generation;
        let balancers = balancers_for(&snapshot.upstreams, worker_id);
        let pool = UpstreamPool::new(&snapshot.upstreams);
        Ok(WorkerCtx {
            worker_id,
            metrics: shared.workers[worker_id].clone(),
            shared,
            view: RefCell::new(Rc::new(snapshot)),
            balancers: RefCell::new(ForGeneration {
                generation,
                value: balancers,
            }),
            pool: RefCell::new(ForGeneration {
                generation,
                value: pool,
            }),
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
        let mut view = self.view.borrow_mut();
        if view.generation != generation {
            *view = Rc::new(self.shared.snapshot());
        }
        view.clone()
    }

    /// The balancer of upstream group `group`, for the generation of the current view.
    pub fn balancer(&self, group: usize) -> RefMut<'_, Balancer> {
        let mut balancers = self.balancers.borrow_mut();
        let view = self.view.borrow();
        if balancers.generation != view.generation {
            balancers.value = balancers_for(&view.upstreams, self.worker_id);
            balancers.generation = view.generation;
        }
        RefMut::map(balancers, |b| &mut b.value[group])
    }

    /// The upstream pool, for the generation of the current view: connections to backends a
    /// reload removed are closed, the others kept (keyed by backend identity).
    pub fn pool(&self) -> RefMut<'_, UpstreamPool> {
        let mut pool = self.pool.borrow_mut();
        let view = self.view.borrow();
        if pool.generation != view.generation {
            pool.value.rebuild(&view.upstreams);
            pool.generation = view.generation;
        }
        RefMut::map(pool, |p| &mut p.value)
    }

    /// An idle upstream connection was found unusable: counted, and a broken upstream logged.
    pub fn note_discarded(&self, backend: &str, state: IdleState) {
        match state {
            IdleState::StrayBytes => {
                bump(&self.metrics.upstream_discarded_stray);
                tracing::warn!(
                    backend,
                    worker = self.worker_id,
                    "upstream sent bytes after its response; connection closed, not reused"
                );
            }
            IdleState::Closed | IdleState::Clean => bump(&self.metrics.upstream_discarded_closed),
        }
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

/// A balancer per upstream group; `random2`'s draws differ between workers and groups.
fn balancers_for(upstreams: &Upstreams, worker: usize) -> Vec<Balancer> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    upstreams
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let s = &g.settings;
            let seed = seed ^ ((worker as u64) << 32) ^ (i as u64).wrapping_mul(0x9E37_79B9);
            Balancer::new(s.strategy, s.hash_balance_factor, seed)
        })
        .collect()
}

/// Counts one open client connection for `max_connections` and the gauge, and its descriptor
/// on the worker's budget; released on drop. Travels with the connection, through its task and
/// the parking lot.
pub struct ConnectionSlot {
    ctx: Rc<WorkerCtx>,
    _descriptor: Lease,
    /// Its count against `max_connections_per_ip`, when it is counted.
    _per_address: Option<CountedConnection>,
    /// Requests served on it so far (`max_requests_per_connection`).
    served: u64,
}

impl ConnectionSlot {
    /// A slot, if the worker's descriptor share has room for the connection and an upstream.
    pub fn take(ctx: &Rc<WorkerCtx>) -> Option<Self> {
        let descriptor = fd_budget::lease_client()?;
        ctx.set_active(ctx.active.get() + 1);
        Some(ConnectionSlot {
            ctx: ctx.clone(),
            _descriptor: descriptor,
            _per_address: None,
            served: 0,
        })
    }

    /// The connection is counted for its client's address; uncounted when it closes.
    pub fn count_for_address(&mut self, counted: CountedConnection) {
        self._per_address = Some(counted);
    }

    /// Counts a request; true when it is the last one `max` allows.
    pub fn serve_request(&mut self, max: Option<u64>) -> bool {
        self.served += 1;
        max.is_some_and(|max| self.served >= max)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.ctx.set_active(self.ctx.active.get() - 1);
    }
}
