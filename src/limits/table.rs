//! The state of one rate limit, shared by every worker: a fixed array of slots (a 64-bit key
//! hash and a 64-bit TAT, 16 bytes), in buckets of eight; a key lives in one of two buckets
//! chosen by a per-table secret, so clients cannot aim their keys at one bucket. A request for
//! a known key costs a scan of its bucket and one compare-and-swap of its TAT; no lock anywhere.
//! A new key takes an empty slot, else the slot of the two buckets whose TAT is the earliest:
//! a TAT in the past is a full bucket, the same as no state, so a flood of new keys (random
//! addresses, random header values) only ever displaces keys that are idle or the least
//! limited, and memory never grows past the array.
//!
//! Races only an insertion can lose: two workers adding the same new key at once may each give
//! it a slot (one of them goes stale), and a request of a key being displaced at that very
//! moment may be counted on its successor. Neither costs more than that one request.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const WAYS: usize = 8;

/// Eight keys, then their eight TATs: a key scan reads one cache line.
#[repr(C, align(64))]
#[derive(Default)]
struct Bucket {
    keys: [AtomicU64; WAYS],
    tats: [AtomicU64; WAYS],
}

pub struct Table {
    buckets: Box<[Bucket]>,
    mask: usize,
    seed: u64,
    /// Per slot, requests let through since the fleet sync last took them (store-backed
    /// limits only).
    pending: Option<Box<[AtomicU32]>>,
}

/// Bytes a key costs.
pub const BYTES_PER_SLOT: usize = 16;

impl Table {
    /// Room for at least `max_keys` keys (a power of two of slots); `counted` keeps the
    /// per-slot counts a fleet-wide limit exchanges.
    pub fn new(max_keys: usize, counted: bool) -> Table {
        let buckets = max_keys.div_ceil(WAYS).next_power_of_two().max(2);
        let slots = buckets * WAYS;
        Table {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            mask: buckets - 1,
            seed: RandomState::new().hash_one(0x5eed_u64),
            pending: counted.then(|| (0..slots).map(|_| AtomicU32::new(0)).collect()),
        }
    }

    pub fn slots(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// The two buckets `key` may live in.
    fn homes(&self, key: u64) -> [usize; 2] {
        let mut x = key ^ self.seed;
        // splitmix64's finalizer: every bit of the key moves both indexes.
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let first = x as usize & self.mask;
        let mut second = (x >> 32) as usize & self.mask;
        if second == first {
            second ^= 1;
        }
        [first, second]
    }

    fn tat(&self, slot: usize) -> &AtomicU64 {
        &self.buckets[slot / WAYS].tats[slot % WAYS]
    }

    fn key_at(&self, slot: usize) -> &AtomicU64 {
        &self.buckets[slot / WAYS].keys[slot % WAYS]
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: u64) -> Option<usize> {
        self.homes(key).into_iter().find_map(|b| {
            let keys = &self.buckets[b].keys;
            (0..WAYS)
                .find(|&i| keys[i].load(Ordering::Acquire) == key)
                .map(|i| b * WAYS + i)
        })
    }

    /// A slot for `key`, taken from an empty one or the one with the earliest TAT.
    fn insert(&self, key: u64) -> usize {
        loop {
            let mut victim = (usize::MAX, u64::MAX, 0);
            'scan: for b in self.homes(key) {
                let bucket = &self.buckets[b];
                for i in 0..WAYS {
                    let held = bucket.keys[i].load(Ordering::Acquire);
                    if held == 0 {
                        victim = (b * WAYS + i, 0, 0);
                        break 'scan;
                    }
                    let tat = bucket.tats[i].load(Ordering::Relaxed);
                    if tat < victim.1 {
                        victim = (b * WAYS + i, tat, held);
                    }
                }
            }
            let (slot, _, held) = victim;
            let claimed =
                self.key_at(slot)
                    .compare_exchange(held, key, Ordering::AcqRel, Ordering::Relaxed);
            if claimed.is_ok() {
                // The new key starts with no history (a TAT of 0 is a full bucket).
                self.tat(slot).store(0, Ordering::Release);
                return slot;
            }
            // Another worker took that slot first, perhaps for this very key.
            if let Some(slot) = self.find(key) {
                return slot;
            }
        }
    }

