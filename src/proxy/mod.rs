//! The proxy: client connections and the requests on them. `connection` serves one client
//! connection request after request (parking it between requests when it goes quiet);
//! `handle` runs one request through its phases, each a module: `route` (or a `reply` the
//! proxy makes itself: redirect, fixed response, 404) -> `admit` (access rules, rate limits) ->
//! `exchange` (pick an upstream, send, read the answer, retry as `error`'s verdicts allow) ->
//! `relay` (stream the answer back, or tunnel) -> the access log. `forwarding` is what the
//! proxy adds, removes and rewrites; `transfer` streams one body; `answer` reads the upstream's
//! answer, also while a request body still streams. `handshake` runs a TLS client's handshake;
//! `https` is what the TLS settings ask of each request (strict SNI, redirects to HTTPS);
//! `client_ip` says who the client is.

mod access_log;
mod admit;
mod answer;
mod client_ip;
mod connection;
mod context;
mod duplex;
mod error;
mod exchange;
mod forwarding;
mod handle;
mod handshake;
mod https;
mod linger;
mod parking;
mod relay;
mod reply;
mod request_body;
mod route;
mod transfer;
mod tunnel;

pub use connection::{run_parking_lot, spawn_connection, spawn_tls_connection};
pub use context::{ConnectionSlot, WorkerCtx};

use crate::net::stream::{ClientStream, Scheme};
use crate::net::tls::TlsInfo;
use bytes::BytesMut;
use client_ip::ClientIp;
use std::net::SocketAddr;

/// One client connection's state that outlives a request.
pub struct ClientConn {
    pub stream: ClientStream,
    /// How the client reached this listener.
    pub scheme: Scheme,
    /// Bytes read from the client not yet consumed (pipelined requests wait here).
    pub rbuf: BytesMut,
    /// Pending output to the client (heads, small bodies, chunk framing), reused.
    pub out: BytesMut,
    /// Pending output to the upstream, reused.
    pub upstream_out: BytesMut,
    /// The connection's client: its peer, or the source its PROXY protocol header named.
    pub peer: SocketAddr,
    /// `peer`'s address, as text too.
    pub origin: ClientIp,
    /// The client of the request being served: `origin`, or as `X-Forwarded-For` names it
    /// when `origin` is a trusted proxy (`client_ip`); set per request.
    pub client: ClientIp,
    /// What the TLS handshake agreed, on the TLS listener.
    pub tls: Option<ClientTls>,
}

/// A TLS connection's facts a request uses: what was agreed (access log, strict SNI) and the
/// client's verified certificate, as subject and subjectAltName text (mutual TLS).
pub struct ClientTls {
    pub info: TlsInfo,
    pub client_cert: Option<(String, String)>,
}
