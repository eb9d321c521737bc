//! Black-box tests of `portcullis check` and config loading (issue 2): good and bad conf dirs with
//! the exact `file:line:col: entity.path:` of each error, a Kong `kong.yml` loading unchanged, and
//! the repository's example `conf/`.
//!
//! Columns are 1-based: an unknown field points at its key, any other error at the offending value
//! (for a reference, the referencing value; for a key mismatch, the `key`/`key_file` value).

mod common;

use common::*;

/// Asserts `check` failed and printed a line starting with `prefix` that contains `keyword`.
#[track_caller]
fn assert_error(out: &CheckOutput, prefix: &str, keyword: &str) {
    assert_eq!(out.code, 1, "check must exit 1 on errors:\n{}", out.all());
    let lines = out.lines_starting(prefix);
    assert!(
        !lines.is_empty(),
        "no error line starting with {prefix:?}; output:\n{}",
        out.all()
    );
    assert!(
        lines.iter().any(|l| l
            .to_ascii_lowercase()
            .contains(&keyword.to_ascii_lowercase())),
        "error line(s) {lines:#?} lack {keyword:?}"
    );
    assert!(
        !out.all().contains("panicked"),
        "check panicked:\n{}",
        out.all()
    );
}

fn check_yaml(yaml: &str) -> CheckOutput {
    let conf = ConfDir::new().with("gateway.yaml", yaml);
    check(&conf)
}

#[test]
fn good_conf_dir_exits_0_with_one_line_summary() {
    let pki = Pki::new();
    let conf = ConfDir::new()
        .with("certs/api.crt", &pki.server.chain_pem)
        .with("certs/api.key", &pki.server.key_pem)
        .with(
            "gateway.yaml",
            format!(
                r#"
listeners:
  proxy:
    - address: 127.0.0.1:18000
    - address: 127.0.0.1:18443
      tls: true
  status:
    address: 127.0.0.1:18100
tls:
  default_certificate: api
ca_certificates:
- name: test-root
  cert: |
{root}
certificates:
- name: api
  cert_file: certs/api.crt
  key_file: certs/api.key
  snis: [kong.example, "*.kong.example"]
services:
- name: echo
  url: https://127.0.0.1:9443/base
  ca_certificates: [test-root]
  tls_verify_depth: 1
  routes:
  - name: api
    hosts: [kong.example]
    paths: [/api, '~/v\d+/items']
    methods: [GET, POST]
    headers:
      x-team: [blue]
    regex_priority: 3
"#,
                root = indent(&pki.root.cert_pem, 4)
            ),
        );
    let out = check(&conf);
    assert_eq!(out.code, 0, "check failed:\n{}", out.all());
    let summary: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        summary.len(),
        1,
        "one-line summary expected:\n{}",
        out.stdout
    );
}

#[test]
fn unknown_field_points_at_its_key() {
    let out = check_yaml("services:\n- name: a\n  url: http://127.0.0.1:9\n  retires: 3\n");
    assert_error(
        &out,
        "conf/gateway.yaml:4:3: services[0].retires: ",
        "unknown",
    );
    // The hint names the field the user probably meant.
    assert_error(
        &out,
        "conf/gateway.yaml:4:3: services[0].retires: ",
        "retries",
    );

    // Nested inside a route, and in a settings section.
    let out = check_yaml(
        "listeners:\n  proxy:\n  - address: 127.0.0.1:1\n    tsl: true\nservices:\n- name: a\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/]\n    strip_pth: false\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:4:5: listeners.proxy[0].tsl: ",
        "unknown",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:11:5: services[0].routes[0].strip_pth: ",
        "unknown",
    );
}

#[test]
fn dangling_references_point_at_the_referencing_value() {
    let out = check_yaml(
        r#"services:
- name: a
  url: https://127.0.0.1:9
  ca_certificates: [missing-ca]
  client_certificate: missing-client-cert
routes:
- name: r
  paths: [/x]
  service: nope
tls:
  default_certificate: missing-default
"#,
    );
    assert_error(&out, "conf/gateway.yaml:9:12: routes[0].service: ", "nope");
    assert_error(
        &out,
        "conf/gateway.yaml:4:21: services[0].ca_certificates[0]: ",
        "missing-ca",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:5:23: services[0].client_certificate: ",
        "missing-client-cert",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:11:24: tls.default_certificate: ",
        "missing-default",
    );
}

