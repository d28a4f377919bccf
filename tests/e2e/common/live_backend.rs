//! A named keep-alive upstream for the operations tests (health, balancing, admin, reload): it
//! answers with its name, its health path as told (`HealthReply`), `/slow`, `/hang` and
//! `/code/NNN` as scripted, records every hit, and can be killed and revived on its port.

use super::backend::{response_bytes, Backend};
use super::http::{HttpConn, Message};
use super::proxy::Proxy;
use super::{pattern, wait_until, IO_TIMEOUT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Body length of a `/slow` answer, large enough that a cut-off body cannot pass for whole.
pub const SLOW_BODY_LEN: usize = 256 * 1024;
/// Seed of the `/slow` body pattern.
pub const SLOW_BODY_SEED: u64 = 4242;
/// The health check path the proxy probes (its default).
pub const HEALTH_PATH: &str = "/health";

/// How a `LiveBackend` answers its health path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthReply {
    Ok,
    Status(u16),
    /// Accept and read the probe, never answer; hold it until the prober closes.
    Hang,
}

/// A request as a `LiveBackend` received it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    pub path: String,
    pub probe: bool,
}

struct LiveState {
    name: String,
    health: Mutex<HealthReply>,
    slow_delay: Duration,
    hits: Mutex<Vec<Hit>>,
    /// How long each hanging probe was held before the prober closed it.
    hung_probes: Mutex<Vec<Duration>>,
}

/// A keep-alive test upstream that can be killed (listener closed, open connections cut, as
/// when its process dies) and revived on the same port.
///
/// Paths: `/health` answers per `HealthReply`; `/slow...` waits `slow_delay` then answers 200
/// with `SLOW_BODY_LEN` pattern bytes; `/hang...` never answers; `/code/NNN` answers status
/// NNN; anything else 200. Every answer carries `X-Backend: <name>` and the name as body.
pub struct LiveBackend {
    pub port: u16,
    backend: Backend,
    state: Arc<LiveState>,
}

impl LiveBackend {
    pub fn start(name: &str) -> LiveBackend {
        LiveBackend::with_delay(name, Duration::from_secs(1))
    }

    pub fn with_delay(name: &str, slow_delay: Duration) -> LiveBackend {
        let state = Arc::new(LiveState {
            name: name.to_string(),
            health: Mutex::new(HealthReply::Ok),
            slow_delay,
            hits: Mutex::new(Vec::new()),
            hung_probes: Mutex::new(Vec::new()),
        });
        let serving = state.clone();
        let backend = Backend::killable(move |conn, _| serve_live(conn, &serving));
        LiveBackend {
            port: backend.port,
            backend,
            state,
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn url(&self) -> String {
        backend_url(self.port)
    }

    pub fn set_health(&self, reply: HealthReply) {
        *self.state.health.lock().expect("health lock") = reply;
    }

    /// Closes the listener (new connects are refused) and cuts every open connection.
    pub fn kill(&mut self) {
        self.backend.kill();
    }

    /// Listens on the same port again.
    pub fn revive(&mut self) {
        self.backend.revive();
    }

    /// Every request received, probes included, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("hits lock").clone()
    }

    /// Health probes received.
    pub fn probes(&self) -> usize {
        self.hits().iter().filter(|h| h.probe).count()
    }

    /// Regular (non-probe) requests received.
    pub fn requests(&self) -> usize {
        self.hits().iter().filter(|h| !h.probe).count()
    }

    /// Regular requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> usize {
        self.hits()
            .iter()
            .filter(|h| !h.probe && h.path.starts_with(prefix))
            .count()
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.backend.open_connections()
    }

    /// How long each hanging probe was held open by the prober, in order.
    pub fn hung_probes(&self) -> Vec<Duration> {
        self.state.hung_probes.lock().expect("hung lock").clone()
    }

    /// Waits until `count` probes in total have arrived.
    pub fn wait_probes(&self, count: usize) {
        wait_until(
            IO_TIMEOUT,
            &format!("{count} probes to {}", self.name()),
            || self.probes() >= count,
        );
    }
}

fn serve_live(mut conn: HttpConn, state: &LiveState) {
    while let Ok(Some(req)) = conn.read_request() {
        let path = req.head.target().to_string();
        let probe = path == HEALTH_PATH;
        state.hits.lock().expect("hits lock").push(Hit {
            at: Instant::now(),
            path: path.clone(),
            probe,
        });
        let name = state.name.as_str();
        let reply = if probe {
            match *state.health.lock().expect("health lock") {
                HealthReply::Ok => live_response(200, name, name.as_bytes()),
                HealthReply::Status(code) => live_response(code, name, b"sick"),
                HealthReply::Hang => {
                    let held = Instant::now();
                    let _ = conn.read_to_close();
                    state
                        .hung_probes
                        .lock()
                        .expect("hung lock")
                        .push(held.elapsed());
                    return;
                }
            }
        } else if path.starts_with("/slow") {
            thread::sleep(state.slow_delay);
            live_response(200, name, &pattern(SLOW_BODY_LEN, SLOW_BODY_SEED))
        } else if path.starts_with("/hang") {
            let _ = conn.read_to_close();
            return;
        } else if let Some(code) = path.strip_prefix("/code/") {
            live_response(code.parse().expect("status code"), name, name.as_bytes())
        } else {
            live_response(200, name, name.as_bytes())
        };
        if conn.try_send(&reply).is_err() {
            return;
        }
    }
}

fn live_response(code: u16, name: &str, body: &[u8]) -> Vec<u8> {
    response_bytes(&format!("{code} Test"), &[("X-Backend", name)], body)
}

/// `http://127.0.0.1:<port>`, the form the proxy reports backends in.
pub fn backend_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Which `LiveBackend` answered: the name in its `X-Backend` header.
pub fn backend_of(response: &Message) -> String {
    response
        .header("x-backend")
        .unwrap_or_else(|| panic!("no X-Backend header: {:?}", response.head))
        .to_string()
}

/// `GET path` on `conn`, which must be answered 200; returns which backend answered.
pub fn get_backend(conn: &mut HttpConn, path: &str) -> String {
    backend_of(&conn.get_ok(path))
}

/// Sends `count` GETs over one keep-alive connection (all must be 200) and counts them per
/// answering backend.
pub fn spread(proxy: &Proxy, count: usize) -> HashMap<String, usize> {
    let mut conn = proxy.connect();
    let mut counts = HashMap::new();
    for i in 0..count {
        *counts
            .entry(get_backend(&mut conn, &format!("/spread/{i}")))
            .or_insert(0) += 1;
    }
    counts
}
