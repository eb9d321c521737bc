//! SNI → certificate lookup (`portcullis::tls::CertStore::lookup`, run once per TLS handshake)
//! with 1,000 certificates: 900 exact names, 50 `*.domain` and 50 `name.*` wildcards, loaded
//! from a conf dir through `portcullis::config::load`.
//!
//! `cargo bench --bench sni`; reports only, asserts nothing about time.

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::tls::{CertStore, ClientCertPolicy};

fn sni_of(i: usize) -> String {
    match i % 20 {
        0 => format!("*.w{i}.bench.test"),
        10 => format!("p{i}.*"),
        _ => format!("h{i}.bench.test"),
    }
}

fn store() -> (tempfile::TempDir, CertStore) {
    let mut files = Vec::new();
    let mut y = String::from("_format_version: \"3.0\"\ncertificates:\n");
    for i in 0..1000 {
        let sni = sni_of(i);
        // The SAN must be a DNS name; the `name.*` pattern is an SNI rule, not a SAN.
        let san = sni.replace(".*", ".bench.test");
        let c = support::issue(&san.replace("*.", "wild."), &[&san], None, false, false);
        files.push((format!("certs/c{i}.crt"), c.cert_pem()));
        files.push((format!("certs/c{i}.key"), c.key_pem()));
        let _ = write!(
            y,
            "  - name: c{i}\n    cert_file: certs/c{i}.crt\n    key_file: certs/c{i}.key\n    snis: [\"{sni}\"]\n"
        );
    }
    files.push(("gateway.yaml".into(), y));
    let (dir, config) = support::load(&files);
    assert_eq!(config.certificates.len(), 1000);
    let fallback = portcullis::tls::self_signed().expect("self-signed");
    let store = CertStore::new(&config, fallback, ClientCertPolicy::default());
    (dir, store)
}

fn benches(c: &mut Criterion) {
    let (_dir, store) = store();
    let cases: [(&str, Option<&str>); 7] = [
        ("exact", Some("h501.bench.test")),
        ("exact-uppercase", Some("H501.Bench.Test")),
        ("wildcard-suffix", Some("api.w500.bench.test")),
        ("wildcard-prefix", Some("p510.example.org")),
        ("miss-default", Some("unknown.example.com")),
        ("miss-two-labels-deep", Some("a.b.w500.bench.test")),
        ("no-sni", None),
    ];
    let mut g = c.benchmark_group("sni/1000-certs");
    for (label, sni) in cases {
        println!(
            "sni/1000-certs/{label}: {sni:?} -> {}",
            store.lookup(sni).display_name()
        );
        g.bench_function(label, |b| {
            b.iter(|| black_box(store.lookup(black_box(sni))))
        });
    }
    g.finish();
}

criterion_group! {
    name = sni_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(sni_benches);
