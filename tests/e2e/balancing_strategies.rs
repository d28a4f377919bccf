//! Balancing inside upstream groups: `round_robin` follows weights (3:1 gives 3:1, `weighted`
//! is its alias, a weight set through the admin API applies at once), `least_conn` and
//! `random2` steer around a backend busy with slow requests and use every backend when idle,
//! `hash` keeps each key on one backend (by field, cookie, path or client address), moves only
//! a drained backend's keys, and spreads a hot key once its backend holds more than its bounded
//! share.

use crate::common::admin::Admin;
use crate::common::config::{RouteEntry, Strategy};
use crate::common::live_backend::{backend_of, LiveBackend};
use crate::common::*;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The proxy with the group `g` over `backends` (weights as given) balanced by `strategy`, and
/// every request routed to it; the admin API on.
fn group_proxy(
    backends: &[(&LiveBackend, u32)],
    change: impl FnOnce(&mut crate::common::config::UpstreamGroupSection),
) -> (Proxy, Admin) {
    let list: Vec<(u16, u32)> = backends.iter().map(|(b, w)| (b.port, *w)).collect();
    let mut config = TestConfig::new(&[])
        .group("g", &list)
        .route(RouteEntry::to("g"))
        .admin_api();
    change(config.upstreams.get_mut("g").expect("group g"));
    (Proxy::start(&config), Admin::of(&config))
}

/// Which backend answered `GET path` with these fields, on `conn`.
fn answered_by(conn: &mut HttpConn, path: &str, fields: &[(&str, &str)]) -> String {
    let response = conn.roundtrip(&request_bytes("GET", path, fields, b""));
    assert_eq!(response.status(), 200, "{response:?}");
    backend_of(&response)
}

fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

#[test]
fn round_robin_follows_weights_weighted_is_its_alias_and_runtime_weights_apply_at_once() {
    let (a, b) = (LiveBackend::start("a"), LiveBackend::start("b"));
    for strategy in [Strategy::RoundRobin, Strategy::Weighted] {
        let (proxy, admin) = group_proxy(&[(&a, 3), (&b, 1)], |g| g.strategy = Some(strategy));
        let mut conn = proxy.connect();
        let counts = tally((0..400).map(|i| answered_by(&mut conn, &format!("/{i}"), &[])));
        assert_eq!(counts.get("a"), Some(&300), "{strategy:?}: {counts:?}");
        let response = admin.post("/upstreams/g/backends/1/weight", "3");
        assert_eq!(response.status(), 200, "{response:?}");
        let counts = tally((0..40).map(|i| answered_by(&mut conn, &format!("/{i}"), &[])));
        assert_eq!(
            (counts.get("a"), counts.get("b")),
            (Some(&20), Some(&20)),
            "{strategy:?} after the weight change: {counts:?}"
        );
    }
}

/// One slow request holds a backend; every quick request meanwhile must go elsewhere.
fn steers_around_a_busy_backend(strategy: Strategy) {
    let slow = Duration::from_secs(3);
    let backends: Vec<LiveBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| LiveBackend::with_delay(n, slow))
        .collect();
    let list: Vec<(&LiveBackend, u32)> = backends.iter().map(|b| (b, 1)).collect();
    let (proxy, _admin) = group_proxy(&list, |g| g.strategy = Some(strategy));
    // Idle, every backend gets requests.
    let mut conn = proxy.connect();
    let idle = tally((0..60).map(|i| answered_by(&mut conn, &format!("/idle/{i}"), &[])));
    assert!(
        idle.len() == 3 && idle.values().all(|&n| n >= 5),
        "{strategy:?}: {idle:?}"
    );
    let port = proxy.port;
    let held = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(port);
        answered_by(&mut conn, "/slow/held", &[])
    });
    wait_until(IO_TIMEOUT, "the slow request reached a backend", || {
        backends
            .iter()
            .map(|b| b.requests_to("/slow"))
            .sum::<usize>()
            == 1
    });
    let busy = backends
        .iter()
        .find(|b| b.requests_to("/slow") == 1)
        .expect("busy backend")
        .name()
        .to_string();
    let quick: Vec<String> = (0..30)
        .map(|i| answered_by(&mut conn, &format!("/quick/{i}"), &[]))
        .collect();
    assert!(
        quick.iter().all(|name| *name != busy),
        "{strategy:?}: busy {busy} got quick requests: {quick:?}"
    );
    assert_eq!(held.join().expect("slow client"), busy);
}

#[test]
fn least_conn_steers_around_a_busy_backend() {
    steers_around_a_busy_backend(Strategy::LeastConn);
}

#[test]
fn random2_steers_around_a_busy_backend() {
    steers_around_a_busy_backend(Strategy::Random2);
}

