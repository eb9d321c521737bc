//! Kong's `zipkin` plugin: trace context propagation (B3 by default, W3C, Jaeger, OT) in the
//! access phase, and in the log phase the spans Kong's zipkin handler makes — the request span
//! (SERVER), the proxy span and one span per balancer try (CLIENT) — reported as Zipkin v2 JSON
//! (`POST` of a JSON array of spans) to `http_endpoint`.
//!
//! The request path only builds the spans and pushes them on a bounded drop-oldest queue; a task
//! on the background runtime batches, POSTs and retries them with Kong's queue policy (the
//! logging plugins' [`portcullis_loggers::queue::Shipper`]). A dead collector costs a request
//! nothing but a queue push.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod span;

use config::Settings;
use portcullis_loggers::queue::{Shipper, Sink};
use portcullis_plugin_api::http::HeaderMap;
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, LogEntry, Phases, Plugin,
    PluginFactory, RequestCtx, RequestView, ResponseHead,
};
use portcullis_tracing_common::{random_bytes, random_unit, request_end, to_hex};
use portcullis_tracing_common::{Extracted, Format, InjectCtx};
use span::ZipkinSpan;
use std::sync::Arc;
use std::time::SystemTime;

pub const NAME: &str = "zipkin";
/// Kong's PRIORITY for zipkin: first, so its timestamps are taken at the start of each phase.
pub const PRIORITY: i32 = 100_000;

/// The trace of one request, decided in the access phase (or later, for a request that never
/// reached it) and read back by the later phases.
#[derive(Debug, Clone)]
struct Trace {
    /// Right-aligned: a fresh 8-byte id (`traceid_byte_count: 8`) has 8 leading zero bytes.
    trace_id: [u8; 16],
    /// 8 or 16: the bytes reported. An extracted id is always 16 (Kong pads it).
    trace_len: usize,
    request_span_id: [u8; 8],
    /// The caller's span (or, for formats that share the caller's span, its parent).
    request_parent: Option<[u8; 8]>,
    /// The span the upstream sees as its parent.
    proxy_span_id: [u8; 8],
    sampled: bool,
    /// When the proxy span began: the access phase (`kas`), or when the trace was made.
    proxy_start: SystemTime,
    /// When the response headers went out (`khs`).
    headers_at: Option<SystemTime>,
}

impl Trace {
    fn trace_hex(&self) -> String {
        to_hex(&self.trace_id[16 - self.trace_len..])
    }
}

/// POSTs batches of spans as a JSON array.
struct ZipkinSink {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Sink for ZipkinSink {
    type Item = ZipkinSpan;

