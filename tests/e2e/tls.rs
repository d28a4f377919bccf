//! HTTPS termination: certificates chosen by SNI (exact, wildcard, default), ALPN, TLS 1.2 and
//! 1.3 and `min_version`, resumption with a ticket another worker issued, the handshake bound,
//! plain HTTP on the TLS port, `redirect_http`, HSTS, strict SNI (421), mutual TLS and the
//! client-certificate headers, and what works over plain HTTP working over TLS too: keep-alive
//! and parking, large bodies both ways, WebSocket tunnels, answers while an upload streams,
//! close_notify at the end.

use crate::common::tls::*;
use crate::common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A CA and three certificates: the default one (`test.local`, the harness's Host, and
/// `a.example`, `127.0.0.1`), `b.example`, and `*.wild.example`.
struct Site {
    pki: Pki,
    default: Issued,
    b: Issued,
    wild: Issued,
}

fn site() -> Site {
    let pki = Pki::new("ringproxy test CA");
    let default = pki.issue("default", &["test.local", "a.example", "127.0.0.1"]);
    let b = pki.issue("b", &["b.example"]);
    let wild = pki.issue("wild", &["*.wild.example"]);
    Site {
        pki,
        default,
        b,
        wild,
    }
}

/// The harness config with the TLS listener serving the site's certificates.
fn tls_config(backend: u16, site: &Site) -> TestConfig {
    TestConfig::new(&[backend]).tls(vec![
        site.default.entry(),
        site.b.entry(),
        site.wild.entry(),
    ])
}

fn get_as(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

fn trusting(site: &Site) -> std::sync::Arc<rustls::ClientConfig> {
    ClientOpts {
        verify_with: Some(&site.pki),
        ..ClientOpts::default()
    }
    .config()
}

#[test]
fn sni_picks_the_certificate_by_exact_name_then_wildcard_else_the_first() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site);
    let proxy = Proxy::start(&config);
    let any = ClientOpts::default().config();
    for (name, want, which) in [
        ("b.example", &site.b, "exact"),
        ("x.wild.example", &site.wild, "wildcard"),
        ("a.example", &site.default, "exact, first certificate"),
        ("127.0.0.1", &site.default, "no SNI (an IP address)"),
        ("unknown.example", &site.default, "unknown name"),
        (
            "deep.x.wild.example",
            &site.default,
            "a wildcard covers one label",
        ),
    ] {
        let conn = tls_connect_ok(config.tls_port(), &any, name);
        assert!(
            served_cert(&conn) == want.der,
            "{name} ({which}) got another certificate"
        );
    }
    // The chosen certificates verify against the CA and serve requests.
    let trusted = trusting(&site);
    for name in ["b.example", "x.wild.example", "a.example"] {
        let mut conn = tls_connect_ok(config.tls_port(), &trusted, name);
        let response = conn.roundtrip(&get_as(name, "/"));
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.text(), "ok");
    }
    let line = proxy.wait_log_lines(1, "an access line with the SNI", |l| {
        l.contains("sni=\"x.wild.example\"")
    });
    assert!(line[0].contains("tls_version=\"TLSv1.3\""), "{}", line[0]);
    assert!(line[0].contains("tls_cipher=\"TLS13_"), "{}", line[0]);
}

