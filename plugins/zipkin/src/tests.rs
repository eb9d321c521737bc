use super::*;
use portcullis_plugin_api::http::{HeaderName, HeaderValue, Method, Uri, Version};
use portcullis_plugin_api::{Consumer, EntityInfo, Try};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

fn settings(config: Value) -> Settings {
    let c: config::Config = parse_config(&config).unwrap();
    let mut errors = Vec::new();
    let s = c.resolve(&mut errors, &portcullis_plugin_api::BuildContext::default());
    assert!(errors.is_empty(), "{errors:?}");
    s
}

/// A plugin without a collector: the spans are built by calling `span::spans` directly.
fn plugin(config: Value) -> Zipkin {
    Zipkin {
        s: settings(config),
        shipper: None,
    }
}

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn upstream(ctx: &RequestCtx, name: &str) -> Option<String> {
    ctx.upstream_headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap().to_string())
}

async fn access(z: &Zipkin, list: &[(&str, &str)]) -> RequestCtx {
    let h = headers(list);
    let uri: Uri = "/orders/1?x=1".parse().unwrap();
    let view = RequestView {
        method: &Method::GET,
        uri: &uri,
        headers: &h,
    };
    let mut ctx = RequestCtx::default();
    assert!(matches!(z.access(&view, &mut ctx).await, Flow::Continue));
    ctx
}

fn trace(ctx: &RequestCtx) -> Trace {
    ctx.extensions.get::<Trace>().unwrap().clone()
}

const TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const SPAN: &str = "e457b5a2e4d86bd1";
const PARENT: &str = "05e3ac9a4f6e3b90";

