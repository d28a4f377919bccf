//! TLS settings: the `[tls]` section (listener, certificates picked by SNI, client
//! certificates) and the upstream side (`https://` backends), each turned into the rustls
//! configuration the workers run with. Certificates and keys are read and checked here, so
//! `--check`, start and reload all refuse the same broken files, naming file, line and key.

use super::problem::Problem;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// A certificate expiring within this is reported by `--check`, at start and on reload.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
/// TLS 1.2 sessions (and TLS 1.3 ones without tickets) remembered for resumption, all workers
/// together (nginx's `ssl_session_cache shared:SSL:1m` holds about 4,000).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// `[tls]`: absent, no TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the TLS listener (default: `[server] host`).
    pub host: Option<String>,
    pub port: i64,
    /// Lowest protocol version: `"1.2"` or `"1.3"`.
    pub min_version: String,
    /// ALPN protocols offered, in order of preference.
    pub alpn: Vec<String>,
    /// Stateless resumption with tickets whose keys all workers share (rotated); off: sessions
    /// are remembered in a cache all workers share.
    pub session_tickets: bool,
    pub handshake_timeout_seconds: f64,
    /// A request whose Host is not a name of the certificate chosen for its SNI gets 421.
    pub strict_sni: bool,
    /// The plain listener answers 308 to `https://`.
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=N` on HTTPS responses when N > 0.
    pub hsts_max_age_seconds: i64,
    /// Key exchange groups offered, in order of preference (default: rustls's, post-quantum
    /// hybrid first).
    pub key_exchange_groups: Option<Vec<String>>,
    pub certificates: Vec<CertificateConfig>,
    pub client_auth: Option<ClientAuthConfig>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            host: None,
            port: 3443,
            min_version: "1.2".into(),
            alpn: vec!["http/1.1".into()],
            session_tickets: true,
            handshake_timeout_seconds: 10.0,
            strict_sni: true,
            redirect_http: false,
            hsts_max_age_seconds: 0,
            key_exchange_groups: None,
            certificates: Vec::new(),
            client_auth: None,
        }
    }
}

/// One `[[tls.certificates]]`: a PEM chain (leaf first) and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: String,
    pub key: String,
}

/// `[tls.client_auth]`: mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM file of the CAs whose client certificates are accepted.
    pub ca: String,
    /// A client without a certificate is refused (false: verified if presented).
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

/// The names a certificate is valid for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CertNames {
    /// Lowercase DNS names, wildcards (`*.example.com`) included.
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl CertNames {
    /// Whether `host` (a Host value: name or IP, a port and IPv6 brackets allowed) is one of
    /// these names; a wildcard covers one label (RFC 6125 §6.4.3).
    pub fn covers(&self, host: &str) -> bool {
        let host = strip_port(host);
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return self.ips.contains(&ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.dns.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *name == host,
        })
    }
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// One certificate served, as loaded.
#[derive(Debug)]
pub struct ServedCert {
    pub key: Arc<CertifiedKey>,
    pub names: CertNames,
    /// Its first name, for metrics and logs.
    pub name: String,
    /// Expiry (seconds since the epoch).
    pub not_after: i64,
}

/// The certificates of the TLS listener; picks one by SNI for each handshake.
#[derive(Debug)]
pub struct CertStore {
    pub certs: Vec<ServedCert>,
}

impl CertStore {
    /// The certificate for `sni`: one that names it exactly, else by a wildcard, else the first
    /// (which also answers clients that send no name). Where `schemes` is given, only a
    /// certificate whose key can sign with one of them is taken.
    pub fn pick(&self, sni: Option<&str>, schemes: Option<&[SignatureScheme]>) -> &ServedCert {
        let usable = |c: &&ServedCert| schemes.is_none_or(|s| c.key.key.choose_scheme(s).is_some());
        let by_name = sni.and_then(|sni| {
            let sni = sni.to_ascii_lowercase();
            let exact = self
                .certs
                .iter()
                .filter(usable)
                .find(|c| c.names.dns.contains(&sni));
            exact.or_else(|| {
                self.certs
                    .iter()
                    .filter(usable)
                    .find(|c| c.names.covers(&sni))
            })
        });
        by_name
            .or_else(|| self.certs.iter().find(usable))
            .unwrap_or(&self.certs[0])
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        Some(self.pick(hello.server_name(), Some(schemes)).key.clone())
    }
}

/// The TLS listener's settings, ready to serve.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: std::net::SocketAddr,
    pub server: Arc<ServerConfig>,
    pub certs: Arc<CertStore>,
    pub handshake_timeout: Duration,
    pub strict_sni: bool,
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value, when set.
    pub hsts: Option<String>,
    /// Mutual TLS is on: verified client certificates are described to the upstream.
    pub client_auth: bool,
}

/// An `https://` backend's TLS: the client configuration and the name to ask for and verify.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The crypto provider: aws-lc-rs rather than ring, for faster handshakes (its P-256 and
/// X25519 are assembly-optimised; see README "TLS" for the figures measured here) and the
/// post-quantum hybrid X25519MLKEM768, first among its default groups; it builds with the C
/// compiler alone (no cmake). `groups` (by name) where configured.
fn provider(groups: Option<&[String]>) -> Result<Arc<CryptoProvider>, String> {
    let mut provider = aws_lc_rs::default_provider();
    if let Some(names) = groups {
        let all = aws_lc_rs::ALL_KX_GROUPS;
        let mut chosen = Vec::new();
        for name in names {
            let group = all
                .iter()
                .find(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    let known: Vec<String> =
                        all.iter().map(|g| format!("{:?}", g.name())).collect();
                    format!(
                        "unknown key exchange group {name:?}; known: {}",
                        known.join(", ")
                    )
                })?;
            chosen.push(*group);
        }
        if chosen.is_empty() {
            return Err("at least one group is needed".into());
        }
        provider.kx_groups = chosen;
    }
    Ok(Arc::new(provider))
}

