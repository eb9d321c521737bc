//! Route matching (`portcullis::routing::Router::route`) per request, with Kong's priority rules,
//! for 10 routes and for 10,000 routes in two shapes: every route with a host (1,000 services ×
//! 10 routes, the host indexes) and no route with a host (10,000 prefix paths: the host-less
//! prefix trie).
//!
//! `cargo bench --bench router`; reports only, asserts nothing about time.

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::routing::{RequestInfo, Router};

fn router(yaml: String) -> Router {
    let (_dir, config) = support::load(&[("gateway.yaml".into(), yaml)]);
    Router::new(&config.routes)
}

const SMALL: &str = r#"_format_version: "3.0"
services:
  - name: s
    url: http://127.0.0.1:9
    routes:
      - { name: users, hosts: [api.example.com], paths: [/users] }
      - { name: orders, hosts: [api.example.com], paths: [/orders], methods: [GET, POST] }
      - { name: wild, hosts: ["*.example.org"], paths: [/] }
      - { name: static, paths: [/static] }
      - { name: items, paths: ["~/items/\\d+$"], regex_priority: 1 }
      - { name: v2, hosts: [shop.example.com], headers: { x-version: [v2] } }
      - { name: shop, hosts: [shop.example.com], paths: [/] }
      - { name: health, paths: [/health], methods: [GET] }
      - { name: admin, hosts: [admin.example.com], paths: [/admin] }
      - { name: all, paths: [/] }
"#;

/// 1,000 services × 10 routes, each with a host; every tenth host a wildcard, every hundredth
/// path a regex.
fn hosts_10k() -> String {
    let mut y = String::from("_format_version: \"3.0\"\nservices:\n");
    for s in 0..1000 {
        let _ = write!(
            y,
            "  - name: s{s}\n    url: http://127.0.0.1:9/svc{s}\n    routes:\n"
        );
        for j in 0..10 {
            let n = s * 10 + j;
            let host = if j == 9 {
                format!("\"*.s{s}.bench.test\"")
            } else {
                format!("s{s}.bench.test")
            };
            let path = if n % 100 == 50 {
                format!("\"~/r{j}/[0-9]+$\"")
            } else {
                format!("/r{j}")
            };
            let _ = writeln!(
                y,
                "      - {{ name: r{n}, hosts: [{host}], paths: [{path}] }}"
            );
        }
    }
    y
}

/// 10,000 routes without hosts: prefix paths only.
fn paths_10k() -> String {
    let mut y = String::from("_format_version: \"3.0\"\nservices:\n");
    for s in 0..1000 {
        let _ = write!(
            y,
            "  - name: s{s}\n    url: http://127.0.0.1:9\n    routes:\n"
        );
        for j in 0..10 {
            let _ = writeln!(y, "      - {{ name: r{s}-{j}, paths: [/api/s{s}/r{j}] }}");
        }
    }
    y
}

struct Req {
    host: &'static str,
    path: &'static str,
    method: &'static str,
    header: Option<(&'static str, &'static str)>,
}

impl Req {
    fn get(host: &'static str, path: &'static str) -> Req {
        Req {
            host,
            path,
            method: "GET",
            header: None,
        }
    }
}

/// Routes `req` and returns the matched route's name ("-" for no match) once, for the report.
fn route_once(r: &Router, req: &Req) -> String {
    let lookup = |name: &str| {
        req.header
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let info = RequestInfo {
        host: req.host,
        path: req.path,
        method: req.method,
        tls: false,
        sni: None,
        header: &lookup,
    };
    r.route(&info)
        .map(|m| m.route.name.to_string())
        .unwrap_or_else(|| "-".into())
}

fn bench_set(c: &mut Criterion, group: &str, r: &Router, cases: &[(&str, Req)]) {
    let mut g = c.benchmark_group(group);
    for (label, req) in cases {
        println!(
            "{group}/{label}: {} {}{} -> {}",
            req.method,
            req.host,
            req.path,
            route_once(r, req)
        );
        g.bench_function(*label, |b| {
            let lookup = |name: &str| {
                req.header
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            };
            b.iter(|| {
                let info = RequestInfo {
                    host: black_box(req.host),
                    path: black_box(req.path),
                    method: req.method,
                    tls: false,
                    sni: None,
                    header: &lookup,
                };
                black_box(r.route(&info))
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let small = router(SMALL.to_string());
    bench_set(
        c,
        "router/10",
        &small,
        &[
            (
                "exact-host-prefix",
                Req::get("api.example.com", "/users/42"),
            ),
            ("wildcard-host", Req::get("a.example.org", "/x")),
            ("regex-path", Req::get("other.test", "/items/42")),
            (
                "header",
                Req {
                    header: Some(("x-version", "v2")),
                    ..Req::get("shop.example.com", "/cart")
                },
            ),
            ("catch-all", Req::get("unknown.test", "/nothing/here")),
        ],
    );

    let hosts = router(hosts_10k());
    bench_set(
        c,
        "router/10k-hosts",
        &hosts,
        &[
            ("first-service", Req::get("s0.bench.test", "/r0/x")),
            ("last-service", Req::get("s999.bench.test", "/r8/x")),
            ("host-with-port", Req::get("s500.bench.test:8000", "/r3")),
            ("wildcard-host", Req::get("a.s500.bench.test", "/r9")),
            ("regex-path", Req::get("s500.bench.test", "/r0/123")),
            ("unknown-host-404", Req::get("nope.bench.test", "/r1")),
            (
                "known-host-path-miss-404",
                Req::get("s500.bench.test", "/zzz"),
            ),
        ],
    );

    let paths = router(paths_10k());
    bench_set(
        c,
        "router/10k-paths",
        &paths,
        &[
            ("first", Req::get("any.test", "/api/s0/r0")),
            ("middle", Req::get("any.test", "/api/s500/r5/x")),
            ("last", Req::get("any.test", "/api/s999/r9")),
            ("miss-404", Req::get("any.test", "/other")),
        ],
    );
}

criterion_group! {
    name = router_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(router_benches);
