//! key-auth: identifies consumers by an API key sent in a header, the query string or the body
//! (Kong's key-auth, priority 1250).
//!
//! Keys are indexed at load by their SHA-256, so a request costs one digest and one map lookup;
//! the stored key is then compared in constant time. Keys are never logged.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod args;

use std::collections::HashMap;
use std::sync::Arc;

use args::Found;
use portcullis_plugin_api::auth::{self, secure_eq};
use portcullis_plugin_api::credentials::{validate_as, CredentialKind};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Consumer, Flow, Phases, Plugin,
    PluginFactory, PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;

pub const NAME: &str = "key-auth";
/// Kong's PRIORITY for key-auth.
pub const PRIORITY: i32 = 1250;
pub const COLLECTION: &str = "keyauth_credentials";

const MSG_DUPLICATE: &str = "Duplicate API key found";
const MSG_NO_KEY: &str = "No API key found in request";
const MSG_INVALID: &str = "Unauthorized";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_key_names")]
    key_names: Vec<String>,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default = "yes")]
    key_in_header: bool,
    #[serde(default = "yes")]
    key_in_query: bool,
    #[serde(default)]
    key_in_body: bool,
    #[serde(default = "yes")]
    run_on_preflight: bool,
    #[serde(default)]
    realm: Option<String>,
}

fn default_key_names() -> Vec<String> {
    vec!["apikey".to_string()]
}

fn yes() -> bool {
    true
}

/// One `keyauth_credentials` entry as Kong's schema has it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawCredential {
    key: NonEmpty,
    /// Kong expires keys after `ttl` seconds from creation; a file has no creation time, so it
    /// is accepted and ignored (the loader warns about it at its location).
    #[serde(default)]
    ttl: Option<u64>,
}

/// A string that must not be empty (Kong refuses an empty key).
struct NonEmpty;

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty)
    }
}

static KINDS: [CredentialKind; 1] = [CredentialKind {
    collection: COLLECTION,
    plugin: NAME,
    unique: &["key"],
    validate: validate_as::<RawCredential>,
}];

