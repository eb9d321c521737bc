//! Kong's `opentelemetry` plugin: trace context propagation (W3C, B3, Jaeger, OT) in the access
//! phase, and in the log phase the spans Kong's instrumentation makes — the `kong` request span
//! and a `kong.balancer` span per try — exported as OTLP/HTTP protobuf
//! (`ExportTraceServiceRequest`) to `traces_endpoint`; a log record per request to
//! `logs_endpoint`.
//!
//! The request path only builds the spans and pushes them on a bounded drop-oldest queue; a task
//! on the background runtime batches, POSTs and retries them with Kong's queue policy (the
//! logging plugins' [`portcullis_loggers::queue::Shipper`]). A dead receiver costs a request
//! nothing but a queue push.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod encode;

use encode::Value;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use portcullis_loggers::queue::{Shipper, Sink};
use portcullis_plugin_api::json::{ip_bytes, IP_TEXT_MAX};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, LogEntry, Phases, Plugin,
    PluginFactory, RequestCtx, RequestView, ResponseHead,
};
use portcullis_tracing_common::config::{check_header_name, endpoint, exporter_client, timeout};
use portcullis_tracing_common::{random_bytes, request_end, to_hex};
use portcullis_tracing_common::{InjectCtx, Propagation};
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NAME: &str = "opentelemetry";
/// Kong's PRIORITY for opentelemetry.
pub const PRIORITY: i32 = 14;

/// The instrumentation scope Kong reports its spans under.
const SCOPE_NAME: &str = "kong-internal";
const SCOPE_VERSION: &str = "0.1.0";

/// The trace of one request, decided in the access phase (or later, for a request that never
/// reached it) and read back by the later phases.
#[derive(Debug, Clone)]
struct TraceCtx {
    trace_id: [u8; 16],
    root_span_id: [u8; 8],
    /// The caller's span, when a context was extracted.
    root_parent: Option<[u8; 8]>,
    /// The span id the last balancer try gets: the parent the upstream sees.
    balancer_span_id: [u8; 8],
    sampled: bool,
}

fn random_ids() -> ([u8; 16], [u8; 8], [u8; 8]) {
    let b = random_bytes::<32>();
    let mut t = [0u8; 16];
    let mut s1 = [0u8; 8];
    let mut s2 = [0u8; 8];
    t.copy_from_slice(&b[..16]);
    s1.copy_from_slice(&b[16..24]);
    s2.copy_from_slice(&b[24..32]);
    (t, s1, s2)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Kong's `string.format("%.1f", ngx.req.http_version())`.
fn http_flavor(v: portcullis_plugin_api::http::Version) -> &'static str {
    use portcullis_plugin_api::http::Version;
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: impl Into<String>) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// The HTTP client, endpoint and headers one signal is POSTed with.
struct Exporter {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: Vec<(String, String)>,
    /// The `Resource` and `InstrumentationScope` messages, encoded once.
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Exporter {
    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut req = self.client.post(self.url.clone()).body(body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("failed to send request: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "response error: {}, body: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body[..body.len().min(512)])
            ));
        }
        Ok(())
    }
}

/// Sends encoded `Span`s (traces) or `LogRecord`s (logs): the two export requests differ only
/// in their message names.
struct OtlpSink {
    exporter: Exporter,
    signal: &'static str,
}

impl Sink for OtlpSink {
    type Item = Vec<u8>;

    async fn send(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let e = &self.exporter;
        e.post(encode::export_request(&e.resource, &e.scope, batch))
            .await?;
        tracing::debug!(
            plugin = NAME,
            signal = self.signal,
            items = batch.len(),
            "exporter sent"
        );
        Ok(())
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.into(),
        version: SCOPE_VERSION.into(),
        ..Default::default()
    }
}

