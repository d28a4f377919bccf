//! Bench only (`--features bench-ab`, driven by `bench/inproc_ab.sh`): measures a small change to
//! the request path inside one process. Requests alternate, 2^16 at a time (about a second under
//! load), between two ways of doing one thing, and the worker thread's CPU time is summed per
//! way. Separate runs of two builds differ by ±10% on a noisy VM; alternating within one process
//! and one set of connections leaves the machine's drift out of a difference of a few percent.
//!
//! `RINGPROXY_BENCH_AB=<experiment>=<first>,<second>` picks it:
//! - `idle-check=` two of `posted` (what ringproxy does: the receive posted at check-in, looked
//!   at without a syscall, reads the answer; `net::posted_read`), `peek`
//!   (`recv(MSG_PEEK | MSG_DONTWAIT)` at check-out, what it did before), `poll` (a zero-timeout
//!   `poll(2)`), `none` (no check): a pooled connection's check-out check;
//! - `coalesce=` two of `writev` (what ringproxy does: a Content-Length body piece over 4 KiB
//!   leaves behind the head in one `writev`) and `copy` (pieces up to 16 KiB copied behind it).
//!
//! A request is counted where its pooled upstream connection is checked out (every request of a
//! keep-alive load). Every 2^20 requests it prints on stderr the CPU per request of each way
//! over the whole run, and the ratio of each pair of adjacent phases (second way's over the
//! first's): their mean with a 95% confidence interval, and their median.

use std::cell::{Cell, RefCell};

const PHASE: u64 = 1 << 16;
/// At most this many pair ratios are kept (600 s at 60,000 requests/s is about 270 pairs).
const MAX_PAIRS: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Posted,
    Peek,
    Poll,
    NoCheck,
    Writev,
    Copy,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Experiment {
    IdleCheck,
    Coalesce,
}

fn parse(spec: &str) -> Option<(Experiment, [Way; 2])> {
    let (name, ways) = spec.split_once('=')?;
    let (a, b) = ways.split_once(',')?;
    let experiment = match name.trim() {
        "idle-check" => Experiment::IdleCheck,
        "coalesce" => Experiment::Coalesce,
        _ => return None,
    };
    let way = |s: &str| match (experiment, s.trim()) {
        (Experiment::IdleCheck, "posted") => Some(Way::Posted),
        (Experiment::IdleCheck, "peek") => Some(Way::Peek),
        (Experiment::IdleCheck, "poll") => Some(Way::Poll),
        (Experiment::IdleCheck, "none") => Some(Way::NoCheck),
        (Experiment::Coalesce, "writev") => Some(Way::Writev),
        (Experiment::Coalesce, "copy") => Some(Way::Copy),
        _ => None,
    };
    Some((experiment, [way(a)?, way(b)?]))
}

#[derive(Clone, Copy, Default)]
struct Tally {
    requests: u64,
    phase_started: u64,
    /// CPU ns and requests, per way.
    cpu: [u64; 2],
    counted: [u64; 2],
}

thread_local! {
    static SETUP: Option<(Experiment, [Way; 2])> = std::env::var("RINGPROXY_BENCH_AB")
        .ok()
        .and_then(|s| parse(&s));
    static TALLY: Cell<Tally> = Cell::new(Tally::default());
    /// The way of the current phase.
    static NOW: Cell<Option<Way>> = const { Cell::new(None) };
    /// ln(second / first) of each pair of phases, and the open pair's first CPU time.
    static PAIRS: RefCell<(Vec<f64>, u64)> = const { RefCell::new((Vec::new(), 0)) };
}

