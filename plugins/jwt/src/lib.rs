//! jwt: identifies consumers by a signed JSON Web Token (Kong's jwt, priority 1450).
//!
//! Parsing and every check follow Kong's `jwt_parser.lua` and `handler.lua` (same order, same
//! messages). The credential decides the algorithm: a token whose `alg` differs from its
//! credential's is refused before any signature check, so an HS256 token signed with an RSA
//! public key as the secret never meets an RSA credential's key as an HMAC secret, and `none` is
//! not an algorithm at all. Asymmetric signatures are verified by josekit (OpenSSL underneath);
//! HMAC is computed with OpenSSL and compared in constant time. A verified signature is
//! remembered per token (by its SHA-256) until the token's `exp`, at most [`CACHE_TTL`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use josekit::jws::JwsVerifier;
use openssl::hash::MessageDigest;
use portcullis_plugin_api::auth::{self, secure_eq};
use portcullis_plugin_api::credentials::CredentialKind;
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Consumer, Flow, Plugin, PluginFactory,
    PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;
use serde_json::{Map, Value};

pub const NAME: &str = "jwt";
/// Kong's PRIORITY for jwt.
pub const PRIORITY: i32 = 1450;
pub const COLLECTION: &str = "jwt_secrets";
/// The longest a verified signature is remembered.
pub const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_CAPACITY: usize = 10_000;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
enum Claim {
    #[serde(rename = "exp")]
    Exp,
    #[serde(rename = "nbf")]
    Nbf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_uri_params")]
    uri_param_names: Vec<String>,
    #[serde(default)]
    cookie_names: Vec<String>,
    #[serde(default = "default_key_claim")]
    key_claim_name: String,
    #[serde(default)]
    secret_is_base64: bool,
    #[serde(default)]
    claims_to_verify: Option<Vec<Claim>>,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default = "yes")]
    run_on_preflight: bool,
    #[serde(default)]
    maximum_expiration: f64,
    #[serde(default = "default_header_names")]
    header_names: Vec<String>,
    #[serde(default)]
    realm: Option<String>,
}

fn default_uri_params() -> Vec<String> {
    vec!["jwt".into()]
}
fn default_key_claim() -> String {
    "iss".into()
}
fn default_header_names() -> Vec<String> {
    vec!["authorization".into()]
}
fn yes() -> bool {
    true
}

/// The algorithms of Kong's `jwt_secrets.algorithm`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    ES512,
    PS256,
    PS384,
    PS512,
    EdDSA,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    fn from_name(s: &str) -> Option<Algorithm> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    fn hmac_digest(self) -> Option<MessageDigest> {
        match self {
            Algorithm::HS256 => Some(MessageDigest::sha256()),
            Algorithm::HS384 => Some(MessageDigest::sha384()),
            Algorithm::HS512 => Some(MessageDigest::sha512()),
            _ => None,
        }
    }

    /// A verifier for an asymmetric algorithm's PEM public key.
    fn public_verifier(self, pem: &str) -> Result<Box<dyn JwsVerifier>, String> {
        use josekit::jws;
        let pem = pem.as_bytes();
        let v: Result<Box<dyn JwsVerifier>, josekit::JoseError> = match self {
            Algorithm::RS256 => jws::RS256.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            Algorithm::RS384 => jws::RS384.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            Algorithm::RS512 => jws::RS512.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                let alg = match self {
                    Algorithm::PS256 => jws::PS256,
                    Algorithm::PS384 => jws::PS384,
                    _ => jws::PS512,
                };
                // josekit takes an SPKI only with the RSASSA-PSS OID; Kong's keys are plain RSA
                // keys, which josekit accepts in their PKCS#1 form.
                alg.verifier_from_pem(pem)
                    .or_else(|e| match pkcs1_pem(pem) {
                        Some(pkcs1) => alg.verifier_from_pem(pkcs1),
                        None => Err(e),
                    })
                    .map(|v| Box::new(v) as _)
            }
            Algorithm::ES256 => jws::ES256.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            Algorithm::ES384 => jws::ES384.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            Algorithm::ES512 => jws::ES512.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            Algorithm::EdDSA => jws::EdDSA.verifier_from_pem(pem).map(|v| Box::new(v) as _),
            _ => return Err("not an asymmetric algorithm".into()),
        };
        v.map_err(|e| match e {
            josekit::JoseError::InvalidKeyFormat(e) => e.to_string(),
            other => other.to_string(),
        })
    }
}

