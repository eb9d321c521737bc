//! The `acme` plugin against a real ACME CA: pebble (Let's Encrypt's test CA) validating through
//! real DNS (dnsmasq resolving `*.acme.test` to 127.0.0.1) on the gateway's own listeners. Each
//! test starts its own pebble and dnsmasq on ephemeral ports; pebble's HTTPS certificate comes
//! from the test PKI and is trusted through `api_ca_certificates`, and the issued certificates
//! are verified with pebble's issuing root (fetched from its management port).

mod common;

use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Issuance goes through account registration, validation and finalisation: a few seconds.
const ISSUE_DEADLINE: Duration = Duration::from_secs(40);

struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// dnsmasq answering `*.acme.test` (and `acme.test`) with 127.0.0.1, nothing else.
fn dnsmasq() -> (Proc, u16) {
    let port = loop {
        let p = free_port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let child = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
        ])
        .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
        .arg(format!("--port={port}"))
        .arg("--address=/acme.test/127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start dnsmasq (scripts/setup.sh installs it): {e}"));
    let proc = Proc(Some(child));
    wait_listening(port, "dnsmasq");
    (proc, port)
}

struct Pebble {
    _proc: Proc,
    _dns: Proc,
    dir: tempfile::TempDir,
    port: u16,
    mgmt: u16,
    api_ca: PathBuf,
}

impl Pebble {
    /// Pebble validating http-01 on `http_port` and tls-alpn-01 on `tls_port`.
    fn start(pki: &Pki, http_port: u16, tls_port: u16) -> Pebble {
        let (dns, dns_port) = dnsmasq();
        let dir = tempfile::tempdir().unwrap();
        let (port, mgmt) = (free_port(), free_port());
        let leaf = &pki.server_direct;
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": leaf.cert_path,
            "privateKey": leaf.key_path,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // No artificial validation delays, no rejected nonces, no authorisation reuse: each
            // order is validated, promptly.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start pebble (scripts/setup.sh installs it): {e}"));
        let proc = Proc(Some(child));
        wait_listening(port, "pebble");
        wait_listening(mgmt, "pebble management");
        Pebble {
            _proc: proc,
            _dns: dns,
            dir,
            port,
            mgmt,
            api_ca: pki.root.cert_path.clone(),
        }
    }

