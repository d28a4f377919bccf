//! Zero-copy forwarding of large Content-Length bodies: socket -> pipe -> socket with splice(2),
//! so the bytes never enter user space (two copies of every byte saved; at 1 MiB they are a
//! third of the proxy's CPU). HAProxy does the same with `option splice-auto`.
//!
//! Why direct syscalls and not io_uring's SPLICE op (monoio's `splice` feature): the kernel
//! always runs IORING_OP_SPLICE in an io-wq worker thread, a thread hop per operation. Here the
//! worker splices non-blocking itself and waits for readiness through its driver as usual.
//! The sockets are switched to O_NONBLOCK only for the splice (monoio's io_uring reads expect
//! blocking sockets) and switched back on every path out.
//!
//! Pipes are bounded per worker (HAProxy's `maxpipes`), open and spare together, and counted in
//! the open-files budget: when all are in use, or the kernel has no descriptor, bodies are copied.

use super::fd_budget::{self, FdOp, Lease};
use super::io::IoFail;
use monoio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Bodies with at least this much left to send go through a pipe; smaller ones are cheaper to
/// copy than to set up for.
pub const SPLICE_MIN_BYTES: u64 = 128 * 1024;
/// Pipe capacity asked for (the kernel's default unprivileged maximum is 1 MiB).
const PIPE_BYTES: usize = 1024 * 1024;
/// Idle pipes kept per worker for reuse (within its pipe budget).
const PIPES_KEPT: usize = 16;

thread_local! {
    /// Each worker thread's spare empty pipes (a pipe is two descriptors and a syscall to make).
    static SPARE_PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    /// Pipes this worker has open, in use and spare: at most `fd_budget::pipes_per_worker()`.
    static PIPES_OPEN: Cell<usize> = const { Cell::new(0) };
    /// Set once splice(2) turned out not to work here (a seccomp filter, a socket type without
    /// splice support): the worker copies from then on.
    static SPLICE_REFUSED: Cell<bool> = const { Cell::new(false) };
}

/// Errors of a first splice that mean "not possible here" rather than "this connection failed".
fn is_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::EOPNOTSUPP)
    )
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// Its two descriptors on the worker's budget.
    _descriptors: Lease,
}

impl Pipe {
    /// A spare pipe, or a new one within the worker's budget.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = SPARE_PIPES.with(|p| p.borrow_mut().pop()) {
            return Ok(pipe);
        }
        if PIPES_OPEN.get() >= fd_budget::pipes_per_worker() {
            let e = io::Error::new(
                io::ErrorKind::WouldBlock,
                "the worker's pipes are all in use",
            );
            fd_budget::exhausted(FdOp::PipeBudget, &e);
            return Err(e);
        }
        let no_room = || io::Error::from_raw_os_error(libc::EMFILE);
        let descriptors = fd_budget::lease(2, FdOp::Pipe).ok_or_else(no_room)?;
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        let made = if made < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        fd_budget::note(FdOp::Pipe, made)?;
        PIPES_OPEN.set(PIPES_OPEN.get() + 1);
        // SAFETY: fresh descriptors nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: plain fcntl on an owned descriptor; on failure the default size stays.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as i32) };
        let capacity = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Pipe {
            read,
            write,
            capacity,
            _descriptors: descriptors,
        })
    }

    /// Returns an empty pipe for reuse (a pipe with bytes left in it is just closed).
    fn give_back(self) {
        SPARE_PIPES.with(|p| {
            let mut spare = p.borrow_mut();
            if spare.len() < PIPES_KEPT {
                spare.push(self);
            }
        });
    }
}

impl Drop for Pipe {
    /// Closing the pipe (its `OwnedFd`s) gives its two descriptors back to the budget.
    fn drop(&mut self) {
        PIPES_OPEN.set(PIPES_OPEN.get().saturating_sub(1));
    }
}

/// Puts a socket in non-blocking mode for the guard's lifetime.
struct NonBlocking {
    fd: RawFd,
    restore: Option<libc::c_int>,
}

