//! Backend selection within a group, one algorithm a file, one `Balancer` per worker and group
//! (no shared cursor, no lock): `round_robin` (smooth weighted, `weighted` its alias),
//! `least_conn`, `random2` and `hash` (consistent, with bounded loads). Each chooses only among
//! the backends its caller calls eligible (up, not drained, not ejected, not tried yet) and
//! reads the weights on every pick, so a weight changed at runtime applies at once.

mod hash;
mod least_conn;
mod random2;
mod round_robin;

pub use hash::hash_key;

use super::Backend;
use crate::config::Strategy;
use hash::ConsistentHash;
use least_conn::LeastConn;
use random2::Random2;
use round_robin::SmoothWeighted;

#[derive(Debug)]
pub enum Balancer {
    RoundRobin(SmoothWeighted),
    LeastConn(LeastConn),
    Random2(Random2),
    Hash(ConsistentHash),
}

impl Balancer {
    /// A balancer for `strategy`; `hash_balance_factor` bounds `hash`'s loads, `seed` varies
    /// `random2`'s draws between workers.
    pub fn new(strategy: Strategy, hash_balance_factor: f64, seed: u64) -> Self {
        match strategy {
            Strategy::RoundRobin => Balancer::RoundRobin(SmoothWeighted::default()),
            Strategy::LeastConn => Balancer::LeastConn(LeastConn::default()),
            Strategy::Random2 => Balancer::Random2(Random2::new(seed)),
            Strategy::Hash => Balancer::Hash(ConsistentHash::new(hash_balance_factor)),
        }
    }

