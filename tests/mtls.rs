//! Black-box tests of mtls-auth and acl through the real gateway (issue 5, seed 002): curl with
//! client certificates over HTTP/1.1 and HTTP/2, every 401 of SPEC §4, acl's 403, anonymous,
//! default_consumer, skip_consumer_lookup groups, two routes on one SNI trusting different CAs,
//! spoofed identity headers, and which SNIs ask for a client certificate.

mod common;

use std::process::{Command, Stdio};

use common::*;

struct Setup {
    pki: Pki,
    echo: HttpEcho,
    gw: Gateway,
}

const SECURE: &str = "api.example.com";
const OPEN: &str = "open.example.com";

fn setup() -> Setup {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com", "DNS:open.example.com"]);
    let echo = HttpEcho::start("echo");
    let yaml = format!(
        r#"
ca_certificates:
- name: clients
  cert_file: certs/root.crt
- name: issuing
  cert_file: certs/intermediate.crt
certificates:
- name: api
  cert_file: certs/api.chain.crt
  key_file: certs/api.key
  snis: [api.example.com, open.example.com]
consumers:
- username: alice
  custom_id: alice@example.com
  acls:
  - group: admins
- username: bob
  acls:
  - group: users
- username: guest
- username: fallback
services:
- name: echo
  url: {echo}
  routes:
  - name: secure
    paths: [/secure]
    protocols: [https]
    snis: [api.example.com]
    strip_path: false
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [clients]
        crl_file: certs/root.crl.pem
        send_ca_dn: true
    - name: acl
      config:
        allow: [admins]
  - name: by-cn
    paths: [/partial]
    protocols: [https]
    snis: [api.example.com]
    strip_path: false
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [issuing]
        allow_partial_chain: true
        skip_consumer_lookup: true
    - name: acl
      config:
        allow: [carol]
  - name: anon
    paths: [/anon]
    protocols: [https]
    snis: [api.example.com]
    strip_path: false
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [clients]
        anonymous: guest
  - name: default
    paths: [/default]
    protocols: [https]
    snis: [api.example.com]
    strip_path: false
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [clients]
        default_consumer: fallback
  - name: open
    paths: [/]
    protocols: [https]
    snis: [open.example.com]
    strip_path: false
"#,
        echo = echo.url(),
    );
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/intermediate.crt", &pki.intermediate.cert_pem)
        .file("certs/root.crl.pem", &pki.crl_pem)
        .file("certs/api.chain.crt", &server.chain_pem)
        .file("certs/api.key", &server.key_pem)
        .file("gateway.yaml", yaml)
        .start();
    Setup { pki, echo, gw }
}

impl Setup {
    fn curl(&self, host: &str, path: &str) -> Curl {
        Curl::at("https", host, self.gw.https_port(), path).cacert(&self.pki.root.cert_path)
    }

    fn as_client(&self, path: &str, client: &Leaf) -> Curl {
        self.curl(SECURE, path)
            .cert(&client.cert_path, &client.key_path)
    }
}

#[test]
fn alice_reaches_upstream_with_her_identity_over_http1_and_http2() {
    let s = setup();
    for h2 in [false, true] {
        let c = s.as_client("/secure", &s.pki.alice);
        let r = if h2 { c.http2() } else { c.http1() }.run();
        assert_eq!(r.status, 200, "{r:#?} {}", r.text());
        assert_eq!(r.http_version, if h2 { "2" } else { "1.1" });
        assert_eq!(
            r.echo_header("x-consumer-username").as_deref(),
            Some("alice")
        );
        assert_eq!(
            r.echo_header("x-consumer-custom-id").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            r.echo_header("x-credential-identifier").as_deref(),
            Some("alice@example.com")
        );
        assert!(r.echo_header("x-consumer-id").is_some());
        assert_eq!(
            r.echo_header("x-consumer-groups").as_deref(),
            Some("admins")
        );
        assert_eq!(r.echo_header("x-anonymous-consumer"), None);
    }
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let s = setup();
    let spoof = |c: Curl| {
        c.header("X-Consumer-Username: mallory")
            .header("X-Consumer-ID: 0")
            .header("X-Credential-Identifier: mallory")
            .header("X-Anonymous-Consumer: true")
            .header("X-Authenticated-Groups: admins")
            .header("X-Consumer-Groups: admins")
            .header("X-Client-Cert-DN: CN=mallory")
            .header("X-Client-Cert-SAN: mallory@example.com")
    };
    let r = spoof(s.as_client("/secure", &s.pki.alice)).run();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.echo_header("x-consumer-username").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.echo_header("x-consumer-groups").as_deref(),
        Some("admins")
    );
    for h in [
        "x-anonymous-consumer",
        "x-authenticated-groups",
        "x-client-cert-dn",
        "x-client-cert-san",
    ] {
        assert_eq!(r.echo_header(h), None, "{h} leaked");
    }
    // A route without authentication: nothing identity-like survives either.
    let r = spoof(s.curl(OPEN, "/")).run();
    assert_eq!(r.status, 200, "{}", r.text());
    for h in [
        "x-consumer-username",
        "x-consumer-id",
        "x-consumer-groups",
        "x-client-cert-dn",
    ] {
        assert_eq!(r.echo_header(h), None, "{h} leaked");
    }
}

