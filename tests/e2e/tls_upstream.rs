//! `https://` backends: verified against `tls_ca` with the URL's host or `tls_server_name` as
//! the name (SNI), pooled and reused like plain ones, mutual TLS with `tls_client_cert`, and a
//! backend whose certificate does not verify (another CA, expired, another name) answered 502
//! with a log line that says why.

use crate::common::config::BackendEntry;
use crate::common::tls::*;
use crate::common::*;

/// The harness config in front of one `https://` backend at `url`.
fn in_front_of(url: String, change: impl FnOnce(&mut TestConfig)) -> TestConfig {
    TestConfig::new(&[]).with(|c| {
        c.backends = vec![BackendEntry {
            url,
            ..BackendEntry::default()
        }];
        change(c);
    })
}

/// `[upstream]` verifying `https://` backends with `pki`'s CA, as `api.internal`.
fn verified_by(pki: &Pki) -> impl FnOnce(&mut TestConfig) + '_ {
    |c| {
        c.upstream.tls_ca = Some(pki.ca_file.display().to_string());
        c.upstream.tls_server_name = Some("api.internal".into());
    }
}

#[test]
fn https_backend_verified_with_its_ca_by_name_and_pooled() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("api", &["api.internal"]);
    let backend = TlsBackend::start(Pki::server_config(&cert, None));
    let config = in_front_of(backend.url(), verified_by(&pki));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    for path in ["/one", "/two", "/three"] {
        let response = conn.roundtrip(&get_request(path));
        assert_eq!((response.status(), response.text().as_str()), (200, path));
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.sni.as_deref() == Some("api.internal")),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|s| s.conn == seen[0].conn),
        "one pooled connection: {seen:?}"
    );
    assert_eq!(seen[0].req.head.get("x-forwarded-proto"), Some("http"));

    // The name per backend too; the URL's host (an IP) would not verify against this cert.
    let per_backend = in_front_of(backend.url(), |c| {
        c.upstream.tls_ca = Some(pki.ca_file.display().to_string());
        c.backends[0].tls_server_name = Some("api.internal".into());
    });
    let proxy = Proxy::start(&per_backend);
    assert_eq!(proxy.connect().roundtrip(&get_request("/x")).status(), 200);
    let by_ip = in_front_of(backend.url(), |c| {
        c.upstream.tls_ca = Some(pki.ca_file.display().to_string());
    });
    let proxy = Proxy::start(&by_ip);
    assert_eq!(proxy.connect().roundtrip(&get_request("/x")).status(), 502);
    proxy.wait_log_lines(1, "why the upstream was refused", |l| {
        l.contains("TLS handshake with upstream failed") && l.contains("certificate")
    });
}

