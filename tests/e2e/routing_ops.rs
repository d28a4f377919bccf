//! Operating groups and routes: `/status` lists the groups, their backends and the routes with
//! request counts; metrics carry an `upstream` label and count requests per route; the admin
//! API addresses a backend as `/upstreams/{group}/backends/{index or url}/...` (and the old
//! `/backends/...` is the group `default`); a backend URL listed in two groups is two backends
//! with their own state, and each group has its own health checks.

use crate::common::admin::{json_body, Admin};
use crate::common::config::{HealthChecksSection, RespondEntry, RouteEntry};
use crate::common::live_backend::{backend_of, HealthReply, LiveBackend};
use crate::common::*;
use std::time::Duration;

/// `GET path` with `Host: host`; the answering backend's name, or the status if not 200.
fn ask(conn: &mut HttpConn, host: &str, path: &str) -> String {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let response = conn.roundtrip(raw.as_bytes());
    match response.status() {
        200 if response.head.has("x-backend") => backend_of(&response),
        status => status.to_string(),
    }
}

#[test]
fn status_metrics_and_admin_know_groups_and_routes() {
    let (a, b, c) = (
        LiveBackend::start("a"),
        LiveBackend::start("b"),
        LiveBackend::start("c"),
    );
    let config = TestConfig::new(&[a.port])
        .group("api", &[(b.port, 1), (c.port, 1)])
        .group("mirror", &[(b.port, 1)])
        .route(RouteEntry::to("api").with(|r| {
            r.name = Some("api".into());
            r.hosts = Some(vec!["api.example.com".into()]);
        }))
        .route(RouteEntry::to("mirror").with(|r| r.path_prefix = Some("/mirror/".into())))
        .route(RouteEntry::default().with(|r| {
            r.path = Some("/ping".into());
            r.respond = Some(RespondEntry::default());
        }))
        .admin_api();
    let (proxy, admin) = (Proxy::start(&config), Admin::of(&config));
    let mut conn = proxy.connect();
    for _ in 0..4 {
        ask(&mut conn, "api.example.com", "/x");
    }
    ask(&mut conn, "test.local", "/");
    ask(&mut conn, "test.local", "/mirror/1");
    assert_eq!(ask(&mut conn, "test.local", "/ping"), "200");

    let status = admin.status();
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|g| g["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["default", "api", "mirror"], "{status:#}");
    assert_eq!(status["upstreams"][1]["backends"][1]["url"], c.url());
    assert_eq!(status["upstreams"][1]["strategy"], "round_robin");
    // `backends` stays the group default's.
    assert_eq!(status["backends"].as_array().map(Vec::len), Some(1));
    assert_eq!(status["backends"][0]["url"], a.url());
    let routes = &status["routes"];
    assert_eq!(routes[0]["name"], "api");
    assert_eq!(routes[0]["hosts"][0], "api.example.com");
    assert_eq!(routes[0]["action"]["upstream"], "api");
    assert_eq!(routes[0]["requests"], 4);
    assert_eq!(routes[1]["name"], "1");
    assert_eq!(routes[1]["path_prefix"], "/mirror/");
    assert_eq!(routes[1]["requests"], 1);
    assert_eq!(routes[2]["requests"], 1);

    let metrics = admin.metrics();
    assert_eq!(
        metrics.value("ringproxy_route_requests_total", &[("route", "api")]),
        4.0
    );
    assert_eq!(
        metrics.value("ringproxy_route_requests_total", &[("route", "2")]),
        1.0
    );
    let b_url = b.url();
    let requests = |group: &str| {
        metrics.value(
            "ringproxy_backend_requests_total",
            &[("upstream", group), ("backend", &b_url), ("class", "2xx")],
        )
    };
    assert_eq!((requests("api"), requests("mirror")), (2.0, 1.0));
    assert_eq!(
        metrics.value(
            "ringproxy_backend_up",
            &[("upstream", "default"), ("backend", &a.url())]
        ),
        1.0
    );

    // b drained in api (by URL) stays in rotation in mirror: two backends, two states.
    let encoded = b.url().replace(':', "%3A").replace('/', "%2F");
    let drained = admin.post(&format!("/upstreams/api/backends/{encoded}/drain"), "");
    assert_eq!(drained.status(), 200, "{drained:?}");
    assert_eq!(json_body(&drained)["drained"], true);
    for _ in 0..4 {
        assert_eq!(ask(&mut conn, "api.example.com", "/x"), "c");
    }
    assert_eq!(ask(&mut conn, "test.local", "/mirror/2"), "b");
    // The old path is the group default's.
    assert_eq!(admin.post("/backends/0/drain", "").status(), 200);
    assert_eq!(
        admin.status()["upstreams"][0]["backends"][0]["drained"],
        true
    );
    assert_eq!(ask(&mut conn, "test.local", "/"), "503");
    assert_eq!(admin.post("/backends/0/enable", "").status(), 200);
    assert_eq!(ask(&mut conn, "test.local", "/"), "a");
    for wrong in [
        "/upstreams/nope/backends/0/drain",
        "/upstreams/api/backends/7/drain",
        "/upstreams/api/drain",
    ] {
        assert_eq!(admin.post(wrong, "").status(), 404, "{wrong}");
    }
}

#[test]
fn each_group_has_its_own_health_checks() {
    let sick = LiveBackend::start("sick");
    sick.set_health(HealthReply::Status(500));
    let config = TestConfig::new(&[])
        .group("checked", &[(sick.port, 1)])
        .group("unchecked", &[(sick.port, 1)])
        .route(RouteEntry::to("checked").with(|r| r.path_prefix = Some("/c/".into())))
        .route(RouteEntry::to("unchecked").with(|r| r.path_prefix = Some("/u/".into())))
        .admin_api();
    let mut config = config;
    let checked = config.upstreams.get_mut("checked").expect("group");
    checked.health_check_path = Some("/health".into());
    checked.health_checks = Some(HealthChecksSection {
        enabled: Some(true),
        interval_seconds: Some(0.2),
        timeout_seconds: Some(1.0),
        failure_threshold: Some(1),
        success_threshold: Some(1),
        expected_status: None,
    });
    let (proxy, admin) = (Proxy::start(&config), Admin::of(&config));
    wait_until(IO_TIMEOUT, "the checked group's backend down", || {
        admin.status()["upstreams"][0]["backends"][0]["up"] == false
    });
    let mut conn = proxy.connect();
    assert_eq!(ask(&mut conn, "test.local", "/c/1"), "503");
    assert_eq!(ask(&mut conn, "test.local", "/u/1"), "sick");
    assert_eq!(admin.status()["upstreams"][1]["backends"][0]["up"], true);
    sick.set_health(HealthReply::Ok);
    wait_until(IO_TIMEOUT, "the checked group's backend up again", || {
        ask(&mut conn, "test.local", "/c/2") == "sick"
    });
    // Only the checked group's copy is probed.
    std::thread::sleep(Duration::from_millis(300));
    assert!(sick.probes() >= 2);
}
