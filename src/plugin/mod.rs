//! The plugin registry (every plugin the gateway knows, by name) and the per-route plugin chains
//! compiled from scoped instances with Kong's precedence.

pub mod chain;
pub mod headers;
pub mod prometheus;

pub use chain::{Chain, RoutePlugins};

use crate::config::model::{Config, PluginInstance, Route};
use portcullis_plugin_api::{Phases, Plugin, Registry};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Every plugin the gateway can configure, built once and handed to configuration loading. To
/// add your own plugin, add one line to this list (see the README, "Write a plugin").
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::new(vec![
            Box::new(prometheus::Factory),
            Box::new(portcullis_mtls_auth::Factory),
            Box::new(portcullis_acl::Factory),
            Box::new(portcullis_request_termination::Factory),
            #[cfg(feature = "example-plugins")]
            Box::new(hello_header::Factory),
            Box::new(portcullis_loggers::FileLogFactory),
            Box::new(portcullis_loggers::HttpLogFactory),
            Box::new(portcullis_loggers::TcpLogFactory),
            Box::new(portcullis_loggers::UdpLogFactory),
            Box::new(portcullis_key_auth::Factory),
            Box::new(portcullis_basic_auth::Factory),
            Box::new(portcullis_jwt::Factory),
            Box::new(portcullis_hmac_auth::Factory),
            #[cfg(feature = "test-plugins")]
            Box::new(portcullis_testkit::Factory),
            Box::new(portcullis_rate_limiting::Factory),
            Box::new(portcullis_request_size_limiting::Factory),
            Box::new(portcullis_ip_restriction::Factory),
            Box::new(portcullis_cors::Factory),
            Box::new(portcullis_request_transformer::Factory),
            Box::new(portcullis_response_transformer::Factory),
            Box::new(portcullis_correlation_id::Factory),
            Box::new(portcullis_proxy_cache::Factory),
            Box::new(portcullis_session::Factory),
            Box::new(portcullis_opentelemetry::OpenTelemetryFactory),
            Box::new(portcullis_zipkin::ZipkinFactory),
            Box::new(portcullis_acme::Factory),
        ])
    })
}

/// Specificity of an instance for (route, service, consumer); None when it does not apply.
/// Kong's precedence, every combination distinct so two instances that apply never tie (a tie
/// would let file order pick the winner): consumer+route+service > consumer+route >
/// consumer+service > route+service > consumer > route > service > global.
fn rank(p: &PluginInstance, route: &Route, consumer: Option<&str>) -> Option<u8> {
    let s = &p.scope;
    if let Some(r) = &s.route {
        if r != &route.id {
            return None;
        }
    }
    if let Some(svc) = &s.service {
        if svc != &route.service.id {
            return None;
        }
    }
    if let Some(c) = &s.consumer {
        if Some(c.as_str()) != consumer {
            return None;
        }
    }
    Some(
        match (s.consumer.is_some(), s.route.is_some(), s.service.is_some()) {
            (true, true, true) => 8,
            (true, true, false) => 7,
            (true, false, true) => 6,
            (false, true, true) => 5,
            (true, false, false) => 4,
            (false, true, false) => 3,
            (false, false, true) => 2,
            (false, false, false) => 1,
        },
    )
}

fn chain(config: &Config, route: &Route, consumer: Option<&str>) -> Vec<Arc<dyn Plugin>> {
    let mut best: HashMap<&str, (u8, &PluginInstance)> = HashMap::new();
    for p in &config.plugins {
        if let Some(r) = rank(p, route, consumer) {
            let e = best.entry(p.name.as_str()).or_insert((r, p));
            if r > e.0 {
                *e = (r, p);
            }
        }
    }
    let mut v: Vec<Arc<dyn Plugin>> = best.into_values().map(|(_, p)| p.plugin.clone()).collect();
    // Stable order for equal priorities: by name, so behaviour never depends on hash order.
    v.sort_by(|a, b| b.priority().cmp(&a.priority()).then(a.name().cmp(b.name())));
    v
}

pub fn compile(config: &Config, route: &Route) -> RoutePlugins {
    let base = chain(config, route, None);
    let mut by_consumer = HashMap::new();
    for p in &config.plugins {
        if let Some(c) = &p.scope.consumer {
            if !by_consumer.contains_key(c) {
                by_consumer.insert(
                    c.clone(),
                    Arc::new(Chain::new(chain(config, route, Some(c)))),
                );
            }
        }
    }
    let client_cert = base.iter().find_map(|p| p.client_cert_request());
    RoutePlugins {
        base: Arc::new(Chain::new(base)),
        by_consumer,
        client_cert,
    }
}

/// Global instances that declared the rewrite phase (they run before routing).
pub fn compile_rewrite(config: &Config) -> Chain {
    let mut v: Vec<Arc<dyn Plugin>> = config
        .plugins
        .iter()
        .filter(|p| {
            p.scope.route.is_none() && p.scope.service.is_none() && p.scope.consumer.is_none()
        })
        .filter(|p| p.plugin.phases().contains(Phases::REWRITE))
        .map(|p| p.plugin.clone())
        .collect();
    v.sort_by(|a, b| b.priority().cmp(&a.priority()).then(a.name().cmp(b.name())));
    Chain::new(v)
}
