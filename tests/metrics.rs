//! Black-box tests of `GET /metrics` (issue 6, SPEC §6) after real traffic: exact request counter
//! deltas (200/404/502), histogram counts, bandwidth, certificate expiry equal to each
//! certificate's notAfter (also after a reload replaces one), reload counters, the `consumer`
//! label only where the prometheus plugin's `per_consumer` is on, the plugin's family switches,
//! process metrics, and `portcullis check` on expiring and expired certificates.
//!
//! Every exposition is read by the harness parser and, whole, by Python's `prometheus_client`
//! parser: a malformed line anywhere fails the test.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::metrics::{self, python_parse, Sample};
use common::*;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509Ref, X509};

const REQUESTS: &str = "portcullis_http_requests_total";
const DURATION: &str = "portcullis_http_request_duration_seconds";
const UPSTREAM_DURATION: &str = "portcullis_upstream_duration_seconds";
const BANDWIDTH: &str = "portcullis_bandwidth_bytes_total";
const EXPIRY: &str = "portcullis_certificate_expiry_timestamp_seconds";
const RELOADS: &str = "portcullis_config_reloads_total";

const DEADLINE: Duration = Duration::from_secs(10);

/// `GET /metrics`, validated whole by Python's parser; both parsers must agree on every sample.
fn scrape(gw: &Gateway) -> String {
    let text = gw.metrics();
    let py = python_parse(&text);
    let ours = metrics::parse(&text);
    assert_eq!(
        py.len(),
        ours.len(),
        "the harness parser and prometheus_client disagree on the number of samples:\n{text}"
    );
    for (p, o) in py.iter().zip(&ours) {
        assert_eq!(
            (&p.name, &p.labels),
            (&o.name, &o.labels),
            "sample differs between parsers"
        );
        assert!(
            p.value == o.value || (p.value.is_nan() && o.value.is_nan()),
            "value of {} {:?}: python {} harness {}",
            o.name,
            o.labels,
            p.value,
            o.value
        );
    }
    text
}

fn val(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::value(text, name, labels).unwrap_or(0.0)
}

