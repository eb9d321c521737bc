//! request-termination: answers matching requests itself instead of proxying them (Kong's
//! request-termination) — for maintenance windows, retired endpoints, or stubbing an API.
//!
//! It is also the example to copy when writing a plugin: a typed config checked when the conf
//! loads, a factory the gateway registers, and an `access` hook that either continues or
//! responds. See README.md next to this file.
//!
//! ```yaml
//! plugins:
//!   - name: request-termination
//!     route: legacy-api
//!     config:
//!       status_code: 410
//!       message: This API was retired; use /v2
//! ```

// Tests may unwrap: a panic there is a failed test, not a crashed gateway.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, Plugin, PluginFactory,
    PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

pub const NAME: &str = "request-termination";
/// Kong's PRIORITY: after authentication and rate limiting, so a terminated route still
/// authenticates its callers.
pub const PRIORITY: i32 = 2;

/// The config as written in `plugins[].config`. `deny_unknown_fields` turns a typo into a load
/// error instead of a silently ignored setting.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_status")]
    status_code: u16,
    /// Answered as Kong's JSON `{"message": ..., "request_id": ...}`.
    #[serde(default)]
    message: Option<String>,
    /// A raw body instead of the message JSON.
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    /// Answer with a JSON description of the request (for debugging routes).
    #[serde(default)]
    echo: bool,
    /// Only terminate requests carrying this header or query parameter.
    #[serde(default)]
    trigger: Option<String>,
}

fn default_status() -> u16 {
    503
}

/// Kong's messages for `kong.response.error`, used when no `message` is configured.
fn default_message(status: u16) -> String {
    let known = match status {
        400 => "Bad request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not found",
        405 => "Method not allowed",
        429 => "API rate limit exceeded",
        500 => "An unexpected error occurred",
        502 => "An invalid response was received from the upstream server",
        503 => "The upstream server is currently unavailable",
        504 => "The upstream server is timing out",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_string();
    }
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(str::to_string)
        .unwrap_or_else(|| format!("Status {status}"))
}

/// One configured instance. Instances are shared by every request on their route, so they hold
/// only configuration; per-request state lives in `RequestCtx`.
#[derive(Debug)]
pub struct RequestTermination {
    status: u16,
    message: Option<String>,
    body: Option<(String, String)>,
    echo: bool,
    trigger: Option<http::HeaderName>,
    trigger_param: Option<String>,
}

impl RequestTermination {
    /// Parses and validates `config`, reporting every problem with its field path.
    pub fn from_config(config: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        // A 1xx is not a final answer; an HTTP client would wait for the real one.
        if !(200..=599).contains(&c.status_code) {
            errors.push(ConfigError::new(
                "status_code",
                "must be between 200 and 599",
            ));
        }
        if c.message.is_some() && (c.body.is_some() || c.content_type.is_some()) {
            errors.push(ConfigError::new(
                "message",
                "message cannot be used with body or content_type",
            ));
        }
        if c.content_type.is_some() && c.body.is_none() {
            errors.push(ConfigError::new(
                "content_type",
                "content_type requires a body",
            ));
        }
        if let Some(ct) = &c.content_type {
            if http::HeaderValue::from_str(ct).is_err() {
                errors.push(ConfigError::new("content_type", "not a valid header value"));
            }
        }
        let bodyless = matches!(c.status_code, 204 | 304);
        if bodyless && (c.body.is_some() || c.echo) {
            errors.push(ConfigError::new(
                "status_code",
                format!("a {} response has no body; remove body/echo", c.status_code),
            ));
        }
        let trigger = match &c.trigger {
            Some(t) => match http::HeaderName::from_bytes(t.as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(ConfigError::new(
                        "trigger",
                        "must be a valid header / query parameter name",
                    ));
                    None
                }
            },
            None => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RequestTermination {
            status: c.status_code,
            message: c.message,
            body: c.body.map(|b| {
                let ct = c
                    .content_type
                    .unwrap_or_else(|| "text/plain; charset=utf-8".into());
                (b, ct)
            }),
            echo: c.echo,
            trigger,
            trigger_param: c.trigger,
        })
    }

    fn triggered(&self, req: &RequestView<'_>) -> bool {
        let (Some(header), Some(param)) = (&self.trigger, &self.trigger_param) else {
            return true;
        };
        req.headers.contains_key(header)
            || req.uri.query().is_some_and(|q| {
                q.split('&')
                    .any(|pair| pair.split('=').next() == Some(param.as_str()))
            })
    }

    fn echo_body(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> Value {
        let mut headers = Map::new();
        for name in req.headers.keys() {
            let values: Vec<Value> = req
                .headers
                .get_all(name)
                .iter()
                .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let value = match <[Value; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            };
            headers.insert(name.as_str().to_string(), value);
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        json!({
            "message": self.message.clone().unwrap_or_else(|| default_message(self.status)),
            "request_id": ctx.request_id,
            "request": {
                "scheme": if ctx.tls { "https" } else { "http" },
                "host": host,
                "method": req.method.as_str(),
                "path": req.uri.path(),
                "query": req.uri.query(),
                "headers": headers,
            },
            "matched_route": ctx.route.as_deref(),
            "matched_service": ctx.service.as_deref(),
            "matched_consumer": ctx.consumer.as_ref().map(|c| json!({
                "id": c.id, "username": c.username, "custom_id": c.custom_id,
            })),
        })
    }
}

/// What the gateway registers: it builds one instance per configured `plugins[]` entry.
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
        Ok(Arc::new(RequestTermination::from_config(config)?))
    }
}