#[test]
fn every_401_and_acl_403() {
    let s = setup();
    let requests_before = s.echo.requests();
    let r = s.curl(SECURE, "/secure").run();
    assert_error_body(&r, 401, "No required TLS certificate was sent");
    let r = s.curl(SECURE, "/secure").http2().run();
    assert_error_body(&r, 401, "No required TLS certificate was sent");
    for client in [
        &s.pki.client_other_ca,
        &s.pki.client_expired,
        &s.pki.client_revoked,
    ] {
        let r = s.as_client("/secure", client).run();
        assert_error_body(&r, 401, "TLS certificate failed verification");
    }
    // Verified, but nobody: no consumer named like its SAN or CN.
    let dave = s.pki.issue(
        LeafSpec::new("dave", "dave").usage(Usage::Client),
        &s.pki.root,
    );
    let r = s.as_client("/secure", &dave).run();
    assert_error_body(&r, 401, "Unauthorized");
    // Bob is a consumer, but not an admin.
    let r = s.as_client("/secure", &s.pki.bob).run();
    assert_error_body(&r, 403, "You cannot consume this service");
    assert_eq!(
        s.echo.requests(),
        requests_before,
        "a refused request reached the upstream"
    );

    let metrics = s.gw.metrics();
    for (plugin, reason) in [
        ("mtls-auth", "no_certificate"),
        ("mtls-auth", "verification_failed"),
        ("mtls-auth", "expired"),
        ("mtls-auth", "revoked"),
        ("mtls-auth", "no_consumer"),
        ("acl", "forbidden"),
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("portcullis_auth_failures_total")
                    && l.contains(&format!("plugin=\"{plugin}\""))
                    && l.contains(&format!("reason=\"{reason}\""))),
            "no auth failure {plugin}/{reason} in metrics:\n{metrics}"
        );
    }
}

#[test]
fn two_routes_on_one_sni_trust_different_cas() {
    let s = setup();
    // /partial trusts only the intermediate (allow_partial_chain) and hands the CN to acl.
    let carol = &s.pki.client_intermediate;
    let leaf_only = s
        .curl(SECURE, "/partial")
        .cert(&carol.cert_path, &carol.key_path)
        .run();
    assert_eq!(leaf_only.status, 200, "{}", leaf_only.text());
    assert_eq!(
        leaf_only.echo_header("x-authenticated-groups").as_deref(),
        Some("carol")
    );
    assert_eq!(
        leaf_only.echo_header("x-client-cert-san").as_deref(),
        Some("carol@example.com")
    );
    let dn = leaf_only
        .echo_header("x-client-cert-dn")
        .unwrap_or_default();
    assert!(dn.contains("CN=carol"), "X-Client-Cert-DN {dn:?}");
    assert_eq!(leaf_only.echo_header("x-consumer-id"), None);
    // With the intermediate sent too, over HTTP/2.
    let r = s
        .curl(SECURE, "/partial")
        .cert(&carol.chain_path, &carol.key_path)
        .http2()
        .run();
    assert_eq!(r.status, 200, "{}", r.text());

    // Alice's root-issued certificate is good on /secure, untrusted on /partial.
    let r = s.as_client("/partial", &s.pki.alice).run();
    assert_error_body(&r, 401, "TLS certificate failed verification");
    // Carol's leaf alone does not chain to the root /secure trusts.
    let r = s
        .curl(SECURE, "/secure")
        .cert(&carol.cert_path, &carol.key_path)
        .run();
    assert_error_body(&r, 401, "TLS certificate failed verification");
}

