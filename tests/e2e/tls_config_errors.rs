//! TLS config errors, each named with file, line and key by `--check` (and refused at start):
//! a missing file, a key that does not match its certificate, PEM that is not, a chain out of
//! order, a certificate that names no host, wrong values; and the warning for a certificate
//! that expires within 14 days, which still passes.

use crate::common::tls::*;
use crate::common::*;

/// Runs `--check` on `text` written next to the PKI's files.
fn check(pki: &Pki, text: &str) -> RunOutcome {
    let path = pki.write("config.toml", text);
    run_to_exit(
        &["-c", path.to_str().expect("utf-8 path"), "--check"],
        &[],
        None,
    )
}

fn config_with(cert: &str, key: &str, extra: &str) -> String {
    format!(
        "[[backends]]\nurl = \"http://127.0.0.1:9\"\n\n[tls]\nport = 3443\n{extra}\n[[tls.certificates]]\ncert = \"{cert}\"\nkey = \"{key}\"\n"
    )
}

#[test]
fn every_tls_file_problem_is_named_with_file_line_and_key() {
    let pki = Pki::new("CA");
    let good = pki.issue("good", &["a.example"]);
    let other = pki.issue("other", &["b.example"]);
    let (cert, key) = (relative(&good.cert), relative(&good.key));
    pki.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    pki.write("empty.pem", "nothing here\n");
    // The chain the wrong way round: the CA first.
    let chain = std::fs::read_to_string(&good.cert).expect("chain");
    let parts: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    pki.write("reversed.pem", &format!("{}{}", parts[1], parts[0]));
    let cases = [
        (
            config_with("missing.pem", &key, ""),
            "tls.certificates[0].cert",
            "cannot read",
            8,
        ),
        (
            config_with(&cert, "missing.key", ""),
            "tls.certificates[0].key",
            "cannot read",
            9,
        ),
        (
            config_with(&cert, &relative(&other.key), ""),
            "tls.certificates[0].key",
            "does not belong to the certificate",
            9,
        ),
        (
            config_with("garbage.pem", &key, ""),
            "tls.certificates[0].cert",
            "not a PEM certificate",
            8,
        ),
        (
            config_with("empty.pem", &key, ""),
            "tls.certificates[0].cert",
            "no PEM certificate",
            8,
        ),
        (
            config_with(&cert, "empty.pem", ""),
            "tls.certificates[0].key",
            "no PEM private key",
            9,
        ),
        (
            config_with("reversed.pem", &key, ""),
            "tls.certificates[0]",
            "out of order",
            8,
        ),
        (
            config_with(&cert, &key, "min_version = \"1.1\""),
            "tls.min_version",
            "\"1.2\" or \"1.3\"",
            6,
        ),
        (
            config_with(&cert, &key, "alpn = [\"h2\"]"),
            "tls.alpn",
            "http/1.1",
            6,
        ),
        (
            config_with(&cert, &key, "port = 3443\n"),
            "tls",
            "duplicate key",
            6,
        ),
    ];
    for (text, key_path, message, line) in cases {
        let out = check(&pki, &text);
        assert_eq!(out.code(), Some(1), "{key_path}: {out:?}");
        let want = format!("config.toml:{line}:");
        let error = out
            .stderr
            .lines()
            .find(|l| l.contains(key_path) && l.contains(message))
            .unwrap_or_else(|| panic!("no error naming {key_path} with {message:?}:\n{out:?}"));
        assert!(error.contains(&want), "{key_path} on line {line}: {error}");
    }
    let fine = check(&pki, &config_with(&cert, &key, ""));
    assert_eq!(fine.code(), Some(0), "{fine:?}");
    assert!(fine.stdout.contains("config ok"));
}

#[test]
fn a_certificate_expiring_within_14_days_warns_but_passes() {
    let pki = Pki::new("CA");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let in_five_days =
        rcgen::date_time_ymd(1970, 1, 1) + now + std::time::Duration::from_secs(5 * 86400);
    let soon = pki.issue_with("soon", &["a.example"], |p| p.not_after = in_five_days);
    let out = check(
        &pki,
        &config_with(&relative(&soon.cert), &relative(&soon.key), ""),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let warning = out
        .stderr
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        warning.contains("tls.certificates[0].cert")
            && warning.contains("expires in")
            && warning.contains("days"),
        "{warning}"
    );
}

#[test]
fn upstream_tls_files_are_checked_too() {
    let pki = Pki::new("CA");
    let text = "[upstream]\ntls_ca = \"nope.pem\"\n\n[[backends]]\nurl = \"https://127.0.0.1:9\"\n";
    let out = check(&pki, text);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .contains("config.toml:2:1: upstream.tls_ca: cannot read"),
        "{out:?}"
    );
    let text =
        "[upstream]\ntls_client_cert = \"c.pem\"\n\n[[backends]]\nurl = \"https://127.0.0.1:9\"\n";
    let out = check(&pki, text);
    assert!(
        out.stderr
            .contains("upstream.tls_client_key: tls_client_cert needs tls_client_key"),
        "{out:?}"
    );
}
