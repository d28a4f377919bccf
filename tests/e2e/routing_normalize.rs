//! The normalised view routes match, and that the upstream gets: `/public/../admin`,
//! `/%61dmin`, `//admin` and their kin cannot reach around a route guarding `/admin`; `%2F` and
//! `%5C` stay encoded and are not separators; a path above `/` or a broken escape is a 400; the
//! query goes on byte for byte; with `merge_slashes = false`, `//` is kept.

use crate::common::config::{RespondEntry, RouteEntry};
use crate::common::*;

/// The proxy with `/admin` answered 403 by a route, `/public/` sent to the group `public`, and
/// everything else to the default group; both upstreams echo `<name> <target>`.
fn guarded(merge_slashes: Option<bool>) -> (Proxy, Backend, Backend) {
    let (app, public) = (Backend::named("app"), Backend::named("public"));
    let config = TestConfig::new(&[app.port])
        .group("public", &[(public.port, 1)])
        .route(RouteEntry::default().with(|r| {
            r.path_prefix = Some("/admin".into());
            r.respond = Some(RespondEntry {
                status: Some(403),
                body: Some("denied".into()),
                ..RespondEntry::default()
            });
        }))
        .route(RouteEntry::to("public").with(|r| r.path_prefix = Some("/public/".into())))
        .with(|c| c.server.merge_slashes = merge_slashes);
    (Proxy::start(&config), app, public)
}

/// Status and body of `GET target` on a fresh connection.
fn get(proxy: &Proxy, target: &str) -> (u16, String) {
    let response = proxy.connect().roundtrip(&get_request(target));
    (response.status(), response.text())
}

#[test]
fn paths_that_would_reach_around_a_route_are_matched_normalised() {
    let (proxy, _app, _public) = guarded(None);
    for target in [
        "/admin",
        "/admin/users",
        "/v1/../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/admin/x",
        "/v1/.%2E/admin",
        "//admin",
        "///admin//users",
        "/%61dmin",
        "/%61%64%6D%69%6E/",
        "/public/../admin",
        "/public/./../admin?x=1",
        "/./admin",
        "/admin/.",
        "/x/y/../../admin",
    ] {
        assert_eq!(get(&proxy, target), (403, "denied".into()), "{target}");
    }
    // Absolute form is normalised the same way.
    let mut conn = proxy.connect();
    let response =
        conn.roundtrip(b"GET http://Test.Local./v1/../admin HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert_eq!(response.status(), 403);
}

#[test]
fn the_upstream_gets_the_path_the_route_saw_and_the_query_as_it_came() {
    let (proxy, app, public) = guarded(None);
    for (target, want) in [
        (
            "/public/./x//y/../z?q=/../%2e&r",
            "public /public/x/z?q=/../%2e&r",
        ),
        ("/public/%7Euser/%41", "public /public/~user/A"),
        ("/public/a%20b%2fc", "public /public/a%20b%2Fc"),
        ("//public//x", "public /public/x"),
        ("/app/../public/y", "public /public/y"),
        ("/ADMIN", "app /ADMIN"),
        ("/adminx", "app /adminx"),
        ("/other/%2e/x", "app /other/x"),
        ("/a?b=../../c", "app /a?b=../../c"),
    ] {
        assert_eq!(get(&proxy, target), (200, want.into()), "{target}");
    }
    // Each upstream got exactly what its answer says: nothing was re-normalised after routing.
    assert_eq!(public.requests().len(), 5);
    assert_eq!(app.requests().len(), 4);
}

#[test]
fn encoded_slashes_and_backslashes_stay_encoded_and_are_no_separators() {
    let (proxy, app, _public) = guarded(None);
    for (target, upstream) in [
        ("/admin%2F..", "/admin%2F.."),
        ("/admin%2f..", "/admin%2F.."),
        ("/public%2F..%2Fadmin", "/public%2F..%2Fadmin"),
        ("/public%5C..%5Cadmin", "/public%5C..%5Cadmin"),
    ] {
        let (status, body) = get(&proxy, target);
        assert_eq!((status, body), (200, format!("app {upstream}")), "{target}");
    }
    assert_eq!(app.requests().len(), 4);
}

#[test]
fn paths_above_the_root_and_broken_escapes_are_refused() {
    let (proxy, app, public) = guarded(None);
    for target in [
        "/..",
        "/../admin",
        "/a/../../b",
        "/%2e%2e/",
        "/public/%2E%2E/..",
        "/bad%zz",
        "/bad%4",
    ] {
        let mut conn = proxy.connect();
        let response = conn.roundtrip(&get_request(target));
        assert_eq!(response.status(), 400, "{target}");
        assert!(response.head.connection_has("close"), "{target}");
    }
    assert!(app.requests().is_empty() && public.requests().is_empty());
}

#[test]
fn without_merge_slashes_empty_segments_are_kept() {
    let (proxy, _app, _public) = guarded(Some(false));
    assert_eq!(get(&proxy, "//admin"), (200, "app //admin".into()));
    assert_eq!(get(&proxy, "/a//b/../c"), (200, "app /a//c".into()));
    // Dot segments are still resolved.
    assert_eq!(get(&proxy, "/v1/../admin").0, 403);
}

#[test]
fn without_routes_the_normalised_path_is_forwarded_too() {
    let app = Backend::named("app");
    let proxy = Proxy::start(&TestConfig::new(&[app.port]));
    assert_eq!(
        get(&proxy, "/a/./b//c/../d?x=/./"),
        (200, "app /a/b/d?x=/./".into())
    );
    assert_eq!(get(&proxy, "/..").0, 400);
}
