//! State shared by all threads, and only what must be: the current config snapshot (swapped
//! whole on reload: config, upstream groups, route table), the shutdown flag, and the per-worker
//! metrics the admin side reads.
//! Workers notice a new snapshot by its generation number, a read-only atomic, and keep their
//! own handle to it, so the request path writes nothing shared.

use crate::config::HealthSettings;
use crate::config::ValidConfig;
use crate::limits::{ConnectionCounts, RateLimits};
use crate::metrics::WorkerMetrics;
use crate::route::RouteTable;
use crate::upstream::backend::Backend;
use crate::upstream::health::Checked;
use crate::upstream::{UpstreamGroup, Upstreams};
use arc_swap::ArcSwap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

/// One consistent view of the configuration, the upstream groups, the routes and the rate
/// limits it names.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<ValidConfig>,
    pub upstreams: Upstreams,
    pub routes: RouteTable,
    /// By index in `config.rate_limits`; their tables outlive a reload that keeps them.
    pub limits: RateLimits,
}

/// What a snapshot is built from besides its config.
pub struct Built {
    pub upstreams: Upstreams,
    pub routes: RouteTable,
    pub limits: RateLimits,
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
    /// Open connections per client address (`max_connections_per_ip`), made on first use, for
    /// as many addresses as the workers may hold connections at start.
    connection_counts: OnceLock<Arc<ConnectionCounts>>,
    max_connections: usize,
}

impl Shared {
    pub fn new(config: ValidConfig, config_path: PathBuf, workers: usize) -> Arc<Shared> {
        let Built {
            upstreams,
            routes,
            limits,
        } = build(&config, None, workers);
        let max_connections = config.limits.max_connections.saturating_mul(workers);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                generation: 1,
                config: Arc::new(config),
                upstreams,
                routes,
                limits,
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
            connection_counts: OnceLock::new(),
            max_connections,
        })
    }

    /// The per-address connection counts, shared by every worker.
    pub fn connection_counts(&self) -> &Arc<ConnectionCounts> {
        self.connection_counts
            .get_or_init(|| ConnectionCounts::new(self.max_connections))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Installs a new snapshot; workers switch to it on their next request.
    pub fn publish(&self, config: ValidConfig, built: Built) -> u64 {
        let generation = self.generation() + 1;
        self.snapshot.store(Arc::new(Snapshot {
            generation,
            config: Arc::new(config),
            upstreams: built.upstreams,
            routes: built.routes,
            limits: built.limits,
        }));
        self.generation.store(generation, Ordering::Release);
        generation
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The health thread checks every backend of the snapshot in force, each with its group's
/// settings.
impl Checked for Shared {
    fn generation(&self) -> u64 {
        Shared::generation(self)
    }

    fn targets(&self) -> Vec<(Arc<Backend>, HealthSettings)> {
        let snapshot = self.snapshot();
        snapshot
            .upstreams
            .backends()
            .map(|(group, b)| (b.clone(), group.settings.health.clone()))
            .collect()
    }
}

/// The upstream groups and route table for `config`. A backend whose (group, URL), address and
/// health path are unchanged since `previous` is kept (with its health, ejection state and
/// counters) and takes the new weight; route counters carry over by route name.
pub fn build(config: &ValidConfig, previous: Option<&Snapshot>, workers: usize) -> Built {
    let groups = config
        .groups
        .iter()
        .map(|group| {
            let before = previous.and_then(|p| p.upstreams.by_name(&group.name));
            let mut kept_ids = Vec::new();
            let backends = group
                .backends
                .iter()
                .map(|b| {
                    let kept = before.and_then(|prev| {
                        prev.backends.iter().find(|p| {
                            p.url == b.url
                                && p.health_check_path == b.health_check_path
                                && p.addr == b.addr
                                && !kept_ids.contains(&p.id)
                        })
                    });
                    match kept {
                        Some(p) => {
                            kept_ids.push(p.id);
                            p.set_weight(b.weight);
                            p.set_tls(b.tls.clone());
                            p.clone()
                        }
                        None => Arc::new(Backend::new(b, workers)),
                    }
                })
                .collect();
            UpstreamGroup {
                name: group.name.clone(),
                backends,
                settings: group.settings.clone(),
            }
        })
        .collect();
    Built {
        upstreams: Upstreams {
            groups,
            default: config.default_group,
        },
        routes: RouteTable::build(&config.routes, workers, previous.map(|p| &p.routes)),
        limits: RateLimits::build(&config.rate_limits, workers, previous.map(|p| &p.limits)),
    }
}
