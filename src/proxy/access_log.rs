//! One structured line per request (target `access`), written through the non-blocking
//! log writer so a slow stdout never stalls a worker. Requests the proxy refused before
//! forwarding (400, 408, 413, 414, 431, 501, 505) get a line too, with the reason. Requests
//! over TLS say the version, cipher suite and server name (SNI) agreed.

use crate::config::RouteRule;
use crate::net::tls::TlsInfo;
use crate::upstream::Backend;
use std::borrow::Cow;
use std::time::Duration;

/// Longest request target written to a log line; a longer one is cut and marked, so a log
/// line stays small whatever `max_request_line_bytes` allows.
pub const MAX_LOGGED_TARGET: usize = 2048;
/// Appended to a target cut at `MAX_LOGGED_TARGET`.
const TRUNCATED_MARK: &str = "...[truncated]";

/// What one request came to, filled in by its phases for the log phase.
pub struct AccessRecord<'v> {
    pub status: u16,
    /// The last backend the request went to (of the configuration it runs on).
    pub backend: Option<&'v Backend>,
    /// The route that matched (index and rule), if one did.
    pub route: Option<(usize, &'v RouteRule)>,
    /// The upstream group the request was sent to.
    pub upstream: Option<&'v str>,
    /// A status was sent (false for client gone or reset mid-response).
    pub answered: bool,
    pub upstream_time: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Why the proxy answered (or abandoned) the request itself, when it did.
    pub reason: Option<&'static str>,
    /// The rate limit that refused or delayed the request.
    pub limit: Option<&'v str>,
}

impl Default for AccessRecord<'_> {
    fn default() -> Self {
        AccessRecord {
            status: 0,
            backend: None,
            route: None,
            upstream: None,
            answered: true,
            upstream_time: None,
            bytes_in: 0,
            bytes_out: 0,
            reason: None,
            limit: None,
        }
    }
}

pub struct AccessContext<'a> {
    pub client: &'a str,
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub backend_url: Option<&'a str>,
    pub worker: usize,
    /// From the request head to the end of the response.
    pub total: Duration,
    /// What the TLS handshake agreed, for a request over TLS.
    pub tls: Option<&'a TlsInfo>,
}

pub fn emit(ctx: &AccessContext<'_>, rec: &AccessRecord<'_>) {
    tracing::info!(
        target: "access",
        client = ctx.client,
        method = %loggable(ctx.method, 32),
        path = %loggable(ctx.path, MAX_LOGGED_TARGET),
        status = rec.status,
        route = rec.route.map_or("-", |(_, r)| r.label.as_str()),
        upstream = rec.upstream.unwrap_or("-"),
        backend = ctx.backend_url.unwrap_or("-"),
        upstream_ms = rec.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
        total_ms = ctx.total.as_secs_f64() * 1000.0,
        bytes_in = rec.bytes_in,
        bytes_out = rec.bytes_out,
        reason = rec.reason.unwrap_or("-"),
        limit = rec.limit.unwrap_or("-"),
        worker = ctx.worker,
        tls_version = ctx.tls.map_or("-", |t| t.version),
        tls_cipher = ctx.tls.map_or("-", |t| t.cipher),
        sni = ctx.tls.and_then(|t| t.sni.as_deref()).unwrap_or("-"),
    );
}

/// `bytes` as text for a log line, cut at `max` bytes and marked if longer.
fn loggable(bytes: &[u8], max: usize) -> Cow<'_, str> {
    if bytes.len() <= max {
        return String::from_utf8_lossy(bytes);
    }
    let mut text = String::from_utf8_lossy(&bytes[..max]).into_owned();
    text.push_str(TRUNCATED_MARK);
    Cow::Owned(text)
}

/// The method and target of whatever arrived of a request line (for requests refused before
/// they parsed): the first line's first two words, as far as they go.
pub fn request_line_parts(buf: &[u8]) -> (&[u8], &[u8]) {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.splitn(3, |&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let target = words.next().unwrap_or_default();
    (method, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_parts_of_partial_input() {
        assert_eq!(
            request_line_parts(b"GET /a?b HTTP/1.1\r\nHost: x\r\n"),
            (&b"GET"[..], &b"/a?b"[..])
        );
        assert_eq!(
            request_line_parts(b"\r\nPOST /up"),
            (&b"POST"[..], &b"/up"[..])
        );
        assert_eq!(request_line_parts(b"GE"), (&b"GE"[..], &b""[..]));
        assert_eq!(request_line_parts(b""), (&b""[..], &b""[..]));
    }

    #[test]
    fn long_targets_are_cut_and_marked() {
        let long = vec![b'a'; MAX_LOGGED_TARGET + 10];
        let text = loggable(&long, MAX_LOGGED_TARGET);
        assert_eq!(text.len(), MAX_LOGGED_TARGET + TRUNCATED_MARK.len());
        assert!(text.ends_with(TRUNCATED_MARK));
        assert_eq!(loggable(b"/short", MAX_LOGGED_TARGET), "/short");
    }
}
