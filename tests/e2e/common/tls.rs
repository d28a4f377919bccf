//! TLS for the tests: a certificate authority made in the test with rcgen (`Pki`, its files in
//! a temp directory), rustls clients (`ClientOpts`, `tls_connect`: an `HttpConn` over TLS), a
//! TLS upstream that records the name each connection asked for (`TlsBackend`), and
//! `openssl s_client` runs.

use super::config::CertificateEntry;
use super::http::{HttpConn, Message, Wire};
use super::{response_bytes, IO_TIMEOUT};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use ringproxy::config::tls::NoVerification;
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig};
use rustls::{ServerConnection, StreamOwned, SupportedProtocolVersion};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use tempfile::TempDir;

/// A client's TLS stream.
pub type TlsWire = StreamOwned<ClientConnection, TcpStream>;
/// A server's TLS stream (the TLS upstream's).
pub type TlsServerWire = StreamOwned<ServerConnection, TcpStream>;

impl Wire for TlsWire {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

impl Wire for TlsServerWire {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// A certificate and its key as issued: files, and the DER to compare what a server sent.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Issued {
    /// As a `[[tls.certificates]]` entry.
    pub fn entry(&self) -> CertificateEntry {
        CertificateEntry {
            cert: self.cert.display().to_string(),
            key: self.key.display().to_string(),
        }
    }

    /// The chain and key, for a rustls client or server.
    pub fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .expect("chain file")
            .collect::<Result<Vec<_>, _>>()
            .expect("chain PEM");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("key PEM");
        (chain, key)
    }
}

/// A test certificate authority; what it issues is written to its temp directory.
pub struct Pki {
    pub dir: TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate's PEM file (trust it to verify what it issued).
    pub ca_file: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        Pki {
            dir,
            ca,
            ca_key,
            ca_file,
        }
    }

    /// A leaf for `names` (DNS names, or IP addresses), valid now, as `<file>.pem` (leaf, then
    /// the CA) and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, |_| {})
    }

    /// As `issue`, with `adjust` applied to the certificate's parameters first.
    pub fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        adjust(&mut params);
        let leaf = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let cert = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert, format!("{}{}", leaf.pem(), self.ca.pem())).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Issued {
            cert,
            key: key_file,
            der: leaf.der().to_vec(),
        }
    }

    /// A file in this PKI's directory with `text`, for broken inputs.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write file");
        path
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA as a root");
        roots
    }

    /// A rustls server with `issued` (for a TLS upstream), asking for client certificates of
    /// `client_ca` when given.
    pub fn server_config(issued: &Issued, client_ca: Option<&Pki>) -> Arc<ServerConfig> {
        let (chain, key) = issued.chain_and_key();
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()),
                    provider(),
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).expect("server cert");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Protocol versions a client offers.
pub static TLS12_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
pub static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static BOTH_VERSIONS: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// How a test client connects.
#[derive(Default)]
pub struct ClientOpts<'a> {
    /// Verify the server with this CA; `None`: accept any certificate (to see which is sent).
    pub verify_with: Option<&'a Pki>,
    /// Protocol versions offered (default: 1.3 and 1.2).
    pub versions: Option<&'static [&'static SupportedProtocolVersion]>,
    /// ALPN protocols offered (default: `http/1.1`).
    pub alpn: Option<Vec<Vec<u8>>>,
    /// A client certificate to present.
    pub client_cert: Option<&'a Issued>,
    /// Never resume: every handshake is full and shows the server's certificate as it is now
    /// (a resumed session reports the one of its first handshake).
    pub no_resumption: bool,
}

impl ClientOpts<'_> {
    pub fn config(&self) -> Arc<ClientConfig> {
        let versions = self.versions.unwrap_or(&BOTH_VERSIONS);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions");
        let builder = match self.verify_with {
            Some(pki) => builder.with_root_certificates(pki.roots()),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider()))),
        };
        let mut config = match self.client_cert {
            Some(issued) => {
                let (chain, key) = issued.chain_and_key();
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client cert")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self
            .alpn
            .clone()
            .unwrap_or_else(|| vec![b"http/1.1".to_vec()]);
        if self.no_resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(config)
    }
}

/// A TLS connection to 127.0.0.1:`port` asking for `name` (an IP address sends no SNI), with
/// the handshake done; `Err` if it failed.
pub fn tls_connect(
    port: u16,
    config: &Arc<ClientConfig>,
    name: &str,
) -> Result<HttpConn<TlsWire>, String> {
    tls_connect_after(port, config, name, b"")
}

/// As `tls_connect`, sending `preface` (a PROXY protocol header) on the socket first.
pub fn tls_connect_after(
    port: u16,
    config: &Arc<ClientConfig>,
    name: &str,
    preface: &[u8],
) -> Result<HttpConn<TlsWire>, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    std::io::Write::write_all(&mut tcp, preface).map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(name.to_string()).expect("server name");
    let mut conn = ClientConnection::new(config.clone(), server_name).expect("client connection");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(HttpConn::over(StreamOwned::new(conn, tcp)))
}

/// As `tls_connect`, panicking on failure.
pub fn tls_connect_ok(port: u16, config: &Arc<ClientConfig>, name: &str) -> HttpConn<TlsWire> {
    tls_connect(port, config, name).unwrap_or_else(|e| panic!("TLS to port {port} as {name}: {e}"))
}

/// The certificate the server presented on `conn`.
pub fn served_cert(conn: &HttpConn<TlsWire>) -> Vec<u8> {
    let session = &conn.wire().conn;
    session.peer_certificates().expect("server certificates")[0].to_vec()
}

/// What a TLS upstream saw of one request.
#[derive(Clone, Debug)]
pub struct TlsSeen {
    /// The connection's index (in accept order) and the name it asked for (SNI).
    pub conn: usize,
    pub sni: Option<String>,
    pub req: Message,
}

