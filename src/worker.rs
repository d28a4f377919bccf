//! One worker = one thread pinned to a core, running its own monoio runtime (io_uring, or epoll
//! where io_uring is unavailable) with its own listener, connections, pool and balancer.

use crate::config::ValidConfig;
use crate::proxy::{serve_connection, WorkerCtx};
use crate::upstream::BackendSet;
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

/// How often idle pooled upstream connections are checked for expiry.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin on it.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// Bound on writing the refusal to a connection over the cap.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// io_uring submission queue size per worker.
const URING_ENTRIES: u32 = 4096;

pub struct WorkerSpec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    pub listener: std::net::TcpListener,
    pub config: Arc<ValidConfig>,
    pub backends: BackendSet,
}

/// Which I/O driver monoio's `FusionDriver` will pick on this machine.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
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
    let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()?;
    runtime.block_on(async move {
        let listener = monoio::net::TcpListener::from_std(spec.listener)?;
        let ctx = Rc::new(WorkerCtx::new(spec.id, spec.config, spec.backends));
        monoio::spawn(sweep_pool(ctx.clone()));
        tracing::info!(
            worker = spec.id,
            driver = driver_name(),
            core = spec.core.map(|c| c.id as i64).unwrap_or(-1),
            pinned,
            "worker listening"
        );
        let _ = ready.send(Ok(()));
        let max_connections = ctx.config.limits.max_connections;
        let active = Rc::new(Cell::new(0usize));
        loop {
            match listener.accept().await {
                Ok((stream, _)) if active.get() >= max_connections => {
                    monoio::spawn(refuse_connection(stream, ctx.clone()));
                }
                Ok((stream, peer)) => {
                    let slot = ConnectionSlot::take(&active);
                    let ctx = ctx.clone();
                    monoio::spawn(async move {
                        serve_connection(stream, peer, ctx).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(worker = spec.id, error = %e, "accept failed");
                    monoio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    })
}

/// Counts a live client connection for `max_connections`; released when dropped.
struct ConnectionSlot(Rc<Cell<usize>>);

impl ConnectionSlot {
    fn take(active: &Rc<Cell<usize>>) -> Self {
        active.set(active.get() + 1);
        ConnectionSlot(active.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Over the connection cap: answer 503 and close at once, rather than leave the client
/// waiting in the backlog or let descriptors run out.
async fn refuse_connection(mut stream: monoio::net::TcpStream, ctx: Rc<WorkerCtx>) {
    tracing::warn!(
        worker = ctx.worker_id,
        max = ctx.config.limits.max_connections,
        "connection limit reached; refusing"
    );
    let mut out = bytes::BytesMut::new();
    crate::http::status::write_error(&mut out, 503, false);
    let _ = crate::proxy::io::write_buf(&mut stream, &mut out, REFUSE_WRITE_TIMEOUT).await;
}

async fn sweep_pool(ctx: Rc<WorkerCtx>) {
    loop {
        monoio::time::sleep(POOL_SWEEP_INTERVAL).await;
        ctx.pool.borrow_mut().sweep();
    }
}
