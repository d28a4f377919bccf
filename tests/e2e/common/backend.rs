//! Upstream servers for the tests: plain std::net listeners on 127.0.0.1, one thread per
//! connection. `Backend::raw` hands each connection to a test-written handler;
//! `Backend::recording` parses every request, records it, and answers with a scripted reply;
//! `Backend::killable` can be killed (listener closed, connections cut) and revived on its port.

use super::http::{HttpConn, Message};
use super::{sha256_hex, wait_until, IO_TIMEOUT};
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

/// A request as the backend received it, with the index of the upstream connection it came on.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub conn: usize,
    pub req: Message,
}

/// What a recording backend does after a request.
pub enum Reply {
    /// Write these bytes and keep serving the connection.
    Send(Vec<u8>),
    /// Write these bytes and close the connection.
    SendClose(Vec<u8>),
}

type Requests = Arc<Mutex<Vec<Recorded>>>;
type Handler = dyn Fn(HttpConn, usize) + Send + Sync;

/// A listening test upstream; stops accepting when dropped.
pub struct Backend {
    pub port: u16,
    requests: Requests,
    connections: Arc<Connections>,
    acceptor: Option<Acceptor>,
}

/// What every life of a backend (see `kill` and `revive`) shares.
struct Connections {
    handler: Arc<Handler>,
    accepted: AtomicUsize,
    /// Clones of the open connections by accept index, so `kill` can cut them; `None` for a
    /// backend that is never killed (a clone holds the socket open past the handler's end).
    open: Option<Mutex<HashMap<usize, TcpStream>>>,
}

