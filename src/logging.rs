//! Structured logs through `tracing`: JSON or text on stdout, level from config (`RUST_LOG` wins).
//! The writer is non-blocking and lossy: if stdout stalls, lines are dropped, workers never wait.

use crate::config::{LogFormat, LoggingConfig};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines buffered before the writer starts dropping them.
const LOG_BUFFER_LINES: usize = 64 * 1024;

/// Installs the global subscriber; keep the guard alive until exit so buffered lines are flushed.
pub fn init(cfg: &LoggingConfig) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_thread_names(true);
    match cfg.format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}
