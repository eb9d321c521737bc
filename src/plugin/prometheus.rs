//! Kong's `prometheus` plugin, accepted so Kong configs load unchanged. Metrics are always served
//! on the status listener; this plugin's flags switch metric families on a route/service/global
//! scope. Unlike Kong (whose flags default to off), families default to on here: a user who adds
//! the plugin expects more metrics, not fewer. `per_consumer` stays off by default (cardinality).

use portcullis_plugin_api::{parse_config, BuildContext, ConfigError, Plugin, PluginFactory};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    #[serde(default)]
    pub per_consumer: bool,
    #[serde(default = "yes")]
    pub status_code_metrics: bool,
    #[serde(default = "yes")]
    pub latency_metrics: bool,
    #[serde(default = "yes")]
    pub bandwidth_metrics: bool,
    #[serde(default = "yes")]
    pub upstream_health_metrics: bool,
    /// Kong Enterprise flag; accepted, no effect.
    #[serde(default)]
    pub ai_metrics: bool,
}

fn yes() -> bool {
    true
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            per_consumer: false,
            status_code_metrics: true,
            latency_metrics: true,
            bandwidth_metrics: true,
            upstream_health_metrics: true,
            ai_metrics: false,
        }
    }
}

pub struct Prometheus {
    pub config: PrometheusConfig,
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn priority(&self) -> i32 {
        13
    }
    fn gateway_settings(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        Some(&self.config)
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let config: PrometheusConfig = parse_config(config).map_err(|e| vec![e])?;
        Ok(Arc::new(Prometheus { config }))
    }
}
