//! Black-box tests of downstream TLS (issue 2): certificate by SNI (exact, wildcard, default,
//! generated self-signed), the chain sent, ALPN h2 / HTTP/2, TLS 1.2+, `protocols: [https]`,
//! route `snis`, forwarded headers over TLS.

mod common;

use std::time::Duration;

use common::pki::ORG;
use common::*;
use openssl::ssl::SslVersion;

struct Setup {
    pki: Pki,
    api: Leaf,
    wild: Leaf,
    suffix: Leaf,
    fallback: Leaf,
    echo: HttpEcho,
    sni_echo: HttpEcho,
    gw: Gateway,
}

/// Four certificates (exact, `*.example.com` inline, `shop.*`, a default) and an echo behind them.
fn setup() -> Setup {
    let pki = Pki::new();
    let api = pki.server_leaf("api", &["DNS:api.example.com"]);
    let wild = pki.server_leaf("wild", &["DNS:*.example.com"]);
    let suffix = pki.server_leaf("suffix", &["DNS:shop.test", "DNS:shop.example.org"]);
    let fallback = pki.server_leaf("fallback", &["DNS:fallback.test"]);
    let echo = HttpEcho::start("echo");
    let sni_echo = HttpEcho::start("sni-echo");
    let yaml = format!(
        r#"
tls:
  default_certificate: fallback
certificates:
- name: api
  cert_file: certs/api.chain.crt
  key_file: certs/api.key
  snis: [api.example.com]
- name: wild
  snis:
  - name: "*.example.com"
  cert: |
{wild_cert}  key: |
{wild_key}- name: suffix
  cert_file: certs/suffix.chain.crt
  key_file: certs/suffix.key
  snis: ["shop.*"]
- name: fallback
  cert_file: certs/fallback.chain.crt
  key_file: certs/fallback.key
services:
- name: echo
  url: {echo}
  routes:
  - name: all
    paths: [/]
    strip_path: false
  - name: secure-only
    paths: [/secure]
    protocols: [https]
    strip_path: false
  - name: hosted
    hosts: [host.example.com]
    paths: [/hosted]
    preserve_host: true
    strip_path: false
- name: sni-echo
  url: {sni_echo}
  routes:
  - name: by-sni
    paths: [/sni]
    protocols: [https]
    snis: [api.example.com]
    strip_path: false
"#,
        wild_cert = indent(&wild.chain_pem, 4),
        wild_key = indent(&wild.key_pem, 4),
        echo = echo.url(),
        sni_echo = sni_echo.url(),
    );
    let gw = Gateway::builder()
        .file("certs/api.chain.crt", &api.chain_pem)
        .file("certs/api.key", &api.key_pem)
        .file("certs/suffix.chain.crt", &suffix.chain_pem)
        .file("certs/suffix.key", &suffix.key_pem)
        .file("certs/fallback.chain.crt", &fallback.chain_pem)
        .file("certs/fallback.key", &fallback.key_pem)
        .file("gateway.yaml", yaml)
        .start();
    Setup {
        pki,
        api,
        wild,
        suffix,
        fallback,
        echo,
        sni_echo,
        gw,
    }
}

fn served(port: u16, sni: Option<&str>) -> Served {
    let mut p = TlsProbe::new(port);
    if let Some(s) = sni {
        p = p.sni(s);
    }
    p.run()
        .unwrap_or_else(|e| panic!("TLS handshake with SNI {sni:?} failed: {e}"))
}

