//! The zipkin plugin through the real binary, reporting to a Zipkin collector stand-in that
//! records the POSTed v2 JSON: the span tree continuing an incoming B3 or W3C context, tags and
//! endpoints, the B3 headers the upstream receives, sampling, the trace id response header,
//! balancer tries, a dead collector, SIGTERM flushing, and config errors located in the file.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const SPANS_PATH: &str = "/api/v2/spans";

/// Every span every POST carried, in arrival order.
fn spans(recv: &HttpReceiver) -> Vec<Value> {
    let mut out = Vec::new();
    for r in recv.received() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", SPANS_PATH));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_str(&r.body).unwrap();
        out.extend(body.as_array().expect("a JSON array of spans").clone());
    }
    out
}

fn spans_of(recv: &HttpReceiver, trace: &str) -> Vec<Value> {
    spans(recv)
        .into_iter()
        .filter(|s| s["traceId"] == trace)
        .collect()
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn is_hex(s: &Value, len: usize) -> bool {
    s.as_str().is_some_and(|s| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A service `echo-svc` with a route `traced` on `/traced` running zipkin with `config` (YAML
/// lines at 8 spaces).
fn gateway(echo: &HttpEcho, config: &str) -> Gateway {
    Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {}\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: zipkin\n      config:\n{config}",
        echo.url()
    ))
}

const TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const SPAN: &str = "e457b5a2e4d86bd1";
const PARENT: &str = "05e3ac9a4f6e3b90";

#[test]
fn an_incoming_b3_trace_is_continued_with_kongs_span_tree_tags_and_endpoints() {
    let echo = HttpEcho::start("echo");
    let recv = HttpReceiver::start(0);
    // sample_ratio 0: only the caller's sampled flag gets this request reported.
    let gw = gateway(
        &echo,
        &format!(
            "        http_endpoint: {}\n        sample_ratio: 0\n        static_tags:\n        - name: env\n          value: test\n",
            recv.url(SPANS_PATH)
        ),
    );
    let before = now_us();
    let r = Curl::at("http", "Example.com", gw.http_port(), "/traced/a?x=1")
        .header(&format!("X-B3-TraceId: {TRACE}"))
        .header(&format!("X-B3-SpanId: {SPAN}"))
        .header(&format!("X-B3-ParentSpanId: {PARENT}"))
        .header("X-B3-Sampled: 1")
        .header("Zipkin-Tags: foo=bar; baz = qux")
        .run();
    assert_eq!(r.status, 200);
    let after = now_us();

    // The upstream continues the trace under our proxy span, whose parent is the shared span.
    assert_eq!(r.echo_header("x-b3-traceid").as_deref(), Some(TRACE));
    assert_eq!(r.echo_header("x-b3-parentspanid").as_deref(), Some(SPAN));
    assert_eq!(r.echo_header("x-b3-sampled").as_deref(), Some("1"));
    let upstream_parent = r.echo_header("x-b3-spanid").unwrap();
    assert_ne!(upstream_parent, SPAN);

    // Kong's default queue sends each span on its own.
    wait_until("the request's three spans", Duration::from_secs(15), || {
        spans_of(&recv, TRACE).len() == 3
    });
    assert!(recv.received().len() >= 3, "one POST per span");
    let all = spans_of(&recv, TRACE);
    let request = named(&all, "GET");
    let proxy = named(&all, "GET (proxy)");
    let balancer = named(&all, "GET (balancer try 1)");

    // B3 shares the caller's span: the request span is that span, under the caller's parent.
    assert_eq!(request["id"], SPAN);
    assert_eq!(request["parentId"], PARENT);
    assert_eq!(request["kind"], "SERVER");
    assert_eq!(proxy["id"], upstream_parent.as_str());
    assert_eq!(proxy["parentId"], SPAN);
    assert_eq!(proxy["kind"], "CLIENT");
    assert_eq!(balancer["parentId"], SPAN);
    assert_eq!(balancer["kind"], "CLIENT");
    assert!(is_hex(&balancer["id"], 16));
    for s in &all {
        assert_eq!(
            s["localEndpoint"],
            serde_json::json!({"serviceName": "kong"})
        );
        let ts = s["timestamp"].as_u64().unwrap();
        let d = s["duration"].as_u64().unwrap();
        assert!(
            ts + 1_000_000 >= before && ts + d <= after + 1_000_000,
            "microsecond timestamps within the request: {s}"
        );
    }
    let ts = |s: &Value| s["timestamp"].as_u64().unwrap();
    let end = |s: &Value| ts(s) + s["duration"].as_u64().unwrap();
    assert!(ts(request) <= ts(proxy) && end(proxy) <= end(request));
    assert!(ts(request) <= ts(balancer) && end(balancer) <= end(request));

    let tags = &request["tags"];
    assert_eq!(tags["lc"], "kong");
    assert_eq!(tags["http.method"], "GET");
    assert_eq!(tags["http.path"], "/traced/a");
    assert_eq!(tags["http.host"], "example.com");
    assert_eq!(tags["http.protocol"], "HTTP/1.1");
    assert_eq!(tags["http.status_code"], "200");
    assert_eq!(tags["env"], "test");
    assert_eq!(tags["foo"], "bar");
    assert_eq!(tags["baz"], "qux");
    let node = tags["kong.node.id"].as_str().unwrap();
    assert_eq!(node.len(), 36, "{node}");
    assert!(tags.get("kong.consumer").is_none(), "no consumer");
    let client = &request["remoteEndpoint"];
    assert_eq!(client["ipv4"], "127.0.0.1");
    assert!(client["port"].as_u64().unwrap() > 0, "{client}");

    let upstream = serde_json::json!({
        "serviceName": "echo-svc",
        "ipv4": "127.0.0.1",
        "port": echo.port(),
    });
    assert_eq!(proxy["remoteEndpoint"], upstream);
    assert_eq!(balancer["remoteEndpoint"], upstream);
    assert_eq!(proxy["tags"]["kong.service_name"], "echo-svc");
    assert_eq!(proxy["tags"]["kong.route_name"], "traced");
    assert_eq!(proxy["tags"]["peer.hostname"], "127.0.0.1");
    assert!(proxy["tags"]["kong.service"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_eq!(balancer["tags"]["kong.balancer.try"], "1");
    assert_eq!(balancer["tags"]["kong.route"], proxy["tags"]["kong.route"]);
    assert!(balancer["tags"].get("error").is_none());

    // Phase annotations, in order.
    let ann = |s: &Value, v: &str| {
        s["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["value"] == v)
            .and_then(|a| a["timestamp"].as_u64())
            .unwrap_or_else(|| panic!("no {v} annotation: {s}"))
    };
    assert!(ann(request, "krs") <= ann(request, "krf"));
    let order = ["kas", "kaf", "khs", "khf", "kbs", "kbf"].map(|v| ann(proxy, v));
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
}

#[test]
fn w3c_is_continued_new_traces_are_injected_as_b3_and_the_trace_id_is_returned() {
    let echo = HttpEcho::start("echo");
    let recv = HttpReceiver::start(0);
    let gw = Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {echo}\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: zipkin\n      config:\n        http_endpoint: {url}\n        sample_ratio: 1\n        http_span_name: method_path\n        http_response_header_for_traceid: X-Trace-Id\n        queue:\n          max_batch_size: 50\n          max_coalescing_delay: 0.1\n  - name: short\n    paths: [/short]\n    plugins:\n    - name: zipkin\n      config:\n        http_endpoint: {url}\n        sample_ratio: 1\n        traceid_byte_count: 8\n        http_response_header_for_traceid: X-Trace-Id\n        phase_duration_flavor: tags\n",
        echo = echo.url(),
        url = recv.url(SPANS_PATH)
    ));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);

    // W3C in, W3C out (preserve): the caller's span is our parent; the upstream's parent is
    // the proxy span.
    let caller = "b7ad6b7169203331";
    let r = at("/traced/w3c")
        .header(&format!("traceparent: 00-{TRACE}-{caller}-01"))
        .run();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-trace-id"), Some(TRACE));
    let tp = r.echo_header("traceparent").unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts[1], parts[3]), (TRACE, "01"), "{tp}");
    assert!(
        r.echo_header("x-b3-traceid").is_none(),
        "preserve answers in W3C"
    );

    // No context: a new 128-bit trace, sent upstream in B3 (default_header_type).
    let new = at("/traced/new").run();
    let fresh = new.header("x-trace-id").unwrap().to_string();
    assert!(is_hex(&Value::from(fresh.as_str()), 32), "{fresh}");
    assert_eq!(
        new.echo_header("x-b3-traceid").as_deref(),
        Some(fresh.as_str())
    );
    assert_eq!(new.echo_header("x-b3-sampled").as_deref(), Some("1"));

    // traceid_byte_count 8: a 64-bit id reported, padded in B3's 128-bit form upstream.
    let r = at("/short/x").run();
    let short = r.header("x-trace-id").unwrap().to_string();
    assert!(is_hex(&Value::from(short.as_str()), 16), "{short}");
    assert_eq!(
        r.echo_header("x-b3-traceid"),
        Some(format!("0000000000000000{short}"))
    );

    wait_until("the three traces", Duration::from_secs(15), || {
        [TRACE, fresh.as_str(), short.as_str()]
            .iter()
            .all(|t| spans_of(&recv, t).len() == 3)
    });
    let w3c = spans_of(&recv, TRACE);
    let request = named(&w3c, "GET /traced/w3c");
    let proxy = named(&w3c, "GET /traced/w3c (proxy)");
    assert_eq!(request["parentId"], caller);
    assert_ne!(request["id"], caller);
    assert_eq!(proxy["id"], parts[2]);
    assert_eq!(proxy["parentId"], request["id"]);
    assert_eq!(
        named(&w3c, "GET /traced/w3c (balancer try 1)")["parentId"],
        request["id"]
    );

    let fresh_spans = spans_of(&recv, &fresh);
    let request = named(&fresh_spans, "GET /traced/new");
    assert!(request.get("parentId").is_none(), "a root span: {request}");
    let proxy = named(&fresh_spans, "GET /traced/new (proxy)");
    assert_eq!(
        Some(proxy["id"].as_str().unwrap()),
        new.echo_header("x-b3-spanid").as_deref()
    );
    assert_eq!(
        Some(request["id"].as_str().unwrap()),
        new.echo_header("x-b3-parentspanid").as_deref()
    );

    // phase_duration_flavor: tags — durations as tags, no annotations.
    let short_spans = spans_of(&recv, &short);
    let request = named(&short_spans, "GET");
    let proxy = named(&short_spans, "GET (proxy)");
    assert!(request.get("annotations").is_none() && proxy.get("annotations").is_none());
    assert!(
        request["tags"]["kong.rewrite.duration_ms"].is_string(),
        "{request}"
    );
    for t in [
        "kong.access.duration_ms",
        "kong.header_filter.duration_ms",
        "kong.body_filter.duration_ms",
    ] {
        assert!(proxy["tags"][t].is_string(), "{t}: {proxy}");
    }
}

