//! SNI normalisation through the real binary: a name in upper case with a trailing dot chooses
//! the same certificate, the same client-certificate request and the same route as the name
//! itself (SPEC §3, `names` module).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Gateway, HttpEcho, Pki};

fn gateway(pki: &Pki, echo: &HttpEcho) -> Gateway {
    let api = pki.server_leaf("api", &["DNS:api.example.test"]);
    let open = pki.server_leaf("open", &["DNS:open.example.test"]);
    Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/api.chain.crt", &api.chain_pem)
        .file("certs/api.key", &api.key_pem)
        .file("certs/open.chain.crt", &open.chain_pem)
        .file("certs/open.key", &open.key_pem)
        .file(
            "gateway.yaml",
            format!(
                r#"
ca_certificates:
- name: clients
  cert_file: certs/root.crt
certificates:
- name: api
  cert_file: certs/api.chain.crt
  key_file: certs/api.key
  snis: [api.example.test]
- name: open
  cert_file: certs/open.chain.crt
  key_file: certs/open.key
  snis: [open.example.test]
services:
- name: echo
  url: {u}
  routes:
  - name: api
    protocols: [https]
    snis: [api.example.test]
    paths: [/]
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [clients]
        skip_consumer_lookup: true
  - name: open
    protocols: [https]
    snis: [open.example.test]
    paths: [/]
"#,
                u = echo.url()
            ),
        )
        .start()
}

/// `openssl s_client -msg` sending one HTTP/1.1 request; stdout and stderr together.
fn s_client(port: u16, sni: &str, extra: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni, "-msg", "-ign_eof"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET /who HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    }
    let out = child.wait_with_output().expect("openssl s_client output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn upper_case_sni_with_trailing_dot_gets_the_same_certificate_request_and_route() {
    let pki = Pki::new();
    let echo = HttpEcho::start("echo");
    let gw = gateway(&pki, &echo);
    let alice_cert = pki.alice.cert_path.display().to_string();
    let alice_key = pki.alice.key_path.display().to_string();

    for sni in ["api.example.test", "API.EXAMPLE.TEST.", "Api.Example.Test"] {
        let out = s_client(
            gw.https_port(),
            sni,
            &["-cert", &alice_cert, "-key", &alice_key],
        );
        assert!(
            out.contains("CN = api.example.test"),
            "{sni}: wrong certificate:\n{out}"
        );
        assert!(
            out.contains("CertificateRequest"),
            "{sni}: no client certificate was asked for:\n{out}"
        );
        assert!(
            out.contains("HTTP/1.1 200") && out.contains("\"x-client-cert-dn\""),
            "{sni}: not routed to the mtls-auth route with the certificate:\n{out}"
        );

        // Without a certificate the same route refuses: routing and the request agree.
        let out = s_client(gw.https_port(), sni, &[]);
        assert!(
            out.contains("HTTP/1.1 401") && out.contains("No required TLS certificate was sent"),
            "{sni}: {out}"
        );
    }

    // A name whose routes have no mtls-auth is not asked for a certificate.
    let out = s_client(gw.https_port(), "OPEN.example.TEST.", &[]);
    assert!(out.contains("CN = open.example.test"), "{out}");
    assert!(!out.contains("CertificateRequest"), "{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");
}
