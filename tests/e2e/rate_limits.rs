//! Rate limits: a burst passes at once after idle, then the rate; over it 429 with
//! `Retry-After` and the RateLimit fields, counted and logged, never reaching a backend; keys
//! apart; `mode = "delay"`; reload; the admitted rate over two workers and eight keep-alive
//! connections against the limit; and a flood of a million distinct keys held in fixed memory.

use crate::common::admin::{start_with_admin, Admin};
use crate::common::config::{RateLimitSection, RespondEntry, RouteEntry};
use crate::common::load::paced;
use crate::common::{
    log_field, request_bytes, Backend, HttpConn, Message, Proxy, TestConfig, IO_TIMEOUT,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Sends `requests` in one write and reads their answers.
fn pipelined(conn: &mut HttpConn, requests: &[Vec<u8>]) -> Vec<Message> {
    conn.send(&requests.concat());
    requests
        .iter()
        .map(|_| conn.read_response("GET").expect("an answer"))
        .collect()
}

fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    request_bytes("GET", path, headers, b"")
}

fn statuses(answers: &[Message]) -> Vec<u16> {
    answers.iter().map(Message::status).collect()
}

/// Every request through route `/` under the limit `name`.
fn limited(backend: &Backend, name: &str, limit: RateLimitSection) -> TestConfig {
    TestConfig::new(&[backend.port])
        .rate_limit(name, limit)
        .route(RouteEntry::to("default").with(|r| r.rate_limits = Some(vec![name.into()])))
}

#[test]
fn a_burst_passes_after_idle_then_429_with_its_fields_and_no_backend_sees_it() {
    let backend = Backend::fixed("ok");
    // 2 per second, 5 at once.
    let config = limited(
        &backend,
        "api",
        RateLimitSection::per_second("client_ip", 2.0, 5),
    );
    let (proxy, admin) = start_with_admin(config);
    let mut conn = proxy.connect();
    let burst: Vec<Vec<u8>> = (0..6).map(|i| get(&format!("/b/{i}"), &[])).collect();
    let answers = pipelined(&mut conn, &burst);
    assert_eq!(statuses(&answers), [200, 200, 200, 200, 200, 429]);
    let refused = &answers[5];
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"api\";q=2;w=1"),
        "{refused:?}"
    );
    assert_eq!(refused.header("ratelimit"), Some("\"api\";r=0;t=1"));
    assert!(
        !refused.head.connection_has("close"),
        "keep-alive after a 429"
    );
    assert_eq!(
        backend.requests().len(),
        5,
        "the refused request never went upstream"
    );

    // Idle long enough to fill up again: the burst passes at once again.
    std::thread::sleep(Duration::from_millis(2700));
    let answers = pipelined(&mut conn, &burst);
    assert_eq!(statuses(&answers), [200, 200, 200, 200, 200, 429]);
    assert_eq!(backend.requests().len(), 10);

    let metrics = admin.metrics();
    assert_eq!(
        metrics.value("ringproxy_rate_limited_total", &[("limit", "api")]),
        2.0
    );
    assert_eq!(
        metrics.value("ringproxy_rate_limit_table_bytes", &[("limit", "api")]),
        (131_072 * 16) as f64,
        "100,000 keys by default: 131,072 slots of 16 bytes"
    );
    let lines = proxy.wait_log_lines(2, "for the 429s", |l| l.contains(" status=429"));
    for line in lines {
        assert_eq!(log_field(&line, "limit="), Some("\"api\""), "{line}");
        assert_eq!(log_field(&line, "reason="), Some("\"rate"), "{line}");
    }
    let ok = proxy.wait_log_lines(1, "for a 200", |l| l.contains(" status=200"));
    assert_eq!(log_field(&ok[0], "limit="), Some("\"-\""));
}

#[test]
fn keys_are_limited_apart_and_requests_without_the_key_are_not() {
    let backend = Backend::fixed("ok");
    let config = limited(
        &backend,
        "per_key",
        RateLimitSection::per_second("header:X-Api-Key", 1.0, 2),
    );
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    let of =
        |key: &str| -> Vec<Vec<u8>> { (0..3).map(|_| get("/", &[("X-Api-Key", key)])).collect() };
    assert_eq!(
        statuses(&pipelined(&mut conn, &of("alpha"))),
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&pipelined(&mut conn, &of("beta"))),
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&pipelined(&mut conn, &of("alpha"))),
        [429, 429, 429]
    );
    let keyless: Vec<Vec<u8>> = (0..5).map(|_| get("/", &[])).collect();
    assert_eq!(statuses(&pipelined(&mut conn, &keyless)), [200; 5]);
}

