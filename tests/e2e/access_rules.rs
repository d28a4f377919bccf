//! A route's `allow`/`deny` (403) on the client address, also as a trusted proxy names it;
//! `basic_auth` from an htpasswd file of bcrypt and argon2 hashes (401 with
//! `WWW-Authenticate`; `Authorization` not passed on unless `forward_authorization`); and both
//! reloaded with the config.

use crate::common::admin::start_with_admin;
use crate::common::config::{BasicAuthEntry, RouteEntry};
use crate::common::{connect_from, request_bytes, Backend, TestConfig};
use base64::Engine;

const ARGON2_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$vAhJ00CQVNcow2lsYeqnUw$1ha5QlkuuvfHgVqlI8uUZpdpE+tlNgnV6HfEKttzuxU";

fn get_as(path: &str, user_pass: Option<&str>, xff: Option<&str>) -> Vec<u8> {
    let auth = user_pass.map(|up| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(up)
        )
    });
    let mut headers = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    if let Some(xff) = xff {
        headers.push(("X-Forwarded-For", xff));
    }
    request_bytes("GET", path, &headers, b"")
}

#[test]
fn allow_and_deny_answer_403_on_the_client_address() {
    let backend = Backend::echo_target();
    let config = TestConfig::new(&[backend.port])
        .with(|c| c.server.trusted_proxies = Some(vec!["127.0.0.9".into()]))
        .route(RouteEntry::to("default").with(|r| {
            r.path_prefix = Some("/admin/".into());
            r.allow = Some(vec!["127.0.0.0/8".into()]);
            r.deny = Some(vec!["127.0.0.3".into()]);
        }))
        .route(RouteEntry::to("default").with(|r| {
            r.path_prefix = Some("/office/".into());
            r.allow = Some(vec!["10.0.0.0/8".into()]);
        }));
    let (proxy, admin) = start_with_admin(config.clone());
    let status = |from: &str, path: &str, xff: Option<&str>| {
        connect_from(from, proxy.port)
            .roundtrip(&get_as(path, None, xff))
            .status()
    };
    assert_eq!(status("127.0.0.1", "/admin/x", None), 200);
    assert_eq!(status("127.0.0.3", "/admin/x", None), 403, "deny wins");
    assert_eq!(status("127.0.0.1", "/office/x", None), 403);
    assert_eq!(status("127.0.0.1", "/other", None), 200, "no rules");
    // A client behind the trusted proxy is judged by its own address; from anyone else the
    // field is the client's word and changes nothing.
    assert_eq!(status("127.0.0.9", "/office/x", Some("10.1.2.3")), 200);
    assert_eq!(status("127.0.0.1", "/office/x", Some("10.1.2.3")), 403);
    assert_eq!(status("127.0.0.9", "/admin/x", Some("127.0.0.3")), 403);
    let metrics = admin.metrics();
    assert_eq!(
        metrics.value("ringproxy_access_refused_total", &[("reason", "forbidden")]),
        4.0
    );
    let targets: Vec<String> = backend
        .requests()
        .iter()
        .map(|r| r.req.head.target().to_string())
        .collect();
    assert_eq!(targets, ["/admin/x", "/other", "/office/x"]);

    // Reloaded with the config: the office opens to everyone.
    let open = config.with(|c| c.routes[1].allow = None);
    proxy.write_config(&open.to_toml());
    assert_eq!(admin.post("/reload", "").status(), 200);
    assert_eq!(status("127.0.0.1", "/office/x", None), 200);
}

#[test]
fn basic_auth_takes_bcrypt_and_argon2_users_and_keeps_the_credentials_here() {
    let backend = Backend::echo_target();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let bcrypt_hash = bcrypt::hash("open sesame", 4).unwrap();
    std::fs::write(
        &users,
        format!("# staff\nali:{bcrypt_hash}\nbea:{ARGON2_HASH}\n"),
    )
    .unwrap();
    let auth = BasicAuthEntry {
        users_file: users.display().to_string(),
        realm: Some("staff".into()),
    };
    let config = TestConfig::new(&[backend.port])
        .route(RouteEntry::to("default").with(|r| {
            r.path_prefix = Some("/private/".into());
            r.basic_auth = Some(auth.clone());
        }))
        .route(RouteEntry::to("default").with(|r| {
            r.path_prefix = Some("/passthrough/".into());
            r.basic_auth = Some(auth.clone());
            r.forward_authorization = Some(true);
        }));
    let (proxy, admin) = start_with_admin(config.clone());
    let mut conn = proxy.connect();
    let challenge = conn.roundtrip(&get_as("/private/a", None, None));
    assert_eq!(challenge.status(), 401);
    assert_eq!(
        challenge.header("www-authenticate"),
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    assert!(
        !challenge.head.connection_has("close"),
        "keep-alive after a 401"
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/a", Some("ali:wrong"), None))
            .status(),
        401
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/a", Some("eve:open sesame"), None))
            .status(),
        401
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/b", Some("ali:open sesame"), None))
            .status(),
        200
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/c", Some("ali:open sesame"), None))
            .status(),
        200
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/d", Some("bea:correct horse"), None))
            .status(),
        200
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/e", Some("bea:correct mare"), None))
            .status(),
        401
    );
    assert_eq!(
        conn.roundtrip(&get_as("/passthrough/f", Some("ali:open sesame"), None))
            .status(),
        200
    );
    let seen = backend.requests();
    let targets: Vec<&str> = seen.iter().map(|r| r.req.head.target()).collect();
    assert_eq!(
        targets,
        ["/private/b", "/private/c", "/private/d", "/passthrough/f"]
    );
    for r in &seen[..3] {
        assert!(
            !r.req.head.has("authorization"),
            "credentials passed on: {:?}",
            r.req.head
        );
    }
    assert!(seen[3]
        .req
        .head
        .get("authorization")
        .unwrap()
        .starts_with("Basic "));
    assert_eq!(
        admin.metrics().value(
            "ringproxy_access_refused_total",
            &[("reason", "unauthorized")]
        ),
        4.0
    );
    let lines = proxy.wait_log_lines(4, "401s", |l| l.contains(" status=401"));
    assert!(
        lines[0].contains("reason=\"authentication required\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("reason=\"wrong credentials\""),
        "{}",
        lines[1]
    );

    // The users file is read again on reload: ali is gone.
    std::fs::write(&users, format!("bea:{ARGON2_HASH}\n")).unwrap();
    proxy.write_config(&config.to_toml());
    assert_eq!(admin.post("/reload", "").status(), 200);
    assert_eq!(
        conn.roundtrip(&get_as("/private/g", Some("ali:open sesame"), None))
            .status(),
        401
    );
    assert_eq!(
        conn.roundtrip(&get_as("/private/h", Some("bea:correct horse"), None))
            .status(),
        200
    );
}
