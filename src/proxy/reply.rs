//! Replies the proxy makes itself for a route: a redirect, a fixed response (`respond`), or 404
//! when no route matched and there is no group `default`. Framed like any response
//! (Content-Length; keep-alive as the request allows, closed when its body was not read), with
//! the route's response field edits.

use super::access_log::AccessRecord;
use super::error::Failure;
use super::forwarding::push_header;
use super::request_body::RequestBody;
use super::route::{Reply, ReplyKind};
use super::{ClientConn, WorkerCtx};
use crate::config::HeaderEdits;
use crate::http::{status, RequestHead, Version};
use crate::net::io::write_buf;
use crate::state::Snapshot;
use bytes::BytesMut;

/// Sends `reply`; returns whether the client connection stays open.
pub async fn send<'v>(
    conn: &mut ClientConn,
    req: &RequestHead,
    body: &RequestBody,
    reply: Reply<'v>,
    ctx: &WorkerCtx,
    view: &Snapshot,
    rec: &mut AccessRecord<'v>,
) -> Result<bool, Failure> {
    // A body not read yet stays unread: the connection closes (lingering) after the reply.
    let keep = req.keep_alive && body.complete() && !ctx.shared.is_draining();
    let edits = reply
        .rule
        .map_or(HeaderEdits::none(), |(_, rule)| &rule.response_headers);
    rec.route = reply.rule;
    let out = &mut conn.out;
    out.clear();
    let (code, reason) = match &reply.kind {
        ReplyKind::Redirect { status, location } => {
            let head = Head {
                status: *status,
                location: Some(location),
                content_type: None,
                edits,
            };
            write_reply(out, req, &head, b"", keep);
            (*status, "route redirect")
        }
        ReplyKind::Respond(r) => {
            let head = Head {
                status: r.status,
                location: None,
                content_type: Some(&r.content_type),
                edits,
            };
            write_reply(out, req, &head, r.body.as_bytes(), keep);
            (r.status, "route respond")
        }
        ReplyKind::NotFound => {
            status::write_error(out, 404, keep);
            (404, "no route matched")
        }
    };
    send_own_answer(conn, rec, (code, reason), keep, view).await
}

/// Sends the answer the proxy wrote itself into `conn.out` (status `code`, for `reason`) and
/// records it for the log; returns `keep`, whether the connection stays open.
pub async fn send_own_answer(
    conn: &mut ClientConn,
    rec: &mut AccessRecord<'_>,
    (code, reason): (u16, &'static str),
    keep: bool,
    view: &Snapshot,
) -> Result<bool, Failure> {
    rec.status = code;
    rec.reason = Some(reason);
    rec.bytes_out = conn.out.len() as u64;
    write_buf(&mut conn.stream, &mut conn.out, view.config.timeouts.io)
        .await
        .map_err(|_| Failure::ClientGone)?;
    Ok(keep)
}

/// The fields of a reply besides its framing.
struct Head<'a> {
    status: u16,
    location: Option<&'a [u8]>,
    content_type: Option<&'a str>,
    edits: &'a HeaderEdits,
}

fn write_reply(out: &mut BytesMut, req: &RequestHead, head: &Head<'_>, body: &[u8], keep: bool) {
    let mut code = itoa::Buffer::new();
    let mut len = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.format(head.status).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status::reason_phrase(head.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let own = [
        (&b"Server"[..], Some(&b"ringproxy"[..])),
        (b"Location", head.location),
        (b"Content-Type", head.content_type.map(str::as_bytes)),
    ];
    for (name, value) in own {
        if let (Some(value), false) = (value, head.edits.touches(name)) {
            push_header(out, name, value);
        }
    }
    push_header(out, b"Content-Length", len.format(body.len()).as_bytes());
    for (name, value) in &head.edits.set {
        push_header(out, name.as_bytes(), value.as_bytes());
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !req.is_head() {
        out.extend_from_slice(body);
    }
}
