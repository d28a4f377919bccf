//! Config errors of client identity, rate limits and access rules: each names the file, the
//! line and the key, for `--check`. Raw TOML here, since line numbers are the point.

use crate::common::*;

const BACKEND: &str = "[[backends]]\nurl = \"http://127.0.0.1:9001\"\n";
const LIMIT: &str = "[rate_limits.api]\nrequests_per_second = 10\n";

#[test]
fn limit_and_access_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let md5 = dir.path().join("md5-users");
    let good = bcrypt::hash("x", 4).unwrap();
    std::fs::write(&md5, format!("ali:{good}\nbob:$apr1$x$y\n")).unwrap();
    // (what, file text, key named, line named, also in the message)
    let cases: Vec<(&str, String, &str, usize, &str)> = vec![
        (
            "a route naming an undefined limit",
            format!("{BACKEND}{LIMIT}\n[[routes]]\nupstream = \"default\"\nrate_limits = [\"api\", \"apii\"]\n"),
            "routes[0].rate_limits[1]",
            8,
            "no rate limit \"apii\"",
        ),
        (
            "a limit nobody uses",
            format!("{BACKEND}{LIMIT}"),
            "rate_limits.api",
            3,
            "used by no route",
        ),
        (
            "both rates",
            format!("{BACKEND}[server]\nrate_limits = [\"api\"]\n{LIMIT}requests_per_minute = 5\n"),
            "rate_limits.api.requests_per_minute",
            7,
            "not both",
        ),
        (
            "an unknown key kind",
            format!("{BACKEND}[server]\nrate_limits = [\"api\"]\n{LIMIT}key = \"cookie:sid\"\n"),
            "rate_limits.api.key",
            7,
            "header:NAME",
        ),
        (
            "max_delay_ms without delay",
            format!("{BACKEND}[server]\nrate_limits = [\"api\"]\n{LIMIT}max_delay_ms = 100\n"),
            "rate_limits.api.max_delay_ms",
            7,
            "mode = \"delay\"",
        ),
        (
            "a store that is not redis",
            format!("{BACKEND}[server]\nrate_limits = [\"api\"]\n{LIMIT}store = \"http://127.0.0.1:6379\"\n"),
            "rate_limits.api.store",
            7,
            "redis://",
        ),
        (
            "a bad trusted proxy",
            format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.1.2.3/8\"]\n{BACKEND}"),
            "server.trusted_proxies[1]",
            2,
            "10.0.0.0/8",
        ),
        (
            "the PROXY protocol with nobody trusted",
            format!("[server]\nproxy_protocol = true\n{BACKEND}"),
            "server.proxy_protocol",
            2,
            "trusted_proxies",
        ),
        (
            "a bad allow entry",
            format!("{BACKEND}\n[[routes]]\nupstream = \"default\"\nallow = [\"localhost\"]\n"),
            "routes[0].allow[0]",
            6,
            "\"localhost\"",
        ),
        (
            "a missing users file",
            format!("{BACKEND}\n[[routes]]\nupstream = \"default\"\nbasic_auth = {{ users_file = \"nope\" }}\n"),
            "routes[0].basic_auth.users_file",
            6,
            "cannot read",
        ),
        (
            "an MD5 hash",
            format!(
                "{BACKEND}\n[[routes]]\nupstream = \"default\"\nbasic_auth = {{ users_file = \"{}\" }}\n",
                md5.display()
            ),
            "routes[0].basic_auth.users_file",
            6,
            "md5-users:2: user \"bob\"",
        ),
        (
            "forward_authorization without basic_auth",
            format!("{BACKEND}\n[[routes]]\nupstream = \"default\"\nforward_authorization = true\n"),
            "routes[0].forward_authorization",
            6,
            "basic_auth only",
        ),
        (
            "a bad send_proxy_protocol",
            format!("[upstream]\nsend_proxy_protocol = \"v3\"\n{BACKEND}"),
            "upstream.send_proxy_protocol",
            2,
            "\"v1\" or \"v2\"",
        ),
    ];
    for (what, text, key, line, message) in cases {
        let config = TempConfig::new(&text);
        let outcome = check_config(&config);
        assert_eq!(outcome.code(), Some(1), "{what}: {outcome:?}");
        let place = format!("{}:{line}:", config.path.display());
        let found = outcome
            .stderr
            .lines()
            .find(|l| l.contains(&place) && l.contains(&format!(": {key}: ")))
            .unwrap_or_else(|| panic!("{what}: no line with {place} and {key}: {outcome:?}"));
        assert!(found.contains(message), "{what}: {found}");
    }
}

#[test]
fn a_config_with_limits_and_access_rules_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users"),
        format!("ali:{}\n", bcrypt::hash("x", 4).unwrap()),
    )
    .unwrap();
    let text = format!(
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\nproxy_protocol = true\n\
         rate_limits = [\"global\"]\n{BACKEND}\
         [rate_limits.global]\nrequests_per_second = 1000\nburst = 200\n\
         [rate_limits.api]\nkey = \"client_ip+route\"\nrequests_per_minute = 600\nmode = \"delay\"\n\
         max_delay_ms = 250\nmax_keys = 50000\nstore = \"redis://127.0.0.1:6379/2\"\n\
         sync_interval_ms = 50\non_store_error = \"allow\"\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"default\"\nrate_limits = [\"api\"]\n\
         allow = [\"10.0.0.0/8\"]\ndeny = [\"10.9.0.0/16\"]\nbasic_auth = {{ users_file = \"users\", realm = \"API\" }}\n"
    );
    let config = TempConfig::new(&text);
    std::fs::copy(dir.path().join("users"), config.dir.path().join("users")).unwrap();
    let outcome = check_config(&config);
    assert_eq!(outcome.code(), Some(0), "{outcome:?}");
}
