//! The opentelemetry plugin through the real binary, exporting to an OTLP/HTTP receiver that
//! decodes the protobuf with the official OpenTelemetry definitions (tests/otlp_receiver.py on
//! PyPI's `opentelemetry-proto`): resource attributes and headers, trace ids continuing an
//! incoming W3C/B3/Jaeger context and the one the upstream receives, the span tree, sampling,
//! retries, a dead receiver, SIGTERM flushing, and config errors located in the file.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The Python receiver; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Answers 500 to the first `fail` requests, 200 after.
    fn start(fail: usize) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("otlp.jsonl");
        let script = repo_root().join("tests/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&out)
            .arg(fail.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "python3 tests/otlp_receiver.py (run scripts/setup.sh for opentelemetry-proto)",
            );
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the receiver did not start (is opentelemetry-proto installed?): {line:?}")
        });
        Receiver {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request received so far, decoded.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                assert!(v.get("error").is_none(), "undecodable OTLP body: {v}");
                v
            })
            .collect()
    }

    /// The spans of every accepted (200) trace export, each with its resource attributes.
    fn spans(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for r in self.requests() {
            if r["status"] != 200 || !r["path"].as_str().unwrap().ends_with("/traces") {
                continue;
            }
            for rs in r["body"]["resourceSpans"].as_array().unwrap() {
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    assert_eq!(ss["scope"]["name"], "kong-internal");
                    for span in ss["spans"].as_array().unwrap() {
                        out.push((span.clone(), rs["resource"].clone()));
                    }
                }
            }
        }
        out
    }

    fn spans_of(&self, trace_id: &str) -> Vec<Value> {
        self.spans()
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| s["traceId"] == trace_id)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A route `/traced` with the plugin configured by `config` (YAML lines at 8 spaces).
fn gateway(echo: &HttpEcho, config: &str) -> Gateway {
    Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {}\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: opentelemetry\n      config:\n{config}",
        echo.url()
    ))
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map(|kv| &kv["value"])
        .unwrap_or(&Value::Null)
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// `00-<trace>-<span>-<flags>` split.
fn traceparent(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {v}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

#[test]
fn spans_continue_the_incoming_trace_with_kongs_tree_resource_and_headers() {
    let echo = HttpEcho::start("echo");
    let recv = Receiver::start(0);
    let gw = gateway(
        &echo,
        &format!(
            "        traces_endpoint: {}\n        logs_endpoint: {}\n        headers:\n          X-Otel-Token: abc\n        resource_attributes:\n          service.name: edge\n          deployment.environment: test\n        http_response_header_for_traceid: X-Trace-Id\n        queue:\n          max_batch_size: 50\n          max_coalescing_delay: 0.1\n",
            recv.url("/v1/traces"),
            recv.url("/v1/logs")
        ),
    );
    let r = Curl::at("http", "example.com", gw.http_port(), "/traced/a?x=1")
        .header(&format!("traceparent: 00-{TRACE}-{PARENT}-01"))
        .run();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-trace-id"), Some(TRACE));
    let (t, upstream_parent, flags) = traceparent(&r.echo_header("traceparent").unwrap());
    assert_eq!(t, TRACE, "the upstream continues the client's trace");
    assert_ne!(upstream_parent, PARENT, "the upstream's parent is our span");
    assert_eq!(flags, "01");

    wait_until("the request's spans", Duration::from_secs(15), || {
        let spans = recv.spans_of(TRACE);
        ["kong", "kong.balancer", "kong.upstream.connect"]
            .iter()
            .all(|n| !named(&spans, n).is_empty())
    });
    let spans = recv.spans_of(TRACE);
    let root = named(&spans, "kong")[0];
    assert_eq!(root["parentSpanId"], PARENT, "{root}");
    assert_eq!(root["kind"], "SPAN_KIND_SERVER");
    assert_eq!(attr(root, "http.method")["stringValue"], "GET");
    assert_eq!(
        attr(root, "http.url")["stringValue"],
        "http://example.com/traced/a?x=1"
    );
    assert_eq!(attr(root, "http.host")["stringValue"], "example.com");
    assert_eq!(attr(root, "http.scheme")["stringValue"], "http");
    assert_eq!(attr(root, "http.flavor")["stringValue"], "1.1");
    assert_eq!(attr(root, "http.status_code")["intValue"], "200");
    assert_eq!(attr(root, "http.route")["stringValue"], "/traced");
    assert_eq!(attr(root, "net.peer.ip")["stringValue"], "127.0.0.1");
    assert_eq!(
        attr(root, "kong.request.id")["stringValue"],
        r.header("x-request-id").unwrap()
    );
    let start: u64 = root["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u64 = root["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(end >= start && start > 1_600_000_000_000_000_000, "{root}");

    let balancer = named(&spans, "kong.balancer");
    assert_eq!(balancer.len(), 1, "{spans:?}");
    let b = balancer[0];
    assert_eq!(
        b["parentSpanId"], root["spanId"],
        "the balancer span is the root's child"
    );
    assert_eq!(
        b["spanId"],
        upstream_parent.as_str(),
        "the upstream's parent is the balancer span"
    );
    assert_eq!(b["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(attr(b, "net.peer.ip")["stringValue"], "127.0.0.1");
    assert_eq!(
        attr(b, "net.peer.port")["doubleValue"],
        f64::from(echo.port())
    );
    assert_eq!(attr(b, "net.peer.name")["stringValue"], "127.0.0.1");
    assert_eq!(attr(b, "try_count")["doubleValue"], 1.0);
    let connect = named(&spans, "kong.upstream.connect");
    assert_eq!(connect.len(), 1, "a new connection: {spans:?}");
    assert_eq!(connect[0]["parentSpanId"], b["spanId"]);
    assert_eq!(attr(connect[0], "tls")["boolValue"], false);

    // Resource, scope and the export request's headers.
    let (_, resource) = recv
        .spans()
        .into_iter()
        .find(|(s, _)| s["traceId"] == TRACE)
        .unwrap();
    let res_attr = |k: &str| attr(&resource, k)["stringValue"].clone();
    assert_eq!(res_attr("service.name"), "edge");
    assert_eq!(res_attr("deployment.environment"), "test");
    assert!(res_attr("service.instance.id")
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(res_attr("service.version").is_string());
    let req = recv
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/v1/traces")
        .unwrap();
    assert_eq!(req["headers"]["x-otel-token"], "abc");
    assert_eq!(req["headers"]["content-type"], "application/x-protobuf");

    // The log record of the request, correlated with its trace.
    wait_until("the request's log record", Duration::from_secs(15), || {
        recv.requests().iter().any(|r| r["path"] == "/v1/logs")
    });
    let logs = recv
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/v1/logs")
        .unwrap();
    let rec = &logs["body"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
    assert_eq!(rec["traceId"], TRACE, "{rec}");
    assert_eq!(rec["spanId"], root["spanId"]);
    assert_eq!(rec["body"]["stringValue"], "GET /traced/a?x=1 200");
    assert_eq!(
        attr(rec, "request.id")["stringValue"],
        r.header("x-request-id").unwrap()
    );
}

#[test]
fn b3_and_jaeger_contexts_are_extracted_and_propagation_config_is_honoured() {
    let echo = HttpEcho::start("echo");
    let recv = Receiver::start(0);
    let gw = Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {echo}\n  routes:\n  - name: preserve\n    paths: [/preserve]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {url}\n        queue:\n          max_coalescing_delay: 0.1\n  - name: configured\n    paths: [/configured]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {url}\n        queue:\n          max_coalescing_delay: 0.1\n        propagation:\n          extract: [jaeger]\n          inject: [w3c, b3]\n          clear: [uber-trace-id]\n",
        echo = echo.url(),
        url = recv.url("/v1/traces")
    ));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);

    // B3 single header in, B3 single header out (preserve), same trace.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let r = at("/preserve/single")
        .header(&format!(
            "b3: {b3_trace}-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        ))
        .run();
    assert_eq!(r.status, 200);
    let out = r.echo_header("b3").unwrap();
    let parts: Vec<&str> = out.split('-').collect();
    assert_eq!(parts[0], b3_trace, "{out}");
    assert_eq!(parts[2], "1", "{out}");
    assert!(
        r.echo_header("traceparent").is_none(),
        "preserve answers in the incoming format"
    );

    // B3 multi headers with a 64-bit trace id: the id stays 64-bit upstream.
    let r = at("/preserve/multi")
        .header("X-B3-TraceId: 463ac35c9f6413ad")
        .header("X-B3-SpanId: a2fb4a1d1a96d312")
        .header("X-B3-Sampled: 1")
        .run();
    assert_eq!(r.echo_header("x-b3-traceid").unwrap(), "463ac35c9f6413ad");
    assert_eq!(r.echo_header("x-b3-sampled").unwrap(), "1");
    let multi_parent = r.echo_header("x-b3-parentspanid").unwrap();

    // Jaeger in, Jaeger out.
    let j_trace = "463ac35c9f6413ad48485a3953bb6124";
    let r = at("/preserve/jaeger")
        .header(&format!("uber-trace-id: {j_trace}:a2fb4a1d1a96d312:0:1"))
        .run();
    let uber = r.echo_header("uber-trace-id").unwrap();
    assert!(
        uber.starts_with(&format!("{j_trace}:")) && uber.ends_with(":01"),
        "{uber}"
    );

    // Configured: Jaeger extracted, W3C and B3 injected, the Jaeger header cleared.
    let j2 = "11111111111111112222222222222222";
    let r = at("/configured/x")
        .header(&format!("uber-trace-id: {j2}:3333333333333333:0:1"))
        .header(&format!("traceparent: 00-{TRACE}-{PARENT}-01"))
        .run();
    assert_eq!(r.status, 200);
    let (t, _, _) = traceparent(&r.echo_header("traceparent").unwrap());
    assert_eq!(
        t, j2,
        "extract lists jaeger only: the W3C header is not read"
    );
    assert_eq!(r.echo_header("x-b3-traceid").unwrap(), j2);
    assert!(r.echo_header("uber-trace-id").is_none(), "cleared");

    wait_until("spans of the four traces", Duration::from_secs(15), || {
        [b3_trace, "0000000000000000463ac35c9f6413ad", j_trace, j2]
            .iter()
            .all(|t| !named(&recv.spans_of(t), "kong").is_empty())
    });
    let root = |t: &str| named(&recv.spans_of(t), "kong")[0].clone();
    assert_eq!(root(b3_trace)["parentSpanId"], "e457b5a2e4d86bd1");
    assert_eq!(root(j_trace)["parentSpanId"], "a2fb4a1d1a96d312");
    assert_eq!(root(j2)["parentSpanId"], "3333333333333333");
    let multi = root("0000000000000000463ac35c9f6413ad");
    assert_eq!(multi["parentSpanId"], "a2fb4a1d1a96d312");
    assert_eq!(
        multi["spanId"],
        multi_parent.as_str(),
        "B3's parent span id is our root"
    );
}

#[test]
fn sampling_rate_zero_and_an_unsampled_caller_export_nothing() {
    let echo = HttpEcho::start("echo");
    let recv = Receiver::start(0);
    let mut gw = Gateway::start(&format!(
        "services:\n- name: echo-svc\n  url: {echo}\n  routes:\n  - name: never\n    paths: [/never]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {url}\n        sampling_rate: 0\n  - name: always\n    paths: [/always]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {url}\n",
        echo = echo.url(),
        url = recv.url("/v1/traces")
    ));
    let at = |p: &str| Curl::at("http", "example.com", gw.http_port(), p);
    let r = at("/never/1").run();
    assert_eq!(r.status, 200);
    let (_, _, flags) = traceparent(&r.echo_header("traceparent").unwrap());
    assert_eq!(flags, "00", "the upstream is told the trace is not sampled");
    // The caller decided not to sample: obeyed even at rate 1.
    let unsampled = "5b8efff798038103d269b633813fc60c";
    let r = at("/always/unsampled")
        .header(&format!("traceparent: 00-{unsampled}-eee19b7ec3c1b174-00"))
        .run();
    let (t, _, flags) = traceparent(&r.echo_header("traceparent").unwrap());
    assert_eq!((t.as_str(), flags.as_str()), (unsampled, "00"));
    let r = at("/always/marker").run();
    let (marker, _, _) = traceparent(&r.echo_header("traceparent").unwrap());

    // SIGTERM flushes every queue: whatever was queued has arrived once the process is gone.
    gw.signal("TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(30)).is_some(),
        "gateway exits"
    );
    let spans = recv.spans();
    assert!(
        spans.iter().any(|(s, _)| s["traceId"] == marker.as_str()),
        "{spans:?}"
    );
    let paths: Vec<String> = spans
        .iter()
        .filter_map(|(s, _)| {
            attr(s, "http.url")["stringValue"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(
        paths.iter().all(|p| p.ends_with("/always/marker")),
        "only the sampled request is exported: {paths:?}"
    );
}

#[test]
fn a_failed_export_is_retried_until_the_receiver_accepts_it() {
    let echo = HttpEcho::start("echo");
    let recv = Receiver::start(2);
    let gw = gateway(
        &echo,
        &format!(
            "        traces_endpoint: {}\n        queue:\n          max_coalescing_delay: 0.1\n          initial_retry_delay: 0.05\n",
            recv.url("/v1/traces")
        ),
    );
    let r = Curl::at("http", "example.com", gw.http_port(), "/traced/retry").run();
    assert_eq!(r.status, 200);
    let (trace, _, _) = traceparent(&r.echo_header("traceparent").unwrap());
    wait_until(
        "the batch accepted after two 500s",
        Duration::from_secs(15),
        || recv.requests().len() >= 3,
    );
    let got = recv.requests();
    assert_eq!(got[0]["status"], 500);
    assert_eq!(got[1]["status"], 500);
    assert_eq!(got[2]["status"], 200);
    assert_eq!(
        got[0]["body"], got[2]["body"],
        "the same batch is sent again"
    );
    assert!(!named(&recv.spans_of(&trace), "kong").is_empty());
}

#[test]
fn a_dead_receiver_never_harms_traffic_and_drops_are_counted() {
    let echo = HttpEcho::start("echo");
    let dead = closed_port();
    let gw = gateway(
        &echo,
        &format!(
            "        traces_endpoint: http://127.0.0.1:{dead}/v1/traces\n        connect_timeout: 200\n        queue:\n          max_entries: 5\n          max_retry_time: 30\n          initial_retry_delay: 1\n"
        ),
    );
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
    }
    // Each request queues two spans or more: well over the bound of 5.
    wait_until("drops counted", Duration::from_secs(10), || {
        metrics::value(
            &gw.metrics(),
            "portcullis_plugin_queue_dropped_total",
            &[("plugin", "opentelemetry")],
        )
        .unwrap_or(0.0)
            >= 40.0
    });
}

#[test]
fn sigterm_flushes_queued_spans() {
    let echo = HttpEcho::start("echo");
    let recv = Receiver::start(0);
    let mut gw = gateway(
        &echo,
        &format!(
            "        traces_endpoint: {}\n        queue:\n          max_batch_size: 100\n          max_coalescing_delay: 3600\n",
            recv.url("/v1/traces")
        ),
    );
    let mut traces = Vec::new();
    for i in 0..3 {
        let r = Curl::at(
            "http",
            "example.com",
            gw.http_port(),
            &format!("/traced/{i}"),
        )
        .run();
        assert_eq!(r.status, 200);
        traces.push(traceparent(&r.echo_header("traceparent").unwrap()).0);
    }
    assert!(
        recv.requests().is_empty(),
        "held back by the coalescing delay"
    );
    gw.signal("TERM");
    wait_until("spans flushed on SIGTERM", Duration::from_secs(20), || {
        traces
            .iter()
            .all(|t| !named(&recv.spans_of(t), "kong").is_empty())
    });
    gw.wait_exit(Duration::from_secs(30));
}

#[test]
fn bad_opentelemetry_config_is_located() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: opentelemetry\n    config:\n      traces_endpoint: not-a-url\n      sampling_rate: 1.5\n      propagation:\n        inject: [w3c, zipkin]\n",
    );
    let all = check(&conf).all();
    for want in [
        "conf/gateway.yaml:7:24: services[0].plugins[0].config.traces_endpoint: missing host in url",
        "conf/gateway.yaml:8:22: services[0].plugins[0].config.sampling_rate: value should be between 0 and 1",
        "conf/gateway.yaml:10:23: services[0].plugins[0].config.propagation.inject[1]: expected one of: preserve, w3c,",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "services:\n- name: s\n  url: http://127.0.0.1:9\n  plugins:\n  - name: opentelemetry\n    config:\n      headers:\n        X-A: b\n",
    );
    let all = check(&conf).all();
    assert!(
        all.contains("conf/gateway.yaml:7:7: services[0].plugins[0].config: at least one of these fields must be non-empty: 'config.traces_endpoint', 'config.logs_endpoint'"),
        "{all}"
    );
}

#[test]
fn a_reload_flushes_the_retired_instances_spans() {
    let echo = HttpEcho::start("echo");
    let recv = Receiver::start(0);
    let yaml = |name: &str| {
        format!(
            "services:\n- name: echo-svc\n  url: {}\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {}\n        resource_attributes:\n          service.name: {name}\n        queue:\n          max_batch_size: 100\n          max_coalescing_delay: 3600\n",
            echo.url(),
            recv.url("/v1/traces")
        )
    };
    let gw = Gateway::start(&yaml("before"));
    let r = Curl::at("http", "example.com", gw.http_port(), "/traced/r").run();
    assert_eq!(r.status, 200);
    let (trace, _, _) = traceparent(&r.echo_header("traceparent").unwrap());
    assert!(
        recv.requests().is_empty(),
        "held back by the coalescing delay"
    );
    let hash = gw.status()["config_hash"].clone();
    gw.conf().write("gateway.yaml", yaml("after"));
    gw.signal("HUP");
    wait_until("the new configuration", Duration::from_secs(10), || {
        gw.status()["config_hash"] != hash
    });
    wait_until(
        "the retired instance's spans",
        Duration::from_secs(15),
        || !named(&recv.spans_of(&trace), "kong").is_empty(),
    );
    let (_, resource) = recv
        .spans()
        .into_iter()
        .find(|(s, _)| s["traceId"] == trace.as_str())
        .unwrap();
    assert_eq!(attr(&resource, "service.name")["stringValue"], "before");
}

#[test]
fn each_new_tls_upstream_connection_is_a_connect_span_under_its_balancer_span() {
    let pki = Pki::new();
    let up = HttpsEcho::start("tls-echo", &pki.server.chain_path, &pki.server.key_path);
    let recv = Receiver::start(0);
    let gw = Gateway::start(&format!(
        "services:\n- name: tls-svc\n  url: {}\n  tls_verify: false\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {}\n        queue:\n          max_batch_size: 50\n          max_coalescing_delay: 0.1\n",
        up.url(),
        recv.url("/v1/traces")
    ));
    let mut traces = Vec::new();
    for i in 0..2 {
        let r = Curl::at(
            "http",
            "example.com",
            gw.http_port(),
            &format!("/traced/{i}"),
        )
        .run();
        assert_eq!(r.status, 200, "{}", r.text());
        traces.push(traceparent(&r.echo_header("traceparent").unwrap()).0);
    }
    wait_until("both requests' spans", Duration::from_secs(15), || {
        traces
            .iter()
            .all(|t| !named(&recv.spans_of(t), "kong.balancer").is_empty())
    });
    let first = recv.spans_of(&traces[0]);
    let connect = named(&first, "kong.upstream.connect");
    assert_eq!(connect.len(), 1, "{first:?}");
    assert_eq!(attr(connect[0], "tls")["boolValue"], true);
    assert_eq!(
        connect[0]["parentSpanId"],
        named(&first, "kong.balancer")[0]["spanId"]
    );
    // One connect span per connection the upstream accepted: a pooled connection has none.
    let connects: usize = traces
        .iter()
        .map(|t| named(&recv.spans_of(t), "kong.upstream.connect").len())
        .sum();
    assert_eq!(connects, up.connections());
}

#[test]
fn a_failed_connection_is_an_error_balancer_span() {
    let recv = Receiver::start(0);
    let dead = closed_port();
    let gw = Gateway::start(&format!(
        "services:\n- name: dead-svc\n  url: http://127.0.0.1:{dead}\n  retries: 0\n  routes:\n  - name: traced\n    paths: [/traced]\n    plugins:\n    - name: opentelemetry\n      config:\n        traces_endpoint: {}\n        http_response_header_for_traceid: X-Trace-Id\n        queue:\n          max_batch_size: 50\n          max_coalescing_delay: 0.1\n",
        recv.url("/v1/traces")
    ));
    let r = Curl::at("http", "example.com", gw.http_port(), "/traced/x").run();
    assert_eq!(r.status, 502);
    let trace = r.header("x-trace-id").unwrap().to_string();
    wait_until(
        "the failed request's spans",
        Duration::from_secs(15),
        || !named(&recv.spans_of(&trace), "kong.balancer").is_empty(),
    );
    let spans = recv.spans_of(&trace);
    let root = named(&spans, "kong")[0];
    assert_eq!(attr(root, "http.status_code")["intValue"], "502");
    let b = named(&spans, "kong.balancer")[0];
    assert_eq!(b["status"]["code"], "STATUS_CODE_ERROR", "{b}");
    assert_eq!(attr(b, "net.peer.port")["doubleValue"], f64::from(dead));
    assert!(
        named(&spans, "kong.upstream.connect").is_empty(),
        "no connection, no connect span"
    );
}