#[test]
fn alpn_agrees_on_http11_and_refuses_only_unknown_protocols() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site);
    let _proxy = Proxy::start(&config);
    let offer = |alpn: Vec<Vec<u8>>| {
        ClientOpts {
            alpn: Some(alpn),
            ..ClientOpts::default()
        }
        .config()
    };
    let conn = tls_connect_ok(
        config.tls_port(),
        &offer(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        "a.example",
    );
    assert_eq!(conn.wire().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut conn = tls_connect_ok(config.tls_port(), &offer(vec![]), "a.example");
    assert_eq!(
        conn.wire().conn.alpn_protocol(),
        None,
        "no ALPN offered, none agreed"
    );
    assert_eq!(conn.roundtrip(&get_request("/")).status(), 200);
    let refused = tls_connect(config.tls_port(), &offer(vec![b"h2".to_vec()]), "a.example");
    let err = refused.err().expect("a client offering only h2 is refused");
    assert!(err.contains("NoApplicationProtocol"), "{err}");
    // openssl says the same: alert 120.
    let out = s_client(
        config.tls_port(),
        &["-alpn", "h2", "-servername", "a.example"],
        b"",
    );
    assert!(out.contains("no application protocol"), "{out}");
}

#[test]
fn tls12_and_tls13_both_served_and_min_version_13_refuses_12() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site);
    let proxy = Proxy::start(&config);
    let versions: [(&'static [&'static rustls::SupportedProtocolVersion], _); 2] = [
        (&TLS12_ONLY, rustls::ProtocolVersion::TLSv1_2),
        (&TLS13_ONLY, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (versions, want) in versions {
        let client = ClientOpts {
            verify_with: Some(&site.pki),
            versions: Some(versions),
            ..ClientOpts::default()
        }
        .config();
        let mut conn = tls_connect_ok(config.tls_port(), &client, "a.example");
        assert_eq!(conn.wire().conn.protocol_version(), Some(want));
        assert_eq!(conn.roundtrip(&get_request("/v")).status(), 200);
    }
    proxy.wait_log_lines(1, "a TLS 1.2 request logged", |l| {
        l.contains("tls_version=\"TLSv1.2\"")
    });

    let strict = tls_config(backend.port, &site).with(|c| {
        c.tls.as_mut().expect("tls").min_version = Some("1.3".into());
    });
    let _strict = Proxy::start(&strict);
    let old = ClientOpts {
        versions: Some(&TLS12_ONLY),
        ..ClientOpts::default()
    }
    .config();
    let err = tls_connect(strict.tls_port(), &old, "a.example").err();
    assert!(
        err.is_some(),
        "a TLS 1.2 client must be refused with min_version = 1.3"
    );
    let modern = ClientOpts::default().config();
    tls_connect_ok(strict.tls_port(), &modern, "a.example");
}

/// The worker that served the request for `path`, from its access line.
fn worker_of(proxy: &Proxy, path: &str) -> String {
    let lines = proxy.wait_log_lines(1, &format!("the access line of {path}"), |l| {
        l.contains(&format!(" path={path} "))
    });
    log_field(&lines[0], "worker=")
        .expect("worker field")
        .to_string()
}

#[test]
fn a_session_ticket_issued_by_one_worker_resumes_on_another() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site).with(|c| c.server.workers = Some(2));
    let proxy = Proxy::start(&config);
    let session = tempfile::NamedTempFile::new().expect("session file");
    let session = session.path().display().to_string();
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    let first = s_client(
        config.tls_port(),
        &[
            "-servername",
            "a.example",
            "-tls1_3",
            "-sess_out",
            &session,
            "-ign_eof",
        ],
        request("/first").as_bytes(),
    );
    assert!(first.contains("HTTP/1.1 200 OK"), "{first}");
    let issuer = worker_of(&proxy, "/first");
    // The same ticket, over and over, until a connection lands on the other worker.
    for attempt in 0..40 {
        let path = format!("/resume-{attempt}");
        let out = s_client(
            config.tls_port(),
            &[
                "-servername",
                "a.example",
                "-tls1_3",
                "-sess_in",
                &session,
                "-ign_eof",
            ],
            request(&path).as_bytes(),
        );
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
        if worker_of(&proxy, &path) != issuer {
            assert!(
                out.contains("Reused, TLSv1.3"),
                "the other worker did not resume the ticket of worker {issuer}:\n{out}"
            );
            return;
        }
    }
    panic!("40 connections all landed on worker {issuer}");
}

#[test]
fn a_silent_client_is_cut_at_the_handshake_timeout_without_holding_up_others() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site)
        .with(|c| c.tls.as_mut().expect("tls").handshake_timeout_seconds = Some(0.5))
        .admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    let started = Instant::now();
    let mut silent =
        std::net::TcpStream::connect(("127.0.0.1", config.tls_port())).expect("connect");
    let mut partial =
        std::net::TcpStream::connect(("127.0.0.1", config.tls_port())).expect("connect");
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("a record's start");
    // Meanwhile others are served.
    let mut conn = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    assert_eq!(conn.roundtrip(&get_request("/")).status(), 200);
    for stream in [&mut silent, &mut partial] {
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "cut after {took:?}");
    assert!(took < Duration::from_secs(3), "cut only after {took:?}");
    wait_until(IO_TIMEOUT, "two handshake timeouts counted", || {
        admin
            .metrics()
            .value("ringproxy_tls_handshakes_total", &[("result", "timeout")])
            == 2.0
    });
    let m = admin.metrics();
    assert_eq!(
        m.value("ringproxy_tls_handshakes_total", &[("result", "full")]),
        1.0
    );
    assert!(m
        .histogram("ringproxy_tls_handshake_seconds")
        .iter()
        .any(|b| b.count == 1.0));
    assert_eq!(m.value("ringproxy_tls_resumption_ratio", &[]), 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for name in ["test.local", "b.example", "*.wild.example"] {
        let expiry = m.value(
            "ringproxy_tls_certificate_expiry_timestamp_seconds",
            &[("name", name)],
        );
        assert!(expiry > now, "{name} expires at {expiry}");
    }
    drop(proxy);
}

