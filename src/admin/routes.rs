//! Admin API routes. Reads are GET; every change is a POST and takes effect on all cores at once
//! through the shared backend atomics (or a new config snapshot, for reload).

use super::{prometheus, status, Response};
use crate::state::Shared;
use crate::upstream::passive::now_ms;
use crate::upstream::{Backend, UpstreamGroup};
use serde_json::json;
use std::sync::Arc;

pub fn route(method: &str, path: &str, body: &str, shared: &Shared) -> Response {
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET", "/metrics") => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: prometheus::render(shared),
        },
        ("GET", "/status") => Response::json(200, &status::render(shared)),
        ("GET", "/healthz") => Response::text(200, "ok\n"),
        ("GET", "/readyz") => {
            let now = now_ms();
            if shared
                .snapshot()
                .upstreams
                .backends()
                .any(|(_, b)| b.is_available(now))
            {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, "no backend available\n")
            }
        }
        ("POST", "/reload") => match crate::reload::reload(shared) {
            Ok(report) => Response::json(200, &json!({ "reloaded": true, "changes": report })),
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                tracing::error!(
                    ?errors,
                    "reload via admin API refused; keeping the running configuration"
                );
                Response::json(422, &json!({ "reloaded": false, "errors": errors }))
            }
        },
        (_, p) if p.starts_with("/backends/") => {
            backend_action(method, None, &p["/backends/".len()..], body, shared)
        }
        (_, p) if p.starts_with("/upstreams/") => {
            let rest = &p["/upstreams/".len()..];
            match rest.split_once("/backends/") {
                Some((group, rest)) => backend_action(method, Some(group), rest, body, shared),
                None => Response::text(
                    404,
                    "expected /upstreams/{group}/backends/{index or url}/{drain|enable|weight}\n",
                ),
            }
        }
        (_, "/metrics" | "/status" | "/healthz" | "/readyz" | "/reload") => {
            Response::text(405, "405 Method Not Allowed\n")
        }
        _ => Response::text(404, "404 Not Found\n"),
    }
}

/// `POST /upstreams/{group}/backends/{index or url}/drain|enable|weight`, and
/// `POST /backends/...` for the group `default` (`group` `None`); `rest` follows `/backends/`.
fn backend_action(
    method: &str,
    group: Option<&str>,
    rest: &str,
    body: &str,
    shared: &Shared,
) -> Response {
    let Some((id, action)) = rest.rsplit_once('/') else {
        return Response::text(
            404,
            "expected /backends/{index or url}/{drain|enable|weight}\n",
        );
    };
    if method != "POST" {
        return Response::text(405, "changes are POST requests\n");
    }
    let snapshot = shared.snapshot();
    let upstreams = &snapshot.upstreams;
    let found: Option<&UpstreamGroup> = match group {
        Some(name) => upstreams.by_name(&percent_decode(name)),
        None => upstreams.default_group(),
    };
    let Some(group) = found else {
        let name = group.unwrap_or(crate::config::DEFAULT_GROUP);
        return Response::text(404, format!("no upstream group {name:?}\n"));
    };
    let Some((index, backend)) = find_backend(&group.backends, &percent_decode(id)) else {
        return Response::text(
            404,
            format!("no backend {id:?} in group {:?}\n", group.name),
        );
    };
    match action {
        "drain" => {
            backend.set_drained(true);
            tracing::info!(upstream = %group.name, backend = %backend.url, "backend drained via admin API");
        }
        "enable" => {
            backend.set_drained(false);
            tracing::info!(upstream = %group.name, backend = %backend.url, "backend enabled via admin API");
        }
        "weight" => match parse_weight(body) {
            Some(w) => {
                tracing::info!(upstream = %group.name, backend = %backend.url, from = backend.weight(), to = w, "weight set via admin API");
                backend.set_weight(w);
            }
            None => return Response::text(422, "body must be a weight from 1 to 1000000\n"),
        },
        _ => {
            return Response::text(
                404,
                format!("unknown action {action:?}: drain, enable or weight\n"),
            )
        }
    }
    Response::json(200, &status::backend(index, backend, now_ms()))
}

fn find_backend<'a>(backends: &'a [Arc<Backend>], id: &str) -> Option<(usize, &'a Arc<Backend>)> {
    if let Ok(i) = id.parse::<usize>() {
        return backends.get(i).map(|b| (i, b));
    }
    let wanted = id.trim_end_matches('/');
    backends
        .iter()
        .enumerate()
        .find(|(_, b)| b.url.trim_end_matches('/') == wanted)
}

/// A plain number, or JSON `{"weight": n}`.
fn parse_weight(body: &str) -> Option<u32> {
    let body = body.trim();
    let n = body.parse::<u32>().ok().or_else(|| {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        u32::try_from(v.get("weight")?.as_u64()?).ok()
    })?;
    (1..=1_000_000).contains(&n).then_some(n)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_ids() {
        assert_eq!(parse_weight(" 5\n"), Some(5));
        assert_eq!(parse_weight("{\"weight\": 7}"), Some(7));
        assert_eq!(parse_weight("0"), None);
        assert_eq!(parse_weight("x"), None);
        assert_eq!(
            percent_decode("http%3A%2F%2F127.0.0.1%3A9001"),
            "http://127.0.0.1:9001"
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