/// Scrapes until `done` holds (the logging hook counts just after the response is sent, and a
/// reload happens a poll interval after a file changes); panics with the last scrape otherwise.
#[track_caller]
fn wait_until(gw: &Gateway, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(gw);
        if done(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{what}: not reached within {DEADLINE:?}; last scrape:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// notAfter as a Unix timestamp, computed independently of the gateway.
fn not_after(cert: &X509Ref) -> i64 {
    let epoch = Asn1Time::from_unix(0).expect("epoch");
    let d = epoch.diff(cert.not_after()).expect("diff");
    i64::from(d.days) * 86_400 + i64::from(d.secs)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A server certificate for `cn` from the PKI's intermediate, valid until `not_after` (Unix
/// seconds): the harness only issues one-year or expired leaves.
struct Issued {
    cert: X509,
    chain_pem: String,
    key_pem: String,
}

fn issue_until(pki: &Pki, cn: &str, not_after: i64) -> Issued {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Portcullis Tests")
        .expect("O");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    let mut serial = BigNum::new().expect("bn");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("serial");
    b.set_serial_number(&serial.to_asn1_integer().expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(pki.intermediate.cert.subject_name())
        .expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::from_unix(now() - 86_400).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(not_after).expect("time"))
        .expect("not after");
    let san = SubjectAlternativeName::new()
        .dns(cn)
        .build(&b.x509v3_context(Some(&pki.intermediate.cert), None))
        .expect("san");
    b.append_extension(san).expect("san");
    b.sign(&pki.intermediate.key, MessageDigest::sha256())
        .expect("sign");
    let cert = b.build();
    let chain_pem = format!(
        "{}{}",
        String::from_utf8(cert.to_pem().expect("pem")).expect("utf8"),
        pki.intermediate.cert_pem
    );
    let key_pem =
        String::from_utf8(key.private_key_to_pem_pkcs8().expect("key pem")).expect("utf8");
    Issued {
        cert,
        chain_pem,
        key_pem,
    }
}

/// A self-signed CA certificate (CA:TRUE) that expired yesterday, as PEM.
fn expired_ca() -> String {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    let key = PKey::from_ec_key(EcKey::generate(&group).expect("key")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, "Old Test CA")
        .expect("CN");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("version");
    b.set_serial_number(
        &BigNum::from_u32(7)
            .expect("bn")
            .to_asn1_integer()
            .expect("serial"),
    )
    .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::from_unix(now() - 60 * 86_400).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::from_unix(now() - 86_400).expect("time"))
        .expect("not after");
    b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
        .expect("bc");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    String::from_utf8(b.build().to_pem().expect("pem")).expect("utf8")
}

/// Writes `rel` in the conf dir atomically (a dot-file then a rename), so the watcher never
/// sees a half-written file.
fn replace(gw: &Gateway, rel: &str, contents: &str) {
    let dir = gw.conf().dir();
    let tmp = dir.join(format!(".{}.tmp", rel.replace('/', "_")));
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, dir.join(rel)).expect("rename into place");
}

// ---------------------------------------------------------------------------------------------
// Requests, latency, bandwidth
// ---------------------------------------------------------------------------------------------

#[test]
fn request_counters_histograms_and_bandwidth_after_known_traffic() {
    let echo = HttpEcho::start("echo");
    let gw = Gateway::start(&format!(
        r#"
services:
- name: echo
  url: {echo}
  routes:
  - name: ok
    paths: [/ok]
- name: down
  url: http://127.0.0.1:{closed}
  retries: 0
  routes:
  - name: down
    paths: [/down]
"#,
        echo = echo.url(),
        closed = closed_port(),
    ));
    let before = scrape(&gw);
    let ok = [("service", "echo"), ("route", "ok")];
    let down = [("service", "down"), ("route", "down")];

    let body = "x".repeat(1000);
    let mut egress_seen = 0usize;
    for _ in 0..3 {
        let r = Curl::at("http", "h.test", gw.http_port(), "/ok/get").run();
        assert_eq!(r.status, 200, "{r:#?}");
        egress_seen += r.body.len();
    }
    for _ in 0..2 {
        let r = Curl::at("http", "h.test", gw.http_port(), "/ok/post")
            .data(&body)
            .run();
        assert_eq!(r.status, 200, "{r:#?}");
        assert_eq!(r.json()["body_len"], 1000, "{}", r.text());
        egress_seen += r.body.len();
    }
    for _ in 0..4 {
        let r = Curl::at("http", "h.test", gw.http_port(), "/nowhere").run();
        assert_eq!(r.status, 404, "{r:#?}");
    }
    for _ in 0..2 {
        let r = Curl::at("http", "h.test", gw.http_port(), "/down").run();
        assert_eq!(r.status, 502, "{r:#?}");
    }

    let code = |labels: &[(&'static str, &'static str)], c: &'static str| {
        let mut l = labels.to_vec();
        l.push(("code", c));
        l
    };
    let delta = |text: &str, name: &str, labels: &[(&str, &str)]| {
        val(text, name, labels) - val(&before, name, labels)
    };
    let text = wait_until(&gw, "7 routed requests and 4 unrouted ones counted", |t| {
        delta(t, REQUESTS, &code(&ok, "200")) >= 5.0
            && delta(t, REQUESTS, &code(&down, "502")) >= 2.0
            && delta(t, REQUESTS, &[("code", "404")]) >= 4.0
    });

    // Exact deltas, nothing counted twice or elsewhere.
    assert_eq!(delta(&text, REQUESTS, &code(&ok, "200")), 5.0);
    assert_eq!(delta(&text, REQUESTS, &code(&down, "502")), 2.0);
    assert_eq!(delta(&text, REQUESTS, &[("code", "404")]), 4.0);
    assert_eq!(
        delta(&text, REQUESTS, &[]),
        11.0,
        "every request counted exactly once: {:#?}",
        metrics::samples(&text, REQUESTS)
    );
    for s in metrics::samples(&text, REQUESTS) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["code", "route", "service"], "label set of {s:?}");
    }

    // Histograms: one observation per routed request; upstream time only where an upstream
    // answered.
    let count =
        |name: &str, labels: &[(&str, &str)]| delta(&text, &format!("{name}_count"), labels);
    assert_eq!(count(DURATION, &ok), 5.0);
    assert_eq!(count(DURATION, &down), 2.0);
    assert_eq!(count(UPSTREAM_DURATION, &ok), 5.0);
    assert_eq!(count(UPSTREAM_DURATION, &down), 0.0);
    for (name, labels) in [(DURATION, &ok), (DURATION, &down), (UPSTREAM_DURATION, &ok)] {
        assert_histogram_consistent(&text, name, labels);
    }

    // Bandwidth: request bodies in, response bodies out.
    let ingress = delta(
        &text,
        BANDWIDTH,
        &[
            ("service", "echo"),
            ("route", "ok"),
            ("direction", "ingress"),
        ],
    );
    let egress = delta(
        &text,
        BANDWIDTH,
        &[
            ("service", "echo"),
            ("route", "ok"),
            ("direction", "egress"),
        ],
    );
    assert!(
        ingress >= 2000.0,
        "ingress {ingress} < 2 × 1000 request bytes"
    );
    assert!(
        egress >= egress_seen as f64,
        "egress {egress} < {egress_seen} response bytes the client received"
    );
}