#[test]
fn plain_http_to_the_tls_port_gets_400_with_a_hint_and_is_closed() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site);
    let _proxy = Proxy::start(&config);
    let mut conn = HttpConn::connect(config.tls_port());
    let response = conn.roundtrip(&get_request("/"));
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .contains("plain HTTP request sent to the HTTPS port"),
        "{}",
        response.text()
    );
    assert!(response.head.connection_has("close"));
    conn.expect_closed();
    assert!(backend.requests().is_empty());
}

#[test]
fn redirect_http_sends_plain_requests_to_https_keeping_path_and_query() {
    let site = site();
    let backend = Backend::echo_target();
    let config = tls_config(backend.port, &site)
        .with(|c| c.tls.as_mut().expect("tls").redirect_http = Some(true));
    let _proxy = Proxy::start(&config);
    let port = config.tls_port();
    let mut conn = HttpConn::connect(config.port());
    let response = conn.roundtrip(&get_as("shop.example:8080", "/a/b?x=1&y=%20z"));
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.header("location"),
        Some(format!("https://shop.example:{port}/a/b?x=1&y=%20z").as_str())
    );
    // The connection stays usable; IPv6 hosts keep their brackets.
    let response = conn.roundtrip(&get_as("[::1]:3000", "/"));
    assert_eq!(
        response.header("location"),
        Some(format!("https://[::1]:{port}/").as_str())
    );
    // ACME http-01 challenges still reach the backend.
    let acme = conn.roundtrip(&get_as("shop.example", "/.well-known/acme-challenge/tok"));
    assert_eq!(acme.status(), 200);
    assert_eq!(acme.text(), "/.well-known/acme-challenge/tok");
    // Over HTTPS, no redirect.
    let mut tls = tls_connect_ok(port, &trusting(&site), "a.example");
    let response = tls.roundtrip(&get_as("a.example", "/a?b"));
    assert_eq!((response.status(), response.text().as_str()), (200, "/a?b"));
}

#[test]
fn hsts_is_set_on_https_responses_only_and_replaces_the_upstreams() {
    let site = site();
    let backend = Backend::recording(|r| {
        let sts: &[(&str, &str)] = if r.req.head.target() == "/own" {
            &[("Strict-Transport-Security", "max-age=1")]
        } else {
            &[]
        };
        Reply::Send(response_bytes("200 OK", sts, b"ok"))
    });
    let config = tls_config(backend.port, &site)
        .with(|c| c.tls.as_mut().expect("tls").hsts_max_age_seconds = Some(31_536_000));
    let proxy = Proxy::start(&config);
    let mut tls = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    for path in ["/", "/own"] {
        let response = tls.roundtrip(&get_as("a.example", path));
        assert_eq!(
            response.head.get_all("strict-transport-security"),
            vec!["max-age=31536000"],
            "{path}"
        );
    }
    let mut plain = proxy.connect();
    let response = plain.roundtrip(&get_request("/"));
    assert_eq!(response.status(), 200);
    assert!(!response.head.has("strict-transport-security"));
}

