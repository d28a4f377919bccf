//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front sends
//! first on a connection to say whose it really is, read here on the raw socket before anything
//! else (TLS included), and the header this proxy sends to backends that ask for one
//! (`send_proxy_protocol`). The header is peeked, then exactly its bytes are consumed, so what
//! follows it stays in the socket for whatever reads next.

use super::deadline::{self, Deadline};
use monoio::net::TcpStream;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// The 12 bytes every version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header is one line of at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// Enough to see a whole version 1 line, or a version 2 header up to its IPv6 addresses.
const PEEK_MAX: usize = 16 + 36 + 64;
/// How long to wait between two looks at a header that arrived in part.
const PARTIAL_PAUSE: Duration = Duration::from_millis(5);

/// Which version of the header to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a received header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection: its source (the client) and destination.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// Not on anyone's behalf (`LOCAL`, a v1 `UNKNOWN`, or an address family that is not TCP
    /// over IP): the connection's own peer is the client.
    Local,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a PROXY protocol header, or a broken one.
    Malformed(&'static str),
    /// The whole header did not arrive within the header timeout.
    Timeout,
    /// The peer closed (or the connection failed) before a whole header came.
    Closed,
}

impl HeaderError {
    pub fn reason(self) -> &'static str {
        match self {
            HeaderError::Malformed(why) => why,
            HeaderError::Timeout => "PROXY protocol header timed out",
            HeaderError::Closed => "closed before a whole PROXY protocol header",
        }
    }
}

/// What parsing the bytes arrived so far gives.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// The header is `len` bytes long and says `header`.
    Complete(usize, Header),
    /// More bytes are needed.
    Partial,
}

/// Reads the PROXY protocol header a new connection must start with, within `timeout`, and
/// consumes exactly its bytes.
pub async fn read_header(stream: &TcpStream, timeout: Duration) -> Result<Header, HeaderError> {
    let deadline = Deadline::after(timeout);
    let fd = stream.as_raw_fd();
    let mut buf = [0u8; PEEK_MAX];
    loop {
        if deadline::timeout_at(deadline, stream.readable(false))
            .await
            .is_err()
        {
            return Err(HeaderError::Timeout);
        }
        let Some(n) = recv(fd, &mut buf, libc::MSG_PEEK) else {
            continue;
        };
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        match parse(&buf[..n])? {
            Parsed::Complete(len, header) => {
                consume(stream, len, deadline).await?;
                return Ok(header);
            }
            // More is on its way: look again shortly (the bytes already there keep the socket
            // readable, so a wait for readiness would not wait). Any valid header's telling
            // part fits in `buf`, so a partial one is short of it.
            Parsed::Partial => {
                if deadline::timeout_at(deadline, deadline::sleep(PARTIAL_PAUSE))
                    .await
                    .is_err()
                {
                    return Err(HeaderError::Timeout);
                }
            }
        }
    }
}

/// Takes exactly `len` bytes (the header, TLVs included) off the socket.
async fn consume(
    stream: &TcpStream,
    mut len: usize,
    deadline: Deadline,
) -> Result<(), HeaderError> {
    let fd = stream.as_raw_fd();
    let mut scratch = [0u8; 512];
    while len > 0 {
        let want = len.min(scratch.len());
        match recv(fd, &mut scratch[..want], 0) {
            Some(0) => return Err(HeaderError::Closed),
            Some(n) => len -= n,
            None => {
                if deadline::timeout_at(deadline, stream.readable(false))
                    .await
                    .is_err()
                {
                    return Err(HeaderError::Timeout);
                }
            }
        }
    }
    Ok(())
}

/// One non-blocking `recv`; `None` when nothing is there yet (or interrupted).
fn recv(fd: i32, buf: &mut [u8], flags: i32) -> Option<usize> {
    // SAFETY: `buf` is valid for writes of its length; the descriptor belongs to the caller's
    // open stream.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    // An error other than "nothing yet" shows as EOF: the connection is of no further use.
    match n {
        n if n >= 0 => Some(n as usize),
        _ => match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => None,
            _ => Some(0),
        },
    }
}

