//! The HTTPS phase: what the TLS settings ask of each request before it is routed. Over TLS,
//! strict SNI: a request whose Host the certificate chosen by its SNI does not name gets 421
//! Misdirected Request (RFC 9110 §15.5.20), so a client cannot reach one tenant's site through
//! a connection set up for another's certificate (domain fronting). On the plain listener, with
//! `redirect_http`, a 308 to the same host and target over HTTPS (ACME http-01 challenges,
//! `/.well-known/acme-challenge/`, still go to the backend, or certificates could not renew).

use super::error::Failure;
use super::ClientConn;
use crate::config::tls::TlsSettings;
use crate::config::ValidConfig;
use crate::http::RequestHead;

/// Where ACME's http-01 challenge is fetched (RFC 8555 §8.3): never redirected.
const ACME_CHALLENGE: &[u8] = b"/.well-known/acme-challenge/";

/// Admits `req` under the TLS settings, or says what to answer instead.
pub fn check(conn: &ClientConn, req: &RequestHead, config: &ValidConfig) -> Result<(), Failure> {
    let Some(tls) = &config.tls else {
        return Ok(());
    };
    match &conn.tls {
        Some(client) if tls.strict_sni => {
            let Some(host) = req.host() else {
                return Ok(());
            };
            let chosen = tls.certs.pick(client.info.sni.as_deref(), None);
            let host = std::str::from_utf8(host).unwrap_or_default();
            if chosen.names.covers(host) {
                Ok(())
            } else {
                Err(Failure::Misdirected)
            }
        }
        Some(_) => Ok(()),
        None if tls.redirect_http && !req.path().starts_with(ACME_CHALLENGE) => {
            Err(Failure::ToHttps(https_location(tls, req)))
        }
        None => Ok(()),
    }
}

/// The `Strict-Transport-Security` value for responses on this connection, if any.
pub fn hsts<'c>(conn: &ClientConn, config: &'c ValidConfig) -> Option<&'c str> {
    conn.tls.as_ref()?;
    config.tls.as_ref()?.hsts.as_deref()
}

/// `https://` + the request's host (with the TLS port unless 443) + its path and query.
fn https_location(tls: &TlsSettings, req: &RequestHead) -> String {
    let host = req
        .host()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_else(|| tls.listen.ip().to_string());
    let name = match host.strip_prefix('[') {
        Some(v6) => &host[..v6.find(']').map_or(host.len(), |i| i + 2)],
        None => host.split(':').next().unwrap_or(&host),
    };
    let port = tls.listen.port();
    let path = String::from_utf8_lossy(req.path());
    let slash = if path.starts_with('/') { "" } else { "/" };
    if port == 443 {
        format!("https://{name}{slash}{path}")
    } else {
        format!("https://{name}:{port}{slash}{path}")
    }
}