#[test]
fn strict_sni_answers_421_to_a_host_the_chosen_certificate_does_not_name() {
    let site = site();
    let backend = Backend::echo_target();
    let config = tls_config(backend.port, &site);
    let _proxy = Proxy::start(&config);
    let trusted = trusting(&site);
    let mut conn = tls_connect_ok(config.tls_port(), &trusted, "b.example");
    let ok = conn.roundtrip(&get_as("b.example:443", "/mine"));
    assert_eq!(ok.status(), 200);
    // Another tenant's host through b.example's connection.
    let fronted = conn.roundtrip(&get_as("a.example", "/theirs"));
    assert_eq!(fronted.status(), 421);
    assert_eq!(
        conn.roundtrip(&get_as("b.example", "/again")).status(),
        200,
        "connection kept"
    );
    // A wildcard certificate covers its names.
    let mut wild = tls_connect_ok(
        config.tls_port(),
        &ClientOpts::default().config(),
        "x.wild.example",
    );
    assert_eq!(wild.roundtrip(&get_as("y.wild.example", "/")).status(), 200);
    assert_eq!(wild.roundtrip(&get_as("b.example", "/")).status(), 421);
    assert_eq!(
        backend
            .requests()
            .iter()
            .map(|r| r.req.head.target().to_string())
            .collect::<Vec<_>>(),
        ["/mine", "/again", "/"]
    );

    let lax = tls_config(backend.port, &site)
        .with(|c| c.tls.as_mut().expect("tls").strict_sni = Some(false));
    let _lax = Proxy::start(&lax);
    let mut conn = tls_connect_ok(lax.tls_port(), &trusted, "b.example");
    assert_eq!(
        conn.roundtrip(&get_as("a.example", "/theirs")).status(),
        200
    );
}

#[test]
fn mutual_tls_required_optional_and_absent_with_spoof_proof_headers() {
    let site = site();
    let clients = Pki::new("client CA");
    let alice = clients.issue_with("alice", &["alice.example"], |p| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Org");
    });
    let strangers = Pki::new("other CA");
    let stranger = strangers.issue("mallory", &["mallory.example"]);
    let backend = Backend::fixed("ok");
    let spoof = |conn: &mut HttpConn<TlsWire>| {
        let request = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Client-Cert-Subject: CN=admin\r\nx-client-cert-san: DNS:admin\r\n\r\n";
        assert_eq!(conn.roundtrip(request).status(), 200);
        backend.requests().pop().expect("a request").req.head
    };
    let with_auth = |required: Option<bool>| {
        tls_config(backend.port, &site).with(|c| {
            c.tls.as_mut().expect("tls").client_auth =
                Some(crate::common::config::ClientAuthSection {
                    ca: clients.ca_file.display().to_string(),
                    required,
                })
        })
    };
    let as_client = |cert: Option<&Issued>| {
        ClientOpts {
            verify_with: Some(&site.pki),
            client_cert: cert,
            ..ClientOpts::default()
        }
        .config()
    };

    // Required: no certificate, or one of another CA, is refused in the handshake.
    let required = with_auth(None);
    let _p = Proxy::start(&required);
    let port = required.tls_port();
    assert!(tls_connect(port, &as_client(None), "a.example")
        .and_then(|mut c| c
            .try_send(&get_request("/"))
            .and_then(|_| c.read_response("GET"))
            .map_err(|e| e.to_string()))
        .is_err());
    assert!(tls_connect(port, &as_client(Some(&stranger)), "a.example")
        .and_then(|mut c| c
            .try_send(&get_request("/"))
            .and_then(|_| c.read_response("GET"))
            .map_err(|e| e.to_string()))
        .is_err());
    let mut conn = tls_connect_ok(port, &as_client(Some(&alice)), "a.example");
    let seen = spoof(&mut conn);
    assert_eq!(
        seen.get_all("x-client-cert-subject"),
        vec!["CN=alice.example, O=Example Org"]
    );
    assert_eq!(seen.get_all("x-client-cert-san"), vec!["DNS:alice.example"]);

    // Optional: without a certificate the request goes on, its spoofed headers removed.
    let optional = with_auth(Some(false));
    let _p = Proxy::start(&optional);
    let mut conn = tls_connect_ok(optional.tls_port(), &as_client(None), "a.example");
    let seen = spoof(&mut conn);
    assert!(
        !seen.has("x-client-cert-subject") && !seen.has("x-client-cert-san"),
        "{seen:?}"
    );
    let mut conn = tls_connect_ok(optional.tls_port(), &as_client(Some(&alice)), "a.example");
    assert_eq!(
        spoof(&mut conn).get("x-client-cert-san"),
        Some("DNS:alice.example")
    );

    // Absent: client-sent copies never pass, over TLS or plain HTTP.
    let absent = tls_config(backend.port, &site);
    let proxy = Proxy::start(&absent);
    let mut conn = tls_connect_ok(absent.tls_port(), &as_client(None), "a.example");
    let seen = spoof(&mut conn);
    assert!(
        !seen.has("x-client-cert-subject") && !seen.has("x-client-cert-san"),
        "{seen:?}"
    );
    let mut plain = proxy.connect();
    plain.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Client-Cert-Subject: CN=admin\r\n\r\n");
    assert_eq!(plain.read_response("GET").expect("response").status(), 200);
    assert!(!backend
        .requests()
        .pop()
        .expect("request")
        .req
        .head
        .has("x-client-cert-subject"));
}

