//! The byte streams of a client connection and of an upstream connection: plain TCP or TLS
//! (`tls`), so everything above reads and writes through them (monoio's I/O traits, and
//! `Socket` for the body transfer). What only a plain socket allows — splice, a second
//! descriptor to watch or write from with raw syscalls — goes through `tcp()`, which a TLS
//! stream answers with `None`; the callers then take their general path (copying, or a second
//! handle on the TLS session: `second_tls_half`). A kTLS stream could answer `Some` again.

use super::io::{second_stream, BodyIo, HalfClose, IoFail, ReadyStream, Socket};
use super::posted_read::PostedRead;
use super::tls::{ParkedSession, SessionRef, TlsHalf, TlsStream};
use bytes::{Bytes, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// The scheme clients reach a listener with (for `X-Forwarded-Proto` and `Forwarded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A client connection's stream.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl ClientStream {
    /// The socket of an idle connection for the parking lot, with the TLS session if it has
    /// one; the stream back if it cannot wait there (TLS input half-read, split).
    pub fn into_parked(self) -> Result<(TcpStream, Option<ParkedSession>), Self> {
        match self {
            ClientStream::Plain(s) => Ok((s, None)),
            ClientStream::Tls(s) => match s.into_parked() {
                Ok((tcp, session)) => Ok((tcp, Some(session))),
                Err(s) => Err(ClientStream::Tls(s)),
            },
        }
    }

    /// A connection back from the parking lot.
    pub fn unparked(tcp: TcpStream, session: Option<ParkedSession>) -> Self {
        match session {
            None => ClientStream::Plain(tcp),
            Some(session) => ClientStream::Tls(TlsStream::resume(tcp, session)),
        }
    }

    /// Makes the coming close a reset (RST, and no TLS close_notify), so a client that got a
    /// truncated body sees an error rather than what could pass for a complete close-delimited
    /// message.
    pub fn reset_on_close(&self) {
        if let ClientStream::Tls(tls) = self {
            tls.mark_reset();
        }
        super::io::reset_on_close(self.socket_fd());
    }

    /// How the client reached the listener.
    pub fn scheme(&self) -> Scheme {
        match self {
            ClientStream::Plain(_) => Scheme::Http,
            ClientStream::Tls(_) => Scheme::Https,
        }
    }
}

/// An upstream connection's stream.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(TlsStream),
}

impl UpstreamStream {
    /// Whether an idle connection may be reused: nothing to read on it. For TLS, what the
    /// upstream may send an idle client (session tickets after the handshake) is taken in; only
    /// application data or an end (close_notify, EOF) disqualifies it.
    pub fn idle_state(&self) -> super::io::IdleState {
        match self {
            UpstreamStream::Plain(s) => super::io::idle_state(s.as_raw_fd()),
            UpstreamStream::Tls(s) => s.idle_state(),
        }
    }

    /// For a connection going idle: the receive of its next response, posted now, into `buf`
    /// (see `PostedRead`). A TLS connection has none (`buf` back): it is checked by
    /// `idle_state` at check-out.
    pub fn post_read(&mut self, buf: BytesMut, reserve: usize) -> Result<PostedRead, BytesMut> {
        #[cfg(feature = "bench-ab")]
        if !super::bench_ab::post_reads() {
            return Err(buf);
        }
        match self {
            UpstreamStream::Plain(s) => Ok(PostedRead::post(s, buf, reserve)),
            UpstreamStream::Tls(_) => Err(buf),
        }
    }
}

/// What a second handle on a stream is made from: its socket, and its TLS session if it has
/// one. Taken while the stream can be borrowed; opened (a descriptor leased) when needed.
pub struct SecondSource {
    fd: RawFd,
    tls: Option<SessionRef>,
}

impl SecondSource {
    /// A second handle, on a second descriptor of the socket (leased from the worker's budget;
    /// `Err` when it has no room). The stream must outlive it.
    pub fn open(&self) -> std::io::Result<SecondHandle> {
        match &self.tls {
            None => second_stream(self.fd).map(|s| SecondHandle::Plain(ReadyStream(s))),
            Some(session) => session.second_half().map(SecondHandle::Tls),
        }
    }
}

/// A second handle on a stream, used while the stream itself is busy in another operation: to
/// watch it for an answer, or to relay one while the stream sends a body. A plain one reads and
/// writes by readiness and non-blocking calls (the stream may be splicing, which makes the
/// socket non-blocking); a TLS one shares the stream's session.
pub enum SecondHandle {
    Plain(ReadyStream),
    Tls(TlsHalf),
}

impl SecondHandle {
    /// Waits until the socket has something to read (losing nothing if dropped).
    pub async fn readable(&self) -> std::io::Result<()> {
        match self {
            SecondHandle::Plain(s) => s.0.stream.readable(false).await,
            SecondHandle::Tls(s) => s.readable().await,
        }
    }