/// A TLS upstream on 127.0.0.1: each connection on its own thread, every request recorded and
/// answered `200` with the request's path as the body (keep-alive).
pub struct TlsBackend {
    pub port: u16,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
}

impl TlsBackend {
    pub fn start(config: Arc<ServerConfig>) -> TlsBackend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut backend = TlsBackend::with(config, move |conn, index, sni| {
            answer_with_path(conn, index, sni, &log)
        });
        backend.seen = seen;
        backend
    }

    /// A TLS upstream whose connections, handshaken, go to `handler(conn, index, sni)`.
    pub fn with<F>(config: Arc<ServerConfig>, handler: F) -> TlsBackend
    where
        F: Fn(HttpConn<TlsServerWire>, usize, Option<String>) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS backend");
        let port = listener.local_addr().expect("addr").port();
        let handler = Arc::new(handler);
        thread::spawn(move || {
            for (index, tcp) in listener.incoming().enumerate() {
                let Ok(tcp) = tcp else { continue };
                let (config, handler) = (config.clone(), handler.clone());
                thread::spawn(move || {
                    if let Some((conn, sni)) = handshake(tcp, config) {
                        handler(conn, index, sni);
                    }
                });
            }
        });
        TlsBackend {
            port,
            seen: Arc::default(),
        }
    }

    /// As `start`, behind `send_proxy_protocol = "v1"`: each connection's PROXY line is read
    /// off the socket before the handshake and kept (in accept order) in `prefaces`.
    pub fn start_after_proxy_v1(
        config: Arc<ServerConfig>,
        prefaces: Arc<Mutex<Vec<String>>>,
    ) -> TlsBackend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS backend");
        let port = listener.local_addr().expect("addr").port();
        thread::spawn(move || {
            for (index, tcp) in listener.incoming().enumerate() {
                let Ok(mut tcp) = tcp else { continue };
                let (config, log, prefaces) = (config.clone(), log.clone(), prefaces.clone());
                thread::spawn(move || {
                    tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                    let mut line = Vec::new();
                    let mut byte = [0u8; 1];
                    while !line.ends_with(b"\r\n") && line.len() < 108 {
                        match std::io::Read::read(&mut tcp, &mut byte) {
                            Ok(1) => line.push(byte[0]),
                            _ => return,
                        }
                    }
                    prefaces
                        .lock()
                        .expect("prefaces lock")
                        .push(String::from_utf8_lossy(&line).into_owned());
                    if let Some((conn, sni)) = handshake(tcp, config) {
                        answer_with_path(conn, index, sni, &log);
                    }
                });
            }
        });
        TlsBackend { port, seen }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<TlsSeen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

/// The server side of a handshake on `tcp`: the connection and the name the client asked for.
fn handshake(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> Option<(HttpConn<TlsServerWire>, Option<String>)> {
    tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let mut session = ServerConnection::new(config).ok()?;
    while session.is_handshaking() {
        session.complete_io(&mut tcp).ok()?;
    }
    let sni = session.server_name().map(str::to_string);
    Some((HttpConn::over(StreamOwned::new(session, tcp)), sni))
}

/// Records each request and answers it with its path (keep-alive).
fn answer_with_path(
    mut conn: HttpConn<TlsServerWire>,
    index: usize,
    sni: Option<String>,
    log: &Mutex<Vec<TlsSeen>>,
) {
    while let Ok(Some(req)) = conn.read_request() {
        let body = req.head.target().to_string();
        log.lock().expect("seen lock").push(TlsSeen {
            conn: index,
            sni: sni.clone(),
            req,
        });
        if conn
            .try_send(&response_bytes("200 OK", &[], body.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

/// A full-duplex upstream: answers a request at once (200, the request's Content-Length) and
/// echoes its body as it reads it, so the answer streams while the upload still does.
pub fn echo_as_it_reads<S: Wire>(mut conn: HttpConn<S>) {
    use std::io::Read;
    let Ok(Some(head)) = conn.read_head() else {
        return;
    };
    let len: usize = head
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
    if conn.try_send(answer.as_bytes()).is_err() {
        return;
    }
    let (mut left, mut buf) = (len, vec![0u8; 16384]);
    while left > 0 {
        match conn.read(&mut buf[..left.min(16384)]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                left -= n;
                if conn.try_send(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Uploads `body` to an `echo_as_it_reads` upstream, reading the answer's head and the echo of
/// the first `first` bytes before sending the rest: only a proxy that relays both ways at once
/// gets past it (one that waits for the whole upload deadlocks until the timeout).
pub fn assert_echoed_while_uploading<S: Wire>(conn: &mut HttpConn<S>, body: &[u8], first: usize) {
    use std::io::Read;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.send(head.as_bytes());
    conn.send(&body[..first]);
    let answer = conn.read_head().expect("answer head").expect("answer head");
    assert_eq!(answer.status(), 200);
    let mut echoed = vec![0u8; first];
    conn.read_exact(&mut echoed)
        .expect("echo of the first piece");
    assert!(echoed == body[..first], "echo changed");
    for piece in body[first..].chunks(1 << 20) {
        conn.send(piece);
        let mut back = vec![0u8; piece.len()];
        conn.read_exact(&mut back).expect("echo");
        assert!(back == piece, "echo changed");
    }
}

/// Runs `openssl s_client` against 127.0.0.1:`port` with `args`, sending `input`, and returns
/// what it printed (stdout and stderr together).
pub fn s_client(port: u16, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (apt-get install openssl)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to s_client");
    let out = child.wait_with_output().expect("s_client output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The path of `issued`'s files as they would be written in a config next to them.
pub fn relative(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}
