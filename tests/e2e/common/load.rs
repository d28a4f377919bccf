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