#[test]
fn delay_mode_holds_requests_to_the_rate_up_to_max_delay() {
    let backend = Backend::fixed("ok");
    let limit = RateLimitSection {
        mode: Some("delay".into()),
        max_delay_ms: Some(300),
        ..RateLimitSection::per_second("client_ip", 20.0, 1)
    };
    let (proxy, admin) = start_with_admin(limited(&backend, "slow", limit));
    // 12 requests at once: one passes, the next six wait 50, 100, ... 300 ms, the rest get 429.
    let barrier = Arc::new(Barrier::new(12));
    let started = Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (barrier, port) = (barrier.clone(), proxy.port);
            std::thread::spawn(move || {
                let mut conn = HttpConn::connect(port);
                barrier.wait();
                let status = conn.roundtrip(&get("/", &[])).status();
                (status, started.elapsed())
            })
        })
        .collect();
    let mut done: Vec<(u16, Duration)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    done.sort_by_key(|d| d.1);
    let admitted: Vec<Duration> = done.iter().filter(|d| d.0 == 200).map(|d| d.1).collect();
    let refused = done.iter().filter(|d| d.0 == 429).count();
    assert!((7..=9).contains(&admitted.len()), "{done:?}");
    assert_eq!(admitted.len() + refused, 12, "{done:?}");
    let spread = admitted[admitted.len() - 1] - admitted[0];
    assert!(
        spread >= Duration::from_millis(250),
        "delayed requests went one per 50 ms: {done:?}"
    );
    let delayed = admin
        .metrics()
        .value("ringproxy_rate_limit_delayed_total", &[("limit", "slow")]);
    assert!(delayed >= 6.0, "{delayed}");
}

#[test]
fn a_reload_changes_a_limit_and_keeps_who_is_limited() {
    let backend = Backend::fixed("ok");
    let config = limited(
        &backend,
        "api",
        RateLimitSection::per_second("client_ip", 0.5, 2),
    );
    let (proxy, admin) = start_with_admin(config.clone());
    let mut conn = proxy.connect();
    let three: Vec<Vec<u8>> = (0..3).map(|_| get("/", &[])).collect();
    assert_eq!(statuses(&pipelined(&mut conn, &three)), [200, 200, 429]);
    // The same limit with a larger burst: the state is kept (two spent), eight more fit.
    let larger = config.clone().with(|c| {
        c.rate_limits.get_mut("api").unwrap().burst = Some(10);
    });
    proxy.write_config(&larger.to_toml());
    assert_eq!(admin.post("/reload", "").status(), 200);
    let ten: Vec<Vec<u8>> = (0..10).map(|_| get("/", &[])).collect();
    let answers = statuses(&pipelined(&mut conn, &ten));
    assert_eq!(
        answers.iter().filter(|&&s| s == 200).count(),
        8,
        "{answers:?}"
    );
    // The route without its limit: nothing is refused.
    let unlimited = config.with(|c| {
        c.rate_limits.clear();
        c.routes[0].rate_limits = None;
    });
    proxy.write_config(&unlimited.to_toml());
    assert_eq!(admin.post("/reload", "").status(), 200);
    assert_eq!(statuses(&pipelined(&mut conn, &ten)), [200; 10]);
}

/// Opens `count` connections until both workers have some (each connection's first request is
/// counted by the worker that accepted it).
fn connections_on_both_workers(proxy: &Proxy, admin: &Admin, count: usize) -> Vec<HttpConn> {
    for _ in 0..10 {
        let before = per_worker_requests(admin);
        let mut conns: Vec<HttpConn> = (0..count).map(|_| proxy.connect()).collect();
        for conn in &mut conns {
            conn.roundtrip(&get("/probe", &[]));
        }
        let after = per_worker_requests(admin);
        if after.iter().zip(&before).all(|(a, b)| a > b) {
            return conns;
        }
    }
    panic!("connections never landed on both workers");
}

fn per_worker_requests(admin: &Admin) -> Vec<f64> {
    let metrics = admin.metrics();
    (0..2)
        .map(|w| {
            let worker = w.to_string();
            metrics.value("ringproxy_worker_requests_total", &[("worker", &worker)])
        })
        .collect()
}

