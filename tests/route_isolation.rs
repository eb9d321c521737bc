//! Which route may serve a request, through the real binary: route `protocols` are a match
//! criterion on both proxy listeners (an HTTPS request never reaches an http-only route and its
//! plugins, a plain one never an https-only route; 426 only when nothing accepts plain HTTP), and
//! a disabled service serves nothing on any listener, the passthrough port included.

mod common;

use std::process::{Command, Stdio};

use common::{assert_error_body, Curl, Gateway, HttpEcho, Pki, Response, TlsBackend};

fn plain(gw: &Gateway, host: &str, path: &str) -> Response {
    Curl::at("http", host, gw.http_port(), path).run()
}

fn tls(gw: &Gateway, host: &str, path: &str) -> Response {
    Curl::at("https", host, gw.https_port(), path)
        .insecure()
        .run()
}

#[test]
fn https_request_takes_the_https_route_and_its_plugins_not_the_http_one() {
    let echo = HttpEcho::start("plain-api");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: api
  url: {u}
  routes:
  - name: api-plain
    protocols: [http]
    paths: [/api]
  - name: api-secure
    protocols: [https]
    paths: [/api]
    plugins:
    - name: request-termination
      config:
        status_code: 403
        message: secure route
"#,
        u = echo.url()
    ));

    // The bypass: an HTTPS request used to match the http-only route and skip B's plugins.
    let r = tls(&gw, "gw.test", "/api/");
    assert_error_body(&r, 403, "secure route");
    assert_eq!(
        echo.requests(),
        0,
        "an HTTPS request reached the http-only route"
    );

    // A plain request takes the plain route; no 426, since a route accepts plain HTTP.
    let r = plain(&gw, "gw.test", "/api/");
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(echo.requests(), 1);
}

#[test]
fn use_https_answers_only_when_no_plain_route_matches() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: s
  url: {u}
  routes:
  - name: secure-only
    protocols: [https]
    paths: [/secure]
  - name: plain-for-one-host
    protocols: [http]
    hosts: [plain.test]
    paths: [/secure]
  - name: plain-only
    protocols: [http]
    paths: [/plain-only]
  - name: grpc-plain
    protocols: [grpc]
    paths: [/grpc-plain]
"#,
        u = echo.url()
    ));

    // Only the https route would match: 426.
    let r = plain(&gw, "other.test", "/secure/x");
    assert_error_body(&r, 426, "Please use HTTPS protocol");
    assert_eq!(echo.requests(), 0, "a 426 must not reach the upstream");

    // A route that accepts plain HTTP matches, although it ranks below the https one (hosts
    // make it more specific here anyway): it serves the request, no 426.
    let r = plain(&gw, "plain.test", "/secure/x");
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(echo.requests(), 1);

    // Over TLS the https route serves every host.
    let r = tls(&gw, "plain.test", "/secure/x");
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(echo.requests(), 2);

    // An HTTPS request never matches an http-only (or grpc-only) route: nothing else matches,
    // so it is a 404, not a silent downgrade.
    let r = tls(&gw, "gw.test", "/plain-only");
    assert_error_body(&r, 404, "no Route matched with those values");
    let r = tls(&gw, "gw.test", "/grpc-plain");
    assert_error_body(&r, 404, "no Route matched with those values");
    assert_eq!(echo.requests(), 2);

    // Plain requests still reach plain routes.
    let r = plain(&gw, "gw.test", "/plain-only");
    assert_eq!(r.status, 200, "{r:#?}");
}

/// `openssl s_client` with stdin closed; stdout and stderr together.
fn s_client(port: u16, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn disabled_service_serves_nothing_on_the_passthrough_port_or_the_proxy() {
    let pki = Pki::new();
    let leaf = pki.server_leaf("db", &["DNS:db.example.com", "DNS:live.example.com"]);
    let backend = TlsBackend::start(&leaf.chain_path, &leaf.key_path);
    let echo = HttpEcho::start("echo");
    let gw = Gateway::builder()
        .with_stream()
        .file(
            "gateway.yaml",
            format!(
                r#"
services:
- name: db
  enabled: false
  url: tcp://127.0.0.1:{b}
  routes:
  - name: db
    protocols: [tls_passthrough]
    snis: [db.example.com]
- name: live
  url: tcp://127.0.0.1:{b}
  routes:
  - name: live
    protocols: [tls_passthrough]
    snis: [live.example.com]
- name: web
  enabled: false
  url: {u}
  routes:
  - name: web
    paths: [/web]
"#,
                b = backend.port(),
                u = echo.url()
            ),
        )
        .start();
    let root = pki.root.cert_path.display().to_string();

    // The enabled route proves the port relays at all.
    let out = s_client(
        gw.stream_port(),
        &[
            "-servername",
            "live.example.com",
            "-CAfile",
            &root,
            "-brief",
        ],
    );
    assert!(out.contains("CN = db"), "{out}");
    let handshakes = backend.handshakes();
    let connections = backend.connections();

    let out = s_client(
        gw.stream_port(),
        &["-servername", "db.example.com", "-CAfile", &root, "-brief"],
    );
    assert!(
        out.contains("alert number 112") && !out.contains("CN = db"),
        "a disabled service was relayed: {out}"
    );
    assert_eq!(backend.handshakes(), handshakes, "the backend was reached");
    assert_eq!(
        backend.connections(),
        connections,
        "the backend was reached"
    );

    // Same on the HTTP listeners.
    let r = plain(&gw, "gw.test", "/web");
    assert_error_body(&r, 404, "no Route matched with those values");
    let r = tls(&gw, "gw.test", "/web");
    assert_error_body(&r, 404, "no Route matched with those values");
    assert_eq!(echo.requests(), 0);
}
