//! The open-files budget. At start the limit (RLIMIT_NOFILE) is raised to what the configured
//! connections could hold at worst, where the process may; what it gets is shared out between
//! the workers. Each worker then counts what it really holds (`Lease`s: one descriptor per
//! client connection, busy or parked; one per upstream connection, in use or pooled; one per
//! second descriptor of a socket; two per splice pipe) and takes a new one only within its
//! share: a new client is admitted only with room for it and an upstream connection, and what
//! does not fit is shed (503), skipped or done another way (copy instead of splice). So the
//! limit is never reached by surprise, and 10,000 idle clients need about 10,000 descriptors,
//! not the worst case of each.

use crate::metrics::{FD_EXHAUSTED, FD_OP_LABELS, FD_SHARE_FULL};
use std::cell::{Cell, RefCell};
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The most one client connection holds at once: its socket, its upstream connection, and the
/// two duplicates of a WebSocket tunnel (a second descriptor of each socket, so that each
/// direction has its own). The limit is raised for this much where it can be; below it,
/// workers count what connections really hold.
pub const WORST_PER_CONNECTION: usize = 4;
/// Per worker whatever its load: listener and the main thread's duplicate of it, the io_uring
/// ring (or epoll set and eventfd), the parking lot's epoll set and its duplicate, the spare
/// descriptor kept for refusing connections when out of descriptors, with room to spare.
const PER_WORKER_FIXED: usize = 10;
/// Connections over the cap being answered 503 at once, per worker; more are just closed.
pub const REFUSALS_IN_FLIGHT: usize = 16;
/// The whole process: stdio, the signal pipe, the health thread's ring, the admin listener and
/// its 16 connections, the config file read on reload, the systemd notify socket, the logger.
const PROCESS_FIXED: usize = 48;
/// Per backend: its health probe's socket, twice over for backends added by a reload.
const PER_BACKEND: usize = 2;
/// Ceiling on splice pipes per worker (in use and spare): each may hold 1 MiB of kernel memory.
const MAX_PIPES_PER_WORKER: usize = 1024;
/// Client connections may take at most this share of a worker's descriptors: the rest stays
/// for their upstream connections, so a crowd of idle clients cannot starve the busy ones.
const CLIENT_SHARE: (usize, usize) = (3, 4);

/// What the descriptor budget depends on.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub workers: usize,
    pub backends: usize,
    /// `[upstream] max_idle_per_backend`.
    pub max_idle_per_backend: usize,
}

/// The fitted budget: the limit in force and how it is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// RLIMIT_NOFILE (soft) after raising it where possible.
    pub nofile: u64,
    /// Descriptors each worker may hold for connections, pooled connections, second
    /// descriptors and pipes (`usize::MAX`: no known limit).
    pub per_worker: usize,
    /// Splice pipes per worker, in use and spare (HAProxy's `maxpipes`): two descriptors each.
    pub pipes_per_worker: usize,
    /// Descriptors the configured connections would need at worst.
    pub worst_case: usize,
}

impl FdBudget {
    /// Whether the worst case of the configured connections fits: otherwise admission counts.
    pub fn covers_worst_case(&self) -> bool {
        self.worst_case as u64 <= self.nofile
    }
}

impl Demand {
    /// Splice pipes per worker for `connections`: a quarter of them, as HAProxy's default
    /// `maxpipes` (pipes are only held while a large body moves).
    pub fn pipes_per_worker(&self, connections: usize) -> usize {
        (connections / 4).clamp(1, MAX_PIPES_PER_WORKER)
    }

    /// Idle pooled connections per worker: at most `max_idle_per_backend` per backend, and never
    /// more per backend than the worker's connections (a new one is only opened when none idles).
    pub fn pool_per_worker(&self, connections: usize) -> usize {
        self.backends * self.max_idle_per_backend.min(connections)
    }

    fn process_fixed(&self) -> usize {
        PROCESS_FIXED + self.backends * PER_BACKEND
    }

    fn worker_fixed() -> usize {
        PER_WORKER_FIXED + REFUSALS_IN_FLIGHT
    }

    /// Descriptors the process may hold at worst with `connections` per worker.
    pub fn needed(&self, connections: usize) -> usize {
        let per_worker = Self::worker_fixed()
            + connections * WORST_PER_CONNECTION
            + self.pipes_per_worker(connections) * 2
            + self.pool_per_worker(connections);
        self.process_fixed() + self.workers.max(1) * per_worker
    }

