//! The message-delimitation matrix: every upstream status x upstream framing x request method x
//! client kind (960 cells), end to end over raw sockets, judged by a strict RFC 9112 §6.3 reader.
//! The same matrix also runs straight against the scripted backend, which proves the expectations.
//!
//! What every cell must show (numbers as in the failure messages):
//! 1. a response that keeps the connection open (HTTP/1.1 without `Connection: close`, or
//!    `Connection: keep-alive` to an HTTP/1.0 client; RFC 9112 §9.3) is delimited by
//!    Content-Length or chunked, never by close (§6.3 rule 8): else the client waits for a close
//!    that only the idle timeout brings;
//! 2. the client gets exactly the upstream's payload (none for HEAD, 204 and 304: §6.3 rule 1);
//! 3. nothing arrives after the message: EOF right after it on a closing connection, and on a
//!    kept one the next response starts exactly where this one ended;
//! 4. an HTTP/1.0 client never gets Transfer-Encoding (§6.1);
//! 5. each request on a kept connection gets its own answer (the backend echoes the target);
//! 6. a connection that is not kept is closed by the proxy (EOF within the read bound);
//! 7. the upstream gets the request correctly framed: GET/HEAD with no body-length field, a POST
//!    with exactly its body, a POST with `Content-Length: 0` with `Content-Length: 0` (RFC 9110
//!    §8.6: a user agent SHOULD send it where the method defines content; servers answer 411
//!    otherwise).
//!
//! What that asks of each cell, by the upstream's framing (a HEAD, 204 or 304 has no body
//! whatever it says, and may stay open; it may keep a Content-Length if that is the would-be
//! body's):
//! - `cl` (n > 0): Content-Length n (or chunked), the connection may stay open;
//! - `cl0`: an empty body, so on a kept connection `Content-Length: 0` or an empty chunked body;
//!   a head with neither is close-delimited and must say `Connection: close` and close;
//! - `chunked`, `chunked0`: chunked (or a length) for HTTP/1.1; for HTTP/1.0 close-delimited
//!   (or a length) and, if close-delimited, closed even when the client asked for keep-alive;
//! - `close`, `close0`: for HTTP/1.1 chunked and open, or close-delimited with `Connection:
//!   close` and closed; for HTTP/1.0 close-delimited and closed (or a length, buffered).
//!
//! Also: the status is the upstream's; no two framing fields or Content-Length values (§6.2,
//! §6.3 rule 3/5); a Content-Length on a bodiless answer is the would-be body's length (RFC 9110
//! §8.6). Where the proxy may choose (re-frame a close-delimited body as chunked for HTTP/1.1 and
//! stay open, or close-delimit it and close; buffer and send a length), every RFC-valid choice
//! passes. Every read waits at most `READ_BOUND`, far below the proxy's 60 s idle timeout, so a
//! hang is a failure naming its cell, not a slow test.

use crate::common::{is_closed_error, response_framing, Backend, Framing, Head, HttpConn, Message};
use crate::common::{response_bytes, Proxy, Reply, TestConfig, DRIVERS};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Longest wait of any single read or write of a cell.
const READ_BOUND: Duration = Duration::from_secs(2);

/// Cells run side by side: a cell mostly waits on loopback round trips, and a failing one on its
/// read bound, so many threads keep even a matrix of hangs short (960 x 2 s / 64 = 30 s at worst).
const THREADS: usize = 64;

/// Requests on one connection at most: two in the client's own style, then one that asks to close.
const REQUESTS_PER_CONNECTION: usize = 3;

const STATUSES: [u16; 10] = [200, 201, 204, 301, 302, 304, 400, 404, 500, 503];

/// How the scripted upstream frames its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    /// `Content-Length: n`, n > 0, then the payload.
    Length,
    /// `Content-Length: 0`.
    Length0,
    /// `Transfer-Encoding: chunked`, the payload in two chunks.
    Chunked,
    /// `Transfer-Encoding: chunked`, only the last chunk `0\r\n\r\n`.
    Chunked0,
    /// No length field, the payload, then close (RFC 9112 §6.3 rule 8).
    Close,
    /// No length field, close right after the head: an empty close-delimited body.
    Close0,
}

