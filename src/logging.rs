//! Structured logs through `tracing`: JSON or text on stdout, level from config (`RUST_LOG` wins).
//! Lines are queued, bounded in bytes (`[logging] buffer_bytes`), for one writer thread: if stdout
//! stalls, lines past the budget are dropped and counted; no thread ever waits on the log.

use crate::config::{LogFormat, LoggingConfig};
use crate::metrics::LOG_LINES_DROPPED;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Charged to the budget for each queued line on top of its bytes (queue slot, allocation
/// header and rounding), so a flood of short lines is held to the bound too.
const LINE_OVERHEAD: usize = 64;
/// The writer gathers queued lines into writes of about this size (one syscall, not one a line).
const BATCH_BYTES: usize = 64 * 1024;
/// How long dropping the `LogGuard` waits for queued lines to reach stdout: a stalled stdout
/// (a pipe nobody reads) must not hang the exit.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// The idle writer's wake-up when no line came: a backstop, producers unpark it.
const IDLE_WAKE: Duration = Duration::from_millis(500);

static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static QUEUE: OnceLock<Arc<LogQueue>> = OnceLock::new();

enum Message {
    Line(Vec<u8>),
    /// Write everything queued before this, flush stdout, then answer.
    Flush(SyncSender<()>),
}

/// Bytes queued and not yet written, against a limit: producers reserve before sending, the
/// writer releases after writing. Atomics only, so a producer never waits.
struct Budget {
    used: AtomicUsize,
    limit: AtomicUsize,
}

impl Budget {
    fn reserve(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What a queued line costs the budget.
fn charge(line: &[u8]) -> usize {
    line.len() + LINE_OVERHEAD
}

struct WriterState {
    budget: Budget,
    /// The writer found the queue empty and may be parked: the next producer unparks it.
    idle: AtomicBool,
}

/// The producers' side: an unbounded lock-free channel (bounded by the budget) to the writer.
/// Only `try_recv` is used on the other end, so a send never touches the channel's waker lock.
struct LogQueue {
    tx: Sender<Message>,
    state: Arc<WriterState>,
    writer: Thread,
}

impl LogQueue {
    /// Starts the writer thread on `out` (stdout, but for tests).
    fn start(limit: usize, mut out: impl Write + Send + 'static) -> io::Result<LogQueue> {
        let state = Arc::new(WriterState {
            budget: Budget {
                used: AtomicUsize::new(0),
                limit: AtomicUsize::new(limit),
            },
            idle: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let writer_state = state.clone();
        let handle = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&rx, &writer_state, &mut out))?;
        Ok(LogQueue {
            tx,
            state,
            writer: handle.thread().clone(),
        })
    }

    fn send(&self, message: Message) -> bool {
        if self.tx.send(message).is_err() {
            return false;
        }
        if self.state.idle.load(Ordering::SeqCst) && self.state.idle.swap(false, Ordering::SeqCst) {
            self.writer.unpark();
        }
        true
    }

    /// Waits (at most `timeout`) until every line queued before the call is written out.
    fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.send(Message::Flush(done_tx)) && done_rx.recv_timeout(timeout).is_ok()
    }

    fn send_line(&self, line: Vec<u8>) {
        let cost = charge(&line);
        if !self.send(Message::Line(line)) {
            self.state.budget.release(cost);
            LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: drains the queue into batched writes; parks while it is empty.
fn write_lines(rx: &Receiver<Message>, state: &WriterState, out: &mut impl Write) {
    let mut batch = Batch::default();
    loop {
        let message = match rx.try_recv() {
            Ok(message) => message,
            Err(TryRecvError::Empty) => {
                batch.write_out(out, &state.budget);
                state.idle.store(true, Ordering::SeqCst);
                // A line sent before `idle` was set is seen here; one sent after unparks us.
                let next = rx.try_recv();
                if matches!(next, Err(TryRecvError::Empty)) {
                    std::thread::park_timeout(IDLE_WAKE);
                }
                state.idle.store(false, Ordering::SeqCst);
                match next {
                    Ok(message) => message,
                    Err(TryRecvError::Empty) => continue,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            Err(TryRecvError::Disconnected) => {
                batch.write_out(out, &state.budget);
                return;
            }
        };
        match message {
            Message::Line(line) => {
                batch.add(&line);
                if batch.bytes.len() >= BATCH_BYTES {
                    batch.write_out(out, &state.budget);
                }
            }
            Message::Flush(done) => {
                batch.write_out(out, &state.budget);
                let _ = done.try_send(());
            }
        }
    }
}

/// Lines gathered for one write, and what they hold of the budget until written.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
    charged: usize,
}

impl Batch {
    fn add(&mut self, line: &[u8]) {
        self.bytes.extend_from_slice(line);
        self.lines += 1;
        self.charged += charge(line);
    }

    /// Writes and flushes the batch, then gives its bytes back to the budget.
    fn write_out(&mut self, out: &mut impl Write, budget: &Budget) {
        if self.bytes.is_empty() {
            return;
        }
        // A failing stdout (closed, disk full) loses the batch: count it and go on.
        if out
            .write_all(&self.bytes)
            .and_then(|()| out.flush())
            .is_err()
        {
            LOG_LINES_DROPPED.fetch_add(self.lines, Ordering::Relaxed);
        }
        budget.release(self.charged);
        self.bytes.clear();
        // Keep the batch buffer itself bounded after a very long line.
        self.bytes.shrink_to(BATCH_BYTES);
        (self.lines, self.charged) = (0, 0);
    }
}

/// One event's line, collected from the formatter's writes and queued when the event ends.
pub struct LineWriter<'a> {
    queue: &'a LogQueue,
    line: Vec<u8>,
    dropped: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.dropped || buf.is_empty() {
            return Ok(buf.len());
        }
        let cost = buf.len()
            + if self.line.is_empty() {
                LINE_OVERHEAD
            } else {
                0
            };
        if self.queue.state.budget.reserve(cost) {
            self.line.reserve_exact(buf.len());
            self.line.extend_from_slice(buf);
        } else {
            // Over budget (or a line larger than the whole budget): drop the line whole.
            if !self.line.is_empty() {
                self.queue.state.budget.release(charge(&self.line));
            }
            self.line = Vec::new();
            self.dropped = true;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if self.dropped {
            LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        } else if !self.line.is_empty() {
            self.queue.send_line(std::mem::take(&mut self.line));
        }
    }
}

/// The `fmt` layer's writer: one `LineWriter` per event.
#[derive(Clone)]
struct QueueWriter(Arc<LogQueue>);

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            queue: &self.0,
            line: Vec::new(),
            dropped: false,
        }
    }
}

/// Keep it alive until exit: dropping it writes out what is queued, waiting at most
/// `FLUSH_TIMEOUT`.
pub struct LogGuard {
    queue: Option<Arc<LogQueue>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            queue.flush(FLUSH_TIMEOUT);
        }
    }
}

