//! proxy-cache: caches upstream responses in bounded memory and answers later requests from it,
//! as Kong's proxy-cache plugin (3.x `handler.lua`, `cache_key.lua`, memory strategy) does.
//!
//! ```yaml
//! plugins:
//!   - name: proxy-cache
//!     route: catalogue
//!     config:
//!       strategy: memory
//!       cache_ttl: 60
//!       content_type: ["application/json"]
//!       memory: {max_size: 64m}
//! ```
//!
//! The access phase answers hits; a miss is captured in the response phases (headers, then
//! each chunk as it passes untouched to the client) and stored when the body ends, unless it
//! grew past `memory.max_entry_size`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use config::{Config, MimeType};
use portcullis_plugin_api::bytes::{Bytes, BytesMut};
use portcullis_plugin_api::{
    async_trait, BuildContext, ConfigError, Flow, Phases, Plugin, PluginFactory, PluginResponse,
    RequestCtx, RequestView, ResponseHead,
};
use serde_json::Value;
use store::{Entry, Store};

pub const NAME: &str = "proxy-cache";
/// Kong's PRIORITY: after authentication, so the consumer is part of the key.
pub const PRIORITY: i32 = 100;

/// Kong's `ngx.req.get_uri_args()` reads at most 100 arguments.
const MAX_QUERY_ARGS: usize = 100;

/// Headers never stored nor replayed: hop-by-hop ones, the length (recomputed), the gateway's
/// request id and the cache's own diagnostics (set afresh on each hit).
const NOT_STORED: [&str; 13] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-request-id",
    "age",
    "x-cache-status",
    "x-cache-key",
];

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let config = Config::parse(config)?;
        let store = store::for_instance(&ctx.instance_id, config.max_size);
        Ok(Arc::new(ProxyCache { config, store }))
    }
}

pub struct ProxyCache {
    config: Config,
    store: Arc<Store>,
}

/// What this request is to the cache, between phases.
#[derive(Clone)]
enum State {
    /// Answered from the cache: the response phases leave it alone.
    Served,
    /// Cacheable, not answered: capture the upstream response under this key. `head`: the
    /// response has no body to wait for.
    Wanted { key: [u8; 32], head: bool },
    /// Capturing a cacheable response.
    Capturing(Box<Capture>),
}

#[derive(Clone)]
struct Capture {
    key: [u8; 32],
    status: u16,
    headers: Vec<(String, String)>,
    ttl: f64,
    body: BytesMut,
}

/// A parsed Cache-Control header (Kong's `parse_directive_header`): directive names lower case;
/// a value that reads as a number is kept as one.
#[derive(Debug, Default)]
struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    fn parse<'a>(values: impl Iterator<Item = &'a http::HeaderValue>) -> Directives {
        let mut d = Vec::new();
        for v in values {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let item = item.trim_start();
                if item.is_empty() {
                    continue;
                }
                let (k, val) = match item.split_once('=') {
                    Some((k, v)) => (k, Some(v.trim().to_string())),
                    None => (item, None),
                };
                d.push((k.trim().to_ascii_lowercase(), val));
            }
        }
        Directives(d)
    }

    /// Later directives win, as in Kong's table.
    fn get(&self, name: &str) -> Option<&Option<String>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn number(&self, name: &str) -> Option<f64> {
        // Finite only: `max-age=inf` or `nan` would make no sense of a lifetime.
        self.get(name)?
            .as_deref()?
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
    }
}

/// Kong's `calculate_resource_ttl`: `s-maxage`, else `max-age`, else the last `Expires` minus
/// now; never negative.
fn resource_ttl(cc: &Directives, expires: Option<&http::HeaderValue>) -> f64 {
    let max_age = cc.number("s-maxage").or_else(|| cc.number("max-age"));
    let max_age = max_age.or_else(|| {
        let t = httpdate::parse_http_date(expires?.to_str().ok()?).ok()?;
        let t = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
        Some(t as f64 - store::unix_now() as f64)
    });
    max_age.unwrap_or(0.0).max(0.0)
}

/// One `key=value` component of Kong's `generate_key_from`: repeated values sorted and joined
/// with `,`; an argument without `=` is its bare name.
fn push_component(out: &mut Vec<String>, field: &str, mut values: Vec<Option<String>>) {
    if values.is_empty() {
        return;
    }
    if values.len() == 1 {
        match values.pop().flatten() {
            Some(v) => out.push(format!("{field}={v}")),
            None => out.push(field.to_string()),
        }
        return;
    }
    let mut v: Vec<String> = values.into_iter().map(Option::unwrap_or_default).collect();
    v.sort();
    out.push(format!("{field}={}", v.join(",")));
}

