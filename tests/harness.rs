//! Tests of the test harness itself (`tests/common`): the PKI verifies with OpenSSL, the echo
//! upstreams answer, the probes report what they should. No gateway involved.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Crl, X509StoreContext, X509VerifyResult, X509};

/// Verifies `leaf` (with `untrusted` intermediates) against `roots`; returns OpenSSL's verdict.
fn verify(leaf: &X509, untrusted: &[&X509], roots: &[&X509]) -> X509VerifyResult {
    let mut store = X509StoreBuilder::new().expect("store");
    for r in roots {
        store.add_cert((*r).clone()).expect("add root");
    }
    let store = store.build();
    let mut chain = Stack::new().expect("stack");
    for c in untrusted {
        chain.push((*c).clone()).expect("push");
    }
    let mut ctx = X509StoreContext::new().expect("ctx");
    ctx.init(&store, leaf, &chain, |c| {
        c.verify_cert()?;
        Ok(c.error())
    })
    .expect("verify")
}

#[test]
fn pki_chains_verify_with_openssl() {
    let pki = Pki::new();
    let ok = X509VerifyResult::OK;
    assert_eq!(
        verify(
            &pki.server.cert,
            &[&pki.intermediate.cert],
            &[&pki.root.cert]
        ),
        ok
    );
    assert_eq!(verify(&pki.server_direct.cert, &[], &[&pki.root.cert]), ok);
    assert_eq!(verify(&pki.alice.cert, &[], &[&pki.root.cert]), ok);
    assert_eq!(
        verify(
            &pki.client_intermediate.cert,
            &[&pki.intermediate.cert],
            &[&pki.root.cert]
        ),
        ok
    );
    // Wrong CA, expired, missing intermediate.
    assert_ne!(
        verify(&pki.server_other_ca.cert, &[], &[&pki.root.cert]),
        ok
    );
    let expired = verify(
        &pki.server_expired.cert,
        &[&pki.intermediate.cert],
        &[&pki.root.cert],
    );
    assert_eq!(expired.error_string(), "certificate has expired");
    let missing = verify(&pki.server.cert, &[], &[&pki.root.cert]);
    assert_eq!(
        missing.error_string(),
        "unable to get local issuer certificate"
    );
}

#[test]
fn pki_depth_matches_seed_004_with_openssl_cli() {
    // The seed's matrix, reproduced with the openssl CLI against our files: depth 1 passes,
    // depth 0 fails with "certificate chain too long".
    let pki = Pki::new();
    let run = |depth: &str| {
        Command::new("openssl")
            .args(["verify", "-verify_depth", depth, "-CAfile"])
            .arg(&pki.root.cert_path)
            .arg("-untrusted")
            .arg(&pki.intermediate.cert_path)
            .arg(&pki.server.cert_path)
            .output()
            .expect("run openssl verify")
    };
    let one = run("1");
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stdout)
    );
    let zero = run("0");
    assert!(!zero.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&zero.stdout),
        String::from_utf8_lossy(&zero.stderr)
    );
    assert!(text.contains("certificate chain too long"), "{text}");
}