#[test]
fn cert_key_mismatch_points_at_key() {
    let pki = Pki::new();
    let conf = ConfDir::new()
        .with("certs/a.crt", &pki.server.cert_pem)
        .with("certs/b.key", &pki.alice.key_pem)
        .with(
            "gateway.yaml",
            "certificates:\n- name: c\n  cert_file: certs/a.crt\n  key_file: certs/b.key\n  snis: [a.example.com]\n",
        );
    let out = check(&conf);
    assert_error(
        &out,
        "conf/gateway.yaml:4:13: certificates[0].key_file: ",
        "match",
    );

    // Inline PEM: the error is on the `key` line.
    let yaml = format!(
        "certificates:\n- name: c\n  snis: [a.example.com]\n  cert: |\n{}  key: |\n{}",
        indent(&pki.server.cert_pem, 4),
        indent(&pki.bob.key_pem, 4)
    );
    let key_line = yaml
        .lines()
        .position(|l| l.starts_with("  key: |"))
        .map(|i| i + 1)
        .expect("key line");
    let out = check_yaml(&yaml);
    assert_error(
        &out,
        &format!("conf/gateway.yaml:{key_line}:"),
        "certificates[0].key: ",
    );
}

/// Kong refuses a CA certificate without the CA basic constraint; an expired certificate is
/// loaded (as in Kong) with a warning located at its definition like every error.
#[test]
fn leaf_as_ca_is_a_located_error_and_an_expired_certificate_a_located_warning() {
    let pki = Pki::new();
    let conf = ConfDir::new()
        .with("certs/leaf.crt", &pki.alice.cert_pem)
        .with("certs/root.crt", &pki.root.cert_pem)
        .with(
            "gateway.yaml",
            "ca_certificates:\n- name: ok\n  cert_file: certs/root.crt\n- name: leaf\n  cert_file: certs/leaf.crt\n",
        );
    let out = check(&conf);
    assert_error(
        &out,
        "conf/gateway.yaml:5:14: ca_certificates[1].cert_file: ",
        "does not appear to be a CA because it is missing the \"CA\" basic constraint",
    );
    assert_eq!(
        out.lines_starting("conf/gateway.yaml:3:").len(),
        0,
        "{}",
        out.all()
    );

    let conf = ConfDir::new()
        .with("certs/old.crt", &pki.server_expired.cert_pem)
        .with("certs/old.key", &pki.server_expired.key_pem)
        .with(
            "gateway.yaml",
            "services: []\ncertificates:\n- name: old\n  cert_file: certs/old.crt\n  key_file: certs/old.key\n  snis: [old.example.com]\n",
        );
    let out = check(&conf);
    assert_eq!(out.code, 0, "{}", out.all());
    let warning = out.lines_starting("conf/gateway.yaml:3:3: certificates[0]: warning: ");
    assert!(
        warning.iter().any(|l| l.contains("expired at")),
        "{}",
        out.all()
    );
}

#[test]
fn missing_and_invalid_pem_files() {
    let conf = ConfDir::new()
        .with("certs/garbage.crt", "not a certificate\n")
        .with(
            "gateway.yaml",
            "certificates:\n- name: c\n  cert_file: certs/garbage.crt\n  key_file: certs/absent.key\n",
        );
    let out = check(&conf);
    assert_error(
        &out,
        "conf/gateway.yaml:3:14: certificates[0].cert_file: ",
        "",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:4:13: certificates[0].key_file: ",
        "absent.key",
    );
}

#[test]
fn bad_regex_points_at_the_path_item() {
    let out = check_yaml(
        "services:\n- name: a\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths:\n    - ~/items/([\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:7:7: services[0].routes[0].paths[0]: ",
        "regex",
    );
}

#[test]
fn duplicate_names_and_ids() {
    let out = check_yaml(
        r#"services:
- name: a
  url: http://127.0.0.1:9
  routes:
  - name: r
    paths: [/one]
- name: a
  url: http://127.0.0.1:9
  routes:
  - name: r
    paths: [/two]
"#,
    );
    assert_error(
        &out,
        "conf/gateway.yaml:7:9: services[1].name: ",
        "duplicate",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:10:11: services[1].routes[0].name: ",
        "duplicate",
    );

    let out = check_yaml(
        r#"services:
- id: 8c1a1b0e-3f2a-4b7e-9d55-0f6f1d2c3b4a
  name: a
  url: http://127.0.0.1:9
- id: 8c1a1b0e-3f2a-4b7e-9d55-0f6f1d2c3b4a
  name: b
  url: http://127.0.0.1:9
"#,
    );
    assert_error(&out, "conf/gateway.yaml:5:7: services[1].id: ", "duplicate");
}

