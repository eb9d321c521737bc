//! hmac-auth: identifies consumers by an HTTP signature over chosen request headers (Kong's
//! hmac-auth, priority 1030): `Authorization: hmac username="…", algorithm="hmac-sha256",
//! headers="date request-line", signature="<base64>"`, with a `Date`/`X-Date` inside the clock
//! skew and optionally a `Digest: SHA-256=<base64>` of the body.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use openssl::hash::MessageDigest;
use portcullis_plugin_api::auth::{self, secure_eq};
use portcullis_plugin_api::credentials::{validate_as, CredentialKind};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Consumer, Flow, Phases, Plugin,
    PluginFactory, PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;

pub const NAME: &str = "hmac-auth";
/// Kong's PRIORITY for hmac-auth.
pub const PRIORITY: i32 = 1030;
pub const COLLECTION: &str = "hmacauth_credentials";

const MSG_UNAUTHORIZED: &str = "Unauthorized";
const MSG_NO_DATE: &str = "HMAC signature cannot be verified, a valid date or x-date header is required for HMAC Authentication";
const MSG_NOT_VALID: &str = "HMAC signature cannot be verified";
const MSG_NOT_SAME: &str = "HMAC signature does not match";

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
enum Algorithm {
    #[serde(rename = "hmac-sha1")]
    Sha1,
    #[serde(rename = "hmac-sha256")]
    Sha256,
    #[serde(rename = "hmac-sha384")]
    Sha384,
    #[serde(rename = "hmac-sha512")]
    Sha512,
}

impl Algorithm {
    fn from_name(s: &str) -> Option<Algorithm> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    fn digest(self) -> MessageDigest {
        match self {
            Algorithm::Sha1 => MessageDigest::sha1(),
            Algorithm::Sha256 => MessageDigest::sha256(),
            Algorithm::Sha384 => MessageDigest::sha384(),
            Algorithm::Sha512 => MessageDigest::sha512(),
        }
    }
}

fn all_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha512,
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_skew")]
    clock_skew: f64,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    validate_request_body: bool,
    #[serde(default)]
    enforce_headers: Vec<String>,
    #[serde(default = "all_algorithms")]
    algorithms: Vec<Algorithm>,
    #[serde(default)]
    realm: Option<String>,
}

fn default_skew() -> f64 {
    300.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawCredential {
    username: String,
    /// Kong generates a missing secret; a file has nobody to tell it to, so it is required.
    secret: String,
}

static KINDS: [CredentialKind; 1] = [CredentialKind {
    collection: COLLECTION,
    plugin: NAME,
    unique: &["username"],
    validate: validate_as::<RawCredential>,
}];

struct Entry {
    username: String,
    secret: Vec<u8>,
    consumer: Arc<Consumer>,
}

/// One configured hmac-auth instance.
pub struct HmacAuth {
    hide_credentials: bool,
    clock_skew: f64,
    anonymous: Option<Arc<Consumer>>,
    validate_request_body: bool,
    enforce_headers: Vec<String>,
    algorithms: Vec<Algorithm>,
    www_authenticate: String,
    users: HashMap<String, Entry>,
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
        Ok(Arc::new(HmacAuth::from_config(config, ctx)?))
    }
}

/// Kong's header pattern, greedy captures included.
fn pattern() -> Option<&'static regex::Regex> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(
            r#"\s*[Hh]mac\s*username="(.+)",\s*algorithm="(.+)",\s*headers="(.+)",\s*signature="(.+)""#,
        )
        .ok()
    })
    .as_ref()
}

struct Params<'a> {
    username: &'a str,
    algorithm: &'a str,
    headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_params(header: &str) -> Option<Params<'_>> {
    let c = pattern()?.captures(header)?;
    let get = |i| c.get(i).map(|m| m.as_str());
    Some(Params {
        username: get(1)?,
        algorithm: get(2)?,
        headers: get(3)?.split(' ').filter(|h| !h.is_empty()).collect(),
        signature: get(4)?,
    })
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