    /// Appends what can be read now without waiting (plaintext, for TLS): `Some(0)` at the end,
    /// `None` when nothing is there yet.
    pub fn recv_now(&self, buf: &mut BytesMut, reserve: usize) -> std::io::Result<Option<usize>> {
        match self {
            SecondHandle::Plain(s) => super::io::recv_now(&s.0.stream, buf, reserve),
            SecondHandle::Tls(s) => s.recv_now(buf, reserve),
        }
    }
}

impl BodyIo for SecondHandle {
    async fn read_more(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
        timeout: Duration,
    ) -> Result<usize, IoFail> {
        match self {
            SecondHandle::Plain(s) => s.read_more(buf, reserve, timeout).await,
            SecondHandle::Tls(s) => s.read_more(buf, reserve, timeout).await,
        }
    }
    async fn write_buf(&mut self, buf: &mut BytesMut, timeout: Duration) -> Result<(), IoFail> {
        match self {
            SecondHandle::Plain(s) => s.write_buf(buf, timeout).await,
            SecondHandle::Tls(s) => s.write_buf(buf, timeout).await,
        }
    }
    async fn write_bytes(&mut self, data: Bytes, timeout: Duration) -> Result<(), IoFail> {
        match self {
            SecondHandle::Plain(s) => s.write_bytes(data, timeout).await,
            SecondHandle::Tls(s) => s.write_bytes(data, timeout).await,
        }
    }
    fn spliceable(&self) -> Option<&TcpStream> {
        None
    }
}

/// What both kinds of stream offer beyond reading and writing.
macro_rules! stream_common {
    ($name:ident) => {
        impl $name {
            /// The socket's descriptor, for operations on the socket rather than its bytes
            /// (ending a pending read on shutdown, resetting on close): valid whatever layer
            /// runs over it.
            pub fn socket_fd(&self) -> RawFd {
                match self {
                    $name::Plain(s) => s.as_raw_fd(),
                    $name::Tls(s) => s.tcp_stream().as_raw_fd(),
                }
            }

            /// The socket as plain TCP, for byte-level tricks; `None` where a layer (TLS) owns
            /// the bytes.
            pub fn tcp(&self) -> Option<&TcpStream> {
                match self {
                    $name::Plain(s) => Some(s),
                    $name::Tls(_) => None,
                }
            }

            /// The TLS stream, if this is one.
            pub fn tls(&self) -> Option<&TlsStream> {
                match self {
                    $name::Plain(_) => None,
                    $name::Tls(s) => Some(s),
                }
            }

            /// What a second handle on this stream is made from (`SecondSource::open`).
            pub fn second_source(&self) -> SecondSource {
                SecondSource {
                    fd: self.socket_fd(),
                    tls: self.tls().map(TlsStream::session_ref),
                }
            }
        }

        impl HalfClose for $name {
            fn half_close(&self) {
                match self {
                    $name::Plain(s) => super::io::half_close(s),
                    $name::Tls(s) => s.half_close(),
                }
            }
        }

        impl AsyncReadRent for $name {
            fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.read(buf).await,
                        $name::Tls(s) => s.read(buf).await,
                    }
                }
            }

            fn readv<T: IoVecBufMut>(
                &mut self,
                buf: T,
            ) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.readv(buf).await,
                        $name::Tls(s) => s.readv(buf).await,
                    }
                }
            }
        }

        impl CancelableAsyncReadRent for $name {
            fn cancelable_read<T: IoBufMut>(
                &mut self,
                buf: T,
                c: CancelHandle,
            ) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.cancelable_read(buf, c).await,
                        $name::Tls(s) => s.cancelable_read(buf, c).await,
                    }
                }
            }

            fn cancelable_readv<T: IoVecBufMut>(
                &mut self,
                buf: T,
                c: CancelHandle,
            ) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.cancelable_readv(buf, c).await,
                        $name::Tls(s) => s.cancelable_readv(buf, c).await,
                    }
                }
            }
        }

        impl AsyncWriteRent for $name {
            fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.write(buf).await,
                        $name::Tls(s) => s.write(buf).await,
                    }
                }
            }

            fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.writev(buf).await,
                        $name::Tls(s) => s.writev(buf).await,
                    }
                }
            }

            fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> {
                async move {
                    match self {
                        $name::Plain(s) => s.flush().await,
                        $name::Tls(s) => s.flush().await,
                    }
                }
            }

            fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> {
                async move {
                    match self {
                        $name::Plain(s) => s.shutdown().await,
                        $name::Tls(s) => s.shutdown().await,
                    }
                }
            }
        }

        impl Socket for $name {
            fn tcp(&self) -> Option<&TcpStream> {
                $name::tcp(self)
            }
        }
    };
}

stream_common!(ClientStream);
stream_common!(UpstreamStream);