impl ProxyCache {
    fn diagnostic(&self, header: bool, req: &RequestView<'_>) -> bool {
        // Kong: a `Kong-Debug` request header shows them whatever the config says.
        header || req.headers.contains_key("kong-debug")
    }

    fn set_status(&self, req: &RequestView<'_>, ctx: &mut RequestCtx, status: &str) {
        if self.diagnostic(self.config.header_status, req) {
            ctx.set_response_header("X-Cache-Status", status);
        }
    }

    fn cacheable_request(&self, req: &RequestView<'_>, cc: &Directives) -> bool {
        if !self.config.request_method.contains(req.method) {
            return false;
        }
        !(self.config.cache_control
            && (cc.has("no-store")
                || cc.has("no-cache")
                || req.headers.contains_key(http::header::AUTHORIZATION)))
    }

    /// Kong's `build_cache_key`: sha256 of `prefix|method|path|params|headers`.
    fn cache_key(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> [u8; 32] {
        openssl::sha::sha256(self.key_text(req, ctx).as_bytes())
    }

    fn key_text(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> String {
        let route = ctx.route_info.as_ref().map(|r| r.id.as_str());
        let consumer = ctx.consumer.as_ref().map(|c| c.id.as_str());
        let prefix = match (consumer, route) {
            (Some(c), Some(r)) => format!("{c}:{r}"),
            (_, Some(r)) => r.to_string(),
            _ => "default".to_string(),
        };
        let path = req.uri.path();
        let path = if self.config.ignore_uri_case {
            path.to_lowercase()
        } else {
            path.to_string()
        };

        let args: Vec<(String, Option<String>)> = req
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .take(MAX_QUERY_ARGS)
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => (
                    portcullis_plugin_api::percent_decode(k),
                    Some(portcullis_plugin_api::percent_decode(v)),
                ),
                None => (portcullis_plugin_api::percent_decode(pair), None),
            })
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let values = |name: &str| -> Vec<Option<String>> {
            args.iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let mut params = Vec::new();
        if self.config.vary_query_params.is_empty() {
            let mut names: Vec<&str> = args.iter().map(|(k, _)| k.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            for n in names {
                push_component(&mut params, n, values(n));
            }
        } else {
            for n in &self.config.vary_query_params {
                push_component(&mut params, n, values(n));
            }
        }

        let mut headers = Vec::new();
        for (field, name) in &self.config.vary_headers {
            let v = req
                .headers
                .get_all(name)
                .iter()
                .map(|v| Some(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            push_component(&mut headers, field, v);
        }

        format!(
            "{prefix}|{}|{path}|{}|{}",
            req.method,
            params.join(":"),
            headers.join(":")
        )
    }

    /// Whether a stored entry may answer: Kong refreshes when the client's Cache-Control asks
    /// for fresher data (with `cache_control`), else when it is older than `cache_ttl`.
    fn fresh_enough(&self, e: &Entry, cc: &Directives, now_unix: u64) -> bool {
        let age = now_unix.saturating_sub(e.timestamp) as f64;
        if !self.config.cache_control {
            return age <= self.config.cache_ttl as f64;
        }
        if cc.number("max-age").is_some_and(|m| age > m) {
            return false;
        }
        if cc.number("max-stale").is_some_and(|m| age - e.ttl > m) {
            return false;
        }
        if cc.number("min-fresh").is_some_and(|m| e.ttl - age < m) {
            return false;
        }
        true
    }

    fn hit(&self, e: &Entry, req: &RequestView<'_>, now_unix: u64) -> PluginResponse {
        let mut r = PluginResponse::raw(e.status, e.body.to_vec());
        r.headers.reserve(e.headers.len() + 3);
        r.headers.extend(
            e.headers
                .iter()
                // Kong never replays a stored rate-limit remainder.
                .filter(|(n, _)| !n.contains("ratelimit-remaining"))
                .cloned(),
        );
        if self.diagnostic(self.config.header_age, req) {
            r.headers.push((
                "age".into(),
                now_unix.saturating_sub(e.timestamp).to_string(),
            ));
        }
        if self.diagnostic(self.config.header_status, req) {
            r.headers.push(("X-Cache-Status".into(), "Hit".into()));
        }
        if self.diagnostic(self.config.header_key, req) {
            r.headers.push(("X-Cache-Key".into(), hex(&e.key)));
        }
        r
    }

    fn cacheable_response(&self, resp: &ResponseHead<'_>) -> Option<f64> {
        if !self.config.response_code.contains(&resp.status) {
            return None;
        }
        let ct = resp.headers.get_all("content-type");
        let [ct] = ct.as_slice() else {
            return None;
        };
        let actual = MimeType::parse(ct.to_str().ok()?)?;
        if !self.config.content_type.iter().any(|c| c.accepts(&actual)) {
            return None;
        }
        if !self.config.cache_control {
            return Some(self.config.cache_ttl as f64);
        }
        let cc = Directives::parse(resp.headers.get_all("cache-control").into_iter());
        if cc.has("private") || cc.has("no-store") || cc.has("no-cache") {
            return None;
        }
        let expires = resp.headers.get_all("expires");
        let ttl = resource_ttl(&cc, expires.last().copied());
        (ttl > 0.0).then_some(ttl)
    }

    fn store(&self, c: Capture) {
        let storage_ttl = match self.config.storage_ttl {
            Some(t) => t as f64,
            None => c.ttl,
        };
        let now = Instant::now();
        let expires = (storage_ttl > 0.0)
            .then(|| now.checked_add(Duration::from_secs_f64(storage_ttl.min(1e9))))
            .flatten();
        self.store.put(Entry {
            key: c.key,
            status: c.status,
            headers: c.headers,
            body: c.body.freeze(),
            timestamp: store::unix_now(),
            ttl: c.ttl,
            expires,
        });
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

#[async_trait]
impl Plugin for ProxyCache {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS | Phases::RESPONSE_HEADERS | Phases::RESPONSE_BODY
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let cc = Directives::parse(req.headers.get_all(http::header::CACHE_CONTROL).iter());
        if !self.cacheable_request(req, &cc) {
            self.set_status(req, ctx, "Bypass");
            return Flow::Continue;
        }
        let key = self.cache_key(req, ctx);
        let head = req.method == http::Method::HEAD;
        if self.diagnostic(self.config.header_key, req) {
            ctx.set_response_header("X-Cache-Key", &hex(&key));
        }
        let Some(entry) = self.store.get(&key, Instant::now()) else {
            if self.config.cache_control && cc.has("only-if-cached") {
                // RFC 9111 §5.2.1.7, as Kong: nothing stored, and the client wants nothing else.
                ctx.extensions.insert(State::Served);
                return Flow::Respond(PluginResponse::raw(504, Vec::new()));
            }
            ctx.extensions.insert(State::Wanted { key, head });
            self.set_status(req, ctx, "Miss");
            return Flow::Continue;
        };
        let now = store::unix_now();
        if !self.fresh_enough(&entry, &cc, now) {
            ctx.extensions.insert(State::Wanted { key, head });
            self.set_status(req, ctx, "Refresh");
            return Flow::Continue;
        }
        ctx.extensions.insert(State::Served);
        Flow::Respond(self.hit(&entry, req, now))
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let Some(State::Wanted { key, head }) = ctx.extensions.get::<State>().cloned() else {
            return;
        };
        ctx.extensions.remove::<State>();
        // An answer the gateway made itself (an error, a later plugin's exit) is not the
        // upstream's resource.
        let ttl = if resp.from_gateway {
            None
        } else {
            self.cacheable_response(resp)
        };
        let Some(ttl) = ttl else {
            if self.config.header_status || resp.headers.get("x-cache-status").is_some() {
                resp.headers.set("X-Cache-Status", "Bypass");
            }
            return;
        };
        let mut headers = Vec::new();
        for name in resp.headers.names() {
            if NOT_STORED.contains(&name.as_str()) {
                continue;
            }
            for v in resp.headers.get_all(name.as_str()) {
                if let Ok(v) = v.to_str() {
                    headers.push((name.as_str().to_string(), v.to_string()));
                }
            }
        }
        let capture = Capture {
            key,
            status: resp.status,
            headers,
            ttl,
            body: BytesMut::new(),
        };
        if head {
            // Pingora never runs the body filter for a HEAD response; Kong stores its empty
            // body.
            self.store(capture);
        } else {
            ctx.extensions.insert(State::Capturing(Box::new(capture)));
        }
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let Some(State::Capturing(c)) = ctx.extensions.get_mut::<State>() else {
            return;
        };
        if let Some(b) = chunk {
            if (c.body.len() + b.len()) as u64 > self.config.max_entry_size {
                // Too large to keep: the client still gets every byte, the cache nothing.
                ctx.extensions.remove::<State>();
                return;
            }
            c.body.extend_from_slice(b);
        }
        if end_of_stream {
            if let Some(State::Capturing(c)) = ctx.extensions.remove::<State>() {
                self.store(*c);
            }
        }
    }
}

#[cfg(test)]
mod tests;