impl HmacAuth {
    pub fn from_config(
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<HmacAuth, Vec<ConfigError>> {
        let raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        if raw.clock_skew <= 0.0 || !raw.clock_skew.is_finite() {
            errors.push(ConfigError::new(
                "clock_skew",
                "value must be greater than 0",
            ));
        }
        if let Some(realm) = &raw.realm {
            if realm
                .bytes()
                .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
            {
                errors.push(ConfigError::new(
                    "realm",
                    "must not contain quotes, backslashes or control characters",
                ));
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
        let users = ctx
            .credentials_of(COLLECTION)
            .iter()
            .filter_map(|c| {
                let (u, s) = (c.str("username")?, c.str("secret")?);
                Some((
                    u.to_string(),
                    Entry {
                        username: u.to_string(),
                        secret: s.as_bytes().to_vec(),
                        consumer: c.consumer.clone(),
                    },
                ))
            })
            .collect();
        Ok(HmacAuth {
            hide_credentials: raw.hide_credentials,
            clock_skew: raw.clock_skew,
            anonymous,
            validate_request_body: raw.validate_request_body,
            enforce_headers: raw.enforce_headers,
            algorithms: raw.algorithms,
            www_authenticate: match &raw.realm {
                Some(r) => format!("hmac realm=\"{r}\""),
                None => "hmac".to_string(),
            },
            users,
        })
    }

    fn date_ok(&self, req: &RequestView<'_>, name: &str) -> bool {
        let Some(t) = req
            .header(name)
            .and_then(|d| httpdate::parse_http_date(d).ok())
        else {
            return false;
        };
        let t = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as f64)
            .unwrap_or(0.0);
        (unix_now() - t).abs() <= self.clock_skew
    }

    /// Kong's signing string: each listed header as `name: value`, `request-line` as
    /// `METHOD /path?query HTTP/1.1`, `@request-target` as `method /path?query`.
    fn signing_string(req: &RequestView<'_>, headers: &[&str]) -> String {
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut s = String::new();
        for (i, h) in headers.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            match req.header(h) {
                Some(v) => {
                    s.push_str(h);
                    s.push_str(": ");
                    s.push_str(v);
                }
                None if *h == "@request-target" => {
                    s.push_str(&format!(
                        "{h}: {} {uri}",
                        req.method.as_str().to_ascii_lowercase()
                    ));
                }
                None if *h == "request-line" => {
                    s.push_str(&format!("{} {uri} HTTP/1.1", req.method.as_str()));
                }
                None => {
                    s.push_str(h);
                    s.push(':');
                }
            }
        }
        s
    }

    fn body_ok(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> bool {
        let body = ctx.request_body.as_deref().unwrap_or(&[]);
        match req.header("digest") {
            None => body.is_empty(),
            Some(received) => {
                let created = format!(
                    "SHA-256={}",
                    base64::engine::general_purpose::STANDARD
                        .encode(portcullis_plugin_api::sha256(body))
                );
                created == received
            }
        }
    }

    fn authenticate(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<&Entry, (&'static str, &'static str)> {
        let authorization = req.header("authorization");
        let proxy_authorization = req.header("proxy-authorization");
        if authorization.is_none() && proxy_authorization.is_none() {
            return Err(("no_credentials", MSG_UNAUTHORIZED));
        }
        if !(self.date_ok(req, "x-date") || self.date_ok(req, "date")) {
            return Err(("invalid_date", MSG_NO_DATE));
        }
        let params = match proxy_authorization.and_then(parse_params) {
            Some(p) => {
                if self.hide_credentials {
                    ctx.remove_upstream_header("proxy-authorization");
                }
                Some(p)
            }
            None => {
                if self.hide_credentials {
                    ctx.remove_upstream_header("authorization");
                }
                authorization.and_then(parse_params)
            }
        };
        let Some(params) = params else {
            return Err(("invalid_credentials", MSG_NOT_VALID));
        };
        if !self
            .enforce_headers
            .iter()
            .all(|h| params.headers.contains(&h.as_str()))
        {
            return Err(("enforced_header_missing", MSG_NOT_VALID));
        }
        let Some(alg) =
            Algorithm::from_name(params.algorithm).filter(|a| self.algorithms.contains(a))
        else {
            return Err(("invalid_algorithm", MSG_NOT_VALID));
        };
        let Some(entry) = self.users.get(params.username) else {
            return Err(("invalid_credentials", MSG_NOT_VALID));
        };
        let signing = Self::signing_string(req, &params.headers);
        let expected = openssl::pkey::PKey::hmac(&entry.secret)
            .and_then(|k| {
                let mut s = openssl::sign::Signer::new(alg.digest(), &k)?;
                s.update(signing.as_bytes())?;
                s.sign_to_vec()
            })
            .ok();
        let given = base64::engine::general_purpose::STANDARD
            .decode(params.signature)
            .ok();
        match (expected, given) {
            (Some(e), Some(g)) if secure_eq(&e, &g) => {}
            _ => return Err(("invalid_signature", MSG_NOT_SAME)),
        }
        if self.validate_request_body && !self.body_ok(req, ctx) {
            return Err(("invalid_digest", MSG_NOT_SAME));
        }
        Ok(entry)
    }
}

#[async_trait]
impl Plugin for HmacAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        if self.validate_request_body {
            Phases::ACCESS | Phases::BUFFER_REQUEST_BODY
        } else {
            Phases::ACCESS
        }
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        if auth::skip_when_authenticated(ctx, self.anonymous.is_some()) {
            return Flow::Continue;
        }
        match self.authenticate(req, ctx) {
            Ok(entry) => {
                let (consumer, name) = (entry.consumer.clone(), entry.username.clone());
                auth::authenticated(ctx, &consumer, &name);
                Flow::Continue
            }
            Err((reason, message)) => auth::failed(
                ctx,
                NAME,
                self.anonymous.as_ref(),
                reason,
                PluginResponse::message(401, message)
                    .with_header("WWW-Authenticate", &self.www_authenticate),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_parameters_as_kong() {
        let p = parse_params(
            r#"hmac username="alice", algorithm="hmac-sha256", headers="date request-line", signature="c2ln""#,
        )
        .unwrap();
        assert_eq!(p.username, "alice");
        assert_eq!(p.algorithm, "hmac-sha256");
        assert_eq!(p.headers, ["date", "request-line"]);
        assert_eq!(p.signature, "c2ln");
        assert!(parse_params(r#"hmac username="alice", signature="x""#).is_none());
    }
}
