//! GCRA, the generic cell rate algorithm (ATM's policer; the token bucket in one number): a key's
//! whole state is its theoretical arrival time (TAT), the moment its bucket would be full again.
//! A request at `now` fits while the TAT is at most `tolerance` ahead of `now`, and moves it
//! one emission interval on. One 64-bit word per key, so one compare-and-swap decides a request.

/// A limit in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Between two requests at the steady rate.
    pub interval: u64,
    /// How far ahead the TAT may be and a request still pass at once: `(burst - 1) * interval`,
    /// so that `burst` requests pass at once after idle.
    pub tolerance: u64,
    /// How long a request may be held back to fit (`mode = "delay"`); 0 refuses at once.
    pub max_delay: u64,
}

impl Params {
    pub fn new(interval: u64, burst: u64, max_delay: u64) -> Params {
        Params {
            interval,
            tolerance: interval.saturating_mul(burst.saturating_sub(1)),
            max_delay,
        }
    }
}

/// What becomes of a request, and the TAT to store when it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Admit {
        tat: u64,
    },
    /// Goes after `wait`: its place at the rate is taken now (nginx's `delay`).
    Delay {
        tat: u64,
        wait: u64,
    },
    /// Does not fit within `max_delay`; one would fit after `wait`.
    Refuse {
        wait: u64,
    },
}

pub fn decide(stored: u64, now: u64, p: &Params) -> Decision {
    let tat = stored.max(now);
    let ahead = tat - now;
    let next = tat.saturating_add(p.interval);
    if ahead <= p.tolerance {
        return Decision::Admit { tat: next };
    }
    let wait = ahead - p.tolerance;
    if wait <= p.max_delay {
        Decision::Delay { tat: next, wait }
    } else {
        Decision::Refuse { wait }
    }
}

/// The TAT after `requests` more were let through elsewhere (the fleet's share of a key).
pub fn charge(stored: u64, now: u64, requests: u64, interval: u64) -> u64 {
    stored
        .max(now)
        .saturating_add(requests.saturating_mul(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs requests at the given times (ms) and returns which passed (delayed ones too).
    fn run(p: &Params, times: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|&t| match decide(tat, t * MS, p) {
                Decision::Admit { tat: next } | Decision::Delay { tat: next, .. } => {
                    tat = next;
                    true
                }
                Decision::Refuse { .. } => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_passes_at_once_then_the_rate() {
        // 10 per second, burst 3.
        let p = Params::new(100 * MS, 3, 0);
        let passed = run(&p, &[1000, 1000, 1000, 1000, 1050, 1100, 1150, 1200]);
        assert_eq!(
            passed,
            [true, true, true, false, false, true, false, true],
            "three at once, then one per 100 ms"
        );
    }

    #[test]
    fn the_rate_over_a_long_run_is_exact() {
        // 50 per second, burst 5, offered every ms for 10 s: 5 + 500 pass (one per 20 ms).
        let p = Params::new(20 * MS, 5, 0);
        let times: Vec<u64> = (0..10_000).map(|t| t + 1).collect();
        let passed = run(&p, &times).iter().filter(|&&x| x).count();
        assert!((504..=506).contains(&passed), "{passed}");
    }

    #[test]
    fn refusals_say_when_one_would_fit_and_delays_take_their_place() {
        let p = Params::new(100 * MS, 1, 0);
        assert_eq!(decide(0, 5 * MS, &p), Decision::Admit { tat: 105 * MS });
        assert_eq!(
            decide(105 * MS, 30 * MS, &p),
            Decision::Refuse { wait: 75 * MS }
        );
        let delayed = Params::new(100 * MS, 1, 250 * MS);
        assert_eq!(
            decide(105 * MS, 30 * MS, &delayed),
            Decision::Delay {
                tat: 205 * MS,
                wait: 75 * MS
            }
        );
        // One more queues behind it; the next would wait past 250 ms.
        assert_eq!(
            decide(205 * MS, 30 * MS, &delayed),
            Decision::Delay {
                tat: 305 * MS,
                wait: 175 * MS
            }
        );
        assert_eq!(
            decide(305 * MS, 30 * MS, &delayed),
            Decision::Refuse { wait: 275 * MS }
        );
        assert_eq!(charge(0, 10, 3, 5), 25);
        assert_eq!(charge(100, 10, 2, 5), 110);
    }
}
