//! The TLS handshake of a connection accepted on the TLS listener, in the connection's own task
//! (a slow client never holds up the accept loop), bounded by `handshake_timeout_seconds`,
//! counted and timed. A failure is logged at debug with its reason; plain HTTP sent to the TLS
//! port gets nginx's answer, a 400 with a one-line hint, and is closed.

use super::{ClientTls, WorkerCtx};
use crate::metrics::bump;
use crate::net::io::{read_more, write_buf, HalfClose};
use crate::net::listener;
use crate::net::tls::{HandshakeError, TlsStream};
use bytes::BytesMut;
use monoio::net::TcpStream;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The answer to plain HTTP on the TLS port (nginx: "The plain HTTP request was sent to HTTPS
/// port").
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nServer: ringproxy\r\n\
Content-Type: text/plain\r\nContent-Length: 59\r\nConnection: close\r\n\r\n\
400 Bad Request: plain HTTP request sent to the HTTPS port\n";
/// How long the rest of such a request is read and discarded before the close, so the close
/// does not reset the answer away (a short lingering close).
const PLAIN_HTTP_LINGER: Duration = Duration::from_secs(1);

/// Runs the server side of the handshake on `tcp`; the stream once it is done, `None` if it
/// failed (the connection is then closed).
pub async fn accept(ctx: &WorkerCtx, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream> {
    let view = ctx.view();
    let tls = view.config.tls.as_ref()?;
    let started = Instant::now();
    listener::ensure_nodelay(&tcp);
    let deadline = started + tls.handshake_timeout;
    let outcome = TlsStream::accept(tcp, tls.server.clone(), deadline).await;
    let m = &ctx.metrics;
    match outcome {
        Ok(stream) => {
            let kind = if stream.info().resumed { 1 } else { 0 };
            bump(&m.tls_handshakes[kind]);
            m.tls_handshake_duration.observe(started.elapsed());
            Some(stream)
        }
        Err(HandshakeError::PlainHttp(tcp)) => {
            bump(&m.tls_handshakes[4]);
            tracing::debug!(client = %peer, worker = ctx.worker_id, "plain HTTP sent to the TLS port; answered 400");
            answer_plain_http(tcp).await;
            None
        }
        Err(e) => {
            let label = e.label();
            let index = if label == "timeout" { 3 } else { 2 };
            bump(&m.tls_handshakes[index]);
            tracing::debug!(client = %peer, worker = ctx.worker_id, reason = %e, "TLS handshake failed");
            None
        }
    }
}

/// What a request handled on this connection needs of its TLS session: what was agreed (for the
/// access log and strict SNI) and the client's verified certificate, described for the
/// upstream (mutual TLS).
pub fn client_tls(stream: &TlsStream) -> ClientTls {
    ClientTls {
        info: stream.info(),
        client_cert: stream
            .peer_certificate()
            .and_then(|der| crate::config::tls::describe_client(&der)),
    }
}

async fn answer_plain_http(mut tcp: TcpStream) {
    let mut out = BytesMut::from(PLAIN_HTTP_ANSWER);
    if write_buf(&mut tcp, &mut out, PLAIN_HTTP_LINGER)
        .await
        .is_err()
    {
        return;
    }
    tcp.half_close();
    let until = Instant::now() + PLAIN_HTTP_LINGER;
    let mut discard = BytesMut::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        discard.clear();
        match read_more(&mut tcp, &mut discard, 16 * 1024, left).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}
