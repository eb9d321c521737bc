//! Kong 3.x's `opentelemetry` schema (kong/plugins/opentelemetry/schema.lua and the propagation
//! record of kong/observability/tracing/propagation/schema.lua).

use portcullis_loggers::queue::QueueConfig;
use portcullis_plugin_api::{BuildContext, ConfigError};
use portcullis_tracing_common::{Format, Propagation, PropagationConfig, PropagationFields};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Every field may be `null` (Kong's exports write unset fields as null).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    #[serde(default)]
    pub logs_endpoint: Option<String>,
    /// Kong 3.0's name of `traces_endpoint` (a deprecated shorthand).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub resource_attributes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    #[serde(default)]
    pub batch_span_count: Option<i64>,
    #[serde(default)]
    pub batch_flush_delay: Option<i64>,
    #[serde(default)]
    pub connect_timeout: Option<i64>,
    #[serde(default)]
    pub send_timeout: Option<i64>,
    #[serde(default)]
    pub read_timeout: Option<i64>,
    #[serde(default)]
    pub http_response_header_for_traceid: Option<String>,
    #[serde(default)]
    pub header_type: Option<String>,
    #[serde(default)]
    pub sampling_rate: Option<f64>,
    #[serde(default)]
    pub propagation: Option<PropagationConfig>,
}

impl Config {
    /// Kong's `get_plugin_params` with this schema's defaults (`default_format: w3c`).
    pub fn propagation(&self, errors: &mut Vec<ConfigError>) -> Propagation {
        Propagation::from_fields(
            &PropagationFields {
                propagation: self.propagation.as_ref(),
                header_type: self.header_type.as_deref(),
                default_header_type: None,
                default_format: Format::W3c,
            },
            errors,
        )
    }

    /// Kong's `queue`: absent means `max_batch_size: 200`; the deprecated batch fields override
    /// it when set to anything but their old defaults (Kong's `Queue.get_plugin_params`).
    pub fn queue(&self, errors: &mut Vec<ConfigError>, ctx: &BuildContext) -> QueueConfig {
        let mut q = self.queue.clone().unwrap_or_else(|| QueueConfig {
            max_batch_size: 200,
            ..QueueConfig::default()
        });
        if let Some(n) = self.batch_span_count.filter(|n| *n != 200) {
            ctx.warn(
                "batch_span_count",
                "batch_span_count is deprecated, please use queue.max_batch_size instead",
            );
            match u64::try_from(n) {
                Ok(n) => q.max_batch_size = n,
                Err(_) => errors.push(ConfigError::new(
                    "batch_span_count",
                    "value should be between 1 and 1000000",
                )),
            }
        }
        if let Some(d) = self.batch_flush_delay.filter(|d| *d != 3) {
            ctx.warn(
                "batch_flush_delay",
                "batch_flush_delay is deprecated, please use queue.max_coalescing_delay instead",
            );
            q.max_coalescing_delay = d as f64;
        }
        q.check(errors);
        q
    }
}
