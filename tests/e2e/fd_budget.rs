//! The open-files budget, end to end: under a low RLIMIT_NOFILE, slow streamed uploads and
//! WebSocket tunnels (the connections holding the most descriptors) fill the worker's share of
//! descriptors, and what does not fit is refused with 503 or done another way before the kernel
//! runs out; when descriptors do run out anyway, the proxy sheds new work with 503; and neither
//! health checks nor passive ejection ever blame the backends for it. Idle connections hold one
//! descriptor each, not the worst case.

use crate::common::admin::Admin;
use crate::common::*;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// The proxy's open-files limit in the load test: low enough that the uploads below cannot all
/// fit (each needs 2 descriptors, client and upstream, and would take up to 5: the early-answer
/// watcher and a splice pipe where there is room).
const NOFILE: u64 = 400;
const UPLOADS: usize = 200;
const TUNNELS: usize = 4;
/// A body announced but never sent: the upload stays in flight, spliced or copied.
const UPLOAD_HEAD: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10485760\r\n\r\n";
const UPGRADE_HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
/// How long a refusal on accept may take to arrive before a new client sends its request.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);
/// Log lines that would mean a backend was blamed for the proxy's own shortage.
const BLAME: [&str; 2] = ["backend is down", "backend ejected"];

/// Runs the command with `nofile` as its soft and hard open-files limit, unable to raise it
/// (CAP_SYS_RESOURCE dropped from the bounding set, where the test may: as root).
fn limit_open_files(command: &mut Command, nofile: u64) {
    // SAFETY: between fork and exec only async-signal-safe syscalls run; no allocation.
    unsafe {
        command.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            const CAP_SYS_RESOURCE: libc::c_ulong = 24;
            libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0);
            Ok(())
        });
    }
}

/// The proxy (one worker, admin on) on `config`, started with `nofile` descriptors at most.
fn start(config: TestConfig, nofile: u64) -> (Proxy, Admin) {
    let config = config.admin_api();
    let proxy = Proxy::start_with(&config, &[], &[], |command| {
        limit_open_files(command, nofile)
    });
    (proxy, Admin::of(&config))
}