/// A span's fields before its attributes, in field order: ids, name, kind, times.
#[allow(clippy::too_many_arguments)]
#[inline]
fn span_head(
    out: &mut Vec<u8>,
    t: &TraceCtx,
    span_id: &[u8; 8],
    parent: &[u8],
    name: &str,
    kind: SpanKind,
    start: u64,
    end: u64,
) {
    encode::bytes(out, 1, &t.trace_id);
    encode::bytes(out, 2, span_id);
    encode::bytes(out, 4, parent);
    encode::bytes(out, 5, name.as_bytes());
    encode::varint(out, 6, kind as u64);
    encode::fixed64(out, 7, start);
    encode::fixed64(out, 8, end);
}

struct OpenTelemetry {
    traces: Option<Arc<Shipper<OtlpSink>>>,
    logs: Option<Arc<Shipper<OtlpSink>>>,
    propagation: Propagation,
    sampling_rate: f64,
    traceid_header: Option<String>,
}

pub struct OpenTelemetryFactory;

impl PluginFactory for OpenTelemetryFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: config::Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let traces_url = match (&c.traces_endpoint, &c.endpoint) {
            (Some(u), _) => endpoint(u, "traces_endpoint", &mut errors),
            (None, Some(u)) => {
                ctx.warn(
                    "endpoint",
                    "endpoint is deprecated, please use traces_endpoint instead",
                );
                endpoint(u, "endpoint", &mut errors)
            }
            (None, None) => None,
        };
        let logs_url = c
            .logs_endpoint
            .as_deref()
            .and_then(|u| endpoint(u, "logs_endpoint", &mut errors));
        if c.traces_endpoint.is_none() && c.endpoint.is_none() && c.logs_endpoint.is_none() {
            errors.push(ConfigError::new(
                "",
                "at least one of these fields must be non-empty: 'config.traces_endpoint', 'config.logs_endpoint'",
            ));
        }
        let mut headers = Vec::new();
        let mut content_type = false;
        for (k, v) in c.headers.iter().flatten() {
            let name_ok = portcullis_plugin_api::http::HeaderName::from_bytes(k.as_bytes()).is_ok();
            if !name_ok {
                errors.push(ConfigError::new(
                    format!("headers.{k}"),
                    format!(
                        "bad header name '{k}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
                    ),
                ));
                continue;
            }
            if portcullis_plugin_api::http::HeaderValue::from_str(v).is_err() {
                errors.push(ConfigError::new(
                    format!("headers.{k}"),
                    "invalid header value",
                ));
                continue;
            }
            content_type |= k.eq_ignore_ascii_case("content-type");
            headers.push((k.clone(), v.clone()));
        }
        if !content_type {
            headers.push(("Content-Type".into(), "application/x-protobuf".into()));
        }
        // Kong's defaults, overridden by the configured attributes.
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("service.name".to_string(), "kong".to_string());
        attrs.insert(
            "service.instance.id".to_string(),
            portcullis_tracing_common::node_id().to_string(),
        );
        attrs.insert(
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        for (k, v) in c.resource_attributes.iter().flatten() {
            match v {
                serde_json::Value::String(text) if text.is_empty() => errors.push(
                    ConfigError::new(format!("resource_attributes.{k}"), "required field missing"),
                ),
                serde_json::Value::String(text) => {
                    if text.contains("$(") {
                        ctx.warn(
                            format!("resource_attributes.{k}"),
                            "resource attribute templates are Lua expressions, which Portcullis does not run: the value is sent as written",
                        );
                    }
                    attrs.insert(k.clone(), text.clone());
                }
                _ => errors.push(ConfigError::new(
                    format!("resource_attributes.{k}"),
                    "expected a string",
                )),
            }
        }
        let resource = Resource {
            attributes: attrs.into_iter().map(|(k, v)| kv(&k, s(v))).collect(),
            ..Default::default()
        };
        let connect = timeout(c.connect_timeout, 1000, "connect_timeout", &mut errors);
        let send = timeout(c.send_timeout, 5000, "send_timeout", &mut errors);
        let read = timeout(c.read_timeout, 5000, "read_timeout", &mut errors);
        let sampling_rate = match c.sampling_rate {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(_) => {
                errors.push(ConfigError::new(
                    "sampling_rate",
                    "value should be between 0 and 1",
                ));
                1.0
            }
        };
        check_header_name(
            c.http_response_header_for_traceid.as_deref(),
            "http_response_header_for_traceid",
            &mut errors,
        );
        let propagation = c.propagation(&mut errors);
        let queue = c.queue(&mut errors, ctx);
        propagation.warn_unsupported(ctx);
        if c.header_type.as_deref().is_some_and(|h| h != "preserve") {
            ctx.warn(
                "header_type",
                "header_type is deprecated, please use the propagation options instead",
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let client = exporter_client(connect, send + read)?;
        let resource = resource.encode_to_vec();
        let scope = scope().encode_to_vec();
        let sink = |url: reqwest::Url, signal| OtlpSink {
            exporter: Exporter {
                client: client.clone(),
                url,
                headers: headers.clone(),
                resource: resource.clone(),
                scope: scope.clone(),
            },
            signal,
        };
        let traces = traces_url.map(|u| Shipper::new(NAME, queue.clone(), sink(u, "traces")));
        let logs = logs_url.map(|u| Shipper::new(NAME, queue.clone(), sink(u, "logs")));
        Ok(Arc::new(OpenTelemetry {
            traces,
            logs,
            propagation,
            sampling_rate,
            traceid_header: c.http_response_header_for_traceid,
        }))
    }
}

impl OpenTelemetry {
    /// A trace for a request the access phase did not see (an earlier plugin answered it).
    fn fresh_trace(&self) -> TraceCtx {
        let (trace_id, root_span_id, balancer_span_id) = random_ids();
        TraceCtx {
            trace_id,
            root_span_id,
            root_parent: None,
            balancer_span_id,
            sampled: portcullis_tracing_common::sample(&trace_id, self.sampling_rate),
        }
    }

    /// Kong's spans of one request, each an encoded `Span` handed to `push`: the `kong`
    /// request span, a `kong.balancer` span per try and a `kong.upstream.connect` span per new
    /// upstream connection.
    fn encode_spans(
        &self,
        t: &TraceCtx,
        entry: &LogEntry<'_>,
        ctx: &RequestCtx,
        mut push: impl FnMut(Vec<u8>),
    ) {
        let start = nanos(entry.started_at);
        let end = nanos(request_end(entry));
        let host = portcullis_plugin_api::host_without_port(entry.host);
        let target = entry
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut ip_buf = [0u8; IP_TEXT_MAX];
        let client_ip = ctx
            .client_ip
            .map_or(&[][..], |ip| ip_bytes(ip, &mut ip_buf));
        let route_path = ctx
            .route_info
            .as_ref()
            .and_then(|r| r.first_path.as_deref())
            .unwrap_or("");
        let mut out = Vec::with_capacity(512);
        span_head(
            &mut out,
            t,
            &t.root_span_id,
            t.root_parent.as_ref().map_or(&[], |p| p.as_slice()),
            "kong",
            SpanKind::Server,
            start,
            end,
        );
        let attr =
            |out: &mut Vec<u8>, key: &str, value: Value<'_>| encode::attribute(out, 9, key, value);
        attr(
            &mut out,
            "http.method",
            Value::Str(&[entry.method.as_str()]),
        );
        attr(
            &mut out,
            "http.url",
            Value::Str(&[entry.scheme, "://", host, target]),
        );
        attr(&mut out, "http.host", Value::Str(&[host]));
        attr(&mut out, "http.scheme", Value::Str(&[entry.scheme]));
        attr(
            &mut out,
            "http.flavor",
            Value::Str(&[http_flavor(entry.version)]),
        );
        attr(&mut out, "http.client_ip", Value::Text(client_ip));
        attr(&mut out, "net.peer.ip", Value::Text(client_ip));
        attr(&mut out, "kong.request.id", Value::Str(&[&ctx.request_id]));
        attr(&mut out, "http.route", Value::Str(&[route_path]));
        if entry.status != 0 {
            attr(
                &mut out,
                "http.status_code",
                Value::Int(entry.status.into()),
            );
        }
        push(out);
        let peer_name = ctx.service_info.as_ref().and_then(|s| s.host.as_deref());
        let n = entry.tries.len();
        let mut peer_buf = [0u8; IP_TEXT_MAX];
        for (i, try_) in entry.tries.iter().enumerate() {
            let last = i + 1 == n;
            let span_id = if last {
                t.balancer_span_id
            } else {
                random_ids().1
            };
            let try_start = try_.started_at.unwrap_or(entry.started_at);
            let failed = try_.connected_at.is_none();
            let try_end = match try_.connected_at {
                // A try that never connected ends when connecting failed.
                None => nanos(
                    try_start
                        .checked_add(Duration::from_millis(try_.connect_ms))
                        .unwrap_or(try_start),
                ),
                Some(_) if last => end,
                Some(connected) => nanos(connected),
            };
            let peer_ip = try_
                .addr
                .map_or(&[][..], |a| ip_bytes(a.ip(), &mut peer_buf));
            let mut out = Vec::with_capacity(256);
            span_head(
                &mut out,
                t,
                &span_id,
                &t.root_span_id,
                "kong.balancer",
                SpanKind::Client,
                nanos(try_start),
                try_end,
            );
            attr(&mut out, "try_count", Value::Double((i + 1) as f64));
            if let Some(a) = try_.addr {
                attr(&mut out, "net.peer.ip", Value::Text(peer_ip));
                attr(&mut out, "net.peer.port", Value::Double(a.port().into()));
            }
            if let Some(name) = peer_name {
                attr(&mut out, "net.peer.name", Value::Str(&[name]));
            }
            if failed || (last && entry.error.is_some()) {
                if last && entry.status != 0 {
                    attr(
                        &mut out,
                        "http.status_code",
                        Value::Int(entry.status.into()),
                    );
                }
                encode::status_code(&mut out, StatusCode::Error as i32);
            }
            push(out);
            // The connection the try opened: TCP connect and, to a TLS upstream, the
            // handshake (Pingora reports them as one interval).
            if let (false, Some(started), Some(connected)) =
                (try_.reused, try_.started_at, try_.connected_at)
            {
                let mut out = Vec::with_capacity(192);
                span_head(
                    &mut out,
                    t,
                    &random_ids().1,
                    &span_id,
                    "kong.upstream.connect",
                    SpanKind::Client,
                    nanos(started),
                    nanos(connected),
                );
                if let Some(a) = try_.addr {
                    attr(&mut out, "net.peer.ip", Value::Text(peer_ip));
                    attr(&mut out, "net.peer.port", Value::Double(a.port().into()));
                }
                attr(&mut out, "tls", Value::Bool(try_.tls));
                push(out);
            }
        }
    }

    /// One record per request (Kong sends the log lines the request produced; the gateway's
    /// own log does not run through plugins, so the request itself is the record here).
    fn log_record(&self, t: &TraceCtx, entry: &LogEntry<'_>, ctx: &RequestCtx) -> LogRecord {
        let end = request_end(entry);
        let target = entry
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut attributes = vec![
            kv("request.id", s(ctx.request_id.clone())),
            kv("http.method", s(entry.method.as_str())),
            kv("http.target", s(target)),
            kv(
                "http.status_code",
                any_value::Value::IntValue(entry.status.into()),
            ),
        ];
        if let Some(ip) = ctx.client_ip {
            attributes.push(kv("net.peer.ip", s(ip.to_string())));
        }
        if let Some(r) = &ctx.route {
            attributes.push(kv("kong.route", s(r.to_string())));
        }
        if let Some(sv) = &ctx.service {
            attributes.push(kv("kong.service", s(sv.to_string())));
        }
        LogRecord {
            time_unix_nano: nanos(end),
            observed_time_unix_nano: nanos(SystemTime::now()),
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue {
                value: Some(s(format!(
                    "{} {} {}",
                    entry.method.as_str(),
                    target,
                    entry.status
                ))),
            }),
            attributes,
            flags: u32::from(t.sampled),
            trace_id: t.trace_id.to_vec(),
            span_id: t.root_span_id.to_vec(),
            ..Default::default()
        }
    }
}

