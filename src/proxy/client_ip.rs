//! Who the client is. A connection's client is its peer, or, where the listener expects the
//! PROXY protocol, the source its header names (taken from `trusted_proxies` only; any other
//! peer, or a broken header, and the connection is closed). A request's client is its
//! connection's, unless that address is a trusted proxy: then the rightmost `X-Forwarded-For`
//! entry that is not itself a trusted proxy (nginx's `real_ip_recursive on`). Entries to the
//! left of it were written by whoever the client is and are never believed: a client cannot
//! spoof its address by sending `X-Forwarded-For`, as only proxies the operator named may add
//! to it. This address is what rate limits, access rules, `hash_key = "client_ip"`, the access
//! log and the forwarding fields use.

use crate::config::{IpRanges, ValidConfig};
use crate::http::head::trim_ows;
use crate::http::RequestHead;
use crate::net::proxy_protocol::{self, Header, HeaderError};
use monoio::net::TcpStream;
use smallvec::SmallVec;
use std::net::{IpAddr, SocketAddr};

/// A client address with its text kept inline (no allocation per request).
#[derive(Clone, Copy)]
pub struct ClientIp {
    pub ip: IpAddr,
    text: [u8; 46],
    len: u8,
    /// The `X-Forwarded-For` entries this address was found with: trusted hops and the
    /// client's own entry, counted from the right (0: the connection's address).
    pub forwarded_entries: u16,
}

impl ClientIp {
    pub fn new(ip: IpAddr) -> ClientIp {
        let mut text = [0u8; 46];
        let len = match ip {
            // Every new connection's: digits by hand, about a tenth of `fmt`'s instructions.
            IpAddr::V4(v4) => {
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    let mut digits = itoa::Buffer::new();
                    let digits = digits.format(octet).as_bytes();
                    text[len..len + digits.len()].copy_from_slice(digits);
                    len += digits.len();
                }
                len as u8
            }
            IpAddr::V6(_) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut text[..]);
                // 45 bytes is the longest an address prints as.
                let _ = write!(cursor, "{ip}");
                cursor.position() as u8
            }
        };
        ClientIp {
            ip,
            text,
            len,
            forwarded_entries: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        let text = &self.text[..usize::from(self.len)];
        debug_assert!(text.is_ascii());
        // SAFETY: `text` and `len` are private and only `new` writes them: the address printed
        // as digits, '.', ':' and hex letters, ASCII. Validating it on every use (twice per
        // request) cost 1.3% of the user-space instructions of a small proxied request.
        unsafe { std::str::from_utf8_unchecked(text) }
    }
}

/// Why a new connection was closed before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unidentified {
    /// A peer outside `trusted_proxies` on a listener that expects a PROXY header.
    Untrusted,
    Header(HeaderError),
}

/// The client of a new connection from `peer`: its PROXY header's source when the listener
/// expects one, else the peer.
pub async fn of_connection(
    stream: &TcpStream,
    peer: SocketAddr,
    config: &ValidConfig,
) -> Result<SocketAddr, Unidentified> {
    if !config.proxy_protocol {
        return Ok(peer);
    }
    if !config.trusted_proxies.contains(peer.ip()) {
        return Err(Unidentified::Untrusted);
    }
    match proxy_protocol::read_header(stream, config.timeouts.client_header).await {
        Ok(Header::Proxied { source, .. }) => Ok(source),
        // A health check of the balancer itself: the connection is its own.
        Ok(Header::Local) => Ok(peer),
        Err(e) => Err(Unidentified::Header(e)),
    }
}

