//! Routing: each match kind and the precedence table (exact host, wildcard, any host; exact
//! path, longest prefix on segment boundaries, regexes; methods and headers), Host with port,
//! trailing dot and upper case, absolute-form targets, the group `default` as fallback and 404
//! without it, strip and rewrite prefix with query strings, field edits both ways, host_header,
//! redirects, fixed responses, per-route timeout and body limit, WebSocket through a route,
//! and the route and upstream on each access log line.

use crate::common::config::{RedirectEntry, RespondEntry, RouteEntry};
use crate::common::live_backend::LiveBackend;
use crate::common::*;
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `{ name = value }` for a route's map keys.
fn map(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

/// `method target` with these extra fields (and `Host: host` unless `host` is empty).
fn request(method: &str, target: &str, host: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    if !host.is_empty() {
        out.push_str(&format!("Host: {host}\r\n"));
    }
    for (name, value) in fields {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        out.push_str("Content-Length: 0\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// (method, target, Host, more fields, the upstream or answer expected).
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn routes_match_by_specificity_whatever_their_order_in_the_file() {
    let names = [
        "app", "regex", "static", "img", "wild", "deep", "api", "apipost", "canary",
    ];
    let backends: BTreeMap<&str, Backend> = names.iter().map(|n| (*n, Backend::named(n))).collect();
    let mut config = TestConfig::new(&[backends["app"].port]);
    for name in &names[1..] {
        config = config.group(name, &[(backends[name].port, 1)]);
    }
    // Least specific first: the file's order must not matter.
    let config = config
        .route(RouteEntry::to("regex").with(|r| r.path_regex = Some("^/u/[0-9]+$".into())))
        .route(RouteEntry::to("static").with(|r| r.path_prefix = Some("/static/".into())))
        .route(RouteEntry::to("img").with(|r| r.path_prefix = Some("/static/img".into())))
        .route(RouteEntry::default().with(|r| {
            r.path = Some("/robots.txt".into());
            r.respond = Some(RespondEntry {
                body: Some("robots".into()),
                ..RespondEntry::default()
            });
        }))
        .route(RouteEntry::to("wild").with(|r| r.hosts = strings(&["*.example.com"])))
        .route(RouteEntry::to("deep").with(|r| r.hosts = strings(&["*.api.example.com"])))
        .route(RouteEntry::to("api").with(|r| r.hosts = strings(&["api.example.com"])))
        .route(RouteEntry::to("apipost").with(|r| {
            r.hosts = strings(&["api.example.com"]);
            r.methods = strings(&["POST"]);
        }))
        .route(RouteEntry::to("canary").with(|r| {
            r.hosts = strings(&["api.example.com"]);
            r.methods = strings(&["GET", "POST"]);
            r.headers = map(&[("X-Canary", "1")]);
        }));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    let mut routed = |raw: Vec<u8>| {
        let response = conn.roundtrip(&raw);
        assert_eq!(response.status(), 200, "{response:?}");
        response.text().split(' ').next().unwrap_or("").to_string()
    };
    let cases: &[Case] = &[
        ("GET", "/", "test.local", &[], "app"),
        ("GET", "/u/42", "test.local", &[], "regex"),
        ("GET", "/u/42/x", "test.local", &[], "app"),
        ("GET", "/static/site.css", "test.local", &[], "static"),
        ("GET", "/static/img/a.png", "test.local", &[], "img"),
        ("GET", "/static/img", "test.local", &[], "img"),
        ("GET", "/static/imgx", "test.local", &[], "static"),
        ("GET", "/static", "test.local", &[], "app"),
        ("GET", "/robots.txt", "test.local", &[], "robots"),
        ("GET", "/robots.txt/x", "test.local", &[], "app"),
        ("GET", "/", "www.example.com", &[], "wild"),
        ("GET", "/", "a.b.example.com", &[], "wild"),
        ("GET", "/", "example.com", &[], "app"),
        ("GET", "/", "x.api.example.com", &[], "deep"),
        ("GET", "/", "api.example.com", &[], "api"),
        ("GET", "/", "API.Example.COM.:8080", &[], "api"),
        ("GET", "/", "api.example.com.", &[], "api"),
        // An exact host beats an any-host path, however specific.
        ("GET", "/static/site.css", "api.example.com", &[], "api"),
        ("POST", "/", "api.example.com", &[], "apipost"),
        (
            "POST",
            "/",
            "api.example.com",
            &[("X-Canary", "1")],
            "canary",
        ),
        (
            "GET",
            "/",
            "api.example.com",
            &[("X-Canary", "1")],
            "canary",
        ),
        ("GET", "/", "api.example.com", &[("X-Canary", "2")], "api"),
        // Absolute form: the target's authority is the host routed on, whatever Host says.
        ("GET", "http://api.example.com/x", "test.local", &[], "api"),
        ("GET", "http://API.EXAMPLE.COM:80", "test.local", &[], "api"),
    ];
    for (method, target, host, fields, want) in cases {
        let got = routed(request(method, target, host, fields));
        assert_eq!(got, *want, "{method} {target} Host: {host} {fields:?}");
    }
}

#[test]
fn prefixes_without_a_slash_match_on_segment_boundaries() {
    let (app, api) = (Backend::named("app"), Backend::named("api"));
    let config = TestConfig::new(&[app.port])
        .group("api", &[(api.port, 1)])
        .route(RouteEntry::to("api").with(|r| r.path_prefix = Some("/api".into())));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    for (path, want) in [
        ("/api", "api /api"),
        ("/api/", "api /api/"),
        ("/api/x?y=1", "api /api/x?y=1"),
        ("/api?y=1", "api /api?y=1"),
        ("/apix", "app /apix"),
        ("/ap", "app /ap"),
        ("/API", "app /API"),
    ] {
        assert_eq!(conn.get_ok(path).text(), want, "{path}");
    }
}

#[test]
fn without_a_default_group_an_unmatched_request_gets_404() {
    let api = Backend::named("api");
    let config = TestConfig::new(&[])
        .group("api", &[(api.port, 1)])
        .route(RouteEntry::to("api").with(|r| r.hosts = strings(&["api.example.com"])));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&request("GET", "/x", "www.example.com", &[]));
    assert_eq!(response.status(), 404);
    assert_eq!(response.text(), "404 Not Found\n");
    // Keep-alive: the connection serves the next request.
    let response = conn.roundtrip(&request("GET", "/x", "api.example.com", &[]));
    assert_eq!(response.text(), "api /x");
    assert!(api.requests().len() == 1);
    let lines = proxy.wait_log_lines(1, "for the 404", |l| l.contains("status=404"));
    assert_eq!(
        log_field(&lines[0], "reason=").map(|r| r.contains("no")),
        Some(true)
    );
}

#[test]
fn strip_and_rewrite_prefix_keep_the_query_byte_for_byte() {
    let (app, api) = (Backend::named("app"), Backend::named("api"));
    let config = TestConfig::new(&[app.port])
        .group("api", &[(api.port, 1)])
        .route(RouteEntry::to("api").with(|r| {
            r.path_prefix = Some("/v1/".into());
            r.strip_prefix = Some(true);
        }))
        .route(RouteEntry::to("api").with(|r| {
            r.path_prefix = Some("/v2".into());
            r.strip_prefix = Some(true);
        }))
        .route(RouteEntry::to("api").with(|r| {
            r.path_prefix = Some("/old/".into());
            r.rewrite_prefix = Some("/new/api/".into());
        }));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    for (path, want) in [
        (
            "/v1/users?x=%2F&y=a+b&z=/../",
            "api /users?x=%2F&y=a+b&z=/../",
        ),
        ("/v1/", "api /"),
        ("/v1/?q", "api /?q"),
        ("/v2/users", "api /users"),
        ("/v2", "api /"),
        ("/v2?q=1", "api /?q=1"),
        ("/v2x", "app /v2x"),
        ("/old/a/b?c=%2e%2e", "api /new/api/a/b?c=%2e%2e"),
        // The path is normalised before the prefix is taken off.
        ("/v1//users/./me/../you?k", "api /users/you?k"),
    ] {
        assert_eq!(conn.get_ok(path).text(), want, "{path}");
    }
}

#[test]
fn a_backends_own_redirect_gets_the_stripped_prefix_back() {
    let port = Arc::new(AtomicU16::new(0));
    let own = port.clone();
    let api = Backend::recording(move |_| {
        let location = format!("http://127.0.0.1:{}/users/7", own.load(Ordering::SeqCst));
        Reply::Send(response_bytes("302 Found", &[("Location", &location)], b""))
    });
    port.store(api.port, Ordering::SeqCst);
    let config =
        TestConfig::new(&[])
            .group("api", &[(api.port, 1)])
            .route(RouteEntry::to("api").with(|r| {
                r.path_prefix = Some("/v1/".into());
                r.strip_prefix = Some(true);
            }));
    let proxy = Proxy::start(&config);
    let response = proxy.connect().roundtrip(&get_request("/v1/users"));
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.header("location"),
        Some("http://test.local/v1/users/7")
    );
    assert_eq!(api.single_request().head.target(), "/users");
}

#[test]
fn routes_set_and_remove_fields_both_ways() {
    let api = Backend::recording(|_| {
        Reply::Send(response_bytes(
            "200 OK",
            &[
                ("Server", "app/1.0"),
                ("Cache-Control", "max-age=60"),
                ("cache-control", "public"),
                ("X-Other", "kept"),
            ],
            b"ok",
        ))
    });
    let config =
        TestConfig::new(&[])
            .group("api", &[(api.port, 1)])
            .route(RouteEntry::to("api").with(|r| {
                r.set_request_headers = map(&[("X-Env", "prod")]);
                r.remove_request_headers = strings(&["Cookie"]);
                r.set_response_headers = map(&[("Cache-Control", "no-store")]);
                r.remove_response_headers = strings(&["Server"]);
            }));
    let proxy = Proxy::start(&config);
    let response = proxy.connect().roundtrip(&request(
        "GET",
        "/",
        "test.local",
        &[
            ("X-Env", "dev"),
            ("x-env", "dev2"),
            ("Cookie", "session=1"),
            ("Accept", "*/*"),
        ],
    ));
    assert_eq!(response.status(), 200);
    assert_eq!(response.head.get_all("cache-control"), ["no-store"]);
    assert!(!response.head.has("server"), "{:?}", response.head);
    assert_eq!(response.header("x-other"), Some("kept"));
    let upstream = api.single_request().head;
    assert_eq!(upstream.get_all("x-env"), ["prod"], "{upstream:?}");
    assert!(!upstream.has("cookie"), "{upstream:?}");
    assert_eq!(upstream.get("accept"), Some("*/*"));
}

#[test]
fn host_header_is_the_clients_the_backends_or_a_literal() {
    let backends = [
        Backend::named("client"),
        Backend::named("backend"),
        Backend::named("literal"),
    ];
    let mut config = TestConfig::new(&[]);
    let groups = [
        ("client", "client"),
        ("backend", "backend"),
        ("internal", "internal.example:8080"),
    ];
    for (b, (name, host_header)) in backends.iter().zip(groups) {
        config = config.group(name, &[(b.port, 1)]);
        config.upstreams.get_mut(name).expect("group").host_header = Some(host_header.into());
        let prefix = format!("/{name}/");
        config = config.route(RouteEntry::to(name).with(|r| r.path_prefix = Some(prefix)));
    }
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    for path in ["/client/", "/backend/", "/internal/"] {
        conn.get_ok(path);
    }
    let seen: Vec<(String, String)> = backends
        .iter()
        .map(|b| {
            let head = b.single_request().head;
            let host = head.get("host").unwrap_or("").to_string();
            (host, head.get("x-forwarded-host").unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(seen[0].0, "test.local");
    assert_eq!(seen[1].0, format!("127.0.0.1:{}", backends[1].port));
    assert_eq!(seen[2].0, "internal.example:8080");
    // X-Forwarded-Host stays the client's.
    assert!(
        seen.iter().all(|(_, forwarded)| forwarded == "test.local"),
        "{seen:?}"
    );
}

#[test]
fn redirects_keep_the_path_when_asked_and_the_query_always() {
    let app = Backend::named("app");
    let config = TestConfig::new(&[app.port])
        .route(RouteEntry::default().with(|r| {
            r.path_prefix = Some("/old/".into());
            r.redirect = Some(RedirectEntry {
                to: "https://example.com/new/".into(),
                status: Some(308),
                keep_path: Some(true),
            });
            r.set_response_headers = map(&[("Cache-Control", "no-store")]);
        }))
        .route(RouteEntry::default().with(|r| {
            r.path_prefix = Some("/gone".into());
            r.redirect = Some(RedirectEntry {
                to: "/elsewhere".into(),
                ..RedirectEntry::default()
            });
        }));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    for (method, path, status, location) in [
        (
            "GET",
            "/old/a/b?x=1&y=%2F",
            308,
            "https://example.com/new/a/b?x=1&y=%2F",
        ),
        ("GET", "/old/", 308, "https://example.com/new/"),
        ("HEAD", "/old/c", 308, "https://example.com/new/c"),
        ("POST", "/old/p", 308, "https://example.com/new/p"),
        ("GET", "/gone/x?q=1", 302, "/elsewhere?q=1"),
        ("GET", "/gone", 302, "/elsewhere"),
    ] {
        let response = conn.roundtrip(&request(method, path, "test.local", &[]));
        assert_eq!(response.status(), status, "{method} {path}: {response:?}");
        assert_eq!(response.header("location"), Some(location), "{path}");
        assert_eq!(response.header("content-length"), Some("0"), "{path}");
        assert!(!response.head.connection_has("close"), "{path}");
    }
    let response = conn.get_ok("/old-not-prefix");
    assert_eq!(response.text(), "app /old-not-prefix");
    let response = conn.roundtrip(&get_request("/old/z"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(
        app.requests().len() == 1,
        "redirects never reach the upstream"
    );
}

#[test]
fn respond_routes_answer_themselves() {
    let config = TestConfig::new(&[])
        .route(RouteEntry::default().with(|r| {
            r.path = Some("/robots.txt".into());
            r.respond = Some(RespondEntry {
                status: Some(200),
                body: Some("User-agent: *\nDisallow:\n".into()),
                content_type: Some("text/plain".into()),
            });
        }))
        .route(RouteEntry::default().with(|r| {
            r.path_prefix = Some("/admin".into());
            r.respond = Some(RespondEntry {
                status: Some(403),
                body: Some("denied\n".into()),
                ..RespondEntry::default()
            });
            r.remove_response_headers = strings(&["Server"]);
        }));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    let response = conn.get_ok("/robots.txt");
    assert_eq!(response.text(), "User-agent: *\nDisallow:\n");
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(response.header("server"), Some("ringproxy"));
    let head = conn.roundtrip(&request("HEAD", "/robots.txt", "test.local", &[]));
    assert_eq!(head.header("content-length"), Some("24"));
    assert!(head.body.is_empty());
    // A request body that was read keeps the connection.
    let post = request_bytes("POST", "/admin/x", &[], b"some body");
    let denied = conn.roundtrip(&post);
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.text(), "denied\n");
    assert!(!denied.head.has("server"), "{denied:?}");
    assert_eq!(
        denied.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(conn.get_ok("/robots.txt").status(), 200);
}

#[test]
fn a_routes_request_timeout_overrides_the_global_one() {
    let slow = LiveBackend::start("slow");
    let config = TestConfig::new(&[slow.port])
        .group("quick", &[(slow.port, 1)])
        .route(RouteEntry::to("quick").with(|r| {
            r.path_prefix = Some("/hang/quick".into());
            r.request_timeout_seconds = Some(0.3);
        }))
        .with(|c| c.timeouts.request_timeout_seconds = Some(20.0));
    let proxy = Proxy::start(&config);
    let started = Instant::now();
    let response = proxy.connect().roundtrip(&get_request("/hang/quick"));
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The default group's requests keep the global timeout: still waiting after the route's.
    let mut conn = proxy.connect();
    conn.send(&get_request("/hang/global"));
    conn.expect_silence(Duration::from_millis(800));
}

#[test]
fn a_routes_body_limit_overrides_the_global_one_both_ways() {
    let sink = Backend::body_digest();
    let config = TestConfig::new(&[sink.port])
        .group("uploads", &[(sink.port, 1)])
        .route(RouteEntry::to("uploads").with(|r| {
            r.path_prefix = Some("/upload/".into());
            r.max_body_bytes = Some(1000);
        }))
        .route(RouteEntry::to("uploads").with(|r| {
            r.path_prefix = Some("/tiny/".into());
            r.max_body_bytes = Some(10);
        }))
        .with(|c| c.limits.max_body_bytes = Some(100));
    let proxy = Proxy::start(&config);
    let body = pattern(500, 1);
    for (path, status) in [("/upload/a", 200), ("/other", 413), ("/tiny/a", 413)] {
        let mut conn = proxy.connect();
        let response = conn.roundtrip(&request_bytes("POST", path, &[], &body));
        assert_eq!(response.status(), status, "{path}");
    }
    // Chunked: cut at the route's limit too.
    let mut conn = proxy.connect();
    let chunked =
        b"POST /tiny/b HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n\
        14\r\n01234567890123456789\r\n0\r\n\r\n";
    let response = conn.roundtrip(chunked);
    assert_eq!(response.status(), 413);
}

/// Answers an upgrade with 101 and echoes what it reads; plain requests get `plain`.
fn websocket_echo() -> Backend {
    Backend::raw(|mut conn, _| {
        let Ok(Some(head)) = conn.read_head() else {
            return;
        };
        if head.get("upgrade").is_none() {
            let _ = conn.try_send(&response_bytes("200 OK", &[], b"plain"));
            return;
        }
        let switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        if conn.try_send(switched).is_err() {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = conn.read(&mut buf) {
            if conn.try_send(&buf[..n]).is_err() {
                return;
            }
        }
    })
}

#[test]
fn websocket_upgrade_goes_through_a_route_chosen_by_its_upgrade_field() {
    let (app, ws) = (Backend::named("app"), websocket_echo());
    let config = TestConfig::new(&[app.port])
        .group("ws", &[(ws.port, 1)])
        .route(RouteEntry::to("ws").with(|r| {
            r.path_prefix = Some("/live".into());
            r.headers = map(&[("Upgrade", "websocket")]);
        }));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    conn.send(
        b"GET /live/chat HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let head = conn.read_head().expect("101").expect("101");
    assert_eq!(head.status(), 101, "{head:?}");
    conn.send(b"ping-frame");
    let mut echoed = [0u8; 10];
    conn.read_exact(&mut echoed)
        .expect("echo through the tunnel");
    assert_eq!(&echoed, b"ping-frame");
    // The same path without the upgrade goes to the default group.
    assert_eq!(
        proxy.connect().get_ok("/live/chat").text(),
        "app /live/chat"
    );
}

#[test]
fn access_log_lines_name_the_route_and_the_upstream() {
    let (app, api) = (Backend::named("app"), Backend::named("api"));
    let config = TestConfig::new(&[app.port])
        .group("api", &[(api.port, 1)])
        .route(RouteEntry::to("api").with(|r| {
            r.name = Some("api-v1".into());
            r.path_prefix = Some("/v1/".into());
        }))
        .route(RouteEntry::default().with(|r| {
            r.path = Some("/moved".into());
            r.redirect = Some(RedirectEntry {
                to: "/v1/".into(),
                ..RedirectEntry::default()
            });
        }));
    let proxy = Proxy::start(&config);
    let mut conn = proxy.connect();
    conn.get_ok("/v1/x");
    conn.get_ok("/other");
    assert_eq!(conn.roundtrip(&get_request("/moved")).status(), 302);
    let field = |path: &str, key: &str| {
        let lines = proxy.wait_log_lines(1, path, |l| {
            l.contains("access") && log_field(l, "path=") == Some(path)
        });
        log_field(&lines[0], key).map(str::to_string)
    };
    assert_eq!(field("/v1/x", "route=").as_deref(), Some("\"api-v1\""));
    assert_eq!(field("/v1/x", "upstream=").as_deref(), Some("\"api\""));
    assert_eq!(field("/other", "route=").as_deref(), Some("\"-\""));
    assert_eq!(field("/other", "upstream=").as_deref(), Some("\"default\""));
    assert_eq!(field("/moved", "route=").as_deref(), Some("\"1\""));
    assert_eq!(field("/moved", "upstream=").as_deref(), Some("\"-\""));
}