#[test]
fn an_upstream_certificate_that_does_not_verify_is_a_502_with_a_clear_log_line() {
    let trusted = Pki::new("trusted CA");
    let other = Pki::new("someone else");
    let cases = [
        (
            "another CA",
            other.issue("x", &["api.internal"]),
            "UnknownIssuer",
        ),
        (
            "expired",
            trusted.issue_with("old", &["api.internal"], |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            "expired",
        ),
        (
            "another name",
            trusted.issue("y", &["db.internal"]),
            "not valid for name",
        ),
    ];
    for (what, cert, reason) in cases {
        let backend = TlsBackend::start(Pki::server_config(&cert, None));
        let config = in_front_of(backend.url(), |c| {
            c.upstream.tls_ca = Some(trusted.ca_file.display().to_string());
            c.upstream.tls_server_name = Some("api.internal".into());
        });
        let proxy = Proxy::start(&config);
        let response = proxy.connect().roundtrip(&get_request("/"));
        assert_eq!(response.status(), 502, "{what}");
        let lines = proxy.wait_log_lines(1, "the upstream's failed handshake", |l| {
            l.contains("upstream connect failed")
        });
        assert!(
            lines[0].contains("TLS handshake with upstream failed") && lines[0].contains(reason),
            "{what}: {}",
            lines[0]
        );
        assert!(backend.seen().is_empty(), "{what}: nothing was sent");
    }
}

#[test]
fn mutual_tls_to_the_backend_and_unverified_labs() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("api", &["api.internal"]);
    let clients = Pki::new("proxy CA");
    let proxy_cert = clients.issue("proxy", &["proxy.internal"]);
    let backend = TlsBackend::start(Pki::server_config(&cert, Some(&clients)));
    let base = |c: &mut TestConfig| {
        c.upstream.tls_ca = Some(pki.ca_file.display().to_string());
        c.upstream.tls_server_name = Some("api.internal".into());
    };
    let without = in_front_of(backend.url(), base);
    let proxy = Proxy::start(&without);
    assert_eq!(proxy.connect().roundtrip(&get_request("/")).status(), 502);
    let with = in_front_of(backend.url(), |c| {
        base(c);
        c.upstream.tls_client_cert = Some(proxy_cert.cert.display().to_string());
        c.upstream.tls_client_key = Some(proxy_cert.key.display().to_string());
    });
    let proxy = Proxy::start(&with);
    assert_eq!(proxy.connect().roundtrip(&get_request("/m")).status(), 200);

    // tls_verify = false: any certificate, with a warning at start.
    let plain_backend =
        TlsBackend::start(Pki::server_config(&Pki::new("x").issue("z", &["z"]), None));
    let labs = in_front_of(plain_backend.url(), |c| c.upstream.tls_verify = Some(false));
    let proxy = Proxy::start(&labs);
    assert_eq!(
        proxy.connect().roundtrip(&get_request("/lab")).status(),
        200
    );
    assert!(
        proxy.stdout().contains("tls_verify = false"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn tls_to_the_client_and_to_the_backend_at_once() {
    let pki = Pki::new("CA");
    let front = pki.issue("front", &["test.local"]);
    let back = pki.issue("back", &["api.internal"]);
    let backend = TlsBackend::start(Pki::server_config(&back, None));
    let config = in_front_of(backend.url(), verified_by(&pki)).tls(vec![front.entry()]);
    let _proxy = Proxy::start(&config);
    let client = ClientOpts {
        verify_with: Some(&pki),
        ..ClientOpts::default()
    }
    .config();
    let mut conn = tls_connect_ok(config.tls_port(), &client, "test.local");
    let body = pattern(3 << 20, 8);
    let response = conn.roundtrip(&request_bytes("POST", "/both", &[], &body));
    assert_eq!(
        (response.status(), response.text().as_str()),
        (200, "/both")
    );
    let seen = backend.seen();
    assert_eq!(seen[0].req.body.len(), body.len());
    assert!(seen[0].req.body == body);
    assert_eq!(seen[0].req.head.get("x-forwarded-proto"), Some("https"));
}

#[test]
fn health_checks_of_an_https_backend_speak_tls() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("api", &["api.internal"]);
    let backend = TlsBackend::start(Pki::server_config(&cert, None));
    let config = in_front_of(backend.url(), verified_by(&pki))
        .fast_health_checks()
        .admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    wait_until(IO_TIMEOUT, "health probes over TLS", || {
        backend
            .seen()
            .iter()
            .filter(|s| s.req.head.target() == "/health")
            .count()
            >= 3
    });
    assert_eq!(admin.backend(0)["up"], true, "{}", admin.backend(0));
    assert_eq!(
        proxy.connect().roundtrip(&get_request("/app")).status(),
        200
    );

    // A backend whose certificate does not verify is taken down, saying why.
    let stranger = Pki::new("someone else");
    let wrong = TlsBackend::start(Pki::server_config(
        &stranger.issue("w", &["api.internal"]),
        None,
    ));
    let config = in_front_of(wrong.url(), verified_by(&pki))
        .fast_health_checks()
        .admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    admin.wait_up(0, false, IO_TIMEOUT);
    let lines = proxy.wait_log_lines(1, "the backend taken down", |l| l.contains("TLS handshake"));
    assert!(lines[0].contains("certificate"), "{}", lines[0]);
}

#[test]
fn an_https_backend_answering_while_the_upload_streams_is_relayed_both_ways() {
    let pki = Pki::new("CA");
    let cert = pki.issue("api", &["api.internal"]);
    let backend = TlsBackend::with(Pki::server_config(&cert, None), |conn, _, _| {
        echo_as_it_reads(conn)
    });
    let proxy = Proxy::start(&in_front_of(backend.url(), verified_by(&pki)));
    assert_echoed_while_uploading(&mut proxy.connect(), &pattern(4 << 20, 12), 200_000);
}

#[test]
fn a_pooled_https_connection_the_backend_closed_with_close_notify_is_not_reused() {
    use std::io::Write;
    let pki = Pki::new("CA");
    let cert = pki.issue("api", &["api.internal"]);
    // One answer per connection, then close_notify while the connection idles in the pool.
    let backend = TlsBackend::with(Pki::server_config(&cert, None), |mut conn, _, _| {
        if let Ok(Some(req)) = conn.read_request() {
            let body = req.head.target().to_string();
            let _ = conn.try_send(&response_bytes("200 OK", &[], body.as_bytes()));
            std::thread::sleep(std::time::Duration::from_millis(200));
            conn.wire_mut().conn.send_close_notify();
            let _ = conn.wire_mut().flush();
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    });
    let url = format!("https://127.0.0.1:{}", backend.port);
    let config = in_front_of(url, verified_by(&pki)).admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    let mut conn = proxy.connect();
    assert_eq!(conn.roundtrip(&get_request("/1")).text(), "/1");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(conn.roundtrip(&get_request("/2")).text(), "/2");
    let m = admin.metrics();
    let discarded = |reason| {
        m.value(
            "ringproxy_upstream_connections_discarded_total",
            &[("reason", reason)],
        )
    };
    assert_eq!((discarded("closed"), discarded("stray_bytes")), (1.0, 0.0));
    assert!(!proxy
        .stdout()
        .contains("upstream sent bytes after its response"));
}

#[test]
fn each_upstream_group_verifies_its_backends_with_its_own_ca_and_name() {
    use crate::common::config::{RouteEntry, UpstreamGroupSection};
    let (pki_a, pki_b) = (Pki::new("CA of group a"), Pki::new("CA of group b"));
    let backend_a = TlsBackend::start(Pki::server_config(&pki_a.issue("a", &["a.internal"]), None));
    let backend_b = TlsBackend::start(Pki::server_config(&pki_b.issue("b", &["b.internal"]), None));
    let group = |pki: &Pki, name: &str, url: String| UpstreamGroupSection {
        tls_ca: Some(pki.ca_file.display().to_string()),
        tls_server_name: Some(name.into()),
        backends: vec![BackendEntry {
            url,
            ..BackendEntry::default()
        }],
        ..UpstreamGroupSection::default()
    };
    let config = |b_ca: &Pki| {
        TestConfig::new(&[]).with(|c| {
            c.backends.clear();
            c.upstreams
                .insert("a".into(), group(&pki_a, "a.internal", backend_a.url()));
            c.upstreams
                .insert("b".into(), group(b_ca, "b.internal", backend_b.url()));
            c.routes = vec![
                RouteEntry::to("a").with(|r| r.path_prefix = Some("/a/".into())),
                RouteEntry::to("b").with(|r| r.path_prefix = Some("/b/".into())),
            ];
        })
    };
    let proxy = Proxy::start(&config(&pki_b));
    let mut conn = proxy.connect();
    assert_eq!(conn.roundtrip(&get_request("/a/x")).text(), "/a/x");
    assert_eq!(conn.roundtrip(&get_request("/b/y")).text(), "/b/y");
    assert_eq!(backend_a.seen()[0].sni.as_deref(), Some("a.internal"));
    assert_eq!(backend_b.seen()[0].sni.as_deref(), Some("b.internal"));

    // Group b trusting group a's CA: its backend does not verify, group a's still does.
    let proxy = Proxy::start(&config(&pki_a));
    let mut conn = proxy.connect();
    assert_eq!(conn.roundtrip(&get_request("/a/x")).status(), 200);
    assert_eq!(conn.roundtrip(&get_request("/b/y")).status(), 502);
}

#[test]
fn the_proxy_protocol_header_goes_on_the_socket_before_the_tls_handshake() {
    let pki = Pki::new("upstream CA");
    let cert = pki.issue("api", &["api.internal"]);
    let prefaces = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let backend =
        TlsBackend::start_after_proxy_v1(Pki::server_config(&cert, None), prefaces.clone());
    let config = in_front_of(backend.url(), |c| {
        verified_by(&pki)(c);
        c.upstream.send_proxy_protocol = Some("v1".into());
    });
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&get_request("/behind"));
    assert_eq!(
        (response.status(), response.text().as_str()),
        (200, "/behind")
    );
    let prefaces = prefaces.lock().unwrap().clone();
    assert_eq!(prefaces.len(), 1, "{prefaces:?}");
    assert!(
        prefaces[0].starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{prefaces:?}"
    );
    assert_eq!(backend.seen()[0].sni.as_deref(), Some("api.internal"));
}
