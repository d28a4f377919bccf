//! Helpers for the operations tests (health, admin and metrics, reload and shutdown): a backend
//! that can be killed and revived on its port with a switchable health answer, an admin API
//! client with a Prometheus parser, a steady keep-alive load counting failures, signals, and a
//! `NOTIFY_SOCKET` listener standing in for systemd.

use super::http::{get_request, HttpConn, Message};
use super::proxy::{config_toml, Proxy};
use super::{free_port, is_closed_error, pattern, IO_TIMEOUT};
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Body length of a `/slow` answer, large enough that a cut-off body cannot pass for whole.
pub const SLOW_BODY_LEN: usize = 256 * 1024;
/// Seed of the `/slow` body pattern.
pub const SLOW_BODY_SEED: u64 = 4242;
/// The health check path the proxy probes (its default).
pub const HEALTH_PATH: &str = "/health";

// ---------------------------------------------------------------------------------------------
// Configs and processes

/// A health section with the given interval, timeout and thresholds (all active).
pub fn health_toml(interval: f64, timeout: f64, fall: u32, rise: u32) -> String {
    format!(
        "[health_checks]\nenabled = true\ninterval_seconds = {interval}\ntimeout_seconds = {timeout}\n\
         failure_threshold = {fall}\nsuccess_threshold = {rise}\n\n"
    )
}

/// An `[admin]` section on `port`, with a bearer token if given.
pub fn admin_toml(port: u16, token: Option<&str>) -> String {
    let mut toml = format!("[admin]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n");
    if let Some(token) = token {
        toml.push_str(&format!("token = \"{token}\"\n"));
    }
    toml.push('\n');
    toml
}

/// Adds `lines` (e.g. `shutdown_timeout_seconds = 1`) to the `[server]` section of a config
/// made by `config_toml`, and sets its worker count.
pub fn with_server(toml: &str, workers: usize, lines: &str) -> String {
    let anchor = "workers = 1\npin_cores = false\n";
    assert!(toml.contains(anchor), "unexpected base config:\n{toml}");
    toml.replacen(
        anchor,
        &format!("workers = {workers}\npin_cores = false\n{lines}"),
        1,
    )
}

/// Two different free ports: the proxy's and the admin listener's.
pub fn two_ports() -> (u16, u16) {
    let proxy = free_port();
    loop {
        let admin = free_port();
        if admin != proxy {
            return (proxy, admin);
        }
    }
}

/// What `OpsConfig::start` runs: the backends, the extra TOML, workers and `[server]` lines.
#[derive(Clone, Copy)]
pub struct OpsConfig<'a> {
    pub backends: &'a [(u16, u32)],
    pub extra: &'a str,
    pub workers: usize,
    pub server: &'a str,
    pub token: Option<&'a str>,
    pub env: &'a [(&'a str, &'a str)],
}

impl<'a> OpsConfig<'a> {
    pub fn new(backends: &'a [(u16, u32)], extra: &'a str) -> Self {
        OpsConfig {
            backends,
            extra,
            workers: 1,
            server: "",
            token: None,
            env: &[],
        }
    }

    /// The full config file text for the proxy on `port` with admin on `admin_port`.
    pub fn toml(&self, port: u16, admin_port: u16) -> String {
        let extra = format!("{}{}", admin_toml(admin_port, self.token), self.extra);
        with_server(
            &config_toml(port, self.backends, &extra),
            self.workers,
            self.server,
        )
    }

    /// Starts the proxy with the admin API on a port of its own.
    pub fn start(&self) -> (Proxy, Admin) {
        let (port, admin_port) = two_ports();
        let proxy = Proxy::launch(port, &self.toml(port, admin_port), &[], self.env);
        let admin = Admin {
            port: admin_port,
            token: self.token.map(str::to_string),
        };
        (proxy, admin)
    }
}

/// Proxy with weight-1 `backends`, `extra` TOML and the admin API; one worker.
pub fn start_with_admin(backends: &[u16], extra: &str) -> (Proxy, Admin) {
    let weighted: Vec<(u16, u32)> = backends.iter().map(|&p| (p, 1)).collect();
    OpsConfig::new(&weighted, extra).start()
}