    async fn send(&self, batch: &[ZipkinSpan]) -> Result<(), String> {
        let body = serde_json::to_vec(batch).map_err(|e| format!("cannot encode spans: {e}"))?;
        let resp = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("zipkin request failed: {e}"))?;
        let status = resp.status();
        // Read to the end so the connection goes back to the pool.
        let _ = resp.bytes().await;
        if !status.is_success() {
            return Err(format!(
                "zipkin server responded unexpectedly: {} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            ));
        }
        tracing::debug!(plugin = NAME, spans = batch.len(), "zipkin batch sent");
        Ok(())
    }
}

struct Zipkin {
    s: Settings,
    /// `None` without `http_endpoint`: propagation only (Kong reports to nowhere).
    shipper: Option<Arc<Shipper<ZipkinSink>>>,
}

pub struct ZipkinFactory;

impl PluginFactory for ZipkinFactory {
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
        let s = c.resolve(&mut errors, ctx);
        if !errors.is_empty() {
            return Err(errors);
        }
        let shipper = match &s.http_endpoint {
            None => None,
            Some(url) => {
                let client = portcullis_tracing_common::config::exporter_client(
                    s.connect_timeout,
                    s.exchange_timeout,
                )?;
                let sink = ZipkinSink {
                    client,
                    url: url.clone(),
                };
                Some(Shipper::new(NAME, s.queue.clone(), sink))
            }
        };
        Ok(Arc::new(Zipkin { s, shipper }))
    }
}

impl Zipkin {
    /// Kong's `initialize_request`: the extracted context continued, or a new trace sampled at
    /// `sample_ratio`.
    fn new_trace(
        &self,
        headers: Option<&HeaderMap>,
        now: SystemTime,
    ) -> (Trace, Option<Format>, Extracted) {
        let (from, ext) = match headers {
            Some(h) => self.s.propagation.extract(h),
            None => (None, Extracted::default()),
        };
        // B3 and Jaeger share the caller's span: ours is that span, under its parent. The other
        // formats name the caller's span, which becomes our parent.
        let (span_id, parent) = if from.is_some_and(Format::reuses_span_id) {
            (ext.span_id, ext.parent_id)
        } else {
            (None, ext.span_id)
        };
        let ids = random_bytes::<32>();
        let (trace_id, trace_len) = match ext.trace_id {
            Some(t) => (t, 16),
            None => {
                let n = self.s.traceid_byte_count;
                let mut t = [0u8; 16];
                t[16 - n..].copy_from_slice(&ids[..n]);
                (t, n)
            }
        };
        let mut request_span_id = [0u8; 8];
        request_span_id.copy_from_slice(&ids[16..24]);
        let mut proxy_span_id = [0u8; 8];
        proxy_span_id.copy_from_slice(&ids[24..32]);
        // A sampling decision that came with the request is obeyed either way.
        let sampled = ext
            .sampled
            .unwrap_or_else(|| random_unit() < self.s.sample_ratio);
        let t = Trace {
            trace_id,
            trace_len,
            request_span_id: span_id.unwrap_or(request_span_id),
            request_parent: parent,
            proxy_span_id,
            sampled,
            proxy_start: now,
            headers_at: None,
        };
        (t, from, ext)
    }
}

#[async_trait]
impl Plugin for Zipkin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::ACCESS;
        if self.shipper.is_some() {
            // The response-headers phase stamps `khs`.
            p = p | Phases::LOG | Phases::RESPONSE_HEADERS;
        }
        if self.s.http_response_header_for_traceid.is_some() {
            p = p | Phases::RESPONSE_HEADERS;
        }
        p
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let (t, from, ext) = self.new_trace(Some(req.headers), SystemTime::now());
        // Kong's `get_inject_ctx`: the upstream's parent is the proxy span, under the request
        // span.
        let inject = InjectCtx {
            trace_id: t.trace_id,
            trace_id_len: ext.trace_id.and(ext.trace_id_len),
            span_id: t.proxy_span_id,
            parent_id: t.request_span_id,
            sampled: t.sampled,
            b3_debug: ext.b3_debug,
        };
        self.s.propagation.propagate(from, &ext, &inject, ctx);
        ctx.extensions.insert(t);
        Flow::Continue
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let now = SystemTime::now();
        if ctx.extensions.get::<Trace>().is_none() {
            // No access phase ran (the request headers are not at hand here either).
            let (t, _, _) = self.new_trace(None, now);
            ctx.extensions.insert(t);
        }
        let Some(t) = ctx.extensions.get_mut::<Trace>() else {
            return;
        };
        t.headers_at.get_or_insert(now);
        if let Some(name) = &self.s.http_response_header_for_traceid {
            resp.headers.append(name, &t.trace_hex());
        }
    }

    fn log(&self, entry: &LogEntry<'_>, ctx: &RequestCtx) {
        let Some(shipper) = &self.shipper else {
            return;
        };
        let end = request_end(entry);
        let fresh;
        let t = match ctx.extensions.get::<Trace>() {
            Some(t) => t,
            None => {
                fresh = self.new_trace(Some(entry.request_headers), end).0;
                &fresh
            }
        };
        if !t.sampled {
            return;
        }
        for span in span::spans(&self.s, t, entry, ctx, end) {
            shipper.queue.push(span);
        }
    }

    async fn flush(&self) {
        if let Some(s) = &self.shipper {
            s.flush().await;
        }
    }
}

#[cfg(test)]
mod tests;