/// A plain RSA public key (SPKI) re-encoded as PKCS#1 `RSA PUBLIC KEY`.
fn pkcs1_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let key = openssl::pkey::PKey::public_key_from_pem(pem).ok()?;
    key.rsa().ok()?.public_key_to_pem_pkcs1().ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    key: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    rsa_public_key: Option<String>,
    #[serde(default = "hs256")]
    algorithm: Algorithm,
}

fn hs256() -> Algorithm {
    Algorithm::HS256
}

/// Kong generates a missing `key`/`secret`; a declarative file has nobody to tell the generated
/// value to, so both are required here, and an asymmetric key must parse for its algorithm.
fn validate_secret(value: &Value) -> Vec<ConfigError> {
    let raw: RawSecret = match parse_config(value) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    if raw.key.is_empty() {
        errors.push(ConfigError::new("key", "must not be empty"));
    }
    if raw.algorithm.hmac_digest().is_some() {
        if raw.secret.as_deref().unwrap_or("").is_empty() {
            errors.push(ConfigError::new(
                "secret",
                format!(
                    "required for {} (a generated secret could not be shared)",
                    raw.algorithm.name()
                ),
            ));
        }
    } else {
        match raw.rsa_public_key.as_deref() {
            None | Some("") => errors.push(ConfigError::new(
                "rsa_public_key",
                format!("required for {}", raw.algorithm.name()),
            )),
            Some(pem) => {
                if let Err(e) = raw.algorithm.public_verifier(pem) {
                    errors.push(ConfigError::new(
                        "rsa_public_key",
                        format!("invalid key for {}: {e}", raw.algorithm.name()),
                    ));
                }
            }
        }
    }
    errors
}

static KINDS: [CredentialKind; 1] = [CredentialKind {
    collection: COLLECTION,
    plugin: NAME,
    unique: &["key"],
    validate: validate_secret,
}];

enum Verifier {
    /// `None`: the secret is not valid base64 (`secret_is_base64`), Kong's "Invalid key/secret".
    Hmac(MessageDigest, Option<Vec<u8>>),
    Public(Box<dyn JwsVerifier>),
}

struct Secret {
    key: String,
    algorithm: Algorithm,
    verifier: Verifier,
    consumer: Arc<Consumer>,
}

impl Secret {
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.verifier {
            Verifier::Hmac(md, Some(secret)) => {
                hmac(*md, secret, message).is_some_and(|mac| secure_eq(&mac, signature))
            }
            Verifier::Hmac(_, None) => false,
            Verifier::Public(v) => v.verify(message, signature).is_ok(),
        }
    }
}

fn hmac(md: MessageDigest, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
    let pkey = openssl::pkey::PKey::hmac(key).ok()?;
    let mut signer = openssl::sign::Signer::new(md, &pkey).ok()?;
    signer.update(message).ok()?;
    signer.sign_to_vec().ok()
}

fn b64url(input: &str) -> Option<Vec<u8>> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    engine.decode(input).ok()
}

/// What a token earned once its signature verified.
#[derive(Clone)]
struct Verified {
    secret: Arc<Secret>,
    claims: Arc<Map<String, Value>>,
    until: Instant,
}

/// One configured jwt instance.
pub struct Jwt {
    uri_param_names: Vec<String>,
    cookie_names: Vec<String>,
    header_names: Vec<http::HeaderName>,
    key_claim_name: String,
    claims_to_verify: Vec<Claim>,
    maximum_expiration: f64,
    anonymous: Option<Arc<Consumer>>,
    run_on_preflight: bool,
    www_authenticate: String,
    www_authenticate_error: String,
    msg_no_key_claim: String,
    msg_empty_key_claim: String,
    msg_no_credentials: String,
    secrets: HashMap<String, Arc<Secret>>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
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
        config: &Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(Jwt::from_config(config, ctx)?))
    }
}

