//! rate-limiting: counts requests per fixed time window (second … year) and answers 429 once a
//! limit is reached (Kong's rate-limiting). Counters live in the process-wide local store
//! (`policy: local`, surviving reloads) or in Redis (`policy: redis`, shared by replicas), keyed
//! as Kong keys them: route, service, identifier, window start, period.
//!
//! ```yaml
//! plugins:
//!   - name: rate-limiting
//!     route: api
//!     config:
//!       minute: 60
//!       hour: 1000
//!       limit_by: ip
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod sync;
pub mod window;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_plugin_api::state::{self, LocalStore, RedisStore, Store, StoreError};
use portcullis_plugin_api::{
    async_trait, BuildContext, ConfigError, Flow, Plugin, PluginFactory, PluginResponse,
    RequestCtx, RequestView,
};
use serde_json::Value;

pub use config::{Config, LimitBy, Policy};
use window::Period;

pub const NAME: &str = "rate-limiting";
/// Kong's PRIORITY: after authentication (so `limit_by: consumer` sees the consumer), before
/// request-size-limiting (951 runs earlier) and the transformers.
pub const PRIORITY: i32 = 910;

/// Kong's id for "no route" / "no service" in counter keys.
const NULL_UUID: &str = "00000000-0000-0000-0000-000000000000";

const RATELIMIT_LIMIT: &str = "RateLimit-Limit";
const RATELIMIT_REMAINING: &str = "RateLimit-Remaining";
const RATELIMIT_RESET: &str = "RateLimit-Reset";
const RETRY_AFTER: &str = "Retry-After";

enum Backend {
    Local(Arc<LocalStore>),
    Redis(Arc<RedisStore>),
    /// Redis with `sync_rate > 0`: counted here, pushed in batches.
    Synced(Arc<sync::SyncState>),
}

pub struct RateLimiting {
    config: Config,
    backend: Backend,
    /// `ratelimit:<route id>:<service id>:` of the instance's scope, as Kong keys counters: an
    /// instance on a service counts across all its routes, a global one across everything.
    key_prefix: String,
}

impl std::fmt::Debug for RateLimiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Config holds the Redis password; show only what identifies the instance.
        f.debug_struct("RateLimiting")
            .field("limits", &self.config.limits)
            .field("limit_by", &self.config.limit_by)
            .finish()
    }
}

/// One period's state for the headers, as Kong's `usage` table holds it.
struct Usage {
    period: Period,
    limit: u64,
    remaining: i64,
}

impl RateLimiting {
    /// `route_id`/`service_id`: the instance's scope (`None`: not scoped to one).
    pub fn from_config(
        value: &Value,
        route_id: Option<&str>,
        service_id: Option<&str>,
    ) -> Result<Self, Vec<ConfigError>> {
        let config = config::parse(value)?;
        let backend = match &config.policy {
            Policy::Local => Backend::Local(state::local()),
            Policy::Redis {
                config: rc,
                sync_every: None,
            } => Backend::Redis(state::redis(rc)),
            Policy::Redis {
                config: rc,
                sync_every: Some(every),
            } => Backend::Synced(sync::SyncState::start(state::redis(rc), *every)),
        };
        let key_prefix = format!(
            "ratelimit:{}:{}:",
            route_id.unwrap_or(NULL_UUID),
            service_id.unwrap_or(NULL_UUID)
        );
        Ok(RateLimiting {
            config,
            backend,
            key_prefix,
        })
    }

    /// Kong's `get_identifier`: what the counters are kept per; the client address when the
    /// chosen attribute is missing.
    fn identifier<'a>(&'a self, req: &'a RequestView<'_>, ctx: &'a RequestCtx) -> Cow<'a, str> {
        let found: Option<Cow<'a, str>> = match &self.config.limit_by {
            LimitBy::Ip => None,
            LimitBy::Consumer => ctx
                .consumer
                .as_ref()
                .map(|c| Cow::Borrowed(c.id.as_str()))
                .or_else(|| ctx.credential_identifier.as_deref().map(Cow::Borrowed)),
            LimitBy::Credential => ctx.credential_identifier.as_deref().map(Cow::Borrowed),
            LimitBy::Service => ctx
                .service_info
                .as_ref()
                .map(|s| Cow::Borrowed(s.id.as_str())),
            LimitBy::Header(name) => req
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
            LimitBy::Path(p) => (req.uri.path() == p).then_some(Cow::Borrowed(p.as_str())),
        };
        found.unwrap_or_else(|| match ctx.client_ip {
            Some(ip) => Cow::Owned(ip.to_string()),
            None => Cow::Borrowed(""),
        })
    }

    async fn incr(&self, keys: &[(String, Duration)]) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            // Synchronous: no await on the request path for the local policy.
            Backend::Local(s) => Ok(keys.iter().map(|(k, ttl)| s.incr_now(k, *ttl, 1)).collect()),
            Backend::Redis(s) => s.incr(keys, 1).await,
            Backend::Synced(s) => Ok(s.incr(keys, 1)),
        }
    }

    /// Takes back a refused request's increments: Kong counts only the requests it lets
    /// through, so a client hammering a per-second limit does not use up its minute. For Redis
    /// this is a second round trip, made on the background runtime, off the request path.
    fn uncount(&self, keys: Vec<(String, Duration)>) {
        match &self.backend {
            Backend::Local(s) => {
                for (k, ttl) in &keys {
                    s.incr_now(k, *ttl, -1);
                }
            }
            Backend::Synced(s) => {
                s.incr(&keys, -1);
            }
            Backend::Redis(s) => {
                let store = s.clone();
                portcullis_plugin_api::background::spawn(async move {
                    if let Err(e) = store.incr(&keys, -1).await {
                        tracing::error!(plugin = NAME, error = %e, "failed to take back a refused request");
                    }
                });
            }
        }
    }
}

