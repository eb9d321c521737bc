//! Kong 3.x's `opentelemetry` schema (kong/plugins/opentelemetry/schema.lua and the propagation
//! record of kong/observability/tracing/propagation/schema.lua).

use crate::propagation::Format;
use portcullis_loggers::queue::QueueConfig;
use portcullis_plugin_api::ConfigError;
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PropagationConfig {
    #[serde(default)]
    pub extract: Option<Vec<String>>,
    #[serde(default)]
    pub inject: Option<Vec<String>>,
    #[serde(default)]
    pub clear: Option<Vec<String>>,
    #[serde(default)]
    pub default_format: Option<String>,
}

/// What to inject: the format the context was extracted from (`preserve`), or a fixed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    Preserve,
    Format(Format),
}

/// The propagation settings once Kong's fallbacks (`header_type`) are applied.
#[derive(Debug, Clone)]
pub struct Propagation {
    pub extract: Vec<Format>,
    pub inject: Vec<Inject>,
    pub clear: Vec<String>,
    pub default_format: Format,
}

/// Kong's `header_type` values.
const HEADER_TYPES: &[&str] = &[
    "preserve",
    "ignore",
    "b3",
    "b3-single",
    "w3c",
    "jaeger",
    "ot",
    "aws",
    "gcp",
    "datadog",
    "instana",
];

/// What `header_type` (and no `propagation` field but `default_format`) extracts: every format,
/// B3 first, as Kong's `get_plugin_params`.
const ALL_EXTRACTORS: &[Format] = &[
    Format::B3,
    Format::W3c,
    Format::Jaeger,
    Format::Ot,
    Format::Datadog,
    Format::Aws,
    Format::Gcp,
    Format::Instana,
];

/// Milliseconds as Kong's `typedefs.timeout` allows them.
pub fn timeout(
    v: Option<i64>,
    default: u64,
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> std::time::Duration {
    match v {
        None => std::time::Duration::from_millis(default),
        Some(ms) if (0..=2_147_483_646).contains(&ms) => {
            std::time::Duration::from_millis(ms as u64)
        }
        Some(_) => {
            errors.push(ConfigError::new(
                field,
                "value should be between 0 and 2147483646",
            ));
            std::time::Duration::from_millis(default)
        }
    }
}

impl Config {
    /// Kong's `get_plugin_params`: an explicit `propagation` (any field but `default_format`)
    /// wins; otherwise `header_type` (default `preserve`) decides.
    pub fn propagation(&self, errors: &mut Vec<ConfigError>) -> Propagation {
        let p = self.propagation.as_ref();
        let default_format = match p.and_then(|p| p.default_format.as_deref()) {
            None => Format::W3c,
            Some(name) => match Format::parse(name) {
                Some(f) => f,
                None => {
                    errors.push(ConfigError::new(
                        "propagation.default_format",
                        format!("expected one of: {}", Format::INJECTOR_NAMES.join(", ")),
                    ));
                    Format::W3c
                }
            },
        };
        let mut extract = Vec::new();
        for (i, name) in p
            .and_then(|p| p.extract.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            // b3-single shares b3's extractor, so it is not a value of `extract`.
            match Format::parse(name).filter(|f| *f != Format::B3Single) {
                Some(f) => extract.push(f),
                None => errors.push(ConfigError::new(
                    format!("propagation.extract[{i}]"),
                    format!("expected one of: {}", Format::EXTRACTOR_NAMES.join(", ")),
                )),
            }
        }
        let mut inject = Vec::new();
        for (i, name) in p
            .and_then(|p| p.inject.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if name == "preserve" {
                inject.push(Inject::Preserve);
                continue;
            }
            match Format::parse(name) {
                Some(f) => inject.push(Inject::Format(f)),
                None => errors.push(ConfigError::new(
                    format!("propagation.inject[{i}]"),
                    format!(
                        "expected one of: preserve, {}",
                        Format::INJECTOR_NAMES.join(", ")
                    ),
                )),
            }
        }
        let mut clear = Vec::new();
        for (i, name) in p
            .and_then(|p| p.clear.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if portcullis_plugin_api::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                errors.push(ConfigError::new(
                    format!("propagation.clear[{i}]"),
                    format!("bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"),
                ));
            } else {
                clear.push(name.to_ascii_lowercase());
            }
        }
        let explicit =
            p.is_some_and(|p| p.extract.is_some() || p.inject.is_some() || p.clear.is_some());
        if explicit {
            return Propagation {
                extract,
                inject,
                clear,
                default_format,
            };
        }
        let header_type = self.header_type.as_deref().unwrap_or("preserve");
        if !HEADER_TYPES.contains(&header_type) {
            errors.push(ConfigError::new(
                "header_type",
                format!("expected one of: {}", HEADER_TYPES.join(", ")),
            ));
        }
        let (extract, inject) = match header_type {
            "preserve" => (ALL_EXTRACTORS.to_vec(), vec![Inject::Preserve]),
            "ignore" => (Vec::new(), vec![Inject::Format(default_format)]),
            other => {
                let f = Format::parse(other).unwrap_or(Format::W3c);
                (
                    ALL_EXTRACTORS.to_vec(),
                    vec![Inject::Preserve, Inject::Format(f)],
                )
            }
        };
        Propagation {
            extract,
            inject,
            clear,
            default_format,
        }
    }

    /// Kong's `queue`: absent means `max_batch_size: 200`; the deprecated batch fields override
    /// it when set to anything but their old defaults (Kong's `Queue.get_plugin_params`).
    pub fn queue(&self, errors: &mut Vec<ConfigError>) -> QueueConfig {
        let mut q = self.queue.clone().unwrap_or_else(|| QueueConfig {
            max_batch_size: 200,
            ..QueueConfig::default()
        });
        if let Some(n) = self.batch_span_count.filter(|n| *n != 200) {
            tracing::warn!(
                "opentelemetry: config.batch_span_count is deprecated, please use config.queue.max_batch_size instead"
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
            tracing::warn!(
                "opentelemetry: config.batch_flush_delay is deprecated, please use config.queue.max_coalescing_delay instead"
            );
            q.max_coalescing_delay = d as f64;
        }
        q.check(errors);
        q
    }
}
