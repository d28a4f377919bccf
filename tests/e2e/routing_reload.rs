//! Reloading groups and routes: they are replaced at once under load without a failed request,
//! and a backend keeps its state (drained, counters) when its (group, URL) stays; the same URL
//! in a group of another name is a new backend.

use crate::common::admin::{json_body, Admin};
use crate::common::config::RouteEntry;
use crate::common::live_backend::LiveBackend;
use crate::common::load::Load;
use crate::common::*;
use std::time::{Duration, Instant};

/// Groups `blue` (a) and `green` (b), `/load/` routed to `to`, other paths to nothing (404).
fn config_to(a: &LiveBackend, b: &LiveBackend, to: &str, admin: &TestConfig) -> TestConfig {
    let mut config = TestConfig::new(&[])
        .group("blue", &[(a.port, 1)])
        .group("green", &[(b.port, 1)])
        .route(RouteEntry::to(to).with(|r| r.path_prefix = Some("/load/".into())));
    config.server = admin.server.clone();
    config.admin = admin.admin.clone();
    config
}

#[test]
fn routes_change_under_load_without_a_failed_request() {
    let (a, b) = (LiveBackend::start("a"), LiveBackend::start("b"));
    let base = TestConfig::new(&[]).admin_api();
    let first = config_to(&a, &b, "blue", &base);
    let (proxy, admin) = (Proxy::start(&first), Admin::of(&first));
    let clients = 4;
    let load = Load::start(proxy.port, clients, Duration::from_millis(2));
    let mut switched_at = Instant::now();
    for (round, to) in ["green", "blue", "green", "blue", "green"]
        .iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(150));
        proxy.write_config(&config_to(&a, &b, to, &base).to_toml());
        if round % 2 == 0 {
            let response = admin.post("/reload", "");
            assert_eq!(response.status(), 200, "{response:?}");
            assert_eq!(json_body(&response)["changes"]["routes"], 1);
        } else {
            proxy.signal(libc::SIGHUP);
        }
        switched_at = Instant::now();
        let (on, off) = if *to == "green" { (&b, &a) } else { (&a, &b) };
        let before = on.requests();
        wait_until(IO_TIMEOUT, &format!("traffic on {to}"), || {
            on.requests() > before + 20
        });
        // Requests that started before the switch may still finish on the old group; none
        // starts there afterwards.
        let settled = off.requests();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            off.requests() <= settled + clients,
            "{to}: the old group still gets requests"
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let report = load.stop();
    report.assert_no_failures();
    report.assert_every_client_active_after(clients, switched_at);
    assert!(
        report.outcomes.len() > 200,
        "{} requests",
        report.outcomes.len()
    );
}

#[test]
fn a_backend_keeps_its_state_while_its_group_and_url_stay() {
    let (a, b) = (LiveBackend::start("a"), LiveBackend::start("b"));
    let base = TestConfig::new(&[]).admin_api();
    let config = config_to(&a, &b, "blue", &base);
    let (proxy, admin) = (Proxy::start(&config), Admin::of(&config));
    let mut conn = proxy.connect();
    for i in 0..3 {
        conn.get_ok(&format!("/load/{i}"));
    }
    assert_eq!(
        admin.post("/upstreams/blue/backends/0/drain", "").status(),
        200
    );

    // Routes change, blue's a stays: drained still, its counters kept.
    let more_routes = config
        .clone()
        .route(RouteEntry::to("green").with(|r| r.path_prefix = Some("/green/".into())));
    proxy.write_config(&more_routes.to_toml());
    let response = admin.post("/reload", "");
    assert_eq!(response.status(), 200, "{response:?}");
    let changes = &json_body(&response)["changes"];
    assert_eq!(changes["added"], serde_json::json!([]), "{changes:#}");
    assert_eq!(changes["removed"], serde_json::json!([]), "{changes:#}");
    let blue = &admin.status()["upstreams"][0];
    assert_eq!(blue["name"], "blue");
    assert_eq!(blue["backends"][0]["drained"], true, "{blue:#}");
    assert_eq!(blue["backends"][0]["requests"], 3, "{blue:#}");
    assert_eq!(conn.roundtrip(&get_request("/load/x")).status(), 503);
    assert_eq!(conn.get_ok("/green/x").text(), "b");

    // The same URL in a group of another name is another backend: fresh state.
    let renamed = TestConfig::new(&[])
        .group("azure", &[(a.port, 1)])
        .route(RouteEntry::to("azure"))
        .with(|c| {
            c.server = config.server.clone();
            c.admin = config.admin.clone();
        });
    proxy.write_config(&renamed.to_toml());
    let response = admin.post("/reload", "");
    let changes = &json_body(&response)["changes"];
    assert_eq!(
        changes["added"],
        serde_json::json!([format!("azure {}", a.url())])
    );
    let removed = changes["removed"].as_array().expect("removed").len();
    assert_eq!(removed, 2, "{changes:#}");
    let azure = &admin.status()["upstreams"][0];
    assert_eq!(azure["backends"][0]["drained"], false, "{azure:#}");
    assert_eq!(conn.get_ok("/load/y").text(), "a");
}
