//! The configuration Kong's tracing plugins share: the `propagation` record
//! (kong/observability/tracing/propagation/schema.lua) with the deprecated `header_type` /
//! `default_header_type` fallbacks of `get_plugin_params`, the exporter's URL and timeouts.

use crate::propagation::{self, Extracted, Format, InjectCtx};
use portcullis_plugin_api::http::{HeaderMap, HeaderValue};
use portcullis_plugin_api::{BuildContext, ConfigError, RequestCtx};
use serde::Deserialize;

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

/// The plugin fields `get_plugin_params` reads, and the schema's default `default_format`.
pub struct PropagationFields<'a> {
    pub propagation: Option<&'a PropagationConfig>,
    pub header_type: Option<&'a str>,
    /// zipkin's deprecated `default_header_type` (opentelemetry has none).
    pub default_header_type: Option<&'a str>,
    pub default_format: Format,
}

fn format_of(name: &str, field: &str, errors: &mut Vec<ConfigError>) -> Option<Format> {
    let f = Format::parse(name);
    if f.is_none() {
        errors.push(ConfigError::new(
            field,
            format!("expected one of: {}", Format::INJECTOR_NAMES.join(", ")),
        ));
    }
    f
}

impl Propagation {
    /// Kong's `get_plugin_params`: an explicit `propagation` (any field but `default_format`)
    /// wins; otherwise `default_header_type` replaces `default_format` and `header_type`
    /// (default `preserve`) decides what is extracted and injected.
    pub fn from_fields(c: &PropagationFields<'_>, errors: &mut Vec<ConfigError>) -> Propagation {
        let p = c.propagation;
        let mut default_format = p
            .and_then(|p| p.default_format.as_deref())
            .and_then(|name| format_of(name, "propagation.default_format", errors))
            .unwrap_or(c.default_format);
        let header_type = c.header_type.unwrap_or("preserve");
        if !HEADER_TYPES.contains(&header_type) {
            errors.push(ConfigError::new(
                "header_type",
                format!("expected one of: {}", HEADER_TYPES.join(", ")),
            ));
        }
        let default_header_type = c
            .default_header_type
            .and_then(|name| format_of(name, "default_header_type", errors));
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
        if let Some(f) = default_header_type {
            default_format = f;
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

    /// Warns once per instance about configured formats whose headers are neither read nor
    /// written here.
    pub fn warn_unsupported(&self, ctx: &BuildContext) {
        let injected = self.inject.iter().filter_map(|i| match i {
            Inject::Format(f) => Some(f),
            Inject::Preserve => None,
        });
        for f in self
            .extract
            .iter()
            .chain(injected)
            .filter(|f| !f.supported())
        {
            ctx.warn(
                "propagation",
                format!(
                    "the {} propagation format is not implemented: its headers are neither read nor written",
                    f.name()
                ),
            );
        }
    }

    /// The context of the first `extract` format found in `headers`, and that format.
    pub fn extract(&self, headers: &HeaderMap) -> (Option<Format>, Extracted) {
        match propagation::extract(&self.extract, headers) {
            Some((f, e)) => (Some(f), e),
            None => (None, Extracted::default()),
        }
    }

    /// Kong's `propagate` after extraction: the `clear` headers removed from the upstream
    /// request, then `ctx` injected in every `inject` format (`preserve`: the one extracted
    /// `from`, else `default_format`).
    pub fn propagate(
        &self,
        from: Option<Format>,
        extracted: &Extracted,
        inject: &InjectCtx,
        ctx: &mut RequestCtx,
    ) {
        for h in &self.clear {
            ctx.remove_upstream_header(h);
        }
        for i in &self.inject {
            let format = match i {
                Inject::Format(f) => *f,
                Inject::Preserve => match from.unwrap_or(self.default_format) {
                    Format::B3 if extracted.single_header => Format::B3Single,
                    f => f,
                },
            };
            propagation::inject_each(format, inject, |name, value| {
                if let Ok(value) = HeaderValue::try_from(value) {
                    ctx.set_upstream_header_value(name, value);
                }
            });
        }
    }
}

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

/// The exporters' HTTP client: Kong's `connect_timeout` for the connection, `send_timeout` +
/// `read_timeout` for the whole exchange (reqwest has no separate send and read deadlines).
pub fn exporter_client(
    connect: std::time::Duration,
    exchange: std::time::Duration,
) -> Result<reqwest::Client, Vec<ConfigError>> {
    let floor = std::time::Duration::from_millis(1);
    reqwest::Client::builder()
        .connect_timeout(connect.max(floor))
        .timeout(exchange.max(floor))
        .build()
        .map_err(|e| {
            vec![ConfigError::new(
                "",
                format!("cannot build the HTTP client: {e}"),
            )]
        })
}

/// An exporter's URL (Kong's `typedefs.url`, limited to what the client speaks).
pub fn endpoint(url: &str, field: &str, errors: &mut Vec<ConfigError>) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
        _ => {
            errors.push(ConfigError::new(
                field,
                "missing host in url (an http:// or https:// URL)",
            ));
            None
        }
    }
}