/// `_bucket`s are cumulative, `+Inf` equals `_count`, `_sum` is non-negative.
#[track_caller]
fn assert_histogram_consistent(text: &str, name: &str, labels: &[(&str, &str)]) {
    let matches = |s: &Sample| {
        labels
            .iter()
            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    };
    let mut buckets: Vec<(f64, f64)> = metrics::samples(text, &format!("{name}_bucket"))
        .into_iter()
        .filter(|s| matches(s))
        .map(|s| {
            let le = s.labels.get("le").expect("bucket without le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("numeric le")
            };
            (le, s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(!buckets.is_empty(), "{name}{labels:?}: no buckets");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}{labels:?}: buckets not cumulative: {buckets:?}"
    );
    let (le, inf) = buckets[buckets.len() - 1];
    assert!(le.is_infinite(), "{name}{labels:?}: no +Inf bucket");
    assert_eq!(
        Some(inf),
        metrics::value(text, &format!("{name}_count"), labels)
    );
    assert!(metrics::value(text, &format!("{name}_sum"), labels).unwrap_or(-1.0) >= 0.0);
}

#[test]
fn process_metrics_are_exported() {
    let gw = Gateway::start("services: []\n");
    let text = scrape(&gw);
    let py = python_parse(&text);
    for (name, min) in [
        ("process_resident_memory_bytes", 1.0),
        ("process_cpu_seconds_total", 0.0),
        ("process_open_fds", 1.0),
        ("process_start_time_seconds", 1.0),
    ] {
        let s = py
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"));
        assert!(s.value >= min, "{name} = {}", s.value);
    }
    let rss = py
        .iter()
        .find(|s| s.name == "process_resident_memory_bytes")
        .map(|s| s.family_type.clone());
    assert_eq!(rss.as_deref(), Some("gauge"));
    let cpu = py
        .iter()
        .find(|s| s.name == "process_cpu_seconds_total")
        .map(|s| s.family_type.clone());
    assert_eq!(cpu.as_deref(), Some("counter"));
}

// ---------------------------------------------------------------------------------------------
// Certificate expiry
// ---------------------------------------------------------------------------------------------

fn expiry_samples(text: &str) -> Vec<Sample> {
    metrics::samples(text, EXPIRY)
}

/// The one expiry series of `(kind, name)`.
#[track_caller]
fn expiry_of(text: &str, kind: &str, name: &str) -> Sample {
    let found: Vec<Sample> = expiry_samples(text)
        .into_iter()
        .filter(|s| {
            s.labels.get("kind").map(String::as_str) == Some(kind)
                && s.labels.get("name").map(String::as_str) == Some(name)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {EXPIRY}{{kind={kind:?},name={name:?}}}; have {:#?}",
        expiry_samples(text)
    );
    found[0].clone()
}

#[test]
fn certificate_expiry_is_each_not_after_and_follows_a_reload() {
    let pki = Pki::new();
    let upstream = HttpsEcho::start_with(
        "mtls-upstream",
        &pki.server.chain_path,
        &pki.server.key_path,
        ClientAuth::Required(pki.root.cert_path.clone()),
    );
    let server = issue_until(&pki, "api.example.com", now() + 200 * 86_400);
    let b = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/api.crt", &server.chain_pem)
        .file("certs/api.key", &server.key_pem)
        .file("certs/alice.crt", &pki.alice.cert_pem)
        .file("certs/alice.key", &pki.alice.key_pem);
    let gw = b
        .file(
            "gateway.yaml",
            format!(
                r#"
ca_certificates:
- name: root
  cert_file: certs/root.crt
certificates:
- name: api
  cert_file: certs/api.crt
  key_file: certs/api.key
  snis: [api.example.com]
- name: alice-client
  cert_file: certs/alice.crt
  key_file: certs/alice.key
services:
- name: secure-upstream
  url: {url}
  ca_certificates: [root]
  client_certificate: alice-client
  routes:
  - name: secure
    paths: [/secure]
"#,
                url = upstream.url()
            ),
        )
        .start();

    // The client certificate really is used upstream (so "client" is the right kind).
    let r = Curl::at("http", "h.test", gw.http_port(), "/secure").run();
    assert_eq!(r.status, 200, "{r:#?} {}", r.text());
    assert_eq!(
        r.json()["client_subject"],
        pki.alice.subject,
        "{}",
        r.text()
    );

    let text = scrape(&gw);
    let s = expiry_of(&text, "server", "api");
    assert_eq!(s.value, not_after(&server.cert) as f64, "{s:?}");
    assert!(s.labels["subject"].contains("CN=api.example.com"), "{s:?}");
    let s = expiry_of(&text, "client", "alice-client");
    assert_eq!(s.value, not_after(&pki.alice.cert) as f64, "{s:?}");
    assert!(s.labels["subject"].contains("CN=alice"), "{s:?}");
    let s = expiry_of(&text, "ca", "root");
    assert_eq!(s.value, not_after(&pki.root.cert) as f64, "{s:?}");
    assert!(
        s.labels["subject"].contains("CN=Portcullis Test Root CA"),
        "{s:?}"
    );
    assert_eq!(
        expiry_samples(&text).len(),
        3,
        "one series per certificate: {:#?}",
        expiry_samples(&text)
    );
    for s in expiry_samples(&text) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["kind", "name", "subject"], "{s:?}");
    }

    // Renewal: a new certificate with another subject and notAfter replaces the files.
    let renewed = issue_until(&pki, "renewed.example.com", now() + 20 * 86_400);
    replace(&gw, "certs/api.key", &renewed.key_pem);
    replace(&gw, "certs/api.crt", &renewed.chain_pem);
    let want = not_after(&renewed.cert) as f64;
    let text = wait_until(&gw, "expiry of the renewed certificate", |t| {
        metrics::value(t, EXPIRY, &[("kind", "server"), ("name", "api")]) == Some(want)
    });
    let s = expiry_of(&text, "server", "api");
    assert!(
        s.labels["subject"].contains("CN=renewed.example.com"),
        "{s:?}"
    );
    assert!(
        !text.contains("CN=api.example.com"),
        "the replaced certificate's series must be gone: {:#?}",
        expiry_samples(&text)
    );
    assert_eq!(expiry_samples(&text).len(), 3);
    assert_eq!(
        expiry_of(&text, "client", "alice-client").value,
        not_after(&pki.alice.cert) as f64
    );
}

// ---------------------------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------------------------

#[test]
fn reload_counter_counts_good_and_bad_reloads() {
    let echo = HttpEcho::start("echo");
    let base = format!(
        "services:\n- name: echo\n  url: {}\n  routes:\n  - name: one\n    paths: [/one]\n",
        echo.url()
    );
    let gw = Gateway::start(&base);
    let before = scrape(&gw);
    let success = |t: &str| {
        val(t, RELOADS, &[("result", "success")]) - val(&before, RELOADS, &[("result", "success")])
    };
    let error = |t: &str| {
        val(t, RELOADS, &[("result", "error")]) - val(&before, RELOADS, &[("result", "error")])
    };
    let hash = gw.status()["config_hash"].clone();

    // Good: a second route appears.
    replace(
        &gw,
        "gateway.yaml",
        &format!("{base}  - name: two\n    paths: [/two]\n"),
    );
    let text = wait_until(&gw, "one successful reload", |t| success(t) >= 1.0);
    assert_eq!(
        success(&text),
        1.0,
        "{:#?}",
        metrics::samples(&text, RELOADS)
    );
    assert_eq!(error(&text), 0.0, "{:#?}", metrics::samples(&text, RELOADS));
    assert_eq!(
        Curl::at("http", "h.test", gw.http_port(), "/two")
            .run()
            .status,
        200
    );
    let good_hash = gw.status()["config_hash"].clone();
    assert_ne!(good_hash, hash, "config_hash must change with the config");

    // Bad: a dangling reference. Counted as an error; the running config stays.
    replace(
        &gw,
        "gateway.yaml",
        &format!("{base}  - name: two\n    paths: [/two]\n    service: nowhere\n"),
    );
    let text = wait_until(&gw, "one failed reload", |t| error(t) >= 1.0);
    assert_eq!(error(&text), 1.0, "{:#?}", metrics::samples(&text, RELOADS));
    assert_eq!(
        success(&text),
        1.0,
        "{:#?}",
        metrics::samples(&text, RELOADS)
    );
    assert_eq!(gw.status()["config_hash"], good_hash);
    assert_eq!(
        Curl::at("http", "h.test", gw.http_port(), "/two")
            .run()
            .status,
        200,
        "the previous config keeps serving"
    );

    // SIGHUP forces a reload attempt (the files still fail: another error).
    gw.signal("HUP");
    let text = wait_until(&gw, "SIGHUP reload counted", |t| error(t) >= 2.0);
    assert_eq!(error(&text), 2.0);
    for s in metrics::samples(&text, RELOADS) {
        let keys: Vec<&str> = s.labels.keys().map(String::as_str).collect();
        assert_eq!(keys, ["result"], "{s:?}");
        assert!(
            ["success", "error"].contains(&s.labels["result"].as_str()),
            "{s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The prometheus plugin: per_consumer and the family switches
// ---------------------------------------------------------------------------------------------

#[test]
fn consumer_label_only_where_per_consumer_is_enabled() {
    let pki = Pki::new();
    let server = pki.server_leaf("api", &["DNS:api.example.com"]);
    let echo = HttpEcho::start("echo");
    let mtls = "    - name: mtls-auth\n      config:\n        ca_certificates: [clients]\n";
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
consumers:
- username: alice
- username: bob
services:
- name: echo
  url: {echo}
  routes:
  - name: by-consumer
    paths: [/by-consumer]
    plugins:
{mtls}    - name: prometheus
      config:
        per_consumer: true
  - name: plain
    paths: [/plain]
    plugins:
{mtls}  - name: quiet
    paths: [/quiet]
    plugins:
{mtls}    - name: prometheus
      config:
        status_code_metrics: false
        latency_metrics: false
        bandwidth_metrics: false
"#,
                echo = echo.url()
            ),
        )
        .start();
    let get = |path: &str, who: Option<&Leaf>| {
        let c =
            Curl::at("https", "api.example.com", gw.https_port(), path).cacert(&pki.root.cert_path);
        match who {
            Some(l) => c.cert(&l.cert_path, &l.key_path),
            None => c,
        }
        .run()
    };
    for (path, who, n, status) in [
        ("/by-consumer", Some(&pki.alice), 3, 200),
        ("/by-consumer", Some(&pki.bob), 1, 200),
        ("/by-consumer", None, 2, 401),
        ("/plain", Some(&pki.alice), 2, 200),
        ("/quiet", Some(&pki.alice), 2, 200),
    ] {
        for _ in 0..n {
            let r = get(path, who);
            assert_eq!(r.status, status, "{path}: {r:#?} {}", r.text());
        }
    }
    let text = wait_until(&gw, "requests of by-consumer and plain counted", |t| {
        val(t, REQUESTS, &[("route", "by-consumer")]) >= 6.0
            && val(t, REQUESTS, &[("route", "plain")]) >= 2.0
    });
    let series = |route: &str| -> Vec<(BTreeMap<String, String>, f64)> {
        metrics::samples(&text, REQUESTS)
            .into_iter()
            .filter(|s| s.labels.get("route").map(String::as_str) == Some(route))
            .map(|s| (s.labels, s.value))
            .collect()
    };
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    // per_consumer: the main family carries `consumer` for identified consumers; requests with no
    // consumer keep the plain label set. Nothing is counted twice.
    let mut got = series("by-consumer");
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (
            labels(&[
                ("service", "echo"),
                ("route", "by-consumer"),
                ("code", "200"),
                ("consumer", "alice"),
            ]),
            3.0,
        ),
        (
            labels(&[
                ("service", "echo"),
                ("route", "by-consumer"),
                ("code", "200"),
                ("consumer", "bob"),
            ]),
            1.0,
        ),
        (
            labels(&[
                ("service", "echo"),
                ("route", "by-consumer"),
                ("code", "401"),
            ]),
            2.0,
        ),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "{REQUESTS} of the per_consumer route");

    // Default (no plugin, or per_consumer off): no consumer label at all, not even an empty one.
    assert_eq!(
        series("plain"),
        vec![(
            labels(&[("service", "echo"), ("route", "plain"), ("code", "200")]),
            2.0
        )]
    );
    assert!(
        !metrics::parse(&text)
            .iter()
            .any(|s| s.labels.get("consumer").is_some_and(|c| c.is_empty())),
        "no empty consumer labels"
    );

    // The switches: nothing at all for the quiet route.
    for s in metrics::parse(&text) {
        assert_ne!(
            s.labels.get("route").map(String::as_str),
            Some("quiet"),
            "status/latency/bandwidth switched off for route quiet: {s:?}"
        );
    }
    // Latency and bandwidth still on for the others.
    assert_eq!(
        val(
            &text,
            &format!("{DURATION}_count"),
            &[("route", "by-consumer")]
        ),
        6.0
    );
    assert_eq!(
        val(&text, &format!("{DURATION}_count"), &[("route", "plain")]),
        2.0
    );
    assert!(metrics::value(
        &text,
        BANDWIDTH,
        &[("route", "plain"), ("direction", "egress")]
    )
    .is_some());
}

// ---------------------------------------------------------------------------------------------
// portcullis check on certificate lifetimes
// ---------------------------------------------------------------------------------------------

fn cert_conf(chain_pem: &str, key_pem: &str) -> ConfDir {
    ConfDir::new()
        .with("certs/api.crt", chain_pem)
        .with("certs/api.key", key_pem)
        .with(
            "gateway.yaml",
            "certificates:\n- name: api\n  cert_file: certs/api.crt\n  key_file: certs/api.key\n  snis: [api.example.com]\n",
        )
}

#[test]
fn check_warns_on_certificates_expiring_within_30_days() {
    let pki = Pki::new();
    let soon = issue_until(&pki, "api.example.com", now() + 10 * 86_400 + 3600);
    let out = check(&cert_conf(&soon.chain_pem, &soon.key_pem));
    assert_eq!(
        out.code,
        0,
        "expiring soon is a warning, not an error:\n{}",
        out.all()
    );
    let warning: Vec<String> = out
        .all()
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("warning") && l.contains("\"api\""))
        .map(str::to_string)
        .collect();
    assert_eq!(
        warning.len(),
        1,
        "one warning naming the certificate:\n{}",
        out.all()
    );
    assert!(warning[0].contains("10 days"), "{warning:?}");

    // 60 days left: nothing to say.
    let later = issue_until(&pki, "api.example.com", now() + 60 * 86_400);
    let out = check(&cert_conf(&later.chain_pem, &later.key_pem));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        !out.all().to_ascii_lowercase().contains("expire"),
        "{}",
        out.all()
    );
}

