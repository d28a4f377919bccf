//! Who the client is: X-Forwarded-For believed only from `trusted_proxies` (rightmost
//! untrusted entry), the PROXY protocol v1 and v2 from trusted peers (LOCAL, malformed, late,
//! from an untrusted peer), and the PROXY header sent to backends with `send_proxy_protocol`;
//! the resolved address is what goes upstream, into the access log and into `hash_key`.

use crate::common::admin::start_with_admin;
use crate::common::config::{LoadBalancingSection, Strategy, TestConfig};
use crate::common::{
    connect_from, get_request, is_closed_error, log_field, request_bytes, response_bytes, Backend,
    HttpConn, Proxy,
};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The X-Forwarded-For and Forwarded fields the backend got for a GET with `xff`.
fn forwarded_for(proxy: &Proxy, backend: &Backend, xff: &[&str]) -> (String, String) {
    let headers: Vec<(&str, &str)> = xff.iter().map(|v| ("X-Forwarded-For", *v)).collect();
    let mut conn = proxy.connect();
    conn.roundtrip(&request_bytes("GET", "/", &headers, b""));
    let req = backend.requests().pop().expect("a request upstream").req;
    (
        req.head.get("x-forwarded-for").unwrap_or("").to_string(),
        req.head.get("forwarded").unwrap_or("").to_string(),
    )
}

#[test]
fn x_forwarded_for_is_believed_from_trusted_proxies_only() {
    let backend = Backend::fixed("ok");
    // No trusted proxies: what the client wrote is its own word, the peer is appended.
    let plain = Proxy::start(&TestConfig::new(&[backend.port]));
    assert_eq!(
        forwarded_for(&plain, &backend, &["6.6.6.6"]).0,
        "6.6.6.6, 127.0.0.1"
    );
    let line = plain.wait_log_lines(1, "access", |l| l.contains("access:"));
    assert_eq!(log_field(&line[0], "client="), Some("\"127.0.0.1\""));

    // Behind a trusted balancer: the rightmost entry not itself trusted is the client; a
    // spoofed entry to its left stays the client's word; trusted hops are consumed.
    let config = TestConfig::new(&[backend.port])
        .with(|c| c.server.trusted_proxies = Some(vec!["127.0.0.1".into(), "10.0.0.0/8".into()]));
    let proxy = Proxy::start(&config);
    let (xff, forwarded) = forwarded_for(&proxy, &backend, &["6.6.6.6, 203.0.113.5", "10.1.1.1"]);
    assert_eq!(xff, "6.6.6.6, 203.0.113.5");
    assert!(
        forwarded.ends_with("for=203.0.113.5;proto=http;host=test.local"),
        "{forwarded}"
    );
    assert_eq!(
        forwarded_for(&proxy, &backend, &["[2001:db8::9]:4711"]).0,
        "2001:db8::9"
    );
    assert_eq!(
        forwarded_for(&proxy, &backend, &[]).0,
        "127.0.0.1",
        "no field: the peer"
    );
    let lines = proxy.wait_log_lines(3, "access", |l| l.contains("access:"));
    assert_eq!(log_field(&lines[0], "client="), Some("\"203.0.113.5\""));
    assert_eq!(log_field(&lines[1], "client="), Some("\"2001:db8::9\""));
}

#[test]
fn hash_by_client_ip_hashes_the_resolved_client() {
    let (a, b) = (Backend::named("a"), Backend::named("b"));
    let config = TestConfig::new(&[a.port, b.port]).with(|c| {
        c.server.trusted_proxies = Some(vec!["127.0.0.1".into()]);
        c.load_balancing = LoadBalancingSection {
            strategy: Some(Strategy::Hash),
            ..LoadBalancingSection::default()
        };
    });
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    let mut seen = std::collections::HashMap::new();
    for i in 0..40 {
        let client = format!("198.51.100.{i}");
        let req = request_bytes("GET", "/", &[("X-Forwarded-For", &client)], b"");
        let first = conn.roundtrip(&req).text();
        let again = conn.roundtrip(&req).text();
        assert_eq!(first, again, "one client, one backend");
        *seen
            .entry(first.split(' ').next().unwrap().to_string())
            .or_insert(0) += 1;
    }
    // Hashing the peer (one address) would send all 40 to one backend.
    assert_eq!(seen.len(), 2, "{seen:?}");
}

