//! Black-box tests of upstream TLS (issue 3), after seed 004: root → intermediate → leaf served by
//! the upstream; right CA 200, wrong CA 502, depth 1 200, depth 0 502 ("certificate chain too
//! long"), verify off 200; server-name override; upstream mutual TLS; expired and wrong-name
//! upstreams; pool isolation between services with different trust, in both orders; and the
//! failure reason in the log and in `portcullis_upstream_tls_failures_total{service,reason}`.

mod common;

use std::time::{Duration, Instant};

use common::*;

const BAD_GATEWAY: &str = "An invalid response was received from the upstream server";
const TLS_FAILURES: &str = "portcullis_upstream_tls_failures_total";

/// CA and client-certificate entities shared by every config here, with their files.
fn with_pki_files(b: GatewayBuilder, pki: &Pki) -> GatewayBuilder {
    b.file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/other-root.crt", &pki.other_root.cert_pem)
        .file("certs/alice.crt", &pki.alice.cert_pem)
        .file("certs/alice.key", &pki.alice.key_pem)
        .file("certs/carol.chain.crt", &pki.client_intermediate.chain_pem)
        .file("certs/carol.key", &pki.client_intermediate.key_pem)
        .file(
            "pki.yaml",
            r#"ca_certificates:
- name: root
  cert_file: certs/root.crt
- name: other-root
  cert_file: certs/other-root.crt
certificates:
- name: alice-client
  cert_file: certs/alice.crt
  key_file: certs/alice.key
- name: carol-client
  cert_file: certs/carol.chain.crt
  key_file: certs/carol.key
"#,
        )
}

/// `services:` YAML for `(name, url, extra service fields)`, each with a route `/<name>`.
fn services(list: &[(&str, String, &str)]) -> String {
    let mut y = String::from("services:\n");
    for (name, url, extra) in list {
        y.push_str(&format!("- name: {name}\n  url: {url}\n  retries: 0\n"));
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            y.push_str(&format!("  {}\n", line.trim()));
        }
        y.push_str(&format!(
            "  routes:\n  - name: {name}\n    paths: [/{name}]\n"
        ));
    }
    y
}

fn get(gw: &Gateway, path: &str) -> Response {
    Curl::at("http", "h.test", gw.http_port(), path).run()
}

