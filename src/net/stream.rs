//! The byte streams of a client connection and of an upstream connection. Plain TCP today; TLS
//! (and HTTP/2 over it) will be further variants of these enums, so everything above reads and
//! writes through them (monoio's I/O traits, and `Socket` for the body transfer). What only a
//! plain socket allows — splice, parking its descriptor in the epoll lot, a second descriptor to
//! watch or write from — goes through `tcp()`, which a TLS stream will answer with `None`; the
//! callers then take their general path. (A kTLS stream could answer `Some` again.)

use super::io::{HalfClose, Socket};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};

/// The scheme clients reach a listener with (for `X-Forwarded-Proto` and `Forwarded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
        }
    }
}

/// A client connection's stream.
pub enum ClientStream {
    Plain(TcpStream),
}

impl ClientStream {
    /// The plain socket itself (parking), or the stream back if it is not plain.
    pub fn into_tcp(self) -> Result<TcpStream, Self> {
        match self {
            ClientStream::Plain(s) => Ok(s),
        }
    }

    /// How the client reached the listener.
    pub fn scheme(&self) -> Scheme {
        match self {
            ClientStream::Plain(_) => Scheme::Http,
        }
    }
}

/// An upstream connection's stream.
pub enum UpstreamStream {
    Plain(TcpStream),
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
                }
            }

            /// The socket as plain TCP, for byte-level tricks; `None` where a layer (TLS) owns
            /// the bytes.
            pub fn tcp(&self) -> Option<&TcpStream> {
                match self {
                    $name::Plain(s) => Some(s),
                }
            }
        }

        impl HalfClose for $name {
            fn half_close(&self) {
                match self {
                    $name::Plain(s) => super::io::half_close(s),
                }
            }
        }

        impl AsyncReadRent for $name {
            fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.read(buf).await,
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
                    }
                }
            }
        }

        impl AsyncWriteRent for $name {
            fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.write(buf).await,
                    }
                }
            }

            fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
                async move {
                    match self {
                        $name::Plain(s) => s.writev(buf).await,
                    }
                }
            }

            fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> {
                async move {
                    match self {
                        $name::Plain(s) => s.flush().await,
                    }
                }
            }

            fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> {
                async move {
                    match self {
                        $name::Plain(s) => s.shutdown().await,
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