/// The proxy with the PROXY protocol on, trusting `trusted`.
fn proxy_protocol(backend: &Backend, trusted: &[&str]) -> TestConfig {
    TestConfig::new(&[backend.port]).with(|c| {
        c.server.proxy_protocol = Some(true);
        c.server.trusted_proxies = Some(trusted.iter().map(|t| t.to_string()).collect());
        c.timeouts.client_header_timeout_seconds = Some(0.5);
    })
}

fn v2_header(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    out.extend_from_slice(addresses);
    out.extend_from_slice(tlvs);
    out
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client() {
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(&proxy_protocol(&backend, &["127.0.0.1"]));
    let upstream_xff = |header: &[u8]| {
        let mut conn = proxy.connect();
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&get_request("/"));
        assert_eq!(conn.roundtrip(&bytes).status(), 200);
        // Keep-alive: the next request is the same client's.
        conn.get_ok("/again");
        let got = backend.requests();
        let n = got.len();
        let xff = |i: usize| got[i].req.head.get("x-forwarded-for").unwrap().to_string();
        assert_eq!(xff(n - 1), xff(n - 2));
        xff(n - 1)
    };
    assert_eq!(
        upstream_xff(b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 80\r\n"),
        "203.0.113.7"
    );
    assert_eq!(
        upstream_xff(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n"),
        "2001:db8::7"
    );
    assert_eq!(upstream_xff(b"PROXY UNKNOWN\r\n"), "127.0.0.1");
    let mut v6 = Vec::new();
    v6.extend_from_slice(
        &"2001:db8::42"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v6.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
    // A TLV (an ALPN, type 1) after the addresses is skipped.
    let tlv = [0x01, 0x00, 0x02, b'h', b'2'];
    assert_eq!(upstream_xff(&v2_header(1, 0x21, &v6, &tlv)), "2001:db8::42");
    let v4 = [198, 51, 100, 9, 10, 0, 0, 1, 0x30, 0x39, 0x00, 0x50];
    assert_eq!(upstream_xff(&v2_header(1, 0x11, &v4, &[])), "198.51.100.9");
    // LOCAL: the balancer's own connection (a health check).
    assert_eq!(upstream_xff(&v2_header(0, 0x00, &[], &[])), "127.0.0.1");
    let lines = proxy.wait_log_lines(12, "access", |l| l.contains("access:"));
    assert_eq!(log_field(&lines[0], "client="), Some("\"203.0.113.7\""));
}

/// Whether the proxy closes a connection that sends `bytes` without answering.
fn closed_unanswered(mut conn: HttpConn, bytes: &[u8]) -> bool {
    let _ = conn.try_send(bytes);
    let mut buf = [0u8; 256];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => is_closed_error(&e),
    }
}

#[test]
fn proxy_protocol_refuses_untrusted_peers_and_broken_or_late_headers() {
    let backend = Backend::fixed("ok");
    let (proxy, admin) = start_with_admin(proxy_protocol(&backend, &["127.0.0.2"]));
    let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 80\r\n";
    let request = [&header[..], &get_request("/")].concat();
    // From the trusted address: served.
    let mut trusted = connect_from("127.0.0.2", proxy.port);
    assert_eq!(trusted.roundtrip(&request).status(), 200);
    // From any other: closed, header or not. (The harness's readiness probes came from
    // 127.0.0.1 too: counted before.)
    let refused = |reason| {
        admin.metrics().value(
            "ringproxy_proxy_protocol_refused_total",
            &[("reason", reason)],
        )
    };
    let untrusted_before = refused("untrusted");
    assert!(closed_unanswered(
        connect_from("127.0.0.1", proxy.port),
        &request
    ));
    // Broken headers, or none at all, from the trusted address.
    for broken in [
        &get_request("/")[..],
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5555\r\nGET / HTTP/1.1\r\n\r\n",
        b"PROXY TCP4 ::1 192.0.2.1 5555 80\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
    ] {
        assert!(
            closed_unanswered(connect_from("127.0.0.2", proxy.port), broken),
            "{:?}",
            String::from_utf8_lossy(broken)
        );
    }
    // Part of a header, then nothing: closed at the header timeout (0.5 s).
    let started = std::time::Instant::now();
    assert!(closed_unanswered(
        connect_from("127.0.0.2", proxy.port),
        b"PROXY TCP4 203.0"
    ));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(refused("untrusted"), untrusted_before + 1.0);
    assert_eq!(refused("header"), 5.0);
    assert_eq!(backend.requests().len(), 1);
}

/// A backend that reads a PROXY header (v1 line or v2 block) at the start of each connection,
/// records it, then serves HTTP.
fn proxy_header_backend() -> (Backend, Arc<Mutex<Vec<Vec<u8>>>>) {
    let headers = Arc::new(Mutex::new(Vec::new()));
    let seen = headers.clone();
    let backend = Backend::raw(move |mut conn, _| {
        let mut first = [0u8; 16];
        if conn.read_exact(&mut first).is_err() {
            return;
        }
        let mut header = first.to_vec();
        if first.starts_with(b"PROXY ") {
            let mut byte = [0u8; 1];
            while !header.ends_with(b"\r\n") && conn.read_exact(&mut byte).is_ok() {
                header.push(byte[0]);
            }
        } else {
            let len = usize::from(u16::from_be_bytes([first[14], first[15]]));
            let mut rest = vec![0u8; len];
            if conn.read_exact(&mut rest).is_err() {
                return;
            }
            header.extend_from_slice(&rest);
        }
        seen.lock().unwrap().push(header);
        while let Ok(Some(_)) = conn.read_request() {
            if conn
                .try_send(&response_bytes("200 OK", &[], b"ok"))
                .is_err()
            {
                return;
            }
        }
    });
    (backend, headers)
}

#[test]
fn send_proxy_protocol_tells_backends_the_client_and_keeps_clients_apart() {
    for version in ["v1", "v2"] {
        let (backend, headers) = proxy_header_backend();
        let config = TestConfig::new(&[backend.port]).with(|c| {
            c.upstream.send_proxy_protocol = Some(version.into());
            c.server.trusted_proxies = Some(vec!["127.0.0.1".into()]);
        });
        let proxy = Proxy::start(&config);
        let mut conn = proxy.connect();
        let local_port = conn.stream().local_addr().unwrap().port();
        conn.get_ok("/one");
        conn.get_ok("/two");
        // Another client (named by the trusted peer's X-Forwarded-For): its own connection.
        let other = request_bytes("GET", "/three", &[("X-Forwarded-For", "203.0.113.8")], b"");
        assert_eq!(conn.roundtrip(&other).status(), 200);
        conn.get_ok("/four");
        let got = headers.lock().unwrap().clone();
        assert_eq!(
            got.len(),
            2,
            "{version}: one upstream connection per client: {got:?}"
        );
        if version == "v1" {
            let port = proxy.port;
            assert_eq!(
                String::from_utf8_lossy(&got[0]),
                format!("PROXY TCP4 127.0.0.1 127.0.0.1 {local_port} {port}\r\n")
            );
            assert!(
                String::from_utf8_lossy(&got[1]).starts_with("PROXY TCP4 203.0.113.8 127.0.0.1 0 ")
            );
        } else {
            assert_eq!(&got[0][12..14], &[0x21, 0x11], "v2, PROXY, TCP over IPv4");
            assert_eq!(&got[0][16..20], &[127, 0, 0, 1]);
            assert_eq!(u16::from_be_bytes([got[0][24], got[0][25]]), local_port);
            assert_eq!(&got[1][16..20], &[203, 0, 113, 8]);
        }
    }
}
