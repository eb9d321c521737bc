//! Authentication as one API: every authentication plugin identifies a consumer (and credential)
//! through [`authenticated`], fails through [`failed`], and honours Kong's "logical OR" through
//! [`skip_when_authenticated`] — so anonymous fallbacks, several auth plugins on one route,
//! consumer-scoped instances taking over after identification, and ACL groups behave the same
//! whichever plugin identified the client.
//!
//! Kong's rules (`kong/plugins/*/handler.lua`, `set_consumer`):
//! - success sets `X-Consumer-ID`, `X-Consumer-Custom-ID`, `X-Consumer-Username` (each removed when
//!   the consumer lacks it), `X-Credential-Identifier`, and removes `X-Anonymous-Consumer`;
//! - failure with `anonymous` configured continues as the anonymous consumer, with
//!   `X-Anonymous-Consumer: true` and no credential; without it the plugin's 401 is sent;
//! - a plugin with `anonymous` configured does nothing when an earlier plugin already
//!   authenticated the request with a credential (the plugins are OR-ed).

use crate::{BuildContext, ConfigError, Consumer, Flow, PluginResponse, RequestCtx};
use std::sync::Arc;

/// Kong's logical OR: with `anonymous` configured, a request that an earlier plugin already
/// authenticated with a credential is not checked again.
pub fn skip_when_authenticated(ctx: &RequestCtx, anonymous_configured: bool) -> bool {
    anonymous_configured
        && !ctx.anonymous
        && ctx.consumer.is_some()
        && ctx.credential_identifier.is_some()
}

fn set_consumer_headers(ctx: &mut RequestCtx, consumer: &Consumer) {
    ctx.set_upstream_header("x-consumer-id", &consumer.id);
    match &consumer.custom_id {
        Some(v) => ctx.set_upstream_header("x-consumer-custom-id", v),
        None => ctx.remove_upstream_header("x-consumer-custom-id"),
    }
    match &consumer.username {
        Some(v) => ctx.set_upstream_header("x-consumer-username", v),
        None => ctx.remove_upstream_header("x-consumer-username"),
    }
}

/// The request is authenticated as `consumer` with the credential whose identifier (Kong's
/// `X-Credential-Identifier`: the credential id, or the key/username a plugin uses) is given.
pub fn authenticated(ctx: &mut RequestCtx, consumer: &Arc<Consumer>, credential_identifier: &str) {
    ctx.consumer = Some(consumer.clone());
    ctx.anonymous = false;
    ctx.credential_identifier = Some(credential_identifier.to_string());
    set_consumer_headers(ctx, consumer);
    ctx.set_upstream_header("x-credential-identifier", credential_identifier);
    ctx.remove_upstream_header("x-anonymous-consumer");
}

/// Authentication failed for `reason` (a metric label: `no_credentials`, `invalid_key`, …):
/// continue as `anonymous` when configured, else answer `response`.
pub fn failed(
    ctx: &mut RequestCtx,
    plugin: &'static str,
    anonymous: Option<&Arc<Consumer>>,
    reason: &'static str,
    response: PluginResponse,
) -> Flow {
    let Some(anonymous) = anonymous else {
        ctx.auth_failure = Some((plugin, reason));
        return Flow::Respond(response);
    };
    ctx.consumer = Some(anonymous.clone());
    ctx.anonymous = true;
    ctx.credential_identifier = None;
    set_consumer_headers(ctx, anonymous);
    ctx.remove_upstream_header("x-credential-identifier");
    ctx.set_upstream_header("x-anonymous-consumer", "true");
    Flow::Continue
}

/// Resolves an `anonymous` setting (a consumer id or username) at load, so a dangling reference
/// is a configuration error instead of Kong's per-request 500.
pub fn resolve_anonymous(
    ctx: &BuildContext,
    value: Option<&str>,
) -> Result<Option<Arc<Consumer>>, ConfigError> {
    match value {
        None | Some("") => Ok(None),
        Some(r) => ctx.consumer(r).map(Some).ok_or_else(|| {
            ConfigError::new(
                "anonymous",
                format!("anonymous consumer {r:?} is not configured (no consumer has this id or username)"),
            )
        }),
    }
}

/// Constant-time equality for secrets (keys, passwords, signatures): the time taken depends on
/// the lengths only, never on where the first difference is.
pub fn secure_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}
