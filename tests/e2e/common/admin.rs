//! Client of the proxy's admin listener (`/status`, `/metrics`, drain, weight, reload), one
//! request per connection as the server does, and raw admin requests for the guard tests.

use super::config::TestConfig;
use super::http::{HttpConn, Message};
use super::metrics::Metrics;
use super::proxy::Proxy;
use super::wait_until;
use std::time::Duration;

/// Client of the proxy's admin listener; one request per connection, as the server does.
pub struct Admin {
    pub port: u16,
    pub token: Option<String>,
}

impl Admin {
    /// The client of the admin API `config` turns on (`TestConfig::admin_api`).
    pub fn of(config: &TestConfig) -> Admin {
        assert_eq!(
            config.admin.enabled,
            Some(true),
            "admin API off: {config:?}"
        );
        Admin {
            port: config.admin.port.expect("admin port"),
            token: config.admin.token.clone(),
        }
    }

    /// `method path` with `body`, with the given `Authorization` header value (if any), as a
    /// script would send it: `Host` the admin's address, a JSON body type when there is a body.
    pub fn request_with_auth(
        &self,
        method: &str,
        path: &str,
        body: &str,
        authorization: Option<&str>,
    ) -> Message {
        let host = format!("127.0.0.1:{}", self.port);
        let mut headers = vec![("Host", host.as_str())];
        if let Some(value) = authorization {
            headers.push(("Authorization", value));
        }
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.send_raw(&admin_request_bytes(
            method,
            path,
            &headers,
            body.as_bytes(),
        ))
    }

    /// Sends `request` as it is on a new connection and reads the answer.
    pub fn send_raw(&self, request: &[u8]) -> Message {
        let method = String::from_utf8_lossy(request);
        let method = method.split(' ').next().unwrap_or("GET");
        let mut conn = HttpConn::connect(self.port);
        conn.send(request);
        conn.read_response(method)
            .unwrap_or_else(|e| panic!("admin {method}: no response: {e}"))
    }

    /// `method path` with `body`, carrying the token when there is one.
    pub fn request(&self, method: &str, path: &str, body: &str) -> Message {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        self.request_with_auth(method, path, body, auth.as_deref())
    }

    pub fn get(&self, path: &str) -> Message {
        self.request("GET", path, "")
    }

    pub fn post(&self, path: &str, body: &str) -> Message {
        self.request("POST", path, body)
    }

    /// `GET /status` as JSON (must be 200).
    pub fn status(&self) -> serde_json::Value {
        let response = self.get("/status");
        assert_eq!(response.status(), 200, "/status: {response:?}");
        json_body(&response)
    }

    /// The `/status` entry of backend `index`.
    pub fn backend(&self, index: usize) -> serde_json::Value {
        let status = self.status();
        status["backends"][index].clone()
    }

    /// Waits (up to `limit`) until backend `index` reports `up == want`; returns the wait.
    pub fn wait_up(&self, index: usize, want: bool, limit: Duration) -> Duration {
        wait_until(limit, &format!("backend {index} up = {want}"), || {
            self.backend(index)["up"] == want
        })
    }

    /// `GET /metrics`, checked line by line and parsed with a Prometheus text parser.
    pub fn metrics(&self) -> Metrics {
        let response = self.get("/metrics");
        assert_eq!(response.status(), 200, "/metrics: {response:?}");
        let content_type = response.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("text/plain"),
            "metrics content type {content_type:?}"
        );
        Metrics::parse(&response.text())
    }
}

/// The proxy on `config` with the admin API on (on a port of its own unless `config` names
/// one), and its client.
pub fn start_with_admin(config: TestConfig) -> (Proxy, Admin) {
    let config = config.admin_api();
    (Proxy::start(&config), Admin::of(&config))
}

/// An admin request with exactly these `headers` (no `Host` unless given) and `Connection:
/// close`, and a Content-Length when there is a body or the method is POST.
pub fn admin_request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A response body as JSON.
pub fn json_body(response: &Message) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", response.text()))
}
