//! Passive health (a circuit breaker per backend) fed by real traffic on every worker: after
//! `max_fails` failures within `fail_timeout` the backend is ejected for `fail_timeout`, then
//! half-open: one trial request (claimed by whichever worker gets there first) decides.
//! Atomics only, so every core sees an ejection at once without a lock.

pub use crate::config::PassiveSettings;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process started; the time base of the shared health atomics.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 can mean "never" in the atomics.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Circuit {
    Closed,
    Open,
    /// Cool-down over: the next request is a trial.
    HalfOpen,
}

#[derive(Debug, Default)]
pub struct PassiveHealth {
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    /// 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// When the current half-open trial was claimed; 0 = none.
    trial_since_ms: AtomicU64,
}

impl PassiveHealth {
    /// Not ejected (nor half-open): its circuit is closed whatever the time, which callers use
    /// to read no clock.
    pub fn not_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) == 0
    }

    pub fn circuit(&self, now: u64) -> Circuit {
        match self.ejected_until_ms.load(Ordering::Relaxed) {
            0 => Circuit::Closed,
            until if now < until => Circuit::Open,
            _ => Circuit::HalfOpen,
        }
    }

    /// Whether a new request may go to this backend now (a half-open backend whose trial is
    /// taken may not, unless that trial was abandoned for longer than a cool-down).
    pub fn admits(&self, now: u64, settings: &PassiveSettings) -> bool {
        match self.circuit(now) {
            Circuit::Closed => true,
            Circuit::Open => false,
            Circuit::HalfOpen => {
                let since = self.trial_since_ms.load(Ordering::Relaxed);
                since == 0 || now.saturating_sub(since) > settings.fail_timeout.as_millis() as u64
            }
        }
    }

    /// Claims the half-open trial; false if another request got it first.
    pub fn claim_trial(&self, now: u64) -> bool {
        let since = self.trial_since_ms.load(Ordering::Relaxed);
        self.trial_since_ms
            .compare_exchange(since, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Records a failure; returns true when it should eject the backend now.
    pub fn record_failure(&self, now: u64, settings: &PassiveSettings) -> bool {
        if !settings.enabled {
            return false;
        }
        if self.circuit(now) == Circuit::HalfOpen {
            // The trial failed: straight back to open.
            return true;
        }
        let window = settings.fail_timeout.as_millis() as u64;
        let start = self.window_start_ms.load(Ordering::Relaxed);
        if start == 0 || now.saturating_sub(start) > window {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
        }
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        fails >= settings.max_fails && self.circuit(now) == Circuit::Closed
    }

    pub fn eject(&self, now: u64, settings: &PassiveSettings) {
        self.ejected_until_ms.store(
            now + settings.fail_timeout.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.trial_since_ms.store(0, Ordering::Relaxed);
        self.fails.store(0, Ordering::Relaxed);
        self.window_start_ms.store(0, Ordering::Relaxed);
    }

    /// Gives up a claimed trial without a verdict, so another request may take it.
    pub fn release_trial(&self) {
        self.trial_since_ms.store(0, Ordering::Relaxed);
    }

    /// A success closes a half-open circuit. Returns true if it did.
    pub fn record_success(&self, now: u64) -> bool {
        if self.circuit(now) == Circuit::HalfOpen {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
            self.trial_since_ms.store(0, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> PassiveSettings {
        PassiveSettings {
            enabled: true,
            max_fails: 3,
            fail_timeout: Duration::from_millis(1000),
            eject_on_5xx: false,
        }
    }

    #[test]
    fn ejects_after_max_fails_within_window() {
        let p = PassiveHealth::default();
        let s = settings();
        assert!(!p.record_failure(10, &s));
        assert!(!p.record_failure(20, &s));
        assert!(p.record_failure(30, &s));
        p.eject(30, &s);
        assert_eq!(p.circuit(500), Circuit::Open);
        assert!(!p.admits(500, &s));
    }

    #[test]
    fn failures_outside_window_do_not_add_up() {
        let p = PassiveHealth::default();
        let s = settings();
        assert!(!p.record_failure(10, &s));
        assert!(!p.record_failure(20, &s));
        assert!(!p.record_failure(2000, &s));
        assert!(!p.record_failure(2010, &s));
        assert!(p.record_failure(2020, &s));
    }

    #[test]
    fn half_open_admits_one_trial_which_decides() {
        let p = PassiveHealth::default();
        let s = settings();
        p.eject(0, &s);
        assert_eq!(p.circuit(1001), Circuit::HalfOpen);
        assert!(p.admits(1001, &s));
        assert!(p.claim_trial(1001));
        assert!(!p.admits(1002, &s), "second request waits for the trial");
        // Trial fails: open again for a full cool-down.
        assert!(p.record_failure(1003, &s));
        p.eject(1003, &s);
        assert_eq!(p.circuit(1500), Circuit::Open);
        // Next trial succeeds: closed.
        assert!(p.claim_trial(2004));
        assert!(p.record_success(2005));
        assert_eq!(p.circuit(2006), Circuit::Closed);
    }

    #[test]
    fn abandoned_trial_is_released_after_a_cool_down() {
        let p = PassiveHealth::default();
        let s = settings();
        p.eject(0, &s);
        assert!(p.claim_trial(1001));
        assert!(!p.admits(1500, &s));
        assert!(p.admits(2002, &s));
    }

    #[test]
    fn disabled_never_ejects() {
        let p = PassiveHealth::default();
        let s = PassiveSettings {
            enabled: false,
            ..settings()
        };
        assert!((0..10).all(|t| !p.record_failure(t, &s)));
    }
}
