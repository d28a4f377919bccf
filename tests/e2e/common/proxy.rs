//! Running the `ringproxy` binary on a `TestConfig`: a guard that kills the process on drop,
//! readiness by polling TCP connect, log capture to files, signals and exit, temp config files
//! and bounded one-shot CLI runs.

use super::config::TestConfig;
use super::http::{get_request, HttpConn};
use super::{is_closed_error, poll, rss_kib, IO_TIMEOUT};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringproxy");

/// The binary the tests run: `RINGPROXY_BIN` if set (to run the suite against another build,
/// e.g. to show a new test fails on the code before a fix), else the one cargo built.
pub fn bin() -> String {
    std::env::var("RINGPROXY_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// A config file in its own temp directory (removed on drop).
pub struct TempConfig {
    pub dir: TempDir,
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(toml: &str) -> TempConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        fs::write(&path, toml).expect("write config");
        TempConfig { dir, path }
    }
}

/// Exit status and captured output of a process that ran to completion.
pub struct RunOutcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutcome {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Debug for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the binary with `args` (and `env`, in `cwd` if given) and waits up to 10 s for it to exit.
pub fn run_to_exit<S: AsRef<OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
) -> RunOutcome {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(bin());
    command
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = spawn_logged(&mut command, out_dir.path());
    let status = wait_or_kill(&mut child, IO_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "ringproxy did not exit within {IO_TIMEOUT:?}:\n{}",
            read_logs(out_dir.path())
        )
    });
    RunOutcome {
        status,
        stdout: read_file(&out_dir.path().join("stdout.log")),
        stderr: read_file(&out_dir.path().join("stderr.log")),
    }
}

/// `ringproxy --check -c <config>`, run to its exit.
pub fn check_config(config: &TempConfig) -> RunOutcome {
    run_to_exit(
        &["--check".as_ref(), "-c".as_ref(), config.path.as_os_str()],
        &[],
        None,
    )
}

/// The io_uring driver (the default here) and the epoll fallback, as environments for
/// `Proxy::start_with_env`.
pub const DRIVERS: [(&str, &[(&str, &str)]); 2] = [
    ("io_uring", &[]),
    ("epoll", &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]),
];

/// A running proxy; killed and reaped when dropped.
pub struct Proxy {
    child: Child,
    /// The address it listens on (`[server] host`).
    pub ip: IpAddr,
    pub port: u16,
    /// Its config file, which a reload test rewrites (`write_config`).
    pub config: TempConfig,
}

impl Proxy {
    /// Writes `config`, runs `ringproxy -c <file>`, waits until its port accepts and the
    /// proxy has logged that its workers listen.
    pub fn start(config: &TestConfig) -> Proxy {
        Proxy::start_with(config, &[], &[], |_| {})
    }

    /// As `start`, with environment `env` (see `DRIVERS`).
    pub fn start_with_env(config: &TestConfig, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_with(config, &[], env, |_| {})
    }

    /// As `start`, with `args` after `-c <file>`, environment `env`, and `configure` applied
    /// to the command before it is spawned.
    pub fn start_with(
        config: &TestConfig,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Proxy {
        let file = config.write();
        let mut command = Command::new(bin());
        command
            .arg("-c")
            .arg(&file.path)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied());
        configure(&mut command);
        let child = spawn_logged(&mut command, file.dir.path());
        let mut proxy = Proxy {
            child,
            ip: config.ip(),
            port: config.port(),
            config: file,
        };
        proxy.wait_ready();
        proxy
    }