#[test]
fn pki_serials_distinct_files_and_crl() {
    let pki = Pki::new();
    let extra = pki.server_leaf("api", &["DNS:api.example.com"]);
    let leaves = [
        &pki.server,
        &pki.server_direct,
        &pki.server_other_ca,
        &pki.server_expired,
        &pki.server_wrong_name,
        &pki.alice,
        &pki.bob,
        &pki.client_expired,
        &pki.client_revoked,
        &pki.client_intermediate,
        &pki.client_other_ca,
        &extra,
    ];
    let mut serials: Vec<&str> = leaves.iter().map(|l| l.serial.as_str()).collect();
    serials.extend([
        pki.root.serial.as_str(),
        pki.intermediate.serial.as_str(),
        pki.other_root.serial.as_str(),
    ]);
    let n = serials.len();
    serials.sort_unstable();
    serials.dedup();
    assert_eq!(serials.len(), n, "serials must be distinct");

    for l in leaves {
        for p in [&l.cert_path, &l.key_path, &l.chain_path] {
            assert!(p.exists(), "{} missing", p.display());
        }
        assert_eq!(serial_hex(&l.cert), l.serial);
    }
    // Chains: leaf + intermediate for intermediate-issued leaves, leaf only for root-issued.
    assert_eq!(
        X509::stack_from_pem(pki.server.chain_pem.as_bytes())
            .expect("pem")
            .len(),
        2
    );
    assert_eq!(
        X509::stack_from_pem(pki.alice.chain_pem.as_bytes())
            .expect("pem")
            .len(),
        1
    );
    assert_eq!(extra.subject, "O=Portcullis Tests, CN=api.example.com");
    assert_eq!(pki.alice.subject, "O=Portcullis Tests, CN=alice");

    let crl = X509Crl::from_pem(pki.crl_pem.as_bytes()).expect("crl");
    assert!(crl
        .verify(&pki.root.cert.public_key().expect("key"))
        .expect("verify crl"));
    let revoked = crl.get_revoked().expect("revoked list");
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        revoked.get(0).map(|r| serial_hex_int(r.serial_number())),
        Some(pki.client_revoked.serial.clone())
    );
    // The CLI agrees the revoked client is revoked and alice is not.
    let crl_check = |leaf: &Leaf| {
        Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(&pki.root.cert_path)
            .arg("-CRLfile")
            .arg(&pki.crl_path)
            .arg(&leaf.cert_path)
            .output()
            .expect("openssl verify")
    };
    assert!(crl_check(&pki.alice).status.success());
    let out = crl_check(&pki.client_revoked);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked")
            || String::from_utf8_lossy(&out.stderr).contains("revoked")
    );
}

fn serial_hex_int(i: &openssl::asn1::Asn1IntegerRef) -> String {
    i.to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .expect("hex")
}

