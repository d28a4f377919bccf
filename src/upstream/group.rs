//! Upstream groups: each a set of backends with its own settings (balancing, health checks,
//! passive ejection, pool, retries). Choosing a backend of a group (balancer, active health,
//! drain, the passive circuit and its single half-open trial) and feeding back how each request
//! went (passive health). Atomics only: every core sees an ejection at once.

use super::backend::BackendSet;
use super::passive::{now_ms, Circuit, PassiveSettings};
use super::{Backend, Balancer};
use crate::config::GroupSettings;
use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One upstream group of a configuration. A backend URL listed in two groups is two backends,
/// each with its own state.
pub struct UpstreamGroup {
    pub name: String,
    pub backends: BackendSet,
    pub settings: GroupSettings,
}

/// The upstream groups of a configuration, in `ValidConfig::groups` order.
pub struct Upstreams {
    pub groups: Vec<UpstreamGroup>,
    /// Index of the group `default` (`[[backends]]`), if there is one.
    pub default: Option<usize>,
}

impl Upstreams {
    pub fn by_name(&self, name: &str) -> Option<&UpstreamGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn default_group(&self) -> Option<&UpstreamGroup> {
        self.default.map(|i| &self.groups[i])
    }

    /// Every backend of every group, with its group.
    pub fn backends(&self) -> impl Iterator<Item = (&UpstreamGroup, &Arc<Backend>)> {
        self.groups
            .iter()
            .flat_map(|g| g.backends.iter().map(move |b| (g, b)))
    }
}

/// Chooses a backend not yet `tried` that is up, not drained and not ejected (`key`: the
/// request's hash key, for `strategy = "hash"`). A half-open backend admits one trial request
/// across all workers; losing that race means choosing again.
pub fn pick(
    balancer: &mut Balancer,
    backends: &[Arc<Backend>],
    passive: &PassiveSettings,
    tried: &[usize],
    key: Option<u64>,
) -> Option<usize> {
    // The clock is read only when some backend was ejected: most requests see none.
    let now = std::cell::OnceCell::new();
    let now = || *now.get_or_init(now_ms);
    let mut lost_trial: SmallVec<[usize; 2]> = SmallVec::new();
    loop {
        let chosen = balancer.pick(backends, key, |i| {
            let b = &backends[i];
            b.accepts_traffic()
                && (b.passive.not_ejected() || b.passive.admits(now(), passive))
                && !tried.contains(&i)
                && !lost_trial.contains(&i)
        })?;
        let health = &backends[chosen].passive;
        if health.not_ejected()
            || health.circuit(now()) != Circuit::HalfOpen
            || health.claim_trial(now())
        {
            return Some(chosen);
        }
        lost_trial.push(chosen);
    }
}

/// Feeds a connect error, reset, timeout or broken response into passive health. The last
/// available backend is never ejected: with nothing else to send to, ejecting it would turn
/// errors into a black hole of 503s while it may still answer some requests.
pub fn report_failure(
    backends: &[Arc<Backend>],
    index: usize,
    settings: &PassiveSettings,
    worker: usize,
) {
    let now = now_ms();
    let b = &backends[index];
    if !b.passive.record_failure(now, settings) {
        return;
    }
    let others_available = backends
        .iter()
        .enumerate()
        .any(|(i, o)| i != index && o.is_available(now));
    if others_available {
        b.passive.eject(now, settings);
        b.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(backend = %b.url, cool_down_s = settings.fail_timeout.as_secs_f64(), worker, "backend ejected after repeated failures");
    } else {
        b.passive.release_trial();
        tracing::warn!(backend = %b.url, worker, "backend failing but it is the last one available; not ejected");
    }
}

/// Feeds a response's status into passive health: a 5xx is a failure if the settings say so,
/// anything else a success (which closes a half-open circuit).
pub fn report_response(
    backends: &[Arc<Backend>],
    index: usize,
    settings: &PassiveSettings,
    status: u16,
    worker: usize,
) {
    if status >= 500 && settings.eject_on_5xx {
        report_failure(backends, index, settings, worker);
    } else if !backends[index].passive.not_ejected()
        && backends[index].passive.record_success(now_ms())
    {
        tracing::info!(backend = %backends[index].url, worker, "backend readmitted after a successful trial request");
    }
}