/// Parses the start of a connection as a PROXY header, version 1 or 2.
fn parse(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    let n = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Partial)
        } else {
            parse_v2(bytes)
        };
    }
    let n = bytes.len().min(6);
    if bytes[..n] == b"PROXY "[..n] {
        return if n < 6 {
            Ok(Parsed::Partial)
        } else {
            parse_v1(bytes)
        };
    }
    Err(HeaderError::Malformed("not a PROXY protocol header"))
}

fn parse_v1(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    let bad = HeaderError::Malformed("malformed PROXY v1 header");
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= V1_MAX {
            Err(bad)
        } else {
            Ok(Parsed::Partial)
        };
    };
    if end + 1 > V1_MAX || end == 0 || bytes[end - 1] != b'\r' {
        return Err(bad);
    }
    let line = std::str::from_utf8(&bytes[6..end - 1]).map_err(|_| bad)?;
    let mut words = line.split(' ');
    let family = words.next().ok_or(bad)?;
    if family == "UNKNOWN" {
        // Whatever follows is to be ignored (spec 2.1).
        return Ok(Parsed::Complete(end + 1, Header::Local));
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(bad),
    };
    let mut field = || words.next().ok_or(bad);
    let (src, dst, sport, dport) = (field()?, field()?, field()?, field()?);
    if words.next().is_some() {
        return Err(bad);
    }
    let ip = |text: &str| -> Result<IpAddr, HeaderError> {
        let ip: IpAddr = text.parse().map_err(|_| bad)?;
        (ip.is_ipv6() == v6).then_some(ip).ok_or(bad)
    };
    // Ports in decimal without leading zeros, as the spec writes them.
    let port = |text: &str| -> Result<u16, HeaderError> {
        let plain = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        plain.then(|| text.parse().ok()).flatten().ok_or(bad)
    };
    Ok(Parsed::Complete(
        end + 1,
        Header::Proxied {
            source: SocketAddr::new(ip(src)?, port(sport)?),
            destination: SocketAddr::new(ip(dst)?, port(dport)?),
        },
    ))
}

