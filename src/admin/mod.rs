//! The admin listener: `/metrics`, `/status`, `/healthz`, `/readyz` and runtime changes
//! (drain, enable, weight, reload). It runs on threads of its own with blocking sockets: admin
//! traffic is light and must never share a worker's event loop or the proxy's port. Each
//! connection gets a short-lived thread, so one slow or silent client cannot hold up a metrics
//! scrape or a health probe; their number is capped. `guard` decides who may ask.

mod guard;
mod prometheus;
mod routes;
mod status;

use crate::http::{parse_request, BodyKind, HeadLimits};
use crate::state::Shared;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bound on reading one admin request and writing its answer.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin request bodies are tiny (a weight); anything larger is refused.
const MAX_ADMIN_BODY: u64 = 4096;
/// Admin connections served at once; more are answered 503 at once.
const MAX_ADMIN_CONNECTIONS: usize = 16;

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json",
            body: format!("{value}\n"),
        }
    }
}

/// Binds the admin listener (if enabled) and serves it on a thread of its own.
pub fn spawn(shared: Arc<Shared>) -> std::io::Result<()> {
    let settings = shared.snapshot().config.admin.clone();
    if !settings.enabled {
        return Ok(());
    }
    let listener = TcpListener::bind(settings.listen).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on admin address {}: {e}", settings.listen),
        )
    })?;
    tracing::info!(listen = %settings.listen, "admin listening");
    if settings.exposed_without_token() {
        tracing::warn!(
            listen = %settings.listen,
            "the admin API is reachable from other hosts without a token \
             (admin.allow_unauthenticated_remote): anyone who reaches it can drain backends, \
             change weights and reload; set admin.token"
        );
    }
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let serving = Arc::new(AtomicUsize::new(0));
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => dispatch(stream, &shared, &serving),
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

/// Serves `stream` on a thread of its own, or answers 503 when `MAX_ADMIN_CONNECTIONS` are
/// being served already (or no thread can be had).
fn dispatch(stream: TcpStream, shared: &Arc<Shared>, serving: &Arc<AtomicUsize>) {
    let _ = stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT));
    if serving.fetch_add(1, Ordering::AcqRel) >= MAX_ADMIN_CONNECTIONS {
        serving.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(
            limit = MAX_ADMIN_CONNECTIONS,
            "admin connections at their limit; answering 503"
        );
        answer(
            stream,
            &Response::text(503, "503 too many admin connections\n"),
        );
        return;
    }
    let (shared, done) = (shared.clone(), serving.clone());
    let spawned = std::thread::Builder::new()
        .name("admin-conn".into())
        .spawn(move || {
            serve(stream, &shared);
            done.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        serving.fetch_sub(1, Ordering::AcqRel);
        tracing::warn!(error = %e, "cannot start an admin connection thread");
    }
}

/// One request per connection: read it, answer it, close.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let response = match (read_request(&mut stream), stream.local_addr()) {
        (Ok(request), Ok(local)) => {
            let token = shared.snapshot().config.admin.token.clone();
            match guard::admit(&request, token.as_deref(), local) {
                Ok(()) => routes::route(&request.method, &request.path, &request.body, shared),
                Err(refusal) => refusal,
            }
        }
        (Err(status), _) => Response::text(status, format!("{status} bad admin request\n")),
        (_, Err(_)) => return,
    };
    answer(stream, &response);
}

fn answer(mut stream: TcpStream, response: &Response) {
    let head =
        format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        response.status,
        crate::http::status::reason_phrase(response.status),
        response.content_type,
        response.body.len(),
        if response.status == 401 { "WWW-Authenticate: Bearer\r\n" } else { "" },
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(response.body.as_bytes());
}

/// One admin request, with every header field as sent (the proxy's parser sets aside the
/// hop-by-hop ones, which a guard must see too).
pub struct AdminRequest {
    pub method: String,
    pub path: String,
    headers: Vec<(String, String)>,
    pub body: String,
}

impl AdminRequest {
    /// Values of every field named `name` (case-insensitive), in order.
    pub fn headers_named(&self, name: &'static str) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first field named `name`.
    pub fn header(&self, name: &'static str) -> Option<&str> {
        self.headers_named(name).next()
    }
}

/// Header fields an admin request may have.
const MAX_ADMIN_HEADERS: usize = 64;

fn read_request(stream: &mut TcpStream) -> Result<AdminRequest, u16> {
    let limits = HeadLimits {
        max_request_line_bytes: 8192,
        max_header_bytes: 16 * 1024,
        max_headers: MAX_ADMIN_HEADERS,
        max_body_bytes: Some(MAX_ADMIN_BODY),
    };
    let deadline = Instant::now() + ADMIN_IO_TIMEOUT;
    let mut buf = bytes::BytesMut::with_capacity(1024);
    let head = loop {
        if let Some(head) = parse_request(&mut buf, &limits).map_err(|e| e.status())? {
            break head;
        }
        if Instant::now() > deadline || !read_some(stream, &mut buf) {
            return Err(408);
        }
    };
    // The head parsed already: parsed again here for every field, hop-by-hop ones included.
    let mut fields = [httparse::EMPTY_HEADER; MAX_ADMIN_HEADERS];
    let mut all = httparse::Request::new(&mut fields);
    if !matches!(all.parse(&head.raw), Ok(httparse::Status::Complete(_))) {
        return Err(400);
    }
    let headers = all
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_string(), value)
        })
        .collect();
    let body = match head.body {
        BodyKind::Length(n) => {
            while (buf.len() as u64) < n {
                if Instant::now() > deadline || !read_some(stream, &mut buf) {
                    return Err(408);
                }
            }
            String::from_utf8_lossy(&buf[..n as usize]).into_owned()
        }
        BodyKind::Empty => String::new(),
        // Admin clients send small bodies with a length; chunked is not worth supporting here.
        _ => return Err(411),
    };
    Ok(AdminRequest {
        method: String::from_utf8_lossy(head.method()).into_owned(),
        path: String::from_utf8_lossy(head.target()).into_owned(),
        headers,
        body,
    })
}

fn read_some(stream: &mut TcpStream, buf: &mut bytes::BytesMut) -> bool {
    let mut chunk = [0u8; 1024];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
