//! State shared by all threads, and only what must be: the current config snapshot (swapped
//! whole on reload), the shutdown flag, and the per-worker metrics the admin side reads.
//! Workers notice a new snapshot by its generation number, a read-only atomic, and keep their
//! own handle to it, so the request path writes nothing shared.

use crate::config::HealthSettings;
use crate::config::ValidConfig;
use crate::metrics::WorkerMetrics;
use crate::upstream::backend::{Backend, BackendSet};
use crate::upstream::health::Checked;
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// One consistent view of the configuration and the backends it names.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<ValidConfig>,
    pub backends: BackendSet,
}

pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    generation: AtomicU64,
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Set once on SIGTERM/SIGINT: stop accepting, finish in-flight requests, close idle ones.
    pub draining: AtomicBool,
    pub started_at: Instant,
    pub started_unix: u64,
    pub config_path: PathBuf,
    /// Serialises reloads (SIGHUP and the admin API); never taken on the request path.
    pub reload_lock: Mutex<()>,
}

impl Shared {
    pub fn new(config: ValidConfig, config_path: PathBuf, workers: usize) -> Arc<Shared> {
        let backends = build_backends(&config, None, workers);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                generation: 1,
                config: Arc::new(config),
                backends,
            }),
            generation: AtomicU64::new(1),
            workers: (0..workers).map(|_| Arc::default()).collect(),
            draining: AtomicBool::new(false),
            started_at: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            config_path,
            reload_lock: Mutex::new(()),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Installs a new snapshot; workers switch to it on their next request.
    pub fn publish(&self, config: ValidConfig, backends: BackendSet) -> u64 {
        let generation = self.generation() + 1;
        self.snapshot.store(Arc::new(Snapshot {
            generation,
            config: Arc::new(config),
            backends,
        }));
        self.generation.store(generation, Ordering::Release);
        generation
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The health thread checks every backend of the snapshot in force, with the global settings.
impl Checked for Shared {
    fn generation(&self) -> u64 {
        Shared::generation(self)
    }

    fn targets(&self) -> Vec<(Arc<Backend>, HealthSettings)> {
        let snapshot = self.snapshot();
        let settings = &snapshot.config.health;
        snapshot
            .backends
            .iter()
            .map(|b| (b.clone(), settings.clone()))
            .collect()
    }
}

/// The backends for `config`. A backend whose URL and health path are unchanged since
/// `previous` is kept (with its health, ejection state and counters) and takes the new weight.
pub fn build_backends(
    config: &ValidConfig,
    previous: Option<&BackendSet>,
    workers: usize,
) -> BackendSet {
    config
        .backends
        .iter()
        .map(|b| {
            let kept = previous.and_then(|prev| {
                prev.iter().find(|p| {
                    p.url == b.url && p.health_check_path == b.health_check_path && p.addr == b.addr
                })
            });
            match kept {
                Some(p) => {
                    p.set_weight(b.weight);
                    p.set_tls(b.tls.clone());
                    p.clone()
                }
                None => Arc::new(Backend::new(b, workers)),
            }
        })
        .collect()
}
