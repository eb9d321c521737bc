//! Reload cost (issue 7): what a live reload does off the request path — read and validate the
//! conf dir (`config::load`) then compile the live state (`runtime::compile`) — for a
//! configuration of 10,000 routes and 1,000 certificates, and the process's resident memory
//! before and after 50 such reloads (each replacing the previous runtime, as the gateway does).
//!
//! `cargo bench --bench reload` (release build). Prints figures; the target is ≤ 1 s per reload.
//! Sizes can be changed with `RELOAD_BENCH_ROUTES`, `RELOAD_BENCH_CERTS`, `RELOAD_BENCH_RELOADS`.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use portcullis::runtime::{self, Runtime};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

fn cert(
    cn: &str,
    san: Option<&str>,
    serial: u32,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    let name = name.build();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("version");
    let serial = BigNum::from_u32(serial)
        .and_then(|n| n.to_asn1_integer())
        .expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(365).expect("time"))
        .expect("not after");
    if let Some(san) = san {
        let ext = SubjectAlternativeName::new()
            .dns(san)
            .build(&b.x509v3_context(issuer.map(|(c, _)| c.as_ref()), None))
            .expect("SAN");
        b.append_extension(ext).expect("SAN");
    } else {
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("BC"))
            .expect("BC");
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
        .expect("sign");
    b.build()
}

/// Writes the conf dir: `certs` certificates (files), `routes` routes over 100 services, half
/// of them behind upstreams with two targets, every tenth route a regex path.
fn write_conf(dir: &Path, routes: usize, certs: usize) {
    std::fs::create_dir_all(dir.join("certs")).expect("certs dir");
    let ca_key = key();
    let ca = cert("Reload Bench CA", None, 1, &ca_key, None);
    let ca_pem = String::from_utf8(ca.to_pem().expect("pem")).expect("utf8");
    let mut y = String::with_capacity(routes * 120 + certs * 150);
    y.push_str("_format_version: \"3.0\"\ncertificates:\n");
    for c in 0..certs {
        let k = key();
        let sni = format!("c{c}.bench.test");
        let leaf = cert(&sni, Some(&sni), 2 + c as u32, &k, Some((&ca, &ca_key)));
        let chain = format!(
            "{}{ca_pem}",
            String::from_utf8(leaf.to_pem().expect("pem")).expect("utf8")
        );
        std::fs::write(dir.join(format!("certs/c{c}.crt")), chain).expect("write cert");
        std::fs::write(
            dir.join(format!("certs/c{c}.key")),
            k.private_key_to_pem_pkcs8().expect("key pem"),
        )
        .expect("write key");
        let _ = write!(
            y,
            "- name: cert-{c}\n  cert_file: certs/c{c}.crt\n  key_file: certs/c{c}.key\n  snis: [{sni}]\n"
        );
    }
    let services = 100.min(routes.max(1));
    let per = routes.div_ceil(services);
    y.push_str("upstreams:\n");
    for s in (0..services).filter(|s| s % 2 == 0) {
        let _ = write!(
            y,
            "- name: pool-{s}\n  targets:\n  - target: 127.0.0.1:{}\n  - target: 127.0.0.2:{}\n",
            10_000 + s,
            10_000 + s
        );
    }
    y.push_str("services:\n");
    let mut n = 0;
    for s in 0..services {
        let url = if s % 2 == 0 {
            format!("http://pool-{s}")
        } else {
            format!("http://127.0.0.1:{}", 20_000 + s)
        };
        let _ = write!(y, "- name: svc-{s}\n  url: {url}\n  routes:\n");
        for r in 0..per {
            if n == routes {
                break;
            }
            n += 1;
            let path = if r % 10 == 0 {
                format!("\"~/s{s}/items/{r}/[0-9]+$\"")
            } else {
                format!("/s{s}/r{r}")
            };
            let _ = write!(
                y,
                "  - name: r-{s}-{r}\n    paths: [{path}]\n    hosts: [h{}.bench.test]\n    methods: [GET, POST]\n",
                r % 50
            );
        }
    }
    std::fs::write(dir.join("gateway.yaml"), y).expect("write gateway.yaml");
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Timing {
    load: Duration,
    compile: Duration,
}

fn reload(
    dir: &Path,
    fallback: &Arc<portcullis::config::model::Certificate>,
    previous: Option<&Runtime>,
) -> (Runtime, Timing) {
    let t0 = Instant::now();
    let (config, _warnings) = match portcullis::config::load(dir, portcullis::plugin::registry()) {
        Ok(c) => c,
        Err(e) => panic!("the generated configuration does not load:\n{e}"),
    };
    let load = t0.elapsed();
    let t1 = Instant::now();
    let rt = runtime::compile(config, fallback.clone(), previous).expect("compile");
    (
        rt,
        Timing {
            load,
            compile: t1.elapsed(),
        },
    )
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "min {:>8.1?}  median {:>8.1?}  max {:>8.1?}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

fn main() {
    // `cargo test --benches` runs this binary too: keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let routes = env_usize("RELOAD_BENCH_ROUTES", if quick { 500 } else { 10_000 });
    let certs = env_usize("RELOAD_BENCH_CERTS", if quick { 50 } else { 1_000 });
    let reloads = env_usize("RELOAD_BENCH_RELOADS", if quick { 3 } else { 50 });

    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("conf");
    let t = Instant::now();
    write_conf(&dir, routes, certs);
    println!(
        "reload bench: {routes} routes, {certs} certificates (generated in {:.1?})",
        t.elapsed()
    );
    let fallback = portcullis::tls::self_signed().expect("self-signed fallback");

    // First load: no previous runtime (what `portcullis run` does at start).
    let (mut current, first) = reload(&dir, &fallback, None);
    println!(
        "  start:   load+validate {:.1?}, compile {:.1?}, total {:.1?}",
        first.load,
        first.compile,
        first.load + first.compile
    );
    let rss_start = vm_rss_kib();

    let (mut loads, mut compiles, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss_after_first = 0;
    let mut rss_trace = Vec::new();
    for i in 0..reloads {
        // The gateway keeps the old runtime alive while the new one compiles (requests in
        // flight hold it), then drops it: same here.
        let (next, t) = reload(&dir, &fallback, Some(&current));
        current = next;
        loads.push(t.load);
        compiles.push(t.compile);
        totals.push(t.load + t.compile);
        if i == 0 {
            rss_after_first = vm_rss_kib();
        }
        if (i + 1) % 10 == 0 {
            rss_trace.push(format!("{}: {} KiB", i + 1, vm_rss_kib()));
        }
    }
    let rss_end = vm_rss_kib();
    println!("  reload x{reloads}:");
    println!("    load+validate  {}", stats(loads));
    println!("    compile        {}", stats(compiles));
    println!("    total          {}", stats(totals.clone()));
    totals.sort();
    let median = totals[totals.len() / 2];
    println!(
        "  VmRSS: {rss_start} KiB after the first load, {rss_after_first} KiB after 1 reload, {rss_end} KiB after {reloads} reloads ({:+} KiB since the first reload)",
        rss_end as i64 - rss_after_first as i64
    );
    println!("  VmRSS every 10 reloads: {}", rss_trace.join(", "));
    println!(
        "  target: reload <= 1 s: {} (median {median:.1?})",
        if median <= Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(current);
}
