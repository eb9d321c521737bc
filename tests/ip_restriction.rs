//! ip-restriction through the real binary: allow and deny lists over v4 source addresses
//! (127.0.0.x) and v6 (::1), Kong's status and message, a bad range refused at its line, and the
//! client address a trusted proxy reports in X-Forwarded-For.

mod common;

use common::*;

fn start(echo: &HttpEcho, v6_port: u16) -> Gateway {
    let b = Gateway::builder().no_settings();
    let p = b.ports();
    b.file(
        "00-listeners.yaml",
        format!(
            r#"listeners:
  proxy:
    - address: 127.0.0.1:{http}
    - address: "[::1]:{v6_port}"
  status:
    address: 127.0.0.1:{status}
server:
  threads: 1
  graceful_shutdown_seconds: 1
  trusted_proxies: [127.0.0.9/32]
"#,
            http = p.http,
            status = p.status,
        ),
    )
    .file(
        "gateway.yaml",
        format!(
            r#"services:
- name: echo
  url: {url}
  routes:
  - name: allow
    paths: [/allow]
    plugins:
    - name: ip-restriction
      config:
        allow: [127.0.0.2, 127.0.1.0/24, "::1"]
  - name: deny
    paths: [/deny]
    plugins:
    - name: ip-restriction
      config:
        deny: [127.0.0.3, "::1/128"]
        status: 401
        message: Go away
  - name: proxied
    paths: [/proxied]
    plugins:
    - name: ip-restriction
      config:
        allow: [203.0.113.0/24]
"#,
            url = echo.url()
        ),
    )
    .start()
}

#[test]
fn allow_and_deny_v4_and_v6() {
    let echo = HttpEcho::start("echo");
    let v6 = free_port();
    let gw = start(&echo, v6);
    let from = |ip: &str, path: &str| {
        Curl::at("http", "example.com", gw.http_port(), path)
            .arg("--interface")
            .arg(ip)
            .run()
    };
    let v6_get = |path: &str| Curl::new(&format!("http://[::1]:{v6}{path}")).run();

    assert_eq!(from("127.0.0.2", "/allow").status, 200);
    assert_eq!(from("127.0.1.77", "/allow").status, 200);
    assert_error_body(
        &from("127.0.0.3", "/allow"),
        403,
        "Your IP address is not allowed",
    );
    assert_eq!(v6_get("/allow").status, 200);

    assert_error_body(&from("127.0.0.3", "/deny"), 401, "Go away");
    assert_eq!(from("127.0.0.2", "/deny").status, 200);
    assert_error_body(&v6_get("/deny"), 401, "Go away");
}

#[test]
fn a_trusted_proxy_reports_the_client() {
    let echo = HttpEcho::start("echo");
    let gw = start(&echo, free_port());
    let via = |peer: &str, xff: &str| {
        Curl::at("http", "example.com", gw.http_port(), "/proxied")
            .arg("--interface")
            .arg(peer)
            .header(&format!("X-Forwarded-For: {xff}"))
            .run()
    };
    // 127.0.0.9 is a trusted proxy: the client it names is checked.
    assert_eq!(via("127.0.0.9", "203.0.113.7").status, 200);
    assert_error_body(
        &via("127.0.0.9", "198.51.100.1"),
        403,
        "Your IP address is not allowed",
    );
    // Anyone else cannot pick an address by sending the header.
    assert_error_body(
        &via("127.0.0.2", "203.0.113.7"),
        403,
        "Your IP address is not allowed",
    );
}

#[test]
fn a_bad_range_is_refused_at_its_line() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        r#"services:
- name: echo
  url: http://127.0.0.1:1
  routes:
  - name: r
    paths: [/]
    plugins:
    - name: ip-restriction
      config:
        allow:
        - 10.0.0.0/8
        - 10.0.0.0/33
"#,
    );
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("conf/gateway.yaml:12:11: services[0].routes[0].plugins[0].config.allow[1]: invalid ip or cidr range: '10.0.0.0/33'"),
        "{}",
        out.all()
    );
}
