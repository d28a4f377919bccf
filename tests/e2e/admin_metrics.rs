//! Admin API and metrics end to end: `/metrics` parsed with a Prometheus text parser, with the
//! documented families and counters that follow the traffic; `/status` JSON; `/healthz` and
//! `/readyz`; the bearer token; drain and enable; weight changes moving the weighted spread;
//! and the 422/404/405 answers to bad admin requests.

use crate::common::config::Strategy;
use crate::common::*;
use crate::common::{admin::*, live_backend::*, metrics::*};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Every documented metric family with its type.
const DOCUMENTED: &[(&str, &str)] = &[
    ("ringproxy_build_info", "gauge"),
    ("ringproxy_uptime_seconds", "gauge"),
    ("ringproxy_config_generation", "gauge"),
    ("ringproxy_requests_total", "counter"),
    ("ringproxy_requests_unanswered_total", "counter"),
    ("ringproxy_worker_requests_total", "counter"),
    ("ringproxy_active_connections", "gauge"),
    ("ringproxy_parked_connections", "gauge"),
    ("ringproxy_tunnels", "gauge"),
    ("ringproxy_connections_refused_total", "counter"),
    ("ringproxy_retries_total", "counter"),
    ("ringproxy_request_duration_seconds", "histogram"),
    ("ringproxy_upstream_response_duration_seconds", "histogram"),
    ("ringproxy_upstream_pool_idle_connections", "gauge"),
    ("ringproxy_upstream_connections_opened_total", "counter"),
    ("ringproxy_upstream_connections_reused_total", "counter"),
    ("ringproxy_log_lines_dropped_total", "counter"),
    ("ringproxy_backend_requests_total", "counter"),
    ("ringproxy_backend_connect_errors_total", "counter"),
    ("ringproxy_backend_timeouts_total", "counter"),
    ("ringproxy_backend_ejections_total", "counter"),
    ("ringproxy_backend_in_flight", "gauge"),
    ("ringproxy_backend_up", "gauge"),
    ("ringproxy_backend_available", "gauge"),
    ("ringproxy_backend_weight", "gauge"),
];

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn assert_documented_families(metrics: &Metrics) {
    for (name, kind) in DOCUMENTED {
        let samples = metrics.samples(name, &[]);
        assert!(
            !samples.is_empty(),
            "metric {name} missing:\n{}",
            metrics.text
        );
        for sample in samples {
            let found = match sample.value {
                prometheus_parse::Value::Counter(_) => "counter",
                prometheus_parse::Value::Gauge(_) => "gauge",
                prometheus_parse::Value::Histogram(_) => "histogram",
                prometheus_parse::Value::Summary(_) => "summary",
                prometheus_parse::Value::Untyped(_) => "untyped",
            };
            assert_eq!(found, *kind, "type of {name}");
        }
    }
}

/// A histogram's buckets are cumulative and its `+Inf` bucket equals its `_count`.
fn histogram_count(metrics: &Metrics, name: &str) -> f64 {
    let mut buckets = metrics.histogram(name);
    buckets.sort_by(|x, y| x.less_than.total_cmp(&y.less_than));
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "{name}: {buckets:?}"
    );
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite(), "{name} has no +Inf bucket");
    let count = metrics.value(&format!("{name}_count"), &[]);
    assert_eq!(last.count, count, "{name}: +Inf bucket vs _count");
    count
}

/// Requests answered, all classes together.
fn requests_total(metrics: &Metrics) -> f64 {
    CLASSES
        .iter()
        .map(|c| metrics.value("ringproxy_requests_total", &[("class", c)]))
        .sum()
}

/// A scrape once `total` requests are counted: a request is counted just after its response
/// is written, so a scrape right after the last response may not include it yet.
fn metrics_after(admin: &Admin, total: f64) -> Metrics {
    let mut metrics = admin.metrics();
    wait_until(IO_TIMEOUT, &format!("{total} requests counted"), || {
        metrics = admin.metrics();
        requests_total(&metrics) >= total
    });
    metrics
}

fn status_class(status: u16) -> &'static str {
    CLASSES[usize::from(status / 100) - 1]
}

