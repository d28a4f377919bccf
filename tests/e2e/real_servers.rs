//! Real servers and real clients, through the proxy and directly: nginx as a file server, a
//! Flask app under gunicorn and a `websockets` echo server, driven by Python `requests`,
//! `websockets` and curl. Every exchange must look the same both ways (status, redirects,
//! headers that matter, body digest) and finish within 2 s, so an empty response that never
//! ends fails fast. Needs what `scripts/test-deps.sh` installs; fails, never skips, without it.

use crate::common::proxy::wait_or_kill;
use crate::common::{free_port, poll, sha256_hex, Proxy, TestConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Longest any single exchange may take through the proxy (each is instant directly).
const EXCHANGE_BOUND: Duration = Duration::from_secs(2);
/// Bound on a server's start and on one client run (all its exchanges, both targets).
const START_BOUND: Duration = Duration::from_secs(15);
const CLIENT_BOUND: Duration = Duration::from_secs(40);

const APP_PY: &str = include_str!("real_servers/app.py");
const CLIENT_PY: &str = include_str!("real_servers/client.py");
const WS_ECHO_PY: &str = include_str!("real_servers/ws_echo.py");

/// What curl reports of the last response (`%header{}` needs curl 7.84, Debian 12 has 7.88).
const CURL_WRITE_OUT: &str = "status=%{http_code} redirects=%{num_redirects} \
    size=%{size_download} type=%{content_type} length=%header{content-length} \
    location=%header{location} encoding=%header{content-encoding} range=%header{content-range}";

const DEPS_HINT: &str = "install them with `bash scripts/test-deps.sh` (as root on Debian/Ubuntu)";

#[test]
fn nginx_file_server_same_through_proxy() {
    same_through_proxy("nginx", Fixture::start_nginx);
}

#[test]
fn flask_app_on_gunicorn_threads_same_through_proxy() {
    same_through_proxy("app", |fixture| fixture.start_gunicorn("gthread"));
}

/// The sync worker closes every connection after its response: nothing may be reused.
#[test]
fn flask_app_on_gunicorn_sync_worker_same_through_proxy() {
    same_through_proxy("app", |fixture| fixture.start_gunicorn("sync"));
}

#[test]
fn websocket_echo_same_through_proxy() {
    same_through_proxy("ws", Fixture::start_ws_echo);
}

/// Starts a server, a proxy in front of it, and runs `client.py suite` against both.
fn same_through_proxy(suite: &str, start: impl FnOnce(&Fixture) -> Server) {
    let fixture = Fixture::new();
    let server = start(&fixture);
    let proxy = Proxy::start(&TestConfig::new(&[server.port]));
    fixture.compare_with_python(suite, server.port, proxy.port);
}

/// curl as users run it: `-L` through redirect chains (with bodies and empty), HEAD, HTTP/1.0,
/// an empty POST, an upload big enough for `Expect: 100-continue`, `--compressed`, a range.
#[test]
fn curl_same_through_proxy() {
    let fixture = Fixture::new();
    let nginx = fixture.start_nginx();
    let app = fixture.start_gunicorn("gthread");
    let nginx_proxy = Proxy::start(&TestConfig::new(&[nginx.port]));
    let app_proxy = Proxy::start(&TestConfig::new(&[app.port]));
    let upload = fixture.dir.path().join("upload.bin");
    fs::write(&upload, crate::common::pattern(3 << 20, 9)).expect("write upload");
    let upload = upload.to_str().expect("utf-8 path").to_owned();

    let nginx_ports = (nginx.port, nginx_proxy.port);
    let app_ports = (app.port, app_proxy.port);
    #[rustfmt::skip]
    let cases: [CurlCase; 13] = [
        ("-L redirect chain", app_ports, &["-L"], "/redirect/3"),
        ("-L empty redirects", app_ports, &["-L"], "/redirect-empty/3"),
        ("-L directory redirect", nginx_ports, &["-L"], "/dir"),
        ("-L nginx empty redirect", nginx_ports, &["-L"], "/redirect-empty"),
        ("-I empty redirect", nginx_ports, &["-I"], "/redirect-empty"),
        ("-I 1 MiB file", nginx_ports, &["-I"], "/1m.bin"),
        ("--http1.0 empty file", nginx_ports, &["--http1.0"], "/empty.txt"),
        ("--http1.0 return 204", nginx_ports, &["--http1.0"], "/return-204"),
        ("--http1.0 streamed", app_ports, &["--http1.0"], "/stream/10"),
        ("-d '' empty POST", app_ports, &["-d", ""], "/created"),
        ("-T upload, Expect", app_ports, &["-T", &upload], "/echo"),
        ("--compressed", nginx_ports, &["--compressed"], "/text.txt"),
        ("-r range", nginx_ports, &["-r", "0-99"], "/1m.bin"),
    ];
    let mut report = Report::default();
    for (name, (direct, proxy), args, path) in cases {
        let direct = fixture.curl(name, "direct", direct, args, path);
        let proxied = fixture.curl(name, "proxy", proxy, args, path);
        report.compare(name, &direct, &proxied);
    }
    report.assert_clean("curl");
}

/// A curl exchange: its name, (direct port, proxy port), curl's arguments, the path.
type CurlCase<'a> = (&'a str, (u16, u16), &'a [&'a str], &'a str);

