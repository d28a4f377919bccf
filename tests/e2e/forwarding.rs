//! What the upstream receives, byte for byte: absolute-form targets in origin-form with their
//! authority as Host; header names with `_` dropped unless allowed; `Forwarded` appended to the
//! client's; Host values validated; asterisk-form only for OPTIONS; no fragments.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};

/// A backend that keeps every request head exactly as it arrived (these requests have no
/// body) and answers 200 `ok`.
struct HeadRecorder {
    backend: Backend,
    heads: Arc<Mutex<Vec<String>>>,
}

impl HeadRecorder {
    fn start() -> HeadRecorder {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let log = heads.clone();
        let backend = Backend::raw(move |conn, _| {
            let mut out = conn.stream().try_clone().expect("clone backend stream");
            let mut reader = BufReader::new(conn);
            loop {
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                log.lock().expect("heads lock").push(head);
                let reply = response_bytes("200 OK", &[], b"ok");
                if std::io::Write::write_all(&mut out, &reply).is_err() {
                    return;
                }
            }
        });
        HeadRecorder { backend, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads lock").clone()
    }
}

/// Sends `request` on a new connection; returns the response and the head the upstream got
/// for it (`None` if the request did not reach it).
fn send(proxy: &Proxy, upstream: &HeadRecorder, request: &str) -> (Message, Option<String>) {
    let before = upstream.heads().len();
    let response = proxy.connect().roundtrip(request.as_bytes());
    let heads = upstream.heads();
    assert!(heads.len() <= before + 1, "{heads:?}");
    (response, heads.get(before).cloned())
}

/// The request is forwarded and answered 200; returns the upstream head.
fn forwarded(proxy: &Proxy, upstream: &HeadRecorder, request: &str) -> String {
    let (response, head) = send(proxy, upstream, request);
    assert_eq!(response.status(), 200, "{request:?}: {response:?}");
    head.unwrap_or_else(|| panic!("{request:?} did not reach the upstream"))
}

/// The request is refused with 400 and never reaches the upstream.
fn refused(proxy: &Proxy, upstream: &HeadRecorder, request: &str) {
    let (response, head) = send(proxy, upstream, request);
    assert_eq!(response.status(), 400, "{request:?}: {response:?}");
    assert_eq!(head, None, "{request:?} reached the upstream");
}

/// The head's fields, one `Name: value` line each.
fn lines(head: &str) -> Vec<&str> {
    head.split("\r\n").filter(|l| !l.is_empty()).collect()
}

fn assert_line(head: &str, line: &str) {
    assert!(lines(head).contains(&line), "no {line:?} in {head:?}");
}

fn start() -> (HeadRecorder, Proxy) {
    let upstream = HeadRecorder::start();
    let proxy = Proxy::start(&TestConfig::new(&[upstream.backend.port]));
    (upstream, proxy)
}

#[test]
fn absolute_form_goes_upstream_in_origin_form_with_its_authority_as_host() {
    let (upstream, proxy) = start();
    let head = forwarded(
        &proxy,
        &upstream,
        "GET http://evil.example/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
    );
    assert!(head.starts_with("GET /x HTTP/1.1\r\n"), "{head:?}");
    assert_line(&head, "Host: evil.example");
    assert_line(&head, "X-Forwarded-Host: evil.example");
    assert!(!head.contains("good.example"), "{head:?}");
    assert_eq!(head.matches("\r\nHost:").count(), 1, "{head:?}");

    let head = forwarded(
        &proxy,
        &upstream,
        "GET http://a.example?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
    );
    assert!(head.starts_with("GET /?q=1 HTTP/1.1\r\n"), "{head:?}");
    assert_line(&head, "Host: a.example");

    let head = forwarded(
        &proxy,
        &upstream,
        "GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
    );
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head:?}");

    let head = forwarded(
        &proxy,
        &upstream,
        "GET http://[::1]:8080/six HTTP/1.1\r\nHost: good.example\r\n\r\n",
    );
    assert!(head.starts_with("GET /six HTTP/1.1\r\n"), "{head:?}");
    assert_line(&head, "Host: [::1]:8080");
    assert_line(&head, "X-Forwarded-Host: [::1]:8080");
    assert_line(
        &head,
        "Forwarded: for=127.0.0.1;proto=http;host=\"[::1]:8080\"",
    );
}

#[test]
fn absolute_form_with_userinfo_or_another_scheme_is_refused() {
    let (upstream, proxy) = start();
    refused(
        &proxy,
        &upstream,
        "GET http://user:pw@evil/ HTTP/1.1\r\nHost: good.example\r\n\r\n",
    );
    refused(
        &proxy,
        &upstream,
        "GET ftp://a/ HTTP/1.1\r\nHost: good.example\r\n\r\n",
    );
}

const UNDERSCORED: &str = "GET /u HTTP/1.1\r\nHost: test.local\r\nX_Forwarded_Proto: https\r\n\
                           X-Forwarded_Host: x\r\n\r\n";