/// The client of a request on a connection whose client is `origin`.
pub fn of_request(origin: &ClientIp, req: &RequestHead, trusted: &IpRanges) -> ClientIp {
    if trusted.is_empty() || !trusted.contains(origin.ip) {
        return *origin;
    }
    // The fields in order, then their entries from the right: the rightmost came last.
    let fields: SmallVec<[&[u8]; 2]> = req.fields(b"x-forwarded-for").collect();
    let mut client = *origin;
    let mut entries = 0u16;
    for value in fields.iter().rev() {
        for entry in value.rsplit(|&b| b == b',').map(trim_ows) {
            if entry.is_empty() {
                continue;
            }
            // Garbage ends the walk: nothing left of it can be vouched for.
            let Some(ip) = entry_ip(entry) else {
                return client;
            };
            entries = entries.saturating_add(1);
            client = ClientIp {
                forwarded_entries: entries,
                ..ClientIp::new(ip)
            };
            if !trusted.contains(ip) {
                return client;
            }
        }
    }
    client
}

/// An `X-Forwarded-For` entry's address: `192.0.2.1`, `2001:db8::1`, and the forms with a port
/// some proxies write (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn entry_ip(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    text.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, HeadLimits};
    use bytes::BytesMut;

    #[test]
    fn addresses_print_as_std_prints_them() {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.168.100.7",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        ips.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 7, o.wrapping_mul(3)])));
        for ip in ips {
            assert_eq!(ClientIp::new(ip).as_str(), ip.to_string());
        }
    }

    fn request(xff: &[&str]) -> RequestHead {
        let mut raw = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for v in xff {
            raw.push_str(&format!("X-Forwarded-For: {v}\r\n"));
        }
        raw.push_str("\r\n");
        let limits = HeadLimits {
            max_request_line_bytes: 8192,
            max_header_bytes: 65536,
            max_headers: 100,
            max_body_bytes: None,
        };
        parse_request(&mut BytesMut::from(raw.as_str()), &limits)
            .unwrap()
            .unwrap()
    }

    fn trusted(list: &[&str]) -> IpRanges {
        let toml = format!(
            "[server]\ntrusted_proxies = {list:?}\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &toml)
            .unwrap()
            .trusted_proxies
    }

    fn client(peer: &str, xff: &[&str], trust: &[&str]) -> (String, u16) {
        let origin = ClientIp::new(peer.parse().unwrap());
        let c = of_request(&origin, &request(xff), &trusted(trust));
        (c.as_str().to_string(), c.forwarded_entries)
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let lb = ["10.0.0.0/8"];
        // Not from a trusted proxy: X-Forwarded-For is the client's word, ignored.
        assert_eq!(
            client("192.0.2.7", &["1.2.3.4"], &lb),
            ("192.0.2.7".into(), 0)
        );
        assert_eq!(client("10.0.0.1", &[], &lb), ("10.0.0.1".into(), 0));
        // From the balancer: its entry; a spoofed one to the left is not believed.
        assert_eq!(
            client("10.0.0.1", &["6.6.6.6, 203.0.113.5"], &lb),
            ("203.0.113.5".into(), 1)
        );
        // Through two trusted hops, over two fields.
        assert_eq!(
            client("10.0.0.1", &["6.6.6.6, 203.0.113.5", "10.0.0.9"], &lb),
            ("203.0.113.5".into(), 2)
        );
        // All trusted: the leftmost.
        assert_eq!(
            client("10.0.0.1", &["10.1.1.1, 10.2.2.2"], &lb),
            ("10.1.1.1".into(), 2)
        );
        // Garbage stops the walk at the last hop vouched for.
        assert_eq!(
            client("10.0.0.1", &["203.0.113.5, junk, 10.0.0.3"], &lb),
            ("10.0.0.3".into(), 1)
        );
        // Ports and brackets.
        assert_eq!(
            client("10.0.0.1", &["[2001:db8::1]:443"], &lb),
            ("2001:db8::1".into(), 1)
        );
        assert_eq!(
            client("10.0.0.1", &["198.51.100.1:80"], &lb),
            ("198.51.100.1".into(), 1)
        );
        assert_eq!(
            ClientIp::new(
                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
                    .parse()
                    .unwrap()
            )
            .as_str()
            .len(),
            39
        );
    }
}
