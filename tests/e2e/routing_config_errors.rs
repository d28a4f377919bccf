//! Config errors of groups and routes: each names the file, the line and the key (an ambiguous
//! pair of routes names both lines), for `--check` and at startup, and the process refuses to
//! run. Raw TOML here, since line numbers are the point.

use crate::common::*;

const GROUP: &str = "[upstreams.api]\nbackends = [{ url = \"http://127.0.0.1:9001\" }]\n";

/// (what, file text, key named, line named, line of the other route if any).
fn invalid_configs() -> Vec<(&'static str, String, &'static str, usize, Option<usize>)> {
    vec![
        (
            "unknown upstream in a route",
            format!("{GROUP}\n[[routes]]\npath_prefix = \"/v1/\"\nupstream = \"apii\"\n"),
            "routes[0].upstream",
            6,
            None,
        ),
        (
            "empty group",
            "[upstreams.api]\nstrategy = \"least_conn\"\n\n[[routes]]\nupstream = \"api\"\n".into(),
            "upstreams.api.backends",
            1,
            None,
        ),
        (
            "duplicate routes",
            format!(
                "{GROUP}\n[[routes]]\npath_prefix = \"/v1/\"\nupstream = \"api\"\n\n\
                 [[routes]]\npath_prefix = \"/v1/\"\nupstream = \"api\"\n"
            ),
            "routes[1]",
            8,
            Some(4),
        ),
        (
            "ambiguous routes: same host, path and as many overlapping conditions",
            format!(
                "{GROUP}\n[[routes]]\nhosts = [\"a.example\", \"b.example\"]\nmethods = [\"GET\", \"POST\"]\n\
                 upstream = \"api\"\n\n[[routes]]\nhosts = [\"B.example.\"]\nheaders = {{ \"X-Canary\" = \"1\" }}\n\
                 upstream = \"api\"\n"
            ),
            "routes[1]",
            9,
            Some(4),
        ),
        (
            "bad regex",
            format!("{GROUP}[[routes]]\npath_regex = \"^/u/([0-9]+$\"\nupstream = \"api\"\n"),
            "routes[0].path_regex",
            4,
            None,
        ),
        (
            "regex over the size limit",
            format!("{GROUP}[[routes]]\npath_regex = \"^/(\\\\w{{50}}){{50}}$\"\nupstream = \"api\"\n"),
            "routes[0].path_regex",
            4,
            None,
        ),
        (
            "wildcard not in leading position",
            format!("{GROUP}[[routes]]\nhosts = [\n  \"ok.example\",\n  \"api.*.example\",\n]\nupstream = \"api\"\n"),
            "routes[0].hosts[1]",
            6,
            None,
        ),
        (
            "host with a port",
            format!("{GROUP}[[routes]]\nhosts = [\"api.example:8080\"]\nupstream = \"api\"\n"),
            "routes[0].hosts[0]",
            4,
            None,
        ),
        (
            "strip_prefix without path_prefix",
            format!("{GROUP}[[routes]]\npath = \"/v1\"\nstrip_prefix = true\nupstream = \"api\"\n"),
            "routes[0].strip_prefix",
            5,
            None,
        ),
        (
            "neither upstream, redirect nor respond",
            format!("{GROUP}\n[[routes]]\npath = \"/x\"\n"),
            "routes[0]",
            4,
            None,
        ),
        (
            "both upstream and respond",
            format!("{GROUP}[[routes]]\nupstream = \"api\"\nrespond = {{ status = 200 }}\n"),
            "routes[0]",
            3,
            None,
        ),
        (
            "two path conditions",
            format!("{GROUP}[[routes]]\npath = \"/x\"\npath_prefix = \"/x/\"\nupstream = \"api\"\n"),
            "routes[0]",
            3,
            None,
        ),
        (
            "a path that can never match",
            format!("{GROUP}[[routes]]\npath_prefix = \"/a/../b/\"\nupstream = \"api\"\n"),
            "routes[0].path_prefix",
            4,
            None,
        ),
        (
            "redirect status",
            "[[routes]]\nredirect = { to = \"/new\", status = 200 }\n".into(),
            "routes[0].redirect.status",
            2,
            None,
        ),
        (
            "unknown route key",
            format!("{GROUP}[[routes]]\nupstream = \"api\"\npath_prefx = \"/v1/\"\n"),
            "path_prefx",
            5,
            None,
        ),
        (
            "hop-by-hop field set",
            format!("{GROUP}[[routes]]\nupstream = \"api\"\nset_request_headers = {{ \"Connection\" = \"x\" }}\n"),
            "routes[0].set_request_headers.Connection",
            5,
            None,
        ),
        (
            "hash_key without strategy hash",
            format!("{GROUP}hash_key = \"client_ip\"\n[[routes]]\nupstream = \"api\"\n"),
            "upstreams.api.hash_key",
            3,
            None,
        ),
        (
            "[[backends]] and [upstreams.default] both",
            "[[backends]]\nurl = \"http://127.0.0.1:9001\"\n\n[upstreams.default]\nbackends = [{ url = \"http://127.0.0.1:9002\" }]\n".into(),
            "upstreams.default",
            4,
            None,
        ),
        (
            "a group backend's bad weight",
            "[upstreams.api]\n[[upstreams.api.backends]]\nurl = \"http://127.0.0.1:9001\"\nweight = 0\n[[routes]]\nupstream = \"api\"\n".into(),
            "upstreams.api.backends[0].weight",
            4,
            None,
        ),
        (
            "no routes and no default group",
            GROUP.into(),
            "backends",
            1,
            None,
        ),
    ]
}