/// Kong loads expired `certificates` (clients decide) and refuses expired `ca_certificates`:
/// `check` passes with a located warning for the first and fails, located, for the second.
#[test]
fn check_warns_on_expired_certificates_and_fails_on_expired_ca_certificates() {
    let pki = Pki::new();
    let out = check(&cert_conf(
        &pki.server_expired.chain_pem,
        &pki.server_expired.key_pem,
    ));
    assert_eq!(
        out.code,
        0,
        "an expired certificate is a warning, not an error:\n{}",
        out.all()
    );
    let warning = out.lines_starting("conf/gateway.yaml:2:3: certificates[0]: warning: ");
    assert!(
        warning
            .iter()
            .any(|l| l.contains("\"api\"") && l.contains("expired at") && l.contains("served")),
        "a located warning names the certificate:\n{}",
        out.all()
    );
    assert!(!out.all().contains("PRIVATE KEY"), "{}", out.all());

    // An expired CA certificate is an error, reported in the same pass as an unrelated one.
    let conf = ConfDir::new()
        .with("certs/expired-ca.crt", expired_ca())
        .with(
            "gateway.yaml",
            "ca_certificates:\n- name: old-ca\n  cert_file: certs/expired-ca.crt\nservices:\n- name: s\n  url: https://127.0.0.1:9\n  retires: 3\n  ca_certificates: [old-ca]\n",
        );
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let errors = out.lines_starting("conf/gateway.yaml:3:14: ca_certificates[0].cert_file: ");
    assert!(
        errors.iter().any(|l| l.contains("\"old-ca\"")
            && l.contains("expired at")
            && l.contains("\"Not After\" time is in the past")),
        "{}",
        out.all()
    );
    assert_eq!(
        out.lines_starting("conf/gateway.yaml:7:3: services[0].retires: ")
            .len(),
        1,
        "{}",
        out.all()
    );
    // The service's reference to the refused CA is no second error.
    assert!(
        out.all().contains("conf: 2 error(s)"),
        "exactly the two errors:\n{}",
        out.all()
    );
}