#[tokio::test]
async fn b3_context_is_continued_sharing_the_callers_span() {
    let z = plugin(json!({"sample_ratio": 0}));
    let ctx = access(
        &z,
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", PARENT),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let t = trace(&ctx);
    assert_eq!(t.trace_hex(), TRACE);
    assert_eq!(
        to_hex(&t.request_span_id),
        SPAN,
        "B3 shares the caller's span"
    );
    assert_eq!(
        t.request_parent.map(|p| to_hex(&p)).as_deref(),
        Some(PARENT)
    );
    assert!(t.sampled, "the caller's decision wins over sample_ratio 0");
    // Injected as received (preserve): the proxy span under the request span.
    assert_eq!(upstream(&ctx, "x-b3-traceid").as_deref(), Some(TRACE));
    assert_eq!(
        upstream(&ctx, "x-b3-spanid"),
        Some(to_hex(&t.proxy_span_id))
    );
    assert_eq!(upstream(&ctx, "x-b3-parentspanid").as_deref(), Some(SPAN));
    assert_eq!(upstream(&ctx, "x-b3-sampled").as_deref(), Some("1"));
    assert_eq!(upstream(&ctx, "traceparent"), None);
}

#[tokio::test]
async fn w3c_context_makes_the_callers_span_our_parent() {
    let z = plugin(json!({}));
    let ctx = access(&z, &[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]).await;
    let t = trace(&ctx);
    assert_eq!(t.trace_hex(), TRACE);
    assert_ne!(to_hex(&t.request_span_id), SPAN);
    assert_eq!(t.request_parent.map(|p| to_hex(&p)).as_deref(), Some(SPAN));
    assert_eq!(
        upstream(&ctx, "traceparent"),
        Some(format!("00-{TRACE}-{}-01", to_hex(&t.proxy_span_id)))
    );
}

#[tokio::test]
async fn a_new_trace_is_sampled_at_the_ratio_and_injected_as_default_header_type() {
    let z = plugin(json!({"sample_ratio": 0, "traceid_byte_count": 8}));
    let ctx = access(&z, &[]).await;
    let t = trace(&ctx);
    assert!(!t.sampled);
    assert_eq!(t.trace_hex().len(), 16, "traceid_byte_count: 8");
    assert!(t.request_parent.is_none());
    // B3 by default; the 8-byte id padded to B3's first size, as Kong's injector does.
    assert_eq!(
        upstream(&ctx, "x-b3-traceid"),
        Some(format!("0000000000000000{}", t.trace_hex()))
    );
    assert_eq!(upstream(&ctx, "x-b3-sampled").as_deref(), Some("0"));

    let z = plugin(json!({"sample_ratio": 1, "default_header_type": "w3c"}));
    let ctx = access(&z, &[]).await;
    let t = trace(&ctx);
    assert!(t.sampled);
    assert_eq!(t.trace_hex().len(), 32);
    let tp = upstream(&ctx, "traceparent").unwrap();
    assert!(tp.ends_with("-01"), "{tp}");
    assert_eq!(upstream(&ctx, "x-b3-traceid"), None);
}

#[tokio::test]
async fn an_unsampled_caller_is_obeyed_at_ratio_one() {
    let z = plugin(json!({"sample_ratio": 1}));
    let ctx = access(&z, &[("b3", &format!("{TRACE}-{SPAN}-0"))]).await;
    assert!(!trace(&ctx).sampled);
    let b3 = upstream(&ctx, "b3").unwrap();
    assert!(
        b3.starts_with(&format!("{TRACE}-")) && b3.contains("-0-"),
        "{b3}"
    );
}

#[test]
fn tags_header_is_parsed_as_kong_does() {
    let parse = |s: &str| {
        let mut m = BTreeMap::new();
        let bad: Vec<String> = parse_tags_owned(s, &mut m);
        (m, bad)
    };
    fn parse_tags_owned(s: &str, m: &mut BTreeMap<String, String>) -> Vec<String> {
        span::parse_tags(s, m)
            .into_iter()
            .map(String::from)
            .collect()
    }
    let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    for s in [
        "foo=bar",
        "foo=  bar",
        "foo =bar",
        "foo  =  bar",
        "   foo =  bar",
        "foo = bar   ",
    ] {
        assert_eq!(parse(s), (one("foo", "bar"), vec![]), "{s:?}");
    }
    let (tags, bad) = parse("foobar;foo=;=bar;keep=true;=");
    assert_eq!(tags, one("keep", "true"));
    assert_eq!(bad, ["foobar", "foo=", "=bar", "="]);
    assert_eq!(parse("foo=bar baz").0, one("foo", "bar baz"));
    assert_eq!(
        parse("foo bar=baz"),
        (BTreeMap::new(), vec!["foo bar=baz".into()])
    );
    let (tags, bad) = parse(";;foo=bar;;;;baz=qux;;");
    assert_eq!(tags.len(), 2);
    assert!(bad.is_empty());
    // Lua's greedy `%S+`: the name runs to the last `=` that still leaves a value.
    assert_eq!(parse("a=b=c").0, one("a=b", "c"));
}

fn entry_parts() -> (HeaderMap, Uri) {
    (
        headers(&[
            ("zipkin-tags", "foo=bar; lc=spoofed"),
            ("zipkin-tags", "baz=qux"),
        ]),
        "/orders/1?x=1".parse().unwrap(),
    )
}

/// A GET answered 200 without tries.
fn log_entry<'a>(
    h: &'a HeaderMap,
    uri: &'a Uri,
    started_at: SystemTime,
    latency: f64,
) -> LogEntry<'a> {
    LogEntry {
        method: &Method::GET,
        uri,
        version: Version::HTTP_11,
        host: "h",
        request_headers: h,
        response_headers: None,
        status: 200,
        request_body_bytes: 0,
        response_body_bytes: 0,
        started_at,
        latency,
        upstream_latency: None,
        upstream_sent: None,
        upstream_status: None,
        upstream_uri: None,
        tries: &[],
        error: None,
        scheme: "http",
        tls_version: None,
        tls_cipher: None,
    }
}

fn log_ctx() -> RequestCtx {
    RequestCtx {
        client_ip: Some("192.0.2.7".parse().unwrap()),
        client_port: Some(40000),
        consumer: Some(Arc::new(Consumer {
            id: "c-1".into(),
            ..Default::default()
        })),
        credential_identifier: Some("cred-1".into()),
        service_info: Some(Arc::new(EntityInfo::new(
            "svc-id".into(),
            Some("orders".into()),
            json!({"host": "orders.internal"}),
        ))),
        route_info: Some(Arc::new(EntityInfo::new(
            "route-id".into(),
            Some("orders-route".into()),
            json!({}),
        ))),
        ..Default::default()
    }
}

fn by_name<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
}

