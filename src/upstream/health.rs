//! Active health checks: one dedicated thread with its own small monoio runtime, one task per
//! backend sending `GET <health_check_path>` every interval (over TLS to an `https://` one), or,
//! without a path, opening a TCP connection. Results go through a fall/rise
//! tracker (HAProxy's semantics) and are published as the backend's `up` atomic, which every
//! worker reads on each pick. This thread is the only writer of active-check results.
//!
//! A probe that cannot get a socket (the process is out of descriptors) is skipped, not failed:
//! the shortage is logged once when it starts and when it ends, and no backend changes state.
//!
//! Startup: a backend starts up (HAProxy's default `init-state up`) and is probed at once; until it
//! has passed one check a single failure takes it down, so a dead backend gets no flood first.

use super::backend::ProbeResult;
use super::Backend;
use crate::config::{HealthSettings, ProxyHeader};
use crate::net::fd_budget::{self, FdOp};
use crate::net::proxy_protocol;
use crate::net::stream::UpstreamStream;
use crate::net::tls::TlsStream;
use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most bytes read looking for a health response's status line and head.
const MAX_PROBE_HEAD: usize = 16 * 1024;
const PROBE_READ_BOUND: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackerState {
    /// Not checked yet: counted as up, one failure takes it down.
    Initial,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    WentUp,
}

/// Consecutive-result counting: down after `fall` failures, up after `rise` successes.
#[derive(Debug)]
pub struct HealthTracker {
    state: TrackerState,
    streak: u32,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            state: TrackerState::Initial,
            streak: 0,
        }
    }
}

impl HealthTracker {
    pub fn is_up(&self) -> bool {
        self.state != TrackerState::Down
    }

    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        let (state, streak, transition) = match (self.state, ok) {
            (TrackerState::Initial, true) => (TrackerState::Up, 0, None),
            (TrackerState::Initial, false) => (TrackerState::Down, 0, Some(Transition::WentDown)),
            (TrackerState::Up, true) => (TrackerState::Up, 0, None),
            (TrackerState::Up, false) if self.streak + 1 >= fall => {
                (TrackerState::Down, 0, Some(Transition::WentDown))
            }
            (TrackerState::Up, false) => (TrackerState::Up, self.streak + 1, None),
            (TrackerState::Down, false) => (TrackerState::Down, 0, None),
            (TrackerState::Down, true) if self.streak + 1 >= rise => {
                (TrackerState::Up, 0, Some(Transition::WentUp))
            }
            (TrackerState::Down, true) => (TrackerState::Down, self.streak + 1, None),
        };
        self.state = state;
        self.streak = streak;
        transition
    }
}

/// How often the health thread looks for a reloaded backend set.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(200);
/// While checks are disabled, how often a checker looks whether a reload enabled them.
const DISABLED_RECHECK: Duration = Duration::from_secs(1);

/// What the health thread checks, as the configuration in force has it: every backend with the
/// health settings that apply to it. The process state implements it, so this module needs
/// nothing above it.
pub trait Checked: Send + Sync + 'static {
    /// The configuration generation: when it changes, `targets` may have changed.
    fn generation(&self) -> u64;
    /// Every backend to check, with its settings.
    fn targets(&self) -> Vec<(Arc<Backend>, HealthSettings)>;
}

/// The backends being checked, by id, with their current settings; shared by the checker tasks
/// of the health thread (one thread: plain `Rc<RefCell>`). A backend gone from it stops its
/// checker.
type Watched = Rc<RefCell<HashMap<u64, HealthSettings>>>;

/// Starts the health thread. It follows reloads: new backends get a checker, removed ones lose it.
pub fn spawn(checked: Arc<dyn Checked>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build();
            match runtime {
                Ok(mut rt) => rt.block_on(supervise(checked)),
                Err(e) => tracing::error!(error = %e, "health checks cannot start: no runtime"),
            }
        })?;
    Ok(())
}

async fn supervise(checked: Arc<dyn Checked>) {
    let mut seen_generation = 0;
    let watched: Watched = Rc::default();
    loop {
        let generation = checked.generation();
        if generation != seen_generation {
            seen_generation = generation;
            let targets = checked.targets();
            let mut current = watched.borrow_mut();
            current.retain(|id, _| targets.iter().any(|(b, _)| b.id == *id));
            for (backend, settings) in targets {
                let new = current.insert(backend.id, settings).is_none();
                if new {
                    monoio::spawn(check_forever(watched.clone(), backend));
                }
            }
        }
        monoio::time::sleep(SUPERVISE_INTERVAL).await;
    }
}

