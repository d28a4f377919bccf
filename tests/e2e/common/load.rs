//! A steady keep-alive load: client threads sending GETs to the proxy until stopped, recording
//! when each finished and which `LiveBackend` answered or what failed, for the tests of
//! reloads, drains and dying backends that must not cost a request.

use super::http::{get_request, HttpConn};
use super::live_backend::backend_of;
use super::IO_TIMEOUT;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One request of a load client: when it finished, and which backend answered or what failed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub client: usize,
    /// The request's path, unique per request (`/load/<client>/<n>`).
    pub path: String,
    pub at: Instant,
    pub result: Result<String, String>,
}

/// Client threads each sending GETs on a keep-alive connection until stopped (or 30 s).
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

/// Longest a load runs even if the test forgets to stop it.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

impl Load {
    /// Starts `clients` threads against `port`, pausing `pause` between requests.
    pub fn start(port: u16, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|client| {
                let stop = stop.clone();
                thread::spawn(move || load_client(port, client, pause, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut outcomes: Vec<Outcome> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("load client thread"))
            .collect();
        outcomes.sort_by_key(|o| o.at);
        LoadReport { outcomes }
    }
}

fn load_client(port: u16, client: usize, pause: Duration, stop: &AtomicBool) -> Vec<Outcome> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut conn: Option<HttpConn> = None;
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_LIMIT {
        i += 1;
        let path = format!("/load/{client}/{i}");
        let result = one_load_request(port, &mut conn, &path);
        outcomes.push(Outcome {
            client,
            path,
            at: Instant::now(),
            result,
        });
        thread::sleep(pause);
    }
    outcomes
}

fn one_load_request(port: u16, conn: &mut Option<HttpConn>, path: &str) -> Result<String, String> {
    if conn.is_none() {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream =
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        *conn = Some(HttpConn::new(stream));
    }
    let c = conn.as_mut().expect("connection");
    let outcome = c
        .try_send(&get_request(path))
        .and_then(|()| c.read_response("GET"));
    let response = match outcome {
        Ok(response) => response,
        Err(e) => {
            *conn = None;
            return Err(format!("{path}: {e}"));
        }
    };
    if response.head.connection_has("close") {
        *conn = None;
    }
    if response.status() != 200 {
        return Err(format!(
            "{path}: status {} {:?}",
            response.status(),
            response.text()
        ));
    }
    Ok(backend_of(&response))
}

/// Everything a load saw, in order of completion.
pub struct LoadReport {
    pub outcomes: Vec<Outcome>,
}

impl LoadReport {
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// Answers per backend among the requests that finished after `since`.
    pub fn counts_since(&self, since: Instant) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for o in self.outcomes.iter().filter(|o| o.at > since) {
            if let Ok(backend) = &o.result {
                *counts.entry(backend.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Asserts no request failed, showing the first failures otherwise.
    pub fn assert_no_failures(&self) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed, first ones: {:#?}",
            failures.len(),
            self.outcomes.len(),
            &failures[..failures.len().min(5)]
        );
    }

    /// Asserts each of `clients` clients finished at least one request after `since`.
    pub fn assert_every_client_active_after(&self, clients: usize, since: Instant) {
        for client in 0..clients {
            assert!(
                self.outcomes
                    .iter()
                    .any(|o| o.client == client && o.at > since),
                "load client {client} made no request after the event"
            );
        }
    }
}

/// What a paced load got: requests admitted (200) and refused (429), and the span from the
/// first request sent to the last.
pub struct Paced {
    pub admitted: u32,
    pub refused: u32,
    pub span: Duration,
}

impl Paced {
    /// How far the admitted count is from what a limit of `rate` per second and `burst` allows
    /// over the span (a fraction, signed), printed with `what`.
    pub fn error_against(&self, rate: f64, burst: u64, what: &str) -> f64 {
        let expected = burst as f64 + rate * self.span.as_secs_f64();
        let error = (f64::from(self.admitted) - expected) / expected;
        eprintln!(
            "{what}: {} admitted, {} refused in {:?}; the limit allows {expected:.0}: {:+.2}%",
            self.admitted,
            self.refused,
            self.span,
            error * 100.0
        );
        error
    }
}

/// Offers `per_second` GETs of `path` in all over `conns` (keep-alive, each connection its
/// share on a fixed schedule, catching up when late, so the offered rate holds however the
/// threads are scheduled) for `run`. Any status but 200 and 429 fails.
pub fn paced(conns: Vec<HttpConn>, per_second: f64, run: Duration, path: &str) -> Paced {
    let count = conns.len();
    let gap = Duration::from_secs_f64(count as f64 / per_second);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(count));
    let clients: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (barrier, path) = (barrier.clone(), path.to_string());
            thread::spawn(move || {
                barrier.wait();
                let start = Instant::now() + gap.mul_f64(i as f64 / count as f64);
                let (mut ok, mut refused, mut n, mut last) = (0, 0, 0, start);
                while start + gap * n < start + run {
                    let due = start + gap * n;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    last = Instant::now();
                    match conn
                        .roundtrip(&get_request(&format!("{path}{i}/{n}")))
                        .status()
                    {
                        200 => ok += 1,
                        429 => refused += 1,
                        other => panic!("status {other}"),
                    }
                    n += 1;
                }
                (ok, refused, start, last)
            })
        })
        .collect();
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let first = results.iter().map(|r| r.2).min().expect("clients");
    let last = results.iter().map(|r| r.3).max().expect("clients");
    Paced {
        admitted: results.iter().map(|r| r.0).sum(),
        refused: results.iter().map(|r| r.1).sum(),
        span: last - first,
    }
}