    /// Like `start`, but stdout goes to a pipe read here only until the proxy says its workers
    /// listen; the pipe is returned and nobody reads it after that, as a log consumer that
    /// stalls (the pipe stays open while it is held). `stdout()` is empty for such a proxy.
    pub fn start_with_unread_stdout(config: &TestConfig) -> (Proxy, ChildStdout) {
        let (ip, port, config) = (config.ip(), config.port(), config.write());
        let stderr = File::create(config.dir.path().join("stderr.log")).expect("create stderr.log");
        let mut child = Command::new(bin())
            .arg("-c")
            .arg(&config.path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
        let pipe = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                if line.contains("all workers listening") {
                    let _ = ready_tx.send(reader.into_inner());
                    return;
                }
                line.clear();
            }
        });
        let proxy = Proxy {
            child,
            ip,
            port,
            config,
        };
        let pipe = ready_rx.recv_timeout(IO_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "ringproxy did not log that it listens within {IO_TIMEOUT:?}:\n{}",
                proxy.logs()
            )
        });
        let addr = SocketAddr::from((ip, port));
        assert!(
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).is_ok(),
            "ringproxy not accepting on {addr}:\n{}",
            proxy.logs()
        );
        (proxy, pipe)
    }

    fn wait_ready(&mut self) {
        let addr = SocketAddr::from((self.ip, self.port));
        let ready = poll(IO_TIMEOUT, || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "ringproxy exited with {status} before accepting on {addr}:\n{}",
                    self.logs()
                );
            }
            // The port accepting is not enough: it must be this proxy that says it listens.
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && self.stdout().contains("all workers listening")
        });
        assert!(
            ready.is_some(),
            "ringproxy not accepting on {addr} after {IO_TIMEOUT:?}:\n{}",
            self.logs()
        );
    }

    /// Replaces the config file's text, for a reload to read.
    pub fn write_config(&self, text: &str) {
        fs::write(&self.config.path, text).expect("rewrite config");
    }

    /// A new client connection to the proxy.
    pub fn connect(&self) -> HttpConn {
        HttpConn::connect(self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn stdout(&self) -> String {
        read_file(&self.config.dir.path().join("stdout.log"))
    }

    /// Both captured streams, labelled, for failure messages.
    pub fn logs(&self) -> String {
        read_logs(self.config.dir.path())
    }

    /// Polls stdout (up to 10 s) for the lines matching `pred`; panics unless at least `count` appear.
    pub fn wait_log_lines(
        &self,
        count: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        let found = poll(IO_TIMEOUT, || {
            let out = self.stdout();
            // Whole lines only: the last one may still be arriving.
            let whole = out.rfind('\n').map_or("", |end| &out[..end]);
            lines = whole
                .lines()
                .filter(|line| pred(line))
                .map(str::to_string)
                .collect();
            lines.len() >= count
        });
        assert!(
            found.is_some(),
            "expected {count} log line(s) {what}, found {}:\n{}",
            lines.len(),
            self.logs()
        );
        lines
    }

    /// Sends `signal` to the proxy without waiting.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to 10 s for the proxy to exit (after a signal, or by itself).
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_child(&mut self.child, IO_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "ringproxy still running after {IO_TIMEOUT:?}:\n{}",
                self.logs()
            )
        })
    }

    /// Sends `signal` to the proxy and waits up to 10 s for it to exit.
    pub fn signal_and_wait(&mut self, signal: libc::c_int) -> ExitStatus {
        self.signal(signal);
        self.wait_exit()
    }

    /// True when a new client connection is refused: connect fails, or the connection is
    /// closed or reset before any response to a GET. False when a response (or nothing) comes.
    pub fn refuses_new_connections(&self) -> bool {
        let addr = SocketAddr::from((self.ip, self.port));
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
            return true;
        };
        let mut conn = HttpConn::new(stream);
        conn.stream()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("set_read_timeout");
        if conn.try_send(&get_request("/after-stop")).is_err() {
            return true;
        }
        match conn.read_response("GET") {
            Ok(_) => false,
            Err(e) => is_closed_error(&e),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key` (e.g. `"path="`) in a text-format log line, up to the next space.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}"))? + key.len() + 1;
    line[start..].split(' ').next()
}

/// Spawns with stdin closed and stdout/stderr going to `stdout.log`/`stderr.log` in `dir`.
fn spawn_logged(command: &mut Command, dir: &Path) -> Child {
    let stdout = File::create(dir.join("stdout.log")).expect("create stdout.log");
    let stderr = File::create(dir.join("stderr.log")).expect("create stderr.log");
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()))
}

/// The child's exit status once it exits within `limit`; `None`, with the child killed and
/// reaped, if it does not.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let status = wait_child(child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// The child's exit status once it exits within `limit`; `None` if it is still running.
fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let mut status = None;
    poll(limit, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status
}

fn read_file(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

fn read_logs(dir: &Path) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        read_file(&dir.join("stdout.log")),
        read_file(&dir.join("stderr.log"))
    )
}