#[test]
fn keep_alive_pipelining_and_parked_tls_connections_keep_their_session() {
    let site = site();
    let backend = Backend::echo_target();
    let config = tls_config(backend.port, &site).admin_api();
    let _proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    let mut conn = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    // Pipelined: three requests in one write, answered in order.
    let mut three = Vec::new();
    for path in ["/1", "/2", "/3"] {
        three.extend_from_slice(&get_as("a.example", path));
    }
    conn.send(&three);
    for path in ["/1", "/2", "/3"] {
        assert_eq!(conn.read_response("GET").expect("pipelined").text(), path);
    }
    // Quiet long enough to be parked (socket and session, no task), then used again.
    wait_until(IO_TIMEOUT, "the idle TLS connection parked", || {
        admin
            .metrics()
            .value("ringproxy_parked_connections", &[("worker", "0")])
            == 1.0
    });
    for path in ["/after-park", "/and-again"] {
        assert_eq!(conn.roundtrip(&get_as("a.example", path)).text(), path);
    }
}

#[test]
fn large_bodies_both_ways_over_tls_arrive_whole_with_flat_memory() {
    const DOWNLOAD: usize = 50_000_000;
    let site = site();
    let upload_backend = Backend::body_digest();
    let download = pattern(DOWNLOAD, 9);
    let expected = sha256_hex(&download);
    let download = std::sync::Arc::new(download);
    let served = download.clone();
    let download_backend = Backend::raw(move |mut conn, _| {
        while let Ok(Some(_)) = conn.read_request() {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                served.len()
            );
            if conn.try_send(head.as_bytes()).is_err() || conn.try_send(&served).is_err() {
                return;
            }
        }
    });
    let upload_config = tls_config(upload_backend.port, &site);
    let upload_proxy = Proxy::start(&upload_config);
    let body = pattern(1 << 20, 5);
    let mut conn = tls_connect_ok(upload_config.tls_port(), &trusting(&site), "a.example");
    let response = conn.roundtrip(&request_bytes("POST", "/up", &[], &body));
    assert_eq!(response.text(), sha256_hex(&body));
    // Chunked too.
    let mut chunked =
        b"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.chunks(100_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(conn.roundtrip(&chunked).text(), sha256_hex(&body));
    drop(upload_proxy);

    let config = tls_config(download_backend.port, &site);
    let proxy = Proxy::start(&config);
    let mut conn = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    assert_eq!(
        conn.roundtrip(&get_as("a.example", "/warm")).body.len(),
        DOWNLOAD
    );
    let before = peak_rss_kib(proxy.pid());
    for _ in 0..2 {
        let response = conn.roundtrip(&get_as("a.example", "/big"));
        assert_eq!(response.body.len(), DOWNLOAD);
        assert_eq!(sha256_hex(&response.body), expected);
    }
    // VmHWM is updated lazily and may read lower after pages were handed back: saturating.
    let grown = peak_rss_kib(proxy.pid()).saturating_sub(before);
    assert!(
        grown < 8 * 1024,
        "peak RSS grew by {grown} KiB over 100 MB through TLS"
    );
}

