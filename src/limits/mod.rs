//! Rate limits and connection caps, exact across workers with no lock on the request path: each
//! limit is a fixed table of GCRA states shared by every worker (`table`, `gcra`), keyed by a
//! hash of the request's bytes (`key`); open connections per client address are one shared
//! array of counters (`conn_cap`); a limit with a store is kept fleet-wide by a thread of its
//! own that exchanges counts with Redis (`fleet`), never by a round trip on the request path.

mod conn_cap;
pub mod fleet;
mod gcra;
pub mod key;
mod table;

pub use conn_cap::{ConnectionCounts, CountedConnection};
pub use table::BYTES_PER_SLOT;

use crate::config::{LimitMode, RateLimitRule};
use crate::metrics::{bump, read};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use table::Table;

/// The origin of every TAT: nanoseconds since the process's first limit was built.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` in the limits' clock.
fn nanos(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_nanos() as u64
}

/// A counter one worker writes (its own cache line).
#[repr(align(64))]
#[derive(Default)]
struct WorkerCount(AtomicU64);

/// What a limit keeps across reloads: its table, its counters, and how much of it this
/// instance enforces while its store is unreachable.
pub struct LimitState {
    table: Table,
    refused: Box<[WorkerCount]>,
    delayed: Box<[WorkerCount]>,
    /// 1: the limit as configured; n > 1: 1/n of it (this instance's share of a fleet of n,
    /// while the store cannot be reached); 0: everything passes (`on_store_error = "allow"`).
    share: AtomicU32,
    store_up: AtomicBool,
}

/// One rate limit of a configuration.
pub struct Limiter {
    pub rule: RateLimitRule,
    state: Arc<LimitState>,
}

/// What a limit says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Admitted, to go after this wait (its place at the rate is taken).
    Delay(Duration),
    /// Over the limit; one request of this key would fit after `retry_after`.
    Refuse {
        retry_after: Duration,
    },
}

/// A request a limit let through, to be given back if another limit refuses it.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    slot: usize,
    key: u64,
    interval: u64,
}

impl Limiter {
    pub fn name(&self) -> &str {
        &self.rule.name
    }

    /// Decides a request of `key` arriving `at`: one compare-and-swap on the key's state.
    pub fn check(&self, key: u64, at: Instant) -> (Verdict, Option<Pass>) {
        let mut interval = self.rule.interval_ns;
        if self.rule.store.is_some() {
            match self.state.share.load(Ordering::Relaxed) {
                0 => return (Verdict::Admit, None),
                1 => {}
                n => interval = interval.saturating_mul(u64::from(n)),
            }
        }
        let max_delay = match self.rule.mode {
            LimitMode::Delay(d) => d.as_nanos() as u64,
            LimitMode::Reject => 0,
        };
        let params = gcra::Params::new(interval, self.rule.burst, max_delay);
        let now = nanos(at);
        let table = &self.state.table;
        let (slot, decision) = table.update(key, |stored| {
            let decision = gcra::decide(stored, now, &params);
            match decision {
                gcra::Decision::Admit { tat } | gcra::Decision::Delay { tat, .. } => {
                    (Some(tat), decision)
                }
                gcra::Decision::Refuse { .. } => (None, decision),
            }
        });
        let pass = Pass {
            slot,
            key,
            interval,
        };
        match decision {
            gcra::Decision::Admit { .. } => {
                table.count(slot);
                (Verdict::Admit, Some(pass))
            }
            gcra::Decision::Delay { wait, .. } => {
                table.count(slot);
                (Verdict::Delay(Duration::from_nanos(wait)), Some(pass))
            }
            gcra::Decision::Refuse { wait } => (
                Verdict::Refuse {
                    retry_after: Duration::from_nanos(wait),
                },
                None,
            ),
        }
    }

    /// Gives back a request this limit let through (another limit refused it).
    pub fn refund(&self, pass: Pass) {
        self.state
            .table
            .adjust_slot(pass.slot, pass.key, |tat| tat.saturating_sub(pass.interval));
    }

    pub fn note_refused(&self, worker: usize) {
        if let Some(c) = self.state.refused.get(worker) {
            bump(&c.0);
        }
    }

    pub fn note_delayed(&self, worker: usize) {
        if let Some(c) = self.state.delayed.get(worker) {
            bump(&c.0);
        }
    }

    pub fn refused_total(&self) -> u64 {
        self.state.refused.iter().map(|c| read(&c.0)).sum()
    }

    pub fn delayed_total(&self) -> u64 {
        self.state.delayed.iter().map(|c| read(&c.0)).sum()
    }

