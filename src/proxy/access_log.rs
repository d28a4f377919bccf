//! One structured line per request (target `access`), written through the non-blocking
//! log writer so a slow stdout never stalls a worker.

use std::time::Duration;

pub struct AccessRecord {
    pub status: u16,
    /// The backend the request is on now (in-flight accounting).
    pub backend: Option<usize>,
    /// The last backend the request went to, for the log.
    pub backend_seen: Option<usize>,
    /// A status was sent (false for client gone or reset mid-response).
    pub answered: bool,
    pub upstream_time: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Default for AccessRecord {
    fn default() -> Self {
        AccessRecord {
            status: 0,
            backend: None,
            backend_seen: None,
            answered: true,
            upstream_time: None,
            bytes_in: 0,
            bytes_out: 0,
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
}

pub fn emit(ctx: &AccessContext<'_>, rec: &AccessRecord) {
    tracing::info!(
        target: "access",
        client = ctx.client,
        method = %String::from_utf8_lossy(ctx.method),
        path = %String::from_utf8_lossy(ctx.path),
        status = rec.status,
        backend = ctx.backend_url.unwrap_or("-"),
        upstream_ms = rec.upstream_time.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
        total_ms = ctx.total.as_secs_f64() * 1000.0,
        bytes_in = rec.bytes_in,
        bytes_out = rec.bytes_out,
        worker = ctx.worker,
    );
}