#[test]
fn websocket_upgrade_tunnels_over_tls_both_ways() {
    let site = site();
    let backend = Backend::raw(|mut conn, _| {
        let Ok(Some(_)) = conn.read_head() else {
            return;
        };
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello";
        if conn.try_send(switched).is_err() {
            return;
        }
        let mut buf = [0u8; 16384];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = conn.try_send(b"bye");
                    return;
                }
                Ok(n) => {
                    if conn.try_send(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let config = tls_config(backend.port, &site);
    let _proxy = Proxy::start(&config);
    let mut conn = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    conn.send(b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly");
    let head = conn.read_head().expect("101").expect("101");
    assert_eq!(head.status(), 101);
    let read_exactly = |conn: &mut HttpConn<TlsWire>, len: usize| {
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).expect("tunnelled bytes");
        buf
    };
    assert_eq!(read_exactly(&mut conn, 5), b"hello");
    assert_eq!(read_exactly(&mut conn, 5), b"early");
    for i in 0..20 {
        let message = format!("message-{i:02}");
        conn.send(message.as_bytes());
        assert_eq!(read_exactly(&mut conn, message.len()), message.as_bytes());
    }
    let large = pattern(300_000, 4);
    conn.send(&large);
    assert!(
        read_exactly(&mut conn, large.len()) == large,
        "large echo changed"
    );
    // The client's close_notify ends its direction; the upstream's last words come back.
    conn.wire_mut().conn.send_close_notify();
    conn.wire_mut().flush().expect("close_notify");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("until close_notify");
    assert_eq!(rest, b"bye");
}

#[test]
fn an_answer_while_the_upload_streams_is_relayed_both_ways_over_tls() {
    let site = site();
    let backend = Backend::raw(|conn, _| echo_as_it_reads(conn));
    let config = tls_config(backend.port, &site);
    let _proxy = Proxy::start(&config);
    let mut conn = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    assert_echoed_while_uploading(&mut conn, &pattern(8 << 20, 6), 100_000);
}

#[test]
fn a_clean_end_sends_close_notify() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site);
    let _proxy = Proxy::start(&config);
    let mut conn = tls_connect_ok(config.tls_port(), &trusting(&site), "a.example");
    let response =
        conn.roundtrip(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status(), 200);
    // rustls reports an end without close_notify as UnexpectedEof; a clean one as Ok(0).
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("a close_notify, not a bare FIN");
    assert!(rest.is_empty());
}

#[test]
fn idle_tls_connections_park_with_their_session_in_little_memory() {
    const IDLE: usize = 500;
    let site = site();
    let backend = Backend::echo_target();
    let config = tls_config(backend.port, &site).admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    let client = ClientOpts::default().config();
    let open = |count: usize| -> Vec<HttpConn<TlsWire>> {
        (0..count)
            .map(|i| {
                let mut conn = tls_connect_ok(config.tls_port(), &client, "a.example");
                let path = format!("/idle/{i}");
                assert_eq!(conn.roundtrip(&get_as("a.example", &path)).text(), path);
                conn
            })
            .collect()
    };
    drop(open(100)); // the allocator's first growth, not counted
    let parked = |n: usize| {
        admin
            .metrics()
            .value("ringproxy_parked_connections", &[("worker", "0")])
            == n as f64
    };
    wait_until(IO_TIMEOUT, "the warm-up connections gone", || parked(0));
    let before = proxy.rss_kib();
    let mut idle = open(IDLE);
    wait_until(IO_TIMEOUT, "every idle TLS connection parked", || {
        parked(IDLE)
    });
    let per_conn = (proxy.rss_kib().saturating_sub(before)) * 1024 / IDLE as u64;
    // A connection with a task and its buffers would cost several times this (measured: about
    // 8 KiB each, mostly rustls's state; nginx holds about 15 KiB per idle TLS connection).
    assert!(
        per_conn < 16 * 1024,
        "{per_conn} bytes per idle TLS connection"
    );
    // Their sessions work on after the parking.
    for (i, conn) in idle.iter_mut().enumerate().step_by(50) {
        let path = format!("/back/{i}");
        assert_eq!(conn.roundtrip(&get_as("a.example", &path)).text(), path);
    }
}

#[test]
fn the_proxy_protocol_header_is_read_before_the_tls_handshake() {
    let site = site();
    let backend = Backend::fixed("ok");
    let config = tls_config(backend.port, &site).with(|c| {
        c.server.proxy_protocol = Some(true);
        c.server.trusted_proxies = Some(vec!["127.0.0.1".into()]);
    });
    let _proxy = Proxy::start(&config);
    let header = b"PROXY TCP4 203.0.113.9 192.0.2.1 5555 443\r\n";
    let mut conn = tls_connect_after(config.tls_port(), &trusting(&site), "a.example", header)
        .expect("TLS after a PROXY header");
    assert_eq!(conn.roundtrip(&get_as("a.example", "/")).status(), 200);
    let seen = backend.requests();
    assert_eq!(seen[0].req.head.get("x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(seen[0].req.head.get("x-forwarded-proto"), Some("https"));
    // Without the header, the TLS listener closes the connection as the plain one does.
    assert!(tls_connect(config.tls_port(), &trusting(&site), "a.example").is_err());
}