#[test]
fn errors_in_two_files_reported_together_with_per_file_indices() {
    let conf = ConfDir::new()
        .with(
            "a.yaml",
            "services:\n- name: shared\n  url: http://127.0.0.1:9\n  colour: red\n",
        )
        .with(
            "b.yaml",
            "services:\n- name: fine\n  url: http://127.0.0.1:9\n- name: shared\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [\"~(\"]\n",
        );
    let out = check(&conf);
    assert_error(&out, "conf/a.yaml:4:3: services[0].colour: ", "unknown");
    // Indices are counted within b.yaml.
    assert_error(&out, "conf/b.yaml:4:9: services[1].name: ", "duplicate");
    assert_error(
        &out,
        "conf/b.yaml:8:13: services[1].routes[0].paths[0]: ",
        "regex",
    );
}

#[test]
fn settings_section_in_two_files_is_an_error() {
    let conf = ConfDir::new()
        .with("a.yaml", "server:\n  threads: 1\n")
        .with("b.yaml", "server:\n  threads: 2\n");
    let out = check(&conf);
    assert_error(&out, "conf/b.yaml:1:", "server");
}

#[test]
fn format_version_checked_and_yaml_syntax_errors_located() {
    let out = check_yaml("_format_version: \"1.0\"\nservices: []\n");
    assert_error(&out, "conf/gateway.yaml:1:18: _format_version: ", "\"1.0\"");

    let out = check_yaml("services:\n- name: a\n  url: [unclosed\n");
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .lines()
            .any(|l| l.starts_with("conf/gateway.yaml:")),
        "a syntax error must be located:\n{}",
        out.all()
    );
    assert!(!out.all().contains("panicked"));
}

#[test]
fn unknown_plugin_and_bad_enum_values() {
    let out = check_yaml(
        "services:\n- name: a\n  url: http://127.0.0.1:9\n  protocol: htp\nplugins:\n- name: no-such-plugin\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:6:9: plugins[0].name: ",
        "no-such-plugin",
    );
    // `url` and `protocol` together, or a bad protocol: either way line 4 is named.
    assert!(
        out.all()
            .lines()
            .any(|l| l.starts_with("conf/gateway.yaml:4:")),
        "bad protocol not reported on line 4:\n{}",
        out.all()
    );
}

#[test]
fn kong_fields_without_effect_warn_but_pass() {
    let out = check_yaml(
        "services:\n- name: a\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/]\n    path_handling: v0\n    request_buffering: true\n",
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.all()
            .lines()
            .any(|l| l.starts_with("conf/gateway.yaml:7:5: services[0].routes[0].path_handling")),
        "no located warning for path_handling:\n{}",
        out.all()
    );
}

