//! What a client controls and must not get through, with the real binary: identity headers in
//! underscore spellings, request lines with spaces or control characters in the target, and
//! control characters that would forge log lines.

mod common;

use std::time::Duration;

use common::{raw_exchange, Curl, Gateway, HttpEcho, LeafSpec, Pki, Usage};

fn echo_gateway(echo: &HttpEcho) -> Gateway {
    Gateway::start(&format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n",
        echo.url()
    ))
}

#[test]
fn underscore_spellings_of_identity_headers_never_reach_the_upstream() {
    let echo = HttpEcho::start("echo");
    let gw = echo_gateway(&echo);
    let spoofed = [
        "X_Consumer_Username",
        "x_consumer_id",
        "X_CLIENT_CERT_DN",
        "X_Client_Cert_SAN",
        "x-credential_identifier",
        "X_Anonymous_Consumer",
        "x_authenticated_groups",
        "X-Consumer_Groups",
    ];
    for http2 in [false, true] {
        let mut c = if http2 {
            Curl::at("https", "gw.test", gw.https_port(), "/")
                .insecure()
                .http2()
        } else {
            Curl::at("http", "gw.test", gw.http_port(), "/")
        };
        for h in spoofed {
            c = c.header(&format!("{h}: mallory"));
        }
        let r = c.header("X_Other_Header: kept").run();
        assert_eq!(r.status, 200, "{r:#?}");
        let headers = r.json()["headers"].clone();
        let seen: Vec<&String> = headers
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        for h in spoofed {
            assert!(
                !seen.iter().any(|k| k.eq_ignore_ascii_case(h)),
                "{h} reached the upstream (http2={http2}): {seen:?}"
            );
        }
        assert_eq!(
            headers["x_other_header"], "kept",
            "other underscore headers pass: {seen:?}"
        );
    }
}

#[test]
fn an_unverified_client_certificate_subject_cannot_forge_log_lines() {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com"]);
    let forged = "2026-01-01T00:00:00Z INFO forged=yes";
    let evil = pki.issue(
        LeafSpec::new("evil", &format!("mallory\n{forged}\r\u{1b}[2J")).usage(Usage::Client),
        &pki.other_root,
    );
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/api.chain.crt", &server.chain_pem)
        .file("certs/api.key", &server.key_pem)
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
  snis: [api.example.com]
services:
- name: echo
  url: {u}
  routes:
  - name: secure
    paths: [/]
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [clients]
"#,
                u = echo.url()
            ),
        )
        .start();
    let r = Curl::at("https", "api.example.com", gw.https_port(), "/")
        .cacert(&pki.root.cert_path)
        .cert(&evil.cert_path, &evil.key_path)
        .run();
    assert_eq!(r.status, 401, "{r:#?}");
    assert!(
        gw.wait_for_log("client certificate rejected", Duration::from_secs(5)),
        "{}",
        gw.log()
    );
    let log = gw.log();
    let rejected = log
        .lines()
        .find(|l| l.contains("client certificate rejected"))
        .unwrap_or_default();
    assert!(
        rejected.contains(&format!("mallory\\n{forged}\\r\\u{{1b}}[2J")),
        "the subject is logged escaped on its own line: {rejected}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with(forged) && !line.contains('\u{1b}') && !line.contains('\r'),
            "a client-controlled string made its own log line: {line:?}"
        );
    }
    assert_eq!(echo.requests(), 0);
}

/// Status line, headers and body of one raw HTTP/1.1 exchange.
fn exchange(port: u16, bytes: &[u8]) -> (u16, String, serde_json::Value) {
    let raw = raw_exchange(port, bytes, Duration::from_secs(10)).expect("raw exchange");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, head.to_ascii_lowercase(), json)
}

#[test]
fn request_line_with_spaces_or_control_characters_gets_400_and_reaches_nothing() {
    let echo = HttpEcho::start("echo");
    let gw = echo_gateway(&echo);
    let port = gw.http_port();
    for target in [
        &b"/ok/a b c"[..],
        b"/ok/a\x01b",
        b"/ok/a\tb",
        b"/ok/a\x7fb",
        b"/ok/a\rb",
        b"/ok?q=a b",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let (status, head, body) = exchange(port, &req);
        let shown = String::from_utf8_lossy(target);
        assert_eq!(status, 400, "{shown:?}: {head}");
        let rid = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{shown:?}: no X-Request-Id: {head}"));
        assert_eq!(body["message"], "Bad request", "{shown:?}: {body}");
        assert_eq!(body["request_id"], rid, "{shown:?}: {body}");
    }
    assert_eq!(
        echo.requests(),
        0,
        "a malformed request line reached the upstream"
    );

    // The same targets written correctly are proxied, on one keep-alive connection after a bad
    // one too: the check looks at what the client sent, not at the escapes.
    let (status, _, body) = exchange(
        port,
        b"GET /ok/a%20b%20c?q=%22x%22 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/ok/a%20b%20c", "{body}");
    let mut ka = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    ka.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    ka.write_all(b"GET /ok/first HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = ka.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let requests = echo.requests();
    ka.write_all(b"GET /ok/second one HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = ka.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        echo.requests(),
        requests,
        "the second request reached the upstream"
    );
}
