//! Process assembly: decide the workers and their cores, refuse an address already in use, bind
//! one listener per worker, start the health thread, the admin listener and the workers, then
//! handle signals: SIGHUP reloads, SIGTERM/SIGINT drain and stop (a second one stops at once).

use crate::config::ValidConfig;
use crate::net::fd_budget::{self, FdBudget};
use crate::net::listener;
use crate::net::stream::Scheme;
use crate::state::Shared;
use crate::{admin, worker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;

/// Runs until stopped by a signal; returns once every worker has drained.
pub fn run(
    config: ValidConfig,
    config_path: PathBuf,
    workers_override: Option<usize>,
) -> io::Result<()> {
    // Handlers first: a SIGHUP or SIGTERM that arrives while starting is queued, not fatal.
    let signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let count = workers_override
        .or(config.workers)
        .unwrap_or_else(|| cores.len().max(1));
    let budget = fit_descriptors(&config, count);
    let mut addresses = vec![(config.listen, Scheme::Http)];
    if let Some(tls) = &config.tls {
        addresses.push((tls.listen, Scheme::Https));
    }
    for &(addr, _) in &addresses {
        listener::ensure_address_free(addr).map_err(|e| with_context(e, addr))?;
    }
    for warning in &config.warnings {
        tracing::warn!(%warning, "config");
    }
    let listen = config.listen;
    let pin = config.pin_cores;
    let shared = Shared::new(config, config_path, count);
    let snapshot = shared.snapshot();
    tracing::info!(
        %listen,
        workers = count,
        driver = crate::net::driver_name(),
        upstreams = snapshot.upstreams.groups.len(),
        backends = snapshot.upstreams.backends().count(),
        routes = snapshot.config.routes.len(),
        version = env!("CARGO_PKG_VERSION"),
        "starting ringproxy"
    );

    // Listeners and spare descriptors before the health and admin threads open anything, so
    // they hold low descriptor numbers: a spare freed when descriptors run out must be below
    // the limit to be of use, even if the limit is lowered while running (prlimit).
    let bound = bind_listeners(&addresses, count)?;
    let wake_fds: Vec<RawFd> = bound.iter().flat_map(|b| b.wake_fds.clone()).collect();

    crate::upstream::health::spawn(shared.clone())?;
    let limits_of = shared.clone();
    crate::limits::fleet::spawn(move || limits_of.snapshot().limits.with_store())?;
    admin::spawn(shared.clone())?;

    let (ready_tx, ready_rx) = mpsc::sync_channel(count);
    let mut handles = Vec::with_capacity(count);
    for (id, b) in bound.into_iter().enumerate() {
        let spec = worker::WorkerSpec {
            id,
            core: (pin && !cores.is_empty()).then(|| cores[id % cores.len()]),
            listeners: b.listeners,
            shared: shared.clone(),
            pipes: budget.pipes_per_worker,
            descriptors: budget.per_worker,
            spare: b.spare,
        };
        handles.push(worker::spawn(spec, ready_tx.clone())?);
    }
    for _ in 0..count {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("a worker exited during startup"))??;
    }
    match snapshot.config.tls.as_ref().map(|t| t.listen) {
        Some(tls) => tracing::info!(%listen, %tls, "ready: all workers listening"),
        None => tracing::info!(%listen, "ready: all workers listening"),
    }
    notify_systemd(&[sd_notify::NotifyState::Ready]);

    serve_signals(signals, &shared, handles, &wake_fds);
    for fd in wake_fds {
        // SAFETY: closing our own duplicates.
        unsafe { libc::close(fd) };
    }
    tracing::info!("stopped");
    Ok(())
}

/// One worker's listening sockets (plain, and TLS where configured), a duplicate of each kept
/// to wake its accept loop on shutdown (shutdown(2) on a listener ends a pending accept), and
/// its spare descriptor.
struct Bound {
    listeners: Vec<listener::Listener>,
    wake_fds: Vec<RawFd>,
    spare: Option<std::fs::File>,
}