/// `http://127.0.0.1:<port>`, the form the proxy reports backends in.
pub fn backend_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Sends `signal` to the proxy without waiting.
pub fn send_signal(proxy: &Proxy, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(proxy.pid()).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Waits (up to 10 s) for the proxy to exit by itself: the null signal 0 checks that the
/// process exists and delivers nothing, so no second stop signal is sent.
pub fn wait_for_exit(proxy: &mut Proxy) -> ExitStatus {
    proxy.signal_and_wait(0)
}

/// True when a new client connection to `port` is refused: connect fails, or the connection
/// is closed or reset before any response to a GET. False when a response (or nothing) comes.
pub fn connection_refused(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return true;
    };
    let mut conn = HttpConn::new(stream);
    conn.stream()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("set_read_timeout");
    if conn.try_send(&get_request("/after-stop")).is_err() {
        return true;
    }
    match conn.read_response("GET") {
        Ok(_) => false,
        Err(e) => is_closed_error(&e),
    }
}

/// Polls `done` every 20 ms until it returns true or `limit` passes; returns the time it took.
pub fn wait_within(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
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

// ---------------------------------------------------------------------------------------------
// A killable backend

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
    /// Clones of the open connections by accept index, so `kill` can cut them.
    open: Mutex<HashMap<usize, TcpStream>>,
    active: AtomicUsize,
    accepted: AtomicUsize,
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
    state: Arc<LiveState>,
    listener: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl LiveBackend {
    pub fn start(name: &str) -> LiveBackend {
        LiveBackend::with_delay(name, Duration::from_secs(1))
    }

    pub fn with_delay(name: &str, slow_delay: Duration) -> LiveBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind live backend");
        let port = listener.local_addr().expect("local_addr").port();
        let state = Arc::new(LiveState {
            name: name.to_string(),
            health: Mutex::new(HealthReply::Ok),
            slow_delay,
            hits: Mutex::new(Vec::new()),
            open: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            hung_probes: Mutex::new(Vec::new()),
        });
        let mut backend = LiveBackend {
            port,
            state,
            listener: None,
        };
        backend.serve(listener);
        backend
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
        if let Some((stop, handle)) = self.listener.take() {
            stop.store(true, Ordering::SeqCst);
            handle.join().expect("live backend accept thread");
        }
        for (_, stream) in self.state.open.lock().expect("open lock").drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again.
    pub fn revive(&mut self) {
        assert!(self.listener.is_none(), "backend {} is alive", self.name());
        let deadline = Instant::now() + IO_TIMEOUT;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding port {}: {e}; retrying", self.port);
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot rebind port {}: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, state) = (stop.clone(), self.state.clone());
        let handle = thread::spawn(move || accept_loop(&listener, &flag, &state));
        self.listener = Some((stop, handle));
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

    /// Connections accepted so far (all lives of the backend).
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// How long each hanging probe was held open by the prober, in order.
    pub fn hung_probes(&self) -> Vec<Duration> {
        self.state.hung_probes.lock().expect("hung lock").clone()
    }

    /// Waits until `count` probes in total have arrived.
    pub fn wait_probes(&self, count: usize) {
        wait_within(
            IO_TIMEOUT,
            &format!("{count} probes to {}", self.name()),
            || self.probes() >= count,
        );
    }
}

impl Drop for LiveBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, state: &Arc<LiveState>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                let index = state.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    state.open.lock().expect("open lock").insert(index, clone);
                }
                state.active.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                thread::spawn(move || {
                    serve_live(HttpConn::new(stream), &state);
                    state.open.lock().expect("open lock").remove(&index);
                    state.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
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
    let mut out = format!(
        "HTTP/1.1 {code} Test\r\nX-Backend: {name}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------
// Admin API client and metrics

/// Client of the proxy's admin listener; one request per connection, as the server does.
pub struct Admin {
    pub port: u16,
    pub token: Option<String>,
}

impl Admin {
    /// `method path` with `body`, with the given `Authorization` header value (if any), as a
    /// script would send it: `Host` the admin's address, a JSON body type when there is a body.
    pub fn request_with_auth(
        &self,
        method: &str,
        path: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Message {
        let host = format!("127.0.0.1:{}", self.port);
        let mut headers = vec![("Host", host.as_str())];
        if let Some(value) = authorization {
            headers.push(("Authorization", value));
        }
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.send_raw(&admin_request_bytes(
            method,
            path,
            &headers,
            body.as_bytes(),
        ))
    }

    /// Sends `request` as it is on a new connection and reads the answer.
    pub fn send_raw(&self, request: &[u8]) -> Message {
        let method = String::from_utf8_lossy(request);
        let method = method.split(' ').next().unwrap_or("GET");
        let mut conn = HttpConn::connect(self.port);
        conn.send(request);
        conn.read_response(method)
            .unwrap_or_else(|e| panic!("admin {method}: no response: {e}"))
    }

    /// `method path` with `body`, carrying the token when there is one.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Message {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        self.request_with_auth(method, path, body, auth.as_deref())
    }

    pub fn get(&self, path: &str) -> Message {
        self.request("GET", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> Message {
        self.request("POST", path, body)
    }

    /// `GET /status` as JSON (must be 200).
    pub fn status(&self) -> serde_json::Value {
        let response = self.get("/status");
        assert_eq!(response.status(), 200, "/status: {response:?}");
        json_body(&response)
    }

    /// The `/status` entry of backend `index`.
    pub fn backend(&self, index: usize) -> serde_json::Value {
        let status = self.status();
        status["backends"][index].clone()
    }

    /// Waits (up to `limit`) until backend `index` reports `up == want`; returns the wait.
    pub fn wait_up(&self, index: usize, want: bool, limit: Duration) -> Duration {
        wait_within(limit, &format!("backend {index} up = {want}"), || {
            self.backend(index)["up"] == want
        })
    }

    /// `GET /metrics`, checked line by line and parsed with a Prometheus text parser.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics");
        assert_eq!(response.status(), 200, "/metrics: {response:?}");
        let content_type = response.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("text/plain"),
            "metrics content type {content_type:?}"
        );
        Metrics::parse(&response.text())
    }
}

/// An admin request with exactly these `headers` (no `Host` unless given) and `Connection:
/// close`, and a Content-Length when there is a body or the method is POST.
pub fn admin_request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A response body as JSON.
pub fn json_body(response: &Message) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", response.text()))
}

/// One scrape of `/metrics`.
pub struct Metrics {
    pub text: String,
    pub scrape: prometheus_parse::Scrape,
}

impl Metrics {
    /// Parses the exposition text; every non-empty line must be a recognised comment or sample.
    pub fn parse(text: &str) -> Metrics {
        use prometheus_parse::LineInfo;
        for line in text.lines() {
            match LineInfo::parse(line) {
                LineInfo::Ignored => panic!("unparseable metrics line {line:?}"),
                LineInfo::Sample { value, .. } => assert!(
                    value.parse::<f64>().is_ok(),
                    "metrics line with a non-numeric value: {line:?}"
                ),
                _ => {}
            }
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parse metrics");
        Metrics {
            text: text.to_string(),
            scrape,
        }
    }

    /// Samples of metric `name` whose labels include `labels`.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&prometheus_parse::Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect()
    }

    /// The value of the one sample of `name` with `labels` (counter, gauge or untyped).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.samples(name, labels);
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name}{labels:?}, found {found:?}\n{}",
            self.text
        );
        match &found[0].value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    /// The buckets of histogram `name`.
    pub fn histogram(&self, name: &str) -> Vec<prometheus_parse::HistogramCount> {
        let found = self.samples(name, &[]);
        assert_eq!(found.len(), 1, "histogram {name}: {found:?}");
        match &found[0].value {
            prometheus_parse::Value::Histogram(buckets) => buckets.clone(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Steady load

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

// ---------------------------------------------------------------------------------------------
// sd_notify

/// A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`.
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    socket: UnixDatagram,
    /// Every message received so far, in order.
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        NotifySocket {
            _dir: dir,
            path,
            socket,
            received: Vec::new(),
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// Reads messages in order until one has the line `line` (e.g. `READY=1`) and returns it;
    /// panics after 10 s, listing what came.
    pub fn expect_line(&mut self, line: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.received.push(message.clone());
                    if message.lines().any(|l| l == line) {
                        return message;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} notification within {IO_TIMEOUT:?}; received {:?}",
                self.received
            );
        }
    }
}

/// CLOCK_MONOTONIC now, in microseconds (what `MONOTONIC_USEC` must be close to).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    u64::try_from(ts.tv_sec).expect("non-negative") * 1_000_000
        + u64::try_from(ts.tv_nsec).expect("non-negative") / 1000
}
