//! `hash`: consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent
//! Hashing with Bounded Loads", 2017; HAProxy's `hash-balance-factor`). A Ketama ring, not
//! Maglev: on a ring, adding or removing one of N backends moves only the keys of the points it
//! adds or takes away (about 1/N of them, and only to or from that backend), a backend that goes
//! down hands exactly its own keys to the next points, and the bounded-load walk is the paper's
//! own algorithm (Maglev's table is O(1) to read but reshuffles some keys among the backends
//! that stayed, and has no natural "next" backend to spill to). Lookups are a binary search over
//! about 160 points per backend.
//!
//! Bounded loads: a backend takes the key only while its requests in flight (over all workers)
//! stay under `factor` x the average (for its weight) counting this one; otherwise the walk goes
//! on clockwise, so one hot key cannot melt one backend. The ring is built per worker from the
//! backends' URLs and weights, and rebuilt when a weight changes at runtime.

use super::round_robin::SmoothWeighted;
use crate::upstream::backend::weights_epoch;
use crate::upstream::Backend;

/// Ring points per backend of average weight (nginx's ketama uses 160).
const POINTS_PER_BACKEND: u64 = 160;

#[derive(Debug)]
pub struct ConsistentHash {
    /// (point, backend index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// The weights epoch and backend count the ring was built for.
    built_for: Option<(u64, usize)>,
    factor: f64,
    /// Stamps of the backends the current walk looked at (no clearing per pick).
    seen: Vec<u32>,
    stamp: u32,
    /// For requests without the key (no such field or cookie): spread by weight.
    fallback: SmoothWeighted,
}

impl ConsistentHash {
    pub fn new(factor: f64) -> Self {
        ConsistentHash {
            ring: Vec::new(),
            built_for: None,
            factor,
            seen: Vec::new(),
            stamp: 0,
            fallback: SmoothWeighted::default(),
        }
    }

    pub fn pick<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        key: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(backends, eligible);
        };
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let epoch = weights_epoch();
        if self.built_for != Some((epoch, n)) {
            self.build(backends);
            self.built_for = Some((epoch, n));
        }
        // Load and weight of the eligible backends, this request included.
        let (mut load, mut weight) = (1i64, 0i64);
        for i in (0..n).filter(|&i| eligible(i)) {
            let b = backends[i].as_ref();
            load += b.in_flight().max(0);
            weight += i64::from(b.weight());
        }
        if weight == 0 {
            return None;
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.stamp = 1;
        }
        let start = self.ring.partition_point(|&(point, _)| point < key);
        let (mut looked_at, mut first_eligible) = (0, None);
        for k in 0..self.ring.len() {
            let i = self.ring[(start + k) % self.ring.len()].1 as usize;
            if self.seen[i] == self.stamp {
                continue;
            }
            self.seen[i] = self.stamp;
            looked_at += 1;
            if eligible(i) {
                let b = backends[i].as_ref();
                // ceil(factor x average for this backend's weight).
                let share = self.factor * load as f64 * f64::from(b.weight()) / weight as f64;
                if (b.in_flight().max(0) as f64) < share.ceil() {
                    return Some(i);
                }
                first_eligible.get_or_insert(i);
            }
            if looked_at == n {
                break;
            }
        }
        first_eligible
    }

    /// Points for each backend, in proportion to its weight, placed by its URL (so a backend's
    /// points do not move when others come or go).
    fn build<B: AsRef<Backend>>(&mut self, backends: &[B]) {
        let n = backends.len() as u64;
        let total: u64 = backends
            .iter()
            .map(|b| u64::from(b.as_ref().weight()))
            .sum::<u64>()
            .max(1);
        self.ring.clear();
        for (i, b) in backends.iter().enumerate() {
            let b = b.as_ref();
            let points = (POINTS_PER_BACKEND * n * u64::from(b.weight()) / total).max(1);
            for p in 0..points {
                let mut h = Fnv::default();
                h.write(b.url.as_bytes());
                h.write(b"#");
                h.write(&p.to_le_bytes());
                self.ring.push((h.finish(), i as u32));
            }
        }
        self.ring.sort_unstable();
        self.seen = vec![0; backends.len()];
        self.stamp = 0;
    }
}

/// The hash of a key (`hash_key` of a request) on the ring: FNV-1a with a final avalanche, the
/// same in every worker and every run (a keyed hash would send a key elsewhere after a restart).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.finish()
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// FNV's low bits avalanche poorly: murmur3's finaliser spreads them over the ring.
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}
