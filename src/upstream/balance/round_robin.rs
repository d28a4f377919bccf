//! `round_robin` (alias `weighted`): nginx's smooth weighted round robin. Each pick adds every
//! eligible backend's weight to its current weight, takes the largest and takes the total off
//! it, so picks interleave (a:5 b:1 c:1 gives a a b a c a a) instead of bursting, and weights
//! 3:1 give 3:1, as nginx's and HAProxy's round robin do.

use crate::upstream::Backend;

#[derive(Debug, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn pick<B: AsRef<Backend>>(
        &mut self,
        backends: &[B],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if self.current.len() != backends.len() {
            self.current = vec![0; backends.len()];
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in (0..backends.len()).filter(|&i| eligible(i)) {
            let w = i64::from(backends[i].as_ref().weight());
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}
