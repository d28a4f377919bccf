//! Certificates reload without a restart (SIGHUP and `POST /reload`): new handshakes get the new
//! certificate while connections in flight keep their session, with no request failing under
//! load; a broken file refuses the reload and the running certificate stays, the log saying why.

use crate::common::tls::*;
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Copies `issued`'s files over the files the config names.
fn install(issued: &Issued, at: &Issued) {
    std::fs::copy(&issued.cert, &at.cert).expect("copy cert");
    std::fs::copy(&issued.key, &at.key).expect("copy key");
}

#[test]
fn certificate_reload_under_load_serves_the_new_one_with_no_failed_request() {
    let pki = Pki::new("CA");
    let served = pki.issue("served", &["test.local"]);
    let old = pki.issue("old", &["test.local"]);
    let new = pki.issue("new", &["test.local"]);
    install(&old, &served);
    let backend = Backend::fixed("ok");
    let config = TestConfig::new(&[backend.port])
        .tls(vec![served.entry()])
        .admin_api();
    let proxy = Proxy::start(&config);
    let admin = crate::common::admin::Admin::of(&config);
    let client = ClientOpts {
        verify_with: Some(&pki),
        no_resumption: true,
        ..ClientOpts::default()
    }
    .config();
    let stop = Arc::new(AtomicBool::new(false));
    // (old certificate served, outcome) of each request.
    type Seen = Vec<(bool, Result<(), String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (old_der, new_der) = (old.der.clone(), new.der.clone());
    // A long-lived connection, set up before the reload, keeps its session.
    let mut kept = tls_connect_ok(config.tls_port(), &client, "test.local");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, seen, client, old_der) =
                (stop.clone(), seen.clone(), client.clone(), old_der.clone());
            let port = config.tls_port();
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let outcome = tls_connect(port, &client, "test.local").and_then(|mut conn| {
                        let is_old = served_cert(&conn) == old_der;
                        conn.try_send(&get_request("/"))
                            .and_then(|()| conn.read_response("GET"))
                            .map_err(|e| e.to_string())
                            .and_then(|r| {
                                (r.status() == 200)
                                    .then_some(is_old)
                                    .ok_or_else(|| format!("status {}", r.status()))
                            })
                    });
                    let entry = match outcome {
                        Ok(is_old) => (is_old, Ok(())),
                        Err(e) => (false, Err(e)),
                    };
                    seen.lock().expect("seen").push(entry);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    install(&new, &served);
    proxy.signal(libc::SIGHUP);
    let renewed = poll(IO_TIMEOUT, || {
        tls_connect(config.tls_port(), &client, "test.local")
            .map(|c| served_cert(&c) == new_der)
            .unwrap_or(false)
    });
    assert!(
        renewed.is_some(),
        "new handshakes still get the old certificate:\n{}",
        proxy.logs()
    );
    // Reload through the admin API as well, under the same load.
    assert_eq!(admin.post("/reload", "").status(), 200);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("load thread");
    }
    let seen = seen.lock().expect("seen");
    let failures: Vec<_> = seen.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:?}\n{}",
        failures.len(),
        seen.len(),
        proxy.logs()
    );
    assert!(
        seen.iter().any(|(old, _)| *old),
        "some requests before the reload"
    );
    assert!(seen.iter().any(|(old, _)| !*old), "some after it");
    assert!(served_cert(&kept) == old.der);
    assert_eq!(
        kept.roundtrip(&get_request("/kept")).status(),
        200,
        "in-flight session kept"
    );
}

#[test]
fn a_broken_certificate_file_refuses_the_reload_and_keeps_the_running_one() {
    let pki = Pki::new("CA");
    let served = pki.issue("served", &["test.local"]);
    let original = served.der.clone();
    let other = pki.issue("other", &["test.local"]);
    let backend = Backend::fixed("ok");
    let config = TestConfig::new(&[backend.port]).tls(vec![served.entry()]);
    let proxy = Proxy::start(&config);
    let client = ClientOpts {
        no_resumption: true,
        ..ClientOpts::default()
    }
    .config();
    // The key of another certificate: a mismatch.
    std::fs::copy(&other.key, &served.key).expect("copy key");
    proxy.signal(libc::SIGHUP);
    let lines = proxy.wait_log_lines(1, "the refused reload", |l| l.contains("reload refused"));
    assert!(lines[0].contains("tls.certificates[0].key"), "{}", lines[0]);
    assert!(
        lines[0].contains("does not belong to the certificate"),
        "{}",
        lines[0]
    );
    let mut conn = tls_connect_ok(config.tls_port(), &client, "test.local");
    assert!(
        served_cert(&conn) == original,
        "the running certificate stays"
    );
    assert_eq!(conn.roundtrip(&get_request("/")).status(), 200);
    // Garbage in the certificate file: the same.
    std::fs::write(&served.cert, "not a certificate").expect("write");
    proxy.signal(libc::SIGHUP);
    proxy.wait_log_lines(1, "the second refused reload", |l| {
        l.contains("reload refused") && l.contains("tls.certificates[0].cert")
    });
    let conn = tls_connect_ok(config.tls_port(), &client, "test.local");
    assert!(served_cert(&conn) == original);
}