    /// The budget within `nofile` for `connections` per worker.
    pub fn budget(&self, nofile: u64, connections: usize) -> FdBudget {
        let usable = (nofile.min(usize::MAX as u64) as usize).saturating_sub(self.process_fixed());
        let per_worker = (usable / self.workers.max(1)).saturating_sub(Self::worker_fixed());
        FdBudget {
            nofile,
            per_worker: if nofile == u64::MAX {
                usize::MAX
            } else {
                per_worker
            },
            pipes_per_worker: self.pipes_per_worker(connections),
            worst_case: self.needed(connections),
        }
    }
}

/// A worker's share of descriptors and what it holds of it now.
struct Ledger {
    share: usize,
    used: usize,
    clients: usize,
}

thread_local! {
    /// This thread's ledger; threads that are not workers have no limit of their own.
    static LEDGER: RefCell<Ledger> = const {
        RefCell::new(Ledger { share: usize::MAX, used: 0, clients: 0 })
    };
}

/// Sets this worker thread's share of descriptors, from its `FdBudget`.
pub fn set_share(share: usize) {
    LEDGER.with(|l| l.borrow_mut().share = share);
}

/// Descriptors this worker holds by its count (for tests and `/status`).
pub fn held() -> usize {
    LEDGER.with(|l| l.borrow().used)
}

/// Descriptors held on this worker's ledger, given back when dropped. Not `Send`: a lease is
/// dropped on the thread that took it, whose ledger it is.
#[derive(Debug)]
pub struct Lease {
    n: usize,
    client: bool,
    _thread: PhantomData<*const ()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // `try_with`: leases held in thread-locals (spare pipes) may be dropped after the ledger
        // as the thread ends; there is nothing left to count then.
        let _ = LEDGER.try_with(|l| {
            let mut l = l.borrow_mut();
            l.used = l.used.saturating_sub(self.n);
            if self.client {
                l.clients = l.clients.saturating_sub(1);
            }
        });
    }
}

/// `n` descriptors for a socket, a pipe or a second descriptor, if the share has room; when it
/// has not, the shortage is counted and logged under `op` like a failed allocation.
pub fn lease(n: usize, op: FdOp) -> Option<Lease> {
    let granted = LEDGER.with(|l| {
        let mut l = l.borrow_mut();
        (l.used + n <= l.share).then(|| l.used += n).is_some()
    });
    if !granted {
        share_full(op);
        return None;
    }
    recovered(op);
    Some(Lease {
        n,
        client: false,
        _thread: PhantomData,
    })
}

/// A new client connection's descriptor, if the share has room for it and an upstream
/// connection, and clients hold less than `CLIENT_SHARE` of it.
pub fn lease_client() -> Option<Lease> {
    let granted = LEDGER.with(|l| {
        let mut l = l.borrow_mut();
        let client_cap = if l.share == usize::MAX {
            usize::MAX
        } else {
            l.share / CLIENT_SHARE.1 * CLIENT_SHARE.0
        };
        let room = l.used + 2 <= l.share && l.clients < client_cap;
        if room {
            l.used += 1;
            l.clients += 1;
        }
        room
    });
    if !granted {
        share_full(FdOp::Accept);
        return None;
    }
    // Built only when granted: a lease built and dropped would give back what was not taken.
    Some(Lease {
        n: 1,
        client: true,
        _thread: PhantomData,
    })
}

/// Splice pipes a thread may hold when its worker did not say (tests, other threads).
const DEFAULT_PIPES: usize = 16;

thread_local! {
    static PIPES_PER_WORKER: Cell<usize> = const { Cell::new(DEFAULT_PIPES) };
}

/// Sets this worker thread's share of splice pipes (in use and spare), from its `FdBudget`.
pub fn set_pipes_per_worker(pipes: usize) {
    PIPES_PER_WORKER.set(pipes.max(1));
}

/// This thread's share of splice pipes: splicing copies instead once this many are open.
pub fn pipes_per_worker() -> usize {
    PIPES_PER_WORKER.get()
}

