//! Harness shared by the end-to-end tests, one module per kit: the proxy process (`proxy`) and
//! its config (`config`); upstreams: scripted raw-socket ones (`backend`) and named ones with a
//! switchable health answer (`live_backend`); a strict HTTP/1.1 reader for both sides (`http`);
//! the admin API client (`admin`) and its Prometheus scrape (`metrics`); a steady keep-alive
//! load (`load`); a systemd notify socket (`notify`); smuggling probes (`smuggling`); TLS
//! certificates, clients and upstreams (`tls`); a real redis-server (`redis`); and here,
//! ports, the one polling wait, and small data helpers (patterns, hashes, RSS).

pub mod admin;
pub mod backend;
pub mod config;
pub mod http;
pub mod live_backend;
pub mod load;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod redis;
pub mod smuggling;
pub mod tls;

pub use backend::{chunked_response_bytes, response_bytes, Backend, Recorded, Reply};
pub use config::TestConfig;
pub use http::{get_request, request_bytes, response_framing, Framing, Head, HttpConn, Message};
pub use proxy::{check_config, log_field, run_to_exit, Proxy, RunOutcome, TempConfig, DRIVERS};

use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upper bound of every single wait in the suite (socket reads, readiness, process exit).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A port free on 127.0.0.1 for a proxy or admin listener, never given to two tests of this
/// process. Taken below the kernel's ephemeral range: a port picked by binding port 0 could be
/// handed by the kernel to any outgoing connection (the proxy's to its backends, a test
/// client's) before the proxy binds it, and the proxy then refuses the busy address. Two
/// proxies on one port would be worse: one test's client talking to another test's proxy.
pub fn free_port() -> u16 {
    const FIRST: u16 = 15_000;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ephemeral_low = ephemeral_range_low();
    let mut next = NEXT.lock().expect("port cursor");
    if ephemeral_low <= FIRST + 1000 {
        // No room below the ephemeral range: fall back to the kernel's pick.
        return kernel_picked_port();
    }
    let span = ephemeral_low - FIRST;
    // Test binaries run one after another; starting each at its own offset keeps a port a
    // previous binary left in TIME_WAIT out of the way.
    let cursor = next.get_or_insert_with(|| FIRST + (std::process::id() % u32::from(span)) as u16);
    for _ in 0..span {
        let port = *cursor;
        *cursor = if port + 1 >= ephemeral_low {
            FIRST
        } else {
            port + 1
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{ephemeral_low}");
}

/// Low end of `net.ipv4.ip_local_port_range` (32768 by default).
fn ephemeral_range_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Fallback: bind port 0, remember what was handed out so no port is given twice.
fn kernel_picked_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if GIVEN.lock().expect("port registry").insert(port) {
            return port;
        }
    }
}

/// A connection to the proxy on `port` from the local address `source` (any of 127.0.0.0/8 is
/// this machine), for tests of rules on the client's address.
pub fn connect_from(source: &str, port: u16) -> HttpConn {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let source: std::net::IpAddr = source.parse().expect("source address");
    socket
        .bind(&std::net::SocketAddr::new(source, 0).into())
        .expect("bind the source address");
    let proxy = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket
        .connect_timeout(&proxy.into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect from {source} to {proxy}: {e}"));
    HttpConn::new(socket.into())
}

/// A listening IPv4 socket on 127.0.0.1 with the given backlog, optionally SO_REUSEPORT,
/// for cases std's TcpListener can't express; returns it with its port.
pub fn raw_listener(reuse_port: bool, backlog: i32) -> (socket2::Socket, u16) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(reuse_port).expect("SO_REUSEPORT");
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(backlog).expect("listen");
    let port = socket
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet address")
        .port();
    (socket, port)
}

/// Calls `done` every 20 ms until it returns true and returns the time that took; `None` once
/// `limit` has passed without it. The one polling loop of the suite.
pub fn poll(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// As `poll`, for a condition that must come: panics after `limit` naming `what`.
pub fn wait_until(limit: Duration, what: &str, done: impl FnMut() -> bool) -> Duration {
    poll(limit, done).unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// `len` deterministic pseudo-random bytes; different seeds give different data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True when the error means the peer closed or reset the connection (not a timeout).
pub fn is_closed_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Resident set size of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// Peak resident set size of a process in KiB (`VmHWM`), so a brief peak cannot hide.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM")
}

/// A `<field>: N kB` line of /proc/<pid>/status.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} line in /proc status"))
}

/// Asserts the upstream request carried exactly `len` body bytes in a legal framing:
/// chunked without Content-Length, or Content-Length without Transfer-Encoding.
pub fn assert_upstream_body_framing(req: &Message, len: usize) {
    match req.framing {
        Framing::Chunked => assert!(
            !req.head.has("content-length"),
            "chunked with CL: {:?}",
            req.head
        ),
        Framing::Length(n) => {
            assert_eq!(n, len, "upstream Content-Length");
            assert!(!req.head.has("transfer-encoding"), "{:?}", req.head);
        }
        other => panic!("upstream request body framed as {other:?}: {:?}", req.head),
    }
}

/// POSTs 1 MiB with Content-Length through `proxy` to a `Backend::body_digest()` backend and
/// checks that the backend decoded exactly those bytes.
pub fn assert_large_post_arrives(proxy: &Proxy, backend: &Backend) {
    let body = pattern(1 << 20, 77);
    let expected = sha256_hex(&body);
    let mut conn = proxy.connect();
    let request = request_bytes(
        "POST",
        "/upload",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    let response = conn.roundtrip(&request);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text(), expected, "backend saw a different body");
    let received = backend.requests().pop().expect("an upstream request").req;
    assert_eq!(sha256_hex(&received.body), expected);
    assert_upstream_body_framing(&received, body.len());
}

/// Raises this process's soft open-files limit to at least `want` (within the hard limit).
pub fn raise_open_files_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "open-files limit {} (hard {}), need {want}",
        lim.rlim_cur,
        lim.rlim_max
    );
}
