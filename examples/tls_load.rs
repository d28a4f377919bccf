//! TLS load for `bench/compare.sh`: a new TLS connection per request, each a full handshake or
//! (`--resume`) resumed with a session ticket, the one load wrk and oha cannot be told to make.
//! Prints a `BENCH_JSON` line as `bench/lib/wrk_report.lua` does, for `bench/lib/run_load.py`.
//!
//! `cargo run --release --example tls_load -- --port 3443 --path /small --connections 16
//!  --seconds 10 [--resume] [--groups X25519,X25519MLKEM768]`

use ringproxy::config::tls::NoVerification;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    port: u16,
    path: String,
    connections: usize,
    seconds: u64,
    resume: bool,
    groups: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        port: 3443,
        path: "/small".into(),
        connections: 16,
        seconds: 10,
        resume: false,
        groups: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--port" => a.port = value().parse().expect("port"),
            "--path" => a.path = value(),
            "--connections" => a.connections = value().parse().expect("connections"),
            "--seconds" => a.seconds = value().parse().expect("seconds"),
            "--resume" => a.resume = true,
            "--groups" => a.groups = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn config(a: &Args) -> Arc<ClientConfig> {
    let mut provider = aws_lc_rs::default_provider();
    if let Some(names) = &a.groups {
        provider.kx_groups = names
            .split(',')
            .map(|n| {
                *aws_lc_rs::ALL_KX_GROUPS
                    .iter()
                    .find(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(n))
                    .unwrap_or_else(|| panic!("unknown group {n}"))
            })
            .collect();
    }
    let provider = Arc::new(provider);
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        // The bench's certificate is self-signed: accepted, its signatures still checked.
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !a.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    resumed: AtomicU64,
    err_connect: AtomicU64,
    err_read: AtomicU64,
    non2xx: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

/// One request on a new connection: handshake, request, response until the server closes.
fn one(a: &Args, config: &Arc<ClientConfig>, request: &[u8], t: &Totals) -> Result<(), ()> {
    let mut tcp = TcpStream::connect(("127.0.0.1", a.port)).map_err(|_| {
        t.err_connect.fetch_add(1, Ordering::Relaxed);
    })?;
    tcp.set_nodelay(true).ok();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let name = ServerName::try_from("localhost").expect("name");
    let mut conn = ClientConnection::new(config.clone(), name).expect("client");
    let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
    let mut response = Vec::with_capacity(512);
    let io = stream
        .write_all(request)
        .and_then(|()| stream.read_to_end(&mut response));
    // A server that closes without close_notify after a complete response is fine here.
    if io.is_err() && response.is_empty() {
        t.err_read.fetch_add(1, Ordering::Relaxed);
        return Err(());
    }
    if !response.starts_with(b"HTTP/1.1 2") && !response.starts_with(b"HTTP/1.0 2") {
        t.non2xx.fetch_add(1, Ordering::Relaxed);
    }
    if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        t.resumed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn main() {
    let a = Arc::new(args());
    let config = config(&a);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        a.path
    )
    .into_bytes();
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let threads: Vec<_> = (0..a.connections)
        .map(|_| {
            let (a, config, request, t) =
                (a.clone(), config.clone(), request.clone(), totals.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    if one(&a, &config, &request, &t).is_ok() {
                        t.requests.fetch_add(1, Ordering::Relaxed);
                        mine.push(begun.elapsed().as_micros() as u64);
                    }
                }
                t.latencies_us.lock().expect("latencies").extend(mine);
            })
        })
        .collect();
    for th in threads {
        th.join().expect("load thread");
    }
    let elapsed = started.elapsed();
    let mut lat = totals.latencies_us.lock().expect("latencies").clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "BENCH_JSON {{\"requests\":{},\"duration_us\":{},\"p50_us\":{},\"p99_us\":{},\"err_connect\":{},\"err_read\":{},\"err_write\":0,\"err_timeout\":0,\"non2xx\":{},\"resumed\":{}}}",
        r(&totals.requests),
        elapsed.as_micros(),
        pct(0.5),
        pct(0.99),
        r(&totals.err_connect),
        r(&totals.err_read),
        r(&totals.non2xx),
        r(&totals.resumed),
    );
}
