//! `platform-probe`: a plugin that exercises every phase of the plugin platform so the test suite
//! can prove each one through the real binary. Compiled into the gateway only with the
//! `test-plugins` feature (the test command enables it); never in a release build.
//!
//! - rewrite: answers `GET /probe-rewrite` before routing;
//! - access: a `probe_tokens` credential (declared here) in `X-Probe-Token` authenticates its
//!   consumer; `panic_in: access` panics; the whole body (buffered) is upper-cased into
//!   `request_body_replacement` when `upper_request_body`;
//! - request body: more than `max_body` bytes → 413;
//! - upstream request: `X-Probe-Upstream: <port>` of the chosen peer;
//! - response headers: `X-Probe-Count` from a counter in the local store (or Redis), and the
//!   upstream's `X-Remove-Me` removed, `Content-Length` dropped when the body is rewritten;
//! - response body: buffered and reversed when `reverse_response_body`;
//! - log: `panic_in: log` panics (the request is unaffected).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use portcullis_plugin_api::bytes::Bytes;
use portcullis_plugin_api::credentials::{validate_as, CredentialKind};
use portcullis_plugin_api::state::{self, Store};
use portcullis_plugin_api::{
    async_trait, auth, parse_config, BuildContext, ConfigError, Consumer, Flow, HeaderEdit,
    LogEntry, Phases, Plugin, PluginFactory, PluginResponse, RequestCtx, RequestView, ResponseHead,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const NAME: &str = "platform-probe";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    panic_in: Option<String>,
    #[serde(default)]
    max_body: Option<usize>,
    #[serde(default)]
    upper_request_body: bool,
    #[serde(default)]
    reverse_response_body: bool,
    #[serde(default)]
    counter: Option<String>,
    #[serde(default)]
    redis_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ProbeToken {
    token: String,
}

static KINDS: [CredentialKind; 1] = [CredentialKind {
    collection: "probe_tokens",
    plugin: NAME,
    unique: &["token"],
    validate: validate_as::<ProbeToken>,
}];

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn credential_kinds(&self) -> &'static [CredentialKind] {
        &KINDS
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let tokens = ctx
            .credentials_of("probe_tokens")
            .iter()
            .filter_map(|cr| {
                Some((
                    cr.str("token")?.to_string(),
                    (cr.consumer.clone(), cr.id.clone()),
                ))
            })
            .collect();
        let store: Option<Arc<dyn Store>> = match c.redis_port {
            Some(port) => Some(state::redis(&state::RedisConfig {
                host: "127.0.0.1".into(),
                port,
                database: 0,
                username: None,
                password: None,
                ssl: false,
                ssl_verify: true,
                timeout: Duration::from_secs(2),
            })),
            None => None,
        };
        Ok(Arc::new(Probe {
            config: c,
            tokens,
            store,
        }))
    }
}

struct Probe {
    config: Config,
    tokens: HashMap<String, (Arc<Consumer>, String)>,
    store: Option<Arc<dyn Store>>,
}

/// Per-request state between phases.
#[derive(Clone, Default)]
struct Seen {
    body_bytes: usize,
    held: Vec<u8>,
    count: i64,
}

#[async_trait]
impl Plugin for Probe {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        1000
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::REWRITE
            | Phases::ACCESS
            | Phases::UPSTREAM_REQUEST
            | Phases::RESPONSE_HEADERS
            | Phases::LOG;
        if self.config.max_body.is_some() {
            p = p | Phases::REQUEST_BODY;
        }
        if self.config.upper_request_body {
            p = p | Phases::BUFFER_REQUEST_BODY;
        }
        if self.config.reverse_response_body {
            p = p | Phases::RESPONSE_BODY;
        }
        p
    }

    async fn rewrite(&self, req: &RequestView<'_>, _ctx: &mut RequestCtx) -> Flow {
        if req.uri.path() == "/probe-rewrite" {
            return Flow::Respond(PluginResponse::raw(200, "rewritten before routing"));
        }
        Flow::Continue
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        if self.config.panic_in.as_deref() == Some("access") {
            panic!("probe panics in access");
        }
        if let Some(t) = req.header("x-probe-token") {
            match self.tokens.get(t) {
                Some((consumer, id)) => auth::authenticated(ctx, consumer, id),
                None => {
                    return auth::failed(
                        ctx,
                        NAME,
                        None,
                        "invalid_token",
                        PluginResponse::message(401, "Invalid authentication credentials"),
                    )
                }
            }
        }
        // Names in any case are accepted (no panic on `X-Upper`).
        ctx.set_upstream_header("X-Upper", "yes");
        if self.config.upper_request_body {
            if let Some(b) = &ctx.request_body {
                ctx.request_body_replacement = Some(Bytes::from(b.to_ascii_uppercase()));
            }
        }
        let count = match (&self.config.counter, &self.store) {
            (Some(key), Some(store)) => store
                .incr(&[(key.clone(), Duration::from_secs(600))], 1)
                .await
                .ok()
                .and_then(|v| v.first().copied())
                .unwrap_or(-1),
            (Some(key), None) => state::local().incr_now(key, Duration::from_secs(600), 1),
            _ => 0,
        };
        ctx.extensions.insert(Seen {
            count,
            ..Seen::default()
        });
        Flow::Continue
    }

    fn request_body(
        &self,
        chunk: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), PluginResponse> {
        let seen = ctx.extensions.get_mut::<Seen>();
        let Some(seen) = seen else { return Ok(()) };
        seen.body_bytes += chunk.as_ref().map_or(0, |c| c.len());
        if self.config.max_body.is_some_and(|m| seen.body_bytes > m) {
            return Err(PluginResponse::message(413, "Request size limit exceeded"));
        }
        Ok(())
    }

    fn upstream_request(&self, headers: &mut dyn HeaderEdit, ctx: &mut RequestCtx) {
        if let Some(u) = &ctx.upstream {
            headers.set("X-Probe-Upstream", &u.port.to_string());
        }
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let count = ctx.extensions.get::<Seen>().map_or(0, |s| s.count);
        resp.headers.set("X-Probe-Count", &count.to_string());
        resp.headers
            .set("X-Probe-From-Gateway", &resp.from_gateway.to_string());
        resp.headers.remove("x-remove-me");
        if self.config.reverse_response_body {
            resp.headers.remove("content-length");
        }
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end: bool, ctx: &mut RequestCtx) {
        let Some(seen) = ctx.extensions.get_mut::<Seen>() else {
            return;
        };
        if let Some(c) = chunk.take() {
            seen.held.extend_from_slice(&c);
        }
        if end {
            let mut all = std::mem::take(&mut seen.held);
            all.reverse();
            *chunk = Some(Bytes::from(all));
        }
    }

    fn log(&self, _entry: &LogEntry<'_>, _ctx: &RequestCtx) {
        if self.config.panic_in.as_deref() == Some("log") {
            panic!("probe panics in log");
        }
    }
}
