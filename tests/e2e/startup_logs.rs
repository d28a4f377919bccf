//! Startup and logs: each worker reports its I/O driver, `--workers` overrides the config,
//! the epoll fallback (MONOIO_FORCE_LEGACY_DRIVER=1) still proxies, and requests are access-logged.

use crate::common::*;
use std::thread;
use std::time::Duration;

fn is_driver_line(line: &str) -> bool {
    line.contains("driver") && (line.contains("io_uring") || line.contains("epoll"))
}

#[test]
fn worker_logs_its_driver_and_listening() {
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    proxy.wait_log_lines(1, "naming the driver", is_driver_line);
    proxy.wait_log_lines(1, "containing `listening`", |l| l.contains("listening"));
}

/// Driver lines logged by a one-worker config started with `args`, once `expected` appeared.
fn driver_lines_with(args: &[&str], expected: usize) -> usize {
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start_with(&TestConfig::new(&[backend.port]), args, &[], |_| {});
    proxy.wait_log_lines(expected, "naming the driver", is_driver_line);
    proxy.connect().get_ok("/");
    thread::sleep(Duration::from_millis(200));
    proxy.stdout().lines().filter(|l| is_driver_line(l)).count()
}

#[test]
fn workers_flag_overrides_config() {
    // Each worker logs one driver line; other startup lines are the same for both runs.
    let one = driver_lines_with(&[], 1);
    let three = driver_lines_with(&["--workers", "3"], one + 2);
    assert_eq!(
        three,
        one + 2,
        "--workers 3 should start two more workers than workers = 1"
    );
}

#[test]
fn epoll_fallback_still_proxies() {
    let backend = Backend::body_digest();
    let proxy = Proxy::start_with_env(
        &TestConfig::new(&[backend.port]),
        &[("MONOIO_FORCE_LEGACY_DRIVER", "1")],
    );
    proxy.wait_log_lines(1, "with driver epoll", |l| {
        l.contains("driver") && l.contains("epoll")
    });
    assert!(
        !proxy
            .stdout()
            .lines()
            .any(|l| l.contains("driver") && l.contains("io_uring")),
        "io_uring reported although epoll was forced:\n{}",
        proxy.logs()
    );
    let mut conn = proxy.connect();
    for _ in 0..3 {
        assert_eq!(conn.get_ok("/ka").text(), sha256_hex(b""));
    }
    // Quiet long enough to be parked, then woken through the epoll driver.
    thread::sleep(Duration::from_millis(900));
    assert_eq!(conn.get_ok("/after-park").text(), sha256_hex(b""));
    assert_large_post_arrives(&proxy, &backend);
    // A second 1 MiB body on the same connections: the spliced path left them usable.
    assert_large_post_arrives(&proxy, &backend);
}

#[test]
fn each_request_is_access_logged() {
    let backend = Backend::fixed("ok");
    let proxy = Proxy::start(&TestConfig::new(&[backend.port]));
    proxy.connect().get_ok("/logged-path?x=1");
    let lines = proxy.wait_log_lines(1, "access-logging /logged-path", |l| {
        l.contains("access") && l.contains("/logged-path")
    });
    let line = &lines[0];
    for field in ["GET", "200", "127.0.0.1", &backend.port.to_string()] {
        assert!(
            line.contains(field),
            "access log line lacks {field:?}: {line}"
        );
    }
}

#[test]
fn logs_are_json_by_default() {
    let backend = Backend::fixed("ok");
    // The base config without its log format: the default format applies.
    let config = TestConfig::new(&[backend.port]).with(|c| c.logging.format = None);
    let toml = config.to_toml();
    assert!(!toml.contains("format"), "{toml}");
    let proxy = Proxy::start(&config);
    proxy.connect().get_ok("/json");
    proxy.wait_log_lines(1, "naming the driver", is_driver_line);
    proxy.wait_log_lines(1, "access-logging /json", |l| l.contains("/json"));
    for line in proxy.stdout().lines().filter(|l| !l.trim().is_empty()) {
        let line = line.trim();
        assert!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line}"
        );
    }
}