#[test]
fn sample_ratio_zero_reports_only_what_the_caller_sampled() {
    let echo = HttpEcho::start("echo");
    let recv = HttpReceiver::start(0);
    let mut gw = Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {echo}\n  routes:\n  - name: never\n    paths: [/never]\n    plugins:\n    - name: zipkin\n      config:\n        http_endpoint: {url}\n        sample_ratio: 0\n        http_response_header_for_traceid: X-Trace-Id\n  - name: always\n    paths: [/always]\n    plugins:\n    - name: zipkin\n      config:\n        http_endpoint: {url}\n        sample_ratio: 1\n",
        echo = echo.url(),
        url = recv.url(SPANS_PATH)
    ));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);
    let r = at("/never/1").run();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echo_header("x-b3-sampled").as_deref(),
        Some("0"),
        "the upstream is told the trace is not sampled"
    );
    assert!(
        r.header("x-trace-id").is_some(),
        "the id is returned, sampled or not"
    );
    // The caller's "not sampled" holds at ratio 1, its "sampled" at ratio 0.
    let unsampled = "5b8efff798038103d269b633813fc60c";
    let r = at("/always/unsampled")
        .header(&format!("traceparent: 00-{unsampled}-eee19b7ec3c1b174-00"))
        .run();
    assert!(r.echo_header("traceparent").unwrap().ends_with("-00"));
    let r = at("/never/sampled").header("X-B3-Sampled: 1").run();
    let marker = r.echo_header("x-b3-traceid").unwrap();
    assert_eq!(r.echo_header("x-b3-sampled").as_deref(), Some("1"));

    // SIGTERM flushes the queue: whatever was queued has arrived once the process is gone.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(30)).is_some(),
        "gateway exits"
    );
    let got = spans(&recv);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got.iter().all(|s| s["traceId"] == marker.as_str()),
        "{got:#?}"
    );
}

