//! What every finished request leaves behind: the plugins' log phase, metrics and the access
//! log line.

use super::*;

/// The end of every request, errors included: the plugins' log phase, metrics, the access log.
pub(super) fn observe(tls: bool, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
    // The request is over: its target slot is free for least-connections again.
    ctx.lease = None;
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.responded)
        .unwrap_or(0);
    let elapsed = ctx.start.elapsed().as_secs_f64();
    if let Some(chain) = ctx.chain.clone() {
        if chain.has(Phases::LOG) {
            let req = session.req_header();
            let entry = LogEntry {
                method: &req.method,
                uri: &req.uri,
                version: req.version,
                host: ctx.original_host.as_deref().unwrap_or(""),
                request_headers: &req.headers,
                response_headers: session.response_written().map(|r| &r.headers),
                status,
                request_body_bytes: session.body_bytes_read() as u64,
                response_body_bytes: session.body_bytes_sent() as u64,
                started_at: std::time::SystemTime::now() - ctx.start.elapsed(),
                latency: elapsed,
                upstream_latency: ctx.upstream_ttfb,
                upstream_sent: ctx
                    .upstream_start
                    .map(|t| t.duration_since(ctx.start).as_secs_f64()),
                upstream_status: ctx.upstream_status,
                upstream_uri: ctx.upstream_uri.as_deref(),
                tries: &ctx.tries_log,
                error: e.map(|e| e.etype().as_str()),
                scheme: if tls { "https" } else { "http" },
                tls_version: ctx.tls_version,
                tls_cipher: session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .map(|s| s.cipher.as_ref()),
            };
            chain::log(&chain, &entry, &ctx.plugin);
        }
    }
    if let Some((plugin, reason)) = ctx.plugin.auth_failure {
        let route = ctx.plugin.route.as_deref().unwrap_or("");
        metrics::AUTH_FAILURES
            .with_label_values(&[route, plugin, reason])
            .inc();
    }
    match &ctx.route {
        Some(route) => {
            let m = &route.metrics;
            if route.flags.status_code {
                // One family, counted once: with `per_consumer` an identified consumer adds
                // the `consumer` label (formatted per request: consumers are unbounded);
                // everything else uses the route's precomputed handles.
                let consumer = ctx
                    .plugin
                    .consumer
                    .as_ref()
                    .filter(|_| route.flags.per_consumer)
                    .map(|c| c.username.as_deref().unwrap_or(&c.id))
                    .filter(|c| !c.is_empty());
                match consumer {
                    Some(consumer) => metrics::HTTP_REQUESTS_BY_CONSUMER
                        .with_label_values(&[
                            &*route.route.service.name,
                            &*route.route.name,
                            &status.to_string(),
                            consumer,
                        ])
                        .inc(),
                    None => m.request(status),
                }
            }
            if route.flags.latency {
                m.duration().observe(elapsed);
                if let Some(t) = ctx.upstream_ttfb {
                    m.upstream_duration().observe(t);
                }
            }
            if route.flags.bandwidth {
                m.ingress().inc_by(session.body_bytes_read() as u64);
                m.egress().inc_by(session.body_bytes_sent() as u64);
            }
        }
        None => {
            metrics::HTTP_REQUESTS
                .with_label_values(&["", "", &status.to_string()])
                .inc();
        }
    }
    if crate::logging::access::enabled() {
        let req = session.req_header();
        crate::logging::access::write(&crate::logging::access::Line {
            request_id: &ctx.plugin.request_id,
            client: ctx.plugin.client_ip,
            method: req.method.as_str(),
            path: req.uri.path(),
            host: ctx.original_host.as_deref().unwrap_or(""),
            route: ctx.route.as_ref().map(|r| &*r.route.name).unwrap_or("-"),
            service: ctx
                .route
                .as_ref()
                .map(|r| &*r.route.service.name)
                .unwrap_or("-"),
            consumer: ctx
                .plugin
                .consumer
                .as_ref()
                .map(|c| c.id.as_str())
                .unwrap_or("-"),
            status,
            latency_ms: (elapsed * 1000.0) as u64,
            upstream_latency_ms: ctx.upstream_ttfb.map(|t| (t * 1000.0) as u64).unwrap_or(0),
            upstream: ctx.upstream_addr,
            tls: ctx.tls_version.unwrap_or("-"),
            tls_group: ctx.tls_group.unwrap_or("-"),
            error: e.map(|e| e.etype().as_str()).unwrap_or(""),
        });
    }
}
