//! One worker = one thread pinned to a core, running its own monoio runtime (io_uring, or epoll
//! where io_uring is unavailable) with its own listener, connections, pool and balancer.
//! On shutdown it stops accepting, closes idle connections, lets busy ones finish their
//! request (bounded by the shutdown timeout), then returns.

use crate::net::fd_budget::{self, FdOp};
use crate::net::listener::Listener;
use crate::net::stream::{ClientStream, Scheme};
use crate::proxy::{
    run_parking_lot, spawn_connection, spawn_tls_connection, ConnectionSlot, WorkerCtx,
};
use crate::state::Shared;
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often idle pooled upstream connections are checked for expiry.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin on it (io_uring fails an
/// accept at once while out of descriptors, whether or not a client waits).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Waiting clients refused per pause while out of descriptors.
const SHED_PER_PAUSE: usize = 64;
/// Bound on writing the refusal to a connection over the cap.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a draining worker checks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// io_uring submission queue size per worker.
const URING_ENTRIES: u32 = 4096;

pub struct WorkerSpec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    /// The plain listener, and the TLS one where configured.
    pub listeners: Vec<Listener>,
    pub shared: Arc<Shared>,
    /// Splice pipes this worker may hold (`FdBudget::pipes_per_worker`).
    pub pipes: usize,
    /// Descriptors this worker may hold (`FdBudget::per_worker`).
    pub descriptors: usize,
    /// A descriptor held only to be closed when the process runs out of them, so that one
    /// client can still be accepted and refused with 503 (rather than left in the backlog).
    pub spare: Option<std::fs::File>,
}

/// Starts the worker thread; it reports on `ready` once it accepts connections (or why it can't).
pub fn spawn(
    spec: WorkerSpec,
    ready: SyncSender<io::Result<()>>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{}", spec.id))
        .spawn(move || {
            if let Err(e) = run(spec, &ready) {
                let _ = ready.send(Err(e));
            }
        })
}

