//! `least_conn`: the backend with the fewest requests in flight for its weight, counted over
//! all workers (lock-free reads of the per-worker gauges), as nginx's `least_conn` and HAProxy's
//! `leastconn`: a slow backend gets less. Ties rotate from a per-worker cursor.

use crate::upstream::Backend;

#[derive(Debug, Default)]
pub struct LeastConn {
    next: usize,
}

impl LeastConn {
    pub fn pick<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = backends.len();
        // (index, in flight, weight) of the least loaded so far; scanning from the cursor
        // makes ties rotate.
        let mut best: Option<(usize, i64, i64)> = None;
        for i in (0..n).map(|k| (self.next + k) % n).filter(|&i| eligible(i)) {
            let backend = backends[i].as_ref();
            let (load, weight) = (backend.in_flight().max(0), i64::from(backend.weight()));
            if best.is_none_or(|(_, l, w)| lighter((load, weight), (l, w))) {
                best = Some((i, load, weight));
            }
        }
        let (chosen, ..) = best?;
        self.next = (chosen + 1) % n;
        Some(chosen)
    }
}

/// `load / weight` below `other_load / other_weight`, without division.
pub fn lighter((load, weight): (i64, i64), (other_load, other_weight): (i64, i64)) -> bool {
    load * other_weight < other_load * weight
}