#[test]
fn certificate_chosen_by_sni_exact_wildcard_default() {
    let s = setup();
    let port = s.gw.https_port();
    // Exact beats the wildcard that also matches.
    assert_eq!(served(port, Some("api.example.com")).serial, s.api.serial);
    assert_eq!(served(port, Some("web.example.com")).serial, s.wild.serial);
    // SNI is case-insensitive.
    assert_eq!(served(port, Some("WEB.Example.com")).serial, s.wild.serial);
    assert_eq!(served(port, Some("shop.test")).serial, s.suffix.serial);
    // A wildcard covers one label only, and not the bare domain: `shop.*` is `shop.` plus the
    // last label (Kong: `shop.example.org` would need `shop.example.*`).
    assert_eq!(
        served(port, Some("shop.example.org")).serial,
        s.fallback.serial
    );
    assert_eq!(served(port, Some("shop")).serial, s.fallback.serial);
    assert_eq!(
        served(port, Some("a.b.example.com")).serial,
        s.fallback.serial
    );
    assert_eq!(served(port, Some("example.com")).serial, s.fallback.serial);
    assert_eq!(served(port, Some("unknown.test")).serial, s.fallback.serial);
    assert_eq!(served(port, None).serial, s.fallback.serial);
}

#[test]
fn chain_is_sent_and_verifies_with_curl() {
    let s = setup();
    let port = s.gw.https_port();
    let probe = served(port, Some("api.example.com"));
    assert_eq!(probe.chain_len, 2, "leaf + intermediate must be sent");
    assert_eq!(probe.issuer, s.pki.intermediate.subject);
    // Verified by a real client that only trusts the root.
    let r = Curl::at("https", "api.example.com", port, "/x")
        .cacert(&s.pki.root.cert_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(r.json()["server"], "echo");
    // Inline PEM certificate works the same.
    let r = Curl::at("https", "web.example.com", port, "/x")
        .cacert(&s.pki.root.cert_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    // Verification against the wrong root fails (the client sees the real chain, nothing else).
    let r = Curl::at("https", "api.example.com", port, "/x")
        .cacert(&s.pki.other_root.cert_path)
        .run();
    assert_eq!(r.status, 0);
    assert_eq!(
        r.exit_code, 60,
        "curl: peer certificate cannot be authenticated: {r:#?}"
    );
}

#[test]
fn http2_via_alpn() {
    let s = setup();
    let port = s.gw.https_port();
    assert_eq!(
        TlsProbe::new(port)
            .sni("api.example.com")
            .alpn(&["h2", "http/1.1"])
            .run()
            .expect("handshake")
            .alpn
            .as_deref(),
        Some("h2")
    );
    assert_eq!(
        TlsProbe::new(port)
            .sni("api.example.com")
            .alpn(&["http/1.1"])
            .run()
            .expect("handshake")
            .alpn
            .as_deref(),
        Some("http/1.1")
    );
    let r = Curl::at("https", "api.example.com", port, "/h2/path?q=1")
        .cacert(&s.pki.root.cert_path)
        .http2()
        .header("X-Request-Id: h2-request")
        .data("payload")
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(r.http_version, "2");
    assert_eq!(r.header("x-request-id"), Some("h2-request"));
    let j = r.json();
    assert_eq!(j["path"], "/h2/path");
    assert_eq!(j["query"], "q=1");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["body_len"], 7);
}

#[test]
fn tls_1_2_minimum() {
    let s = setup();
    let port = s.gw.https_port();
    let old = TlsProbe::new(port)
        .sni("api.example.com")
        .max_version(SslVersion::TLS1_1)
        .run();
    assert!(old.is_err(), "TLS 1.1 must be refused: {old:?}");
    let v12 = TlsProbe::new(port)
        .sni("api.example.com")
        .max_version(SslVersion::TLS1_2)
        .run()
        .expect("TLS 1.2 handshake");
    assert_eq!(v12.version, "TLSv1.2");
    assert_eq!(served(port, Some("api.example.com")).version, "TLSv1.3");
}

#[test]
fn https_only_route_on_https_plain_request_takes_the_plain_catch_all() {
    let s = setup();
    // SPEC §3: `protocols` is a match criterion and 426 answers only when no route accepting
    // plain HTTP matches; the catch-all `/` route does (tests/route_isolation.rs has the 426).
    let r = Curl::at("http", "api.example.com", s.gw.http_port(), "/secure").run();
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    let r = Curl::at("https", "api.example.com", s.gw.https_port(), "/secure")
        .cacert(&s.pki.root.cert_path)
        .header("X-Forwarded-Proto: http")
        .header("X-Forwarded-Port: 1")
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-forwarded-port"], s.gw.https_port().to_string(), "{h}");
    assert_eq!(h["x-forwarded-host"], "api.example.com", "{h}");
    assert_eq!(s.echo.requests(), 2);
}

#[test]
fn route_snis_match_the_tls_server_name() {
    let s = setup();
    let port = s.gw.https_port();
    let r = Curl::at("https", "api.example.com", port, "/sni")
        .cacert(&s.pki.root.cert_path)
        .run();
    assert_eq!(r.json()["server"], "sni-echo", "{r:#?}");
    // Same path, another SNI: the `snis` route does not match, the catch-all does.
    let r = Curl::at("https", "web.example.com", port, "/sni")
        .cacert(&s.pki.root.cert_path)
        .run();
    assert_eq!(r.json()["server"], "echo", "{r:#?}");
    assert_eq!(s.sni_echo.requests(), 1);
}

#[test]
fn not_tls_on_the_tls_port_is_closed_and_gateway_keeps_serving() {
    let s = setup();
    let port = s.gw.https_port();
    let out = raw_request(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.starts_with("HTTP/1.1 2"),
        "plain HTTP on the TLS port must not be proxied: {text}"
    );
    // A client that sends half a ClientHello and vanishes.
    if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
        use std::io::Write;
        let _ = c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]);
    }
    let r = Curl::at("https", "api.example.com", port, "/after")
        .cacert(&s.pki.root.cert_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
}