impl NonBlocking {
    fn set(stream: &TcpStream) -> io::Result<NonBlocking> {
        let fd = stream.as_raw_fd();
        // SAFETY: fcntl on a descriptor `stream` keeps open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK != 0 {
            return Ok(NonBlocking { fd, restore: None });
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking {
            fd,
            restore: Some(flags),
        })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if let Some(flags) = self.restore {
            // SAFETY: the stream outlives the guard (both borrowed by `forward_exact`).
            unsafe { libc::fcntl(self.fd, libc::F_SETFL, flags) };
        }
    }
}

#[derive(Debug)]
pub enum SpliceError {
    /// Could not start (no pipe, fcntl failed): nothing was moved, copy instead.
    Unavailable(io::Error),
    /// The source failed or stalled.
    Source {
        fail: IoFail,
        sent_any: bool,
    },
    /// The source closed before `len` bytes.
    SourceClosed {
        sent_any: bool,
    },
    Destination(IoFail),
}

/// Moves exactly `len` bytes from `src` to `dst` through a pipe. Each wait for readiness is
/// bounded by `timeout`.
pub async fn forward_exact(
    src: &TcpStream,
    dst: &TcpStream,
    len: u64,
    timeout: Duration,
) -> Result<(), SpliceError> {
    if SPLICE_REFUSED.get() {
        return Err(SpliceError::Unavailable(io::ErrorKind::Unsupported.into()));
    }
    let pipe = Pipe::take().map_err(SpliceError::Unavailable)?;
    let guards = NonBlocking::set(src).and_then(|s| Ok((s, NonBlocking::set(dst)?)));
    let _guards = guards.map_err(SpliceError::Unavailable)?;
    let (mut to_read, mut in_pipe, mut sent_any) = (len, 0usize, false);
    let source_fail = |fail, sent_any| SpliceError::Source { fail, sent_any };
    while to_read > 0 || in_pipe > 0 {
        let mut progressed = false;
        if to_read > 0 && in_pipe < pipe.capacity {
            let want = to_read.min((pipe.capacity - in_pipe) as u64) as usize;
            match splice(src.as_raw_fd(), pipe.write.as_raw_fd(), want) {
                Ok(0) => return Err(SpliceError::SourceClosed { sent_any }),
                Ok(n) => {
                    (to_read, in_pipe, progressed) = (to_read - n as u64, in_pipe + n, true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if to_read == len && is_refusal(&e) => {
                    // Nothing moved yet: the caller copies this body instead.
                    SPLICE_REFUSED.set(true);
                    tracing::warn!(error = %e, "splice(2) refused; copying bodies from now on");
                    return Err(SpliceError::Unavailable(e));
                }
                Err(e) => return Err(source_fail(IoFail::Io(e), sent_any)),
            }
        }
        if in_pipe > 0 {
            match splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), in_pipe) {
                Ok(n) => (in_pipe, sent_any, progressed) = (in_pipe - n, true, true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(SpliceError::Destination(IoFail::Io(e))),
            }
        }
        if progressed {
            continue;
        }
        // Stuck: the pipe is full or the source dry, and the destination (if it has anything
        // to take) is full. Wait for whichever side can unblock us.
        if in_pipe > 0 && (to_read == 0 || in_pipe >= pipe.capacity) {
            wait(dst.writable(false), timeout)
                .await
                .map_err(SpliceError::Destination)?;
        } else if in_pipe > 0 {
            monoio::select! {
                r = wait(src.readable(false), timeout) => r.map_err(|e| source_fail(e, sent_any))?,
                w = wait(dst.writable(false), timeout) => w.map_err(SpliceError::Destination)?,
            }
        } else {
            wait(src.readable(false), timeout)
                .await
                .map_err(|e| source_fail(e, sent_any))?;
        }
    }
    pipe.give_back();
    Ok(())
}

async fn wait(
    ready: impl std::future::Future<Output = io::Result<()>>,
    timeout: Duration,
) -> Result<(), IoFail> {
    match super::deadline::timeout(timeout, ready).await {
        Ok(r) => r.map_err(IoFail::Io),
        Err(_) => Err(IoFail::Timeout),
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on open descriptors; no user memory is passed.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