#[test]
fn http_echo_answers_and_keeps_alive() {
    let echo = HttpEcho::start("alpha");
    let r = Curl::new(&format!("{}/some/path?a=1&b=2", echo.url()))
        .header("X-Test: one")
        .header("X-Test: two")
        .data("hello")
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    let j = r.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/some/path");
    assert_eq!(j["query"], "a=1&b=2");
    assert_eq!(j["headers"]["x-test"], "one, two");
    assert_eq!(j["body_len"], 5);
    assert_eq!(j["server"], "alpha");
    assert_eq!(j["tls"], false);

    // Two requests on one curl command line share the connection.
    let before = echo.connections();
    let r = Curl::new(&format!("{}/a", echo.url()))
        .arg(format!("{}/b", echo.url()))
        .run();
    assert_eq!(r.status, 200);
    assert_eq!(
        echo.connections() - before,
        1,
        "keep-alive must reuse the connection"
    );

    // Chunked request body.
    let r = Curl::new(&echo.url())
        .header("Transfer-Encoding: chunked")
        .data("0123456789")
        .run();
    assert_eq!(r.json()["body_len"], 10);

    // Status and delay knobs.
    let r = Curl::new(&echo.url()).header("x-echo-status: 503").run();
    assert_eq!(r.status, 503);
    let t = std::time::Instant::now();
    let r = Curl::new(&echo.url()).header("x-echo-delay-ms: 300").run();
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn http_echo_stop_and_restart_same_port() {
    let mut echo = HttpEcho::start("beta");
    let port = echo.port();
    echo.stop();
    let r = Curl::new(&echo.url()).max_time(5).run();
    assert_eq!(r.status, 0, "stopped server must refuse: {r:#?}");
    echo.restart();
    assert_eq!(echo.port(), port);
    assert_eq!(Curl::new(&echo.url()).run().status, 200);
}

#[test]
fn https_echo_reports_sni_client_subject_and_handshakes() {
    let pki = Pki::new();
    let echo = HttpsEcho::start_with(
        "secure",
        &pki.server.chain_path,
        &pki.server.key_path,
        ClientAuth::Required(pki.root.cert_path.clone()),
    );
    // Verified against the root through the served intermediate, with a client cert.
    let r = Curl::at("https", "kong.example", echo.port(), "/x")
        .cacert(&pki.root.cert_path)
        .cert(&pki.alice.cert_path, &pki.alice.key_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    let j = r.json();
    assert_eq!(j["tls"], true);
    assert_eq!(j["sni"], "kong.example");
    assert_eq!(j["client_subject"], "O=Portcullis Tests, CN=alice");
    assert_eq!(echo.handshakes(), 1);

    // No client certificate: the handshake fails and is counted.
    let r = Curl::at("https", "kong.example", echo.port(), "/x")
        .cacert(&pki.root.cert_path)
        .run();
    assert_eq!(r.status, 0, "{r:#?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while echo.failed_handshakes() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(echo.failed_handshakes(), 1);

    // The probe sees the served leaf and the chain of two.
    let served = TlsProbe::new(echo.port())
        .sni("kong.example")
        .client_cert(&pki.bob.cert_path, &pki.bob.key_path)
        .verify_with(&pki.root.cert_path)
        .run()
        .expect("probe");
    assert_eq!(served.serial, pki.server.serial);
    assert_eq!(served.subject, "O=Portcullis Tests, CN=localhost");
    assert_eq!(served.chain_len, 2);

    // The CLI agrees.
    let cli = s_client(
        echo.port(),
        Some("kong.example"),
        &[
            "-cert",
            &pki.bob.cert_path.display().to_string(),
            "-key",
            &pki.bob.key_path.display().to_string(),
        ],
    )
    .expect("s_client");
    assert_eq!(cli.serial, pki.server.serial);
    assert_eq!(cli.chain_len, 2);
}

#[test]
fn tls_backend_answers_fixed_body() {
    let pki = Pki::new();
    let backend = TlsBackend::start(&pki.server.chain_path, &pki.server.key_path);
    let r = Curl::at("https", "localhost", backend.port(), "/anything")
        .cacert(&pki.root.cert_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"service": "tls-backend", "tls": "terminated-here"})
    );
}

#[test]
fn conf_dir_and_ports() {
    let conf = ConfDir::new().with("certs/a.pem", "x");
    assert!(conf.dir().join("certs/a.pem").exists());
    assert!(conf.dir().ends_with("conf"));
    let p = Ports::new();
    let yaml = p.settings_yaml(true);
    assert!(yaml.contains(&format!("127.0.0.1:{}", p.stream)));
    assert_ne!(closed_port(), 0);
}

#[test]
fn metrics_parser_reads_labels_in_any_order() {
    let text = "# HELP x y\n# TYPE portcullis_upstream_tls_failures_total counter\n\
portcullis_upstream_tls_failures_total{reason=\"certificate chain too long\",service=\"a\"} 2\n\
portcullis_upstream_tls_failures_total{service=\"b\",reason=\"say \\\"hi\\\", {x}\"} 1\n\
plain_metric 3.5\n";
    let name = "portcullis_upstream_tls_failures_total";
    assert_eq!(
        common::metrics::value(
            text,
            name,
            &[("service", "a"), ("reason", "certificate chain too long")]
        ),
        Some(2.0)
    );
    assert_eq!(
        common::metrics::value(text, name, &[("reason", "say \"hi\", {x}")]),
        Some(1.0)
    );
    assert_eq!(common::metrics::value(text, name, &[]), Some(3.0));
    assert_eq!(common::metrics::value(text, "plain_metric", &[]), Some(3.5));
    assert_eq!(
        common::metrics::value(text, name, &[("service", "c")]),
        None
    );
}

/// A port handed out once is not handed out again in the same run, even after its listener is
/// released (another test's gateway may be about to bind it).
#[test]
fn reserved_ports_are_not_handed_out_twice() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let port = reserve_listener().local_addr().expect("addr").port();
        // Released at once, as `Ports::new` releases them for the gateway.
        assert!(seen.insert(port), "port {port} reserved twice");
    }
    let claimed = std::env::temp_dir()
        .join("portcullis-test-ports")
        .join(seen.iter().next().expect("a port").to_string());
    assert!(claimed.exists(), "{}", claimed.display());
}