#[test]
fn run_refuses_bad_config_with_the_same_messages() {
    let gw = Gateway::builder()
        .file(
            "gateway.yaml",
            "services:\n- name: a\n  url: http://127.0.0.1:9\n  retires: 3\n",
        )
        .try_start();
    let err = match gw {
        Ok(_) => panic!("gateway started on a bad config"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code, Some(1), "{err}");
    assert!(
        err.log
            .contains("conf/gateway.yaml:4:3: services[0].retires: "),
        "{err}"
    );
}

#[test]
fn example_conf_passes_check() {
    let out = check_dir(&repo_root().join("conf"));
    assert_eq!(out.code, 0, "example conf/ fails check:\n{}", out.all());
}

/// A `kong.yml` as Kong's DB-less mode (format 3.0) takes it, with the settings in another file.
fn kong_yml(pki: &Pki, echo_url: &str) -> String {
    format!(
        r#"_format_version: "3.0"
_transform: true

services:
- id: 6b0c8b8a-0d3c-4f43-9f5e-2f0b4e7a2c11
  name: echo-service
  url: {echo_url}/base
  connect_timeout: 60000
  read_timeout: 60000
  write_timeout: 60000
  retries: 5
  tags:
  - demo
  routes:
  - id: 1b6a6d0e-7c4b-4e0a-8f3b-5d2a9c8e7f61
    name: nested-route
    paths:
    - /nested
    strip_path: true
    preserve_host: false
    protocols:
    - http
    - https
    https_redirect_status_code: 426
    regex_priority: 0
  plugins:
  - name: acl
    config:
      allow:
      - admins
    enabled: false

routes:
- id: 2c7b7e1f-8d5c-4f1b-9a4c-6e3b0d9f8a72
  name: top-by-id
  paths:
  - /top-id
  service:
    id: 6b0c8b8a-0d3c-4f43-9f5e-2f0b4e7a2c11
- id: 3d8c8f2a-9e6d-4a2c-8b5d-7f4c1e0a9b83
  name: top-by-name
  hosts:
  - kong.example
  paths:
  - /top-name
  service:
    name: echo-service

certificates:
- id: 4e9d9a3b-af7e-4b3d-9c6e-8a5d2f1b0c94
  cert: |
{cert}  key: |
{key}  snis:
  - name: kong.example
  tags:
  - demo

ca_certificates:
- id: 5fae0b4c-b08f-4c4e-8d7f-9b6e3a2c1da5
  cert: |
{root}
consumers:
- id: 70b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d
  username: alice
  custom_id: alice-1
  acls:
  - group: admins

plugins:
- name: acl
  route: top-by-name
  config:
    allow:
    - admins
  enabled: false
"#,
        cert = indent(&pki.server.chain_pem, 4),
        key = indent(&pki.server.key_pem, 4),
        root = indent(&pki.root.cert_pem, 4),
    )
}

#[test]
fn kong_yml_loads_unchanged_and_serves() {
    let pki = Pki::new();
    let echo = HttpEcho::start("kong-echo");
    let yml = kong_yml(&pki, &echo.url());

    let conf = ConfDir::new().with("kong.yml", &yml);
    let out = check(&conf);
    assert_eq!(out.code, 0, "kong.yml refused:\n{}", out.all());

    let gw = Gateway::builder().file("kong.yml", &yml).start();
    let port = gw.http_port();
    let j = Curl::at("http", "h.test", port, "/nested/x").run().json();
    assert_eq!(j["server"], "kong-echo");
    assert_eq!(j["path"], "/base/x");
    let j = Curl::at("http", "h.test", port, "/top-id/y").run().json();
    assert_eq!(j["path"], "/base/y");
    let j = Curl::at("http", "kong.example", port, "/top-name")
        .run()
        .json();
    assert_eq!(j["path"], "/base");
    // The Kong certificate is served for its SNI.
    let served = TlsProbe::new(gw.https_port())
        .sni("kong.example")
        .run()
        .expect("TLS handshake");
    assert_eq!(served.serial, pki.server.serial);
    let r = Curl::at("https", "kong.example", gw.https_port(), "/nested/z")
        .cacert(&pki.root.cert_path)
        .run();
    assert_eq!(r.status, 200, "{r:#?}");
    assert_eq!(gw.status()["counts"]["routes"], 3);
}

#[test]
fn out_of_range_and_mistyped_values_point_at_the_value() {
    let out = check_yaml(
        "services:\n- name: a\n  host: 127.0.0.1\n  port: 99999\n  protocol: https\n  tls_verify_depth: -1\n  retries: many\n",
    );
    assert_error(&out, "conf/gateway.yaml:4:9: services[0].port: ", "99999");
    assert_error(
        &out,
        "conf/gateway.yaml:6:21: services[0].tls_verify_depth: ",
        "",
    );
    assert_error(&out, "conf/gateway.yaml:7:12: services[0].retries: ", "");
}

#[test]
fn an_sni_claimed_by_two_certificates_is_an_error() {
    let pki = Pki::new();
    let a = pki.server_leaf("a", &["DNS:a.example.com"]);
    let b = pki.server_leaf("b", &["DNS:a.example.com"]);
    let conf = ConfDir::new()
        .with("certs/a.crt", &a.chain_pem)
        .with("certs/a.key", &a.key_pem)
        .with("certs/b.crt", &b.chain_pem)
        .with("certs/b.key", &b.key_pem)
        .with(
            "gateway.yaml",
            "certificates:\n- name: a\n  cert_file: certs/a.crt\n  key_file: certs/a.key\n  snis: [a.example.com]\n- name: b\n  cert_file: certs/b.crt\n  key_file: certs/b.key\n  snis: [a.example.com]\n",
        );
    let out = check(&conf);
    assert_error(
        &out,
        "conf/gateway.yaml:9:10: certificates[1].snis[0]: ",
        "a.example.com",
    );
}

#[test]
fn two_listeners_on_one_address_is_an_error() {
    // Pingora hands both services the same socket; the process then aborts on shutdown
    // ("IO Safety violation"). The contract: refused at load, located.
    let out = check_yaml(
        "listeners:\n  proxy:\n    - address: 127.0.0.1:18000\n  status:\n    address: 127.0.0.1:18000\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:5:14: listeners.status.address: ",
        "127.0.0.1:18000",
    );
    let out = check_yaml(
        "listeners:\n  proxy:\n    - address: 127.0.0.1:18000\n    - address: 127.0.0.1:18000\n      tls: true\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:4:16: listeners.proxy[1].address: ",
        "127.0.0.1:18000",
    );
}

#[test]
fn run_fails_fast_when_a_listener_address_is_taken() {
    // Another process holds the proxy port: the gateway must not report ready, and must exit
    // non-zero naming the address (as nginx/Kong do), not keep running without its listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let ports = Ports::new();
    let settings = format!(
        "listeners:\n  proxy:\n    - address: 127.0.0.1:{port}\n  status:\n    address: 127.0.0.1:{}\n",
        ports.status
    );
    let result = Gateway::builder()
        .no_settings()
        .file("gateway.yaml", settings)
        .try_start_on(ports.status);
    match result {
        Ok(gw) => panic!(
            "gateway reported ready although its proxy address 127.0.0.1:{port} is taken:\n{}",
            gw.log()
        ),
        Err(e) => {
            assert!(
                matches!(e.exit_code, Some(c) if c != 0),
                "gateway must exit non-zero, not hang: {e}"
            );
            assert!(e.log.contains(&format!("127.0.0.1:{port}")), "{e}");
        }
    }
    drop(taken);
}

#[test]
fn an_empty_tls_server_name_is_refused_where_it_is_written() {
    // OpenSSL reads an empty expected host name as "check no name".
    let out = check_yaml(
        "services:\n- name: a\n  url: https://127.0.0.1:9\n  tls_server_name: \"\"\n  routes:\n  - name: r\n    paths: [/]\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:4:20: services[0].tls_server_name",
        "must not be empty",
    );
}

#[test]
fn out_of_range_numbers_are_located_errors_not_panics() {
    // The YAML parser itself refuses non-finite numbers, at their place.
    for value in [".inf", "-.inf", ".nan"] {
        let out = check_yaml(&format!(
            "services:\n- name: a\n  url: http://127.0.0.1:9\n  connect_timeout: {value}\n  routes:\n  - name: r\n    paths: [/]\n"
        ));
        assert_error(&out, "conf/gateway.yaml:4:20:", "non-finite");
    }
    let cases = [
        ("read_timeout", "1e30", "out of range"),
        ("connect_timeout", "-5", "negative"),
        ("connect_timeout", "-0.5", "negative"),
        ("read_timeout", "9223372036854775807", "out of range"),
        ("read_timeout", "\"100000000d\"", "out of range"),
    ];
    for (field, value, keyword) in cases {
        let out = check_yaml(&format!(
            "services:\n- name: a\n  url: http://127.0.0.1:9\n  {field}: {value}\n  routes:\n  - name: r\n    paths: [/]\n"
        ));
        let col = 2 + field.len() + 3;
        assert_error(
            &out,
            &format!("conf/gateway.yaml:4:{col}: services[0].{field}"),
            keyword,
        );
    }
    // Health-check intervals are seconds: the same bound applies after the unit.
    let out = check_yaml(
        "upstreams:\n- name: up\n  healthchecks:\n    active:\n      healthy:\n        interval: 1e300\n  targets:\n  - target: 127.0.0.1:9\nservices:\n- name: a\n  host: up\n  routes:\n  - name: r\n    paths: [/]\n",
    );
    assert_error(
        &out,
        "conf/gateway.yaml:6:19: upstreams[0].healthchecks.active.healthy.interval",
        "out of range",
    );
}

#[test]
fn a_private_key_file_others_can_read_is_warned_about_where_it_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new();
    let yaml = "certificates:\n- name: site\n  cert_file: certs/site.crt\n  key_file: certs/site.key\n  snis: [site.test]\n";
    let conf = ConfDir::new()
        .with("certs/site.crt", &pki.server.chain_pem)
        .with("certs/site.key", &pki.server.key_pem)
        .with("gateway.yaml", yaml);
    let key = conf.dir().join("certs/site.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = check(&conf);
    assert_eq!(out.code, 0, "{}", out.all());
    let warned = out.lines_starting("conf/gateway.yaml:4:13: certificates[0].key_file");
    assert!(
        warned
            .iter()
            .any(|l| l.contains("readable by group or others")),
        "no located warning for a 0644 key:\n{}",
        out.all()
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&conf);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        !out.all().contains("readable by group or others"),
        "0600 key warned about:\n{}",
        out.all()
    );
}
