//! Process assembly: decide the workers and their cores, refuse an address already in use, bind
//! one listener per worker, start the health thread, the admin listener and the workers, then
//! handle signals: SIGHUP reloads, SIGTERM/SIGINT drain and stop (a second one stops at once).

use crate::config::ValidConfig;
use crate::state::Shared;
use crate::{admin, listener, worker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::mpsc;

/// Descriptors kept aside for listeners, logs, health probes and the like.
const RESERVED_FDS: usize = 256;
/// Share of the usable descriptors client connections may take when the limit cannot be raised.
const CLIENT_FD_SHARE: (usize, usize) = (3, 4);

/// Runs until stopped by a signal; returns once every worker has drained.
pub fn run(
    mut config: ValidConfig,
    config_path: PathBuf,
    workers_override: Option<usize>,
) -> io::Result<()> {
    // Handlers first: a SIGHUP or SIGTERM that arrives while starting is queued, not fatal.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let count = workers_override
        .or(config.workers)
        .unwrap_or_else(|| cores.len().max(1));
    config.limits.max_connections =
        fit_connections_to_fd_limit(config.limits.max_connections, count);
    listener::ensure_address_free(config.listen).map_err(|e| with_context(e, config.listen))?;
    let listen = config.listen;
    let pin = config.pin_cores;
    let shared = Shared::new(config, config_path, count);
    let snapshot = shared.snapshot();
    tracing::info!(
        %listen,
        workers = count,
        driver = worker::driver_name(),
        backends = snapshot.backends.len(),
        version = env!("CARGO_PKG_VERSION"),
        "starting ringproxy"
    );

    crate::upstream::health::spawn(shared.clone())?;
    admin::spawn(shared.clone())?;

    // Kept to wake the workers' accept loops on shutdown (shutdown(2) on a listener ends a
    // pending accept); duplicates, so they stay valid whatever the workers do.
    let mut wake_fds: Vec<RawFd> = Vec::with_capacity(count);
    let (ready_tx, ready_rx) = mpsc::sync_channel(count);
    let mut handles = Vec::with_capacity(count);
    for id in 0..count {
        let socket = listener::bind_worker_socket(listen).map_err(|e| with_context(e, listen))?;
        // SAFETY: duplicating a descriptor we own.
        wake_fds.push(unsafe { libc::dup(socket.as_raw_fd()) });
        let spec = worker::WorkerSpec {
            id,
            core: (pin && !cores.is_empty()).then(|| cores[id % cores.len()]),
            listener: socket,
            shared: shared.clone(),
        };
        handles.push(worker::spawn(spec, ready_tx.clone())?);
    }
    for _ in 0..count {
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("a worker exited during startup"))??;
    }
    tracing::info!(%listen, "ready: all workers listening");
    notify_systemd(&[sd_notify::NotifyState::Ready]);

    let signal_handle = signals.handle();
    let mut waiter = None;
    for sig in signals.forever() {
        match sig {
            SIGHUP => reload(&shared),
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
                for &fd in &wake_fds {
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
    for fd in wake_fds {
        // SAFETY: closing our own duplicates.
        unsafe { libc::close(fd) };
    }
    tracing::info!("stopped");
    Ok(())
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

/// Makes room for every client connection plus one upstream connection each: raises the soft
/// open-files limit, and the hard one too when privileged (like nginx's `worker_rlimit_nofile`,
/// up to `fs.nr_open`). If the limit still falls short, client connections may use at most
/// `CLIENT_FD_SHARE` of it, the rest staying for upstream connections (held only by requests in
/// flight and the bounded idle pool), so the cap is hit before accept runs out of descriptors.
fn fit_connections_to_fd_limit(max_connections: usize, workers: usize) -> usize {
    let wanted = (max_connections * 2 * workers.max(1) + RESERVED_FDS) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on stack structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return max_connections;
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
            lim.rlim_cur = lim.rlim_max.min(wanted);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let usable = (lim.rlim_cur as usize).saturating_sub(RESERVED_FDS);
    let fits = usable * CLIENT_FD_SHARE.0 / CLIENT_FD_SHARE.1 / workers.max(1);
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