/// Raises the open-files limit to what `max_connections` per worker need at worst (the hard
/// limit too when privileged, up to `fs.nr_open`, like nginx's `worker_rlimit_nofile`), and
/// shares out the limit it could get.
pub fn fit(max_connections: usize, demand: &Demand) -> FdBudget {
    let wanted = demand.needed(max_connections) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on stack structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            // Unknown limit: trust the config, shedding covers a shortage.
            return demand.budget(u64::MAX, max_connections);
        }
        if lim.rlim_max < wanted {
            let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
                .unwrap_or(lim.rlim_max);
            let raised = libc::rlimit {
                rlim_cur: wanted.min(ceiling),
                rlim_max: wanted.min(ceiling),
            };
            if raised.rlim_max > lim.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0
            {
                lim = raised;
            }
        }
        if lim.rlim_cur < lim.rlim_max.min(wanted) {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max.min(wanted),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
                lim = soft;
            }
        }
    }
    demand.budget(lim.rlim_cur, max_connections)
}

/// EMFILE (this process) or ENFILE (the whole system): no descriptor to be had.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// An operation that found no descriptor, for `ringproxy_fd_exhausted_total{op}` (its label is
/// `FD_OP_LABELS[op as usize]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdOp {
    /// Accepting a client connection: it is refused (503) through the spare descriptor.
    Accept = 0,
    /// Connecting upstream: the request gets 503; the backend's health is not touched.
    Connect = 1,
    /// A health probe's socket: the check is skipped, the backend keeps its state.
    HealthCheck = 2,
    /// A splice pipe from the kernel: the body is copied instead.
    Pipe = 3,
    /// The worker's pipe budget is all in use: the body is copied instead (not logged).
    PipeBudget = 4,
    /// Duplicating a socket (early-answer watcher, tunnel, parking).
    Dup = 5,
}

impl FdOp {
    fn consequence(self) -> &'static str {
        match self {
            FdOp::Accept => "out of descriptors: refusing new connections with 503",
            FdOp::Connect => {
                "out of descriptors: answering 503 instead of connecting upstream (not counted against the backend)"
            }
            FdOp::HealthCheck => {
                "out of descriptors: health checks skipped, backends keep their state"
            }
            FdOp::Pipe | FdOp::PipeBudget => "out of descriptors: copying bodies instead of splicing",
            FdOp::Dup => "out of descriptors: cannot duplicate a socket",
        }
    }
}

/// While a shortage lasts, how often it is logged again.
const SHORTAGE_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shortage {
    since: Option<Instant>,
    logged_at: Option<Instant>,
    /// Hits since the last log line.
    unlogged: u64,
}

thread_local! {
    /// One bit per `FdOp` in a shortage on this thread: the common "all is well" check is one
    /// load, so `recovered` can sit on the accept and connect paths.
    static SHORT: Cell<u8> = const { Cell::new(0) };
    static SHORTAGES: RefCell<[Shortage; FD_OP_LABELS.len()]> = RefCell::default();
}

/// Counts an operation done without because the worker's share was full, and logs it as a
/// shortage (once when it starts, then at most every 10 s).
fn share_full(op: FdOp) {
    FD_SHARE_FULL[op as usize].fetch_add(1, Ordering::Relaxed);
    note_shortage(
        op,
        &io::Error::other("the worker's share of the open-files limit is full"),
    );
}

/// Counts an operation that found no descriptor, and logs the shortage when it starts and at
/// most every 10 s while it lasts (per thread), never once per hit.
pub fn exhausted(op: FdOp, error: &io::Error) {
    FD_EXHAUSTED[op as usize].fetch_add(1, Ordering::Relaxed);
    if op == FdOp::PipeBudget {
        // The budget doing its job under load, not a shortage: counted only.
        return;
    }
    note_shortage(op, error);
}

/// Logs a shortage of `op` when it starts and at most every 10 s while it lasts (per thread).
fn note_shortage(op: FdOp, error: &io::Error) {
    SHORT.set(SHORT.get() | 1 << op as u8);
    let now = Instant::now();
    SHORTAGES.with(|s| {
        let s = &mut s.borrow_mut()[op as usize];
        let since = *s.since.get_or_insert(now);
        let due = s
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= SHORTAGE_LOG_EVERY);
        if !due {
            s.unlogged += 1;
            return;
        }
        tracing::warn!(
            op = FD_OP_LABELS[op as usize],
            error = %error,
            for_ms = now.duration_since(since).as_millis() as u64,
            since_last_log = s.unlogged,
            "{}",
            op.consequence()
        );
        s.logged_at = Some(now);
        s.unlogged = 0;
    });
}