    /// For a limit with a store: whether the last exchange with it worked.
    pub fn store_up(&self) -> Option<bool> {
        self.rule
            .store
            .as_ref()
            .map(|_| self.state.store_up.load(Ordering::Relaxed))
    }

    /// Memory its table holds.
    pub fn table_bytes(&self) -> usize {
        self.state.table.slots() * BYTES_PER_SLOT
    }
}

/// The rate limits of one configuration, by their index in `ValidConfig::rate_limits`.
#[derive(Default)]
pub struct RateLimits {
    limiters: Vec<Arc<Limiter>>,
}

impl RateLimits {
    /// The limits of `rules`. A limit of `previous` with the same name, key, size and store
    /// keeps its state (so a reload neither forgets who is limited nor hands out fresh bursts)
    /// and takes the new rate, burst and mode.
    pub fn build(rules: &[RateLimitRule], workers: usize, previous: Option<&RateLimits>) -> Self {
        LazyLock::force(&EPOCH);
        let limiters = rules
            .iter()
            .map(|rule| {
                let kept = previous
                    .into_iter()
                    .flat_map(|p| &p.limiters)
                    .find(|l| {
                        let old = &l.rule;
                        old.name == rule.name
                            && old.key == rule.key
                            && old.max_keys == rule.max_keys
                            && old.store.as_ref().map(|s| &s.url)
                                == rule.store.as_ref().map(|s| &s.url)
                    })
                    .map(|l| l.state.clone());
                let state = kept.unwrap_or_else(|| {
                    Arc::new(LimitState {
                        table: Table::new(rule.max_keys, rule.store.is_some()),
                        refused: (0..workers).map(|_| WorkerCount::default()).collect(),
                        delayed: (0..workers).map(|_| WorkerCount::default()).collect(),
                        share: AtomicU32::new(1),
                        store_up: AtomicBool::new(true),
                    })
                });
                Arc::new(Limiter {
                    rule: rule.clone(),
                    state,
                })
            })
            .collect();
        RateLimits { limiters }
    }

    pub fn get(&self, index: usize) -> &Limiter {
        &self.limiters[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Limiter> {
        self.limiters.iter().map(|l| &**l)
    }

    /// The limits kept fleet-wide (with a store).
    pub fn with_store(&self) -> Vec<Arc<Limiter>> {
        self.limiters
            .iter()
            .filter(|l| l.rule.store.is_some())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitKey;

    fn rule(name: &str, per_second: u64, burst: u64, mode: LimitMode) -> RateLimitRule {
        RateLimitRule {
            name: name.into(),
            key: LimitKey::ClientIp,
            interval_ns: 1_000_000_000 / per_second,
            burst,
            mode,
            max_keys: 100,
            store: None,
            quota: (per_second, 1),
        }
    }

    #[test]
    fn limiters_decide_refund_and_keep_state_over_a_reload() {
        let limits = RateLimits::build(&[rule("a", 10, 2, LimitMode::Reject)], 2, None);
        let a = limits.get(0);
        let t = Instant::now();
        assert_eq!(a.check(5, t).0, Verdict::Admit);
        let (second, pass) = a.check(5, t);
        assert_eq!(second, Verdict::Admit);
        assert!(
            matches!(a.check(5, t).0, Verdict::Refuse { retry_after } if retry_after <= Duration::from_millis(100))
        );
        a.refund(pass.unwrap());
        assert_eq!(a.check(5, t).0, Verdict::Admit, "given back");
        a.note_refused(1);
        // A reload with a new rate keeps the key's state; another key size starts afresh.
        let again = RateLimits::build(&[rule("a", 1000, 2, LimitMode::Reject)], 2, Some(&limits));
        assert!(matches!(again.get(0).check(5, t).0, Verdict::Refuse { .. }));
        assert_eq!(again.get(0).refused_total(), 1);
        let mut bigger = rule("a", 10, 2, LimitMode::Reject);
        bigger.max_keys = 1000;
        let fresh = RateLimits::build(&[bigger], 2, Some(&again));
        assert_eq!(fresh.get(0).check(5, t).0, Verdict::Admit);
        let delayed = RateLimits::build(
            &[rule(
                "d",
                10,
                1,
                LimitMode::Delay(Duration::from_millis(250)),
            )],
            1,
            None,
        );
        let d = delayed.get(0);
        assert_eq!(d.check(1, t).0, Verdict::Admit);
        assert_eq!(d.check(1, t).0, Verdict::Delay(Duration::from_millis(100)));
        assert_eq!(d.check(1, t).0, Verdict::Delay(Duration::from_millis(200)));
        assert!(matches!(d.check(1, t).0, Verdict::Refuse { .. }));
    }
}
