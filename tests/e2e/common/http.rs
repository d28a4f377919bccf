//! A small, strict HTTP/1.1 reader and writer over a blocking TcpStream, used both by the
//! test clients (reading responses) and by the test backends (reading requests).
//! Strict on purpose: lines must end in CRLF, so sloppy framing from the proxy fails a test.

use super::{is_closed_error, IO_TIMEOUT};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// Longest request or response head the reader accepts.
const MAX_HEAD_BYTES: usize = 256 * 1024;

/// A parsed start line and header list, in wire order, names as sent.
#[derive(Clone, Debug)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of the header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).into_iter().next()
    }

    /// Every value of the header `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// True when some `Connection` header lists `token` (case-insensitive).
    pub fn connection_has(&self, token: &str) -> bool {
        self.get_all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn word(&self, index: usize) -> &str {
        self.start.splitn(3, ' ').nth(index).unwrap_or("")
    }

    /// Request method, or response version.
    pub fn method(&self) -> &str {
        self.word(0)
    }

    pub fn target(&self) -> &str {
        self.word(1)
    }

    /// Request version (third word of a request line).
    pub fn request_version(&self) -> &str {
        self.word(2)
    }

    /// Status code of a response head.
    pub fn status(&self) -> u16 {
        self.word(1)
            .parse()
            .unwrap_or_else(|_| panic!("bad status line {:?}", self.start))
    }
}

/// How a message body was delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by the rules (HEAD, 1xx, 204, 304, or a request with no length).
    Empty,
    Length(usize),
    Chunked,
    Close,
}

/// A full message: head, decoded body, and chunked trailers if any.
#[derive(Clone, Debug)]
pub struct Message {
    pub head: Head,
    pub body: Vec<u8>,
    pub framing: Framing,
    pub trailers: Vec<(String, String)>,
}

