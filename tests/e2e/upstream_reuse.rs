//! Pooled upstream connections end to end: bytes an upstream sends past its response (a second
//! response smuggled behind a spliced body, a body after a HEAD answer) never reach another
//! client; such connections and ones the upstream closed while idle are counted by reason; and
//! a reload that reorders the backends under load never crosses a request to the wrong backend.
//! Both checks are covered: the receive posted on an idle connection (a request sent whole) and
//! the peek a streamed upload takes instead.

use crate::common::*;
use crate::common::{admin::*, live_backend::*, load::*};
use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

const DISCARDED: &str = "ringproxy_upstream_connections_discarded_total";

/// The response a second upstream response must never pass for: a cookie and `evil`.
fn smuggled_response() -> Vec<u8> {
    response_bytes("200 OK", &[("Set-Cookie", "session=attacker")], b"evil")
}

/// Asserts `response` is the backend's genuine answer on a connection other than the first.
fn assert_genuine(response: &Message) {
    assert_eq!(response.status(), 200, "{response:?}");
    assert!(
        !response.head.has("set-cookie"),
        "another client's stray response reached this one: {response:?}"
    );
    assert_eq!(response.text(), "genuine", "{response:?}");
    assert_ne!(
        response.header("x-conn"),
        Some("0"),
        "served on the dirty connection: {response:?}"
    );
}

/// `200 genuine`, saying which backend connection it came on.
fn genuine(index: usize) -> Vec<u8> {
    response_bytes("200 OK", &[("X-Conn", &index.to_string())], b"genuine")
}

/// Connection 0 answers `GET target` with `answer` and, in the same write, a complete second
/// response; every other request, on any connection, gets `genuine`.
fn smuggling_backend(target: &'static str, answer: Vec<u8>) -> Backend {
    Backend::raw(move |mut conn, index| {
        while let Ok(Some(req)) = conn.read_request() {
            let reply = if index == 0 && req.head.target() == target {
                let mut bytes = answer.clone();
                bytes.extend_from_slice(&smuggled_response());
                bytes
            } else {
                genuine(index)
            };
            if conn.try_send(&reply).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_response_smuggled_behind_a_spliced_body_never_reaches_the_next_client() {
    // 200000 bytes: the proxy splices the body, taking exactly its length off the socket.
    let big = pattern(200_000, 9);
    let backend = smuggling_backend("/big", response_bytes("200 OK", &[], &big));
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]));

    let first = proxy.connect().get_ok("/big");
    assert_eq!(first.body.len(), big.len());
    assert!(first.body == big, "the large body arrived altered");
    let second = proxy.connect().get_ok("/next");
    assert_genuine(&second);
    assert_eq!(
        backend.connections(),
        2,
        "expected a fresh upstream connection"
    );

    let metrics = admin.metrics();
    assert_eq!(metrics.value(DISCARDED, &[("reason", "stray_bytes")]), 1.0);
    assert_eq!(metrics.value(DISCARDED, &[("reason", "closed")]), 0.0);
}

#[test]
fn a_response_smuggled_behind_a_chunked_body_is_discarded_and_counted() {
    // Read along with the chunked body: the proxy holds the stray bytes already.
    let answer = chunked_response_bytes("200 OK", &[], &[b"hello"]);
    let backend = smuggling_backend("/chunked", answer);
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]));
    assert_eq!(proxy.connect().get_ok("/chunked").text(), "hello");
    assert_genuine(&proxy.connect().get_ok("/next"));
    let metrics = admin.metrics();
    assert_eq!(metrics.value(DISCARDED, &[("reason", "stray_bytes")]), 1.0);
}

