//! Structured logs through `tracing`: JSON or text on stdout, level from config (`RUST_LOG` wins).
//! The writer is non-blocking and lossy: if stdout stalls, lines are dropped, workers never wait.
//! The level can be changed by a config reload.

use crate::config::{LogFormat, LoggingConfig};
use std::sync::OnceLock;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Lines buffered before the writer starts dropping them.
const LOG_BUFFER_LINES: usize = 64 * 1024;

static LEVEL_HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn env_overrides() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Installs the global subscriber; keep the guard alive until exit so buffered lines are flushed.
pub fn init(cfg: &LoggingConfig) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = LEVEL_HANDLE.set(handle);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .finish(std::io::stdout());
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
    guard
}

/// Applies a reloaded `logging.level` (ignored while `RUST_LOG` is set, which wins).
pub fn set_level(level: &str) {
    if env_overrides() {
        return;
    }
    if let (Some(handle), Ok(filter)) = (LEVEL_HANDLE.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}
