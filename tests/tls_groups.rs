//! Key-exchange groups (SPEC §5): HTTPS listeners accept the post-quantum hybrid X25519MLKEM768
//! first by default and the gateway offers it to HTTPS upstreams; `tls.groups` sets the list;
//! the negotiated group is in the access log and in `portcullis_tls_handshakes_total`.
//!
//! The system's `openssl` (3.0) cannot speak ML-KEM, so the clients here are in-process and link
//! the vendored OpenSSL the gateway uses.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

const HANDSHAKES: &str = "portcullis_tls_handshakes_total";

fn gateway(pki: &Pki, echo: &HttpEcho, tls_section: &str) -> Gateway {
    let leaf = pki.server_leaf("api", &["DNS:api.example.com"]);
    Gateway::builder()
        .file("certs/api.chain.crt", &leaf.chain_pem)
        .file("certs/api.key", &leaf.key_pem)
        .file(
            "gateway.yaml",
            format!(
                r#"
{tls_section}
certificates:
- name: api
  cert_file: certs/api.chain.crt
  key_file: certs/api.key
  snis: [api.example.com]
services:
- name: echo
  url: {echo}
  routes:
  - name: all
    paths: [/]
"#,
                echo = echo.url()
            ),
        )
        .start()
}

/// GET over HTTPS offering `groups`; returns the negotiated group and the status line.
fn get_with_groups(port: u16, groups: &str, path: &str) -> (Option<String>, String) {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_groups_list(groups).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = b.build().connect("api.example.com", tcp).unwrap();
    let group = portcullis_openssl_ext::negotiated_group(tls.ssl()).map(str::to_string);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    (group, text.lines().next().unwrap_or("").to_string())
}

fn handshakes(gw: &Gateway, group: &str) -> f64 {
    let listener = format!("127.0.0.1:{}", gw.https_port());
    metrics::value(
        &gw.metrics(),
        HANDSHAKES,
        &[
            ("listener", listener.as_str()),
            ("version", "TLSv1.3"),
            ("group", group),
        ],
    )
    .unwrap_or(0.0)
}

#[track_caller]
fn wait_for_handshakes(gw: &Gateway, group: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while handshakes(gw, group) < at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        handshakes(gw, group) >= at_least,
        "{HANDSHAKES}{{group={group:?}}} below {at_least}:\n{}",
        gw.metrics()
    );
}

#[test]
fn post_quantum_hybrid_is_negotiated_first_and_classical_clients_still_connect() {
    let pki = Pki::new();
    let echo = HttpEcho::start("echo");
    let gw = gateway(&pki, &echo, "");
    let port = gw.https_port();

    let pq = TlsProbe::new(port)
        .sni("api.example.com")
        .groups("X25519MLKEM768")
        .run()
        .expect("an ML-KEM-only client connects");
    assert_eq!(pq.group.as_deref(), Some("X25519MLKEM768"));

    // A client that supports both but guesses X25519 for its key share: the gateway's
    // preference wins (it asks for the hybrid share).
    let both = TlsProbe::new(port)
        .sni("api.example.com")
        .groups("X25519:X25519MLKEM768")
        .run()
        .expect("handshake");
    assert_eq!(both.group.as_deref(), Some("X25519MLKEM768"));

    let classical = TlsProbe::new(port)
        .sni("api.example.com")
        .groups("X25519:P-256")
        .run()
        .expect("a classical-only client connects");
    // OpenSSL's own names: `x25519`, `secp256r1`, `X25519MLKEM768`.
    assert_eq!(classical.group.as_deref(), Some("x25519"));
    // The system's OpenSSL 3.0 (curl) knows no ML-KEM and is served with X25519.
    let r = Curl::at("https", "api.example.com", port, "/curl")
        .insecure()
        .run();
    assert_eq!(r.status, 200, "{r:#?}");

    let (group, status) = get_with_groups(port, "X25519MLKEM768:X25519", "/pq");
    assert_eq!(group.as_deref(), Some("X25519MLKEM768"));
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        gw.wait_for_log("tls_group=\"X25519MLKEM768\"", Duration::from_secs(5)),
        "access log lacks the negotiated group:\n{}",
        gw.log()
    );
    assert!(gw.log().contains("tls_group=\"x25519\""), "{}", gw.log());

    wait_for_handshakes(&gw, "X25519MLKEM768", 3.0);
    wait_for_handshakes(&gw, "x25519", 2.0);
}

#[test]
fn tls_groups_setting_limits_what_the_listener_accepts() {
    let pki = Pki::new();
    let echo = HttpEcho::start("echo");
    let gw = gateway(&pki, &echo, "tls:\n  groups: [P-256, X25519]");
    let port = gw.https_port();
    let err = TlsProbe::new(port)
        .sni("api.example.com")
        .groups("X25519MLKEM768")
        .run()
        .expect_err("the hybrid group is not configured");
    assert!(!err.is_empty());
    let served = TlsProbe::new(port)
        .sni("api.example.com")
        .groups("X25519:P-256")
        .run()
        .expect("handshake");
    assert_eq!(served.group.as_deref(), Some("secp256r1"));
}

#[test]
fn unknown_or_empty_group_lists_are_refused_with_their_location() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "tls:\n  groups: [X25519MLKEM768, X25519Kyber768Draft00]\n",
    );
    let out = check(&conf);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all().contains(
            "gateway.yaml:2:28: tls.groups[1]: unknown TLS group \"X25519Kyber768Draft00\""
        ),
        "{}",
        out.all()
    );
    let conf = ConfDir::new().with("gateway.yaml", "tls:\n  groups: []\n");
    let out = check(&conf);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all()
            .contains("gateway.yaml:2:3: tls.groups: needs at least one key-exchange group"),
        "{}",
        out.all()
    );
}

#[test]
fn upstream_accepting_only_the_hybrid_group_is_reachable() {
    let pki = Pki::new();
    let leaf = pki.server_leaf("upstream", &["DNS:upstream.test"]);
    let chain = pki.write_file("upstream.chain.crt", &leaf.chain_pem);
    let key = pki.write_file("upstream.key", &leaf.key_pem);
    let pq_only = HttpsEcho::start_with_groups("pq-only", &chain, &key, "X25519MLKEM768");
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file(
            "gateway.yaml",
            format!(
                r#"
ca_certificates:
- name: root
  cert_file: certs/root.crt
services:
- name: pq
  url: {url}
  tls_verify: true
  tls_server_name: upstream.test
  ca_certificates: [root]
  retries: 0
  routes:
  - name: pq
    paths: [/pq]
"#,
                url = pq_only.url()
            ),
        )
        .start();
    let r = Curl::at("http", "h.test", gw.http_port(), "/pq").run();
    assert_eq!(r.status, 200, "{r:#?}\n{}", gw.log());
    assert_eq!(r.json()["server"], "pq-only");
    assert_eq!(pq_only.handshakes(), 1);
}