#[test]
fn failed_tries_are_error_balancer_spans() {
    let recv = HttpReceiver::start(0);
    let dead = closed_port();
    let gw = Gateway::start(&format!(
        "services:\n- name: dead-svc\n  url: http://127.0.0.1:{dead}\n  retries: 1\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: zipkin\n      config:\n        http_endpoint: {}\n        sample_ratio: 1\n        http_response_header_for_traceid: X-Trace-Id\n",
        recv.url(SPANS_PATH)
    ));
    let r = Curl::at("http", "example.com", gw.http_port(), "/traced/x").run();
    assert_eq!(r.status, 502);
    let trace = r.header("x-trace-id").unwrap().to_string();
    wait_until(
        "the failed request's spans",
        Duration::from_secs(15),
        || spans_of(&recv, &trace).len() == 4,
    );
    let all = spans_of(&recv, &trace);
    assert_eq!(named(&all, "GET")["tags"]["http.status_code"], "502");
    let first = named(&all, "GET (balancer try 1)");
    assert_eq!(first["tags"]["error"], "true");
    assert_eq!(first["tags"]["kong.balancer.state"], "failed");
    assert_eq!(first["tags"]["http.status_code"], "502");
    assert_eq!(first["remoteEndpoint"]["port"], dead);
    // As in Kong, only the tries the balancer moved on from are marked.
    let last = named(&all, "GET (balancer try 2)");
    assert_eq!(last["tags"]["kong.balancer.try"], "2");
    assert!(last["tags"].get("error").is_none(), "{last}");
    assert_eq!(named(&all, "GET (proxy)")["remoteEndpoint"]["port"], dead);
}

