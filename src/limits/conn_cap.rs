//! Open connections per client address over all workers (`max_connections_per_ip`), exact:
//! one shared array of 64-bit words, each a 40-bit fingerprint of an address and a 24-bit count,
//! so a count and the address it belongs to change together in one compare-and-swap. A word
//! whose count is 0 is free for any address. Capacity is fixed at start (twice the connections
//! all workers may hold): addresses with open connections never outnumber the connections.

use super::key;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const WAYS: usize = 8;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

pub struct ConnectionCounts {
    words: Box<[AtomicU64]>,
    /// Buckets of `WAYS` words, less one.
    mask: usize,
}

/// Why a connection was not counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address has its `max` connections open already.
    OverLimit,
    /// No room to count one more address (never at the sizes chosen: the array holds twice
    /// the connections the workers may have).
    Full,
}

/// One connection counted for its address; uncounted when dropped.
pub struct CountedConnection {
    counts: Arc<ConnectionCounts>,
    word: u32,
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        // The count is at least this connection's 1: the subtraction stays in the count bits.
        self.counts.words[self.word as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCounts {
    /// Room for `connections` addresses at least (twice, rounded up to a power of two).
    pub fn new(connections: usize) -> Arc<ConnectionCounts> {
        let words = (connections.saturating_mul(2))
            .next_power_of_two()
            .max(WAYS * 2);
        Arc::new(ConnectionCounts {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: words / WAYS - 1,
        })
    }

    /// Counts a connection from `ip` if it has fewer than `max` open.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, max: u32) -> Result<CountedConnection, Refused> {
        let mut octets = [0u8; 16];
        let h = key::of(&[key::ip_octets(ip, &mut octets)]);
        // 40 bits of the hash, never 0 (an empty word).
        let fingerprint = (h >> COUNT_BITS) | 1;
        let first = (h as usize) & self.mask;
        let homes = [first, first ^ 1];
        loop {
            if let Some(word) = self.first_with(&homes, fingerprint) {
                let slot = &self.words[word];
                let held = slot.load(Ordering::Acquire);
                if held >> COUNT_BITS != fingerprint {
                    continue; // taken by another address meanwhile
                }
                if held & COUNT_MASK >= u64::from(max).min(COUNT_MASK) {
                    return Err(Refused::OverLimit);
                }
                if slot
                    .compare_exchange(held, held + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(self.counted(word));
                }
                continue;
            }
            let free = homes.iter().find_map(|&b| {
                (b * WAYS..(b + 1) * WAYS).find_map(|w| {
                    let held = self.words[w].load(Ordering::Acquire);
                    (held & COUNT_MASK == 0).then_some((w, held))
                })
            });
            let Some((word, held)) = free else {
                return Err(Refused::Full);
            };
            let mine = (fingerprint << COUNT_BITS) | 1;
            if self.words[word]
                .compare_exchange(held, mine, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Another worker may have given this address a word at the same moment: the first
            // word in bucket order is the address's, so one of the two gives its count back.
            match self.first_with(&homes, fingerprint) {
                Some(first) if first != word => {
                    self.words[word].fetch_sub(1, Ordering::AcqRel);
                }
                _ => return Ok(self.counted(word)),
            }
        }
    }

    fn counted(self: &Arc<Self>, word: usize) -> CountedConnection {
        CountedConnection {
            counts: self.clone(),
            word: word as u32,
        }
    }

    /// The first word of the address's two buckets that holds its fingerprint.
    fn first_with(&self, homes: &[usize; 2], fingerprint: u64) -> Option<usize> {
        homes.iter().find_map(|&b| {
            (b * WAYS..(b + 1) * WAYS)
                .find(|&w| self.words[w].load(Ordering::Acquire) >> COUNT_BITS == fingerprint)
        })
    }

    /// Connections counted for `ip` now.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> u64 {
        let mut octets = [0u8; 16];
        let h = key::of(&[key::ip_octets(ip, &mut octets)]);
        let fingerprint = (h >> COUNT_BITS) | 1;
        let first = (h as usize) & self.mask;
        self.first_with(&[first, first ^ 1], fingerprint)
            .map_or(0, |w| self.words[w].load(Ordering::Acquire) & COUNT_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_up_to_the_cap_and_back() {
        let counts = ConnectionCounts::new(64);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| counts.acquire(a, 3).unwrap()).collect();
        assert_eq!(counts.acquire(a, 3).err(), Some(Refused::OverLimit));
        let other = counts.acquire(b, 3).unwrap();
        assert_eq!(counts.open(a), 3);
        drop(held);
        assert_eq!(counts.open(a), 0);
        assert!(counts.acquire(a, 3).is_ok());
        drop(other);
        assert_eq!(counts.open(b), 0);
    }

    #[test]
    fn threads_at_once_never_pass_the_cap() {
        let counts = ConnectionCounts::new(1024);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    let mut most = 0;
                    for _ in 0..20_000 {
                        let held: Vec<_> =
                            (0..3).filter_map(|_| counts.acquire(ip, 5).ok()).collect();
                        most = most.max(counts.open(ip));
                        drop(held);
                    }
                    most
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap() <= 5);
        }
        assert_eq!(counts.open(ip), 0);
    }

    #[test]
    fn full_tables_refuse_rather_than_lose_count() {
        let counts = ConnectionCounts::new(8);
        let held: Vec<_> = (0..10_000u32)
            .filter_map(|i| counts.acquire(IpAddr::from(i.to_be_bytes()), 1).ok())
            .collect();
        assert_eq!(held.len(), 16, "every word holds an address");
        assert_eq!(
            counts.acquire("10.9.9.9".parse().unwrap(), 1).err(),
            Some(Refused::Full)
        );
    }
}