#[test]
fn metrics_have_the_documented_families_and_counters_follow_traffic() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    let (proxy, admin) = start_with_admin(TestConfig::weighted(&[(a.port, 2), (b.port, 1)]));
    let before = admin.metrics();
    assert_documented_families(&before);
    assert_eq!(
        before.value(
            "ringproxy_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(before.value("ringproxy_config_generation", &[]), 1.0);
    for class in CLASSES {
        before.value("ringproxy_requests_total", &[("class", class)]);
    }
    for (backend, weight) in [(&a, 2.0), (&b, 1.0)] {
        let url = backend.url();
        let label = [("backend", url.as_str())];
        assert_eq!(before.value("ringproxy_backend_weight", &label), weight);
        assert_eq!(before.value("ringproxy_backend_up", &label), 1.0);
        assert_eq!(before.value("ringproxy_backend_available", &label), 1.0);
        assert_eq!(before.value("ringproxy_backend_in_flight", &label), 0.0);
    }

    // 10 requests on one keep-alive connection: 6 answered 200, 2 404, 2 503 by the backends.
    let paths = [
        "/ok/1",
        "/code/404",
        "/ok/2",
        "/code/503",
        "/ok/3",
        "/ok/4",
        "/code/404",
        "/ok/5",
        "/code/503",
        "/ok/6",
    ];
    let mut conn = proxy.connect();
    let mut by_backend: HashMap<(String, &str), f64> = HashMap::new();
    let mut by_class: HashMap<&str, f64> = HashMap::new();
    for path in paths {
        let response = conn.roundtrip(&get_request(path));
        let class = status_class(response.status());
        let url = if backend_of(&response) == "a" {
            a.url()
        } else {
            b.url()
        };
        *by_backend.entry((url, class)).or_default() += 1.0;
        *by_class.entry(class).or_default() += 1.0;
    }
    assert_eq!(by_class.get("2xx"), Some(&6.0));
    assert_eq!(by_class.get("4xx"), Some(&2.0));
    assert_eq!(by_class.get("5xx"), Some(&2.0));

    let after = metrics_after(&admin, requests_total(&before) + 10.0);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    for class in CLASSES {
        let expected = by_class.get(class).copied().unwrap_or(0.0);
        assert_eq!(
            delta("ringproxy_requests_total", &[("class", class)]),
            expected,
            "requests_total{{class={class}}}"
        );
        for url in [a.url(), b.url()] {
            let expected = by_backend
                .get(&(url.clone(), class))
                .copied()
                .unwrap_or(0.0);
            assert_eq!(
                delta(
                    "ringproxy_backend_requests_total",
                    &[("backend", &url), ("class", class)]
                ),
                expected,
                "backend_requests_total{{backend={url},class={class}}}"
            );
        }
    }
    assert_eq!(
        delta("ringproxy_worker_requests_total", &[("worker", "0")]),
        10.0
    );
    // One upstream connection per backend, reused for the rest.
    assert_eq!(
        delta("ringproxy_upstream_connections_opened_total", &[]),
        2.0
    );
    assert_eq!(
        delta("ringproxy_upstream_connections_reused_total", &[]),
        8.0
    );
    assert_eq!(
        after.value(
            "ringproxy_upstream_pool_idle_connections",
            &[("worker", "0")]
        ),
        2.0
    );
    assert_eq!(
        after.value("ringproxy_active_connections", &[("worker", "0")]),
        1.0,
        "the test's one client connection"
    );
    let requests_seen = histogram_count(&after, "ringproxy_request_duration_seconds")
        - histogram_count(&before, "ringproxy_request_duration_seconds");
    assert_eq!(requests_seen, 10.0);
    let upstream_seen = histogram_count(&after, "ringproxy_upstream_response_duration_seconds")
        - histogram_count(&before, "ringproxy_upstream_response_duration_seconds");
    assert_eq!(upstream_seen, 10.0);
    assert_eq!(delta("ringproxy_retries_total", &[]), 0.0);
    assert_eq!(delta("ringproxy_requests_unanswered_total", &[]), 0.0);
    assert!(delta("ringproxy_uptime_seconds", &[]) > 0.0);
}

#[test]
fn idle_keep_alive_connections_show_as_parked() {
    let a = LiveBackend::start("a");
    let (proxy, admin) = start_with_admin(TestConfig::new(&[a.port]));
    let mut conns: Vec<HttpConn> = (0..2).map(|_| proxy.connect()).collect();
    for conn in conns.iter_mut() {
        conn.get_ok("/");
    }
    let gauge = |name: &str| admin.metrics().value(name, &[("worker", "0")]);
    wait_until(IO_TIMEOUT, "both idle connections parked", || {
        gauge("ringproxy_parked_connections") == 2.0
    });
    assert_eq!(gauge("ringproxy_active_connections"), 2.0);
    drop(conns.pop());
    wait_until(IO_TIMEOUT, "the closed one gone from the lot", || {
        gauge("ringproxy_parked_connections") == 1.0 && gauge("ringproxy_active_connections") == 1.0
    });
    // A parked connection resumes on its next request.
    conns[0].get_ok("/again");
}

#[test]
fn metrics_count_connect_errors_and_retries() {
    let live = LiveBackend::start("live");
    let dead = free_port();
    let (proxy, admin) = start_with_admin(
        TestConfig::new(&[dead, live.port]).with(|c| c.passive_health.enabled = Some(false)),
    );
    let mut conn = proxy.connect();
    for i in 0..4 {
        assert_eq!(get_backend(&mut conn, &format!("/r/{i}")), "live");
    }
    let metrics = metrics_after(&admin, 4.0);
    // Each request that tried the dead backend first got a connect error and one retry.
    let dead_url = backend_url(dead);
    let errors = metrics.value(
        "ringproxy_backend_connect_errors_total",
        &[("backend", &dead_url)],
    );
    let retries = metrics.value("ringproxy_retries_total", &[]);
    assert!((2.0..=4.0).contains(&errors), "connect errors {errors}");
    assert_eq!(retries, errors, "one retry per connect error");
    assert_eq!(
        metrics.value(
            "ringproxy_backend_requests_total",
            &[("backend", &live.url()), ("class", "2xx")]
        ),
        4.0
    );
}

#[test]
fn status_reports_workers_and_backends() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    let (proxy, admin) = start_with_admin(
        TestConfig::weighted(&[(a.port, 3), (b.port, 1)])
            .health_checks(0.2, 0.5, 1, 1)
            .with(|c| c.server.workers = Some(2)),
    );
    a.wait_probes(1);
    b.wait_probes(1);
    let counts = spread(&proxy, 6);
    // A request is counted just after its response is written: wait for the last one.
    let worker_total = |status: &serde_json::Value| -> u64 {
        status["workers"]
            .as_array()
            .map(|ws| ws.iter().filter_map(|w| w["requests"].as_u64()).sum())
            .unwrap_or(0)
    };
    let mut status = admin.status();
    wait_until(IO_TIMEOUT, "all 6 requests counted", || {
        status = admin.status();
        worker_total(&status) >= 6
    });

    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status:#}");
    assert_eq!(status["config_generation"], 1, "{status:#}");
    assert_eq!(status["strategy"], "round_robin", "{status:#}");
    assert!(status["uptime_seconds"].as_f64().is_some(), "{status:#}");
    let workers = status["workers"].as_array().expect("workers array");
    assert_eq!(workers.len(), 2, "{status:#}");
    let mut worker_requests = 0;
    for worker in workers {
        let driver = worker["driver"].as_str().expect("driver");
        assert!(["io_uring", "epoll"].contains(&driver), "{worker}");
        assert!(worker["core"].is_number(), "{worker}");
        // README: "connections"; the implementation names it active_connections.
        assert!(
            worker["connections"].is_number() || worker["active_connections"].is_number(),
            "no connections count: {worker}"
        );
        worker_requests += worker["requests"].as_u64().expect("requests");
    }
    assert_eq!(worker_requests, 6);

    let list = status["backends"].as_array().expect("backends array");
    assert_eq!(list.len(), 2, "{status:#}");
    for (entry, (backend, weight)) in list.iter().zip([(&a, 3), (&b, 1)]) {
        assert_eq!(entry["url"], backend.url(), "{entry}");
        assert_eq!(entry["up"], true, "{entry}");
        assert_eq!(entry["drained"], false, "{entry}");
        assert_eq!(entry["ejected"], false, "{entry}");
        assert_eq!(entry["available"], true, "{entry}");
        assert_eq!(entry["weight"], weight, "{entry}");
        assert_eq!(entry["in_flight"], 0, "{entry}");
        assert_eq!(entry["last_check"]["ok"], true, "{entry}");
        assert_eq!(entry["last_check"]["result"], "status 200", "{entry}");
        let served = counts.get(backend.name()).copied().unwrap_or(0);
        assert_eq!(entry["requests"], served, "{entry}");
    }
}