fn env_overrides() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

fn buffer_limit(cfg: &LoggingConfig) -> usize {
    usize::try_from(cfg.buffer_bytes).unwrap_or(usize::MAX)
}

/// Installs the global subscriber and starts the writer thread; keep the guard until exit.
pub fn init(cfg: &LoggingConfig) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LEVEL_HANDLE.set(handle);
    let queue = match LogQueue::start(buffer_limit(cfg), io::stdout()) {
        Ok(queue) => Arc::new(queue),
        Err(e) => {
            eprintln!("error: cannot start the log writer thread: {e}; logging disabled");
            return LogGuard { queue: None };
        }
    };
    let _ = QUEUE.set(queue.clone());
    let writer = QueueWriter(queue.clone());
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_thread_names(true)
                    .with_writer(writer),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_thread_names(true)
                    .with_writer(writer),
            )
            .init(),
    }
    LogGuard { queue: Some(queue) }
}

/// Applies a reloaded `[logging]`: the level (ignored while `RUST_LOG` is set, which wins) and
/// `buffer_bytes` (lines over a lowered budget are dropped until the queue drains below it).
pub fn reconfigure(cfg: &LoggingConfig) {
    if let Some(queue) = QUEUE.get() {
        let limit = &queue.state.budget.limit;
        limit.store(buffer_limit(cfg), Ordering::Relaxed);
    }
    if env_overrides() {
        return;
    }
    if let (Some(handle), Ok(filter)) = (LEVEL_HANDLE.get(), EnvFilter::try_new(&cfg.level)) {
        let _ = handle.reload(filter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// Tests that read the global dropped-lines counter run one at a time.
    static COUNTER: Mutex<()> = Mutex::new(());

    /// A sink that blocks every write until opened, as a stdout nobody reads.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Gated {
        fn open(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut open = self.open.0.lock().unwrap();
            while !*open {
                open = self.open.1.wait(open).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(queue: &QueueWriter, line: &[u8]) {
        let mut writer = queue.make_writer();
        writer.write_all(line).unwrap();
    }

    fn line(i: usize, len: usize) -> Vec<u8> {
        let mut line = format!("line {i:04} ").into_bytes();
        line.resize(len - 1, b'x');
        line.push(b'\n');
        line
    }

    fn dropped() -> u64 {
        LOG_LINES_DROPPED.load(Ordering::Relaxed)
    }

    #[test]
    fn lines_over_the_budget_are_dropped_and_counted_while_stdout_stalls() {
        let _serial = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
        let sink = Gated::default();
        let limit = 10 * (100 + LINE_OVERHEAD);
        let queue = QueueWriter(Arc::new(LogQueue::start(limit, sink.clone()).unwrap()));
        let before = dropped();
        for i in 0..100 {
            log(&queue, &line(i, 100));
            assert!(queue.0.state.budget.used.load(Ordering::Relaxed) <= limit);
        }
        assert_eq!(dropped() - before, 90, "10 lines fit the budget");
        sink.open();
        assert!(queue.0.flush(Duration::from_secs(10)));
        let written = sink.written.lock().unwrap().clone();
        let expected: Vec<u8> = (0..10).flat_map(|i| line(i, 100)).collect();
        assert_eq!(written, expected, "the first ten, whole and in order");
        assert_eq!(queue.0.state.budget.used.load(Ordering::Relaxed), 0);
        // With the budget free again, lines flow.
        log(&queue, &line(100, 100));
        assert!(queue.0.flush(Duration::from_secs(10)));
        assert!(sink.written.lock().unwrap().ends_with(&line(100, 100)));
    }

    #[test]
    fn a_line_larger_than_the_whole_budget_is_dropped() {
        let _serial = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
        let sink = Gated::default();
        sink.open();
        let queue = QueueWriter(Arc::new(LogQueue::start(1000, sink.clone()).unwrap()));
        let before = dropped();
        log(&queue, &line(0, 2000));
        log(&queue, &line(1, 100));
        assert!(queue.0.flush(Duration::from_secs(10)));
        assert_eq!(dropped() - before, 1);
        assert_eq!(*sink.written.lock().unwrap(), line(1, 100));
    }

    #[test]
    fn flush_gives_up_after_its_timeout_when_stdout_stalls() {
        let sink = Gated::default();
        let queue = QueueWriter(Arc::new(LogQueue::start(1 << 20, sink.clone()).unwrap()));
        log(&queue, &line(0, 100));
        assert!(!queue.0.flush(Duration::from_millis(100)));
        sink.open();
        assert!(queue.0.flush(Duration::from_secs(10)));
    }
}