/// The gateway starts with an expired server certificate and an expired client certificate,
/// serves the expired one on its SNI (clients decide), logs a warning, and counts both in
/// `portcullis_certificates_expired` while keeping their expiry series. An expired CA
/// certificate still refuses the configuration.
#[test]
fn expired_certificates_are_served_warned_and_counted() {
    let pki = Pki::new();
    let upstream = HttpsEcho::start_with(
        "mtls-upstream",
        &pki.server.chain_path,
        &pki.server.key_path,
        ClientAuth::Required(pki.root.cert_path.clone()),
    );
    let yaml = format!(
        r#"
ca_certificates:
- name: root
  cert_file: certs/root.crt
certificates:
- name: old
  cert_file: certs/old.crt
  key_file: certs/old.key
  snis: [old.example.com]
- name: current
  cert_file: certs/api.crt
  key_file: certs/api.key
  snis: [api.example.com]
- name: old-client
  cert_file: certs/old-client.crt
  key_file: certs/old-client.key
services:
- name: secure-upstream
  url: {url}
  ca_certificates: [root]
  client_certificate: old-client
  routes:
  - name: r
    paths: [/]
"#,
        url = upstream.url()
    );
    let gw = Gateway::builder()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("certs/old.crt", &pki.server_expired.chain_pem)
        .file("certs/old.key", &pki.server_expired.key_pem)
        .file("certs/api.crt", &pki.server.chain_pem)
        .file("certs/api.key", &pki.server.key_pem)
        .file("certs/old-client.crt", &pki.client_expired.cert_pem)
        .file("certs/old-client.key", &pki.client_expired.key_pem)
        .file("gateway.yaml", &yaml)
        .start();

    let served = s_client(gw.https_port(), Some("old.example.com"), &[]).expect("handshake");
    assert_eq!(served.subject, pki.server_expired.subject, "{served:?}");
    assert_eq!(served.serial, serial_hex(&pki.server_expired.cert));
    let served = s_client(gw.https_port(), Some("api.example.com"), &[]).expect("handshake");
    assert_eq!(served.subject, pki.server.subject, "{served:?}");

    let text = scrape(&gw);
    let expired = "portcullis_certificates_expired";
    assert_eq!(val(&text, expired, &[("kind", "server")]), 1.0, "{text}");
    assert_eq!(val(&text, expired, &[("kind", "client")]), 1.0, "{text}");
    assert_eq!(
        metrics::value(&text, expired, &[("kind", "ca")]),
        Some(0.0),
        "every kind has a series: {text}"
    );
    let s = expiry_of(&text, "server", "old");
    assert_eq!(s.value, not_after(&pki.server_expired.cert) as f64, "{s:?}");
    let s = expiry_of(&text, "client", "old-client");
    assert_eq!(s.value, not_after(&pki.client_expired.cert) as f64, "{s:?}");

    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("certificates[0]")
            && l.contains("\"old\"")
            && l.contains("expired at")),
        "a located warning at load:\n{log}"
    );

    // An expired CA certificate is refused at start as in Kong.
    let err = match Gateway::builder()
        .file("certs/expired-ca.crt", expired_ca())
        .file(
            "gateway.yaml",
            "ca_certificates:\n- name: old-ca\n  cert_file: certs/expired-ca.crt\n",
        )
        .try_start()
    {
        Ok(_) => panic!("gateway started with an expired CA certificate"),
        Err(e) => e,
    };
    assert_eq!(err.exit_code, Some(1), "{err}");
    assert!(
        err.log
            .contains("conf/gateway.yaml:3:14: ca_certificates[0].cert_file: "),
        "{err}"
    );
}