/// `http_response_header_for_traceid` must be a header name.
pub fn check_header_name(name: Option<&str>, field: &str, errors: &mut Vec<ConfigError>) {
    if let Some(h) = name {
        if portcullis_plugin_api::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            errors.push(ConfigError::new(field, "invalid header name"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(
        p: Option<&'a PropagationConfig>,
        header_type: Option<&'a str>,
        default_header_type: Option<&'a str>,
    ) -> PropagationFields<'a> {
        PropagationFields {
            propagation: p,
            header_type,
            default_header_type,
            default_format: Format::B3,
        }
    }

    #[test]
    fn header_type_applies_only_without_explicit_propagation() {
        let p = Propagation::from_fields(&fields(None, None, None), &mut Vec::new());
        assert_eq!(p.extract[0], Format::B3);
        assert_eq!(p.inject, vec![Inject::Preserve]);
        assert_eq!(p.default_format, Format::B3);
        let p = Propagation::from_fields(&fields(None, Some("jaeger"), None), &mut Vec::new());
        assert_eq!(
            p.inject,
            vec![Inject::Preserve, Inject::Format(Format::Jaeger)]
        );
        let p =
            Propagation::from_fields(&fields(None, Some("ignore"), Some("w3c")), &mut Vec::new());
        assert!(p.extract.is_empty());
        assert_eq!(p.inject, vec![Inject::Format(Format::W3c)]);
        let explicit = PropagationConfig {
            extract: Some(vec!["w3c".into()]),
            inject: Some(vec!["b3-single".into()]),
            clear: None,
            default_format: Some("ot".into()),
        };
        let p = Propagation::from_fields(
            &fields(Some(&explicit), Some("jaeger"), Some("w3c")),
            &mut Vec::new(),
        );
        assert_eq!(p.extract, vec![Format::W3c]);
        assert_eq!(p.inject, vec![Inject::Format(Format::B3Single)]);
        assert_eq!(
            p.default_format,
            Format::Ot,
            "default_header_type is ignored"
        );
    }

    #[test]
    fn bad_values_are_reported_at_their_paths() {
        let bad = PropagationConfig {
            extract: Some(vec!["b3-single".into(), "w3c".into()]),
            inject: Some(vec!["w3c".into(), "x".into()]),
            clear: Some(vec!["bad header".into()]),
            default_format: Some("nope".into()),
        };
        let mut errors = Vec::new();
        Propagation::from_fields(&fields(Some(&bad), Some("zipkin"), Some("x")), &mut errors);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "propagation.default_format",
                "header_type",
                "default_header_type",
                "propagation.extract[0]",
                "propagation.inject[1]",
                "propagation.clear[0]"
            ]
        );
    }
}