/// One exchange's outcome as the client saw it.
#[derive(Debug)]
struct Outcome {
    /// Compared between direct and proxy: status, redirects, headers, body length and digest.
    fields: BTreeMap<String, Value>,
    elapsed: Duration,
    error: Option<String>,
}

#[derive(Default)]
struct Report {
    cases: usize,
    findings: Vec<String>,
}

impl Report {
    fn compare(&mut self, case: &str, direct: &Outcome, proxied: &Outcome) {
        self.cases += 1;
        // Shown with --nocapture or on failure: what each exchange was, and its times.
        println!(
            "{case}: direct {:?} in {:?}, proxy in {:?}",
            direct.fields.get("status").or(direct.fields.get("curl -w")),
            direct.elapsed,
            proxied.elapsed
        );
        if let Some(error) = &direct.error {
            self.findings.push(format!(
                "{case}: failed directly (fixture broken?): {error}"
            ));
            return;
        }
        if let Some(error) = &proxied.error {
            self.findings.push(format!(
                "{case}: failed through the proxy after {:?}: {error} (directly: {:?})",
                proxied.elapsed, direct.elapsed
            ));
            return;
        }
        if proxied.elapsed > EXCHANGE_BOUND {
            self.findings.push(format!(
                "{case}: took {:?} through the proxy, {:?} directly",
                proxied.elapsed, direct.elapsed
            ));
        }
        for (field, want) in &direct.fields {
            let got = proxied.fields.get(field).unwrap_or(&Value::Null);
            if got != want {
                self.findings.push(format!(
                    "{case}: {field} differs: direct {want}, proxy {got}"
                ));
            }
        }
        for field in proxied.fields.keys() {
            if !direct.fields.contains_key(field) {
                self.findings.push(format!(
                    "{case}: {field} only through the proxy: {}",
                    proxied.fields[field]
                ));
            }
        }
    }

    fn assert_clean(&self, what: &str) {
        assert!(self.cases > 0, "{what}: no exchanges ran");
        assert!(
            self.findings.is_empty(),
            "{what}: {} of {} exchanges differ through the proxy:\n  {}",
            self.findings.len(),
            self.cases,
            self.findings.join("\n  ")
        );
    }
}

/// A server process in its own process group, killed with all its children on drop (nginx
/// and gunicorn fork workers that would outlive their master).
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this guard created; no memory involved.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's temp directory with the files the servers serve and the scripts they run.
struct Fixture {
    dir: TempDir,
    python: String,
}