#[async_trait]
impl Plugin for RequestTermination {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        if !self.triggered(req) {
            return Flow::Continue;
        }
        let mut response = PluginResponse {
            status: self.status,
            message: None,
            body: None,
            content_type: None,
            headers: Vec::new(),
        };
        if self.echo {
            response.body = Some(self.echo_body(req, ctx).to_string().into_bytes());
            response.content_type = Some("application/json; charset=utf-8".into());
        } else if let Some((body, content_type)) = &self.body {
            response.body = Some(body.clone().into_bytes());
            response.content_type = Some(content_type.clone());
        } else if !matches!(self.status, 204 | 304) {
            response.message = Some(
                self.message
                    .clone()
                    .unwrap_or_else(|| default_message(self.status)),
            );
        }
        Flow::Respond(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(config: Value) -> Arc<dyn Plugin> {
        Factory
            .build(&config, &BuildContext::default())
            .unwrap_or_else(|e| panic!("{config} rejected: {e:?}"))
    }

    fn errors(config: Value) -> Vec<String> {
        match Factory.build(&config, &BuildContext::default()) {
            Ok(_) => panic!("{config} accepted"),
            Err(e) => e.into_iter().map(|e| e.path).collect(),
        }
    }

    async fn run(p: &dyn Plugin, uri: &str, headers: &[(&str, &str)]) -> Flow {
        let method = http::Method::POST;
        let uri: http::Uri = uri.parse().unwrap();
        let mut map = http::HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestView {
            method: &method,
            uri: &uri,
            headers: &map,
        };
        let mut ctx = RequestCtx {
            request_id: "req-7".into(),
            tls: true,
            route: Some("legacy".into()),
            ..Default::default()
        };
        p.access(&req, &mut ctx).await
    }

    fn respond(flow: Flow) -> PluginResponse {
        match flow {
            Flow::Respond(r) => r,
            Flow::Continue => panic!("request continued"),
        }
    }

    #[tokio::test]
    async fn defaults_to_kong_503() {
        let p = plugin(Value::Null);
        assert_eq!((p.name(), p.priority()), ("request-termination", 2));
        let r = respond(run(&*p, "/", &[]).await);
        assert_eq!(r.status, 503);
        assert_eq!(
            r.message.as_deref(),
            Some("The upstream server is currently unavailable")
        );
        assert!(r.body.is_none());
    }

    #[tokio::test]
    async fn message_body_and_content_type() {
        let p = plugin(json!({"status_code": 410, "message": "Retired; use /v2"}));
        let r = respond(run(&*p, "/", &[]).await);
        assert_eq!(
            (r.status, r.message.as_deref()),
            (410, Some("Retired; use /v2"))
        );

        let p =
            plugin(json!({"status_code": 200, "body": "<ok/>", "content_type": "application/xml"}));
        let r = respond(run(&*p, "/", &[]).await);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_deref(), Some(&b"<ok/>"[..]));
        assert_eq!(r.content_type.as_deref(), Some("application/xml"));
        assert!(r.message.is_none());

        let p = plugin(json!({"status_code": 418}));
        let r = respond(run(&*p, "/", &[]).await);
        assert_eq!(r.message.as_deref(), Some("I'm a teapot"));

        let p = plugin(json!({"status_code": 204}));
        let r = respond(run(&*p, "/", &[]).await);
        assert!(r.message.is_none() && r.body.is_none());
    }

    #[tokio::test]
    async fn trigger_by_header_or_query() {
        let p = plugin(json!({"status_code": 403, "trigger": "x-block"}));
        assert!(matches!(run(&*p, "/a?x=1", &[]).await, Flow::Continue));
        assert_eq!(
            respond(run(&*p, "/a", &[("X-Block", "1")]).await).status,
            403
        );
        assert_eq!(respond(run(&*p, "/a?y=2&x-block", &[]).await).status, 403);
        assert_eq!(respond(run(&*p, "/a?x-block=yes", &[]).await).status, 403);
    }

    #[tokio::test]
    async fn echo_describes_the_request() {
        let p = plugin(json!({"status_code": 200, "echo": true, "message": "hi"}));
        let r = respond(
            run(
                &*p,
                "/v1/things?id=3",
                &[("host", "api.example.com"), ("x-tag", "a"), ("x-tag", "b")],
            )
            .await,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/json; charset=utf-8")
        );
        let v: Value = serde_json::from_slice(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(v["message"], "hi");
        assert_eq!(v["request_id"], "req-7");
        assert_eq!(v["request"]["scheme"], "https");
        assert_eq!(v["request"]["host"], "api.example.com");
        assert_eq!(v["request"]["method"], "POST");
        assert_eq!(v["request"]["path"], "/v1/things");
        assert_eq!(v["request"]["query"], "id=3");
        assert_eq!(v["request"]["headers"]["x-tag"], json!(["a", "b"]));
        assert_eq!(v["matched_route"], "legacy");
    }

    #[test]
    fn config_errors_have_paths() {
        assert_eq!(errors(json!({"status_code": 99})), ["status_code"]);
        assert_eq!(errors(json!({"status_code": 600})), ["status_code"]);
        assert_eq!(errors(json!({"status_code": "503"})), ["status_code"]);
        assert_eq!(errors(json!({"message": "a", "body": "b"})), ["message"]);
        assert_eq!(
            errors(json!({"content_type": "text/plain"})),
            ["content_type"]
        );
        assert_eq!(
            errors(json!({"status_code": 204, "body": "x"})),
            ["status_code"]
        );
        assert_eq!(errors(json!({"trigger": "bad header"})), ["trigger"]);
        assert_eq!(errors(json!({"mesage": "typo"})), ["mesage"]);
        // Kong exports spell out nulls.
        plugin(json!({"status_code": 503, "message": null, "body": null,
                      "content_type": null, "echo": false, "trigger": null}));
    }
}