#[test]
fn header_names_with_underscores_are_dropped_by_default() {
    let (upstream, proxy) = start();
    let head = forwarded(&proxy, &upstream, UNDERSCORED);
    let names: Vec<&str> = lines(&head)[1..]
        .iter()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert!(
        names.iter().all(|n| !n.contains('_')),
        "underscored names reached the upstream: {head:?}"
    );
    assert_line(&head, "X-Forwarded-Proto: http");
    assert_line(&head, "X-Forwarded-Host: test.local");
}

#[test]
fn header_names_with_underscores_pass_when_allowed() {
    let upstream = HeadRecorder::start();
    let proxy = Proxy::start(
        &TestConfig::new(&[upstream.backend.port])
            .with(|c| c.limits.allow_underscores_in_headers = Some(true)),
    );
    let head = forwarded(&proxy, &upstream, UNDERSCORED);
    assert_line(&head, "X_Forwarded_Proto: https");
    assert_line(&head, "X-Forwarded_Host: x");
    // The proxy's own fields are still its own.
    assert_line(&head, "X-Forwarded-Proto: http");
}

#[test]
fn trailer_names_with_underscores_are_dropped_by_default() {
    // The same folding applies to an upstream that merges trailers into the header section.
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    let request = b"POST /t HTTP/1.1\r\nHost: test.local\r\nTE: trailers\r\n\
                    Transfer-Encoding: chunked\r\n\r\n\
                    2\r\nhi\r\n0\r\nX_Forwarded_Proto: https\r\nX-Checksum: abc\r\n\r\n";
    let response = proxy.connect().roundtrip(request);
    assert_eq!(response.status(), 200, "{response:?}");
    let received = backend.single_request();
    assert_eq!(received.body, b"hi");
    let names: Vec<&str> = received.trailers.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.iter().all(|n| !n.contains('_')),
        "underscored trailer names reached the upstream: {:?}",
        received.trailers
    );
    assert_eq!(names, ["X-Checksum"], "{:?}", received.trailers);
}

#[test]
fn forwarded_is_appended_to_the_clients() {
    let (upstream, proxy) = start();
    let head = forwarded(
        &proxy,
        &upstream,
        "GET /f HTTP/1.1\r\nHost: test.local\r\nForwarded: for=1.2.3.4;proto=https\r\n\r\n",
    );
    assert_line(
        &head,
        "Forwarded: for=1.2.3.4;proto=https, for=127.0.0.1;proto=http;host=test.local",
    );
    assert_eq!(head.matches("Forwarded:").count(), 1, "{head:?}");

    let head = forwarded(
        &proxy,
        &upstream,
        "GET /f HTTP/1.1\r\nHost: test.local\r\nForwarded: for=1.1.1.1\r\n\
         Forwarded: for=2.2.2.2;by=10.0.0.1\r\n\r\n",
    );
    assert_line(
        &head,
        "Forwarded: for=1.1.1.1, for=2.2.2.2;by=10.0.0.1, for=127.0.0.1;proto=http;host=test.local",
    );
    assert_eq!(head.matches("Forwarded:").count(), 1, "{head:?}");

    let head = forwarded(
        &proxy,
        &upstream,
        "GET /f HTTP/1.1\r\nHost: test.local:8080\r\n\r\n",
    );
    // `:` is not a token character: a host with a port is quoted (RFC 7239 §4).
    assert_line(
        &head,
        "Forwarded: for=127.0.0.1;proto=http;host=\"test.local:8080\"",
    );
}

#[test]
fn forwarded_quotes_an_ipv6_client() {
    let upstream = HeadRecorder::start();
    let config =
        TestConfig::new(&[upstream.backend.port]).with(|c| c.server.host = Some("::1".into()));
    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let proxy = Proxy::start(&config);
    let stream = TcpStream::connect(SocketAddr::from((ip, proxy.port))).expect("connect [::1]");
    let mut conn = HttpConn::new(stream);
    let response = conn.roundtrip(b"GET /v6 HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert_eq!(response.status(), 200, "{response:?}");
    let head = upstream
        .heads()
        .pop()
        .expect("the request reached the upstream");
    assert_line(&head, "X-Forwarded-For: ::1");
    assert_line(&head, "Forwarded: for=\"[::1]\";proto=http;host=test.local");
}

#[test]
fn invalid_host_values_are_refused() {
    let (upstream, proxy) = start();
    for host in [
        "Host: a b",
        "Host: good.example@evil.example:80/x?",
        "Host:",
        "Host: host:99999",
    ] {
        refused(
            &proxy,
            &upstream,
            &format!("GET /h HTTP/1.1\r\n{host}\r\n\r\n"),
        );
    }
}

#[test]
fn valid_host_values_pass() {
    let (upstream, proxy) = start();
    for host in ["[::1]:8080", "example.com."] {
        let head = forwarded(
            &proxy,
            &upstream,
            &format!("GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        );
        assert_line(&head, &format!("Host: {host}"));
    }
}

#[test]
fn asterisk_form_only_for_options_and_no_fragments() {
    let (upstream, proxy) = start();
    refused(
        &proxy,
        &upstream,
        "GET * HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    refused(
        &proxy,
        &upstream,
        "GET /page#section HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    let head = forwarded(
        &proxy,
        &upstream,
        "OPTIONS * HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    assert!(head.starts_with("OPTIONS * HTTP/1.1\r\n"), "{head:?}");
}