fn parse_v2(bytes: &[u8]) -> Result<Parsed, HeaderError> {
    let bad = |why| Err(HeaderError::Malformed(why));
    if bytes.len() < 16 {
        return Ok(Parsed::Partial);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 {
        return bad("PROXY v2 header of an unknown version");
    }
    let (family, protocol) = (bytes[13] >> 4, bytes[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let total = 16 + len;
    let addresses = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        0 => 0,
        _ => return bad("PROXY v2 header of an unknown address family"),
    };
    if len < addresses {
        return bad("PROXY v2 header shorter than its addresses");
    }
    match command {
        // LOCAL: the sender's own connection (a health check); addresses are to be ignored.
        0 => return Ok(Parsed::Complete(total, Header::Local)),
        1 => {}
        _ => return bad("PROXY v2 header with an unknown command"),
    }
    if family == 0 || family == 3 {
        // Unspecified or a UNIX socket: nothing an IP rule could use; the peer stands.
        return Ok(Parsed::Complete(total, Header::Local));
    }
    if protocol != 1 {
        return bad("PROXY v2 header for a protocol other than TCP");
    }
    if bytes.len() < 16 + addresses {
        // The addresses fit in what is peeked; the TLVs after them are only skipped.
        return Ok(Parsed::Partial);
    }
    let a = &bytes[16..16 + addresses];
    let (source, destination) = if family == 1 {
        let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(a[at], a[at + 1], a[at + 2], a[at + 3]));
        let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
        (
            SocketAddr::new(ip(0), port(8)),
            SocketAddr::new(ip(4), port(10)),
        )
    } else {
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
        (
            SocketAddr::new(ip(0), port(32)),
            SocketAddr::new(ip(16), port(34)),
        )
    };
    Ok(Parsed::Complete(
        total,
        Header::Proxied {
            source,
            destination,
        },
    ))
}

/// Appends the header announcing a connection from `source` to `destination`. Mixed address
/// families are sent as IPv6 (an IPv4 address mapped).
pub fn write_header(
    out: &mut bytes::BytesMut,
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
) {
    let (src, dst) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        (s, d) => (IpAddr::V6(mapped(s)), IpAddr::V6(mapped(d))),
    };
    match version {
        Version::V1 => {
            use std::fmt::Write;
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let mut line = String::with_capacity(V1_MAX);
            let _ = write!(
                line,
                "PROXY {family} {src} {dst} {} {}\r\n",
                source.port(),
                destination.port()
            );
            out.extend_from_slice(line.as_bytes());
        }
        Version::V2 => {
            out.extend_from_slice(&V2_SIGNATURE);
            out.extend_from_slice(&[0x21]);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&mapped(s).octets());
                    out.extend_from_slice(&mapped(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
}

/// The header of a connection made on nobody's behalf (a health check): v2 `LOCAL`, v1
/// `UNKNOWN`.
pub fn local_header(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_headers_parse_and_report_their_length() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n";
        let len = line.iter().position(|&b| b == b'\n').unwrap() + 1;
        assert_eq!(
            parse(line),
            Ok(Parsed::Complete(
                len,
                Header::Proxied {
                    source: addr("192.0.2.1:56324"),
                    destination: addr("198.51.100.2:443")
                }
            ))
        );
        let v6 = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        assert!(matches!(
            parse(v6),
            Ok(Parsed::Complete(36, Header::Proxied { .. }))
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN ignored stuff\r\n"),
            Ok(Parsed::Complete(29, Header::Local))
        );
        for partial in [&b"PRO"[..], b"PROXY TCP4 1.2.3.4", b"\r\n\r\n\0"] {
            assert_eq!(parse(partial), Ok(Parsed::Partial), "{partial:?}");
        }
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_headers_round_trip_and_skip_tlvs() {
        for (src, dst) in [
            ("203.0.113.9:4000", "10.0.0.1:443"),
            ("[2001:db8::7]:4000", "[::1]:80"),
        ] {
            let mut out = BytesMut::new();
            write_header(&mut out, Version::V2, addr(src), addr(dst));
            let parsed = parse(&out).unwrap();
            assert_eq!(
                parsed,
                Parsed::Complete(
                    out.len(),
                    Header::Proxied {
                        source: addr(src),
                        destination: addr(dst)
                    }
                )
            );
            let mut v1 = BytesMut::new();
            write_header(&mut v1, Version::V1, addr(src), addr(dst));
            assert_eq!(
                parse(&v1),
                Ok(Parsed::Complete(
                    v1.len(),
                    Header::Proxied {
                        source: addr(src),
                        destination: addr(dst)
                    }
                ))
            );
        }
        // TLVs after the addresses are counted in the length and skipped.
        let mut with_tlv = BytesMut::new();
        write_header(
            &mut with_tlv,
            Version::V2,
            addr("1.2.3.4:5"),
            addr("6.7.8.9:10"),
        );
        with_tlv[15] += 7;
        with_tlv.extend_from_slice(&[0x04, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&with_tlv), Ok(Parsed::Complete(35, _))));
        let local = local_header(Version::V2);
        assert_eq!(parse(&local), Ok(Parsed::Complete(16, Header::Local)));
        assert_eq!(
            parse(&local_header(Version::V1)),
            Ok(Parsed::Complete(15, Header::Local))
        );
        // Mixed families go as IPv6.
        let mut mixed = BytesMut::new();
        write_header(&mut mixed, Version::V2, addr("1.2.3.4:5"), addr("[::1]:6"));
        assert_eq!(mixed[13], 0x21);
        let mut bad = local.clone();
        bad[12] = 0x31;
        assert!(parse(&bad).is_err(), "version 3");
        let mut bad = local.clone();
        bad[12] = 0x22;
        assert!(parse(&bad).is_err(), "command 2");
        let mut short = BytesMut::new();
        write_header(
            &mut short,
            Version::V2,
            addr("1.2.3.4:5"),
            addr("6.7.8.9:10"),
        );
        short[15] = 4;
        assert!(parse(&short).is_err(), "length below its addresses");
        assert_eq!(parse(&short[..14]), Ok(Parsed::Partial));
    }
}