/// A failure: metric reason and the response.
type Failure = (&'static str, PluginResponse);

impl Jwt {
    pub fn from_config(config: &Value, ctx: &BuildContext) -> Result<Jwt, Vec<ConfigError>> {
        let raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut header_names = Vec::new();
        for (i, name) in raw.header_names.iter().enumerate() {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => header_names.push(h),
                Err(_) => errors.push(ConfigError::new(
                    format!("header_names[{i}]"),
                    format!("`{name}` is not a valid header name"),
                )),
            }
        }
        if !(0.0..=31_536_000.0).contains(&raw.maximum_expiration) {
            errors.push(ConfigError::new(
                "maximum_expiration",
                "value should be between 0 and 31536000",
            ));
        }
        let mut claims_to_verify = Vec::new();
        for c in raw.claims_to_verify.iter().flatten() {
            if !claims_to_verify.contains(c) {
                claims_to_verify.push(*c);
            }
        }
        if raw.maximum_expiration > 0.0 && !claims_to_verify.contains(&Claim::Exp) {
            errors.push(ConfigError::new(
                "claims_to_verify",
                "must contain 'exp' when maximum_expiration is set",
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
        if raw.key_claim_name.is_empty() {
            errors.push(ConfigError::new("key_claim_name", "must not be empty"));
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

        let mut secrets = HashMap::new();
        for cred in ctx.credentials_of(COLLECTION) {
            let Ok(s) = serde_json::from_value::<RawSecret>(cred.fields.clone()) else {
                continue;
            };
            let verifier = match s.algorithm.hmac_digest() {
                Some(md) => {
                    let secret = s.secret.unwrap_or_default();
                    let bytes = if raw.secret_is_base64 {
                        b64url(&secret)
                    } else {
                        Some(secret.into_bytes())
                    };
                    Verifier::Hmac(md, bytes)
                }
                None => match s
                    .rsa_public_key
                    .as_deref()
                    .map(|pem| s.algorithm.public_verifier(pem))
                {
                    Some(Ok(v)) => Verifier::Public(v),
                    // The credential validator already refused these.
                    _ => continue,
                },
            };
            secrets.insert(
                s.key.clone(),
                Arc::new(Secret {
                    key: s.key,
                    algorithm: s.algorithm,
                    verifier,
                    consumer: cred.consumer.clone(),
                }),
            );
        }
        let (base, with_error) = match &raw.realm {
            Some(r) => (
                format!("Bearer realm=\"{r}\""),
                format!("Bearer realm=\"{r}\", error=\"invalid_token\""),
            ),
            None => (
                "Bearer".to_string(),
                "Bearer error=\"invalid_token\"".to_string(),
            ),
        };
        let k = &raw.key_claim_name;
        Ok(Jwt {
            uri_param_names: raw.uri_param_names,
            cookie_names: raw.cookie_names,
            header_names,
            msg_no_key_claim: format!("No mandatory '{k}' in claims"),
            msg_empty_key_claim: format!("Invalid '{k}' in claims"),
            msg_no_credentials: format!("No credentials found for given '{k}'"),
            key_claim_name: raw.key_claim_name,
            claims_to_verify,
            maximum_expiration: raw.maximum_expiration,
            anonymous,
            run_on_preflight: raw.run_on_preflight,
            www_authenticate: base,
            www_authenticate_error: with_error,
            secrets,
            verified: Mutex::new(HashMap::new()),
        })
    }

    fn fail(&self, reason: &'static str, message: impl Into<String>) -> Failure {
        (
            reason,
            PluginResponse::message(401, message)
                .with_header("WWW-Authenticate", &self.www_authenticate_error),
        )
    }

    /// Kong's `retrieve_tokens`: query arguments, then cookies, then `Bearer` headers; the same
    /// token found twice counts once.
    fn tokens(&self, req: &RequestView<'_>) -> Vec<Option<String>> {
        let mut found: Vec<Option<String>> = Vec::new();
        let mut add = |t: Option<String>| {
            if !found.contains(&t) {
                found.push(t);
            }
        };
        let query = req.uri.query().unwrap_or("");
        if !self.uri_param_names.is_empty() && !query.is_empty() {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = match pair.split_once('=') {
                    Some((k, v)) => (k, Some(v)),
                    None => (pair, None),
                };
                let k = portcullis_plugin_api::percent_decode(k);
                if !self.uri_param_names.contains(&k) {
                    continue;
                }
                match v.map(portcullis_plugin_api::percent_decode) {
                    // A bare `?jwt` is Lua `true`: Kong's "Unrecognizable token".
                    None => add(None),
                    Some(v) if v.is_empty() => {}
                    Some(v) => add(Some(v)),
                }
            }
        }
        for name in &self.cookie_names {
            if let Some(v) = cookie(req.headers, name) {
                add(Some(v.to_string()));
            }
        }
        for name in &self.header_names {
            if let Some(t) = req
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
            {
                add(Some(t.to_string()));
            }
        }
        found
    }

    fn check_claims(&self, claims: &Map<String, Value>) -> Result<(), Failure> {
        let now = unix_now();
        let mut errors = Map::new();
        for claim in &self.claims_to_verify {
            let (name, value) = match claim {
                Claim::Exp => ("exp", claims.get("exp")),
                Claim::Nbf => ("nbf", claims.get("nbf")),
            };
            let Some(n) = value.and_then(Value::as_f64) else {
                errors.insert(name.into(), "must be a number".into());
                continue;
            };
            let bad = match claim {
                Claim::Exp => (n <= now).then_some("token expired"),
                Claim::Nbf => (n > now).then_some("token not valid yet"),
            };
            if let Some(msg) = bad {
                errors.insert(name.into(), msg.into());
            }
        }
        if errors.is_empty() && self.maximum_expiration > 0.0 {
            match claims.get("exp").and_then(Value::as_f64) {
                Some(exp) if exp - now <= self.maximum_expiration => {}
                _ => {
                    errors.insert("exp".into(), "exceeds maximum allowed expiration".into());
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&Value::Object(errors)).unwrap_or_default();
        let mut r = PluginResponse::raw(401, body)
            .with_header("WWW-Authenticate", &self.www_authenticate_error);
        r.content_type = Some("application/json; charset=utf-8".into());
        Err(("invalid_claims", r))
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Verified> {
        let map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        map.get(digest)
            .filter(|v| v.until > Instant::now())
            .cloned()
    }

    fn remember(&self, digest: [u8; 32], verified: Verified) {
        let mut map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= CACHE_CAPACITY {
            map.retain(|_, v| v.until > now);
            if map.len() >= CACHE_CAPACITY {
                map.clear();
            }
        }
        map.insert(digest, verified);
    }

    /// Decoding, key lookup and signature: Kong's order and messages.
    fn verify_token(&self, token: &str) -> Result<Verified, Failure> {
        let mut parts = token.splitn(3, '.');
        let (Some(h64), Some(c64), Some(s64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(self.fail("bad_token", "Bad token; invalid JSON"));
        };
        let json = |s: &str| b64url(s).and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let (Some(Value::Object(header)), Some(claims)) = (json(h64), json(c64)) else {
            return Err(self.fail("bad_token", "Bad token; invalid JSON"));
        };
        let Some(alg) = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(Algorithm::from_name)
        else {
            return Err(self.fail("bad_token", "Bad token; invalid alg"));
        };
        let Value::Object(claims) = claims else {
            return Err(self.fail("bad_token", "Bad token; invalid claims"));
        };
        let Some(signature) = b64url(s64) else {
            return Err(self.fail("bad_token", "Bad token; invalid signature"));
        };

        let k = self.key_claim_name.as_str();
        let key = match claims
            .get(k)
            .filter(|v| !v.is_null())
            .or_else(|| header.get(k).filter(|v| !v.is_null()))
        {
            None => return Err(self.fail("no_key_claim", self.msg_no_key_claim.clone())),
            Some(Value::String(s)) if s.is_empty() => {
                return Err(self.fail("no_key_claim", self.msg_empty_key_claim.clone()))
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => None,
        };
        let Some(secret) = key.and_then(|k| self.secrets.get(&k)) else {
            return Err(self.fail("unknown_key", self.msg_no_credentials.clone()));
        };
        if alg != secret.algorithm {
            return Err(self.fail("invalid_algorithm", "Invalid algorithm"));
        }
        if matches!(secret.verifier, Verifier::Hmac(_, None)) {
            return Err(self.fail("invalid_secret", "Invalid key/secret"));
        }
        let message = &token.as_bytes()[..h64.len() + 1 + c64.len()];
        if !secret.verify(message, &signature) {
            return Err(self.fail("invalid_signature", "Invalid signature"));
        }
        let mut until = Instant::now() + CACHE_TTL;
        if let Some(exp) = claims.get("exp").and_then(Value::as_f64) {
            let left = exp - unix_now();
            until = until
                .min(Instant::now() + Duration::try_from_secs_f64(left).unwrap_or(Duration::ZERO));
        }
        Ok(Verified {
            secret: secret.clone(),
            claims: Arc::new(claims),
            until,
        })
    }

    fn authenticate(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Result<(), Failure> {
        let tokens = self.tokens(req);
        let token = match tokens.as_slice() {
            [] => {
                return Err((
                    "no_credentials",
                    PluginResponse::message(401, "Unauthorized")
                        .with_header("WWW-Authenticate", &self.www_authenticate),
                ))
            }
            [Some(t)] => t,
            [None] => return Err(self.fail("bad_token", "Unrecognizable token")),
            _ => return Err(self.fail("multiple_tokens", "Multiple tokens provided")),
        };
        let digest = portcullis_plugin_api::sha256(token.as_bytes());
        let verified = match self.cached(&digest) {
            Some(v) => v,
            None => {
                let v = self.verify_token(token)?;
                if v.until > Instant::now() {
                    self.remember(digest, v.clone());
                }
                v
            }
        };
        self.check_claims(&verified.claims)?;
        auth::authenticated(ctx, &verified.secret.consumer, &verified.secret.key);
        ctx.shared.insert("authenticated_jwt_token", token.clone());
        Ok(())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0)
}

/// Kong's `\s*[Bb]earer\s+(.+)`, unanchored.
fn bearer(value: &str) -> Option<&str> {
    let b = value.as_bytes();
    value.match_indices("earer").find_map(|(i, _)| {
        if i == 0 || !matches!(b[i - 1], b'B' | b'b') {
            return None;
        }
        let rest = &value[i + 5..];
        let trimmed = rest.trim_start();
        (trimmed.len() < rest.len() && !trimmed.is_empty()).then_some(trimmed)
    })
}

/// nginx's `$cookie_<name>`: the first cookie of that name.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some(v)
        })
}

#[async_trait]
impl Plugin for Jwt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        if !self.run_on_preflight && req.method == http::Method::OPTIONS {
            return Flow::Continue;
        }
        if auth::skip_when_authenticated(ctx, self.anonymous.is_some()) {
            return Flow::Continue;
        }
        // Log records (kong_record) never show a token, wherever the client put it.
        ctx.extensions
            .insert(portcullis_plugin_api::serialize::RedactHeaders(
                self.header_names
                    .iter()
                    .map(|h| h.as_str().to_string())
                    .collect(),
            ));
        ctx.extensions
            .insert(portcullis_plugin_api::serialize::RedactQuery(
                self.uri_param_names.clone(),
            ));
        match self.authenticate(req, ctx) {
            Ok(()) => Flow::Continue,
            Err((reason, response)) => {
                auth::failed(ctx, NAME, self.anonymous.as_ref(), reason, response)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_extraction_as_kong() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc"), Some("abc"));
        assert_eq!(bearer("Bearerabc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Basic x"), None);
    }

    #[test]
    fn cookies_first_match() {
        let mut h = http::HeaderMap::new();
        h.append("cookie", "a=1; jwt=tok; jwt=other".parse().unwrap());
        assert_eq!(cookie(&h, "jwt"), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn secret_validation() {
        let e = validate_secret(&serde_json::json!({"key": "k", "algorithm": "RS256"}));
        assert_eq!(e[0].path, "rsa_public_key");
        let e = validate_secret(&serde_json::json!({"key": "k"}));
        assert_eq!(e[0].path, "secret");
        let e =
            validate_secret(&serde_json::json!({"key": "k", "secret": "s", "algorithm": "none"}));
        assert_eq!(e[0].path, "algorithm");
        assert!(validate_secret(&serde_json::json!({"key": "k", "secret": "s"})).is_empty());
    }
}
