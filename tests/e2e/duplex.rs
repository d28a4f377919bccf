//! Full-duplex exchanges end to end: an upstream that answers at once and echoes the request
//! body as it reads it (a streaming API) must get the whole body while its answer streams back,
//! piece by piece, with Content-Length and chunked request bodies, on both I/O drivers. A proxy
//! that stops sending the body once the answer starts stalls both sides until its io_timeout.

use crate::common::*;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

/// A proxy in front of `backend` with a short `io_timeout_seconds`, so a stalled exchange
/// fails fast, on the driver `env` selects.
fn start_proxy(backend: &Backend, env: &[(&str, &str)]) -> Proxy {
    let config =
        TestConfig::new(&[backend.port]).with(|c| c.timeouts.io_timeout_seconds = Some(3.0));
    Proxy::start_with_env(&config, env)
}
/// Longest wait for one echoed piece; the whole exchange must finish well within the test.
const PIECE_WAIT: Duration = Duration::from_secs(5);

/// Decodes a chunked body from `reader` as it arrives: each call returns the data bytes now
/// available (at most `max`), `None` once the last chunk and the trailer section are read.
struct Dechunker<R> {
    reader: R,
    /// Data bytes left in the current chunk (0: a size line comes next).
    left: usize,
    done: bool,
}

impl<R: BufRead> Dechunker<R> {
    fn new(reader: R) -> Self {
        Dechunker {
            reader,
            left: 0,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        match line.strip_suffix("\r\n") {
            Some(text) => Ok(text.to_string()),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("chunked line not ended by CRLF: {line:?}"),
            )),
        }
    }

    fn next_piece(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.left == 0 {
            let size_line = self.line()?;
            let size = size_line.split(';').next().unwrap_or("").trim();
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("size {size_line:?}"))
            })?;
            if self.left == 0 {
                // Trailer section, up to the empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(None);
            }
        }
        let available = self.reader.fill_buf()?;
        if available.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = available.len().min(self.left).min(max);
        let piece = available[..n].to_vec();
        self.reader.consume(n);
        self.left -= n;
        if self.left == 0 && !self.line()?.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk longer than its size",
            ));
        }
        Ok(Some(piece))
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Answers `200` (chunked) as soon as it has the request head, then echoes each piece of the
/// request body (Content-Length or chunked) as a chunk the moment it reads it.
fn echo_backend() -> Backend {
    Backend::raw(|mut conn, _| {
        let Ok(Some(head)) = conn.read_head() else {
            return;
        };
        let Ok(mut out) = conn.stream().try_clone() else {
            return;
        };
        let length: Option<usize> = head.get("content-length").and_then(|v| v.parse().ok());
        if out
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .is_err()
        {
            return;
        }
        let echoed = match length {
            Some(len) => echo_length(&mut conn, &mut out, len),
            None => echo_chunked(BufReader::new(conn), &mut out),
        };
        if echoed.is_ok() {
            let _ = out.write_all(b"0\r\n\r\n");
        }
    })
}

fn echo_length(conn: &mut HttpConn, out: &mut TcpStream, len: usize) -> io::Result<()> {
    let mut left = len;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len());
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        out.write_all(&chunk(&buf[..n]))?;
        left -= n;
    }
    Ok(())
}

fn echo_chunked(reader: BufReader<HttpConn>, out: &mut TcpStream) -> io::Result<()> {
    let mut body = Dechunker::new(reader);
    while let Some(piece) = body.next_piece(64 * 1024)? {
        out.write_all(&chunk(&piece))?;
    }
    Ok(())
}

/// A client connection split in two: the writing half and a dechunking reader positioned
/// after the response head, which must be a chunked 200; and whether that head said
/// `Connection: close`.
fn open_exchange(
    proxy: &Proxy,
    head: &[u8],
    case: &str,
) -> (TcpStream, Dechunker<BufReader<HttpConn>>, bool) {
    let mut conn = proxy.connect();
    conn.stream()
        .set_read_timeout(Some(PIECE_WAIT))
        .expect("set_read_timeout");
    let writer = conn.stream().try_clone().expect("clone client stream");
    conn.send(head);
    let response = conn
        .read_head()
        .unwrap_or_else(|e| panic!("{case}: no response head: {e}"))
        .unwrap_or_else(|| panic!("{case}: closed before a response head"));
    assert_eq!(response.status(), 200, "{case}: {response:?}");
    assert_eq!(
        response.get("transfer-encoding"),
        Some("chunked"),
        "{case}: {response:?}"
    );
    let closing = response.connection_has("close");
    (writer, Dechunker::new(BufReader::new(conn)), closing)
}

