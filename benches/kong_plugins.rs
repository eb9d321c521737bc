//! Per-request cost of each Kong plugin on its own, on a keep-alive request that passes: every
//! phase the plugin declares (access, upstream request, response headers, log) run once, with
//! instances built from a conf text through `config::load_texts` — the factories, credential
//! loading and defaults the gateway uses. The baseline is the same request through no plugin.
//! Proxy costs (Pingora, headers, the upstream) are not in these figures: they are the plugin's
//! own share, to set next to S1's per-request CPU in BENCHMARKS.md.
//!
//! `cargo bench --bench kong_plugins`; reports only, asserts nothing about time.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[path = "support/mod.rs"]
mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_plugin_api::{
    Consumer, Flow, HeaderEdit, LogEntry, Phases, Plugin, RequestCtx, RequestView, ResponseHead,
};
use support::drive;

/// Headers of a message as the gateway would hand them to a plugin.
struct Headers(http::HeaderMap);

impl HeaderEdit for Headers {
    fn get(&self, name: &str) -> Option<&http::HeaderValue> {
        self.0.get(name)
    }
    fn get_all(&self, name: &str) -> Vec<&http::HeaderValue> {
        self.0.get_all(name).iter().collect()
    }
    fn names(&self) -> Vec<http::HeaderName> {
        self.0.keys().cloned().collect()
    }
    fn set(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            self.0.insert(n, v);
        }
    }
    fn append(&mut self, name: &str, value: &str) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            self.0.append(n, v);
        }
    }
    fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }
}

fn b64url(data: &[u8]) -> String {
    openssl::base64::encode_block(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = openssl::pkey::PKey::hmac(key).expect("hmac key");
    let mut s =
        openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).expect("signer");
    s.update(data).expect("update");
    s.sign_to_vec().expect("sign")
}