#[test]
fn healthz_always_ok_and_readyz_follows_backend_availability() {
    let backend = LiveBackend::start("a");
    let (_proxy, admin) =
        start_with_admin(TestConfig::new(&[backend.port]).health_checks(0.2, 0.5, 1, 1));
    let code = |path: &str| admin.get(path).status();
    assert_eq!(code("/healthz"), 200);
    backend.wait_probes(1);
    assert_eq!(code("/readyz"), 200);

    backend.set_health(HealthReply::Status(500));
    wait_until(IO_TIMEOUT, "readyz 503 with the backend down", || {
        code("/readyz") == 503
    });
    assert_eq!(code("/healthz"), 200);
    backend.set_health(HealthReply::Ok);
    wait_until(IO_TIMEOUT, "readyz 200 again", || code("/readyz") == 200);

    assert_eq!(admin.post("/backends/0/drain", "").status(), 200);
    assert_eq!(code("/readyz"), 503, "the only backend is drained");
    assert_eq!(admin.post("/backends/0/enable", "").status(), 200);
    assert_eq!(code("/readyz"), 200);
}

#[test]
fn token_is_required_on_every_admin_route() {
    let backend = LiveBackend::start("a");
    let (_proxy, admin) = start_with_admin(
        TestConfig::new(&[backend.port]).with(|c| c.admin.token = Some("s3cret-token".into())),
    );
    let routes = [
        ("GET", "/metrics"),
        ("GET", "/status"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("POST", "/backends/0/drain"),
    ];
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong-token"),
            Some("Bearer s3cret-toke"),
            Some("s3cret-token"),
            Some("Basic s3cret-token"),
        ] {
            let response = admin.request_with_auth(method, path, "", auth);
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                response.header("www-authenticate"),
                Some("Bearer"),
                "{:?}",
                response.head
            );
        }
    }
    // None of the refused drains took effect; the right token works.
    let status = admin.status();
    assert_eq!(status["backends"][0]["drained"], false, "{status:#}");
    for (method, path) in routes {
        let response = admin.request_with_auth(method, path, "", Some("Bearer s3cret-token"));
        assert_eq!(response.status(), 200, "{method} {path}: {response:?}");
    }
    assert_eq!(admin.backend(0)["drained"], true);
}

