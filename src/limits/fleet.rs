//! Fleet-wide limits: instances behind one load balancer enforce one limit together through
//! Redis, with no round trip on any request. Workers admit from the local table as always and
//! count what they let through per key; this thread, every `sync_interval_ms`, sends those
//! counts in one pipelined round trip (`INCRBY` per key, with an expiry) and gets back each
//! key's fleet total, and charges what the other instances let through since the last exchange
//! to the local state, as if it had been let through here. So each instance's state follows
//! the fleet's use one interval late: within one interval the fleet may admit up to the limit
//! in every instance (at worst `instances x (burst + rate x interval)` where one instance
//! would admit `burst + rate x interval`), and the excess is charged back in the next, so the
//! rate over a longer span is the limit's. Each instance also notes itself in a sorted set of
//! live instances, so that while Redis cannot be reached it enforces its share (`1/n`) of the
//! limit (`on_store_error = "local"`), or lets requests pass (`"allow"`).

use super::{gcra, nanos, Limiter};
use crate::config::StoreErrorPolicy;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long the thread sleeps when no limit has a store.
const IDLE: Duration = Duration::from_millis(250);
/// Between two attempts to reach a store that is down.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// Bounds of one exchange (connect, or a round trip): a store slower than this is down.
const STORE_TIMEOUT_MIN: Duration = Duration::from_millis(200);
const STORE_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// Starts the sync thread; `limits` gives the limits with a store of the configuration in force
/// (read every round, so reloads are followed).
pub fn spawn(limits: impl Fn() -> Vec<Arc<Limiter>> + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("limits-sync".into())
        .spawn(move || run(limits))?;
    Ok(())
}

/// A connection to one store URL.
struct Store {
    client: Option<redis::Client>,
    conn: Option<redis::Connection>,
    retry_at: Instant,
}

/// What the thread remembers of one limit: when it last synced, the fleet total each key had
/// then, and how many instances share the limit.
struct Synced {
    last: Instant,
    totals: HashMap<u64, (i64, Instant)>,
    instances: u32,
}

fn run(limits: impl Fn() -> Vec<Arc<Limiter>>) {
    let instance = format!(
        "{:016x}",
        RandomState::new().hash_one((std::process::id(), SystemTime::now()))
    );
    let mut stores: HashMap<String, Store> = HashMap::new();
    let mut synced: HashMap<usize, Synced> = HashMap::new();
    loop {
        let current = limits();
        if current.is_empty() {
            synced.clear();
            stores.clear();
            std::thread::sleep(IDLE);
            continue;
        }
        let mut next = Instant::now() + IDLE;
        synced.retain(|id, _| current.iter().any(|l| state_id(l) == *id));
        for limiter in &current {
            let Some(store) = &limiter.rule.store else {
                continue;
            };
            let interval = store.sync_interval;
            let entry = synced.entry(state_id(limiter)).or_insert_with(|| Synced {
                last: Instant::now() - interval,
                totals: HashMap::new(),
                instances: 1,
            });
            if entry.last.elapsed() >= interval {
                entry.last = Instant::now();
                let link = stores.entry(store.url.clone()).or_insert_with(|| Store {
                    client: None,
                    conn: None,
                    retry_at: Instant::now(),
                });
                sync(limiter, entry, link, &instance);
            }
            next = next.min(entry.last + interval);
        }
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }
}

/// A limit's identity across reloads: its state, which a reload keeps when the limit is the same.
fn state_id(limiter: &Limiter) -> usize {
    Arc::as_ptr(&limiter.state) as usize
}