async fn check_forever(watched: Watched, backend: Arc<Backend>) {
    let mut tracker = HealthTracker::default();
    loop {
        let Some(settings) = watched.borrow().get(&backend.id).cloned() else {
            return; // removed by a reload
        };
        if !settings.enabled {
            // No probes; a backend is not held down by checks that no longer run.
            backend.set_up(true);
            tracker = HealthTracker::default();
            monoio::time::sleep(DISABLED_RECHECK).await;
            continue;
        }
        let started = Instant::now();
        let result = probe(&backend, settings.timeout, settings.proxy_header).await;
        if result == ProbeResult::Skipped {
            // A shortage here, not a verdict on the backend: its state stays as it is.
            monoio::time::sleep(settings.interval.saturating_sub(started.elapsed())).await;
            continue;
        }
        let ok = match result {
            ProbeResult::Status(s) => settings.expects(s),
            ProbeResult::Connected => true,
            _ => false,
        };
        backend.set_last_check(&result, ok);
        match tracker.record(ok, settings.success_threshold, settings.failure_threshold) {
            Some(Transition::WentDown) => {
                tracing::warn!(backend = %backend.url, reason = %result, "backend is down (health check)")
            }
            Some(Transition::WentUp) => {
                tracing::info!(backend = %backend.url, "backend is up (health check)")
            }
            None => {}
        }
        backend.set_up(tracker.is_up());
        // Checks start every `interval`, however long each took.
        monoio::time::sleep(settings.interval.saturating_sub(started.elapsed())).await;
    }
}

/// One check bounded by `timeout` as a whole: a `GET <health_check_path>` and its status, or,
/// without a path, whether a TCP connection can be made (HAProxy's `check` without
/// `option httpchk`): a backend need not serve a health URL to be checked. An HTTP check
/// starts with `proxy_header`'s `LOCAL` header, for backends that expect one on every
/// connection.
async fn probe(
    backend: &Backend,
    timeout: Duration,
    proxy_header: Option<ProxyHeader>,
) -> ProbeResult {
    match monoio::time::timeout(timeout, probe_unbounded(backend, proxy_header)).await {
        Ok(result) => result,
        Err(_) => ProbeResult::Timeout,
    }
}

async fn probe_unbounded(backend: &Backend, proxy_header: Option<ProxyHeader>) -> ProbeResult {
    let connected = TcpStream::connect_addr(backend.addr).await;
    let mut stream = match fd_budget::note(FdOp::HealthCheck, connected) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return ProbeResult::Refused,
        Err(e) if fd_budget::is_exhaustion(&e) => return ProbeResult::Skipped,
        Err(e) => return ProbeResult::Failed(format!("connect: {e}")),
    };
    let Some(path) = &backend.health_check_path else {
        return ProbeResult::Connected;
    };
    // A backend that expects a PROXY protocol header gets a LOCAL one first, on the socket
    // itself (before any TLS), as HAProxy's checks do.
    if let Some(h) = proxy_header {
        let header = proxy_protocol::local_header(super::proxy_version(h));
        if let (Err(e), _) = stream.write_all(header).await {
            return ProbeResult::Failed(format!("write: {e}"));
        }
    }
    // An `https://` backend is asked over TLS, verified as for requests.
    let mut stream = match backend.tls() {
        None => UpstreamStream::Plain(stream),
        Some(tls) => {
            let (config, name) = (tls.config.clone(), tls.server_name.clone());
            let deadline = Instant::now() + PROBE_READ_BOUND;
            match TlsStream::connect(stream, config, name, deadline).await {
                Ok(s) => UpstreamStream::Tls(s),
                Err(e) => return ProbeResult::Failed(format!("TLS handshake: {e}")),
            }
        }
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringproxy-health\r\nConnection: close\r\n\r\n",
        backend.addr
    )
    .into_bytes();
    if let (Err(e), _) = stream.write_all(request).await {
        return ProbeResult::Failed(format!("write: {e}"));
    }
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match crate::http::response::status_of(&buf) {
            Ok(Some(status)) => return ProbeResult::Status(status),
            Ok(None) if buf.len() < MAX_PROBE_HEAD => {}
            _ => return ProbeResult::Failed("malformed response".into()),
        }
        // The caller's timeout bounds the whole probe; this one only has to be finite.
        match crate::net::io::read_more(&mut stream, &mut buf, 1024, PROBE_READ_BOUND).await {
            Ok(0) => return ProbeResult::Failed("closed before a response".into()),
            Ok(_) => {}
            Err(e) => return ProbeResult::Failed(format!("read: {e:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_fall_failures_up_after_rise_successes() {
        let mut t = HealthTracker::default();
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert!(t.is_up());
        assert_eq!(t.record(false, 2, 3), Some(Transition::WentDown));
        assert!(!t.is_up());
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(
            t.record(false, 2, 3),
            None,
            "a failure resets the rise count"
        );
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), Some(Transition::WentUp));
    }

    #[test]
    fn success_resets_the_fall_count() {
        let mut t = HealthTracker::default();
        t.record(true, 2, 2);
        t.record(false, 2, 2);
        t.record(true, 2, 2);
        assert_eq!(t.record(false, 2, 2), None);
        assert_eq!(t.record(false, 2, 2), Some(Transition::WentDown));
    }

    #[test]
    fn first_check_failing_takes_backend_down_at_once() {
        let mut t = HealthTracker::default();
        assert!(t.is_up());
        assert_eq!(t.record(false, 2, 3), Some(Transition::WentDown));
    }

    #[test]
    fn thresholds_of_one() {
        let mut t = HealthTracker::default();
        t.record(true, 1, 1);
        assert_eq!(t.record(false, 1, 1), Some(Transition::WentDown));
        assert_eq!(t.record(true, 1, 1), Some(Transition::WentUp));
    }
}