impl Upstream {
    const ALL: [Upstream; 6] = [
        Upstream::Length,
        Upstream::Length0,
        Upstream::Chunked,
        Upstream::Chunked0,
        Upstream::Close,
        Upstream::Close0,
    ];

    fn name(self) -> &'static str {
        match self {
            Upstream::Length => "cl",
            Upstream::Length0 => "cl0",
            Upstream::Chunked => "chunked",
            Upstream::Chunked0 => "chunked0",
            Upstream::Close => "close",
            Upstream::Close0 => "close0",
        }
    }

    fn parse(name: &str) -> Option<Upstream> {
        Upstream::ALL.into_iter().find(|u| u.name() == name)
    }

    /// Whether the answer carries the target's payload (the others carry an empty body).
    fn has_payload(self) -> bool {
        matches!(self, Upstream::Length | Upstream::Chunked | Upstream::Close)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    /// POST with a body and its Content-Length.
    Post,
    /// POST with `Content-Length: 0`.
    PostEmpty,
}

impl Method {
    const ALL: [Method; 4] = [Method::Get, Method::Head, Method::Post, Method::PostEmpty];

    fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::PostEmpty => "POST-CL0",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post | Method::PostEmpty => "POST",
        }
    }

    /// The request body, for the methods that send a Content-Length.
    fn upload(self, target: &str) -> Option<Vec<u8>> {
        match self {
            Method::Get | Method::Head => None,
            Method::Post => Some(format!("upload for {target}").into_bytes()),
            Method::PostEmpty => Some(Vec::new()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Client {
    /// HTTP/1.1, persistent by default.
    Http11,
    /// HTTP/1.1 with `Connection: close`.
    Http11Close,
    /// HTTP/1.0 without keep-alive.
    Http10,
    /// HTTP/1.0 with `Connection: keep-alive`.
    Http10KeepAlive,
}

impl Client {
    const ALL: [Client; 4] = [
        Client::Http11,
        Client::Http11Close,
        Client::Http10,
        Client::Http10KeepAlive,
    ];

    fn name(self) -> &'static str {
        match self {
            Client::Http11 => "1.1",
            Client::Http11Close => "1.1-close",
            Client::Http10 => "1.0",
            Client::Http10KeepAlive => "1.0-keep-alive",
        }
    }

    fn is_http10(self) -> bool {
        matches!(self, Client::Http10 | Client::Http10KeepAlive)
    }

    fn asks_keep_alive(self) -> bool {
        matches!(self, Client::Http11 | Client::Http10KeepAlive)
    }
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    status: u16,
    upstream: Upstream,
    method: Method,
    client: Client,
}

impl Cell {
    fn all() -> Vec<Cell> {
        let mut cells = Vec::new();
        for status in STATUSES {
            for upstream in Upstream::ALL {
                for method in Method::ALL {
                    for client in Client::ALL {
                        cells.push(Cell {
                            status,
                            upstream,
                            method,
                            client,
                        });
                    }
                }
            }
        }
        cells
    }

    fn name(&self) -> String {
        format!(
            "{} {} {} {}",
            self.status,
            self.upstream.name(),
            self.method.name(),
            self.client.name()
        )
    }

    /// The target of the cell's `n`th request: the backend reads status and framing from it.
    fn target(&self, n: usize) -> String {
        format!("/s{}/r{n}", self.name().replace(' ', "/"))
    }

    /// No body whatever the fields say: a response to HEAD, a 204, a 304 (RFC 9112 §6.3 rule 1).
    fn bodiless(&self) -> bool {
        self.method == Method::Head || self.status == 204 || self.status == 304
    }

    /// The body the client must get for `target`.
    fn expected_body(&self, target: &str) -> Vec<u8> {
        if self.bodiless() {
            Vec::new()
        } else {
            upstream_body(self.upstream, target)
        }
    }
}

/// The payload the upstream sends for `target` (distinct per request, so a crossed answer shows).
fn payload(target: &str) -> Vec<u8> {
    format!("payload of {target}\n").into_bytes()
}

/// The body of an answer framed as `upstream`, or of the GET a HEAD, 204 or 304 stands for.
fn upstream_body(upstream: Upstream, target: &str) -> Vec<u8> {
    if upstream.has_payload() {
        payload(target)
    } else {
        Vec::new()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// Status and framing from a target `/s<status>/<framing>/...`.
fn parse_target(target: &str) -> Option<(u16, Upstream)> {
    let mut parts = target.split('/').skip(1);
    let status = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let upstream = Upstream::parse(parts.next()?)?;
    Some((status, upstream))
}

/// The scripted upstream, answering as a real server does:
/// - HEAD gets the head only, with the Content-Length (or chunked) a GET would get (RFC 9110
///   §9.3.2, §8.6); 204 and 304 get their framing fields and no body bytes: a 304 may carry the
///   representation's Content-Length (§8.6), and servers do send `Content-Length: 0` (or worse)
///   on a 204, which a proxy must ignore (RFC 9112 §6.3 rule 1);
/// - an HTTP/1.0 request never gets chunked (RFC 9112 §6.1): the body is close-delimited instead;
/// - `close`/`close0` answers carry no length field and the server closes after them. For a
///   bodiless answer the head is the whole message, so the `close` cell keeps the connection
///   open (as an HTTP/1.1 server answering HEAD or 204 does: a proxy waiting for EOF there
///   hangs) and `close0` closes right after the head;
/// - `Connection: close` on every answer it closes after (RFC 9112 §9.6), `Connection:
///   keep-alive` to an HTTP/1.0 client it stays open for;
/// - every answer names its request's target in `X-Target`.
fn upstream_reply(req: &Message) -> Reply {
    let target = req.head.target();
    let Some((status, upstream)) = parse_target(target) else {
        let body = format!("no cell at {target}");
        let headers = [("Connection", "close")];
        return Reply::SendClose(response_bytes("400 Bad Request", &headers, body.as_bytes()));
    };
    let http10 = req.head.request_version() == "HTTP/1.0";
    let client_keeps = if http10 {
        req.head.connection_has("keep-alive")
    } else {
        !req.head.connection_has("close")
    };
    let bodiless = req.head.method() == "HEAD" || status == 204 || status == 304;
    let by_length = matches!(upstream, Upstream::Length | Upstream::Length0);
    let chunked = matches!(upstream, Upstream::Chunked | Upstream::Chunked0) && !http10;
    let close_delimited = !by_length && !chunked;
    let closes = !client_keeps || upstream == Upstream::Close0 || (close_delimited && !bodiless);
    let body = upstream_body(upstream, target);

    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nX-Target: {target}\r\n",
        reason(status)
    );
    if by_length {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    } else if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    if closes {
        head.push_str("Connection: close\r\n");
    } else if http10 {
        head.push_str("Connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !bodiless {
        if chunked {
            let (first, second) = body.split_at(body.len() / 2);
            for chunk in [first, second].into_iter().filter(|c| !c.is_empty()) {
                out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(&body);
        }
    }
    if closes {
        Reply::SendClose(out)
    } else {
        Reply::Send(out)
    }
}

fn scripted_backend() -> Backend {
    Backend::recording(|r| upstream_reply(&r.req))
}

/// The cell's request to `target`; `keep` asks for the connection to stay open.
fn request(cell: &Cell, target: &str, keep: bool) -> Vec<u8> {
    let version = if cell.client.is_http10() {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let mut out = format!(
        "{} {target} {version}\r\nHost: test.local\r\n",
        cell.method.verb()
    );
    match (cell.client.is_http10(), keep) {
        (false, false) => out.push_str("Connection: close\r\n"),
        (true, true) => out.push_str("Connection: keep-alive\r\n"),
        _ => {}
    }
    let upload = cell.method.upload(target);
    if let Some(body) = &upload {
        out.push_str(&format!(
            "Content-Type: text/plain\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend(upload.unwrap_or_default());
    out
}

/// Status code of a strict `HTTP/1.x NNN reason` line.
fn status_of(head: &Head) -> Result<u16, String> {
    let mut words = head.start.splitn(3, ' ');
    let version = words.next().unwrap_or("");
    let code = words.next().unwrap_or("");
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("bad status line {:?}", head.start));
    }
    code.parse().map_err(|_| format!("bad status {code:?}"))
}

fn lossy(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(120)];
    format!("{:?}", String::from_utf8_lossy(shown))
}

/// Reads and judges one response to the cell's request to `target`, pushing `target` to
/// `answered` once the upstream's answer to it is recognised; `Ok(true)` when the connection
/// stays open for another request (the client asked for it and the response agreed).
fn check_response(
    conn: &mut HttpConn,
    cell: &Cell,
    target: &str,
    asked_keep: bool,
    answered: &mut Vec<String>,
) -> Result<bool, String> {
    let head = match conn.read_head() {
        Ok(Some(head)) => head,
        Ok(None) => return Err(closed_early(answered)),
        Err(e) if is_closed_error(&e) => return Err(format!("{}: {e}", closed_early(answered))),
        Err(e) => return Err(format!("no complete head within {READ_BOUND:?}: {e}")),
    };
    let status = status_of(&head)?;
    if status != cell.status || head.get("x-target") != Some(target) {
        return Err(format!(
            "(5) got {:?} for {:?}, expected {} for {target}",
            head.start,
            head.get("x-target"),
            cell.status
        ));
    }
    answered.push(target.to_string());
    let (framing, kept) = judge_framing(&head, cell, target, asked_keep)?;
    let message = conn.read_body(head, framing).map_err(|e| match framing {
        Framing::Close => {
            format!("(6) close-delimited body not ended by a close within {READ_BOUND:?}: {e}")
        }
        _ => format!("(2) {framing:?} body not complete within {READ_BOUND:?}: {e}"),
    })?;
    let expected = cell.expected_body(target);
    if message.body != expected {
        return Err(format!(
            "(2) body {} ({framing:?}), expected {}",
            lossy(&message.body),
            lossy(&expected)
        ));
    }
    if kept {
        if !conn.buffered().is_empty() {
            return Err(format!(
                "(3) bytes after the message: {}",
                lossy(conn.buffered())
            ));
        }
    } else if framing != Framing::Close {
        // A close-delimited body was read to the close; any other must be followed by one.
        match conn.read_to_close() {
            Ok(rest) if rest.is_empty() => {}
            Ok(rest) => return Err(format!("(3) bytes after the message: {}", lossy(&rest))),
            Err(e) if is_closed_error(&e) => {}
            Err(e) => {
                return Err(format!(
                    "(6) connection not closed within {READ_BOUND:?} after a response that ends \
                     it (Connection {:?}): {e}",
                    message.head.get_all("connection")
                ))
            }
        }
    }
    Ok(kept)
}

/// The framing fields of a response head to the cell's request to `target`: how its body is
/// delimited (RFC 9112 §6.3) and whether the connection stays open after it.
fn judge_framing(
    head: &Head,
    cell: &Cell,
    target: &str,
    asked_keep: bool,
) -> Result<(Framing, bool), String> {
    let codings = head.get_all("transfer-encoding");
    let lengths = head.get_all("content-length");
    if cell.client.is_http10() && !codings.is_empty() {
        return Err(format!(
            "(4) Transfer-Encoding {codings:?} to an HTTP/1.0 client (RFC 9112 §6.1)"
        ));
    }
    if !codings.is_empty() && !lengths.is_empty() {
        return Err(format!(
            "both Transfer-Encoding {codings:?} and Content-Length {lengths:?} (RFC 9112 §6.2)"
        ));
    }
    if lengths.len() > 1 {
        return Err(format!("several Content-Length fields {lengths:?}"));
    }
    if cell.bodiless() {
        let would_be = upstream_body(cell.upstream, target).len().to_string();
        if let Some(length) = lengths.first().filter(|&&l| l != would_be) {
            return Err(format!(
                "Content-Length {length} on a bodiless {}, the body it stands for has \
                 {would_be} bytes (RFC 9110 §8.6)",
                cell.status
            ));
        }
    }
    // RFC 9112 §9.3: "close" ends it; else an HTTP/1.1 response to an HTTP/1.1 request persists,
    // and an HTTP/1.0 one (or any response to an HTTP/1.0 client) only with "keep-alive".
    let persistent = !head.connection_has("close")
        && if head.start.starts_with("HTTP/1.1 ") && !cell.client.is_http10() {
            true
        } else {
            head.connection_has("keep-alive")
        };
    let kept = asked_keep && persistent;
    let framing = response_framing(head, cell.method.verb()).map_err(|e| e.to_string())?;
    if kept && framing == Framing::Close {
        return Err(format!(
            "(1) body delimited by close on a connection the response keeps open: no \
             Content-Length, no chunked, no `Connection: close` (RFC 9112 §6.3 rule 8, §9.3); \
             the client waits for the idle timeout. Head: {:?} {:?}",
            head.start, head.headers
        ));
    }
    Ok((framing, kept))
}

/// What a close before a response head means: after a response that kept the connection, the
/// server closed without saying so.
fn closed_early(answered: &[String]) -> String {
    if answered.is_empty() {
        "closed without a response".into()
    } else {
        "closed without a response, right after a response that kept the connection open \
         (RFC 9112 §9.6: the last response SHOULD say `Connection: close`)"
            .into()
    }
}

/// Runs one cell against `port`: requests in the client's style while the connection is kept
/// (the last one asking to close), each response judged. The targets the upstream answered go
/// to `answered`, for the upstream check.
fn run_cell(port: u16, cell: &Cell, answered: &mut Vec<String>) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, READ_BOUND)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut conn = HttpConn::new(stream);
    let bounded = [
        conn.stream().set_read_timeout(Some(READ_BOUND)),
        conn.stream().set_write_timeout(Some(READ_BOUND)),
    ];
    bounded
        .into_iter()
        .collect::<Result<(), _>>()
        .map_err(|e| format!("socket timeouts: {e}"))?;
    for n in 1..=REQUESTS_PER_CONNECTION {
        let target = cell.target(n);
        let keep = cell.client.asks_keep_alive() && n < REQUESTS_PER_CONNECTION;
        conn.try_send(&request(cell, &target, keep))
            .map_err(|e| format!("request {n}: send failed: {e}"))?;
        let kept = check_response(&mut conn, cell, &target, keep, answered)
            .map_err(|e| format!("request {n}: {e}"))?;
        if !kept {
            break;
        }
    }
    Ok(())
}

/// Rule 7: each answered target reached the upstream once, framed as its method requires.
fn check_upstream(
    backend: &Backend,
    answered: &[(usize, String)],
    cells: &[Cell],
) -> Vec<(usize, String)> {
    let recorded = backend.requests();
    let mut by_target: HashMap<&str, Vec<&Message>> = HashMap::new();
    for r in &recorded {
        by_target
            .entry(r.req.head.target())
            .or_default()
            .push(&r.req);
    }
    let mut failures = Vec::new();
    for (index, target) in answered {
        let cell = &cells[*index];
        let seen = by_target
            .get(target.as_str())
            .map_or(&[][..], Vec::as_slice);
        let [req] = seen else {
            failures.push((
                *index,
                format!(
                    "(7) {} reached the upstream {} times",
                    seq(target),
                    seen.len()
                ),
            ));
            continue;
        };
        let lengths = req.head.get_all("content-length");
        let codings = req.head.get_all("transfer-encoding");
        let problem = match cell.method.upload(target) {
            None if !lengths.is_empty() || !codings.is_empty() => Some(format!(
                "{} without a body arrived with Content-Length {lengths:?} Transfer-Encoding \
                 {codings:?}",
                cell.method.verb()
            )),
            None => None,
            Some(body) if body.is_empty() && (lengths != ["0"] || !codings.is_empty()) => {
                Some(format!(
                    "POST with Content-Length: 0 arrived with Content-Length {lengths:?} \
                     Transfer-Encoding {codings:?} (RFC 9110 §8.6; servers answer 411)"
                ))
            }
            Some(body) => {
                let framed = match req.framing {
                    Framing::Length(n) => n == body.len() && codings.is_empty(),
                    Framing::Chunked => lengths.is_empty(),
                    _ => false,
                };
                (!framed || req.body != body).then(|| {
                    format!(
                        "POST body arrived as {} ({:?}, Content-Length {lengths:?}, \
                         Transfer-Encoding {codings:?}), sent {}",
                        lossy(&req.body),
                        req.framing,
                        lossy(&body)
                    )
                })
            }
        };
        if let Some(problem) = problem {
            failures.push((*index, format!("(7) upstream, {}: {problem}", seq(target))));
        }
    }
    failures
}

/// "request n" for the target of a cell's `n`th request.
fn seq(target: &str) -> String {
    let n = target
        .rsplit('/')
        .next()
        .unwrap_or("")
        .trim_start_matches('r');
    format!("request {n}")
}

/// Runs the whole matrix against `port` (a proxy in front of `backend`, or `backend` itself)
/// and panics with every failing cell, named, if any fails.
fn assert_matrix_passes(port: u16, backend: &Backend, what: &str) {
    let cells = Cell::all();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let answered = Mutex::new(Vec::new());
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(cell) = cells.get(index) else { return };
                let mut targets = Vec::new();
                // A panic in the harness must not hide the other cells' results.
                let outcome =
                    panic::catch_unwind(AssertUnwindSafe(|| run_cell(port, cell, &mut targets)))
                        .unwrap_or_else(|_| Err("panicked (see stderr)".into()));
                if let Err(problem) = outcome {
                    failures.lock().expect("failures").push((index, problem));
                }
                let mut answered = answered.lock().expect("answered");
                answered.extend(targets.into_iter().map(|t| (index, t)));
            });
        }
    });
    let mut failures = failures.into_inner().expect("failures");
    let answered = answered.into_inner().expect("answered");
    failures.extend(check_upstream(backend, &answered, &cells));
    eprintln!(
        "{what}: {} cells, {} requests answered, in {:?}",
        cells.len(),
        answered.len(),
        started.elapsed()
    );
    // One line a failing cell, in matrix order: its first problem, and how many more it has.
    let mut by_cell: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (index, problem) in failures {
        by_cell.entry(index).or_default().push(problem);
    }
    let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
    let mut report = Vec::new();
    for (index, problems) in &by_cell {
        let mut rules: Vec<String> = problems.iter().map(|p| rule_of(p)).collect();
        rules.sort();
        rules.dedup();
        for rule in rules {
            *by_rule.entry(rule).or_default() += 1;
        }
        let more = match problems.len() {
            1 => String::new(),
            n => format!(" (+{} more)", n - 1),
        };
        report.push(format!("  {}: {}{more}", cells[*index].name(), problems[0]));
    }
    assert!(
        by_cell.is_empty(),
        "{what}: {} of {} cells fail; cells by rule: {by_rule:?}\n\
         (cell = status upstream-framing method client)\n{}",
        by_cell.len(),
        cells.len(),
        report.join("\n")
    );
}