/// The accept thread of one life of a backend.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Backend {
    /// Serves each accepted connection with `handler(conn, index)` on its own thread.
    pub fn raw<F>(handler: F) -> Backend
    where
        F: Fn(HttpConn, usize) + Send + Sync + 'static,
    {
        Backend::start(Arc::new(handler), false)
    }

    /// As `raw`, for a backend that can be killed and revived on its port (see `kill`).
    pub fn killable<F>(handler: F) -> Backend
    where
        F: Fn(HttpConn, usize) + Send + Sync + 'static,
    {
        Backend::start(Arc::new(handler), true)
    }

    fn start(handler: Arc<Handler>, killable: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = listener.local_addr().expect("local_addr").port();
        let connections = Arc::new(Connections {
            handler,
            accepted: AtomicUsize::new(0),
            open: killable.then(|| Mutex::new(HashMap::new())),
        });
        let mut backend = Backend {
            port,
            requests: Arc::new(Mutex::new(Vec::new())),
            connections,
            acceptor: None,
        };
        backend.accept_on(listener);
        backend
    }

    fn accept_on(&mut self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, connections) = (stop.clone(), self.connections.clone());
        let thread = thread::spawn(move || accept_loop(&listener, &flag, &connections));
        self.acceptor = Some(Acceptor { stop, thread });
    }

    /// Closes the listener (new connects are refused) and cuts every open connection, as when
    /// the backend's process dies. Only for a `killable` backend.
    pub fn kill(&mut self) {
        assert!(self.connections.open.is_some(), "a killable backend");
        self.stop_accepting();
        let open = self.connections.open.as_ref().expect("a killable backend");
        for (_, stream) in open.lock().expect("open lock").drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again after `kill`.
    pub fn revive(&mut self) {
        assert!(self.acceptor.is_none(), "backend on {} is alive", self.port);
        let mut listener = None;
        wait_until(IO_TIMEOUT, &format!("port {} to rebind", self.port), || {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(bound) => listener = Some(bound),
                Err(e) => eprintln!("rebinding port {}: {e}; retrying", self.port),
            }
            listener.is_some()
        });
        self.accept_on(listener.expect("rebound listener"));
    }

    /// Stops the accept thread; its listener is closed once this returns.
    fn stop_accepting(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        acceptor.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag, drops the listener and exits.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        if TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_ok() {
            acceptor.thread.join().expect("backend accept thread");
        }
    }

    /// Parses requests on every connection, records them, and answers with `respond(&request)`.
    pub fn recording<F>(respond: F) -> Backend
    where
        F: Fn(&Recorded) -> Reply + Send + Sync + 'static,
    {
        let requests: Requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let mut backend =
            Backend::raw(move |conn, index| serve_recorded(conn, index, &log, &respond));
        backend.requests = requests;
        backend
    }

    /// Answers every request with 200 and `body` (Content-Length framed, keep-alive).
    pub fn fixed(body: &str) -> Backend {
        let reply = response_bytes("200 OK", &[], body.as_bytes());
        Backend::recording(move |_| Reply::Send(reply.clone()))
    }

    /// Answers every request with 200 and the request target as the body.
    pub fn echo_target() -> Backend {
        Backend::recording(|r| {
            Reply::Send(response_bytes(
                "200 OK",
                &[],
                r.req.head.target().as_bytes(),
            ))
        })
    }

    /// Answers every request with 200 and `<name> <target>` as the body: which upstream got
    /// the request, and the target it got.
    pub fn named(name: &str) -> Backend {
        let name = name.to_string();
        Backend::recording(move |r| {
            let body = format!("{name} {}", r.req.head.target());
            Reply::Send(response_bytes("200 OK", &[], body.as_bytes()))
        })
    }

    /// Answers every request with 200 and the sha256 (hex) of the request body it decoded.
    pub fn body_digest() -> Backend {
        Backend::recording(|r| {
            Reply::Send(response_bytes(
                "200 OK",
                &[],
                sha256_hex(&r.req.body).as_bytes(),
            ))
        })
    }

    /// Reads one request per connection, answers with `reply` (nothing if empty), then waits for
    /// the proxy to close the connection. Each connection reports `Ok(bytes sent after the
    /// request)` once closed, or the read error (`WouldBlock` when still open after 10 s).
    pub fn watch_close(reply: Vec<u8>) -> (Backend, mpsc::Receiver<Result<usize, io::ErrorKind>>) {
        let (closed_tx, closed_rx) = mpsc::channel();
        let closed_tx = Mutex::new(closed_tx);
        let backend = Backend::raw(move |mut conn, _| {
            if let Ok(Some(_)) = conn.read_request() {
                if !reply.is_empty() && conn.try_send(&reply).is_err() {
                    return;
                }
                let outcome = conn
                    .read_to_close()
                    .map(|rest| rest.len())
                    .map_err(|e| e.kind());
                let _ = closed_tx.lock().expect("lock").send(outcome);
            }
        });
        (backend, closed_rx)
    }

    /// Requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// The only request received so far.
    pub fn single_request(&self) -> Message {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one upstream request: {requests:?}"
        );
        requests[0].req.clone()
    }

    /// Connections accepted so far (all lives of the backend).
    pub fn connections(&self) -> usize {
        self.connections.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now, for a `killable` backend.
    pub fn open_connections(&self) -> usize {
        let open = self.connections.open.as_ref().expect("a killable backend");
        open.lock().expect("open lock").len()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.connections.open.is_some() {
            self.kill();
        } else {
            self.stop_accepting();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, connections: &Arc<Connections>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let index = connections.accepted.fetch_add(1, Ordering::SeqCst);
        if let Some(open) = &connections.open {
            if let Ok(clone) = stream.try_clone() {
                open.lock().expect("open lock").insert(index, clone);
            }
        }
        let connections = connections.clone();
        thread::spawn(move || {
            (connections.handler)(HttpConn::new(stream), index);
            if let Some(open) = &connections.open {
                open.lock().expect("open lock").remove(&index);
            }
        });
    }
}

fn serve_recorded<F>(mut conn: HttpConn, index: usize, log: &Requests, respond: &F)
where
    F: Fn(&Recorded) -> Reply,
{
    while let Ok(Some(req)) = conn.read_request() {
        let recorded = Recorded { conn: index, req };
        let reply = respond(&recorded);
        log.lock().expect("requests lock").push(recorded);
        match reply {
            Reply::Send(bytes) => {
                if conn.try_send(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendClose(bytes) => {
                let _ = conn.try_send(&bytes);
                return;
            }
        }
    }
}

/// `HTTP/1.1 <status>` with the given headers, a Content-Length, and `body`.
pub fn response_bytes(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `HTTP/1.1 <status>` with the given headers and `Transfer-Encoding: chunked`, one chunk per
/// element of `chunks`, then the terminator with no trailers.
pub fn chunked_response_bytes(status: &str, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Transfer-Encoding: chunked\r\n\r\n");
    let mut out = out.into_bytes();
    for chunk in chunks {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}
