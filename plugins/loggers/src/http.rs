//! http-log: records POSTed (or PUT/PATCHed) as JSON to `http_endpoint`, one object per request
//! with `queue.max_batch_size: 1`, else JSON arrays of up to that many records.

use crate::fields::Record;
use crate::queue::{QueueConfig, Shipper, Sink};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, LogEntry, Phases, Plugin, PluginFactory,
    RequestCtx,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const NAME: &str = "http-log";
/// Kong's PRIORITY for http-log.
pub const PRIORITY: i32 = 12;

fn d_method() -> String {
    "POST".into()
}
fn d_ct() -> String {
    "application/json".into()
}
fn d_timeout() -> f64 {
    10000.0
}
fn d_keepalive() -> f64 {
    60000.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    http_endpoint: String,
    #[serde(default = "d_method")]
    method: String,
    #[serde(default = "d_ct")]
    content_type: String,
    #[serde(default = "d_timeout")]
    timeout: f64,
    #[serde(default = "d_keepalive")]
    keepalive: f64,
    #[serde(default)]
    headers: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    queue: Option<QueueConfig>,
    /// Kong 2.x queue settings, superseded by `queue` in 3.x; accepted, mapped when `queue` is
    /// absent.
    #[serde(default)]
    retry_count: Option<u64>,
    #[serde(default)]
    queue_size: Option<u64>,
    #[serde(default)]
    flush_timeout: Option<f64>,
    /// Lua: accepted so Kong files load, never run (a located warning says so).
    #[serde(default)]
    custom_fields_by_lua: Option<serde::de::IgnoredAny>,
    /// Portcullis's stand-in for `custom_fields_by_lua`: record fields set from values and
    /// templates (see `fields.rs`).
    #[serde(default)]
    custom_fields: Option<serde_json::Value>,
}

struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    method: reqwest::Method,
    content_type: String,
    headers: Vec<(String, String)>,
    single: bool,
}

impl Sink for HttpSink {
    type Item = Vec<u8>;

    async fn send(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let body = match batch {
            [one] if self.single => one.clone(),
            _ => {
                // One allocation of the final size: batches run to hundreds of kilobytes.
                let mut body =
                    Vec::with_capacity(2 + batch.iter().map(|r| r.len() + 1).sum::<usize>());
                body.push(b'[');
                for (i, r) in batch.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(r);
                }
                body.push(b']');
                body
            }
        };
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .header("content-type", &self.content_type)
            .body(body);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let host = self.url.host_str().unwrap_or("");
        let port = self.url.port_or_known_default().unwrap_or(0);
        let resp = req
            .send()
            .await
            .map_err(|e| format!("failed request to {host}:{port}: {e}"))?;
        let status = resp.status();
        // Always read the body so the connection can be reused.
        let _ = resp.bytes().await;
        if status.as_u16() >= 400 {
            return Err(format!(
                "request to {host}:{port} returned status code {}",
                status.as_u16()
            ));
        }
        Ok(())
    }
}

struct HttpLog {
    shipper: Arc<Shipper<HttpSink>>,
    record: Record,
}

pub struct HttpLogFactory;

impl PluginFactory for HttpLogFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let url = match reqwest::Url::parse(&c.http_endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            _ => {
                errors.push(ConfigError::new(
                    "http_endpoint",
                    "missing host in url (an http:// or https:// URL)",
                ));
                None
            }
        };
        let method = match c.method.as_str() {
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            _ => {
                errors.push(ConfigError::new(
                    "method",
                    "expected one of: POST, PUT, PATCH",
                ));
                reqwest::Method::POST
            }
        };
        if c.content_type != "application/json"
            && c.content_type != "application/json; charset=utf-8"
        {
            errors.push(ConfigError::new(
                "content_type",
                "expected one of: application/json, application/json; charset=utf-8",
            ));
        }
        if !(c.timeout.is_finite() && c.timeout > 0.0) {
            errors.push(ConfigError::new(
                "timeout",
                "must be a positive number of milliseconds",
            ));
        }
        if !(c.keepalive.is_finite() && c.keepalive >= 0.0) {
            errors.push(ConfigError::new(
                "keepalive",
                "must be a number of milliseconds",
            ));
        }
        let mut headers = Vec::new();
        for (k, v) in c.headers.iter().flatten() {
            let lower = k.to_ascii_lowercase();
            for (bad, msg) in [
                ("host", "cannot contain 'Host' header"),
                ("content-length", "cannot contain 'Content-Length' header"),
                ("content-type", "cannot contain 'Content-Type' header"),
            ] {
                if lower == bad {
                    errors.push(ConfigError::new(format!("headers.{k}"), msg));
                }
            }
            // Kong 3.x takes a string; 2.x a list of strings.
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => {
                    errors.push(ConfigError::new(
                        format!("headers.{k}"),
                        "expected a string",
                    ));
                    continue;
                }
            };
            headers.push((k.clone(), value));
        }
        if let Some(u) = &url {
            if !u.username().is_empty()
                && headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                errors.push(ConfigError::new(
                    "",
                    "specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed",
                ));
            }
        }
        let queue = match c.queue {
            Some(q) => q,
            None => QueueConfig {
                max_batch_size: c.queue_size.unwrap_or(1),
                max_coalescing_delay: c.flush_timeout.unwrap_or(1.0),
                ..QueueConfig::default()
            },
        };
        queue.check(&mut errors);
        let _ = c.retry_count;
        crate::warn_lua(ctx, c.custom_fields_by_lua);
        let record = Record::from_config(c.custom_fields.as_ref()).unwrap_or_else(|e| {
            errors.extend(e);
            Record::default()
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout.max(1.0) as u64))
            .pool_idle_timeout(Duration::from_millis(c.keepalive.max(0.0) as u64))
            .build();
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                errors.push(ConfigError::new(
                    "",
                    format!("cannot build the HTTP client: {e}"),
                ));
                return Err(errors);
            }
        };
        let Some(mut url) = url else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        // User info becomes Basic authentication (as Kong), not part of the request line.
        if !url.username().is_empty() {
            let user = url.username().to_string();
            let pass = url.password().unwrap_or("").to_string();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            headers.push((
                "authorization".into(),
                format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
            ));
        }
        let single = queue.max_batch_size == 1;
        let sink = HttpSink {
            client,
            url,
            method,
            content_type: c.content_type,
            headers,
            single,
        };
        Ok(Arc::new(HttpLog {
            shipper: Shipper::new(NAME, queue, sink),
            record,
        }))
    }
}

fn base64(input: &[u8]) -> String {
    openssl::base64::encode_block(input)
}

#[async_trait]
impl Plugin for HttpLog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        self.record.phases()
    }

    fn log(&self, entry: &LogEntry<'_>, ctx: &RequestCtx) {
        self.shipper.queue.push(self.record.bytes(entry, ctx));
    }

    async fn flush(&self) {
        self.shipper.flush().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(super::base64(b"a"), "YQ==");
        assert_eq!(super::base64(b"ab"), "YWI=");
    }
}