    /// Pebble's issuing root, written to a file for verifying clients.
    fn root_file(&self) -> PathBuf {
        let r = Curl::new(&format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .cacert(&self.api_ca)
            .run();
        assert_eq!(r.status, 200, "{}", r.stderr);
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, r.text()).unwrap();
        path
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

/// The gateway's conf: pebble's HTTPS CA as a `ca_certificates` entity and one global `acme`
/// instance with `extra` config lines (indented 4 spaces).
fn conf(api_uri: &str, extra: &str) -> String {
    format!(
        r#"_format_version: "3.0"
ca_certificates:
- name: pebble-api
  cert_file: certs/pebble-api.crt
plugins:
- name: acme
  config:
    account_email: ops@acme.test
    api_uri: {api_uri}
    tos_accepted: true
    cert_type: ecc
    api_ca_certificates: [pebble-api]
{extra}"#
    )
}

fn builder(pki: &Pki) -> GatewayBuilder {
    Gateway::builder().file("certs/pebble-api.crt", &pki.root.cert_pem)
}

/// Handshakes for `sni` until the served certificate verifies with `root` (a certificate the
/// gateway got from pebble); returns its serial.
fn wait_issued(gw: &Gateway, pebble: &Pebble, root: &Path, sni: &str) -> String {
    let deadline = Instant::now() + ISSUE_DEADLINE;
    loop {
        if let Ok(s) = TlsProbe::new(gw.https_port())
            .sni(sni)
            .verify_with(root)
            .run()
        {
            return s.serial;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate for {sni} within {ISSUE_DEADLINE:?}\n--- gateway ---\n{}\n--- pebble ---\n{}",
            gw.log(),
            pebble.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn orders(gw: &Gateway, result: &str) -> f64 {
    common::metrics::value(
        &gw.metrics(),
        "portcullis_acme_orders_total",
        &[("result", result)],
    )
    .unwrap_or(0.0)
}

fn default_served(gw: &Gateway, sni: &str) -> Served {
    TlsProbe::new(gw.https_port()).sni(sni).run().unwrap()
}

#[test]
fn http_01_issues_configured_domains_ahead_of_time_and_never_orders_other_names() {
    let pki = Pki::new();
    let b = builder(&pki);
    let ports = b.ports();
    let pebble = Pebble::start(&pki, ports.http, closed_port());
    let api = format!("https://127.0.0.1:{}/dir", pebble.port);
    let gw = b
        .file("gateway.yaml", conf(&api, "    domains: [web.acme.test]\n"))
        .start();
    let root = pebble.root_file();
    // Not allowed: the default certificate, and no order.
    let other = default_served(&gw, "other.acme.test");
    assert!(
        other.subject.contains("Portcullis self-signed"),
        "{other:?}"
    );
    let serial = wait_issued(&gw, &pebble, &root, "web.acme.test");
    // A name that is not configured still gets the default certificate, and nothing was ordered
    // for it: exactly one order, the configured one.
    for _ in 0..3 {
        let s = default_served(&gw, "other.acme.test");
        assert!(s.subject.contains("Portcullis self-signed"), "{s:?}");
    }
    assert_eq!(orders(&gw, "success"), 1.0);
    assert_eq!(orders(&gw, "failure"), 0.0);
    assert!(
        !pebble.log().contains("other.acme.test"),
        "{}",
        pebble.log()
    );
    // The certificate is exported with the configured ones.
    let m = gw.metrics();
    let expiry = common::metrics::samples(&m, "portcullis_certificate_expiry_timestamp_seconds");
    assert!(
        expiry
            .iter()
            .any(|s| s.labels.get("kind").map(String::as_str) == Some("acme")
                && s.labels.get("name").map(String::as_str) == Some("web.acme.test")),
        "{m}"
    );
    // The challenge path answers only while an order is pending; other paths are routed.
    let r = Curl::at(
        "http",
        "web.acme.test",
        gw.http_port(),
        "/.well-known/acme-challenge/nope",
    )
    .run();
    assert_eq!((r.status, r.text().as_str()), (404, "Not found\n"));
    // Private keys are never logged.
    assert!(!gw.log().contains("PRIVATE KEY"));
    // A reload rebuilds the plugin; the certificate stays served without a new order.
    gw.conf().write(
        "gateway.yaml",
        conf(
            &api,
            "    domains: [web.acme.test]\n    fail_backoff_minutes: 6\n",
        ),
    );
    gw.signal("HUP");
    assert!(gw.wait_for_log("configuration reloaded", Duration::from_secs(10)));
    let again = TlsProbe::new(gw.https_port())
        .sni("web.acme.test")
        .verify_with(&root)
        .run()
        .unwrap();
    assert_eq!(again.serial, serial);
    assert_eq!(orders(&gw, "success"), 1.0);
}

#[test]
fn tls_alpn_01_issues_on_the_first_handshake_for_an_allowed_name() {
    let pki = Pki::new();
    let b = builder(&pki);
    let ports = b.ports();
    // http-01 would fail: pebble's HTTP validation port is closed.
    let pebble = Pebble::start(&pki, closed_port(), ports.https);
    let api = format!("https://127.0.0.1:{}/dir", pebble.port);
    let configured = pki.server_leaf("static", &["DNS:static.acme.test"]);
    let yaml = conf(&api, "    domains: [\"*.acme.test\"]\n    challenge_type: tls-alpn-01\n")
        + "certificates:\n- name: static\n  cert_file: certs/static.crt\n  key_file: certs/static.key\n  snis: [static.acme.test]\n";
    let gw = b
        .file("certs/static.crt", &configured.chain_pem)
        .file("certs/static.key", &configured.key_pem)
        .file("gateway.yaml", yaml)
        .start();
    let root = pebble.root_file();
    // The first handshake gets the default certificate and starts the order.
    let first = default_served(&gw, "alpn.acme.test");
    assert!(
        first.subject.contains("Portcullis self-signed"),
        "{first:?}"
    );
    wait_issued(&gw, &pebble, &root, "alpn.acme.test");
    assert_eq!(orders(&gw, "success"), 1.0);
    // Ordinary clients never get `acme-tls/1` nor the challenge certificate.
    let h = TlsProbe::new(gw.https_port())
        .sni("alpn.acme.test")
        .alpn(&["http/1.1"])
        .verify_with(&root)
        .run()
        .unwrap();
    assert_ne!(h.alpn.as_deref(), Some("acme-tls/1"));
    // A configured certificate takes precedence over ACME: served, and never ordered.
    for _ in 0..3 {
        let s = TlsProbe::new(gw.https_port())
            .sni("static.acme.test")
            .verify_with(&pki.root.cert_path)
            .run()
            .unwrap();
        assert_eq!(s.serial, configured.serial);
    }
    assert_eq!(orders(&gw, "success"), 1.0);
    assert!(
        !pebble.log().contains("static.acme.test"),
        "{}",
        pebble.log()
    );
}

#[test]
fn certificates_are_renewed_once_the_threshold_is_reached() {
    let pki = Pki::new();
    let b = builder(&pki);
    let ports = b.ports();
    let pebble = Pebble::start(&pki, ports.http, closed_port());
    let api = format!("https://127.0.0.1:{}/dir", pebble.port);
    let gw = b
        .file(
            "gateway.yaml",
            conf(&api, "    domains: [renew.acme.test]\n"),
        )
        .start();
    let root = pebble.root_file();
    let first = wait_issued(&gw, &pebble, &root, "renew.acme.test");
    // Move the threshold beyond the certificate's lifetime: the reload's renewal check renews
    // it, and the next handshakes get the new certificate without another reload.
    gw.conf().write(
        "gateway.yaml",
        conf(
            &api,
            "    domains: [renew.acme.test]\n    renew_threshold_days: 100000\n",
        ),
    );
    gw.signal("HUP");
    let deadline = Instant::now() + ISSUE_DEADLINE;
    loop {
        let s = wait_issued(&gw, &pebble, &root, "renew.acme.test");
        if s != first {
            break;
        }
        assert!(Instant::now() < deadline, "not renewed\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(orders(&gw, "success") >= 2.0);
    assert!(
        gw.log().contains("acme: renewing certificate"),
        "{}",
        gw.log()
    );
}

struct Redis {
    _proc: Proc,
    port: u16,
}

fn redis() -> Redis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start redis-server (scripts/setup.sh installs it): {e}"));
    let proc = Proc(Some(child));
    wait_listening(port, "redis-server");
    Redis { _proc: proc, port }
}

#[test]
fn two_gateways_sharing_redis_place_one_order_per_domain() {
    let pki = Pki::new();
    let redis = redis();
    let b1 = builder(&pki);
    let b2 = builder(&pki);
    // Pebble validates on the first gateway only: when the second one wins the order, the
    // first answers from the challenge the second stored in Redis.
    let pebble = Pebble::start(&pki, b1.ports().http, closed_port());
    let api = format!("https://127.0.0.1:{}/dir", pebble.port);
    let extra = format!(
        "    domains: [\"*.acme.test\"]\n    storage: redis\n    storage_config:\n      redis:\n        host: 127.0.0.1\n        port: {}\n",
        redis.port
    );
    let gw1 = b1.file("gateway.yaml", conf(&api, &extra)).start();
    let gw2 = b2.file("gateway.yaml", conf(&api, &extra)).start();
    let root = pebble.root_file();
    // Both see the name at once.
    let (p1, p2) = (gw1.https_port(), gw2.https_port());
    let t1 = std::thread::spawn(move || TlsProbe::new(p1).sni("shared.acme.test").run());
    let t2 = std::thread::spawn(move || TlsProbe::new(p2).sni("shared.acme.test").run());
    let _ = (t1.join(), t2.join());
    let s1 = wait_issued(&gw1, &pebble, &root, "shared.acme.test");
    let s2 = wait_issued(&gw2, &pebble, &root, "shared.acme.test");
    assert_eq!(s1, s2, "one certificate, shared");
    assert_eq!(orders(&gw1, "success") + orders(&gw2, "success"), 1.0);
    assert_eq!(orders(&gw1, "failure") + orders(&gw2, "failure"), 0.0);
}

#[test]
fn an_unreachable_ca_is_backed_off_and_the_default_certificate_served() {
    let pki = Pki::new();
    let api = format!("https://127.0.0.1:{}/dir", closed_port());
    let gw = builder(&pki)
        .file(
            "gateway.yaml",
            conf(
                &api,
                "    domains: [down.acme.test]\n    fail_backoff_minutes: 1\n",
            ),
        )
        .start();
    assert!(
        gw.wait_for_log("acme: order failed", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    assert!(gw.log().contains("fail_backoff_minutes"), "{}", gw.log());
    assert_eq!(orders(&gw, "failure"), 1.0);
    // Handshakes keep getting the default certificate; after the negative cache they look
    // again and find the back-off instead of ordering.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw
        .log()
        .contains("not ordering because of a previous failure")
    {
        let s = default_served(&gw, "down.acme.test");
        assert!(s.subject.contains("Portcullis self-signed"), "{s:?}");
        assert!(
            Instant::now() < deadline,
            "no back-off logged\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(orders(&gw, "failure"), 1.0, "backed off, not retried");
}

#[test]
fn bad_acme_config_is_refused_with_its_location() {
    let pki = Pki::new();
    let b = builder(&pki).file(
        "gateway.yaml",
        conf("https://127.0.0.1:1/dir", "    storage: kong\n"),
    );
    let out = check(b.conf());
    assert_ne!(out.code, 0);
    assert!(
        out.all().contains(
            "conf/gateway.yaml:13:14: plugins[0].config.storage: \"kong\" storage can't be used with dbless mode"
        ),
        "{}",
        out.all()
    );
    let b = builder(&pki).file(
        "gateway.yaml",
        conf(
            "https://127.0.0.1:1/dir",
            "    api_ca_certificates: [nope]\n",
        )
        .replace("    api_ca_certificates: [pebble-api]\n", ""),
    );
    let out = check(b.conf());
    assert_ne!(out.code, 0);
    assert!(
        out.all().contains("api_ca_certificates[0]"),
        "{}",
        out.all()
    );
}

#[test]
fn file_storage_keeps_certificates_across_a_restart() {
    let pki = Pki::new();
    let store = tempfile::tempdir().unwrap();
    let b = builder(&pki);
    let pebble = Pebble::start(&pki, b.ports().http, closed_port());
    let api = format!("https://127.0.0.1:{}/dir", pebble.port);
    let extra = format!(
        "    domains: [kept.acme.test]\n    storage: file\n    storage_config:\n      file:\n        path: {}\n",
        store.path().display()
    );
    let root = pebble.root_file();
    let serial = {
        let gw = b.file("gateway.yaml", conf(&api, &extra)).start();
        wait_issued(&gw, &pebble, &root, "kept.acme.test")
    };
    // A new process on the same directory serves the stored certificate without ordering.
    let gw = builder(&pki)
        .file("gateway.yaml", conf(&api, &extra))
        .start();
    assert_eq!(wait_issued(&gw, &pebble, &root, "kept.acme.test"), serial);
    assert_eq!(orders(&gw, "success") + orders(&gw, "failure"), 0.0);
    // The private key is on disk, readable by the gateway's user only.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(store.path()).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0);
    }
}
