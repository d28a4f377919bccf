//! The relay phase: the answer goes to the client. A response head is rewritten for the client
//! (`forwarding`) and its body streamed (`transfer`), after which a cleanly finished upstream
//! connection goes back to the pool; a `101` turns the pair of connections into a tunnel. (An
//! answer that came while the request body was still streaming was relayed already, both ways
//! at once, by `duplex`: here it is only accounted for.)

use super::access_log::AccessRecord;
use super::error::Failure;
use super::exchange::{Answer, Exchanged};
use super::forwarding::{
    response_framing, write_response_head, Redirects, ResponsePolicy, TrailerPolicy,
};
use super::https;
use super::request_body::RequestBody;
use super::route::Route;
use super::transfer::{transfer_body, Sink, Source, TransferError};
use super::tunnel;
use super::{ClientConn, WorkerCtx};
use crate::http::{BodyDecoder, BodyKind, OutFraming, RequestHead, ResponseHead};
use crate::metrics::add_gauge;
use crate::net::splice::SPLICE_MIN_BYTES;
use crate::upstream::{group, UpstreamConn};
use std::sync::atomic::Ordering;

/// Relays the answer; returns whether the client connection stays open.
pub async fn relay(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &RequestBody,
    exchanged: Exchanged<'_>,
    route: &Route<'_>,
    ctx: &WorkerCtx,
    rec: &mut AccessRecord<'_>,
) -> Result<bool, Failure> {
    let Exchanged {
        up,
        backend,
        in_flight: _in_flight,
        answer,
    } = exchanged;
    match answer {
        Answer::Head(resp) if resp.status == 101 => tunnel(conn, up, &resp, route, ctx, rec).await,
        Answer::Head(resp) => {
            let relaying = Relaying {
                route,
                backend,
                ctx,
            };
            relay_response(conn, req, body, up, &resp, &relaying, rec).await
        }
        Answer::Duplexed(done) => {
            rec.status = done.status;
            rec.bytes_out = done.relayed.written;
            match done.relayed.outcome {
                // The response said `Connection: close`: the body's end was unknown then.
                Ok(()) => Ok(false),
                Err(e) => Err(relay_failure(route, backend, ctx, e, rec)),
            }
        }
    }
}

/// Where an answer is relayed from: the route's backend, on this worker.
struct Relaying<'a> {
    route: &'a Route<'a>,
    backend: usize,
    ctx: &'a WorkerCtx,
}

/// Streams the response body to the client, then returns a cleanly finished upstream
/// connection to the pool. Returns whether the client connection stays open.
async fn relay_response(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &RequestBody,
    mut up: UpstreamConn,
    resp: &ResponseHead,
    from: &Relaying<'_>,
    rec: &mut AccessRecord<'_>,
) -> Result<bool, Failure> {
    let framing = response_framing(req, resp);
    // While draining, this is the connection's last response.
    let client_keep = req.keep_alive
        && framing != OutFraming::Close
        && body.complete()
        && !from.ctx.shared.is_draining();
    conn.out.clear();
    let redirects = Redirects::for_request(from.route, from.backend, req, conn.scheme);
    let policy = ResponsePolicy {
        hsts: https::hsts(conn, from.route.config),
        edits: from.route.response_headers,
    };
    write_response_head(
        &mut conn.out,
        req,
        resp,
        framing,
        client_keep,
        redirects.as_ref(),
        policy,
    );
    rec.status = resp.status;
    rec.bytes_out = conn.out.len() as u64;
    let mut decoder = BodyDecoder::new(resp.body);
    let source = Source {
        stream: &mut up.stream,
        buf: &mut up.rbuf,
        decoder: &mut decoder,
        trailers: TrailerPolicy::of_response(resp),
    };
    let mut sink = Sink::new(&mut conn.stream, &mut conn.out, framing);
    let io_timeout = from.route.timeouts.io;
    let moved = transfer_body(source, &mut sink, io_timeout, None).await;
    // What reached the client, head and all, however the transfer ended.
    rec.bytes_out = sink.written;
    match moved {
        Ok(_) => {
            if resp.reusable && decoder.is_done() {
                // Only a Content-Length body this large can have been spliced: exactly its
                // length was taken from the socket, so what follows is still in there.
                let spliced = matches!(resp.body, BodyKind::Length(n) if n >= SPLICE_MIN_BYTES);
                check_in(from, up, spliced);
            }
            Ok(client_keep)
        }
        Err(e) => Err(relay_failure(from.route, from.backend, from.ctx, e, rec)),
    }
}

/// Returns a finished upstream connection to the pool, unless bytes wait on it already.
fn check_in(from: &Relaying<'_>, up: UpstreamConn, spliced: bool) {
    let mut pool = from.ctx.pool();
    if let Err(state) = pool.checkin(up, spliced) {
        let url = &from.route.backends()[from.backend].url;
        from.ctx.note_discarded(url, state);
    }
    from.ctx
        .metrics
        .pool_idle
        .store(pool.idle_count() as i64, Ordering::Relaxed);
}

/// What a failed response relay means for the client.
fn relay_failure(
    route: &Route<'_>,
    backend: usize,
    ctx: &WorkerCtx,
    e: TransferError,
    rec: &mut AccessRecord<'_>,
) -> Failure {
    let url = &route.backends()[backend].url;
    let TransferError::Source { fault, sent_any } = e else {
        return Failure::ClientGone;
    };
    let passive = &route.group.settings.passive;
    group::report_failure(route.backends(), backend, passive, ctx.worker_id);
    if sent_any {
        tracing::warn!(backend = %url, fault = %fault, worker = ctx.worker_id, "upstream failed mid-response; resetting client connection");
        Failure::Aborted("upstream failed mid-response")
    } else {
        // Broken before a byte reached the client: it can still get a clean 502.
        tracing::warn!(backend = %url, fault = %fault, worker = ctx.worker_id, "upstream response body broken before anything was sent");
        rec.bytes_out = 0;
        Failure::Upstream("malformed upstream response body")
    }
}

/// The answer was a `101 Switching Protocols` (only an upgrade request gets here): the two
/// connections become a byte tunnel.
async fn tunnel(
    conn: &mut ClientConn,
    up: UpstreamConn,
    resp: &ResponseHead,
    route: &Route<'_>,
    ctx: &WorkerCtx,
    rec: &mut AccessRecord<'_>,
) -> Result<bool, Failure> {
    rec.status = 101;
    add_gauge(&ctx.metrics.tunnels, 1);
    // Boxed for the same reason as the upload watch: only tunnels need this state.
    let idle = route.timeouts.io;
    let moved = Box::pin(tunnel::switch_protocols(conn, up, resp, idle)).await;
    add_gauge(&ctx.metrics.tunnels, -1);
    let moved = moved.map_err(|e| match e {
        tunnel::SwitchError::NoDescriptor => Failure::OutOfDescriptors,
        tunnel::SwitchError::ClientGone => Failure::ClientGone,
    })?;
    rec.bytes_in += moved.to_upstream;
    rec.bytes_out += moved.to_client;
    Ok(false)
}