/// One exchange for one limit.
fn sync(limiter: &Limiter, synced: &mut Synced, store: &mut Store, instance: &str) {
    let Some(settings) = &limiter.rule.store else {
        return;
    };
    // Taken whatever happens next: counts made while the store is down are not sent later
    // (the others would be charged for a past they did not see).
    let counts = limiter.state.table.take_counts();
    let timeout = (settings.sync_interval * 2).clamp(STORE_TIMEOUT_MIN, STORE_TIMEOUT_MAX);
    let name = &limiter.rule.name;
    let interval_ns = limiter.rule.interval_ns;
    // A key's count lives as long as its bucket takes to refill, and at least a few rounds.
    let ttl = Duration::from_nanos(interval_ns.saturating_mul(limiter.rule.burst + 1))
        .max(settings.sync_interval * 4)
        .max(Duration::from_secs(1));
    let members_ttl = (settings.sync_interval * 5).max(Duration::from_secs(2));
    let Some(conn) = connection(store, &settings.url, timeout) else {
        mark(limiter, false, synced.instances, settings.on_error);
        return;
    };
    let mut pipe = redis::pipe();
    for (key, n) in &counts {
        let k = format!("ringproxy:rl:{name}:{key:016x}");
        pipe.cmd("INCRBY").arg(&k).arg(*n);
        pipe.cmd("PEXPIRE")
            .arg(&k)
            .arg(ttl.as_millis() as u64)
            .ignore();
    }
    let members = format!("ringproxy:rl:{name}:instances");
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    pipe.cmd("ZADD")
        .arg(&members)
        .arg(now_ms)
        .arg(instance)
        .ignore();
    pipe.cmd("ZREMRANGEBYSCORE")
        .arg(&members)
        .arg("-inf")
        .arg(now_ms.saturating_sub(members_ttl.as_millis() as u64))
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(&members)
        .arg(members_ttl.as_millis() as u64)
        .ignore();
    pipe.cmd("ZCARD").arg(&members);
    let replies = match pipe.query::<Vec<i64>>(conn) {
        Ok(replies) if replies.len() == counts.len() + 1 => replies,
        Ok(_) | Err(_) => {
            store.conn = None;
            store.retry_at = Instant::now() + RECONNECT_AFTER;
            mark(limiter, false, synced.instances, settings.on_error);
            return;
        }
    };
    synced.instances = u32::try_from(replies[counts.len()]).unwrap_or(1).max(1);
    mark(limiter, true, synced.instances, settings.on_error);
    let now = Instant::now();
    let now_ns = nanos(now);
    for (&(key, ours), &total) in counts.iter().zip(&replies) {
        // What the others let through since this instance last saw the key's total; nothing
        // the first time (what came before may be long past).
        let others = match synced.totals.get(&key) {
            Some(&(before, _)) => total - before - i64::from(ours),
            None => 0,
        };
        synced.totals.insert(key, (total, now));
        if others > 0 {
            limiter.state.table.adjust(key, |tat| {
                gcra::charge(tat, now_ns, others as u64, interval_ns)
            });
        }
    }
    synced
        .totals
        .retain(|_, (_, at)| now.duration_since(*at) < ttl);
}

/// The store's connection, (re)made if it is time to try.
fn connection<'a>(
    store: &'a mut Store,
    url: &str,
    timeout: Duration,
) -> Option<&'a mut redis::Connection> {
    if store.conn.is_none() {
        if Instant::now() < store.retry_at {
            return None;
        }
        store.retry_at = Instant::now() + RECONNECT_AFTER;
        if store.client.is_none() {
            store.client = redis::Client::open(url).ok();
        }
        let conn = store
            .client
            .as_ref()?
            .get_connection_with_timeout(timeout)
            .ok()?;
        conn.set_read_timeout(Some(timeout)).ok()?;
        conn.set_write_timeout(Some(timeout)).ok()?;
        store.conn = Some(conn);
    }
    store.conn.as_mut()
}

/// Records whether the store answered, logging each change once.
fn mark(limiter: &Limiter, up: bool, instances: u32, policy: StoreErrorPolicy) {
    let state = &limiter.state;
    let share = match (up, policy) {
        (true, _) => 1,
        (false, StoreErrorPolicy::Local) => instances.max(1),
        (false, StoreErrorPolicy::Allow) => 0,
    };
    state.share.store(share, Ordering::Relaxed);
    let was = state.store_up.swap(up, Ordering::Relaxed);
    let limit = limiter.rule.name.as_str();
    match (was, up) {
        (true, false) => match policy {
            StoreErrorPolicy::Local => tracing::warn!(
                limit,
                instances,
                "rate limit store unreachable: enforcing this instance's share of the limit"
            ),
            StoreErrorPolicy::Allow => tracing::warn!(
                limit,
                "rate limit store unreachable: letting requests through (on_store_error = \"allow\")"
            ),
        },
        (false, true) => tracing::info!(limit, instances, "rate limit store reachable again"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitKey, LimitMode, RateLimitRule, StoreSettings};
    use crate::limits::{RateLimits, Verdict};

    #[test]
    fn an_unreachable_store_leaves_the_local_share_or_lets_requests_through() {
        let rule = |on_error| RateLimitRule {
            name: "fleet".into(),
            key: LimitKey::ClientIp,
            interval_ns: 10_000_000, // 100 per second
            burst: 1,
            mode: LimitMode::Reject,
            max_keys: 64,
            store: Some(StoreSettings {
                url: "redis://127.0.0.1:1".into(),
                sync_interval: Duration::from_millis(100),
                on_error,
            }),
            quota: (100, 1),
        };
        let t = Instant::now();
        let local = RateLimits::build(&[rule(StoreErrorPolicy::Local)], 1, None);
        let l = local.get(0);
        mark(l, false, 4, StoreErrorPolicy::Local);
        assert_eq!(l.store_up(), Some(false));
        assert_eq!(l.check(1, t).0, Verdict::Admit);
        // A quarter of the rate: the next one fits after 40 ms, not 10.
        let Verdict::Refuse { retry_after } = l.check(1, t).0 else {
            panic!("refused")
        };
        assert_eq!(retry_after, Duration::from_millis(40));
        mark(l, true, 4, StoreErrorPolicy::Local);
        assert_eq!(l.store_up(), Some(true));
        let allow = RateLimits::build(&[rule(StoreErrorPolicy::Allow)], 1, None);
        let a = allow.get(0);
        mark(a, false, 4, StoreErrorPolicy::Allow);
        for _ in 0..10 {
            assert_eq!(a.check(1, t).0, Verdict::Admit);
        }
    }
}
