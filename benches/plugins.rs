//! The mtls-auth + acl chain in the access phase, built through the plugin factories exactly as
//! the gateway builds it, for one client certificate: the keep-alive steady state (decision
//! cached by chain digest) against the first request of a certificate (chain verification,
//! revocation check, consumer lookup), with a no-plugin baseline.
//!
//! `cargo bench --bench plugins`; reports only, asserts nothing about time.

#[path = "support/mod.rs"]
mod support;

use support::drive;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use portcullis_plugin_api::{
    BuildContext, CaCertificate, ClientCertificate, Consumer, Flow, Plugin, PluginFactory,
    RequestCtx, RequestView,
};
use serde_json::json;

struct Setup {
    ctx: BuildContext,
    cert: Arc<ClientCertificate>,
    mtls_config: serde_json::Value,
    acl: Arc<dyn Plugin>,
}

fn setup() -> Setup {
    let ca = support::issue("Bench Client CA", &[], None, true, false);
    let alice = support::issue("alice", &[], Some(&ca), false, true);
    let chain_der = vec![alice.cert.to_der().expect("der")];
    let cert = Arc::new(portcullis::tls::describe(&alice.cert, chain_der));
    let ctx = BuildContext {
        consumers: vec![Arc::new(Consumer {
            id: "c-alice".into(),
            username: Some("alice".into()),
            custom_id: None,
            groups: vec!["bench".into()],
            tags: Vec::new(),
        })],
        credentials: Vec::new(),
        ca_certificates: vec![Arc::new(CaCertificate {
            id: "client-ca".into(),
            name: Some("client-ca".into()),
            pem: ca.cert_pem(),
        })],
        conf_dir: std::env::temp_dir(),
        ..BuildContext::default()
    };
    let mtls_config = json!({ "ca_certificates": ["client-ca"] });
    let acl = portcullis_acl::Factory
        .build(&json!({ "allow": ["bench"] }), &ctx)
        .unwrap_or_else(|e| panic!("acl config: {e:?}"));
    Setup {
        ctx,
        cert,
        mtls_config,
        acl,
    }
}

fn mtls(s: &Setup) -> Arc<dyn Plugin> {
    portcullis_mtls_auth::Factory
        .build(&s.mtls_config, &s.ctx)
        .unwrap_or_else(|e| panic!("mtls-auth config: {e:?}"))
}

/// One request through the chain; `true` when both plugins let it through.
async fn chain(
    plugins: &[Arc<dyn Plugin>],
    view: &RequestView<'_>,
    cert: &Arc<ClientCertificate>,
) -> bool {
    let mut ctx = RequestCtx {
        tls: true,
        client_certificate: Some(cert.clone()),
        ..RequestCtx::default()
    };
    for p in plugins {
        if let Flow::Respond(_) = p.access(view, &mut ctx).await {
            return false;
        }
    }
    black_box(&ctx);
    true
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let s = setup();
    let method = http::Method::GET;
    let uri: http::Uri = "/orders/42".parse().expect("uri");
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "api.bench.test".parse().expect("value"));
    headers.insert("user-agent", "bench".parse().expect("value"));
    let view = RequestView {
        method: &method,
        uri: &uri,
        headers: &headers,
    };

    let plugins = vec![mtls(&s), s.acl.clone()];
    assert!(
        drive(&rt, chain(&plugins, &view, &s.cert)),
        "alice must pass mtls-auth + acl"
    );

    let mut g = c.benchmark_group("plugins");
    g.bench_function("baseline-no-plugins", |b| {
        b.iter(|| drive(&rt, chain(&[], &view, &s.cert)))
    });
    g.bench_function("mtls-auth+acl/cached-keepalive", |b| {
        b.iter(|| drive(&rt, chain(&plugins, &view, &s.cert)))
    });
    g.bench_function("mtls-auth-only/cached-keepalive", |b| {
        let only = vec![plugins[0].clone()];
        b.iter(|| drive(&rt, chain(&only, &view, &s.cert)))
    });
    g.bench_function("mtls-auth+acl/first-request-verify", |b| {
        // A fresh instance has an empty decision cache: this is the per-certificate cost.
        b.iter_batched(
            || vec![mtls(&s), s.acl.clone()],
            |fresh| drive(&rt, chain(&fresh, &view, &s.cert)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = plugin_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(plugin_benches);
