//! A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`, to read the proxy's
//! `READY=1`, `RELOADING=1` and `STOPPING=1`, and the monotonic clock `MONOTONIC_USEC` is on.

use super::IO_TIMEOUT;
use std::io::{self, ErrorKind};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A unix datagram socket standing in for systemd's `NOTIFY_SOCKET`.
pub struct NotifySocket {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    socket: UnixDatagram,
    /// Every message received so far, in order.
    pub received: Vec<String>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        NotifySocket {
            _dir: dir,
            path,
            socket,
            received: Vec::new(),
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// Reads messages in order until one has the line `line` (e.g. `READY=1`) and returns it;
    /// panics after 10 s, listing what came.
    pub fn expect_line(&mut self, line: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.received.push(message.clone());
                    if message.lines().any(|l| l == line) {
                        return message;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} notification within {IO_TIMEOUT:?}; received {:?}",
                self.received
            );
        }
    }
}

/// CLOCK_MONOTONIC now, in microseconds (what `MONOTONIC_USEC` must be close to).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", io::Error::last_os_error());
    u64::try_from(ts.tv_sec).expect("non-negative") * 1_000_000
        + u64::try_from(ts.tv_nsec).expect("non-negative") / 1000
}