#[test]
fn a_body_sent_after_a_head_answer_never_reaches_the_next_client() {
    // Connection 0 answers the HEAD with its head, then 100 ms later with 5 body bytes it should
    // never have sent; it answers anything else normally.
    let backend = Backend::raw(|mut conn, index| {
        while let Ok(Some(req)) = conn.read_request() {
            if req.head.method() == "HEAD" {
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
                if conn.try_send(head).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
                if conn.try_send(b"hello").is_err() {
                    return;
                }
            } else if conn.try_send(&genuine(index)).is_err() {
                return;
            }
        }
    });
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]));

    let mut conn = proxy.connect();
    let head = conn.roundtrip(&request_bytes("HEAD", "/h", &[], b""));
    assert_eq!(head.status(), 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("5"));
    assert!(head.body.is_empty());
    thread::sleep(Duration::from_millis(200));

    let next = proxy.connect().get_ok("/next");
    assert_genuine(&next);
    assert_eq!(next.header("x-conn"), Some("1"), "{next:?}");
    let metrics = admin.metrics();
    assert_eq!(metrics.value(DISCARDED, &[("reason", "stray_bytes")]), 1.0);
}

#[test]
fn an_idle_connection_the_upstream_closed_is_counted_and_replaced() {
    // Every connection serves one request (keep-alive as far as its answer says), then the
    // upstream closes it 50 ms later, while it idles in the pool.
    let backend = Backend::raw(|mut conn, index| {
        if let Ok(Some(_)) = conn.read_request() {
            let _ = conn.try_send(&genuine(index));
            thread::sleep(Duration::from_millis(50));
        }
    });
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]));
    let mut client = proxy.connect();
    assert_eq!(client.get_ok("/one").header("x-conn"), Some("0"));
    thread::sleep(Duration::from_millis(300));
    let second = client.get_ok("/two");
    assert_eq!(second.header("x-conn"), Some("1"), "{second:?}");
    assert_eq!(backend.connections(), 2);

    let metrics = admin.metrics();
    assert_eq!(metrics.value(DISCARDED, &[("reason", "closed")]), 1.0);
    assert_eq!(metrics.value(DISCARDED, &[("reason", "stray_bytes")]), 0.0);
}

/// `POST /upload` with a chunked body: streamed upstream (watched for an early answer), not
/// buffered, so it takes a pooled connection by the other check (the posted receive cancelled,
/// the socket peeked).
const CHUNKED_UPLOAD: &[u8] = b"POST /upload HTTP/1.1\r\nHost: test.local\r\n\
    Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";

/// Echoes a POST's body, answers anything else `genuine`; after answering `GET /dirty`, sends a
/// stray response 100 ms later on that connection.
fn echoing_backend() -> Backend {
    Backend::raw(|mut conn, index| {
        while let Ok(Some(req)) = conn.read_request() {
            let reply = if req.head.method() == "POST" {
                response_bytes("200 OK", &[("X-Conn", &index.to_string())], &req.body)
            } else {
                genuine(index)
            };
            if conn.try_send(&reply).is_err() {
                return;
            }
            if req.head.target() == "/dirty" {
                thread::sleep(Duration::from_millis(100));
                if conn.try_send(&smuggled_response()).is_err() {
                    return;
                }
            }
        }
    })
}

/// What `upload_after` leaves: the upload's answer, and all that must outlive it.
struct Upload {
    _proxy: Proxy,
    admin: Admin,
    backend: Backend,
    client: HttpConn,
    answer: Message,
}

/// On one client connection: `GET first` (on upstream connection 0), a pause while that
/// connection idles in the pool, then the chunked upload, whose body must come back whole.
fn upload_after(first: &str, pause: Duration) -> Upload {
    let backend = echoing_backend();
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]));
    let mut client = proxy.connect();
    assert_eq!(client.get_ok(first).header("x-conn"), Some("0"));
    thread::sleep(pause);
    let answer = client.roundtrip(CHUNKED_UPLOAD);
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(
        !answer.head.has("set-cookie"),
        "stray response relayed: {answer:?}"
    );
    assert_eq!(answer.text(), "hello world", "{answer:?}");
    Upload {
        _proxy: proxy,
        admin,
        backend,
        client,
        answer,
    }
}

#[test]
fn a_streamed_upload_reuses_a_clean_pooled_connection_and_gets_its_own_answer() {
    let mut run = upload_after("/clean", Duration::from_millis(50));
    let upload = &run.answer;
    assert_eq!(upload.header("x-conn"), Some("0"), "not reused: {upload:?}");
    // The connection stays in step: the next request on it gets its own answer.
    let after = run.client.get_ok("/after");
    assert_eq!(after.text(), "genuine", "{after:?}");
    assert_eq!(after.header("x-conn"), Some("0"), "{after:?}");
    assert_eq!(run.backend.connections(), 1);
    let metrics = run.admin.metrics();
    assert_eq!(metrics.value(DISCARDED, &[("reason", "stray_bytes")]), 0.0);
    assert_eq!(metrics.value(DISCARDED, &[("reason", "closed")]), 0.0);
}

