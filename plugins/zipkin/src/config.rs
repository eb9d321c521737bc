//! Kong 3.x's `zipkin` schema (kong/plugins/zipkin/schema.lua), checked as Kong checks it and
//! resolved into the settings the plugin runs with.

use portcullis_loggers::queue::QueueConfig;
use portcullis_plugin_api::{BuildContext, ConfigError};
use portcullis_tracing_common::config::{check_header_name, endpoint, timeout};
use portcullis_tracing_common::{Format, Propagation, PropagationConfig, PropagationFields};
use serde::Deserialize;
use std::time::Duration;

/// Every field may be `null` (Kong's exports write unset fields as null).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub local_service_name: Option<String>,
    #[serde(default)]
    pub http_endpoint: Option<String>,
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    #[serde(default)]
    pub default_service_name: Option<String>,
    #[serde(default)]
    pub include_credential: Option<bool>,
    #[serde(default)]
    pub traceid_byte_count: Option<i64>,
    #[serde(default)]
    pub header_type: Option<String>,
    #[serde(default)]
    pub default_header_type: Option<String>,
    #[serde(default)]
    pub tags_header: Option<String>,
    #[serde(default)]
    pub static_tags: Option<Vec<StaticTag>>,
    #[serde(default)]
    pub http_span_name: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<i64>,
    #[serde(default)]
    pub send_timeout: Option<i64>,
    #[serde(default)]
    pub read_timeout: Option<i64>,
    #[serde(default)]
    pub http_response_header_for_traceid: Option<String>,
    #[serde(default)]
    pub phase_duration_flavor: Option<String>,
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    #[serde(default)]
    pub propagation: Option<PropagationConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticTag {
    pub name: String,
    pub value: String,
}

/// Tags the plugin sets itself, which `static_tags` may not name.
const PROTECTED_TAGS: &[&str] = &[
    "error",
    "http.method",
    "http.path",
    "http.status_code",
    "kong.balancer.state",
    "kong.balancer.try",
    "kong.consumer",
    "kong.credential",
    "kong.node.id",
    "kong.route",
    "kong.service",
    "lc",
    "peer.hostname",
];

/// The configuration once checked and defaulted.
#[derive(Debug)]
pub struct Settings {
    pub local_service_name: String,
    pub http_endpoint: Option<reqwest::Url>,
    pub sample_ratio: f64,
    pub default_service_name: Option<String>,
    pub include_credential: bool,
    pub traceid_byte_count: usize,
    /// Lower case, as header lookups want it.
    pub tags_header: String,
    pub static_tags: Vec<(String, String)>,
    /// `http_span_name: method_path`.
    pub span_name_with_path: bool,
    pub connect_timeout: Duration,
    /// Send and read timeouts together: the whole exchange after connecting.
    pub exchange_timeout: Duration,
    pub http_response_header_for_traceid: Option<String>,
    /// `phase_duration_flavor: annotations` (else `tags`).
    pub phase_annotations: bool,
    pub queue: QueueConfig,
    pub propagation: Propagation,
}

/// Kong checks every string field for `len_min = 1`.
fn non_empty(v: Option<&str>, field: &str, errors: &mut Vec<ConfigError>) {
    if v == Some("") {
        errors.push(ConfigError::new(field, "length must be at least 1"));
    }
}

fn one_of<'a>(
    v: Option<&'a str>,
    default: &'a str,
    allowed: &[&str],
    field: &str,
    errors: &mut Vec<ConfigError>,
) -> &'a str {
    let v = v.unwrap_or(default);
    if !allowed.contains(&v) {
        errors.push(ConfigError::new(
            field,
            format!("expected one of: {}", allowed.join(", ")),
        ));
    }
    v
}

