//! Timeouts for socket operations at the cost of a slab slot, not a timer each. monoio's
//! `timeout()` embeds a 640-byte, 128-aligned timer entry in every bounded read or write and
//! reads the clock for each; nested in the futures of a request's phases (each `.await` of a
//! callee copies its whole future), that made the request path copy tens of KiB per request.
//! Here each thread keeps one coarse timing wheel: a deadline is a slab entry on an intrusive
//! list (insert and remove in O(1), no allocation once warm), the clock is read once per tick by
//! one sweeper task, which expires what is due and wakes its task. Deadlines are kept to within
//! `TICK` (timeouts here are seconds; tests use tenths), and one that never fires costs a slab
//! insert and a removal. As nginx's timers with `ngx_time_update`: a cached clock, no syscall per
//! operation.

use slab::Slab;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Granularity of the wheel, and how often the sweeper looks.
const TICK: Duration = Duration::from_millis(TICK_MS);
const TICK_MS: u64 = 10;
/// Slots of the wheel: a deadline further out than this many ticks waits for more rounds.
const SLOTS: usize = 1024;
const NONE: usize = usize::MAX;

struct Entry {
    /// The tick at (or after) which it fires.
    due: u64,
    waker: Option<Waker>,
    fired: bool,
    prev: usize,
    next: usize,
}

struct Wheel {
    entries: Slab<Entry>,
    /// Head of each slot's list (entries with `due % SLOTS` = slot).
    heads: Vec<usize>,
    base: Instant,
    /// Ticks since `base`, as of the sweeper's last look.
    now: u64,
    /// The last tick swept.
    swept: u64,
    sweeper: bool,
}

thread_local! {
    static WHEEL: RefCell<Wheel> = RefCell::new(Wheel {
        entries: Slab::new(),
        heads: vec![NONE; SLOTS],
        base: Instant::now(),
        now: 0,
        swept: 0,
        sweeper: false,
    });
}

impl Wheel {
    fn insert(&mut self, due: u64, waker: Waker) -> usize {
        let slot = (due % SLOTS as u64) as usize;
        let head = self.heads[slot];
        let key = self.entries.insert(Entry {
            due,
            waker: Some(waker),
            fired: false,
            prev: NONE,
            next: head,
        });
        if head != NONE {
            self.entries[head].prev = key;
        }
        self.heads[slot] = key;
        key
    }

    fn unlink(&mut self, key: usize) -> Entry {
        let entry = self.entries.remove(key);
        if entry.fired {
            return entry; // taken off its list when it fired
        }
        match entry.prev {
            NONE => self.heads[(entry.due % SLOTS as u64) as usize] = entry.next,
            prev => self.entries[prev].next = entry.next,
        }
        if entry.next != NONE {
            self.entries[entry.next].prev = entry.prev;
        }
        entry
    }

    /// Fires every entry due by `now`, walking the slots passed since the last sweep; returns
    /// the wakers to call (after the wheel is released).
    fn advance(&mut self, now: u64, wake: &mut Vec<Waker>) {
        self.now = now;
        let last = now.min(self.swept + SLOTS as u64);
        while self.swept < last {
            self.swept += 1;
            let slot = (self.swept % SLOTS as u64) as usize;
            let mut key = self.heads[slot];
            while key != NONE {
                let next = self.entries[key].next;
                if self.entries[key].due <= now {
                    let prev = self.entries[key].prev;
                    match prev {
                        NONE => self.heads[slot] = next,
                        prev => self.entries[prev].next = next,
                    }
                    if next != NONE {
                        self.entries[next].prev = prev;
                    }
                    let entry = &mut self.entries[key];
                    entry.fired = true;
                    wake.extend(entry.waker.take());
                }
                key = next;
            }
        }
        // Fell behind by a whole round or more (a stalled thread): everything due is in the
        // slots just walked, since a slot holds every due tick congruent to it.
        self.swept = now;
    }
}

/// Ticks from the cached clock to a deadline `timeout` away: rounded up, plus one for the
/// clock's own lag (the sweeper updates it every tick while the thread's loop turns).
fn ticks_for(timeout: Duration) -> u64 {
    timeout.as_millis() as u64 / TICK_MS + 2
}

/// The sweeper of this thread's wheel: started by the first deadline registered on a thread
/// (inside a monoio runtime), it reads the clock once a tick and fires what is due.
async fn sweep() {
    let mut wake = Vec::new();
    loop {
        monoio::time::sleep(TICK).await;
        WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            let now = w.base.elapsed().as_millis() as u64 / TICK_MS;
            w.advance(now, &mut wake);
        });
        for waker in wake.drain(..) {
            waker.wake();
        }
    }
}

/// A registered deadline; removed from the wheel when dropped.
struct Registration {
    key: usize,
}