fn bind_listeners(
    addresses: &[(std::net::SocketAddr, Scheme)],
    count: usize,
) -> io::Result<Vec<Bound>> {
    // Asked once now, not by the first connection of each worker.
    listener::accepted_sockets_have_nodelay();
    (0..count)
        .map(|_| {
            let mut bound = Bound {
                listeners: Vec::with_capacity(addresses.len()),
                wake_fds: Vec::with_capacity(addresses.len()),
                spare: None,
            };
            for &(addr, scheme) in addresses {
                let socket =
                    listener::bind_worker_socket(addr).map_err(|e| with_context(e, addr))?;
                // SAFETY: duplicating a descriptor we own.
                bound
                    .wake_fds
                    .push(unsafe { libc::dup(socket.as_raw_fd()) });
                bound.listeners.push(listener::Listener { socket, scheme });
            }
            bound.spare = worker::open_spare();
            Ok(bound)
        })
        .collect()
}

/// Until stopped: SIGHUP reloads; the first SIGTERM/SIGINT drains (wakes the accept loops and
/// waits for the workers in another thread), a second one exits at once.
fn serve_signals(
    mut signals: signal_hook::iterator::Signals,
    shared: &Shared,
    mut handles: Vec<std::thread::JoinHandle<()>>,
    wake_fds: &[RawFd],
) {
    let signal_handle = signals.handle();
    let mut waiter = None;
    for sig in signals.forever() {
        match sig {
            SIGHUP => reload(shared),
            _ if shared.is_draining() => {
                tracing::warn!(signal = sig, "second stop signal: exiting now");
                std::process::exit(1);
            }
            _ => {
                tracing::info!(signal = sig, "stopping: draining connections");
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                shared
                    .draining
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                for &fd in wake_fds {
                    // SAFETY: our own duplicate of a listening socket.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                let handles = std::mem::take(&mut handles);
                let signal_handle = signal_handle.clone();
                waiter = Some(std::thread::spawn(move || {
                    for h in handles {
                        let _ = h.join();
                    }
                    signal_handle.close();
                }));
            }
        }
    }
    if let Some(w) = waiter {
        let _ = w.join();
    }
}

fn reload(shared: &Shared) {
    tracing::info!("SIGHUP: reloading configuration");
    notify_systemd(&[
        sd_notify::NotifyState::Reloading,
        sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Custom("")),
    ]);
    if let Err(errors) = crate::reload::reload(shared) {
        for e in &errors {
            tracing::error!(error = %e, "reload refused; keeping the running configuration");
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd (`Type=notify`) about state changes; a no-op outside systemd.
pub fn notify_systemd(state: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(false, state);
}

/// Raises the open-files limit to what the configured connections need at worst, or lowers
/// Raises the open-files limit for the configured connections' worst case where it can, and
/// shares out what it got between the workers, which then admit work only within their share.
fn fit_descriptors(config: &ValidConfig, workers: usize) -> FdBudget {
    let groups = &config.groups;
    let demand = fd_budget::Demand {
        workers,
        backends: groups.iter().map(|g| g.backends.len()).sum(),
        max_idle_per_backend: groups
            .iter()
            .map(|g| g.settings.pool.max_idle_per_backend)
            .max()
            .unwrap_or(0),
    };
    let connections = config.limits.max_connections;
    let budget = fd_budget::fit(connections, &demand);
    tracing::info!(
        nofile = budget.nofile,
        workers,
        per_worker = budget.per_worker,
        pipes_per_worker = budget.pipes_per_worker,
        worst_case = budget.worst_case,
        "open-files budget: each worker counts what its connections hold (client, upstream, second descriptors, pipes) and takes on new work within its share"
    );
    if !budget.covers_worst_case() {
        tracing::info!(
            nofile = budget.nofile,
            max_connections = connections,
            worst_case = budget.worst_case,
            "the open-files limit is below the worst case of limits.max_connections (4 descriptors each); past the workers' shares new connections and upstream connections are shed with 503 (raise LimitNOFILE to avoid it)"
        );
    }
    budget
}

fn with_context(e: io::Error, addr: std::net::SocketAddr) -> io::Error {
    let what = if e.kind() == io::ErrorKind::AddrInUse {
        "address already in use".to_string()
    } else {
        e.to_string()
    };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {what}"))
}