#[test]
fn drain_stops_new_traffic_while_the_in_flight_request_completes() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    let (proxy, admin) = start_with_admin(TestConfig::new(&[a.port, b.port]));
    let port = proxy.port;
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let response = HttpConn::connect(port).roundtrip(&get_request("/slow"));
        (response, started.elapsed())
    });
    wait_until(IO_TIMEOUT, "the slow request at a backend", || {
        a.requests_to("/slow") + b.requests_to("/slow") == 1
    });
    let (index, drained, other) = if a.requests_to("/slow") == 1 {
        (0, &a, &b)
    } else {
        (1, &b, &a)
    };
    assert_eq!(admin.backend(index)["in_flight"], 1);

    let response = admin.post(&format!("/backends/{index}/drain"), "");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(json_body(&response)["drained"], true);
    let drained_requests = drained.requests();
    let mut conn = proxy.connect();
    for i in 0..10 {
        assert_eq!(get_backend(&mut conn, &format!("/new/{i}")), other.name());
    }
    assert_eq!(
        drained.requests(),
        drained_requests,
        "a new request reached the drained backend"
    );
    let entry = admin.backend(index);
    assert_eq!(entry["drained"], true, "{entry}");
    assert_eq!(entry["available"], false, "{entry}");

    let (response, took) = slow.join().expect("slow client");
    assert_eq!(response.status(), 200);
    assert_eq!(backend_of(&response), drained.name());
    assert!(
        response.body == pattern(SLOW_BODY_LEN, SLOW_BODY_SEED),
        "slow body cut or altered ({} bytes)",
        response.body.len()
    );
    assert!(
        took >= Duration::from_millis(900),
        "slow request took {took:?}"
    );

    let response = admin.post(&format!("/backends/{index}/enable"), "");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(json_body(&response)["drained"], false);
    wait_until(IO_TIMEOUT, "traffic back on the enabled backend", || {
        get_backend(&mut conn, "/again") == drained.name()
    });
}