/// Kong's `typedefs.header_name`: key names are looked up as headers too.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A realm goes inside a quoted header parameter.
pub fn check_realm(realm: &str) -> Result<(), ConfigError> {
    if realm
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return Err(ConfigError::new(
            "realm",
            "must not contain quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

struct KeyEntry {
    key: Vec<u8>,
    credential_id: String,
    consumer: Arc<Consumer>,
}

/// One configured key-auth instance.
pub struct KeyAuth {
    /// Each key name with its header form, in configured order.
    key_names: Vec<(String, http::HeaderName)>,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    key_in_header: bool,
    key_in_query: bool,
    key_in_body: bool,
    run_on_preflight: bool,
    www_authenticate: String,
    /// SHA-256 of the key → credential.
    keys: HashMap<[u8; 32], KeyEntry>,
}

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
        Ok(Arc::new(KeyAuth::from_config(config, ctx)?))
    }
}

impl KeyAuth {
    pub fn from_config(
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<KeyAuth, Vec<ConfigError>> {
        let raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        if raw.key_names.is_empty() {
            errors.push(ConfigError::new("key_names", "must not be empty"));
        }
        let mut key_names = Vec::new();
        for (i, name) in raw.key_names.iter().enumerate() {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if valid_header_name(name) => key_names.push((name.clone(), h)),
                _ => errors.push(ConfigError::new(
                    format!("key_names[{i}]"),
                    format!("bad header name '{name}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"),
                )),
            }
        }
        if let Some(realm) = &raw.realm {
            if let Err(e) = check_realm(realm) {
                errors.push(e);
            }
        }
        let anonymous = match auth::resolve_anonymous(ctx, raw.anonymous.as_deref()) {
            Ok(a) => a,
            Err(e) => {
                errors.push(e);
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut keys = HashMap::new();
        for cred in ctx.credentials_of(COLLECTION) {
            let Some(key) = cred.str("key") else { continue };
            keys.insert(
                portcullis_plugin_api::sha256(key.as_bytes()),
                KeyEntry {
                    key: key.as_bytes().to_vec(),
                    credential_id: cred.id.clone(),
                    consumer: cred.consumer.clone(),
                },
            );
        }
        Ok(KeyAuth {
            key_names,
            hide_credentials: raw.hide_credentials,
            anonymous,
            key_in_header: raw.key_in_header,
            key_in_query: raw.key_in_query,
            key_in_body: raw.key_in_body,
            run_on_preflight: raw.run_on_preflight,
            www_authenticate: match &raw.realm {
                Some(r) => format!("Key realm=\"{r}\""),
                None => "Key".to_string(),
            },
            keys,
        })
    }

    fn unauthorized(&self, message: &'static str) -> PluginResponse {
        PluginResponse::message(401, message)
            .with_header("WWW-Authenticate", &self.www_authenticate)
    }

    /// Kong's `do_authentication`: the first key name found wins; a failure names its reason.
    fn authenticate(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<&KeyEntry, (&'static str, PluginResponse)> {
        let query = req.uri.query().unwrap_or("");
        let content_type = req.header("content-type");
        let mut key = None;
        for (name, header) in &self.key_names {
            let mut found = Found::Missing;
            if self.key_in_header {
                let mut values = req.headers.get_all(header).iter();
                found = match (values.next(), values.next()) {
                    (None, _) => Found::Missing,
                    (Some(_), Some(_)) => Found::Duplicate,
                    (Some(v), None) => {
                        Found::Value(String::from_utf8_lossy(v.as_bytes()).into_owned())
                    }
                };
            }
            if found == Found::Missing && self.key_in_query {
                found = args::find_arg(query, name);
            }
            if found == Found::Missing && self.key_in_body {
                if let Some(body) = &ctx.request_body {
                    found = args::find_in_body(content_type, body, name);
                }
            }
            match found {
                Found::Value(v) => {
                    if self.hide_credentials {
                        self.hide(req, ctx, name, content_type);
                    }
                    key = Some(v);
                    break;
                }
                Found::Duplicate => {
                    return Err(("duplicate_key", self.unauthorized(MSG_DUPLICATE)));
                }
                Found::Missing | Found::NotString => {}
            }
        }
        let key = match key {
            Some(k) if !k.is_empty() => k,
            _ => return Err(("no_credentials", self.unauthorized(MSG_NO_KEY))),
        };
        match self
            .keys
            .get(&portcullis_plugin_api::sha256(key.as_bytes()))
        {
            Some(entry) if secure_eq(&entry.key, key.as_bytes()) => Ok(entry),
            _ => Err(("invalid_credentials", self.unauthorized(MSG_INVALID))),
        }
    }

    /// `hide_credentials`: the upstream sees neither the header, nor the query argument, nor
    /// (with `key_in_body`) the body field of that name, wherever the key was found.
    fn hide(&self, req: &RequestView<'_>, ctx: &mut RequestCtx, name: &str, ct: Option<&str>) {
        ctx.remove_upstream_header(name);
        let query = ctx
            .upstream_rewrite
            .query
            .clone()
            .or_else(|| req.uri.query().map(str::to_string));
        if let Some(q) = query {
            if args::find_arg(&q, name) != Found::Missing {
                ctx.upstream_rewrite.query = Some(args::without_arg(&q, name));
            }
        }
        if self.key_in_body {
            let body = ctx
                .request_body_replacement
                .clone()
                .or_else(|| ctx.request_body.clone());
            if let Some(new) = body.and_then(|b| args::remove_from_body(ct, &b, name)) {
                ctx.request_body_replacement = Some(new.into());
            }
        }
    }
}

#[async_trait]
impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        if self.key_in_body {
            Phases::ACCESS | Phases::BUFFER_REQUEST_BODY
        } else {
            Phases::ACCESS
        }
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        if !self.run_on_preflight && req.method == http::Method::OPTIONS {
            return Flow::Continue;
        }
        if auth::skip_when_authenticated(ctx, self.anonymous.is_some()) {
            return Flow::Continue;
        }
        // Log records (kong_record) never show a key, wherever the client put it.
        ctx.extensions
            .insert(portcullis_plugin_api::serialize::RedactHeaders(
                self.key_names
                    .iter()
                    .map(|(_, h)| h.as_str().to_string())
                    .collect(),
            ));
        ctx.extensions
            .insert(portcullis_plugin_api::serialize::RedactQuery(
                self.key_names.iter().map(|(n, _)| n.clone()).collect(),
            ));
        match self.authenticate(req, ctx) {
            Ok(entry) => {
                let (consumer, id) = (entry.consumer.clone(), entry.credential_id.clone());
                auth::authenticated(ctx, &consumer, &id);
                Flow::Continue
            }
            Err((reason, response)) => {
                auth::failed(ctx, NAME, self.anonymous.as_ref(), reason, response)
            }
        }
    }
}

#[cfg(test)]
mod tests;