impl Message {
    pub fn status(&self) -> u16 {
        self.head.status()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.get(name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What an `HttpConn` runs over: a TCP socket, or a TLS stream on one (`common::tls`).
pub trait Wire: Read + Write {
    /// The socket, for timeouts.
    fn tcp(&self) -> &TcpStream;
}

impl Wire for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// One side of a connection speaking HTTP/1.1, with 10 s read and write timeouts: over TCP,
/// or over TLS (`S`).
pub struct HttpConn<S: Wire = TcpStream> {
    reader: BufReader<S>,
}

impl HttpConn<TcpStream> {
    pub fn new(stream: TcpStream) -> HttpConn {
        HttpConn::over(stream)
    }

    pub fn connect(port: u16) -> HttpConn {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        HttpConn::new(stream)
    }

    pub fn shutdown_write(&self) {
        self.stream()
            .shutdown(Shutdown::Write)
            .expect("shutdown write");
    }
}

impl<S: Wire> HttpConn<S> {
    /// HTTP over `stream`, whose socket gets the suite's timeouts.
    pub fn over(stream: S) -> HttpConn<S> {
        let tcp = stream.tcp();
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .expect("set_read_timeout");
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .expect("set_write_timeout");
        tcp.set_nodelay(true).expect("set_nodelay");
        HttpConn {
            reader: BufReader::with_capacity(64 * 1024, stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref().tcp()
    }

    /// The wire itself (a TLS stream's session, say).
    pub fn wire(&self) -> &S {
        self.reader.get_ref()
    }

    pub fn wire_mut(&mut self) -> &mut S {
        self.reader.get_mut()
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let wire = self.reader.get_mut();
        wire.write_all(bytes)?;
        wire.flush()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write to socket");
    }

    /// Reads a head; `Ok(None)` when the peer closed cleanly before sending any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Head>> {
        if self.reader.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let start = read_line(&mut self.reader)?;
        let headers = read_fields(&mut self.reader)?;
        Ok(Some(Head { start, headers }))
    }

    fn read_head_required(&mut self) -> io::Result<Head> {
        self.read_head()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a head"))
    }

    /// Reads a request (backend side); `Ok(None)` on a clean close between requests.
    pub fn read_request(&mut self) -> io::Result<Option<Message>> {
        let Some(head) = self.read_head()? else {
            return Ok(None);
        };
        let framing = if let Some(te) = head.get("transfer-encoding") {
            if !te.trim().eq_ignore_ascii_case("chunked") {
                return Err(invalid(format!("request transfer-encoding {te:?}")));
            }
            Framing::Chunked
        } else if let Some(len) = head.get("content-length") {
            Framing::Length(parse_length(len)?)
        } else {
            Framing::Empty
        };
        self.read_body(head, framing).map(Some)
    }

    /// Reads one response (client side) to a request with `method`. Interim 1xx heads are
    /// returned as they are, so callers can assert on them.
    pub fn read_response(&mut self, method: &str) -> io::Result<Message> {
        let head = self.read_head_required()?;
        let framing = response_framing(&head, method)?;
        self.read_body(head, framing)
    }

    /// Reads the body that follows `head` as `framing` says (`Close`: until the peer closes).
    pub fn read_body(&mut self, head: Head, framing: Framing) -> io::Result<Message> {
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        match framing {
            Framing::Empty => {}
            Framing::Length(len) => {
                body.resize(len, 0);
                self.reader.read_exact(&mut body)?;
            }
            Framing::Chunked => trailers = read_chunked(&mut self.reader, &mut body)?,
            Framing::Close => {
                self.reader.read_to_end(&mut body)?;
            }
        }
        Ok(Message {
            head,
            body,
            framing,
            trailers,
        })
    }

    /// Sends `request` and reads its response, panicking with context on any failure.
    pub fn roundtrip(&mut self, request: &[u8]) -> Message {
        self.send(request);
        let method = request.split(|&b| b == b' ').next().unwrap_or(b"GET");
        let method = String::from_utf8_lossy(method).into_owned();
        self.read_response(&method).unwrap_or_else(|e| {
            panic!(
                "no response to {:?}: {e}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            )
        })
    }

    /// `GET path` on this connection; the response must be a 200.
    pub fn get_ok(&mut self, path: &str) -> Message {
        let response = self.roundtrip(&get_request(path));
        assert_eq!(response.status(), 200, "GET {path}: {response:?}");
        response
    }

    /// Bytes already received and not yet read (a message's end leaves nothing here unless
    /// more was sent behind it).
    pub fn buffered(&self) -> &[u8] {
        self.reader.buffer()
    }

    /// Everything until the peer closes.
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Asserts the peer closes (EOF or reset) within the timeout without sending anything more.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        match self.reader.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected close, got {n} more bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if is_closed_error(&e) => {}
            Err(e) => panic!("expected the connection to be closed, read failed with {e}"),
        }
    }

    /// Asserts that no byte arrives for `quiet` (the connection stays open and silent).
    pub fn expect_silence(&mut self, quiet: Duration) {
        assert!(
            self.reader.buffer().is_empty(),
            "unexpected buffered bytes: {:?}",
            String::from_utf8_lossy(self.reader.buffer())
        );
        self.stream()
            .set_read_timeout(Some(quiet))
            .expect("set_read_timeout");
        let mut buf = [0u8; 4096];
        let result = self.reader.read(&mut buf);
        self.stream()
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set_read_timeout");
        match result {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Ok(0) => panic!("connection closed, expected it to stay open"),
            Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("connection failed, expected it to stay open: {e}"),
        }
    }
}

impl<S: Wire> Read for HttpConn<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

/// How the body of a response to `method` is delimited, by RFC 9112 §6.3: none for HEAD, 1xx,
/// 204 and 304 whatever the fields say; chunked when Transfer-Encoding ends in chunked (other
/// codings: until close); else Content-Length; else until the server closes.
pub fn response_framing(head: &Head, method: &str) -> io::Result<Framing> {
    let status = head.status();
    Ok(
        if method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            Framing::Empty
        } else if let Some(te) = head.get("transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if last.eq_ignore_ascii_case("chunked") {
                Framing::Chunked
            } else {
                Framing::Close
            }
        } else if let Some(len) = head.get("content-length") {
            Framing::Length(parse_length(len)?)
        } else {
            Framing::Close
        },
    )
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_length(value: &str) -> io::Result<usize> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(format!("bad content-length {value:?}")))
}

/// One CRLF-terminated line without its CRLF; a bare LF or EOF mid-line is an error.
fn read_line<R: BufRead>(reader: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_HEAD_BYTES as u64)
        .read_until(b'\n', &mut line)?;
    if line.is_empty() || !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("incomplete line {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "line not ended by CRLF: {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| invalid(format!("non-UTF-8 line: {e}")))
}

/// Header (or trailer) fields up to and including the empty line.
fn read_fields<R: BufRead>(reader: &mut R) -> io::Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut total = 0;
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(fields);
        }
        total += line.len();
        if total > MAX_HEAD_BYTES {
            return Err(invalid("head too long".into()));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line without colon: {line:?}")))?;
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(invalid(format!("bad header name in {line:?}")));
        }
        fields.push((name.to_string(), value.trim().to_string()));
    }
}

/// Decodes a chunked body into `body`, returning the trailer fields. Chunk extensions are
/// skipped; a missing terminator or short chunk is an error.
pub fn read_chunked<R: BufRead>(
    reader: &mut R,
    body: &mut Vec<u8>,
) -> io::Result<Vec<(String, String)>> {
    loop {
        let line = read_line(reader)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            return read_fields(reader);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let end = read_line(reader)?;
        if !end.is_empty() {
            return Err(invalid(format!("chunk data longer than its size {size}")));
        }
    }
}

/// `GET path HTTP/1.1` with a Host header.
pub fn get_request(path: &str) -> Vec<u8> {
    request_bytes("GET", path, &[], b"")
}

/// An HTTP/1.1 request with `Host: test.local`, the extra headers, and a Content-Length when
/// there is a body (or the method usually has one).
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}