/// Answers `/health` and other GETs with 200 (keep-alive), `/ws` with 101 and then echoes,
/// and reads `/upload` bodies only as they come, holding the connection until the proxy lets go.
fn mixed_backend() -> Backend {
    Backend::raw(|mut conn, _| {
        while let Ok(Some(head)) = conn.read_head() {
            match head.target() {
                "/upload" => {
                    let _ = conn.read_to_close();
                    return;
                }
                "/ws" => {
                    let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\n\r\n";
                    let mut buf = [0u8; 1024];
                    if conn.try_send(switched).is_err() {
                        return;
                    }
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.try_send(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    return;
                }
                _ => {
                    if conn
                        .try_send(&response_bytes("200 OK", &[], b"ok"))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    })
}

fn open_tunnel(proxy: &Proxy, index: usize) -> HttpConn {
    let mut conn = proxy.connect();
    conn.send(UPGRADE_HEAD);
    let head = conn.read_head().expect("101 head").expect("101 head");
    assert_eq!(head.status(), 101, "tunnel {index}: {head:?}");
    check_echo(&mut conn, index);
    conn
}

fn check_echo(conn: &mut HttpConn, index: usize) {
    let message = format!("ping-{index}");
    conn.send(message.as_bytes());
    let mut back = vec![0u8; message.len()];
    conn.read_exact(&mut back).expect("echo through the tunnel");
    assert_eq!(back, message.as_bytes(), "tunnel {index}");
}

/// What became of a started upload: still in flight, or refused (503, or closed at once).
#[derive(Debug, PartialEq, Eq)]
enum Upload {
    InFlight,
    Refused,
}

fn upload_state(conn: &mut HttpConn) -> Upload {
    let stream = conn.stream().try_clone().expect("clone");
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let peeked = stream.peek(&mut byte);
    stream.set_nonblocking(false).expect("blocking");
    match peeked {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Upload::InFlight,
        // Closed, or reset because the refusal left the request unread: refused either way.
        Ok(0) => Upload::Refused,
        Err(e) if is_closed_error(&e) => Upload::Refused,
        Err(e) => panic!("upload connection failed: {e}"),
        Ok(_) => match conn.read_response("POST") {
            Ok(response) => {
                assert_eq!(
                    response.status(),
                    503,
                    "an upload over the cap: {response:?}"
                );
                Upload::Refused
            }
            Err(e) if is_closed_error(&e) => Upload::Refused,
            Err(e) => panic!("upload answer unreadable: {e}"),
        },
    }
}

/// A new client is refused with 503 at once, or served: never left waiting. Returns the status.
fn new_client_answered(proxy: &Proxy) -> u16 {
    let mut conn = proxy.connect();
    conn.stream()
        .set_read_timeout(Some(REFUSAL_WAIT))
        .expect("set_read_timeout");
    let mut byte = [0u8; 1];
    match conn.stream().peek(&mut byte) {
        // Refused on accept: a 503, before any request was sent.
        Ok(1..) => {
            let refusal = conn.read_response("GET").expect("the refusal");
            assert_eq!(refusal.status(), 503, "{refusal:?}");
            return 503;
        }
        Ok(0) => panic!("a new client was closed without an answer"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        Err(e) => panic!("a new client's connection failed: {e}"),
    }
    // Accepted (or still waiting in the backlog): a request must be answered.
    conn.stream()
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    conn.send(&get_request("/new"));
    let started = Instant::now();
    let response = conn.read_response("GET").unwrap_or_else(|e| {
        panic!(
            "a new client got no answer within {:?} ({e}): left waiting\n{}",
            started.elapsed() + REFUSAL_WAIT,
            proxy.logs()
        )
    });
    let status = response.status();
    assert!(
        status == 200 || status == 503,
        "a new client got {status}, expected 200 or 503: {response:?}\n{}",
        proxy.logs()
    );
    status
}

fn assert_no_backend_blamed(proxy: &Proxy, admin: &Admin) {
    let logs = proxy.stdout();
    for blame in BLAME {
        assert!(
            !logs.contains(blame),
            "a backend was blamed ({blame:?}):\n{}",
            proxy.logs()
        );
    }
    for (i, backend) in admin.status()["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .enumerate()
    {
        assert_eq!(backend["up"], true, "backend {i}: {backend}");
        assert_eq!(backend["ejected"], false, "backend {i}: {backend}");
    }
}

/// New clients are served again (at first they may still be refused with 503).
fn served_again(proxy: &Proxy) {
    wait_until(IO_TIMEOUT, "a request served after the load", || {
        let mut conn = proxy.connect();
        let response = conn
            .try_send(&get_request("/after"))
            .and_then(|()| conn.read_response("GET"));
        match response {
            Ok(r) if r.status() == 200 => true,
            Ok(r) if r.status() == 503 => false,
            Err(e) if is_closed_error(&e) => false,
            other => panic!("after the load: {other:?}\n{}", proxy.logs()),
        }
    });
    for i in 0..3 {
        proxy.connect().get_ok(&format!("/after/{i}"));
    }
}

#[test]
fn slow_uploads_and_tunnels_fill_the_share_and_the_kernel_never_runs_out() {
    let backends = [mixed_backend(), mixed_backend()];
    let (proxy, admin) = start(
        TestConfig::new(&[backends[0].port, backends[1].port]).fast_health_checks(),
        NOFILE,
    );
    let mut tunnels: Vec<HttpConn> = (0..TUNNELS).map(|i| open_tunnel(&proxy, i)).collect();
    let mut uploads: Vec<HttpConn> = (0..UPLOADS)
        .map(|_| {
            let mut conn = proxy.connect();
            // Refused connections may be reset before the head is written.
            let _ = conn.try_send(UPLOAD_HEAD);
            conn
        })
        .collect();
    // Let every upload reach its backend (or its refusal arrive).
    thread::sleep(Duration::from_millis(700));
    let in_flight = uploads
        .iter_mut()
        .map(upload_state)
        .filter(|state| *state == Upload::InFlight)
        .count();
    // Each upload in flight holds 2 to 5 descriptors (how many depends on how accepts and
    // requests interleave): at least 60 fit in the worker's share of the 400 even at 5 each,
    // and not all 200 (every one of the others refused with 503 or closed, none hanging).
    assert!(
        (60..UPLOADS).contains(&in_flight),
        "{in_flight} uploads in flight\n{}",
        proxy.logs()
    );
    for _ in 0..3 {
        let status = new_client_answered(&proxy);
        assert!(status == 503 || status == 200, "{status}");
    }
    for (i, tunnel) in tunnels.iter_mut().enumerate() {
        check_echo(tunnel, i);
    }
    // Health checks ran every 0.2 s throughout, each needing a socket.
    thread::sleep(Duration::from_millis(600));
    assert_no_backend_blamed(&proxy, &admin);

    drop(uploads);
    drop(tunnels);
    served_again(&proxy);
    assert_no_backend_blamed(&proxy, &admin);
    let metrics = admin.metrics();
    // The workers' shares were full (what did not fit was refused or done without) ...
    let full = |op| metrics.value("ringproxy_fd_share_full_total", &[("op", op)]);
    assert!(
        full("accept") + full("connect") > 0.0 && full("dup") + full("pipe") > 0.0,
        "the share never filled: the test does not test it"
    );
    // ... but the kernel never ran out of descriptors.
    for op in ["accept", "connect", "health_check", "pipe", "dup"] {
        let short = metrics.value("ringproxy_fd_exhausted_total", &[("op", op)]);
        assert_eq!(
            short,
            0.0,
            "descriptors ran short for {op}\n{}",
            proxy.logs()
        );
    }
}

/// 2,000 idle keep-alive clients under an open-files limit of 3,000: they hold one descriptor
/// each (a budget of their worst case, 4 each, would have refused most of them).
#[test]
fn idle_clients_hold_one_descriptor_each() {
    let backend = Backend::fixed("ok");
    let (proxy, admin) = start(TestConfig::new(&[backend.port]), 3000);
    let mut clients: Vec<HttpConn> = Vec::new();
    for i in 0..2000 {
        let mut conn = proxy.connect();
        let response = conn.roundtrip(&get_request(&format!("/idle/{i}")));
        assert_eq!(response.status(), 200, "client {i}: {response:?}");
        clients.push(conn);
    }
    for (i, conn) in clients.iter_mut().enumerate().step_by(97) {
        assert_eq!(conn.get_ok("/again").status(), 200, "client {i}");
    }
    let metrics = admin.metrics();
    let held = metrics.value("ringproxy_worker_descriptors", &[("worker", "0")]);
    assert!(
        held <= 2100.0,
        "{held} descriptors counted for 2000 idle clients"
    );
}

/// Lowers the running proxy's soft open-files limit to its lowest free descriptor number, so
/// that no new descriptor can be had; returns the limit to restore.
fn exhaust_descriptors(proxy: &Proxy) -> libc::rlimit {
    let pid = proxy.pid() as libc::pid_t;
    // A health probe's socket may be open at a given instant: the least over a few looks.
    let lowest_free = (0..10)
        .map(|_| {
            thread::sleep(Duration::from_millis(7));
            let open: std::collections::BTreeSet<u64> =
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .expect("/proc/<pid>/fd")
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
            (0..).find(|n| !open.contains(n)).expect("a free number")
        })
        .min()
        .expect("samples");
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    set_soft_limit(pid, lowest_free, &mut old);
    old
}

fn set_soft_limit(pid: libc::pid_t, soft: u64, old: &mut libc::rlimit) {
    // SAFETY: prlimit(2) on our own child with stack structs.
    unsafe {
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), old),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        let rc = libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut());
        assert_eq!(rc, 0, "prlimit: {}", io::Error::last_os_error());
    }
}

#[test]
fn out_of_descriptors_new_work_is_shed_with_503_and_no_backend_is_blamed() {
    let backends = [mixed_backend(), mixed_backend()];
    for (driver, env) in DRIVERS {
        // No idle pool: every request needs a new upstream socket.
        let config = TestConfig::new(&[backends[0].port, backends[1].port])
            .fast_health_checks()
            .with(|c| c.upstream.max_idle_per_backend = Some(0))
            .admin_api();
        let proxy = Proxy::start_with_env(&config, env);
        let admin = Admin::of(&config);
        let mut client = proxy.connect();
        client.get_ok("/before");
        // Parked (quiet for 0.5 s): its descriptors are all open before the shortage, and it
        // needs no new one to resume. Any connection closed meanwhile would leave a free
        // number below the limit.
        thread::sleep(Duration::from_millis(700));

        let restore = exhaust_descriptors(&proxy);
        // New clients: refused with 503 or answered, never left in the backlog.
        for _ in 0..3 {
            assert_eq!(new_client_answered(&proxy), 503, "{driver}");
        }
        // Health checks skipped for a while (0.2 s apart), not failed.
        proxy.wait_log_lines(1, "about skipped health checks", |l| {
            l.contains("health checks skipped")
        });
        thread::sleep(Duration::from_millis(600));
        // A client already connected: each request is shed with 503, kept alive, and no
        // backend takes the blame (three failures would eject one).
        for i in 0..5 {
            let response = client.roundtrip(&get_request(&format!("/short/{i}")));
            assert_eq!(
                response.status(),
                503,
                "{driver}: {response:?}\n{}",
                proxy.logs()
            );
            assert_eq!(response.header("retry-after"), Some("1"), "{driver}");
        }

        let mut ignored = restore;
        set_soft_limit(proxy.pid() as libc::pid_t, restore.rlim_cur, &mut ignored);
        served_again(&proxy);
        assert_no_backend_blamed(&proxy, &admin);
        proxy.wait_log_lines(1, "about descriptors available again", |l| {
            l.contains("descriptors available again") && l.contains("health_check")
        });
        let metrics = admin.metrics();
        let short = |op| metrics.value("ringproxy_fd_exhausted_total", &[("op", op)]);
        // About ten probes skipped; the shortage logged when it began, not once per probe.
        let skipped_logs = proxy.stdout().matches("health checks skipped").count();
        assert!(
            short("health_check") >= 5.0 && skipped_logs <= 2,
            "{driver}: {} probes skipped, {skipped_logs} log lines",
            short("health_check")
        );
        assert!(
            short("connect") >= 5.0,
            "{driver}: connect {}",
            short("connect")
        );
        let requests = |class| metrics.value("ringproxy_requests_total", &[("class", class)]);
        assert!(requests("5xx") >= 5.0, "{driver}");
        for backend in &backends {
            let url = crate::common::live_backend::backend_url(backend.port);
            let errors = metrics.value(
                "ringproxy_backend_connect_errors_total",
                &[("backend", url.as_str())],
            );
            assert_eq!(errors, 0.0, "{driver}: {url} blamed for connect errors");
        }
    }
}