/// An HS256 token for the jwt credential below, valid for an hour.
fn jwt() -> String {
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let head = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64url(format!(r#"{{"iss":"bench-key","exp":{exp}}}"#).as_bytes());
    let signing = format!("{head}.{claims}");
    let sig = b64url(&hmac_sha256(
        b"bench-jwt-secret-0123456789abcdef",
        signing.as_bytes(),
    ));
    format!("{signing}.{sig}")
}

const CONF: &str = r#"
_format_version: "3.0"
consumers:
- username: alice
  custom_id: alice-1
  acls: [{group: bench}]
  keyauth_credentials: [{key: bench-api-key-0123456789}]
  basicauth_credentials: [{username: alice, password: "correct horse battery staple"}]
  jwt_secrets: [{key: bench-key, secret: bench-jwt-secret-0123456789abcdef, algorithm: HS256}]
  hmacauth_credentials: [{username: alice-hmac, secret: bench-hmac-secret}]
services:
- name: bench
  url: http://127.0.0.1:9
  routes:
  - {name: key-auth, paths: [/key-auth], plugins: [{name: key-auth}]}
  - {name: basic-auth, paths: [/basic-auth], plugins: [{name: basic-auth}]}
  - {name: jwt, paths: [/jwt], plugins: [{name: jwt}]}
  - {name: hmac-auth, paths: [/hmac-auth], plugins: [{name: hmac-auth}]}
  - name: acl
    paths: [/acl]
    plugins: [{name: acl, config: {allow: [bench]}}]
  - name: rate-limiting
    paths: [/rate-limiting]
    plugins: [{name: rate-limiting, config: {minute: 1000000000, policy: local}}]
  - name: request-size-limiting
    paths: [/request-size-limiting]
    plugins: [{name: request-size-limiting, config: {allowed_payload_size: 10}}]
  - name: ip-restriction
    paths: [/ip-restriction]
    plugins: [{name: ip-restriction, config: {allow: [10.0.0.0/8, 127.0.0.0/8]}}]
  - name: cors
    paths: [/cors]
    plugins: [{name: cors, config: {origins: ["https://app.bench.test"]}}]
  - name: request-transformer
    paths: [/request-transformer]
    plugins: [{name: request-transformer, config: {add: {headers: ["x-bench:1"]}}}]
  - name: response-transformer
    paths: [/response-transformer]
    plugins: [{name: response-transformer, config: {add: {headers: ["x-bench:1"]}}}]
  - name: correlation-id
    paths: [/correlation-id]
    plugins: [{name: correlation-id, config: {generator: uuid}}]
  - name: session
    paths: [/session]
    plugins: [{name: session, config: {secret: bench-session-secret}}]
  - name: proxy-cache
    paths: [/proxy-cache]
    plugins: [{name: proxy-cache, config: {strategy: memory}}]
  - name: opentelemetry
    paths: [/opentelemetry]
    plugins: [{name: opentelemetry, config: {traces_endpoint: "http://127.0.0.1:9/v1/traces"}}]
  - name: zipkin
    paths: [/zipkin]
    plugins: [{name: zipkin, config: {http_endpoint: "http://127.0.0.1:9/api/v2/spans", sample_ratio: 1}}]
  - name: http-log
    paths: [/http-log]
    plugins: [{name: http-log, config: {http_endpoint: "http://127.0.0.1:9/logs"}}]
  - name: http-log-custom-fields
    paths: [/http-log-custom-fields]
    plugins:
    - name: http-log
      config:
        http_endpoint: "http://127.0.0.1:9/logs"
        custom_fields: {env: production, team: "$(headers.x_team or 'none')", request.headers.user-agent: null}
  - name: http-log-custom-fields-top
    paths: [/http-log-custom-fields-top]
    plugins:
    - name: http-log
      config:
        http_endpoint: "http://127.0.0.1:9/logs"
        custom_fields: {env: production, team: "$(headers.x_team or 'none')", shard: 7}
"#;

/// One request through `plugins`, every declared phase; `true` when it was let through.
async fn request(
    plugins: &[Arc<dyn Plugin>],
    phases: Phases,
    view: &RequestView<'_>,
    upstream: &http::HeaderMap,
    response: &http::HeaderMap,
    consumer: Option<&Arc<Consumer>>,
) -> bool {
    let mut ctx = RequestCtx {
        request_id: "0123456789abcdef0123456789abcdef".into(),
        client_ip: Some([127, 0, 0, 1].into()),
        ..RequestCtx::default()
    };
    if let Some(c) = consumer {
        // As an authentication plugin earlier in the chain would have left it (acl alone).
        portcullis_plugin_api::auth::authenticated(&mut ctx, c, "bench-credential");
    }
    for p in plugins {
        if let Flow::Respond(_) = p.access(view, &mut ctx).await {
            return false;
        }
    }
    if phases.contains(Phases::UPSTREAM_REQUEST) {
        let mut h = Headers(upstream.clone());
        for p in plugins {
            p.upstream_request(&mut h, &mut ctx);
        }
        black_box(&h.0);
    }
    let mut resp = Headers(response.clone());
    if phases.contains(Phases::RESPONSE_HEADERS) {
        let mut head = ResponseHead {
            status: 200,
            headers: &mut resp,
            from_gateway: false,
        };
        for p in plugins {
            p.response_headers(&mut head, &mut ctx);
        }
    }
    if phases.contains(Phases::RESPONSE_BODY) {
        for p in plugins {
            let mut chunk = Some(bytes::Bytes::from_static(b"{\"ok\":true}"));
            p.response_body(&mut chunk, true, &mut ctx);
            black_box(&chunk);
        }
    }
    if phases.contains(Phases::LOG) {
        let entry = LogEntry {
            method: view.method,
            uri: view.uri,
            version: http::Version::HTTP_11,
            host: "api.bench.test",
            request_headers: view.headers,
            response_headers: Some(&resp.0),
            status: 200,
            request_body_bytes: 0,
            response_body_bytes: 11,
            started_at: SystemTime::now(),
            latency: 0.001,
            upstream_latency: Some(0.0005),
            upstream_sent: None,
            upstream_status: None,
            upstream_uri: Some(view.uri.path()),
            tries: &[],
            error: None,
            scheme: "http",
            tls_version: None,
            tls_cipher: None,
        };
        for p in plugins {
            p.log(&entry, &ctx);
        }
    }
    black_box(&ctx);
    true
}

fn conf_dir() -> PathBuf {
    std::env::temp_dir()
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let dir = conf_dir();
    let (config, _) = portcullis::config::load_texts(
        &dir,
        &[(Path::new("bench.yaml").to_path_buf(), CONF.to_string())],
        portcullis::plugin::registry(),
    )
    .unwrap_or_else(|e| panic!("bench conf: {e}"));

    let mut base = http::HeaderMap::new();
    base.insert("host", "api.bench.test".parse().expect("value"));
    base.insert("user-agent", "bench".parse().expect("value"));
    base.insert("accept", "*/*".parse().expect("value"));
    let date = httpdate::fmt_http_date(SystemTime::now());
    let hmac_sig = openssl::base64::encode_block(&hmac_sha256(
        b"bench-hmac-secret",
        format!("date: {date}").as_bytes(),
    ));
    let extra: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("none", vec![]),
        (
            "key-auth",
            vec![("apikey", "bench-api-key-0123456789".into())],
        ),
        (
            "basic-auth",
            vec![(
                "authorization",
                format!(
                    "Basic {}",
                    openssl::base64::encode_block(b"alice:correct horse battery staple")
                ),
            )],
        ),
        ("jwt", vec![("authorization", format!("Bearer {}", jwt()))]),
        (
            "hmac-auth",
            vec![
                ("date", date.clone()),
                (
                    "authorization",
                    format!(
                        "hmac username=\"alice-hmac\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"{hmac_sig}\""
                    ),
                ),
            ],
        ),
        ("cors", vec![("origin", "https://app.bench.test".into())]),
    ];
    let mut response = http::HeaderMap::new();
    response.insert("content-type", "application/json".parse().expect("value"));
    response.insert("content-length", "11".parse().expect("value"));

    let alice = config
        .consumers
        .iter()
        .find(|c| c.username.as_deref() == Some("alice"))
        .cloned()
        .expect("consumer alice");
    let method = http::Method::GET;
    let mut g = c.benchmark_group("kong-plugins");
    let mut names: Vec<&str> = vec!["none"];
    names.extend(config.routes.iter().map(|r| &*r.name));
    for name in names {
        let plugins: Vec<Arc<dyn Plugin>> = config
            .plugins
            .iter()
            .filter(|p| {
                p.scope.route.as_deref()
                    == config
                        .routes
                        .iter()
                        .find(|r| &*r.name == name)
                        .map(|r| r.id.as_str())
            })
            .map(|p| p.plugin.clone())
            .collect();
        let phases = plugins
            .iter()
            .fold(Phases::NONE, |acc, p| acc.union(p.phases()));
        let mut headers = base.clone();
        for (h, v) in extra
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| e.as_slice())
            .unwrap_or(&[])
        {
            headers.insert(*h, v.parse().expect("value"));
        }
        let uri: http::Uri = format!("/{name}?page=1").parse().expect("uri");
        let view = RequestView {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        // acl decides on a consumer another plugin identified: alice, as key-auth would.
        let consumer = (name == "acl").then(|| alice.clone());
        let consumer = consumer.as_ref();
        assert!(
            drive(
                &rt,
                request(&plugins, phases, &view, &base, &response, consumer)
            ),
            "{name}: the bench request must pass"
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                drive(
                    &rt,
                    request(&plugins, phases, &view, &base, &response, consumer),
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = kong_plugin_benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(kong_plugin_benches);