/// Counter key of one window, as Kong's policies build it (`prefix` holds route and service).
fn counter_key(prefix: &str, identifier: &str, start_ms: i64, period: &str) -> String {
    format!("{prefix}{identifier}:{start_ms}:{period}")
}

#[async_trait]
impl Plugin for RateLimiting {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let now_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let keys: Vec<(String, Duration)> = {
            let identifier = self.identifier(req, ctx);
            self.config
                .limits
                .iter()
                .map(|(p, _)| {
                    let start = window::window_start_ms(p, now_s);
                    (
                        counter_key(&self.key_prefix, &identifier, start, p.name),
                        Duration::from_secs(p.secs),
                    )
                })
                .collect()
        };
        let counts = match self.incr(&keys).await {
            Ok(c) if c.len() == keys.len() => Ok(c),
            Ok(_) => Err(StoreError(
                "the counter store answered a wrong number of values".into(),
            )),
            Err(e) => Err(e),
        };
        let counts = match counts {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(plugin = NAME, error = %e, "failed to get usage");
                // fault_tolerant: Kong lets the traffic through (without headers).
                if self.config.fault_tolerant {
                    return Flow::Continue;
                }
                return Flow::Respond(PluginResponse::message(500, "An unexpected error occurred"));
            }
        };

        // The count includes this request; Kong compares the usage before it.
        let usage: Vec<Usage> = self
            .config
            .limits
            .iter()
            .zip(&counts)
            .map(|((period, limit), count)| Usage {
                period: *period,
                limit: *limit,
                remaining: *limit as i64 - (count - 1),
            })
            .collect();
        let stop = usage.iter().position(|u| u.remaining <= 0);

        let mut reset = None;
        if !self.config.hide_client_headers {
            // RateLimit-*: the period with the fewest requests left; on a tie the longer one.
            let mut chosen: Option<(u64, u64, i64)> = None; // (limit, window secs, remaining)
            for (i, u) in usage.iter().enumerate() {
                let mut remaining = u.remaining;
                if stop.is_none() || stop == Some(i) {
                    remaining -= 1;
                }
                let remaining = remaining.max(0);
                let better = match chosen {
                    None => true,
                    Some((_, window, r)) => {
                        remaining < r || (remaining == r && u.period.secs > window)
                    }
                };
                if better {
                    chosen = Some((u.limit, u.period.secs, remaining));
                    reset = Some(window::reset_secs(&u.period, now_s));
                }
                ctx.set_response_header(u.period.limit_header, &u.limit.to_string());
                ctx.set_response_header(u.period.remaining_header, &remaining.to_string());
            }
            if let (Some((limit, _, remaining)), Some(reset)) = (chosen, reset) {
                ctx.set_response_header(RATELIMIT_LIMIT, &limit.to_string());
                ctx.set_response_header(RATELIMIT_REMAINING, &remaining.to_string());
                ctx.set_response_header(RATELIMIT_RESET, &reset.to_string());
            }
        }

        if stop.is_some() {
            self.uncount(keys);
            let mut resp =
                PluginResponse::message(self.config.error_code, self.config.error_message.clone());
            if let Some(reset) = reset {
                resp = resp.with_header(RETRY_AFTER, reset.to_string());
            }
            return Flow::Respond(resp);
        }
        Flow::Continue
    }

    async fn flush(&self) {
        if let Backend::Synced(s) = &self.backend {
            s.sync().await;
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
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(RateLimiting::from_config(
            config,
            ctx.route_id.as_deref(),
            ctx.service_id.as_deref(),
        )?))
    }
}

#[cfg(test)]
mod tests;