#[tokio::test]
async fn the_span_tree_tags_endpoints_and_annotations_are_kongs() {
    let z = plugin(json!({
        "static_tags": [{"name": "env", "value": "test"}],
        "default_service_name": "unnamed",
        "http_span_name": "method_path",
    }));
    let mut ctx = access(&z, &[("x-b3-sampled", "1")]).await;
    let t0 = trace(&ctx);
    let start = t0.proxy_start - Duration::from_millis(5);
    let first: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let second: SocketAddr = "[2001:db8::1]:8081".parse().unwrap();
    let tries = [
        Try {
            addr: Some(first),
            connect_ms: 3,
            started_at: Some(t0.proxy_start + Duration::from_millis(1)),
            connected_at: None,
            reused: false,
            tls: false,
        },
        Try {
            addr: Some(second),
            connect_ms: 1,
            started_at: Some(t0.proxy_start + Duration::from_millis(4)),
            connected_at: Some(t0.proxy_start + Duration::from_millis(5)),
            reused: false,
            tls: false,
        },
    ];
    ctx.extensions.get_mut::<Trace>().unwrap().headers_at =
        Some(t0.proxy_start + Duration::from_millis(20));
    let t = trace(&ctx);
    let (h, uri) = entry_parts();
    let entry = LogEntry {
        host: "Shop.Example:8000",
        tries: &tries,
        ..log_entry(&h, &uri, start, 0.030)
    };
    let mut lctx = log_ctx();
    lctx.extensions = std::mem::take(&mut ctx.extensions);
    let end = request_end(&entry);
    let spans: Vec<Value> = span::spans(&z.s, &t, &entry, &lctx, end)
        .into_iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    assert_eq!(spans.len(), 4);
    let name = "GET /orders/1";
    let request = by_name(&spans, name);
    let proxy = by_name(&spans, &format!("{name} (proxy)"));
    let try1 = by_name(&spans, &format!("{name} (balancer try 1)"));
    let try2 = by_name(&spans, &format!("{name} (balancer try 2)"));
    let trace_hex = t.trace_hex();
    for s in &spans {
        assert_eq!(s["traceId"], trace_hex.as_str());
        assert_eq!(s["localEndpoint"], json!({"serviceName": "kong"}));
        assert_eq!(s["id"].as_str().unwrap().len(), 16);
    }
    assert_eq!(request["kind"], "SERVER");
    assert!(request.get("parentId").is_none());
    assert_eq!(proxy["parentId"], request["id"]);
    assert_eq!(try1["parentId"], request["id"]);
    assert_eq!(try2["parentId"], request["id"]);
    assert_eq!(proxy["kind"], "CLIENT");
    assert_eq!(try1["kind"], "CLIENT");

    let node = request["tags"]["kong.node.id"]
        .as_str()
        .unwrap()
        .to_string();
    // The tags header is applied after `lc` and the static tags and before the response's
    // tags, as in Kong: a client may relabel `lc`, never the status or the consumer.
    assert_eq!(
        request["tags"],
        json!({
            "lc": "spoofed",
            "http.method": "GET",
            "http.host": "shop.example",
            "http.path": "/orders/1",
            "http.protocol": "HTTP/1.1",
            "http.status_code": "200",
            "env": "test",
            "foo": "bar",
            "baz": "qux",
            "kong.consumer": "c-1",
            "kong.credential": "cred-1",
            "kong.node.id": node,
        })
    );
    assert_eq!(
        request["remoteEndpoint"],
        json!({"serviceName": "unnamed", "ipv4": "192.0.2.7", "port": 40000})
    );
    let service_tags = json!({
        "kong.service": "svc-id",
        "kong.service_name": "orders",
        "kong.route": "route-id",
        "kong.route_name": "orders-route",
    });
    let mut want = service_tags.clone();
    want["peer.hostname"] = json!("orders.internal");
    assert_eq!(proxy["tags"], want);
    assert_eq!(
        proxy["remoteEndpoint"],
        json!({"serviceName": "orders", "ipv6": "2001:db8::1", "port": 8081})
    );
    let mut want = service_tags.clone();
    want["kong.balancer.try"] = json!("1");
    want["error"] = json!("true");
    want["kong.balancer.state"] = json!("failed");
    want["http.status_code"] = json!("502");
    assert_eq!(try1["tags"], want);
    assert_eq!(
        try1["remoteEndpoint"],
        json!({"serviceName": "orders", "ipv4": "10.0.0.1", "port": 8080})
    );
    let mut want = service_tags;
    want["kong.balancer.try"] = json!("2");
    assert_eq!(try2["tags"], want);

    // Microseconds: the request spans the whole 30 ms, the proxy span starts at access, a
    // failed try ends when its connect failed, the last try when it connected.
    let us = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    assert_eq!(request["timestamp"], us(start));
    assert_eq!(request["duration"], 30_000);
    assert_eq!(proxy["timestamp"], us(t.proxy_start));
    assert_eq!(proxy["duration"], 25_000);
    assert_eq!(try1["duration"], 3_000);
    assert_eq!(try2["timestamp"], us(t.proxy_start) + 4_000);
    assert_eq!(try2["duration"], 1_000);

    let ann = |s: &Value| -> BTreeMap<String, u64> {
        s["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["value"].as_str().unwrap().to_string(),
                    a["timestamp"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let r = ann(request);
    assert_eq!(r.len(), 2);
    assert!(r["krs"] <= r["krf"]);
    let p = ann(proxy);
    assert_eq!(p.len(), 6);
    assert_eq!(p["kas"], us(t.proxy_start));
    assert_eq!(
        p["kaf"],
        us(t.proxy_start) + 1_000,
        "access ends at the first try"
    );
    assert_eq!(p["khs"], us(t.proxy_start) + 20_000);
    assert!(p["khs"] <= p["khf"] && p["khf"] <= p["kbs"] && p["kbs"] <= p["kbf"]);
    assert_eq!(p["kbf"], us(end));
}

#[tokio::test]
async fn tags_flavor_reports_phase_durations_and_no_annotations() {
    let z = plugin(json!({"phase_duration_flavor": "tags", "include_credential": false}));
    let ctx = access(&z, &[("x-b3-sampled", "1")]).await;
    let t = trace(&ctx);
    let (h, uri) = entry_parts();
    let entry = LogEntry {
        method: &Method::POST,
        version: Version::HTTP_2,
        status: 401,
        ..log_entry(&h, &uri, t.proxy_start - Duration::from_millis(2), 0.01)
    };
    let spans: Vec<Value> = span::spans(&z.s, &t, &entry, &log_ctx(), request_end(&entry))
        .into_iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    assert_eq!(spans.len(), 2, "no tries, no balancer spans");
    let request = by_name(&spans, "POST");
    let proxy = by_name(&spans, "POST (proxy)");
    assert!(request.get("annotations").is_none());
    assert_eq!(request["tags"]["kong.rewrite.duration_ms"], "2");
    assert_eq!(request["tags"]["http.protocol"], "HTTP/2");
    assert_eq!(request["tags"]["http.status_code"], "401");
    assert!(request["tags"].get("kong.credential").is_none());
    assert_eq!(request["tags"]["kong.consumer"], "c-1");
    assert_eq!(proxy["tags"]["kong.access.duration_ms"], "8");
    assert_eq!(proxy["tags"]["kong.body_filter.duration_ms"], "0");
    assert!(
        proxy["tags"].get("peer.hostname").is_none(),
        "no try, no peer"
    );
    assert_eq!(
        proxy["remoteEndpoint"],
        json!({"serviceName": "orders"}),
        "the service's name without an address"
    );
}

#[test]
fn the_factory_refuses_bad_config_and_builds_good_config() {
    let build = |v: Value| ZipkinFactory.build(&v, &BuildContext::default());
    let errors = build(json!({"sample_ratio": 2, "traceid_byte_count": 4}))
        .err()
        .unwrap();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["sample_ratio", "traceid_byte_count"]);
    let p = build(json!({"http_endpoint": "http://127.0.0.1:9411/api/v2/spans"})).unwrap();
    assert_eq!(p.priority(), 100_000);
    assert!(p.phases().contains(Phases::LOG));
    let p = build(json!({})).unwrap();
    assert!(
        !p.phases().contains(Phases::LOG),
        "no collector, propagation only"
    );
    assert!(!p.phases().contains(Phases::RESPONSE_HEADERS));
}