/// Reads exactly `len` echoed bytes.
fn read_echo(reader: &mut Dechunker<BufReader<HttpConn>>, len: usize, case: &str) -> Vec<u8> {
    let mut got = Vec::with_capacity(len);
    while got.len() < len {
        match reader.next_piece(len - got.len()) {
            Ok(Some(piece)) => got.extend_from_slice(&piece),
            Ok(None) => panic!("{case}: response ended after {} bytes", got.len()),
            Err(e) => panic!(
                "{case}: echo stalled or broke after {} of {len} bytes: {e}",
                got.len()
            ),
        }
    }
    got
}

/// The echo ends with the last chunk; a response that said `Connection: close` is then
/// followed by the close, not by a connection left hanging.
fn assert_ends(reader: &mut Dechunker<BufReader<HttpConn>>, closing: bool, case: &str) {
    match reader.next_piece(1) {
        Ok(None) => {}
        other => panic!("{case}: expected the end of the echo, got {other:?}"),
    }
    if closing {
        let mut rest = [0u8; 64];
        match reader.reader.read(&mut rest) {
            Ok(0) => {}
            Ok(n) => panic!("{case}: {n} bytes after the response"),
            Err(e) => panic!("{case}: not closed after `Connection: close`: {e}"),
        }
    }
}

const PING_PONG_LEN: usize = 300_000;
const PIECE: usize = 10_000;

/// Sends the body piece by piece (each framed by `frame`) and waits for each piece's echo
/// before sending the next: only a proxy relaying both ways at once gets through.
fn ping_pong(proxy: &Proxy, head: &[u8], frame: fn(&[u8]) -> Vec<u8>, end: &[u8], case: &str) {
    let body = pattern(PING_PONG_LEN, 31);
    let started = Instant::now();
    let (mut writer, mut reader, closing) = {
        let mut first = head.to_vec();
        first.extend_from_slice(&frame(&body[..PIECE]));
        open_exchange(proxy, &first, case)
    };
    for (i, piece) in body.chunks(PIECE).enumerate() {
        if i > 0 {
            writer
                .write_all(&frame(piece))
                .unwrap_or_else(|e| panic!("{case}: sending piece {i}: {e}"));
        }
        let echo = read_echo(&mut reader, piece.len(), &format!("{case}, piece {i}"));
        assert!(echo == piece, "{case}: piece {i} echoed altered");
    }
    writer.write_all(end).expect("end of body");
    assert_ends(&mut reader, closing, case);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{case}: took {:?}",
        started.elapsed()
    );
}

#[test]
fn content_length_body_echoed_piece_by_piece_while_it_uploads() {
    let backend = echo_backend();
    for (driver, env) in DRIVERS {
        let proxy = start_proxy(&backend, env);
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: {PING_PONG_LEN}\r\n\r\n"
        );
        ping_pong(&proxy, head.as_bytes(), <[u8]>::to_vec, b"", driver);
    }
}

#[test]
fn chunked_body_echoed_piece_by_piece_while_it_uploads() {
    let backend = echo_backend();
    for (driver, env) in DRIVERS {
        let proxy = start_proxy(&backend, env);
        let head = b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n";
        ping_pong(&proxy, head, chunk, b"0\r\n\r\n", driver);
    }
}

/// 32 MiB up and the same 32 MiB echoed down at once, the client writing from one thread and
/// reading from another.
fn both_ways_at_once(proxy: &Proxy, chunked: bool, case: &str) {
    const LEN: usize = 32 << 20;
    const WRITE: usize = 256 * 1024;
    let body = pattern(LEN, 57);
    let expected = sha256_hex(&body);
    let head = if chunked {
        "POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
    } else {
        format!("POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: {LEN}\r\n\r\n")
    };
    let started = Instant::now();
    let (mut writer, mut reader, closing) = open_exchange(proxy, head.as_bytes(), case);
    let uploader = thread::spawn(move || -> io::Result<()> {
        for piece in body.chunks(WRITE) {
            if chunked {
                writer.write_all(&chunk(piece))?;
            } else {
                writer.write_all(piece)?;
            }
        }
        if chunked {
            writer.write_all(b"0\r\n\r\n")?;
        }
        Ok(())
    });
    let echo = read_echo(&mut reader, LEN, case);
    assert_ends(&mut reader, closing, case);
    uploader
        .join()
        .expect("uploader thread")
        .unwrap_or_else(|e| panic!("{case}: upload failed: {e}"));
    assert_eq!(sha256_hex(&echo), expected, "{case}: echo differs");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{case}: took {:?}",
        started.elapsed()
    );
}

#[test]
fn large_bodies_stream_both_ways_at_once() {
    let backend = echo_backend();
    for (driver, env) in DRIVERS {
        let proxy = start_proxy(&backend, env);
        both_ways_at_once(&proxy, false, &format!("{driver}, Content-Length"));
        both_ways_at_once(&proxy, true, &format!("{driver}, chunked"));
    }
}