fn run(spec: WorkerSpec, ready: &SyncSender<io::Result<()>>) -> io::Result<()> {
    let pinned = spec.core.is_some_and(core_affinity::set_for_current);
    fd_budget::set_pipes_per_worker(spec.pipes);
    fd_budget::set_share(spec.descriptors);
    let mut runtime = build_runtime()?;
    runtime.block_on(async move {
        let listeners = spec
            .listeners
            .into_iter()
            .map(|l| Ok((monoio::net::TcpListener::from_std(l.socket)?, l.scheme)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut listeners = listeners.into_iter();
        let first = listeners.next();
        let ctx = Rc::new(WorkerCtx::new(spec.id, spec.shared)?);
        let core = spec.core.filter(|_| pinned).map_or(-1, |c| c.id as i64);
        ctx.metrics.core.store(core, Ordering::Relaxed);
        monoio::spawn(sweep_pool(ctx.clone()));
        monoio::spawn(run_parking_lot(ctx.clone()));
        tracing::info!(
            worker = spec.id,
            driver = crate::net::driver_name(),
            core = spec.core.map(|c| c.id as i64).unwrap_or(-1),
            pinned,
            "worker listening"
        );
        let _ = ready.send(Ok(()));
        // One accept loop per listener. The plain listener's runs here, in the runtime's main
        // future, which is polled ahead of the connection tasks (new connections are taken in
        // before the busy ones grab more descriptors); the TLS one, with the spare descriptor
        // kept by the plain one, in a task of its own.
        let others: Vec<_> = listeners
            .map(|(listener, scheme)| {
                let ctx = ctx.clone();
                monoio::spawn(async move {
                    accept_until_draining(&listener, scheme, &ctx, None).await;
                })
            })
            .collect();
        if let Some((listener, scheme)) = first {
            accept_until_draining(&listener, scheme, &ctx, spec.spare).await;
        }
        for accepting in others {
            accepting.await;
        }
        drain(&ctx).await;
        Ok(())
    })
}

/// io_uring when the kernel has it, epoll otherwise; both with timers.
type WorkerRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// The worker's runtime. io_uring rings are set up for one thread that submits everything
/// (SINGLE_ISSUER) and runs completion work only when it asks for events (COOP_TASKRUN,
/// DEFER_TASKRUN): no inter-processor interrupts to deliver completions, which under load are a
/// measurable share of the CPU (22 vs 24-30 µs per proxied request in a side-by-side run here).
/// Kernels without these flags (before 6.1) get a plain ring.
fn build_runtime() -> io::Result<WorkerRuntime> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let tuned = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build();
    match tuned {
        Ok(rt) => Ok(rt),
        Err(e) => {
            tracing::debug!(error = %e, "io_uring setup flags refused; using a plain ring");
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .with_entries(URING_ENTRIES)
                .enable_timer()
                .build()
        }
    }
}

async fn accept_until_draining(
    listener: &monoio::net::TcpListener,
    scheme: Scheme,
    ctx: &Rc<WorkerCtx>,
    mut spare: Option<std::fs::File>,
) {
    let refusing = Rc::new(Cell::new(0));
    loop {
        let accepted = listener.accept().await;
        if ctx.shared.is_draining() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                fd_budget::recovered(FdOp::Accept);
                // Within the cap and with room in the descriptor share for it and its upstream
                // connection, or refused at once.
                let max = ctx.view().config.limits.max_connections;
                let slot = (ctx.active_connections() < max)
                    .then(|| ConnectionSlot::take(ctx))
                    .flatten();
                let Some(slot) = slot else {
                    match scheme {
                        Scheme::Http => refuse_bounded(stream, ctx, &refusing),
                        // No plain 503 on a TLS port: the connection is just closed.
                        Scheme::Https => {
                            crate::metrics::bump(&ctx.metrics.connections_refused_over_cap)
                        }
                    }
                    continue;
                };
                match scheme {
                    Scheme::Http => {
                        let stream = ClientStream::Plain(stream);
                        spawn_connection(ctx.clone(), stream, peer, slot, false);
                    }
                    // The handshake runs in the connection's own task, bounded by its timeout.
                    Scheme::Https => spawn_tls_connection(ctx.clone(), stream, peer, slot),
                }
            }
            Err(e) if fd_budget::is_exhaustion(&e) => {
                fd_budget::exhausted(FdOp::Accept, &e);
                // Under io_uring this comes at once, whether a client waits or not: the clients
                // waiting now are refused, then a pause (no spinning) before the next look.
                shed_waiting_clients(listener, &mut spare);
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
            Err(e) => {
                tracing::warn!(worker = ctx.worker_id, error = %e, "accept failed");
                monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// A descriptor held only to be closed when the process runs out of them (`WorkerSpec::spare`).
pub fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Out of descriptors: refuses the clients waiting in the listener's backlog with 503, each on
/// the spare descriptor (closed for it and taken back after), rather than leave them waiting
/// for descriptors that may not come back soon. Synchronous and non-blocking throughout, so no
/// other task of this worker can take the freed descriptor in between.
fn shed_waiting_clients(listener: &monoio::net::TcpListener, spare: &mut Option<std::fs::File>) {
    let fd = listener.as_raw_fd();
    let mut refusal = bytes::BytesMut::new();
    crate::http::status::write_error(&mut refusal, 503, false);
    for _ in 0..SHED_PER_PAUSE {
        if spare.take().is_none() {
            *spare = open_spare();
            return;
        }
        // SAFETY: the listener is open; no address is asked for. It is non-blocking
        // (`listener::bind_worker_socket`): with no client waiting this is EAGAIN.
        let client = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if client >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            let mut stream = unsafe { std::net::TcpStream::from_raw_fd(client) };
            let _ = stream.write(&refusal);
            // What the client already sent is read off, so the close is a FIN, not a reset
            // that could destroy the 503 before the client reads it.
            let _ = stream.read(&mut [0u8; 4096]);
        }
        *spare = open_spare();
        if client < 0 {
            return;
        }
    }
}

/// Refuses a connection over the cap with 503, or, with `REFUSALS_IN_FLIGHT` already being
/// answered (a flood), closes it at once: refusals must not hold descriptors without bound.
fn refuse_bounded(stream: monoio::net::TcpStream, ctx: &WorkerCtx, refusing: &Rc<Cell<usize>>) {
    crate::metrics::bump(&ctx.metrics.connections_refused_over_cap);
    tracing::warn!(worker = ctx.worker_id, "connection limit reached; refusing");
    if refusing.get() >= fd_budget::REFUSALS_IN_FLIGHT {
        return;
    }
    refusing.set(refusing.get() + 1);
    let refusing = refusing.clone();
    monoio::spawn(async move {
        refuse_connection(stream).await;
        refusing.set(refusing.get() - 1);
    });
}

/// Lets busy connections finish (each closes after its current response), closes idle ones,
/// and gives up at the shutdown timeout.
async fn drain(ctx: &WorkerCtx) {
    ctx.pool().clear();
    let deadline = Instant::now() + ctx.view().config.shutdown_timeout;
    tracing::info!(
        worker = ctx.worker_id,
        connections = ctx.active_connections(),
        "draining"
    );
    loop {
        ctx.close_idle_connections();
        if ctx.active_connections() == 0 {
            tracing::info!(worker = ctx.worker_id, "drained");
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                worker = ctx.worker_id,
                connections = ctx.active_connections(),
                "shutdown timeout: closing remaining connections"
            );
            return;
        }
        monoio::time::sleep(DRAIN_POLL).await;
    }
}

/// Over the connection cap: answer 503 and close at once, rather than leave the client
/// waiting in the backlog or let descriptors run out.
async fn refuse_connection(mut stream: monoio::net::TcpStream) {
    let mut out = bytes::BytesMut::new();
    crate::http::status::write_error(&mut out, 503, false);
    let _ = crate::net::io::write_buf(&mut stream, &mut out, REFUSE_WRITE_TIMEOUT).await;
}

async fn sweep_pool(ctx: Rc<WorkerCtx>) {
    loop {
        monoio::time::sleep(POOL_SWEEP_INTERVAL).await;
        let mut pool = ctx.pool();
        pool.sweep();
        ctx.metrics
            .pool_idle
            .store(pool.idle_count() as i64, Ordering::Relaxed);
        ctx.metrics
            .descriptors
            .store(fd_budget::held() as i64, Ordering::Relaxed);
    }
}