/// Notes that `op` got its descriptor; ends (and logs the end of) a shortage of it.
#[inline]
pub fn recovered(op: FdOp) {
    if SHORT.get() & 1 << op as u8 == 0 {
        return;
    }
    SHORT.set(SHORT.get() & !(1 << op as u8));
    SHORTAGES.with(|s| {
        let s = &mut std::mem::take(&mut s.borrow_mut()[op as usize]);
        let lasted = s.since.map_or(0, |t| t.elapsed().as_millis() as u64);
        tracing::info!(
            op = FD_OP_LABELS[op as usize],
            lasted_ms = lasted,
            "descriptors available again"
        );
    });
}

/// Counts and logs the error under `op` if it is an exhaustion, else notes that descriptors
/// were to be had (any other outcome got past allocating one); passes the result on.
pub fn note<T>(op: FdOp, result: io::Result<T>) -> io::Result<T> {
    match &result {
        Err(e) if is_exhaustion(e) => exhausted(op, e),
        _ => recovered(op),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand() -> Demand {
        Demand {
            workers: 2,
            backends: 3,
            max_idle_per_backend: 64,
        }
    }

    #[test]
    fn needed_counts_the_worst_case_of_every_part() {
        let d = demand();
        // 100 connections: 400 for them, 25 pipes (50), 3 x 64 pooled, fixed and refusals.
        let per_worker = PER_WORKER_FIXED + REFUSALS_IN_FLIGHT + 400 + 50 + 192;
        assert_eq!(d.needed(100), PROCESS_FIXED + 6 + 2 * per_worker);
        // A pool is never larger per backend than the connections that fill it.
        assert_eq!(d.pool_per_worker(10), 30);
        assert_eq!(d.pipes_per_worker(2), 1);
        assert_eq!(d.pipes_per_worker(1 << 20), MAX_PIPES_PER_WORKER);
    }

    #[test]
    fn the_limit_is_shared_out_between_workers() {
        let d = demand();
        let b = d.budget(20_000, 16384);
        assert_eq!(
            b.per_worker,
            (20_000 - PROCESS_FIXED - 6) / 2 - PER_WORKER_FIXED - REFUSALS_IN_FLIGHT
        );
        assert!(!b.covers_worst_case());
        assert!(d.budget(1 << 30, 1000).covers_worst_case());
        assert_eq!(d.budget(u64::MAX, 16384).per_worker, usize::MAX);
    }

    #[test]
    fn leases_stay_within_the_share_and_clients_leave_room() {
        // Ledgers are per thread: this test's own.
        std::thread::spawn(|| {
            set_share(8);
            // Clients: room for each and an upstream connection, and at most 3/4 of 8 = 6.
            let clients: Vec<Lease> = std::iter::from_fn(lease_client).take(10).collect();
            assert_eq!(clients.len(), 6);
            assert_eq!(held(), 6);
            let upstream = lease(1, FdOp::Connect).expect("room for one upstream");
            let second = lease(1, FdOp::Dup).expect("and one more");
            assert!(lease(1, FdOp::Dup).is_none(), "the share is full");
            assert!(lease(2, FdOp::Pipe).is_none());
            drop(second);
            drop(upstream);
            drop(clients);
            assert_eq!(held(), 0);
            assert!(lease(2, FdOp::Pipe).is_some());
        })
        .join()
        .expect("ledger thread");
    }

    #[test]
    fn exhaustion_is_emfile_or_enfile() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
    }

    #[test]
    fn shortages_are_counted_per_op() {
        let before = FD_EXHAUSTED[FdOp::Dup as usize].load(Ordering::Relaxed);
        let emfile = || Err::<(), _>(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(note(FdOp::Dup, emfile()).is_err());
        assert!(note(FdOp::Dup, emfile()).is_err());
        assert_eq!(SHORT.get() & 1 << FdOp::Dup as u8, 1 << FdOp::Dup as u8);
        assert!(note(FdOp::Dup, Ok(())).is_ok());
        assert_eq!(SHORT.get() & 1 << FdOp::Dup as u8, 0);
        let refused = Err::<(), _>(io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(note(FdOp::Dup, refused).is_err());
        assert_eq!(
            FD_EXHAUSTED[FdOp::Dup as usize].load(Ordering::Relaxed),
            before + 2
        );
    }
}
