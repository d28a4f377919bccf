//! Protocol upgrades (WebSocket): the `Upgrade` request reaches the upstream with
//! `Connection: upgrade`; a 101 answer turns the pair of connections into a byte tunnel both
//! ways, with bytes sent right behind either head kept, half-closes passed on, and an idle
//! bound on the whole tunnel, which shutdown waits for only up to its timeout. An upstream that
//! declines keeps plain HTTP; an `Upgrade` that may not be passed on (HTTP/1.0, a request body,
//! h2c) is dropped as hop-by-hop.

use crate::common::*;
use std::io::Read;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const UPGRADE_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: test.local\r\nConnection: keep-alive, Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

const SWITCHED: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Answers the upgrade with 101 and `hello` right behind it, then echoes what it reads (each
/// read back as it came) until the proxy half-closes, then says `bye` and closes. Sends the
/// request head it saw on `heads`.
fn echo_after_switch(heads: mpsc::Sender<Head>, hello: &'static [u8]) -> Backend {
    let heads = std::sync::Mutex::new(heads);
    Backend::raw(move |mut conn, _| {
        let Ok(Some(head)) = conn.read_head() else {
            return;
        };
        let _ = heads.lock().expect("heads").send(head);
        let mut reply = SWITCHED.to_vec();
        reply.extend_from_slice(hello);
        if conn.try_send(&reply).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => {
                    let _ = conn.try_send(b"bye");
                    return;
                }
                Ok(n) => {
                    if conn.try_send(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

fn read_exactly(conn: &mut HttpConn, len: usize) -> String {
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).expect("tunnelled bytes");
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn websocket_upgrade_is_tunnelled_both_ways() {
    let (heads_tx, heads) = mpsc::channel();
    let backend = echo_after_switch(heads_tx, b"server-hello");
    for (_driver, env) in DRIVERS {
        let proxy = Proxy::start_with_env(&TestConfig::new(&[backend.port]), env);
        check_echo_tunnel(&proxy, &heads);
    }
}

fn check_echo_tunnel(proxy: &Proxy, heads: &mpsc::Receiver<Head>) {
    let mut conn = proxy.connect();
    // A first frame right behind the request head must reach the upstream after the switch.
    let mut request = UPGRADE_REQUEST.to_vec();
    request.extend_from_slice(b"early-frame");
    conn.send(&request);

    let head = conn.read_head().expect("101 head").expect("101 head");
    assert_eq!(head.status(), 101, "{head:?}");
    assert_eq!(head.get("upgrade"), Some("websocket"), "{head:?}");
    assert!(head.connection_has("upgrade"), "{head:?}");
    assert_eq!(
        head.get("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let seen = heads
        .recv_timeout(IO_TIMEOUT)
        .expect("upstream saw the request");
    assert_eq!(seen.get("upgrade"), Some("websocket"), "{seen:?}");
    assert!(seen.connection_has("upgrade"), "{seen:?}");
    assert_eq!(
        seen.get("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    assert_eq!(read_exactly(&mut conn, 12), "server-hello");
    assert_eq!(read_exactly(&mut conn, 11), "early-frame");
    for i in 0..20 {
        let message = format!("message-{i:02}");
        conn.send(message.as_bytes());
        assert_eq!(read_exactly(&mut conn, message.len()), message);
    }
    let large = pattern(300_000, 3);
    conn.send(&large);
    let mut echoed = vec![0u8; large.len()];
    conn.read_exact(&mut echoed).expect("large echo");
    assert!(echoed == large, "large message came back changed");

    // The client's half-close reaches the upstream, whose last words and close come back.
    conn.shutdown_write();
    assert_eq!(conn.read_to_close().expect("until close"), b"bye");
}

#[test]
fn open_tunnels_show_in_metrics() {
    let (heads_tx, _heads) = mpsc::channel();
    let backend = echo_after_switch(heads_tx, b"");
    let (proxy, admin) = crate::common::admin::start_with_admin(TestConfig::new(&[backend.port]));
    let tunnels = || {
        admin
            .metrics()
            .value("ringproxy_tunnels", &[("worker", "0")])
    };
    assert_eq!(tunnels(), 0.0);
    let mut conn = proxy.connect();
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_head().expect("101").expect("101").status(), 101);
    crate::common::wait_until(IO_TIMEOUT, "the tunnel counted", || tunnels() == 1.0);
    conn.shutdown_write();
    assert_eq!(conn.read_to_close().expect("until close"), b"bye");
    crate::common::wait_until(IO_TIMEOUT, "the tunnel gone", || tunnels() == 0.0);
}

#[test]
fn upstream_declining_the_upgrade_keeps_plain_http() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let mut conn = proxy.connect();
    let declined = conn.roundtrip(UPGRADE_REQUEST);
    assert_eq!(declined.status(), 200);
    assert_eq!(declined.text(), "/chat");
    assert_eq!(conn.get_ok("/after").text(), "/after");
    let first = &backend.requests()[0].req.head;
    assert_eq!(first.get("upgrade"), Some("websocket"), "{first:?}");
}

#[test]
fn upgrade_that_may_not_be_passed_on_is_dropped() {
    let backend = Backend::echo_target();
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let requests: [&[u8]; 4] = [
        b"GET /http10 HTTP/1.0\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"POST /with-body HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi",
        b"GET /not-named HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        b"GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    ];
    for request in requests {
        assert_eq!(proxy.connect().roundtrip(request).status(), 200);
    }
    for recorded in backend.requests() {
        let head = &recorded.req.head;
        assert!(
            !head.has("upgrade") && !head.connection_has("upgrade") && !head.has("http2-settings"),
            "{head:?}"
        );
    }
}

#[test]
fn quiet_tunnel_is_closed_after_io_timeout_but_one_way_traffic_keeps_it() {
    // The upstream sends a byte every 300 ms for 2.4 s, then goes quiet; the client never
    // sends. Traffic one way keeps the tunnel, silence both ways for 1 s ends it.
    let backend = Backend::raw(|mut conn, _| {
        if !matches!(conn.read_head(), Ok(Some(_))) || conn.try_send(SWITCHED).is_err() {
            return;
        }
        for _ in 0..8 {
            thread::sleep(Duration::from_millis(300));
            if conn.try_send(b".").is_err() {
                return;
            }
        }
        let _ = conn.read_to_close();
    });
    let proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.timeouts.io_timeout_seconds = Some(1.0)),
    );
    let mut conn = proxy.connect();
    conn.send(UPGRADE_REQUEST);
    let head = conn.read_head().expect("101").expect("101");
    assert_eq!(head.status(), 101);
    let started = Instant::now();
    let received = conn.read_to_close().expect("until close");
    assert_eq!(received, b"........", "one-way traffic was cut");
    let lasted = started.elapsed();
    assert!(
        lasted >= Duration::from_millis(3000) && lasted < Duration::from_secs(6),
        "tunnel lasted {lasted:?}: 2.4 s of traffic, then 1 s idle"
    );
}

#[test]
fn shutdown_waits_for_a_tunnel_only_up_to_its_timeout() {
    let (heads_tx, _heads) = mpsc::channel();
    let backend = echo_after_switch(heads_tx, b"");
    let mut proxy = Proxy::start(
        &TestConfig::new(&[backend.port]).with(|c| c.server.shutdown_timeout_seconds = Some(1.0)),
    );
    let mut conn = proxy.connect();
    conn.send(UPGRADE_REQUEST);
    assert_eq!(conn.read_head().expect("101").expect("101").status(), 101);
    conn.send(b"still here");
    assert_eq!(read_exactly(&mut conn, 10), "still here");
    let started = Instant::now();
    let status = proxy.signal_and_wait(libc::SIGTERM);
    let took = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "shutdown took {took:?} with a 1 s shutdown timeout and a live tunnel"
    );
    match conn.read_to_close() {
        Ok(rest) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) => assert!(is_closed_error(&e), "{e}"),
    }
}