#[test]
fn weight_change_by_url_shifts_the_weighted_spread() {
    let a = LiveBackend::start("a");
    let b = LiveBackend::start("b");
    let (proxy, admin) = start_with_admin(
        TestConfig::new(&[a.port, b.port])
            .with(|c| c.load_balancing.strategy = Some(Strategy::Weighted)),
    );
    let assert_near = |counts: &HashMap<String, usize>, name: &str, expected: usize| {
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            got.abs_diff(expected) <= expected / 20 + 2,
            "{name}: {got}, expected about {expected}; {counts:?}"
        );
    };
    let even = spread(&proxy, 200);
    assert_near(&even, "a", 100);
    assert_near(&even, "b", 100);

    let encoded = format!("http%3A%2F%2F127.0.0.1%3A{}", b.port);
    let response = admin.post(&format!("/backends/{encoded}/weight"), "3");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(json_body(&response)["weight"], 3);
    assert_eq!(admin.backend(1)["weight"], 3);
    assert_eq!(
        admin
            .metrics()
            .value("ringproxy_backend_weight", &[("backend", &b.url())]),
        3.0
    );
    let shifted = spread(&proxy, 400);
    assert_near(&shifted, "b", 300);
    assert_near(&shifted, "a", 100);

    // The JSON form, by index.
    let response = admin.post("/backends/1/weight", "{\"weight\": 1}");
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(admin.backend(1)["weight"], 1);
}

#[test]
fn bad_admin_requests_get_422_404_and_405() {
    let a = LiveBackend::start("a");
    let (_proxy, admin) = start_with_admin(TestConfig::new(&[a.port]));
    for body in ["0", "-1", "1000001", "abc", "", "{\"weight\": 0}", "2.5"] {
        let response = admin.post("/backends/0/weight", body);
        assert_eq!(response.status(), 422, "weight {body:?}: {response:?}");
    }
    assert_eq!(
        admin.backend(0)["weight"],
        1,
        "a refused weight was applied"
    );

    let unknown = [
        "/backends/1/drain",
        "/backends/7/weight",
        "/backends/http%3A%2F%2F127.0.0.1%3A1/drain",
        "/backends/0/explode",
    ];
    for path in unknown {
        let response = admin.post(path, "2");
        assert_eq!(response.status(), 404, "POST {path}: {response:?}");
    }
    assert_eq!(admin.get("/no-such-page").status(), 404);

    for (method, path) in [
        ("GET", "/backends/0/drain"),
        ("GET", "/backends/0/enable"),
        ("GET", "/backends/0/weight"),
        ("GET", "/reload"),
        ("POST", "/metrics"),
        ("POST", "/status"),
    ] {
        let response = admin.request(method, path, "");
        assert_eq!(response.status(), 405, "{method} {path}: {response:?}");
    }
    let entry = admin.backend(0);
    assert_eq!(entry["drained"], false, "{entry}");
    assert_eq!(entry["weight"], 1, "{entry}");
}

/// Threads serving admin connections in the proxy: each connection gets one, named
/// `admin-conn`, which holds a slot of the cap until it ends.
fn admin_connection_threads(proxy: &Proxy) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", proxy.pid())) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "admin-conn")
        })
        .count()
}

#[test]
fn silent_admin_clients_do_not_hold_up_others_and_are_capped() {
    let backend = LiveBackend::start("a");
    let (proxy, admin) = start_with_admin(TestConfig::new(&[backend.port]));
    // Connections that never send a request: each may take up to the admin I/O timeout (5 s).
    let silent: Vec<HttpConn> = (0..3).map(|_| HttpConn::connect(admin.port)).collect();
    let started = Instant::now();
    assert_eq!(admin.get("/healthz").status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "healthz waited {:?} behind silent admin connections",
        started.elapsed()
    );
    drop(silent);
    // A connection keeps its slot until its thread ends, a moment after the client has its
    // answer or has closed. Left counted, those slots would turn some of the 16 below away,
    // then free up before the 17th came, which would be served.
    wait_until(IO_TIMEOUT, "the earlier admin connections done", || {
        admin_connection_threads(&proxy) == 0
    });
    // Up to 16 are served at once (each held 5 s by its silent client); one more is refused
    // at once rather than queued.
    let held: Vec<HttpConn> = (0..16).map(|_| HttpConn::connect(admin.port)).collect();
    wait_until(IO_TIMEOUT, "16 admin connections being served", || {
        admin_connection_threads(&proxy) == 16
    });
    let host = format!("127.0.0.1:{}", admin.port);
    let request = admin_request_bytes("GET", "/healthz", &[("Host", &host)], b"");
    assert_eq!(
        admin.send_raw(&request).status(),
        503,
        "the 17th connection"
    );
    drop(held);
    wait_until(IO_TIMEOUT, "admin serving again", || {
        admin.get("/healthz").status() == 200
    });
}