    /// Chooses among the backends for which `eligible` holds; `None` when there is none. `key`
    /// is the request's hash key (`hash` only; without one, `hash` spreads by weight).
    pub fn pick<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        key: Option<u64>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(backends, eligible),
            Balancer::LeastConn(b) => b.pick(backends, eligible),
            Balancer::Random2(b) => b.pick(backends, eligible),
            Balancer::Hash(b) => b.pick(backends, key, eligible),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResolvedBackend;
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    fn backend(port: u16, weight: u32) -> Backend {
        Backend::new(
            &ResolvedBackend {
                url: format!("http://127.0.0.1:{port}"),
                addr: ([127, 0, 0, 1], port).into(),
                weight,
                health_check_path: None,
                tls: None,
            },
            1,
        )
    }

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(9000 + i as u16, w))
            .collect()
    }

    fn up(set: &[Backend]) -> impl Fn(usize) -> bool + '_ {
        |i| set[i].is_up()
    }

    fn picks(b: &mut Balancer, set: &[Backend], n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(set, None, up(set)).unwrap())
            .collect()
    }

    fn count(picks: &[usize], i: usize) -> usize {
        picks.iter().filter(|&&p| p == i).count()
    }

    #[test]
    fn round_robin_is_smooth_weighted_as_nginx() {
        let set = backends(&[5, 1, 1]);
        let mut b = Balancer::new(Strategy::RoundRobin, 1.25, 1);
        assert_eq!(picks(&mut b, &set, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        let set = backends(&[3, 1]);
        let mut b = Balancer::new(Strategy::RoundRobin, 1.25, 1);
        assert_eq!(count(&picks(&mut b, &set, 400), 0), 300, "3:1 gives 3:1");
    }

    #[test]
    fn round_robin_skips_down_and_follows_runtime_weights() {
        let set = backends(&[1, 1, 1]);
        let mut b = Balancer::new(Strategy::RoundRobin, 1.25, 1);
        assert_eq!(picks(&mut b, &set, 3), vec![0, 1, 2]);
        set[1].set_up(false);
        assert_eq!(count(&picks(&mut b, &set, 10), 1), 0);
        set[1].set_up(true);
        set[2].set_weight(8);
        let p = picks(&mut b, &set, 100);
        assert!((75..=85).contains(&count(&p, 2)), "{p:?}");
    }

    #[test]
    fn least_conn_follows_load_for_weight_and_rotates_ties() {
        let set = backends(&[1, 1, 2]);
        let load = |i: usize, n: i64| set[i].stats(0).in_flight.store(n, Ordering::Relaxed);
        let mut b = Balancer::new(Strategy::LeastConn, 1.25, 1);
        // All idle: ties rotate.
        assert_eq!(picks(&mut b, &set, 4), vec![0, 1, 2, 0]);
        // 0 busy with 3, 1 with 1, 2 (weight 2) with 2: 1 and 2 tie at 1 per weight unit.
        load(0, 3);
        load(1, 1);
        load(2, 2);
        assert_eq!(picks(&mut b, &set, 2), vec![1, 2]);
        // 2 gets one more: 1.5 per unit against 1's 1.
        load(2, 3);
        assert_eq!(picks(&mut b, &set, 2), vec![1, 1]);
        set[1].set_up(false);
        assert_eq!(b.pick(&set, None, up(&set)), Some(2), "3/2 beats 3/1");
    }

    #[test]
    fn random2_follows_weights_when_idle_and_avoids_the_busy_one() {
        let set = backends(&[3, 1]);
        let mut b = Balancer::new(Strategy::Random2, 1.25, 7);
        let p = picks(&mut b, &set, 4000);
        // Two draws by weight, the lighter for its weight wins, ties to the first draw.
        let share = count(&p, 0) as f64 / 4000.0;
        assert!((0.70..=0.80).contains(&share), "share of weight 3: {share}");
        let set = backends(&[1, 1, 1]);
        set[0].stats(0).in_flight.store(50, Ordering::Relaxed);
        let mut b = Balancer::new(Strategy::Random2, 1.25, 7);
        let p = picks(&mut b, &set, 3000);
        // Backend 0 wins only when drawn twice (it never is: two different ones are drawn).
        assert_eq!(count(&p, 0), 0, "the busy backend was chosen");
        assert!(count(&p, 1) > 1200 && count(&p, 2) > 1200);
    }

    /// Where each of `keys` goes on `set`.
    fn placement(set: &[Backend], keys: u64) -> Vec<String> {
        let mut b = Balancer::new(Strategy::Hash, 1.25, 1);
        (0..keys)
            .map(|k| {
                let key = hash_key(format!("client-{k}").as_bytes());
                let i = b.pick(set, Some(key), up(set)).unwrap();
                set[i].url.clone()
            })
            .collect()
    }

    #[test]
    fn hash_moves_about_one_nth_of_keys_when_one_of_n_comes_or_goes() {
        const KEYS: u64 = 10_000;
        for n in [3u16, 5, 10] {
            let before: Vec<Backend> = (0..n).map(|i| backend(9000 + i, 1)).collect();
            let after: Vec<Backend> = (0..=n).map(|i| backend(9000 + i, 1)).collect();
            let (a, b) = (placement(&before, KEYS), placement(&after, KEYS));
            let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count() as f64 / KEYS as f64;
            let bound = 1.0 / f64::from(n + 1) + 0.05;
            assert!(
                moved <= bound,
                "n={n}: added one, {moved} moved (bound {bound})"
            );
            // Every moved key went to the new backend.
            let new_url = &after[n as usize].url;
            assert!(a.iter().zip(&b).all(|(x, y)| x == y || y == new_url));
            // Removing it again moves them back exactly.
            assert_eq!(placement(&before, KEYS), a);
        }
    }

    #[test]
    fn hash_spreads_keys_evenly_and_by_weight() {
        let set = backends(&[1, 1, 2]);
        let p = placement(&set, 12_000);
        let share = |url: &str| p.iter().filter(|u| *u == url).count() as f64 / 12_000.0;
        assert!(
            (share(&set[0].url) - 0.25).abs() < 0.05,
            "{}",
            share(&set[0].url)
        );
        assert!(
            (share(&set[2].url) - 0.5).abs() < 0.05,
            "{}",
            share(&set[2].url)
        );
    }

    #[test]
    fn a_backend_going_down_moves_only_its_own_keys() {
        let set = backends(&[1, 1, 1, 1]);
        let before = placement(&set, 10_000);
        set[2].set_up(false);
        let after = placement(&set, 10_000);
        for (x, y) in before.iter().zip(&after) {
            if *x != set[2].url {
                assert_eq!(x, y, "a key of a backend that stayed up moved");
            } else {
                assert_ne!(y, &set[2].url);
            }
        }
    }

    #[test]
    fn hash_loads_are_bounded() {
        let set = backends(&[1, 1, 1]);
        let mut b = Balancer::new(Strategy::Hash, 1.25, 1);
        let hot = hash_key(b"the one hot key");
        let own = b.pick(&set, Some(hot), up(&set));
        let mut held: HashMap<usize, i64> = HashMap::new();
        // 30 concurrent requests for one key: each stays in flight.
        for _ in 0..30 {
            let i = b.pick(&set, Some(hot), up(&set)).unwrap();
            *held.entry(i).or_default() += 1;
            set[i].stats(0).in_flight.fetch_add(1, Ordering::Relaxed);
        }
        // No backend above ceil(1.25 x average) = ceil(1.25 x 30 / 3) = 13.
        assert!(held.values().all(|&n| n <= 13), "{held:?}");
        assert_eq!(held.len(), 3, "{held:?}");
        // Idle again: the key goes back to its own backend.
        set.iter()
            .for_each(|s| s.stats(0).in_flight.store(0, Ordering::Relaxed));
        assert_eq!(b.pick(&set, Some(hot), up(&set)), own);
    }

    #[test]
    fn every_strategy_honours_eligibility() {
        let set = backends(&[1, 1]);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConn,
            Strategy::Random2,
            Strategy::Hash,
        ] {
            let mut b = Balancer::new(strategy, 1.25, 3);
            for key in [None, Some(hash_key(b"k"))] {
                for _ in 0..20 {
                    assert_eq!(b.pick(&set, key, |i| i != 0), Some(1), "{strategy:?}");
                }
                assert_eq!(b.pick(&set, key, |_| false), None, "{strategy:?}");
            }
        }
    }
}