/// The rule number a problem message cites, as `(n)`, or the message's first words.
fn rule_of(problem: &str) -> String {
    let cited = problem
        .find('(')
        .map(|at| &problem[at..])
        .and_then(|rest| rest.get(..3))
        .filter(|r| r.ends_with(')') && r.as_bytes()[1].is_ascii_digit());
    match cited {
        Some(rule) => rule.to_string(),
        None => problem.split(' ').take(4).collect::<Vec<_>>().join(" "),
    }
}

#[test]
fn every_cell_is_delimited_through_the_proxy() {
    for (driver, env) in DRIVERS {
        // A backend per run: the upstream side of each cell is checked from what it recorded.
        let backend = scripted_backend();
        // A hang must show as a bounded read failing, never as the proxy's idle timeout closing.
        let config =
            TestConfig::new(&[backend.port]).with(|c| c.timeouts.idle_timeout_seconds = Some(60.0));
        let proxy = Proxy::start_with_env(&config, env);
        assert_matrix_passes(
            proxy.port,
            &backend,
            &format!("through ringproxy ({driver})"),
        );
    }
}

/// The same matrix straight against the scripted backend: proves the backend and the reader
/// agree on what RFC 9112 requires, so a failure through the proxy is the proxy's.
#[test]
fn every_cell_is_delimited_by_the_backend_itself() {
    let backend = scripted_backend();
    assert_matrix_passes(backend.port, &backend, "straight to the backend");
}
