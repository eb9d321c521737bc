//! The plugin chain of a request: runs every phase of the plugins that apply, in priority
//! order, calls a plugin only in the phases it declared, and turns a plugin panic into a logged
//! 500 instead of a dropped connection.

use bytes::Bytes;
use futures::FutureExt;
use portcullis_plugin_api::{
    Flow, HeaderEdit, LogEntry, Phases, Plugin, PluginResponse, RequestCtx, RequestView,
    ResponseHead,
};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Plugins sorted by priority (higher first), with the union of their phases precomputed so a
/// phase nobody declared costs one bit test per request.
#[derive(Default)]
pub struct Chain {
    pub plugins: Vec<Arc<dyn Plugin>>,
    pub phases: Phases,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Chain {
        let phases = plugins
            .iter()
            .fold(Phases::NONE, |acc, p| acc.union(p.phases()));
        Chain { plugins, phases }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn has(&self, phase: Phases) -> bool {
        self.phases.contains(phase)
    }

    fn each(&self, phase: Phases) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        let any = self.phases.contains(phase);
        self.plugins
            .iter()
            .filter(move |p| any && p.phases().contains(phase))
    }
}

/// The plugins that apply to one route.
#[derive(Default)]
pub struct RoutePlugins {
    /// The chain when no consumer is known (global, service and route instances).
    pub base: Arc<Chain>,
    /// The chain once a consumer is identified, for consumers that have scoped instances.
    pub by_consumer: HashMap<String, Arc<Chain>>,
    /// Set when some plugin of this route needs the TLS listener to request a client certificate.
    pub client_cert: Option<portcullis_plugin_api::ClientCertRequest>,
}

impl RoutePlugins {
    pub fn is_empty(&self) -> bool {
        self.base.is_empty() && self.by_consumer.is_empty()
    }

    /// Every phase any chain of this route declares.
    pub fn phases(&self) -> Phases {
        self.by_consumer
            .values()
            .fold(self.base.phases, |acc, c| acc.union(c.phases))
    }
}

fn panicked(plugin: &str, phase: &str, request_id: &str) {
    tracing::error!(
        plugin,
        phase,
        request_id,
        "plugin panicked; the request is answered with 500"
    );
    crate::metrics::PLUGIN_PANICS
        .with_label_values(&[plugin, phase])
        .inc();
}

fn internal_error() -> PluginResponse {
    PluginResponse::message(500, "An unexpected error occurred")
}

/// Rewrite phase: global instances, before routing.
pub async fn rewrite(
    chain: &Chain,
    req: &RequestView<'_>,
    ctx: &mut RequestCtx,
) -> Option<PluginResponse> {
    for p in chain.each(Phases::REWRITE) {
        match AssertUnwindSafe(p.rewrite(req, ctx)).catch_unwind().await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Respond(r)) => return Some(r),
            Err(_) => {
                panicked(p.name(), "rewrite", &ctx.request_id);
                return Some(internal_error());
            }
        }
    }
    None
}

/// Access phase. `chain` starts as the route's base chain; when a plugin identifies a consumer
/// that has consumer-scoped instances, the remaining plugins come from that consumer's chain (as
/// Kong re-evaluates the plugins iterator) and `chain` becomes it, so later phases run the
/// consumer's instances.
pub async fn access(
    route: &RoutePlugins,
    chain: &mut Arc<Chain>,
    req: &RequestView<'_>,
    ctx: &mut RequestCtx,
) -> Option<PluginResponse> {
    let mut current = chain.clone();
    let mut ran: Vec<&'static str> = Vec::new();
    let mut i = 0;
    while i < current.plugins.len() {
        let p = current.plugins[i].clone();
        i += 1;
        if !p.phases().contains(Phases::ACCESS) || ran.contains(&p.name()) {
            continue;
        }
        let had_consumer = ctx.consumer.is_some();
        ran.push(p.name());
        let flow = match AssertUnwindSafe(p.access(req, ctx)).catch_unwind().await {
            Ok(f) => f,
            Err(_) => {
                panicked(p.name(), "access", &ctx.request_id);
                *chain = current;
                return Some(internal_error());
            }
        };
        if let Flow::Respond(r) = flow {
            *chain = current;
            return Some(r);
        }
        if had_consumer {
            continue;
        }
        let Some(scoped) = ctx
            .consumer
            .as_ref()
            .and_then(|c| route.by_consumer.get(&c.id))
        else {
            continue;
        };
        // Continue after the plugin that identified the consumer, in the consumer's chain.
        let prio = p.priority();
        current = scoped.clone();
        i = current
            .plugins
            .iter()
            .position(|q| q.priority() < prio || (q.priority() == prio && q.name() > p.name()))
            .unwrap_or(current.plugins.len());
    }
    *chain = current;
    None
}

/// Request body phase for one chunk.
pub fn request_body(
    chain: &Chain,
    chunk: &mut Option<Bytes>,
    end: bool,
    ctx: &mut RequestCtx,
) -> Result<(), PluginResponse> {
    for p in chain.each(Phases::REQUEST_BODY) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| p.request_body(chunk, end, ctx))) {
            Ok(Ok(())) => {}
            Ok(Err(r)) => return Err(r),
            Err(_) => {
                panicked(p.name(), "request_body", &ctx.request_id);
                return Err(internal_error());
            }
        }
    }
    Ok(())
}

/// Upstream request phase.
pub fn upstream_request(chain: &Chain, headers: &mut dyn HeaderEdit, ctx: &mut RequestCtx) {
    for p in chain.each(Phases::UPSTREAM_REQUEST) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| p.upstream_request(headers, ctx))).is_err()
        {
            panicked(p.name(), "upstream_request", &ctx.request_id);
        }
    }
}

/// Response header phase (upstream responses and the gateway's own answers alike).
pub fn response_headers(chain: &Chain, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
    for p in chain.each(Phases::RESPONSE_HEADERS) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| p.response_headers(resp, ctx))).is_err() {
            panicked(p.name(), "response_headers", &ctx.request_id);
        }
    }
}

/// Response body phase for one chunk.
pub fn response_body(chain: &Chain, chunk: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) {
    for p in chain.each(Phases::RESPONSE_BODY) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| p.response_body(chunk, end, ctx))).is_err()
        {
            panicked(p.name(), "response_body", &ctx.request_id);
        }
    }
}

/// Log phase.
pub fn log(chain: &Chain, entry: &LogEntry<'_>, ctx: &RequestCtx) {
    for p in chain.each(Phases::LOG) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| p.log(entry, ctx))).is_err() {
            panicked(p.name(), "log", &ctx.request_id);
        }
    }
}

/// Calls `flush` on every instance of a retired configuration, on the background runtime.
pub fn flush_all(plugins: Vec<Arc<dyn Plugin>>) -> tokio::task::JoinHandle<()> {
    portcullis_plugin_api::background::spawn(async move {
        for p in plugins {
            let name = p.name();
            if AssertUnwindSafe(p.flush()).catch_unwind().await.is_err() {
                tracing::error!(plugin = name, "plugin panicked while flushing");
            }
        }
    })
}
