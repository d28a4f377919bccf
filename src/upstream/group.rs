//! A group of backends that requests are balanced over: choosing one (balancer, active health,
//! drain, the passive circuit and its single half-open trial) and feeding back how each request
//! went (passive health). Atomics only: every core sees an ejection at once.

use super::passive::{now_ms, Circuit, PassiveSettings};
use super::{Backend, Balancer};
use smallvec::SmallVec;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Chooses a backend not yet `tried` that is up, not drained and not ejected. A half-open
/// backend admits one trial request across all workers; losing that race means choosing again.
pub fn pick(
    balancer: &mut Balancer,
    backends: &[Arc<Backend>],
    passive: &PassiveSettings,
    tried: &[usize],
) -> Option<usize> {
    let now = now_ms();
    let mut lost_trial: SmallVec<[usize; 2]> = SmallVec::new();
    loop {
        let chosen = balancer.pick(backends, |i| {
            let b = &backends[i];
            b.accepts_traffic()
                && b.passive.admits(now, passive)
                && !tried.contains(&i)
                && !lost_trial.contains(&i)
        })?;
        let health = &backends[chosen].passive;
        if health.circuit(now) != Circuit::HalfOpen || health.claim_trial(now) {
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
    } else if backends[index].passive.record_success(now_ms()) {
        tracing::info!(backend = %backends[index].url, worker, "backend readmitted after a successful trial request");
    }
}
