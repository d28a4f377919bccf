//! Process assembly: decide the workers and their cores, refuse a port already in use, bind one
//! listener per worker, start the workers, then wait for a stop signal.

use crate::config::ValidConfig;
use crate::upstream::backend::backend_set;
use crate::{listener, worker};
use std::io;
use std::sync::mpsc;
use std::sync::Arc;

/// Starts all workers and blocks until SIGTERM or SIGINT.
pub fn run(mut config: ValidConfig, workers_override: Option<usize>) -> io::Result<()> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let count = workers_override
        .or(config.workers)
        .unwrap_or_else(|| cores.len().max(1));
    config.limits.max_connections = fit_connections_to_fd_limit(config.limits.max_connections, count);
    let config = Arc::new(config);
    listener::ensure_address_free(config.listen).map_err(|e| with_context(e, config.listen))?;
    let backends = backend_set(&config.backends);
    tracing::info!(
        listen = %config.listen,
        workers = count,
        driver = worker::driver_name(),
        backends = config.backends.len(),
        version = env!("CARGO_PKG_VERSION"),
        "starting ringproxy"
    );

    crate::upstream::health::spawn(backends.clone(), config.health.clone())?;
    let (ready_tx, ready_rx) = mpsc::sync_channel(count);
    for id in 0..count {
        let core = (config.pin_cores && !cores.is_empty()).then(|| cores[id % cores.len()]);
        let spec = worker::WorkerSpec {
            id,
            core,
            listener: listener::bind_worker_socket(config.listen)
                .map_err(|e| with_context(e, config.listen))?,
            config: config.clone(),
            backends: backends.clone(),
        };
        worker::spawn(spec, ready_tx.clone())?;
    }
    for _ in 0..count {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("a worker exited during startup"))??;
    }
    tracing::info!(listen = %config.listen, "ready: all workers listening");
    wait_for_stop_signal()
}

/// Descriptors kept aside for listeners, logs, health probes and the like.
const RESERVED_FDS: usize = 256;

/// Raises the soft open-files limit to the hard one, then lowers the per-worker connection cap
/// if even that cannot hold every client connection plus one upstream connection each (as
/// HAProxy derives maxconn from `ulimit -n`), so the cap is hit before descriptors run out.
fn fit_connections_to_fd_limit(max_connections: usize, workers: usize) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let fits = (lim.rlim_cur as usize).saturating_sub(RESERVED_FDS) / (2 * workers.max(1));
    if fits < max_connections {
        tracing::info!(
            nofile = lim.rlim_cur,
            configured = max_connections,
            effective = fits.max(1),
            "limits.max_connections lowered to fit the open-files limit (raise LimitNOFILE to allow more)"
        );
        return fits.max(1);
    }
    max_connections
}

fn with_context(e: io::Error, addr: std::net::SocketAddr) -> io::Error {
    let what = if e.kind() == io::ErrorKind::AddrInUse {
        "address already in use".to_string()
    } else {
        e.to_string()
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {what}"))
}

fn wait_for_stop_signal() -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "stopping");
    }
    Ok(())
}
