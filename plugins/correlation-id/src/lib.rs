//! correlation-id: gives every request an id in a header (Kong's correlation-id): the client's
//! when it sent one, else a generated one, sent upstream and optionally echoed to the client.
//!
//! ```yaml
//! plugins:
//!   - name: correlation-id
//!     config: {header_name: X-Correlation-ID, generator: uuid, echo_downstream: true}
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, Phases, Plugin, PluginFactory,
    RequestCtx, RequestView, ResponseHead,
};
use serde::Deserialize;
use serde_json::Value;

pub const NAME: &str = "correlation-id";
/// Kong's PRIORITY: first of all, so every other plugin (and the upstream) sees the id.
pub const PRIORITY: i32 = 100001;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header_name: Option<String>,
    #[serde(default = "default_generator")]
    generator: String,
    #[serde(default)]
    echo_downstream: bool,
}

fn default_header() -> Option<String> {
    Some("Kong-Request-ID".into())
}

fn default_generator() -> String {
    "uuid#counter".into()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Generator {
    Uuid,
    UuidCounter,
    Tracker,
}

/// Kong keeps one uuid per worker and counts from it; here the process is the worker.
static PROCESS_UUID: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().to_string());
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Stands in for nginx's connection serial number in `tracker` ids (see README).
static TRACKER_SERIAL: AtomicU64 = AtomicU64::new(0);

impl Generator {
    fn generate(self, ctx: &RequestCtx) -> String {
        match self {
            Generator::Uuid => uuid::Uuid::new_v4().to_string(),
            Generator::UuidCounter => {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
                format!("{}#{n}", *PROCESS_UUID)
            }
            Generator::Tracker => {
                let (addr, port) = match ctx.server_addr {
                    Some(a) => (a.ip().to_string(), a.port()),
                    None => (String::new(), 0),
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let serial = TRACKER_SERIAL.fetch_add(1, Ordering::Relaxed) + 1;
                format!("{addr}-{port}-{}-{serial}-1-{now:.3}", std::process::id())
            }
        }
    }
}

#[derive(Debug)]
pub struct CorrelationId {
    header: http::HeaderName,
    generator: Generator,
    echo: bool,
}

/// The id of this request, for the response header.
#[derive(Clone)]
struct Id(String);

impl CorrelationId {
    pub fn from_config(config: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let name = c.header_name.unwrap_or_else(|| "Kong-Request-ID".into());
        let header = match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(ConfigError::new(
                    "header_name",
                    format!("'{name}' is not a valid header name"),
                ));
                None
            }
        };
        let generator = match c.generator.as_str() {
            "uuid" => Some(Generator::Uuid),
            "uuid#counter" => Some(Generator::UuidCounter),
            "tracker" => Some(Generator::Tracker),
            _ => {
                errors.push(ConfigError::new(
                    "generator",
                    "expected one of: uuid, uuid#counter, tracker",
                ));
                None
            }
        };
        match (header, generator) {
            (Some(header), Some(generator)) if errors.is_empty() => Ok(CorrelationId {
                header,
                generator,
                echo: c.echo_downstream,
            }),
            _ => Err(errors),
        }
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &Value,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(CorrelationId::from_config(config)?))
    }
}

#[async_trait]
impl Plugin for CorrelationId {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        if self.echo {
            Phases::ACCESS | Phases::RESPONSE_HEADERS
        } else {
            Phases::ACCESS
        }
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let id = match req
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            Some(v) => v.to_string(),
            None => {
                let id = self.generator.generate(ctx);
                ctx.set_upstream_header(self.header.as_str(), &id);
                id
            }
        };
        // Kong's `kong.log.set_serialize_value("correlation_id", …)`: for log plugins.
        ctx.shared.insert("correlation_id", id.clone());
        if self.echo {
            ctx.extensions.insert(Id(id));
        }
        Flow::Continue
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let id = match ctx.extensions.get::<Id>() {
            Some(id) => id.0.clone(),
            None => self.generator.generate(ctx),
        };
        resp.headers.set(self.header.as_str(), &id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn run(p: &CorrelationId, headers: &[(&str, &str)]) -> RequestCtx {
        let uri: http::Uri = "/".parse().unwrap();
        let mut map = http::HeaderMap::new();
        for (n, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestView {
            method: &http::Method::GET,
            uri: &uri,
            headers: &map,
        };
        let mut ctx = RequestCtx::default();
        p.access(&req, &mut ctx).await;
        ctx
    }

    #[tokio::test]
    async fn generators() {
        let p = CorrelationId::from_config(&Value::Null).unwrap();
        assert_eq!(
            (p.header.as_str(), p.generator),
            ("kong-request-id", Generator::UuidCounter)
        );
        assert_eq!(p.priority(), 100001);
        let a = run(&p, &[]).await.shared["correlation_id"].clone();
        let b = run(&p, &[]).await.shared["correlation_id"].clone();
        let (ua, na) = a.split_once('#').unwrap();
        let (ub, nb) = b.split_once('#').unwrap();
        assert_eq!(ua, ub);
        assert_eq!(ua.len(), 36);
        assert!(nb.parse::<u64>().unwrap() > na.parse::<u64>().unwrap());

        let p = CorrelationId::from_config(&json!({"generator": "uuid", "header_name": "X-Id"}))
            .unwrap();
        let ctx = run(&p, &[]).await;
        let id = ctx.upstream_headers[0].1.to_str().unwrap();
        assert_eq!(ctx.upstream_headers[0].0, "x-id");
        assert!(uuid::Uuid::parse_str(id).is_ok());
        // The client's id is kept.
        let ctx = run(&p, &[("x-id", "mine")]).await;
        assert!(ctx.upstream_headers.is_empty());
        assert_eq!(ctx.shared["correlation_id"], "mine");

        let p = CorrelationId::from_config(&json!({"generator": "tracker"})).unwrap();
        let id = run(&p, &[]).await.shared["correlation_id"].clone();
        assert_eq!(id.split('-').count(), 6, "{id}");
    }

    #[test]
    fn bad_config() {
        let e = CorrelationId::from_config(&json!({"generator": "ulid"})).unwrap_err();
        assert_eq!(e[0].path, "generator");
        assert_eq!(e[0].message, "expected one of: uuid, uuid#counter, tracker");
        let e = CorrelationId::from_config(&json!({"header_name": "bad name"})).unwrap_err();
        assert_eq!(e[0].path, "header_name");
        let e = CorrelationId::from_config(&json!({"echo": true})).unwrap_err();
        assert_eq!(e[0].path, "echo");
    }
}