#[test]
fn hash_keeps_each_key_on_one_backend() {
    let backends: Vec<LiveBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| LiveBackend::start(n))
        .collect();
    let list: Vec<(&LiveBackend, u32)> = backends.iter().map(|b| (b, 1)).collect();
    type Ask = fn(usize, usize) -> (String, Vec<(String, String)>);
    let by_field: Ask = |user, i| {
        (
            format!("/f/{i}"),
            vec![("X-User".into(), format!("u{user}"))],
        )
    };
    let by_cookie: Ask = |user, i| {
        let cookie = format!("theme=dark; session=s{user}; x=1");
        (format!("/c/{i}"), vec![("Cookie".into(), cookie)])
    };
    let by_path: Ask = |user, _| (format!("/p/{user}"), vec![]);
    for (key, ask) in [
        ("header:x-user", by_field),
        ("cookie:session", by_cookie),
        ("path", by_path),
    ] {
        let (proxy, _admin) = group_proxy(&list, |g| {
            g.strategy = Some(Strategy::Hash);
            g.hash_key = Some(key.into());
        });
        let mut conn = proxy.connect();
        let mut seen: HashMap<usize, String> = HashMap::new();
        for round in 0..3 {
            for user in 0..30 {
                let (path, fields) = ask(user, round);
                let fields: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let name = answered_by(&mut conn, &path, &fields);
                let first = seen.entry(user).or_insert_with(|| name.clone());
                assert_eq!(*first, name, "{key}: user {user} moved in round {round}");
            }
        }
        let spread = tally(seen.into_values());
        assert_eq!(spread.len(), 3, "{key}: 30 keys on {spread:?}");
    }
    // By client address: every request of this one client to one backend.
    let (proxy, _admin) = group_proxy(&list, |g| g.strategy = Some(Strategy::Hash));
    let spread = tally((0..30).map(|i| answered_by(&mut proxy.connect(), &format!("/{i}"), &[])));
    assert_eq!(spread.len(), 1, "{spread:?}");
}

#[test]
fn hash_moves_only_the_keys_of_a_drained_backend() {
    let backends: Vec<LiveBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| LiveBackend::start(n))
        .collect();
    let list: Vec<(&LiveBackend, u32)> = backends.iter().map(|b| (b, 1)).collect();
    let (proxy, admin) = group_proxy(&list, |g| {
        g.strategy = Some(Strategy::Hash);
        g.hash_key = Some("header:X-User".into());
    });
    let mut conn = proxy.connect();
    let placement = |conn: &mut HttpConn| -> Vec<String> {
        (0..60)
            .map(|u| answered_by(conn, "/", &[("X-User", &format!("user-{u}"))]))
            .collect()
    };
    let before = placement(&mut conn);
    let drained = before[0].clone();
    let index = ["a", "b", "c"]
        .iter()
        .position(|n| *n == drained)
        .expect("known");
    let url = percent_encoded(&backends[index].url());
    let response = admin.post(&format!("/upstreams/g/backends/{url}/drain"), "");
    assert_eq!(response.status(), 200, "{response:?}");
    let during = placement(&mut conn);
    for (b, d) in before.iter().zip(&during) {
        if *b == drained {
            assert_ne!(*d, drained, "a key stayed on the drained backend");
        } else {
            assert_eq!(b, d, "a key of a backend that stayed moved");
        }
    }
    admin.post(&format!("/upstreams/g/backends/{index}/enable"), "");
    assert_eq!(placement(&mut conn), before, "keys come back");
}

/// `%`-encodes the characters of a URL that a path segment cannot hold.
fn percent_encoded(url: &str) -> String {
    url.replace(':', "%3A").replace('/', "%2F")
}

#[test]
fn hash_spreads_a_hot_key_within_its_bounded_load() {
    let slow = Duration::from_secs(2);
    let backends: Vec<LiveBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| LiveBackend::with_delay(n, slow))
        .collect();
    let list: Vec<(&LiveBackend, u32)> = backends.iter().map(|b| (b, 1)).collect();
    let (proxy, _admin) = group_proxy(&list, |g| {
        g.strategy = Some(Strategy::Hash);
        g.hash_key = Some("header:X-User".into());
        g.hash_balance_factor = Some(1.25);
    });
    let port = proxy.port;
    // Nine requests for one key at once, each held 2 s by the backend.
    let answers: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..9)
            .map(|i| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(30 * i));
                    let mut conn = HttpConn::connect(port);
                    answered_by(&mut conn, &format!("/slow/{i}"), &[("X-User", "hot")])
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client"))
            .collect()
    });
    let spread = tally(answers);
    // No backend above ceil(1.25 x 9 / 3) = 4 (without bounds, all nine on one).
    assert!(spread.values().all(|&n| n <= 4), "{spread:?}");
    assert!(spread.len() >= 2, "{spread:?}");
}
