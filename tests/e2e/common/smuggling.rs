//! Request-smuggling probes: a request the proxy must refuse, with a complete second request
//! glued behind it in the same write. The proxy must answer exactly once with the expected
//! status, close the connection, and forward neither request to the backend.

use super::http::{HttpConn, Message};
use super::proxy::Proxy;
use super::{backend::Backend, is_closed_error};
use std::io::{self, Read};
use std::thread;
use std::time::Duration;

/// Longest wait for the proxy to close a connection after its error response.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long the backend gets to record anything that might have leaked through.
pub const SETTLE: Duration = Duration::from_millis(300);

/// One request that must be refused with `status`.
pub struct Refusal {
    pub name: &'static str,
    pub request: Vec<u8>,
    pub status: u16,
}

/// A refusal case; `name` also tags the smuggled request's path (`/smuggled/<name>`).
pub fn refusal(name: &'static str, request: impl AsRef<[u8]>, status: u16) -> Refusal {
    Refusal {
        name,
        request: request.as_ref().to_vec(),
        status,
    }
}

/// The complete, valid request sent behind each refused one.
pub fn smuggled_request(name: &str) -> Vec<u8> {
    format!("GET /smuggled/{name} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// A POST with `Host: x` and the given extra header lines (each ending in CRLF), then `body`.
pub fn post_with(header_lines: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("POST /refused HTTP/1.1\r\nHost: x\r\n{header_lines}\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// A chunked POST whose body is `body` as written (framing included).
pub fn chunked_post(body: &[u8]) -> Vec<u8> {
    post_with("Transfer-Encoding: chunked\r\n", body)
}

/// Sends `case` plus the smuggled request in one write on a fresh connection and checks: one
/// error response with the exact status, `Connection: close` and a short text/plain body, then
/// the connection closes with nothing more. Returns a description of what went wrong.
pub fn probe(port: u16, case: &Refusal) -> Result<(), String> {
    let mut conn = HttpConn::connect(port);
    let mut bytes = case.request.clone();
    bytes.extend_from_slice(&smuggled_request(case.name));
    // The proxy may close before reading everything; the response still has to arrive.
    if let Err(e) = conn.try_send(&bytes) {
        if !is_closed_error(&e) {
            return Err(format!("write failed: {e}"));
        }
    }
    let response = conn
        .read_response("GET")
        .map_err(|e| format!("no response: {e}"))?;
    check_error_response(&response, case.status)?;
    expect_closed_within(&mut conn, CLOSE_WAIT)
}

/// The proxy's own error response: exact status, `Connection: close`, `<code> <reason>\n` body.
pub fn check_error_response(response: &Message, status: u16) -> Result<(), String> {
    if response.status() != status {
        return Err(format!(
            "status {} (expected {status}), head {:?}, body {:?}",
            response.status(),
            response.head.start,
            response.text()
        ));
    }
    if !response.head.connection_has("close") {
        return Err(format!(
            "{status} without Connection: close: {:?}",
            response.head
        ));
    }
    let content_type = response.header("content-type").unwrap_or("");
    let text = response.text();
    if !content_type.starts_with("text/plain")
        || !text.starts_with(&format!("{status} "))
        || !text.ends_with('\n')
    {
        return Err(format!("not a proxy error body: {content_type:?} {text:?}"));
    }
    Ok(())
}

/// Ok when the peer closes (EOF or reset) within `wait` without sending another byte.
pub fn expect_closed_within(conn: &mut HttpConn, wait: Duration) -> Result<(), String> {
    conn.stream()
        .set_read_timeout(Some(wait))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    let mut buf = [0u8; 4096];
    match conn.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "connection not closed: {n} more bytes {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
        Err(e) if is_closed_error(&e) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("connection still open after {wait:?}"))
        }
        Err(e) => Err(format!("read after the response failed: {e}")),
    }
}

/// Runs every case of a family against `proxy` (whose only backend is `backend`, an
/// `Backend::echo_target()`), then checks that the backend received nothing, and that the
/// same proxy still serves a normal request afterwards. Panics listing every failed case.
pub fn assert_family_refused(proxy: &Proxy, backend: &Backend, cases: &[Refusal]) {
    let mut failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            probe(proxy.port, case)
                .err()
                .map(|why| format!("{} [{}]: {why}", case.name, escape(&case.request)))
        })
        .collect();
    thread::sleep(SETTLE);
    for leaked in backend.requests() {
        failures.push(format!(
            "backend received {:?} on upstream connection {}",
            leaked.req.head.start, leaked.conn
        ));
    }
    let after = "/after-family";
    let mut conn = proxy.connect();
    let response = conn.roundtrip(&super::get_request(after));
    if response.status() != 200 || response.text() != after {
        failures.push(format!(
            "normal request afterwards got {} {:?}",
            response.status(),
            response.text()
        ));
    }
    let seen: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.req.head.start.clone())
        .collect();
    if seen.last().map(String::as_str) != Some(&format!("GET {after} HTTP/1.1")[..]) {
        failures.push(format!("backend log after the normal request: {seen:?}"));
    }
    assert!(
        failures.is_empty(),
        "{} problem(s) over {} cases:\n  {}\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n  "),
        proxy.logs()
    );
}

/// Printable form of raw request bytes for failure messages.
pub fn escape(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(160)];
    let mut out: String = shown.escape_ascii().to_string();
    if bytes.len() > shown.len() {
        out.push_str(&format!("...({} bytes)", bytes.len()));
    }
    out
}