#[test]
fn anonymous_and_default_consumer() {
    let s = setup();
    for c in [
        s.curl(SECURE, "/anon"),
        s.as_client("/anon", &s.pki.client_other_ca),
    ] {
        let r = c.run();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.echo_header("x-anonymous-consumer").as_deref(),
            Some("true")
        );
        assert_eq!(
            r.echo_header("x-consumer-username").as_deref(),
            Some("guest")
        );
        assert_eq!(r.echo_header("x-credential-identifier"), None);
    }
    let r = s.as_client("/anon", &s.pki.bob).run();
    assert_eq!(r.echo_header("x-consumer-username").as_deref(), Some("bob"));
    assert_eq!(r.echo_header("x-anonymous-consumer"), None);

    let dave = s.pki.issue(
        LeafSpec::new("dave", "dave").usage(Usage::Client),
        &s.pki.root,
    );
    let r = s.as_client("/default", &dave).run();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.echo_header("x-consumer-username").as_deref(),
        Some("fallback")
    );
    assert_eq!(
        r.echo_header("x-credential-identifier").as_deref(),
        Some("dave")
    );
    let r = s.as_client("/default", &s.pki.client_other_ca).run();
    assert_error_body(&r, 401, "TLS certificate failed verification");
}

/// `openssl s_client` handshake trace for `sni`: whether a CertificateRequest came, and the CA
/// names it listed.
fn handshake_trace(port: u16, sni: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni, "-msg"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_mtls_snis_ask_for_a_certificate() {
    let s = setup();
    let secure = handshake_trace(s.gw.https_port(), SECURE);
    assert!(
        secure.contains("CertificateRequest"),
        "no CertificateRequest on {SECURE}:\n{secure}"
    );
    // send_ca_dn on /secure: the root's name is offered.
    assert!(
        secure.contains("Acceptable client certificate CA names")
            && secure.contains("Portcullis Test Root CA"),
        "CA names not sent on {SECURE}:\n{secure}"
    );
    let open = handshake_trace(s.gw.https_port(), OPEN);
    assert!(
        open.contains("Certificate") && !open.contains("CertificateRequest"),
        "{OPEN} has no mtls-auth route but asked for a certificate:\n{open}"
    );
}

#[test]
fn bad_plugin_config_is_reported_with_its_location() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "ca_certificates:\n- name: clients\n  cert_file: root.crt\nservices:\n- name: a\n  url: http://127.0.0.1:9\n  plugins:\n  - name: mtls-auth\n    config:\n      ca_certificates: [clients, nope]\n      revocation_check_mode: LAX\n  - name: acl\n    config:\n      allow: [a]\n      deny: [b]\n",
    );
    conf.write("root.crt", Pki::new().root.cert_pem);
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = out.all();
    // The first problem serde meets is the enum; the unknown CA is reported once it parses.
    assert!(
        all.lines()
            .any(|l| l.starts_with("conf/gateway.yaml:11:") && l.contains("revocation_check_mode")),
        "bad enum not located:\n{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("conf/gateway.yaml:15:") && l.contains("deny")),
        "allow+deny not located:\n{all}"
    );

    let conf = ConfDir::new().with(
        "gateway.yaml",
        "ca_certificates:\n- name: clients\n  cert_file: root.crt\nplugins:\n- name: mtls-auth\n  config:\n    ca_certificates:\n    - clients\n    - nope\n    anonymous: ghost\n",
    );
    conf.write("root.crt", Pki::new().root.cert_pem);
    let out = check(&conf);
    let all = out.all();
    assert_eq!(out.code, 1, "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with("conf/gateway.yaml:9:") && l.contains("nope")),
        "unknown CA not located:\n{all}"
    );
    assert!(
        all.lines()
            .any(|l| l.starts_with("conf/gateway.yaml:10:") && l.contains("ghost")),
        "unknown anonymous consumer not located:\n{all}"
    );
}