#[test]
fn a_dead_collector_never_harms_traffic_and_drops_are_counted() {
    let echo = HttpEcho::start("echo");
    let dead = closed_port();
    let gw = gateway(
        &echo,
        &format!(
            "        http_endpoint: http://127.0.0.1:{dead}/api/v2/spans\n        sample_ratio: 1\n        connect_timeout: 200\n        queue:\n          max_entries: 5\n          max_retry_time: 30\n          initial_retry_delay: 1\n"
        ),
    );
    let started = Instant::now();
    for i in 0..30 {
        let r = Curl::at(
            "http",
            "example.com",
            gw.http_port(),
            &format!("/traced/{i}"),
        )
        .max_time(10)
        .run();
        assert_eq!(r.status, 200, "request {i}");
        assert!(r.echo_header("x-b3-traceid").is_some());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "requests never wait for the collector: {:?}",
        started.elapsed()
    );
    // Three spans a request, a queue of 5 that is not drained.
    wait_until("drops counted", Duration::from_secs(10), || {
        metrics::value(
            &gw.metrics(),
            "portcullis_plugin_queue_dropped_total",
            &[("plugin", "zipkin")],
        )
        .unwrap_or(0.0)
            >= 60.0
    });
}

#[test]
fn a_failed_post_is_retried_until_the_collector_accepts_it() {
    let echo = HttpEcho::start("echo");
    let recv = HttpReceiver::start(2);
    let gw = gateway(
        &echo,
        &format!(
            "        http_endpoint: {}\n        sample_ratio: 1\n        queue:\n          max_batch_size: 10\n          max_coalescing_delay: 0.1\n          initial_retry_delay: 0.05\n",
            recv.url(SPANS_PATH)
        ),
    );
    let r = Curl::at("http", "example.com", gw.http_port(), "/traced/retry").run();
    assert_eq!(r.status, 200);
    wait_until(
        "the batch accepted after two 500s",
        Duration::from_secs(15),
        || recv.received().len() >= 3,
    );
    let got = recv.received();
    assert_eq!(got[0].body, got[2].body, "the same batch is sent again");
    let batch: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(batch.as_array().unwrap().len(), 3, "one batch: {batch}");
}

#[test]
fn bad_zipkin_config_is_located() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: zipkin\n    config:\n      http_endpoint: not-a-url\n      sample_ratio: 1.5\n      traceid_byte_count: 12\n      static_tags:\n      - name: lc\n        value: x\n      propagation:\n        inject: [b3, zipkin]\n",
    );
    let all = check(&conf).all();
    for want in [
        "conf/gateway.yaml:7:22: services[0].plugins[0].config.http_endpoint: missing host in url",
        "conf/gateway.yaml:8:21: services[0].plugins[0].config.sample_ratio: value should be between 0 and 1",
        "conf/gateway.yaml:9:27: services[0].plugins[0].config.traceid_byte_count: expected one of: 8, 16",
        "conf/gateway.yaml:11:15: services[0].plugins[0].config.static_tags[0].name: must not be one of: error,",
        "conf/gateway.yaml:14:22: services[0].plugins[0].config.propagation.inject[1]: expected one of: preserve, w3c,",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: zipkin\n    config:\n      sample_rate: 1\n",
    );
    let all = check(&conf).all();
    assert!(
        all.contains("conf/gateway.yaml:7:7: services[0].plugins[0].config.sample_rate: unknown field `sample_rate`"),
        "{all}"
    );
}