#[async_trait]
impl Plugin for OpenTelemetry {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::LOG;
        if self.traces.is_some() {
            p = p | Phases::ACCESS;
            if self.traceid_header.is_some() {
                p = p | Phases::RESPONSE_HEADERS;
            }
        }
        p
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let (from, ext) = self.propagation.extract(req.headers);
        let (new_trace, root_span_id, balancer_span_id) = random_ids();
        let trace_id = ext.trace_id.unwrap_or(new_trace);
        // Kong's get_sampling_decision: a caller that said "not sampled" is obeyed; otherwise
        // the ratio sampler decides on the (possibly inherited) trace id.
        let sampled = match ext.sampled {
            Some(false) => false,
            _ => portcullis_tracing_common::sample(&trace_id, self.sampling_rate),
        };
        let t = TraceCtx {
            trace_id,
            root_span_id,
            root_parent: ext.span_id.or(ext.parent_id),
            balancer_span_id,
            sampled,
        };
        let inject = InjectCtx {
            trace_id,
            trace_id_len: ext.trace_id.and(ext.trace_id_len),
            span_id: balancer_span_id,
            parent_id: root_span_id,
            sampled,
            b3_debug: ext.b3_debug,
        };
        self.propagation.propagate(from, &ext, &inject, ctx);
        ctx.extensions.insert(t);
        Flow::Continue
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let Some(name) = &self.traceid_header else {
            return;
        };
        let t = match ctx.extensions.get::<TraceCtx>() {
            Some(t) => t.clone(),
            None => {
                let t = self.fresh_trace();
                ctx.extensions.insert(t.clone());
                t
            }
        };
        resp.headers.append(name, &to_hex(&t.trace_id));
    }

    fn log(&self, entry: &LogEntry<'_>, ctx: &RequestCtx) {
        let fresh;
        let t = match ctx.extensions.get::<TraceCtx>() {
            Some(t) => t,
            None => {
                fresh = self.fresh_trace();
                &fresh
            }
        };
        if let Some(traces) = &self.traces {
            if t.sampled {
                self.encode_spans(t, entry, ctx, |span| traces.queue.push(span));
            }
        }
        if let Some(logs) = &self.logs {
            logs.queue
                .push(self.log_record(t, entry, ctx).encode_to_vec());
        }
    }

    async fn flush(&self) {
        if let Some(t) = &self.traces {
            t.flush().await;
        }
        if let Some(l) = &self.logs {
            l.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_tracing_common::{Format, Inject};
    use serde_json::json;

    fn build(config: serde_json::Value) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        OpenTelemetryFactory.build(&config, &BuildContext::default())
    }

    fn errors(config: serde_json::Value) -> Vec<(String, String)> {
        match build(config) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn config_is_checked_like_kongs_schema() {
        assert!(errors(json!({"traces_endpoint": "http://127.0.0.1:4318/v1/traces"})).is_empty());
        assert!(errors(json!({"endpoint": "http://127.0.0.1:4318/v1/traces"})).is_empty());
        assert_eq!(
            errors(json!({})),
            vec![(
                String::new(),
                "at least one of these fields must be non-empty: 'config.traces_endpoint', 'config.logs_endpoint'".to_string()
            )]
        );
        let e = errors(json!({
            "traces_endpoint": "nope",
            "sampling_rate": 2,
            "header_type": "zipkin",
            "propagation": {"extract": ["b3-single"], "inject": ["w3c", "x"]},
            "resource_attributes": {"a": "", "b": 1},
        }));
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        for p in [
            "traces_endpoint",
            "sampling_rate",
            "propagation.extract[0]",
            "propagation.inject[1]",
            "resource_attributes.a",
            "resource_attributes.b",
        ] {
            assert!(paths.contains(&p), "{p} missing from {e:?}");
        }
        assert!(
            errors(json!({"traces_endpoint": "http://x/", "bogus": 1}))[0]
                .1
                .contains("bogus")
        );
    }

    /// The spans written field by field decode with the official definitions, re-encode with
    /// prost to the same bytes, and carry Kong's names, tree and attributes.
    #[test]
    fn spans_are_canonical_otlp() {
        use opentelemetry_proto::tonic::trace::v1::Span;
        use portcullis_plugin_api::{http, EntityInfo, Try};
        let c: config::Config = parse_config(&json!({"traces_endpoint": "http://x/"})).unwrap();
        let otel = OpenTelemetry {
            traces: None,
            logs: None,
            propagation: c.propagation(&mut Vec::new()),
            sampling_rate: 1.0,
            traceid_header: None,
        };
        let t = TraceCtx {
            trace_id: [7; 16],
            root_span_id: [1; 8],
            root_parent: Some([9; 8]),
            balancer_span_id: [2; 8],
            sampled: true,
        };
        let t0 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
        let tries = [
            Try {
                addr: Some("10.0.0.1:8443".parse().unwrap()),
                connect_ms: 5,
                started_at: Some(t0),
                connected_at: None,
                reused: false,
                tls: true,
            },
            Try {
                addr: Some("[::1]:8080".parse().unwrap()),
                connect_ms: 1,
                started_at: Some(t0 + Duration::from_millis(6)),
                connected_at: Some(t0 + Duration::from_millis(7)),
                reused: false,
                tls: false,
            },
        ];
        let headers = http::HeaderMap::new();
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        let entry = LogEntry {
            method: &http::Method::GET,
            uri: &uri,
            version: http::Version::HTTP_11,
            host: "h.test:8000",
            request_headers: &headers,
            response_headers: None,
            status: 200,
            request_body_bytes: 0,
            response_body_bytes: 0,
            started_at: t0,
            latency: 0.010,
            upstream_latency: Some(0.004),
            upstream_sent: None,
            upstream_status: None,
            upstream_uri: Some("/p?q=1"),
            tries: &tries,
            error: None,
            scheme: "http",
            tls_version: None,
            tls_cipher: None,
        };
        let mut ctx = RequestCtx {
            client_ip: Some("127.0.0.9".parse().unwrap()),
            request_id: "rid-1".into(),
            ..Default::default()
        };
        ctx.route_info = Some(Arc::new(EntityInfo::new(
            "r".into(),
            None,
            json!({"paths": ["/p"]}),
        )));
        ctx.service_info = Some(Arc::new(EntityInfo::new(
            "s".into(),
            None,
            json!({"host": "up.test"}),
        )));
        let mut encoded = Vec::new();
        otel.encode_spans(&t, &entry, &ctx, |b| encoded.push(b));
        let spans: Vec<Span> = encoded
            .iter()
            .map(|b| {
                let span = Span::decode(b.as_slice()).unwrap();
                assert_eq!(&span.encode_to_vec(), b, "not prost's bytes: {span:?}");
                span
            })
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kong",
                "kong.balancer",
                "kong.balancer",
                "kong.upstream.connect"
            ]
        );
        let attr = |s: &Span, k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        let root = &spans[0];
        assert_eq!(root.trace_id, [7; 16]);
        assert_eq!(root.span_id, [1; 8]);
        assert_eq!(root.parent_span_id, [9; 8]);
        assert_eq!(root.kind, SpanKind::Server as i32);
        assert_eq!(root.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(root.end_time_unix_nano, 1_700_000_000_010_000_000);
        let str_attr = |k: &str| Some(any_value::Value::StringValue(k.into()));
        assert_eq!(attr(root, "http.url"), str_attr("http://h.test/p?q=1"));
        assert_eq!(attr(root, "http.client_ip"), str_attr("127.0.0.9"));
        assert_eq!(attr(root, "kong.request.id"), str_attr("rid-1"));
        assert_eq!(attr(root, "http.route"), str_attr("/p"));
        assert_eq!(attr(root, "http.flavor"), str_attr("1.1"));
        assert_eq!(
            attr(root, "http.status_code"),
            Some(any_value::Value::IntValue(200))
        );
        assert_eq!(root.attributes.len(), 10);
        let (failed, ok, connect) = (&spans[1], &spans[2], &spans[3]);
        assert_eq!(failed.parent_span_id, [1; 8]);
        assert_eq!(
            failed.status.as_ref().unwrap().code,
            StatusCode::Error as i32
        );
        assert_eq!(failed.end_time_unix_nano, 1_700_000_000_005_000_000);
        assert_eq!(attr(failed, "net.peer.ip"), str_attr("10.0.0.1"));
        assert_eq!(
            attr(failed, "net.peer.port"),
            Some(any_value::Value::DoubleValue(8443.0))
        );
        assert_eq!(
            attr(failed, "try_count"),
            Some(any_value::Value::DoubleValue(1.0))
        );
        assert_eq!(ok.span_id, [2; 8]);
        assert_eq!(ok.status, None);
        assert_eq!(ok.end_time_unix_nano, root.end_time_unix_nano);
        assert_eq!(attr(ok, "net.peer.ip"), str_attr("::1"));
        assert_eq!(attr(ok, "net.peer.name"), str_attr("up.test"));
        assert_eq!(connect.parent_span_id, [2; 8]);
        assert_eq!(
            attr(connect, "tls"),
            Some(any_value::Value::BoolValue(false))
        );
        assert_eq!(connect.end_time_unix_nano, 1_700_000_000_007_000_000);
    }

    #[test]
    fn header_type_maps_onto_propagation_as_kong_does() {
        let c: config::Config = parse_config(&json!({"traces_endpoint": "http://x/"})).unwrap();
        let p = c.propagation(&mut Vec::new());
        assert_eq!(p.extract[0], Format::B3);
        assert_eq!(p.inject, vec![Inject::Preserve]);
        let c: config::Config =
            parse_config(&json!({"traces_endpoint": "http://x/", "header_type": "jaeger"}))
                .unwrap();
        let p = c.propagation(&mut Vec::new());
        assert_eq!(
            p.inject,
            vec![Inject::Preserve, Inject::Format(Format::Jaeger)]
        );
        let c: config::Config = parse_config(&json!({
            "traces_endpoint": "http://x/", "header_type": "jaeger",
            "propagation": {"extract": ["w3c"], "inject": ["b3-single"], "default_format": "b3"}
        }))
        .unwrap();
        let p = c.propagation(&mut Vec::new());
        assert_eq!(p.extract, vec![Format::W3c]);
        assert_eq!(p.inject, vec![Inject::Format(Format::B3Single)]);
        assert_eq!(p.default_format, Format::B3);
    }

    #[test]
    fn deprecated_batch_fields_override_the_queue() {
        let c: config::Config = parse_config(&json!({"traces_endpoint": "http://x/"})).unwrap();
        let ctx = BuildContext::default();
        assert_eq!(c.queue(&mut Vec::new(), &ctx).max_batch_size, 200);
        assert!(ctx.warnings.lock().unwrap().is_empty());
        let c: config::Config = parse_config(&json!({
            "traces_endpoint": "http://x/", "batch_span_count": 7, "batch_flush_delay": 9
        }))
        .unwrap();
        let q = c.queue(&mut Vec::new(), &ctx);
        assert_eq!((q.max_batch_size, q.max_coalescing_delay), (7, 9.0));
        let warned: Vec<String> = ctx
            .warnings
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.path.clone())
            .collect();
        assert_eq!(warned, ["batch_span_count", "batch_flush_delay"]);
    }
}
