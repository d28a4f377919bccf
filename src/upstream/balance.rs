//! Backend selection, one `Balancer` per worker (no shared cursor, no lock).
//! `RoundRobin` rotates over the backends that are up; `Weighted` is nginx's smooth weighted
//! round robin, which interleaves picks (a:5 b:1 c:1 gives a a b a c a a) instead of bursting;
//! `LeastConn` sends to the backend with the fewest requests in flight for its weight, counted
//! over all workers (lock-free reads of the per-worker gauges), so a slow backend gets less.

use super::Backend;
use crate::config::Strategy;

#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    next: usize,
    current_weight: Vec<i64>,
}

impl Balancer {
    pub fn new(strategy: Strategy, backends: usize) -> Self {
        Balancer {
            strategy,
            next: 0,
            current_weight: vec![0; backends],
        }
    }

    /// Chooses among the backends for which `eligible` holds; `None` when there is none.
    pub fn pick<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.current_weight.len() != backends.len() {
            self.current_weight = vec![0; backends.len()];
        }
        match self.strategy {
            Strategy::RoundRobin => {
                let n = backends.len();
                let chosen = (0..n).map(|k| (self.next + k) % n).find(|&i| eligible(i))?;
                self.next = (chosen + 1) % n;
                Some(chosen)
            }
            Strategy::Weighted => {
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in (0..backends.len()).filter(|&i| eligible(i)) {
                    let w = i64::from(backends[i].as_ref().weight());
                    self.current_weight[i] += w;
                    total += w;
                    if best.is_none_or(|b| self.current_weight[i] > self.current_weight[b]) {
                        best = Some(i);
                    }
                }
                let chosen = best?;
                self.current_weight[chosen] -= total;
                Some(chosen)
            }
            Strategy::LeastConn => {
                let n = backends.len();
                // (index, in flight, weight) of the least loaded so far; scanning from the
                // cursor makes ties rotate.
                let mut best: Option<(usize, i64, i64)> = None;
                for i in (0..n).map(|k| (self.next + k) % n).filter(|&i| eligible(i)) {
                    let backend = backends[i].as_ref();
                    let (load, weight) = (backend.in_flight().max(0), i64::from(backend.weight()));
                    // load / weight < best load / best weight, without division.
                    if best.is_none_or(|(_, l, w)| load * w < l * weight) {
                        best = Some((i, load, weight));
                    }
                }
                let (chosen, ..) = best?;
                self.next = (chosen + 1) % n;
                Some(chosen)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResolvedBackend;
    use std::sync::atomic::Ordering;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Backend::new(
                    &ResolvedBackend {
                        url: format!("http://127.0.0.1:{}", 9000 + i),
                        addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                        weight: w,
                        health_check_path: None,
                        tls: None,
                    },
                    1,
                )
            })
            .collect()
    }

    fn up(set: &[Backend]) -> impl Fn(usize) -> bool + '_ {
        |i| set[i].is_up()
    }

    fn picks(b: &mut Balancer, set: &[Backend], n: usize) -> Vec<usize> {
        (0..n).map(|_| b.pick(set, up(set)).unwrap()).collect()
    }

    #[test]
    fn smooth_weighted_matches_nginx_sequence() {
        let set = backends(&[5, 1, 1]);
        let mut b = Balancer::new(Strategy::Weighted, 3);
        assert_eq!(picks(&mut b, &set, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_spread_is_proportional() {
        let set = backends(&[3, 1]);
        let mut b = Balancer::new(Strategy::Weighted, 2);
        let p = picks(&mut b, &set, 400);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 300);
    }

    #[test]
    fn round_robin_ignores_weights_and_skips_down() {
        let set = backends(&[3, 1, 1]);
        let mut b = Balancer::new(Strategy::RoundRobin, 3);
        assert_eq!(picks(&mut b, &set, 4), vec![0, 1, 2, 0]);
        set[1].set_up(false);
        assert_eq!(picks(&mut b, &set, 4), vec![2, 0, 2, 0]);
    }

    #[test]
    fn least_conn_follows_load_for_weight_and_rotates_ties() {
        let set = backends(&[1, 1, 2]);
        let load = |i: usize, n: i64| set[i].stats(0).in_flight.store(n, Ordering::Relaxed);
        let mut b = Balancer::new(Strategy::LeastConn, 3);
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
        assert_eq!(b.pick(&set, up(&set)), Some(2), "3/2 beats 3/1");
    }

    #[test]
    fn exclusion_and_all_down() {
        let set = backends(&[1, 1]);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::Weighted,
            Strategy::LeastConn,
        ] {
            let mut b = Balancer::new(strategy, 2);
            assert_eq!(b.pick(&set, |i| i != 0), Some(1));
            assert_eq!(b.pick(&set, |_| false), None);
        }
        set[0].set_up(false);
        set[1].set_up(false);
        assert_eq!(
            Balancer::new(Strategy::Weighted, 2).pick(&set, up(&set)),
            None
        );
    }
}