#[test]
fn route_and_group_errors_name_file_line_and_key() {
    for (what, toml, key, line, other) in invalid_configs() {
        let config = TempConfig::new(&toml);
        let path = config.path.to_str().expect("utf-8 temp path");
        let started = run_to_exit(&["-c".as_ref(), config.path.as_os_str()], &[], None);
        for (mode, outcome) in [("--check", check_config(&config)), ("startup", started)] {
            assert_eq!(outcome.code(), Some(1), "{what} ({mode}): {outcome:?}");
            let stderr = &outcome.stderr;
            let located = format!("{path}:{line}:");
            let error = stderr
                .lines()
                .find(|l| l.contains(&located) && l.contains(key))
                .unwrap_or_else(|| panic!("{what} ({mode}): no {located} {key}: {outcome:?}"));
            if let Some(other) = other {
                assert!(
                    error.contains(&format!("{path}:{other}")),
                    "{what} ({mode}): the other route's line {other} missing: {error}"
                );
            }
        }
    }
}

#[test]
fn a_config_with_groups_and_routes_checks_ok() {
    let config = TempConfig::new(&format!(
        "[[backends]]\nurl = \"http://127.0.0.1:9001\"\n{GROUP}\n\
         [[routes]]\nhosts = [\"api.example.com\", \"*.api.example.com\"]\npath_prefix = \"/v1/\"\n\
         methods = [\"GET\", \"POST\"]\nupstream = \"api\"\nstrip_prefix = true\n\
         [[routes]]\nhosts = [\"api.example.com\"]\npath_prefix = \"/v1/\"\nmethods = [\"DELETE\"]\nupstream = \"api\"\n\
         [[routes]]\npath_prefix = \"/old/\"\nredirect = {{ to = \"https://example.com/new/\", status = 308, keep_path = true }}\n\
         [[routes]]\npath = \"/robots.txt\"\nrespond = {{ status = 200, body = \"User-agent: *\\nDisallow:\\n\", content_type = \"text/plain\" }}\n"
    ));
    let outcome = check_config(&config);
    assert_eq!(outcome.code(), Some(0), "{outcome:?}");
    assert!(outcome.stdout.contains("config ok"), "{outcome:?}");
}