impl Fixture {
    fn new() -> Fixture {
        let python = python();
        require_tools(&python);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let www = root.join("www");
        fs::create_dir_all(www.join("dir")).expect("mkdir www/dir");
        fs::write(www.join("empty.txt"), b"").expect("write");
        fs::write(www.join("one.txt"), b"1").expect("write");
        fs::write(www.join("1m.bin"), crate::common::pattern(1 << 20, 3)).expect("write");
        let text: String = (0..3000)
            .map(|i| format!("line {i} of a compressible text file\n"))
            .collect();
        fs::write(www.join("text.txt"), text).expect("write");
        fs::write(
            www.join("dir/index.html"),
            b"<html><body>index</body></html>\n",
        )
        .expect("write");
        for (name, content) in [
            ("app.py", APP_PY),
            ("client.py", CLIENT_PY),
            ("ws_echo.py", WS_ECHO_PY),
        ] {
            fs::write(root.join(name), content).expect("write fixture script");
        }
        Fixture { dir, python }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// nginx in the foreground in the temp dir: every path it writes is under it, so it runs
    /// unprivileged too (as root its workers run as root, to read the 0700 temp dir).
    fn start_nginx(&self) -> Server {
        let port = free_port();
        let root = self.dir.path().display();
        let tmp = self.path("nginx-tmp");
        fs::create_dir_all(&tmp).expect("mkdir nginx-tmp");
        let tmp = tmp.display();
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            r#"{user}
worker_processes 1;
events {{ worker_connections 256; }}
http {{
    types {{ text/html html; text/plain txt; application/octet-stream bin; }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    # Relative redirects, as behind any proxy: following one stays on the proxy.
    absolute_redirect off;
    gzip on;
    gzip_types text/plain;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location = /return-204 {{ return 204; }}
        location = /return-302 {{ return 302 /one.txt; }}
        # A redirect with an empty body (Content-Length: 0), which `return` never sends.
        location = /redirect-empty {{ error_page 418 =302 /empty-redirect; return 418; }}
        location = /empty-redirect {{
            internal;
            add_header Location /one.txt always;
            alias {root}/www/empty.txt;
        }}
    }}
}}
"#
        );
        let conf_path = self.path("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");
        let error_log = self.path("nginx-error.log");
        let mut command = Command::new(nginx_bin());
        command
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&error_log)
            .arg("-g")
            .arg(format!(
                "daemon off; pid {}; error_log {} warn;",
                self.path("nginx.pid").display(),
                error_log.display()
            ));
        let server = self.spawn("nginx", command, port);
        self.wait_http(&server, "nginx", "/one.txt");
        server
    }

    /// The Flask app under gunicorn with the given worker class (`gthread` keeps connections
    /// alive, `sync` closes each one).
    fn start_gunicorn(&self, worker_class: &str) -> Server {
        let port = free_port();
        // More than one thread would turn any worker class into gthread.
        let threads = if worker_class == "gthread" { "4" } else { "1" };
        let mut command = Command::new(&self.python);
        command
            .args(["-m", "gunicorn", "--workers", "1", "--threads", threads])
            .args(["--worker-class", worker_class])
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--chdir")
            .arg(self.dir.path())
            .arg("app:app")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let name = format!("gunicorn-{worker_class}");
        let server = self.spawn(&name, command, port);
        self.wait_http(&server, &name, "/get");
        server
    }

    fn start_ws_echo(&self) -> Server {
        let port = free_port();
        let mut command = Command::new(&self.python);
        command
            .arg(self.path("ws_echo.py"))
            .arg(port.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let server = self.spawn("ws_echo", command, port);
        wait_listening(&server, "ws_echo", &self.path("ws_echo.log"));
        server
    }

    /// Spawns `command` in a process group of its own, output to `<name>.log`.
    fn spawn(&self, name: &str, mut command: Command, port: u16) -> Server {
        let log = File::create(self.path(&format!("{name}.log"))).expect("create log");
        let child = command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}; {DEPS_HINT}"));
        Server { child, port }
    }

    /// Waits until the server answers an HTTP request on `path` (gunicorn accepts before
    /// its worker has booted).
    fn wait_http(&self, server: &Server, name: &str, path: &str) {
        let log = self.path(&format!("{name}.log"));
        wait_listening(server, name, &log);
        let answered = poll(START_BOUND, || {
            TcpStream::connect(("127.0.0.1", server.port))
                .ok()
                .and_then(|mut conn| {
                    use std::io::{Read, Write};
                    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                    conn.write_all(request.as_bytes()).ok()?;
                    let mut head = [0u8; 12];
                    conn.read_exact(&mut head).ok()?;
                    Some(head.starts_with(b"HTTP/1."))
                })
                .unwrap_or(false)
        });
        assert!(
            answered.is_some(),
            "{name} did not answer GET {path} within {START_BOUND:?}:\n{}",
            read_log(&log)
        );
    }

    /// Runs `client.py SUITE direct proxy` and compares what it saw on the two paths.
    fn compare_with_python(&self, suite: &str, direct_port: u16, proxy_port: u16) {
        let out_path = self.path(&format!("client-{suite}.out"));
        let err_path = self.path(&format!("client-{suite}.err"));
        let mut command = Command::new(&self.python);
        command
            .arg(self.path("client.py"))
            .args([suite, &direct_port.to_string(), &proxy_port.to_string()])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(File::create(&out_path).expect("create client output"))
            .stderr(File::create(&err_path).expect("create client errors"));
        let status = run_bounded(command, CLIENT_BOUND, "client.py");
        let output = read_log(&out_path);
        assert!(
            status.success(),
            "client.py {suite} failed ({status}):\n{}\n{output}",
            read_log(&err_path)
        );
        let mut outcomes: BTreeMap<String, (Option<Outcome>, Option<Outcome>)> = BTreeMap::new();
        let mut order = Vec::new();
        for line in output.lines().filter(|line| !line.trim().is_empty()) {
            let mut record: BTreeMap<String, Value> = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("client.py printed a bad line ({e}): {line}"));
            let case = take_str(&mut record, "case");
            let target = take_str(&mut record, "target");
            let elapsed = record
                .remove("ms")
                .and_then(|ms| ms.as_f64())
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                .unwrap_or(Duration::MAX);
            let error = record
                .remove("error")
                .and_then(|e| e.as_str().map(str::to_owned));
            let outcome = Outcome {
                fields: record,
                elapsed,
                error,
            };
            let slot = outcomes.entry(case.clone()).or_insert_with(|| {
                order.push(case.clone());
                (None, None)
            });
            match target.as_str() {
                "direct" => slot.0 = Some(outcome),
                "proxy" => slot.1 = Some(outcome),
                other => panic!("client.py: unknown target {other}"),
            }
        }
        let mut report = Report::default();
        for case in order {
            match &outcomes[&case] {
                (Some(direct), Some(proxied)) => report.compare(&case, direct, proxied),
                _ => report
                    .findings
                    .push(format!("{case}: not run on both targets")),
            }
        }
        report.assert_clean(suite);
    }

    /// One curl run, bounded by `--max-time`: what it printed and the body's digest.
    fn curl(&self, case: &str, target: &str, port: u16, args: &[&str], path: &str) -> Outcome {
        let body_path = self.path("curl-body");
        let _ = fs::remove_file(&body_path);
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time"])
            .arg(EXCHANGE_BOUND.as_secs().to_string())
            .arg("-o")
            .arg(&body_path)
            .args(["-w", CURL_WRITE_OUT])
            .args(args)
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("run curl: {e}; {DEPS_HINT}"));
        let elapsed = started.elapsed();
        let body = fs::read(&body_path).unwrap_or_default();
        let mut fields = BTreeMap::new();
        fields.insert(
            "curl -w".to_owned(),
            Value::from(String::from_utf8_lossy(&output.stdout).into_owned()),
        );
        // With -I the "body" is the head itself, Date and all: its fields are in `-w` instead.
        if !args.contains(&"-I") {
            fields.insert("sha256".to_owned(), Value::from(sha256_hex(&body)));
        }
        let error = (!output.status.success()).then(|| {
            format!(
                "curl {target} {case}: {} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        });
        Outcome {
            fields,
            elapsed,
            error,
        }
    }
}

fn take_str(record: &mut BTreeMap<String, Value>, key: &str) -> String {
    match record.remove(key) {
        Some(Value::String(value)) => value,
        other => panic!("client.py line without {key}: {other:?}"),
    }
}

/// The interpreter with the Debian packages (`/usr/bin/python3`), not one a version manager
/// puts first on PATH; `RINGPROXY_TEST_PYTHON` overrides it.
fn python() -> String {
    if let Ok(python) = std::env::var("RINGPROXY_TEST_PYTHON") {
        return python;
    }
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3".to_owned()
    } else {
        "python3".to_owned()
    }
}