impl Registration {
    fn new(due: Due, waker: &Waker) -> Registration {
        let key = WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            if !w.sweeper {
                w.sweeper = true;
                monoio::spawn(sweep());
            }
            let due = match due {
                Due::In(timeout) => w.now + ticks_for(timeout),
                // Never into a slot already swept: one already due fires at the next tick.
                Due::At(Deadline(tick)) => tick.max(w.now + 1),
            };
            w.insert(due, waker.clone())
        });
        Registration { key }
    }

    /// Whether it fired; otherwise keeps `waker` as the one to wake.
    fn fired(&self, waker: &Waker) -> bool {
        WHEEL.with(|w| {
            let mut w = w.borrow_mut();
            let entry = &mut w.entries[self.key];
            if entry.fired {
                return true;
            }
            if !entry.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                entry.waker = Some(waker.clone());
            }
            false
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // `try_with`: a future dropped while the thread ends, after the wheel.
        let _ = WHEEL.try_with(|w| w.borrow_mut().unlink(self.key));
    }
}

/// A moment on this thread's coarse clock, for a limit on a whole exchange of several reads or
/// writes (a head arriving in pieces): taking one reads no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(u64);

impl Deadline {
    /// `timeout` from now (to within `TICK`, never earlier).
    pub fn after(timeout: Duration) -> Deadline {
        WHEEL.with(|w| Deadline(w.borrow().now + ticks_for(timeout)))
    }

    /// What is left of it (to within `TICK`); zero once passed.
    pub fn left(self) -> Duration {
        TICK * self.0.saturating_sub(coarse_now()) as u32
    }
}

/// Ticks of this thread's coarse clock (`TICK` each); it advances while a deadline is pending
/// or the sweeper runs (once started, always). For idle times that need no precision.
pub fn coarse_now() -> u64 {
    WHEEL.with(|w| w.borrow().now)
}

/// `duration` in ticks of the coarse clock, rounded up.
pub fn coarse_ticks(duration: Duration) -> u64 {
    (duration.as_millis() as u64).div_ceil(TICK_MS)
}

#[derive(Debug, Clone, Copy)]
enum Due {
    In(Duration),
    At(Deadline),
}

/// `fut` given at most `timeout`: `Err(Elapsed)` when the deadline passes first (the future is
/// then dropped, cancelling its operation). The deadline starts at the first poll.
pub fn timeout<F: Future>(timeout: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        due: Due::In(timeout),
        registration: None,
    }
}

/// `fut` given until `deadline`, as `timeout`.
pub fn timeout_at<F: Future>(deadline: Deadline, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        due: Due::At(deadline),
        registration: None,
    }
}

/// The deadline of a `timeout` passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        due: Due,
        registration: Option<Registration>,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match this.registration {
            None => *this.registration = Some(Registration::new(*this.due, cx.waker())),
            Some(r) if r.fired(cx.waker()) => return Poll::Ready(Err(Elapsed)),
            Some(_) => {}
        }
        Poll::Pending
    }
}

/// Completes once `duration` has passed (to within `TICK`), without a timer of its own.
#[allow(dead_code)] // for waits that are not an operation's (the rate limiter's delays)
pub fn sleep(duration: Duration) -> Timeout<std::future::Pending<()>> {
    timeout(duration, std::future::pending())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wheel() -> Wheel {
        Wheel {
            entries: Slab::new(),
            heads: vec![NONE; SLOTS],
            base: Instant::now(),
            now: 0,
            swept: 0,
            sweeper: true,
        }
    }

    #[test]
    fn entries_fire_when_due_and_removed_ones_never() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut w = wheel();
        let a = w.insert(5, waker.clone());
        let b = w.insert(5, waker.clone());
        let far = w.insert(5 + 3 * SLOTS as u64, waker.clone());
        let c = w.insert(7, waker.clone());
        w.unlink(b);
        let mut wake = Vec::new();
        w.advance(4, &mut wake);
        assert!(wake.is_empty());
        w.advance(6, &mut wake);
        assert_eq!(wake.len(), 1, "a fired, b was removed, far is rounds away");
        assert!(w.entries[a].fired && !w.entries[c].fired && !w.entries[far].fired);
        w.advance(5 + 3 * SLOTS as u64, &mut wake);
        assert_eq!(wake.len(), 3, "c, then far after its rounds");
        for waker in wake {
            waker.wake();
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        // Removing fired entries leaves the wheel empty.
        for key in [a, c, far] {
            w.unlink(key);
        }
        assert!(w.entries.is_empty());
        assert!(w.heads.iter().all(|&h| h == NONE));
    }

    #[test]
    fn a_stalled_sweep_catches_up() {
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let mut w = wheel();
        let keys: Vec<usize> = (1..3000).map(|due| w.insert(due, waker.clone())).collect();
        let mut wake = Vec::new();
        w.advance(10_000, &mut wake);
        assert_eq!(wake.len(), keys.len());
    }

    #[monoio::test(enable_timer = true)]
    async fn timeouts_fire_and_finished_futures_win() {
        let started = Instant::now();
        assert_eq!(
            timeout(Duration::from_millis(50), std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(waited < Duration::from_millis(500), "{waited:?}");
        assert_eq!(timeout(Duration::from_millis(50), async { 7 }).await, Ok(7));
        sleep(Duration::from_millis(20)).await.unwrap_err();
        WHEEL.with(|w| assert!(w.borrow().entries.is_empty(), "every entry removed"));
    }
}
