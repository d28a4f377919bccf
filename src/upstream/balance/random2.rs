//! `random2`: the power of two random choices (Envoy's default least-request): draw two
//! backends at random in proportion to their weights and send to the one with fewer requests
//! in flight for its weight. Nearly as good as `least_conn` under uneven request times, without
//! reading every backend's load, and without the herd a shared "least loaded" choice makes when
//! many workers pick at once.

use super::least_conn::lighter;
use crate::upstream::Backend;

#[derive(Debug)]
pub struct Random2 {
    /// xorshift64* state; never 0.
    state: u64,
}

impl Random2 {
    pub fn new(seed: u64) -> Self {
        Random2 { state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A backend drawn among the eligible ones (but `except`) with probability weight / total,
    /// `total` being their weights' sum.
    fn draw<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        eligible: &impl Fn(usize) -> bool,
        except: Option<usize>,
        total: u64,
    ) -> Option<usize> {
        if total == 0 {
            return None;
        }
        let mut at = self.next() % total;
        for i in (0..backends.len()).filter(|&i| eligible(i) && Some(i) != except) {
            let w = u64::from(backends[i].as_ref().weight());
            if at < w {
                return Some(i);
            }
            at -= w;
        }
        None
    }

    pub fn pick<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let total: u64 = (0..backends.len())
            .filter(|&i| eligible(i))
            .map(|i| u64::from(backends[i].as_ref().weight()))
            .sum();
        let first = self.draw(backends, &eligible, None, total)?;
        let rest = total - u64::from(backends[first].as_ref().weight());
        let Some(second) = self.draw(backends, &eligible, Some(first), rest) else {
            return Some(first);
        };
        let load = |i: usize| {
            let b = backends[i].as_ref();
            (b.in_flight().max(0), i64::from(b.weight()))
        };
        Some(if lighter(load(second), load(first)) {
            second
        } else {
            first
        })
    }
}