/// nginx lives in /usr/sbin, which is not on every user's PATH.
fn nginx_bin() -> String {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx".to_owned()
    } else {
        "nginx".to_owned()
    }
}

/// Fails (never skips) naming what is missing and the script that installs it.
fn require_tools(python: &str) {
    let mut missing = Vec::new();
    let mut check = |what: &str, program: &str, args: &[&str]| {
        let ok = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if !ok {
            missing.push(what.to_owned());
        }
    };
    check("nginx", &nginx_bin(), &["-v"]);
    check("curl", "curl", &["--version"]);
    check(
        &format!("{python} with flask, gunicorn, requests and websockets"),
        python,
        &["-c", "import flask, gunicorn, requests, websockets"],
    );
    assert!(
        missing.is_empty(),
        "tests/e2e/real_servers.rs needs {}; {DEPS_HINT}",
        missing.join(", ")
    );
}

/// Waits until the server's port accepts; fails with its log if it exits or never listens.
fn wait_listening(server: &Server, name: &str, log: &Path) {
    let listening = poll(START_BOUND, || {
        TcpStream::connect(("127.0.0.1", server.port)).is_ok()
    });
    assert!(
        listening.is_some(),
        "{name} did not listen on {} within {START_BOUND:?}:\n{}",
        server.port,
        read_log(log)
    );
}

/// Runs `command` to its end, killing it after `bound`.
fn run_bounded(mut command: Command, bound: Duration, what: &str) -> std::process::ExitStatus {
    let mut child = command
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}; {DEPS_HINT}"));
    wait_or_kill(&mut child, bound)
        .unwrap_or_else(|| panic!("{what} did not finish within {bound:?}"))
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no {}: {e})", path.display()))
}