/// One more request; at a phase boundary, accounts the phase that ended.
fn tick() {
    let Some((_, ways)) = SETUP.with(|s| *s) else {
        return;
    };
    let mut t = TALLY.with(Cell::get);
    if t.requests % PHASE == 0 {
        let now = thread_cpu_ns();
        // The first pair of phases warms up and is not counted.
        if t.requests > 2 * PHASE {
            let prev = (((t.requests - 1) / PHASE) % 2) as usize;
            let spent = now - t.phase_started;
            t.cpu[prev] += spent;
            t.counted[prev] += PHASE;
            PAIRS.with(|p| {
                let (ratios, first) = &mut *p.borrow_mut();
                if prev == 0 {
                    *first = spent;
                } else if *first > 0 && ratios.len() < MAX_PAIRS {
                    ratios.push((spent as f64 / *first as f64).ln());
                }
            });
        }
        t.phase_started = now;
        if t.requests % (16 * PHASE) == 0 && t.counted[0] > 0 && t.counted[1] > 0 {
            report(&t, ways);
        }
        NOW.with(|w| w.set(Some(ways[((t.requests / PHASE) % 2) as usize])));
    }
    t.requests += 1;
    TALLY.with(|c| c.set(t));
}

fn report(t: &Tally, ways: [Way; 2]) {
    let a = t.cpu[0] as f64 / t.counted[0] as f64;
    let b = t.cpu[1] as f64 / t.counted[1] as f64;
    let (n, mean, half, median) = PAIRS.with(|p| pair_stats(&p.borrow().0));
    eprintln!(
        "BENCH_AB requests {} {:?} {a:.1} ns/request {:?} {b:.1} ns/request second/first {:.4}; \
         {n} pairs: mean {:.4} (95% CI {:.4}-{:.4}) median {:.4}",
        t.counted[0] + t.counted[1],
        ways[0],
        ways[1],
        b / a,
        mean.exp(),
        (mean - half).exp(),
        (mean + half).exp(),
        median.exp()
    );
}

/// How a pooled connection's check-out check is done in this phase (`io::idle_state`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdleCheck {
    /// The normal check (a peek).
    Normal,
    /// `poll(2)` with a zero timeout.
    Poll,
    /// None: taken as clean.
    Skip,
}

/// At a pooled connection's check-out (counted as one request): how to check it.
pub fn idle_check() -> IdleCheck {
    tick();
    match NOW.with(Cell::get) {
        Some(Way::Poll) => IdleCheck::Poll,
        Some(Way::NoCheck) => IdleCheck::Skip,
        _ => IdleCheck::Normal,
    }
}

/// At check-in: whether a plain connection gets its receive posted in this phase (as it does
/// outside of an `idle-check` experiment's other ways).
pub fn post_reads() -> bool {
    !matches!(
        NOW.with(Cell::get),
        Some(Way::Peek | Way::Poll | Way::NoCheck)
    )
}

/// Whether Content-Length pieces up to 16 KiB are copied behind the head in this phase.
pub fn copy_length_pieces() -> bool {
    NOW.with(Cell::get) == Some(Way::Copy)
}

/// Count, mean, half-width of the 95% interval of the mean, and median of log ratios.
fn pair_stats(logs: &[f64]) -> (usize, f64, f64, f64) {
    let n = logs.len();
    if n < 2 {
        return (n, 0.0, 0.0, 0.0);
    }
    let mean = logs.iter().sum::<f64>() / n as f64;
    let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = 1.96 * (var / n as f64).sqrt();
    let mut sorted = logs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (n, mean, half, median)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a clock read into a stack timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiments_parse() {
        assert_eq!(
            parse("idle-check=peek,none"),
            Some((Experiment::IdleCheck, [Way::Peek, Way::NoCheck]))
        );
        assert_eq!(
            parse("coalesce=copy,writev"),
            Some((Experiment::Coalesce, [Way::Copy, Way::Writev]))
        );
        assert_eq!(
            parse("idle-check=posted,peek"),
            Some((Experiment::IdleCheck, [Way::Posted, Way::Peek]))
        );
        assert_eq!(parse("coalesce=peek,none"), None);
        assert_eq!(parse("idle-check=peek"), None);
    }

    #[test]
    fn pair_stats_of_equal_ratios() {
        let (n, mean, half, median) = pair_stats(&[0.1, 0.1, 0.1]);
        assert_eq!(n, 3);
        assert!((mean - 0.1).abs() < 1e-12 && half.abs() < 1e-12 && (median - 0.1).abs() < 1e-12);
    }
}