    /// Runs `decide` on `key`'s stored TAT (0 for a new key) and stores what it returns, by
    /// compare-and-swap, retried only when another worker changed it in between. `decide`
    /// gives the TAT to store (none: leave it) and a result. Returns the slot and the result.
    pub fn update<R>(
        &self,
        key: u64,
        mut decide: impl FnMut(u64) -> (Option<u64>, R),
    ) -> (usize, R) {
        let slot = self.find(key).unwrap_or_else(|| self.insert(key));
        let tat = self.tat(slot);
        let mut stored = tat.load(Ordering::Acquire);
        loop {
            let (next, result) = decide(stored);
            let Some(next) = next else {
                return (slot, result);
            };
            match tat.compare_exchange_weak(stored, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return (slot, result),
                Err(now) => stored = now,
            }
        }
    }

    /// Moves `key`'s TAT with `change`, if the key is still tracked.
    pub fn adjust(&self, key: u64, change: impl Fn(u64) -> u64) {
        if let Some(slot) = self.find(key) {
            self.adjust_slot(slot, key, change);
        }
    }

    /// Moves the TAT of `slot` with `change` while it still holds `key` (undoing a request
    /// another limit refused).
    pub fn adjust_slot(&self, slot: usize, key: u64, change: impl Fn(u64) -> u64) {
        let tat = self.tat(slot);
        let mut stored = tat.load(Ordering::Acquire);
        while self.key_at(slot).load(Ordering::Acquire) == key {
            match tat.compare_exchange_weak(
                stored,
                change(stored),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => stored = now,
            }
        }
    }

    /// Counts a request let through on `slot`, for the fleet sync.
    pub fn count(&self, slot: usize) {
        if let Some(pending) = &self.pending {
            pending[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the counts since the last call: (key, requests) of every slot that has some.
    pub fn take_counts(&self) -> Vec<(u64, u32)> {
        let Some(pending) = &self.pending else {
            return Vec::new();
        };
        pending
            .iter()
            .enumerate()
            .filter(|(_, n)| n.load(Ordering::Relaxed) != 0)
            .filter_map(|(slot, n)| {
                let n = n.swap(0, Ordering::Relaxed);
                let key = self.key_at(slot).load(Ordering::Acquire);
                (n != 0 && key != 0).then_some((key, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Admits while the TAT is not past `now` (one request per `interval`, no burst).
    fn admit(table: &Table, key: u64, now: u64, interval: u64) -> bool {
        table
            .update(key, |tat| {
                if tat <= now {
                    (Some(tat.max(now) + interval), true)
                } else {
                    (None, false)
                }
            })
            .1
    }

    #[test]
    fn keys_keep_their_own_state() {
        let table = Table::new(64, false);
        assert!(admit(&table, 7, 100, 10));
        assert!(!admit(&table, 7, 105, 10));
        assert!(admit(&table, 8, 105, 10), "another key");
        assert!(admit(&table, 7, 110, 10));
    }

    #[test]
    fn a_flood_of_new_keys_stays_in_the_table_and_spares_limited_keys() {
        let table = Table::new(1000, false);
        let slots = table.slots();
        assert_eq!(slots, 1024);
        // A key limited far into the future.
        assert!(admit(&table, 1, 0, u64::MAX / 4));
        for key in 2..200_000u64 {
            admit(&table, key, 1_000, 1);
        }
        assert_eq!(table.buckets.len() * WAYS, slots, "no growth");
        assert!(!admit(&table, 1, 2_000, 1), "the limited key was kept");
    }

    #[test]
    fn workers_at_once_lose_no_request() {
        // 4 threads x 10,000 requests on one key, each moving the TAT by 1: all counted.
        let table = Arc::new(Table::new(64, true));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let table = table.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let (slot, _) = table.update(42, |tat| (Some(tat + 1), ()));
                        table.count(slot);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let slot = table.find(42).unwrap();
        assert_eq!(table.tat(slot).load(Ordering::Relaxed), 40_000);
        assert_eq!(table.take_counts(), vec![(42, 40_000)]);
        assert!(table.take_counts().is_empty(), "taken");
        table.adjust(42, |t| t - 100);
        assert_eq!(table.tat(slot).load(Ordering::Relaxed), 39_900);
    }
}