#[test]
fn a_streamed_upload_never_takes_a_pooled_connection_that_got_stray_bytes() {
    // The stray response comes 100 ms after the answer to `/dirty`.
    let run = upload_after("/dirty", Duration::from_millis(200));
    let upload = &run.answer;
    assert_eq!(upload.header("x-conn"), Some("1"), "{upload:?}");
    let metrics = run.admin.metrics();
    assert_eq!(metrics.value(DISCARDED, &[("reason", "stray_bytes")]), 1.0);
}

/// The access log's backend for each request path.
fn logged_backends(proxy: &Proxy) -> HashMap<String, String> {
    proxy
        .stdout()
        .lines()
        .filter(|l| l.contains(" access: "))
        .filter_map(|l| {
            let path = log_field(l, "path=")?;
            let backend = log_field(l, "backend=")?.trim_matches('"').to_string();
            Some((path.to_string(), backend))
        })
        .collect()
}

#[test]
fn reloads_reordering_the_backends_under_load_never_cross_a_request() {
    let (a, b) = (LiveBackend::start("a"), LiveBackend::start("b"));
    // A third backend whose connects hang (backlog 0, its one slot taken) until the 0.2 s
    // connect timeout, so requests are always waiting to be retried elsewhere while a reload
    // renumbers the backends: a pool keyed by position would then hand such a retry a
    // connection to the backend now at that position.
    let (_stall_listener, stall) = raw_listener(false, 0);
    let _queued = TcpStream::connect(("127.0.0.1", stall)).expect("fill the accept queue");
    let forward = [(stall, 1), (a.port, 1), (b.port, 1)];
    let reverse = [(stall, 1), (b.port, 1), (a.port, 1)];
    let config = TestConfig::weighted(&forward)
        .with(|c| {
            c.timeouts.connect_timeout_seconds = Some(0.2);
            c.passive_health.enabled = Some(false);
        })
        .admin_api();
    let (proxy, admin) = (Proxy::start(&config), Admin::of(&config));
    let orders = [
        config.in_front_of(&reverse).to_toml(),
        config.in_front_of(&forward).to_toml(),
    ];

    let load = Load::start(proxy.port, 6, Duration::from_millis(1));
    for (round, order) in orders.iter().cycle().take(6).enumerate() {
        thread::sleep(Duration::from_millis(250));
        proxy.write_config(order);
        proxy.signal(libc::SIGHUP);
        let generation = round as u64 + 2;
        wait_until(Duration::from_secs(3), "the reload", || {
            admin.status()["config_generation"] == generation
        });
    }
    thread::sleep(Duration::from_millis(250));
    let report = load.stop();
    report.assert_no_failures();

    let served: HashMap<String, HashSet<String>> = [&a, &b]
        .iter()
        .map(|backend| {
            let paths = backend.hits().into_iter().map(|h| h.path).collect();
            (backend.name().to_string(), paths)
        })
        .collect();
    let urls: HashMap<&str, String> = [("a", a.url()), ("b", b.url())].into();
    let logged = logged_backends(&proxy);
    let mut checked = 0;
    for outcome in &report.outcomes {
        let name = outcome.result.as_deref().expect("no failures");
        assert!(
            served[name].contains(&outcome.path),
            "{} answered as {name}, which never received it",
            outcome.path
        );
        // The access log's line for it may lag; the ones there must name the backend that
        // really served the request.
        if let Some(backend) = logged.get(&outcome.path) {
            assert_eq!(
                backend, &urls[name],
                "{} was logged as sent to {backend} but {name} served it",
                outcome.path
            );
            checked += 1;
        }
    }
    assert!(
        report.outcomes.len() > 50 && checked > report.outcomes.len() / 2,
        "too little load to tell: {} requests, {checked} logged",
        report.outcomes.len()
    );
}