/// Eight keep-alive connections over two workers, one key, three times the limit offered for
/// five seconds: admitted = burst + rate x time, within 5% (GCRA is exact; the slack is for
/// the clock of the test).
#[test]
fn the_admitted_rate_over_two_workers_is_the_limit() {
    const RATE: f64 = 100.0;
    const BURST: u64 = 10;
    const RUN: Duration = Duration::from_secs(5);
    const CONNECTIONS: usize = 8;
    let backend = Backend::fixed("ok");
    let config = TestConfig::new(&[backend.port])
        .with(|c| c.server.workers = Some(2))
        .rate_limit(
            "one_key",
            RateLimitSection::per_second("route", RATE, BURST),
        )
        .route(RouteEntry::to("default").with(|r| {
            r.path_prefix = Some("/limited/".into());
            r.rate_limits = Some(vec!["one_key".into()]);
        }))
        .route(RouteEntry::to("default").with(|r| r.path = Some("/probe".into())));
    let (proxy, admin) = start_with_admin(config);
    let conns = connections_on_both_workers(&proxy, &admin, CONNECTIONS);
    let load = paced(conns, 3.0 * RATE, RUN, "/limited/");
    let error = load.error_against(RATE, BURST, "rate limit accuracy, 2 workers");
    assert!(error.abs() <= 0.05, "{:+.1}% off the limit", error * 100.0);
    assert!(
        f64::from(load.refused) > f64::from(load.admitted),
        "the load was 3x the limit"
    );
    let metrics = admin.metrics();
    let counted = metrics.value("ringproxy_rate_limited_total", &[("limit", "one_key")]);
    assert_eq!(counted, f64::from(load.refused));
}

/// A million distinct client addresses (X-Forwarded-For from a trusted proxy) through a limit
/// that tracks 100,000 keys: memory stays within the table, which is allocated at start.
#[test]
fn a_million_distinct_keys_stay_in_fixed_memory() {
    const KEYS: u32 = 1_000_000;
    const CLIENTS: u32 = 2;
    const BATCH: u32 = 500;
    let config = TestConfig::new(&[])
        .with(|c| {
            c.backends.clear();
            c.server.trusted_proxies = Some(vec!["127.0.0.1".into()]);
            c.logging.access_log = Some(false);
        })
        .rate_limit(
            "per_ip",
            RateLimitSection::per_second("client_ip", 1000.0, 100),
        )
        .route(RouteEntry::default().with(|r| {
            r.respond = Some(RespondEntry::default());
            r.rate_limits = Some(vec!["per_ip".into()]);
        }));
    let (proxy, admin) = start_with_admin(config);
    let flood = |from: u32, to: u32| {
        let port = proxy.port;
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    stream.set_nodelay(true).unwrap();
                    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let mut sink = vec![0u8; 1 << 20];
                    // The last bytes of a read, in case a status line is split between two.
                    let mut carry = Vec::new();
                    let mut key = from + c;
                    while key < to {
                        let mut batch = Vec::with_capacity(BATCH as usize * 80);
                        let mut n = 0;
                        while n < BATCH && key < to {
                            let [_, a, b, d] = key.to_be_bytes();
                            batch.extend_from_slice(
                                format!("GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.{a}.{b}.{d}\r\n\r\n")
                                    .as_bytes(),
                            );
                            key += CLIENTS;
                            n += 1;
                        }
                        stream.write_all(&batch).unwrap();
                        // Each answer is one status line and an empty body: count them.
                        let mut seen = 0;
                        while seen < n {
                            let got = stream.read(&mut sink).expect("answers");
                            assert!(got > 0, "closed");
                            carry.extend_from_slice(&sink[..got]);
                            seen += carry.windows(12).filter(|w| w == b"HTTP/1.1 200").count() as u32;
                            assert!(!carry.windows(12).any(|w| w == b"HTTP/1.1 429"), "refused");
                            // 11 bytes cannot hold a whole status line: nothing counts twice.
                            let keep = carry.len().saturating_sub(11);
                            carry.drain(..keep);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    };
    flood(0, 20_000);
    let before = proxy.rss_kib();
    let started = Instant::now();
    flood(20_000, KEYS);
    let after = proxy.rss_kib();
    let table = admin
        .metrics()
        .value("ringproxy_rate_limit_table_bytes", &[("limit", "per_ip")]);
    eprintln!(
        "1,000,000 keys in {:?}: RSS {before} KiB -> {after} KiB; table {table} bytes",
        started.elapsed()
    );
    assert_eq!(table, (131_072 * 16) as f64);
    assert!(
        after <= before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB under a key flood"
    );
}