#[test]
fn without_default_certificate_a_self_signed_one_is_served() {
    let pki = Pki::new();
    let api = pki.server_leaf("api", &["DNS:api.example.com"]);
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .file("certs/api.crt", &api.chain_pem)
        .file("certs/api.key", &api.key_pem)
        .file(
            "gateway.yaml",
            format!(
                "certificates:\n- name: api\n  cert_file: certs/api.crt\n  key_file: certs/api.key\n  snis: [api.example.com]\nservices:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
                echo.url()
            ),
        )
        .start();
    let port = gw.https_port();
    assert_eq!(served(port, Some("api.example.com")).serial, api.serial);
    for sni in [Some("unknown.test"), None] {
        let s = served(port, sni);
        assert_ne!(s.serial, api.serial);
        assert!(
            !s.subject.contains(ORG) && !s.issuer.contains(ORG),
            "fallback must be generated, not one of ours: {s:?}"
        );
        assert_eq!(
            s.subject, s.issuer,
            "generated fallback is self-signed: {s:?}"
        );
    }
    // And requests still work over it (the client chooses not to verify).
    let r = Curl::at("https", "unknown.test", port, "/x")
        .insecure()
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
}

#[test]
fn http2_authority_matches_hosts_and_is_preserved() {
    let s = setup();
    let port = s.gw.https_port();
    for h2 in [true, false] {
        let mut c = Curl::at("https", "host.example.com", port, "/hosted").insecure();
        if h2 {
            c = c.http2();
        } else {
            c = c.http1();
        }
        let r = c.run();
        assert_eq!(r.status, 200, "h2={h2}: {r:#?}");
        assert_eq!(r.http_version, if h2 { "2" } else { "1.1" });
        let j = r.json();
        assert_eq!(j["path"], "/hosted", "h2={h2}: routed by host");
        assert_eq!(
            j["headers"]["host"],
            format!("host.example.com:{port}"),
            "h2={h2}: preserve_host must forward the client's authority"
        );
        assert_eq!(
            j["headers"]["x-forwarded-host"], "host.example.com",
            "h2={h2}"
        );
    }
}

#[test]
fn errors_over_http2_have_the_same_json_bodies() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/only]\n",
        echo.url()
    ));
    let r = Curl::at("https", "any.test", gw.https_port(), "/nope")
        .insecure()
        .http2()
        .header("X-Request-Id: h2-404")
        .run();
    assert_eq!(r.http_version, "2");
    assert_error_body(&r, 404, "no Route matched with those values");
    assert_eq!(r.json()["request_id"], "h2-404");
}
