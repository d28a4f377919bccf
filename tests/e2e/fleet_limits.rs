//! Fleet-wide limits through a real redis-server: two proxies sharing one limit admit the
//! limit between them, not twice it; with Redis killed both keep serving (each its share) and
//! say so in `ringproxy_rate_limit_store_up`; when it returns they sync again.

use crate::common::admin::{start_with_admin, Admin};
use crate::common::config::{RateLimitSection, RouteEntry};
use crate::common::load::paced;
use crate::common::redis::RedisServer;
use crate::common::{wait_until, Backend, HttpConn, Proxy, TestConfig};
use std::time::Duration;

const RATE: f64 = 100.0;
const BURST: u64 = 10;

fn instance(backend: &Backend, store: &str) -> (Proxy, Admin) {
    let limit = RateLimitSection {
        store: Some(store.into()),
        sync_interval_ms: Some(100),
        ..RateLimitSection::per_second("route", RATE, BURST)
    };
    let config = TestConfig::new(&[backend.port])
        .rate_limit("fleet", limit)
        .route(RouteEntry::to("default").with(|r| r.rate_limits = Some(vec!["fleet".into()])));
    start_with_admin(config)
}

fn store_up(admin: &Admin) -> f64 {
    admin
        .metrics()
        .value("ringproxy_rate_limit_store_up", &[("limit", "fleet")])
}

/// Four connections to each proxy, 3x the limit offered in all.
fn load(a: &Proxy, b: &Proxy, run: Duration) -> crate::common::load::Paced {
    let conns: Vec<HttpConn> = (0..8)
        .map(|i| if i % 2 == 0 { a.connect() } else { b.connect() })
        .collect();
    paced(conns, 3.0 * RATE, run, "/fleet/")
}

#[test]
fn two_instances_share_one_limit_and_survive_losing_redis() {
    let mut redis = RedisServer::start();
    let backend = Backend::fixed("ok");
    let (a, admin_a) = instance(&backend, &redis.url());
    let (b, admin_b) = instance(&backend, &redis.url());
    wait_until(Duration::from_secs(5), "both proxies syncing", || {
        store_up(&admin_a) == 1.0 && store_up(&admin_b) == 1.0
    });
    let shared = load(&a, &b, Duration::from_secs(6));
    let error = shared.error_against(RATE, BURST, "fleet limit, two instances");
    assert!(
        error.abs() <= 0.10,
        "two instances admitted {:+.1}% off the limit",
        error * 100.0
    );

    // Redis goes away: both notice, and keep serving their share of the limit.
    redis.stop();
    wait_until(Duration::from_secs(5), "both to see the store down", || {
        store_up(&admin_a) == 0.0 && store_up(&admin_b) == 0.0
    });
    let alone = load(&a, &b, Duration::from_secs(2));
    eprintln!(
        "without redis: {} admitted, {} refused in {:?}",
        alone.admitted, alone.refused, alone.span
    );
    let allowed = RATE * alone.span.as_secs_f64();
    assert!(
        f64::from(alone.admitted) > 0.5 * allowed
            && f64::from(alone.admitted) < 1.5 * allowed + 2.0 * BURST as f64,
        "each instance enforces its share: {} admitted where the limit allows {allowed:.0}",
        alone.admitted
    );
    for proxy in [&a, &b] {
        proxy.wait_log_lines(1, "the store down", |l| {
            l.contains("rate limit store unreachable")
        });
    }

    // It comes back: both sync again.
    redis.restart();
    wait_until(Duration::from_secs(10), "both to sync again", || {
        store_up(&admin_a) == 1.0 && store_up(&admin_b) == 1.0
    });
    let again = load(&a, &b, Duration::from_secs(2));
    assert!(
        again.admitted > 0 && again.refused > 0,
        "served and limited again"
    );
    for proxy in [&a, &b] {
        proxy.wait_log_lines(1, "the store back", |l| {
            l.contains("rate limit store reachable again")
        });
    }
}