/// Session ticket keys, one set for all workers and every reload (so a ticket issued by one
/// worker resumes on another, and a reload does not end resumption); rotated every 6 hours,
/// the previous key still accepted (rustls's `TicketRotator`).
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: OnceLock<Arc<dyn rustls::server::ProducesTickets>> = OnceLock::new();
    if let Some(t) = TICKETER.get() {
        return Ok(t.clone());
    }
    let made = aws_lc_rs::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
    Ok(TICKETER.get_or_init(|| made).clone())
}

/// The session cache all workers share (TLS 1.2 session IDs; TLS 1.3 without tickets).
fn session_cache() -> Arc<dyn rustls::server::StoresServerSessions> {
    static CACHE: OnceLock<Arc<rustls::server::ServerSessionMemoryCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES))
        .clone()
}

/// Collects problems (errors) and warnings of the TLS sections.
pub struct TlsCheck<'a> {
    pub base: &'a Path,
    pub problems: &'a mut Vec<Problem>,
    pub warnings: &'a mut Vec<Problem>,
}

impl TlsCheck<'_> {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
            related: None,
        });
    }

    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            key: key.into(),
            message: message.into(),
            related: None,
        });
    }

    fn path(&self, file: &str) -> PathBuf {
        self.base.join(file)
    }

    /// `[tls]` into the listener's settings; `None` (with problems) if it cannot serve.
    pub fn listener(
        &mut self,
        t: &TlsConfig,
        listen: std::net::SocketAddr,
        handshake_timeout: Duration,
    ) -> Option<TlsSettings> {
        let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_str() {
            "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
            "1.3" => &[&rustls::version::TLS13],
            other => {
                self.fail(
                    "tls.min_version",
                    format!("must be \"1.2\" or \"1.3\", got {other:?}"),
                );
                &[&rustls::version::TLS13]
            }
        };
        if t.alpn.is_empty() {
            self.fail("tls.alpn", "at least one protocol (\"http/1.1\")");
        }
        for p in &t.alpn {
            if p != "http/1.1" {
                self.fail(
                    "tls.alpn",
                    format!("only \"http/1.1\" is served (HTTP/2 is not yet), got {p:?}"),
                );
            }
        }
        if !(0..=100 * 365 * 24 * 3600).contains(&t.hsts_max_age_seconds) {
            self.fail(
                "tls.hsts_max_age_seconds",
                format!(
                    "must be between 0 and 3153600000, got {}",
                    t.hsts_max_age_seconds
                ),
            );
        }
        let provider = match provider(t.key_exchange_groups.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                self.fail("tls.key_exchange_groups", e);
                return None;
            }
        };
        if t.certificates.is_empty() {
            self.fail(
                "tls.certificates",
                "at least one [[tls.certificates]] entry (cert and key) is required",
            );
        }
        let certs: Vec<ServedCert> = t
            .certificates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| self.served_cert(i, c, &provider))
            .collect();
        let verifier = t
            .client_auth
            .as_ref()
            .map(|a| self.client_verifier(a, &provider));
        if certs.len() != t.certificates.len() || verifier.as_ref().is_some_and(Option::is_none) {
            return None;
        }
        let store = Arc::new(CertStore { certs });
        let builder = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| self.fail("tls.min_version", e.to_string()))
            .ok()?;
        let mut server = match verifier.flatten() {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        }
        .with_cert_resolver(store.clone());
        server.alpn_protocols = t.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        server.session_storage = session_cache();
        if t.session_tickets {
            match ticketer() {
                Ok(ticketer) => server.ticketer = ticketer,
                Err(e) => self.fail("tls.session_tickets", e),
            }
        }
        Some(TlsSettings {
            listen,
            server: Arc::new(server),
            certs: store,
            handshake_timeout,
            strict_sni: t.strict_sni,
            redirect_http: t.redirect_http,
            hsts: (t.hsts_max_age_seconds > 0)
                .then(|| format!("max-age={}", t.hsts_max_age_seconds)),
            client_auth: t.client_auth.is_some(),
        })
    }

    fn served_cert(
        &mut self,
        i: usize,
        c: &CertificateConfig,
        provider: &CryptoProvider,
    ) -> Option<ServedCert> {
        let key_path = format!("tls.certificates[{i}]");
        let chain = self.chain(&format!("{key_path}.cert"), &c.cert)?;
        if let Err(e) = check_chain_order(&chain) {
            self.fail(format!("{key_path}.cert"), format!("{}: {e}", c.cert));
            return None;
        }
        let key = self.private_key(&format!("{key_path}.key"), &c.key, provider)?;
        let certified = CertifiedKey::new(chain.clone(), key);
        if let Err(e) = certified.keys_match() {
            self.fail(
                format!("{key_path}.key"),
                format!(
                    "{} does not belong to the certificate in {}: {e}",
                    c.key, c.cert
                ),
            );
            return None;
        }
        let facts = match describe(&chain[0]) {
            Ok(f) => f,
            Err(e) => {
                self.fail(format!("{key_path}.cert"), format!("{}: {e}", c.cert));
                return None;
            }
        };
        if facts.names.dns.is_empty() && facts.names.ips.is_empty() {
            self.fail(
                format!("{key_path}.cert"),
                format!(
                    "{}: the certificate names no host (no subjectAltName DNS or IP entry, no CN)",
                    c.cert
                ),
            );
            return None;
        }
        self.check_expiry(&format!("{key_path}.cert"), &c.cert, facts.not_after);
        let name = facts
            .names
            .dns
            .first()
            .cloned()
            .or_else(|| facts.names.ips.first().map(IpAddr::to_string))
            .unwrap_or_default();
        Some(ServedCert {
            key: Arc::new(certified),
            names: facts.names,
            name,
            not_after: facts.not_after,
        })
    }

    fn check_expiry(&mut self, key: &str, file: &str, not_after: i64) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let left = not_after - now;
        if left <= 0 {
            self.warn(
                key,
                format!(
                    "{file}: the certificate has expired ({} days ago)",
                    -left / 86400
                ),
            );
        } else if left < EXPIRY_WARNING.as_secs() as i64 {
            self.warn(
                key,
                format!(
                    "{file}: the certificate expires in {} days ({} hours)",
                    left / 86400,
                    left / 3600
                ),
            );
        }
    }

    /// A PEM certificate chain, leaf first.
    fn chain(&mut self, key: &str, file: &str) -> Option<Vec<CertificateDer<'static>>> {
        let path = self.path(file);
        if let Err(e) = std::fs::metadata(&path) {
            self.fail(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
        let chain: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(&path) {
            Ok(iter) => iter.collect(),
            Err(e) => Err(e),
        };
        match chain {
            Ok(chain) if !chain.is_empty() => Some(chain),
            Ok(_) => {
                self.fail(
                    key,
                    format!(
                        "{}: no PEM certificate (BEGIN CERTIFICATE) in it",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.fail(
                    key,
                    format!("{}: not a PEM certificate chain: {e}", path.display()),
                );
                None
            }
        }
    }

    fn private_key(
        &mut self,
        key: &str,
        file: &str,
        provider: &CryptoProvider,
    ) -> Option<Arc<dyn rustls::sign::SigningKey>> {
        let path = self.path(file);
        if let Err(e) = std::fs::metadata(&path) {
            self.fail(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
        let der = match PrivateKeyDer::from_pem_file(&path) {
            Ok(der) => der,
            Err(e) => {
                self.fail(
                    key,
                    format!(
                        "{}: no PEM private key (PKCS#8, SEC1 or PKCS#1) in it: {e}",
                        path.display()
                    ),
                );
                return None;
            }
        };
        match provider.key_provider.load_private_key(der) {
            Ok(k) => Some(k),
            Err(e) => {
                self.fail(
                    key,
                    format!(
                        "{}: unsupported key (ECDSA P-256/P-384, RSA or Ed25519): {e}",
                        path.display()
                    ),
                );
                None
            }
        }
    }

    /// The CA certificates of a PEM file, as trust roots.
    fn roots(&mut self, key: &str, file: &str) -> Option<RootCertStore> {
        let chain = self.chain(key, file)?;
        let mut roots = RootCertStore::empty();
        for cert in chain {
            if let Err(e) = roots.add(cert) {
                self.fail(key, format!("{file}: not a usable CA certificate: {e}"));
                return None;
            }
        }
        Some(roots)
    }

    fn client_verifier(
        &mut self,
        a: &ClientAuthConfig,
        provider: &Arc<CryptoProvider>,
    ) -> Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
        let roots = self.roots("tls.client_auth.ca", &a.ca)?;
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if a.required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        match builder.build() {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail("tls.client_auth.ca", e.to_string());
                None
            }
        }
    }

    /// The client configuration of `https://` backends (shared by a group's backends); `at` is
    /// the table its keys are in (`upstream`, or `upstreams.<name>` for a group's own).
    pub fn upstream(&mut self, at: &str, u: &UpstreamTlsConfig) -> Option<Arc<ClientConfig>> {
        let provider = match provider(None) {
            Ok(p) => p,
            Err(e) => {
                self.fail(at, e);
                return None;
            }
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .ok()?;
        let builder = if !u.tls_verify {
            self.warn(
                format!("{at}.tls_verify"),
                "https:// backends are not verified (tls_verify = false): anyone on the path can impersonate them; for labs only",
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match &u.tls_ca {
                Some(file) => self.roots(&format!("{at}.tls_ca"), file)?,
                None => RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match (&u.tls_client_cert, &u.tls_client_key) {
            (Some(cert), Some(key)) => {
                let chain = self.chain(&format!("{at}.tls_client_cert"), cert)?;
                let path = self.path(key);
                let der = match PrivateKeyDer::from_pem_file(&path) {
                    Ok(der) => der,
                    Err(e) => {
                        self.fail(
                            format!("{at}.tls_client_key"),
                            format!("{}: no PEM private key in it: {e}", path.display()),
                        );
                        return None;
                    }
                };
                match builder.with_client_auth_cert(chain, der) {
                    Ok(c) => c,
                    Err(e) => {
                        self.fail(format!("{at}.tls_client_key"), format!("{key}: {e}"));
                        return None;
                    }
                }
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                self.fail(
                    format!("{at}.tls_client_key"),
                    "tls_client_cert needs tls_client_key",
                );
                return None;
            }
            (None, Some(_)) => {
                self.fail(
                    format!("{at}.tls_client_cert"),
                    "tls_client_key needs tls_client_cert",
                );
                return None;
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Arc::new(config))
    }
}

/// The upstream TLS keys of `[upstream]`.
pub struct UpstreamTlsConfig {
    pub tls_ca: Option<String>,
    pub tls_verify: bool,
    pub tls_client_cert: Option<String>,
    pub tls_client_key: Option<String>,
}

/// What is read of a certificate.
struct CertFacts {
    names: CertNames,
    not_after: i64,
}

fn describe(der: &CertificateDer<'_>) -> Result<CertFacts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names = CertNames::default();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.dns.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    if let Some(ip) = ip_from_bytes(ip) {
                        names.ips.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    if names.dns.is_empty() && names.ips.is_empty() {
        // No subjectAltName: the CN, as older clients took it.
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
        {
            match cn.parse::<IpAddr>() {
                Ok(ip) => names.ips.push(ip),
                Err(_) => names.dns.push(cn.to_ascii_lowercase()),
            }
        }
    }
    Ok(CertFacts {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Leaf first, then each certificate's issuer: a chain in another order is refused by many
/// clients (and served as is by rustls).
fn check_chain_order(chain: &[CertificateDer<'_>]) -> Result<(), String> {
    let parsed: Vec<_> = chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| c)
                .map_err(|e| format!("certificate {} of the chain cannot be parsed: {e}", i + 1))
        })
        .collect::<Result<_, _>>()?;
    if parsed.len() > 1 && parsed[0].is_ca() && !parsed[1].is_ca() {
        return Err(
            "the chain is out of order: the leaf (server) certificate must come first".into(),
        );
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(format!(
                "the chain is out of order: certificate {} ({}) did not issue certificate {} ({}); put the leaf first, then each issuer",
                i + 2,
                pair[1].subject(),
                i + 1,
                pair[0].subject()
            ));
        }
    }
    Ok(())
}

/// A verified client certificate, described for the upstream: its subject (RFC 4514) and its
/// subjectAltName entries (`DNS:a.example, IP:10.0.0.1, email:x@y, URI:...`). Characters that
/// cannot go in a header field are replaced by `?`.
pub fn describe_client(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject().to_string();
    let mut san = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            use x509_parser::extensions::GeneralName as G;
            match name {
                G::DNSName(d) => san.push(format!("DNS:{d}")),
                G::IPAddress(ip) => {
                    if let Some(ip) = ip_from_bytes(ip) {
                        san.push(format!("IP:{ip}"));
                    }
                }
                G::RFC822Name(m) => san.push(format!("email:{m}")),
                G::URI(u) => san.push(format!("URI:{u}")),
                _ => {}
            }
        }
    }
    Some((header_safe(&subject), header_safe(&san.join(", "))))
}

fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Accepts any server certificate (`tls_verify = false`, and the TLS clients of the tests and
/// the bench, which look at what was sent or use a throwaway one), still checking the
/// handshake's signatures so the connection is at least encrypted to whoever answered.
#[derive(Debug)]
pub struct NoVerification(pub Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name an `https://` backend is asked for and verified as: `tls_server_name` where set,
/// else the URL's host (an IP address is verified as such, and sent no SNI).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string())
        .map_err(|e| format!("not a valid server name {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_hosts_with_wildcards_ips_and_ports() {
        let names = CertNames {
            dns: vec!["a.example".into(), "*.b.example".into()],
            ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        };
        for host in [
            "a.example",
            "A.Example:443",
            "x.b.example",
            "a.example.",
            "127.0.0.1:3443",
            "[::1]:8443",
            "[::1]",
        ] {
            assert!(names.covers(host), "{host}");
        }
        for host in [
            "b.example",
            "x.y.b.example",
            "c.example",
            "127.0.0.2",
            ".b.example",
            "evil.example",
        ] {
            assert!(!names.covers(host), "{host}");
        }
    }
}