impl Config {
    pub fn resolve(self, errors: &mut Vec<ConfigError>, ctx: &BuildContext) -> Settings {
        non_empty(
            self.local_service_name.as_deref(),
            "local_service_name",
            errors,
        );
        non_empty(
            self.default_service_name.as_deref(),
            "default_service_name",
            errors,
        );
        non_empty(self.tags_header.as_deref(), "tags_header", errors);
        non_empty(
            self.http_response_header_for_traceid.as_deref(),
            "http_response_header_for_traceid",
            errors,
        );
        check_header_name(
            self.http_response_header_for_traceid
                .as_deref()
                .filter(|h| !h.is_empty()),
            "http_response_header_for_traceid",
            errors,
        );
        let http_endpoint = self
            .http_endpoint
            .as_deref()
            .and_then(|u| endpoint(u, "http_endpoint", errors));
        let sample_ratio = match self.sample_ratio {
            None => 0.001,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(_) => {
                errors.push(ConfigError::new(
                    "sample_ratio",
                    "value should be between 0 and 1",
                ));
                0.001
            }
        };
        let traceid_byte_count = match self.traceid_byte_count {
            None | Some(16) => 16,
            Some(8) => 8,
            Some(_) => {
                errors.push(ConfigError::new(
                    "traceid_byte_count",
                    "expected one of: 8, 16",
                ));
                16
            }
        };
        let span_name = one_of(
            self.http_span_name.as_deref(),
            "method",
            &["method", "method_path"],
            "http_span_name",
            errors,
        );
        let flavor = one_of(
            self.phase_duration_flavor.as_deref(),
            "annotations",
            &["annotations", "tags"],
            "phase_duration_flavor",
            errors,
        );
        let mut static_tags: Vec<(String, String)> = Vec::new();
        for (i, t) in self.static_tags.into_iter().flatten().enumerate() {
            non_empty(Some(&t.name), &format!("static_tags[{i}].name"), errors);
            non_empty(Some(&t.value), &format!("static_tags[{i}].value"), errors);
            if PROTECTED_TAGS.contains(&t.name.as_str()) {
                errors.push(ConfigError::new(
                    format!("static_tags[{i}].name"),
                    format!("must not be one of: {}", PROTECTED_TAGS.join(", ")),
                ));
            }
            if static_tags.iter().any(|(n, _)| *n == t.name) {
                errors.push(ConfigError::new(
                    "static_tags",
                    format!("repeated tags are not allowed: {}", t.name),
                ));
            }
            static_tags.push((t.name, t.value));
        }
        if self.header_type.as_deref().is_some_and(|h| h != "preserve") {
            ctx.warn(
                "header_type",
                "header_type is deprecated, please use the propagation options instead",
            );
        }
        if self
            .default_header_type
            .as_deref()
            .is_some_and(|h| h != "b3")
        {
            ctx.warn(
                "default_header_type",
                "default_header_type is deprecated, please use propagation.default_format instead",
            );
        }
        let propagation = Propagation::from_fields(
            &PropagationFields {
                propagation: self.propagation.as_ref(),
                header_type: self.header_type.as_deref(),
                default_header_type: Some(self.default_header_type.as_deref().unwrap_or("b3")),
                default_format: Format::B3,
            },
            errors,
        );
        propagation.warn_unsupported(ctx);
        // Kong's queue record defaults: one span per request to the collector.
        let queue = self.queue.unwrap_or_default();
        queue.check(errors);
        let connect_timeout = timeout(self.connect_timeout, 2000, "connect_timeout", errors);
        let send = timeout(self.send_timeout, 5000, "send_timeout", errors);
        let read = timeout(self.read_timeout, 5000, "read_timeout", errors);
        Settings {
            local_service_name: self.local_service_name.unwrap_or_else(|| "kong".into()),
            http_endpoint,
            sample_ratio,
            default_service_name: self.default_service_name,
            include_credential: self.include_credential.unwrap_or(true),
            traceid_byte_count,
            tags_header: self
                .tags_header
                .unwrap_or_else(|| "Zipkin-Tags".into())
                .to_ascii_lowercase(),
            static_tags,
            span_name_with_path: span_name == "method_path",
            connect_timeout,
            exchange_timeout: send + read,
            http_response_header_for_traceid: self.http_response_header_for_traceid,
            phase_annotations: flavor == "annotations",
            queue,
            propagation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_plugin_api::parse_config;
    use portcullis_tracing_common::Inject;
    use serde_json::json;

    fn resolve(v: serde_json::Value) -> (Settings, Vec<(String, String)>) {
        let c: Config = parse_config(&v).unwrap();
        let mut errors = Vec::new();
        let s = c.resolve(&mut errors, &portcullis_plugin_api::BuildContext::default());
        (s, errors.into_iter().map(|e| (e.path, e.message)).collect())
    }

    #[test]
    fn defaults_are_kongs() {
        let (s, errors) = resolve(json!({}));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.local_service_name, "kong");
        assert!(s.http_endpoint.is_none());
        assert_eq!(s.sample_ratio, 0.001);
        assert!(s.include_credential);
        assert_eq!(s.traceid_byte_count, 16);
        assert_eq!(s.tags_header, "zipkin-tags");
        assert!(!s.span_name_with_path);
        assert_eq!(s.connect_timeout, Duration::from_millis(2000));
        assert_eq!(s.exchange_timeout, Duration::from_millis(10_000));
        assert!(s.phase_annotations);
        assert_eq!(s.queue.max_batch_size, 1);
        // header_type preserve, default_header_type b3: every format read, the one found
        // answered, B3 when none was.
        assert_eq!(s.propagation.extract[0], Format::B3);
        assert_eq!(s.propagation.inject, vec![Inject::Preserve]);
        assert_eq!(s.propagation.default_format, Format::B3);
    }

    #[test]
    fn kongs_null_export_is_the_defaults() {
        let (s, errors) = resolve(json!({
            "local_service_name": null, "http_endpoint": null, "sample_ratio": null,
            "default_service_name": null, "include_credential": null,
            "traceid_byte_count": null, "header_type": null, "default_header_type": null,
            "tags_header": null, "static_tags": null, "http_span_name": null,
            "connect_timeout": null, "send_timeout": null, "read_timeout": null,
            "http_response_header_for_traceid": null, "phase_duration_flavor": null,
            "queue": null, "propagation": null,
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.sample_ratio, 0.001);
        assert_eq!(s.local_service_name, "kong");
    }

    #[test]
    fn set_fields_are_read() {
        let (s, errors) = resolve(json!({
            "local_service_name": "edge",
            "http_endpoint": "https://zipkin.example/api/v2/spans",
            "sample_ratio": 1,
            "default_service_name": "svc",
            "include_credential": false,
            "traceid_byte_count": 8,
            "default_header_type": "w3c",
            "tags_header": "X-Tags",
            "static_tags": [{"name": "env", "value": "test"}],
            "http_span_name": "method_path",
            "connect_timeout": 10, "send_timeout": 20, "read_timeout": 30,
            "http_response_header_for_traceid": "X-Trace",
            "phase_duration_flavor": "tags",
            "queue": {"max_batch_size": 10},
        }));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.local_service_name, "edge");
        assert_eq!(
            s.http_endpoint.unwrap().as_str(),
            "https://zipkin.example/api/v2/spans"
        );
        assert_eq!(s.sample_ratio, 1.0);
        assert_eq!(s.default_service_name.as_deref(), Some("svc"));
        assert!(!s.include_credential);
        assert_eq!(s.traceid_byte_count, 8);
        assert_eq!(s.tags_header, "x-tags");
        assert_eq!(s.static_tags, vec![("env".into(), "test".into())]);
        assert!(s.span_name_with_path);
        assert_eq!(s.connect_timeout, Duration::from_millis(10));
        assert_eq!(s.exchange_timeout, Duration::from_millis(50));
        assert_eq!(
            s.http_response_header_for_traceid.as_deref(),
            Some("X-Trace")
        );
        assert!(!s.phase_annotations);
        assert_eq!(s.queue.max_batch_size, 10);
        assert_eq!(s.propagation.default_format, Format::W3c);
    }

    #[test]
    fn an_explicit_propagation_wins_over_the_deprecated_fields() {
        let (s, errors) = resolve(json!({
            "header_type": "jaeger",
            "default_header_type": "ot",
            "propagation": {"extract": ["w3c"], "inject": ["preserve", "b3-single"], "clear": ["X-Old"]},
        }));
        assert!(errors.is_empty(), "{errors:?}");
        let p = s.propagation;
        assert_eq!(p.extract, vec![Format::W3c]);
        assert_eq!(
            p.inject,
            vec![Inject::Preserve, Inject::Format(Format::B3Single)]
        );
        assert_eq!(p.clear, vec!["x-old".to_string()]);
        assert_eq!(p.default_format, Format::B3, "the schema's default_format");
        let (s, _) = resolve(json!({"header_type": "ignore", "default_header_type": "jaeger"}));
        assert!(s.propagation.extract.is_empty());
        assert_eq!(s.propagation.inject, vec![Inject::Format(Format::Jaeger)]);
    }

    #[test]
    fn bad_values_are_reported_at_their_fields() {
        let (_, errors) = resolve(json!({
            "http_endpoint": "zipkin:9411",
            "sample_ratio": 1.5,
            "traceid_byte_count": 12,
            "header_type": "zipkin",
            "default_header_type": "preserve",
            "http_span_name": "path",
            "phase_duration_flavor": "spans",
            "local_service_name": "",
            "connect_timeout": -1,
            "http_response_header_for_traceid": "bad header",
            "static_tags": [
                {"name": "lc", "value": "x"},
                {"name": "env", "value": "a"},
                {"name": "env", "value": "b"},
            ],
            "queue": {"max_batch_size": 0},
            "propagation": {"inject": ["zipkin"]},
        }));
        let at = |path: &str| {
            errors
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, m)| m.as_str())
                .unwrap_or_else(|| panic!("no error at {path}: {errors:?}"))
        };
        assert!(at("http_endpoint").starts_with("missing host in url"));
        assert_eq!(at("sample_ratio"), "value should be between 0 and 1");
        assert_eq!(at("traceid_byte_count"), "expected one of: 8, 16");
        assert!(at("header_type").starts_with("expected one of: preserve, ignore, b3"));
        assert!(at("default_header_type").starts_with("expected one of: w3c, b3"));
        assert_eq!(at("http_span_name"), "expected one of: method, method_path");
        assert_eq!(
            at("phase_duration_flavor"),
            "expected one of: annotations, tags"
        );
        assert_eq!(at("local_service_name"), "length must be at least 1");
        assert_eq!(
            at("connect_timeout"),
            "value should be between 0 and 2147483646"
        );
        assert_eq!(
            at("http_response_header_for_traceid"),
            "invalid header name"
        );
        assert!(at("static_tags[0].name").starts_with("must not be one of: error, http.method"));
        assert_eq!(at("static_tags"), "repeated tags are not allowed: env");
        assert!(at("queue.max_batch_size").contains("between 1 and 1000000"));
        assert!(at("propagation.inject[0]").starts_with("expected one of: preserve, w3c"));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused_with_their_paths() {
        let e = parse_config::<Config>(&json!({"sample_rate": 1})).unwrap_err();
        assert!(e.message.contains("sample_rate"), "{e:?}");
        let e = parse_config::<Config>(&json!({"static_tags": [{"name": "a"}]})).unwrap_err();
        assert_eq!(e.path, "static_tags[0]");
        assert!(e.message.contains("value"), "{e:?}");
        let e = parse_config::<Config>(&json!({"include_credential": "yes"})).unwrap_err();
        assert_eq!(e.path, "include_credential");
    }
}