fn tls_failures(gw: &Gateway, service: &str, reason: &str) -> f64 {
    metrics::value(
        &gw.metrics(),
        TLS_FAILURES,
        &[("service", service), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// Waits for the metric (it may be recorded just after the response is sent).
#[track_caller]
fn assert_tls_failure_counted(gw: &Gateway, service: &str, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_failures(gw, service, reason) < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = gw.metrics();
    assert!(
        tls_failures(gw, service, reason) >= 1.0,
        "{TLS_FAILURES}{{service={service:?},reason={reason:?}}} missing; have: {:#?}",
        metrics::samples(&text, TLS_FAILURES)
    );
}

#[test]
fn seed_004_matrix() {
    let pki = Pki::new();
    // One upstream per failing case, so "no request was sent" can be asserted per case.
    let up = |name: &str| HttpsEcho::start(name, &pki.server.chain_path, &pki.server.key_path);
    let right = up("right-ca");
    let wrong = up("wrong-ca");
    let depth1 = up("depth-1");
    let depth0 = up("depth-0");
    let off = up("verify-off");
    let system = up("system-store");
    let b = Gateway::builder();
    let b = with_pki_files(b, &pki);
    let yaml = services(&[
        ("right-ca", right.url(), "ca_certificates: [root]"),
        ("wrong-ca", wrong.url(), "ca_certificates: [other-root]"),
        (
            "depth-1",
            depth1.url(),
            "ca_certificates: [root]\ntls_verify_depth: 1",
        ),
        (
            "depth-0",
            depth0.url(),
            "ca_certificates: [root]\ntls_verify_depth: 0",
        ),
        ("verify-off", off.url(), "tls_verify: false"),
        // No CA list: the system store, which does not know our root; verification is on by default.
        ("system-store", system.url(), ""),
    ]);
    let gw = b.file("gateway.yaml", yaml).start();

    let r = get(&gw, "/right-ca/x");
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
    assert_eq!(r.json()["server"], "right-ca");
    assert_eq!(r.json()["path"], "/x");
    // RFC 6066 forbids IP literals in SNI: an IP host is verified without sending one.
    assert_eq!(
        r.json()["sni"],
        serde_json::Value::Null,
        "IP literal sent as SNI"
    );

    let r = get(&gw, "/wrong-ca");
    assert_error_body(&r, 502, BAD_GATEWAY);
    assert!(
        !r.text().contains("issuer"),
        "the reason must not reach the client"
    );

    assert_eq!(get(&gw, "/depth-1").status, 200);

    let r = get(&gw, "/depth-0");
    assert_error_body(&r, 502, BAD_GATEWAY);
    assert!(
        !r.text().contains("too long"),
        "the reason must not reach the client"
    );

    let r = get(&gw, "/verify-off");
    assert_eq!(r.status, 200, "{r:#?}");

    let r = get(&gw, "/system-store");
    assert_error_body(&r, 502, BAD_GATEWAY);

    // Never a request on an unverified connection.
    for (echo, name) in [
        (&wrong, "wrong-ca"),
        (&depth0, "depth-0"),
        (&system, "system-store"),
    ] {
        assert_eq!(
            echo.requests(),
            0,
            "{name}: a request was sent over a rejected chain"
        );
    }

    // The reason goes to the metrics and the log.
    assert_tls_failure_counted(&gw, "wrong-ca", "unable to get local issuer certificate");
    assert_tls_failure_counted(&gw, "depth-0", "certificate chain too long");
    assert_tls_failure_counted(
        &gw,
        "system-store",
        "unable to get local issuer certificate",
    );
    assert!(
        gw.wait_for_log("certificate chain too long", Duration::from_secs(5)),
        "the log must carry OpenSSL's reason"
    );
    assert!(gw.log().contains("unable to get local issuer certificate"));
    // Successful services have no failures counted.
    assert_eq!(
        metrics::value(&gw.metrics(), TLS_FAILURES, &[("service", "right-ca")]).unwrap_or(0.0),
        0.0
    );
}

#[test]
fn expired_and_wrong_name_upstreams_fail_with_their_reason() {
    let pki = Pki::new();
    let expired = HttpsEcho::start(
        "expired",
        &pki.server_expired.chain_path,
        &pki.server_expired.key_path,
    );
    let wrong_name = HttpsEcho::start(
        "wrong-name",
        &pki.server_wrong_name.chain_path,
        &pki.server_wrong_name.key_path,
    );
    let localhost = HttpsEcho::start("localhost", &pki.server.chain_path, &pki.server.key_path);
    let b = with_pki_files(Gateway::builder(), &pki);
    let yaml = services(&[
        ("expired", expired.url(), "ca_certificates: [root]"),
        ("wrong-name", wrong_name.url(), "ca_certificates: [root]"),
        // The same upstream reached by host name: a DNS name mismatch.
        (
            "wrong-hostname",
            format!("https://localhost:{}", wrong_name.port()),
            "ca_certificates: [root]",
        ),
        // The name is verified when given as a host name too.
        (
            "by-hostname",
            format!("https://localhost:{}", localhost.port()),
            "ca_certificates: [root]",
        ),
    ]);
    let gw = b.file("gateway.yaml", yaml).start();

    assert_error_body(&get(&gw, "/expired"), 502, BAD_GATEWAY);
    assert_error_body(&get(&gw, "/wrong-name"), 502, BAD_GATEWAY);
    assert_error_body(&get(&gw, "/wrong-hostname"), 502, BAD_GATEWAY);
    assert_eq!(expired.requests() + wrong_name.requests(), 0);
    assert_tls_failure_counted(&gw, "expired", "certificate has expired");
    // An IP host is verified against IP SANs: OpenSSL says "IP address mismatch".
    assert_tls_failure_counted(&gw, "wrong-name", "IP address mismatch");
    assert_tls_failure_counted(&gw, "wrong-hostname", "hostname mismatch");

    let r = get(&gw, "/by-hostname");
    assert_eq!(r.status, 200, "{r:#?}");
    // The default SNI is the service host.
    assert_eq!(r.json()["sni"], "localhost");
}

#[test]
fn tls_server_name_overrides_sni_and_verified_name() {
    let pki = Pki::new();
    let wrong_name = HttpsEcho::start(
        "wrong-name",
        &pki.server_wrong_name.chain_path,
        &pki.server_wrong_name.key_path,
    );
    let b = with_pki_files(Gateway::builder(), &pki);
    let yaml = services(&[
        (
            "override",
            wrong_name.url(),
            "ca_certificates: [root]\ntls_server_name: wrong.example",
        ),
        (
            "override-mismatch",
            wrong_name.url(),
            "ca_certificates: [root]\ntls_server_name: other.example",
        ),
    ]);
    let gw = b.file("gateway.yaml", yaml).start();
    let r = get(&gw, "/override");
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
    assert_eq!(r.json()["sni"], "wrong.example");
    let r = get(&gw, "/override-mismatch");
    assert_error_body(&r, 502, BAD_GATEWAY);
    assert_tls_failure_counted(&gw, "override-mismatch", "hostname mismatch");
}

#[test]
fn upstream_mutual_tls_with_and_without_client_certificate() {
    let pki = Pki::new();
    let mtls = HttpsEcho::start_with(
        "mtls",
        &pki.server.chain_path,
        &pki.server.key_path,
        ClientAuth::Required(pki.root.cert_path.clone()),
    );
    let b = with_pki_files(Gateway::builder(), &pki);
    let yaml = services(&[
        (
            "with-alice",
            mtls.url(),
            "ca_certificates: [root]\nclient_certificate: alice-client",
        ),
        // Kong's form of the reference, and a client chain (carol + intermediate).
        (
            "with-carol",
            mtls.url(),
            "ca_certificates: [root]\nclient_certificate: {name: carol-client}",
        ),
        ("without", mtls.url(), "ca_certificates: [root]"),
    ]);
    let gw = b.file("gateway.yaml", yaml).start();

    let r = get(&gw, "/with-alice");
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
    assert_eq!(r.json()["client_subject"], pki.alice.subject);
    let r = get(&gw, "/with-carol");
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
    assert_eq!(r.json()["client_subject"], pki.client_intermediate.subject);
    let r = get(&gw, "/without");
    assert_error_body(&r, 502, BAD_GATEWAY);
}

#[test]
fn verified_https_upstream_reuses_connections() {
    let pki = Pki::new();
    let echo = HttpsEcho::start("pooled", &pki.server.chain_path, &pki.server.key_path);
    let b = with_pki_files(Gateway::builder(), &pki);
    let gw = b
        .file(
            "gateway.yaml",
            services(&[("pooled", echo.url(), "ca_certificates: [root]")]),
        )
        .start();
    for _ in 0..10 {
        assert_eq!(get(&gw, "/pooled").status, 200);
    }
    assert_eq!(echo.requests(), 10);
    assert!(
        echo.handshakes() <= 2,
        "steady state must not handshake per request: {} handshakes for 10 requests",
        echo.handshakes()
    );
}

/// Two services on the same upstream address with different trust; `first` is requested
/// before `second`. Returns the two responses.
fn pool_pair(
    pki: &Pki,
    echo_url: &str,
    first: (&str, &str),
    second: (&str, &str),
) -> (Response, Response, Gateway) {
    let b = with_pki_files(Gateway::builder(), pki);
    let yaml = services(&[
        (first.0, echo_url.to_string(), first.1),
        (second.0, echo_url.to_string(), second.1),
    ]);
    let gw = b.file("gateway.yaml", yaml).start();
    let a = get(&gw, &format!("/{}", first.0));
    let b = get(&gw, &format!("/{}", second.0));
    (a, b, gw)
}

#[test]
fn pool_isolation_trusting_then_untrusting_and_back() {
    let pki = Pki::new();
    let echo = HttpsEcho::start("shared", &pki.server.chain_path, &pki.server.key_path);
    let trusting = ("trusting", "ca_certificates: [root]");
    let untrusting = ("untrusting", "ca_certificates: [other-root]");

    // A verified connection pooled by `trusting` must not serve `untrusting`.
    let (a, b, _gw) = pool_pair(&pki, &echo.url(), trusting, untrusting);
    assert_eq!(a.status, 200, "{a:#?}");
    assert_error_body(&b, 502, BAD_GATEWAY);

    // Other order, fresh gateway.
    let (a, b, _gw) = pool_pair(&pki, &echo.url(), untrusting, trusting);
    assert_error_body(&a, 502, BAD_GATEWAY);
    assert_eq!(b.status, 200, "{b:#?}");

    // Verification off pools a connection; a verifying service must not pick it up.
    let off = ("verify-off", "tls_verify: false");
    let (a, b, _gw) = pool_pair(&pki, &echo.url(), off, untrusting);
    assert_eq!(a.status, 200, "{a:#?}");
    assert_error_body(&b, 502, BAD_GATEWAY);
    let (a, b, _gw) = pool_pair(&pki, &echo.url(), untrusting, off);
    assert_error_body(&a, 502, BAD_GATEWAY);
    assert_eq!(b.status, 200, "{b:#?}");
}

#[test]
fn pool_isolation_client_certificate_never_leaks() {
    let pki = Pki::new();
    // Client certificate optional: a connection made with alice's certificate would be accepted
    // for anyone, so reusing it for another service would impersonate alice.
    let echo = HttpsEcho::start_with(
        "optional-mtls",
        &pki.server.chain_path,
        &pki.server.key_path,
        ClientAuth::Optional(pki.root.cert_path.clone()),
    );
    let alice = (
        "as-alice",
        "ca_certificates: [root]\nclient_certificate: alice-client",
    );
    let anon = ("anonymous", "ca_certificates: [root]");

    let (a, b, _gw) = pool_pair(&pki, &echo.url(), alice, anon);
    assert_eq!(a.status, 200, "{a:#?}");
    assert_eq!(a.json()["client_subject"], pki.alice.subject, "{a:#?}");
    assert_eq!(b.status, 200, "{b:#?}");
    assert_eq!(
        b.json()["client_subject"],
        serde_json::Value::Null,
        "alice's connection was reused for a service without a client certificate: {b:#?}"
    );

    let (a, b, gw) = pool_pair(&pki, &echo.url(), anon, alice);
    assert_eq!(a.status, 200, "{a:#?}");
    assert_eq!(
        a.json()["client_subject"],
        serde_json::Value::Null,
        "{a:#?}"
    );
    assert_eq!(b.status, 200, "{b:#?}\n{}", gw.log());
    assert_eq!(
        b.json()["client_subject"],
        pki.alice.subject,
        "an anonymous connection was reused for a service with a client certificate: {b:#?}\n{}",
        gw.log()
    );
}

#[test]
fn verify_off_logs_a_warning_at_start() {
    let pki = Pki::new();
    let echo = HttpsEcho::start("unverified", &pki.server.chain_path, &pki.server.key_path);
    let b = with_pki_files(Gateway::builder(), &pki);
    let gw = b
        .file(
            "gateway.yaml",
            services(&[("insecure-upstream", echo.url(), "tls_verify: false")]),
        )
        .start();
    // Before any request: the warning is about configuration, at start.
    let log = gw.log();
    assert!(
        log.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("warn") && l.contains("insecure-upstream")
        }),
        "no start-up warning naming the service with tls_verify: false:\n{log}"
    );
}

#[test]
fn pool_isolation_covers_every_certificate_of_a_ca_bundle() {
    let pki = Pki::new();
    // Signed by `other_root`: trusted by the bundle [root, other-root], not by [root] alone. The
    // bundles share their first certificate.
    let echo = HttpsEcho::start(
        "bundle",
        &pki.server_other_ca.chain_path,
        &pki.server_other_ca.key_path,
    );
    let bundle = format!("{}{}", pki.root.cert_pem, pki.other_root.cert_pem);
    let with_bundle = |b: GatewayBuilder| {
        with_pki_files(b, &pki)
            .file("certs/bundle.crt", &bundle)
            .file(
                "bundle.yaml",
                "ca_certificates:\n- name: root-and-other\n  cert_file: certs/bundle.crt\n",
            )
    };
    let both = ("both", "ca_certificates: [root-and-other]");
    let first_only = ("first-only", "ca_certificates: [root]");
    for (first, second) in [(both, first_only), (first_only, both)] {
        let b = with_bundle(Gateway::builder());
        let yaml = services(&[
            (first.0, echo.url(), first.1),
            (second.0, echo.url(), second.1),
        ]);
        let gw = b.file("gateway.yaml", yaml).start();
        for name in [first.0, second.0, first.0, second.0] {
            let r = get(&gw, &format!("/{name}"));
            if name == "both" {
                assert_eq!(r.status, 200, "{name}: {r:#?}");
            } else {
                assert_error_body(&r, 502, BAD_GATEWAY);
            }
        }
    }
}

#[test]
fn an_upstream_presenting_a_client_only_certificate_is_refused() {
    let pki = Pki::new();
    let client_only = pki.issue(
        LeafSpec::new("upstream-client-only", "localhost")
            .sans(&["DNS:localhost", "IP:127.0.0.1"])
            .usage(Usage::Client),
        &pki.intermediate,
    );
    let echo = HttpsEcho::start(
        "client-only",
        &client_only.chain_path,
        &client_only.key_path,
    );
    let b = with_pki_files(Gateway::builder(), &pki);
    let gw = b
        .file(
            "gateway.yaml",
            services(&[("client-only", echo.url(), "ca_certificates: [root]")]),
        )
        .start();
    let r = get(&gw, "/client-only");
    assert_error_body(&r, 502, BAD_GATEWAY);
    assert_eq!(echo.requests(), 0, "a request reached the upstream");
    assert_tls_failure_counted(&gw, "client-only", "unsuitable certificate purpose");
}
