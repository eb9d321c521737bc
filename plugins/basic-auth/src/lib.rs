//! basic-auth: identifies consumers by `Authorization: Basic` (or `Proxy-Authorization`)
//! username and password (Kong's basic-auth, priority 1100).
//!
//! Passwords are hashed at load with PBKDF2-HMAC-SHA256 (per-credential random salt,
//! [`ITERATIONS`] iterations) and the plain text is not kept. Hashing is slow on purpose, so:
//! hashes are cached process-wide by (username, SHA-256 of the password) and survive reloads,
//! and a successful verification is remembered for [`SUCCESS_TTL`] per (username, SHA-256 of
//! the supplied password).

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use openssl::hash::MessageDigest;
use portcullis_plugin_api::auth::{self, secure_eq};
use portcullis_plugin_api::credentials::{validate_as, CredentialKind};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Consumer, Flow, Plugin, PluginFactory,
    PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;

pub const NAME: &str = "basic-auth";
/// Kong's PRIORITY for basic-auth.
pub const PRIORITY: i32 = 1100;
pub const COLLECTION: &str = "basicauth_credentials";
/// PBKDF2-HMAC-SHA256 iterations.
pub const ITERATIONS: usize = 100_000;
/// How long a verified (username, password) pair is accepted without hashing again.
pub const SUCCESS_TTL: Duration = Duration::from_secs(30);
/// At most this many remembered verifications per instance.
const SUCCESS_CAPACITY: usize = 10_000;

const MSG_UNAUTHORIZED: &str = "Unauthorized";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_realm() -> String {
    "service".to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawCredential {
    username: String,
    password: String,
}

static KINDS: [CredentialKind; 1] = [CredentialKind {
    collection: COLLECTION,
    plugin: NAME,
    unique: &["username"],
    validate: validate_as::<RawCredential>,
}];

/// A salted PBKDF2 hash of one password.
#[derive(Clone, Copy)]
struct Hashed {
    salt: [u8; 16],
    hash: [u8; 32],
}

fn pbkdf2(password: &[u8], salt: &[u8; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Fails only on an OpenSSL internal error; an all-zero hash then matches nothing
    // (a real hash is never all zeroes in practice, and `verify` also refuses it).
    if openssl::pkcs5::pbkdf2_hmac(
        password,
        salt,
        ITERATIONS,
        MessageDigest::sha256(),
        &mut out,
    )
    .is_err()
    {
        out = [0u8; 32];
    }
    out
}

fn hash_new(password: &[u8]) -> Hashed {
    let mut salt = [0u8; 16];
    if openssl::rand::rand_bytes(&mut salt).is_err() {
        // Without randomness the salt falls back to the password's own digest: still a valid
        // (deterministic) salt, never a shared one.
        salt.copy_from_slice(&openssl::sha::sha256(password)[..16]);
    }
    Hashed {
        salt,
        hash: pbkdf2(password, &salt),
    }
}

/// Hashes each password, spread over the available cores.
fn hash_all(todo: &[(&HashKey, &str)]) -> HashMap<HashKey, Hashed> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(todo.len().max(1));
    let chunk = todo.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(k, p)| ((*k).clone(), hash_new(p.as_bytes())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // A panicked hashing thread leaves its credentials out: they fail to authenticate
        // instead of the load crashing.
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .flatten()
            .collect()
    })
}

fn verify(hashed: &Hashed, password: &[u8]) -> bool {
    let got = pbkdf2(password, &hashed.salt);
    got != [0u8; 32] && secure_eq(&got, &hashed.hash)
}

type HashKey = (String, [u8; 32]);

/// Hashed against when the username is unknown, so that answer takes as long as a wrong
/// password; made once per process.
fn decoy() -> Hashed {
    static DECOY: OnceLock<Hashed> = OnceLock::new();
    *DECOY.get_or_init(|| hash_new(b"decoy"))
}

/// Hashes of configured passwords, process-wide, so a reload does not hash every credential
/// again. Pruned at each build to the credentials of that configuration.
fn hash_cache() -> &'static Mutex<HashMap<HashKey, Hashed>> {
    static CACHE: OnceLock<Mutex<HashMap<HashKey, Hashed>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// (username, password) → a digest that keys remembered verifications.
fn pair_digest(username: &[u8], password: &[u8]) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(&(username.len() as u64).to_be_bytes());
    h.update(username);
    h.update(password);
    h.finish()
}

struct Entry {
    username: String,
    hashed: Hashed,
    consumer: Arc<Consumer>,
}

/// One configured basic-auth instance.
pub struct BasicAuth {
    anonymous: Option<Arc<Consumer>>,
    hide_credentials: bool,
    www_authenticate: String,
    users: HashMap<String, Arc<Entry>>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
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
        Ok(Arc::new(BasicAuth::from_config(config, ctx)?))
    }
}

fn check_realm(realm: &str) -> Result<(), ConfigError> {
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

impl BasicAuth {
    pub fn from_config(
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<BasicAuth, Vec<ConfigError>> {
        let raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        if let Err(e) = check_realm(&raw.realm) {
            errors.push(e);
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

        let creds = ctx.credentials_of(COLLECTION);
        let mut wanted = Vec::with_capacity(creds.len());
        for cred in creds {
            let (Some(username), Some(password)) = (cred.str("username"), cred.str("password"))
            else {
                continue;
            };
            let key = (
                username.to_string(),
                portcullis_plugin_api::sha256(password.as_bytes()),
            );
            wanted.push((key, password, cred.consumer.clone()));
        }
        let known: HashMap<HashKey, Hashed> = {
            let cache = hash_cache().lock().unwrap_or_else(|e| e.into_inner());
            wanted
                .iter()
                .filter_map(|(k, _, _)| cache.get(k).map(|h| (k.clone(), *h)))
                .collect()
        };
        // New passwords are hashed on every core: a first load with many credentials is
        // PBKDF2-bound.
        let todo: Vec<(&HashKey, &str)> = wanted
            .iter()
            .filter(|(k, _, _)| !known.contains_key(k))
            .map(|(k, p, _)| (k, *p))
            .collect();
        let fresh = hash_all(&todo);
        let mut users = HashMap::with_capacity(wanted.len());
        for (key, _, consumer) in &wanted {
            let Some(hashed) = known.get(key).or_else(|| fresh.get(key)).copied() else {
                continue;
            };
            users.insert(
                key.0.clone(),
                Arc::new(Entry {
                    username: key.0.clone(),
                    hashed,
                    consumer: consumer.clone(),
                }),
            );
        }
        {
            let mut cache = hash_cache().lock().unwrap_or_else(|e| e.into_inner());
            cache.extend(fresh);
            let keep: HashSet<&HashKey> = wanted.iter().map(|(k, _, _)| k).collect();
            cache.retain(|k, _| keep.contains(k));
        }
        Ok(BasicAuth {
            anonymous,
            hide_credentials: raw.hide_credentials,
            www_authenticate: format!("Basic realm=\"{}\"", raw.realm),
            users,
            verified: Mutex::new(HashMap::new()),
        })
    }

    fn unauthorized(&self) -> PluginResponse {
        PluginResponse::message(401, MSG_UNAUTHORIZED)
            .with_header("WWW-Authenticate", &self.www_authenticate)
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        let map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember(&self, key: [u8; 32]) {
        let mut map = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= SUCCESS_CAPACITY {
            map.retain(|_, until| *until > now);
            if map.len() >= SUCCESS_CAPACITY {
                map.clear();
            }
        }
        map.insert(key, now + SUCCESS_TTL);
    }

    /// PBKDF2 off the proxy's worker threads.
    async fn verify_slow(&self, hashed: Hashed, password: Vec<u8>) -> bool {
        if tokio::runtime::Handle::try_current().is_err() {
            return verify(&hashed, &password);
        }
        // A panicked or cancelled hashing task counts as a wrong password.
        tokio::task::spawn_blocking(move || verify(&hashed, &password))
            .await
            .unwrap_or_default()
    }

    async fn authenticate(
        &self,
        req: &RequestView<'_>,
        ctx: &mut RequestCtx,
    ) -> Result<Arc<Entry>, &'static str> {
        let authorization = req.header("authorization");
        let proxy_authorization = req.header("proxy-authorization");
        if authorization.is_none() && proxy_authorization.is_none() {
            return Err("no_credentials");
        }
        // Kong's order: Proxy-Authorization first, then Authorization; each header examined is
        // hidden from the upstream when `hide_credentials` is set.
        let mut found = None;
        if let Some(v) = proxy_authorization {
            if self.hide_credentials {
                ctx.remove_upstream_header("proxy-authorization");
            }
            found = parse_basic(v)
                .and_then(|(u, p)| self.users.get(u.as_str()).map(|e| (e.clone(), p)));
        }
        let (entry, password) = match found {
            Some(f) => f,
            None => {
                if self.hide_credentials && authorization.is_some() {
                    ctx.remove_upstream_header("authorization");
                }
                let Some((username, password)) = authorization.and_then(parse_basic) else {
                    return Err("no_credentials");
                };
                match self.users.get(username.as_str()) {
                    Some(e) => (e.clone(), password),
                    None => {
                        let _ = self.verify_slow(decoy(), password).await;
                        return Err("invalid_credentials");
                    }
                }
            }
        };
        let key = pair_digest(entry.username.as_bytes(), &password);
        if self.remembered(&key) {
            return Ok(entry);
        }
        if self.verify_slow(entry.hashed, password).await {
            self.remember(key);
            Ok(entry)
        } else {
            Err("invalid_credentials")
        }
    }
}

/// Kong's parsing: `\s*[Bb]asic\s*(.+)` anywhere in the header, base64 (padding optional), then
/// `([^:]+):(.*)` — the first non-empty run of non-colons before a colon is the username.
fn parse_basic(header: &str) -> Option<(String, Vec<u8>)> {
    let at = header
        .match_indices("asic")
        .find(|(i, _)| *i > 0 && matches!(header.as_bytes()[i - 1], b'B' | b'b'))?
        .0;
    let encoded = header[at + 4..].trim_start();
    let encoded = encoded.split('=').next().unwrap_or("");
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let decoded = engine.decode(encoded).ok()?;
    let start = decoded.iter().position(|b| *b != b':')?;
    let colon = start + decoded[start..].iter().position(|b| *b == b':')?;
    let username = String::from_utf8(decoded[start..colon].to_vec()).ok()?;
    let rest = &decoded[colon + 1..];
    let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    Some((username, rest[..end].to_vec()))
}

#[async_trait]
impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        if auth::skip_when_authenticated(ctx, self.anonymous.is_some()) {
            return Flow::Continue;
        }
        match self.authenticate(req, ctx).await {
            Ok(entry) => {
                auth::authenticated(ctx, &entry.consumer, &entry.username);
                Flow::Continue
            }
            Err(reason) => auth::failed(
                ctx,
                NAME,
                self.anonymous.as_ref(),
                reason,
                self.unauthorized(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn header_parsing_as_kong() {
        let p = |h: &str| parse_basic(h).map(|(u, p)| (u, String::from_utf8(p).unwrap()));
        assert_eq!(
            p(&format!("Basic {}", b64("alice:s3:cret"))),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert_eq!(
            p(&format!("basic   {}", b64("bob:"))),
            Some(("bob".into(), String::new()))
        );
        let unpadded = b64("ab:c").trim_end_matches('=').to_string();
        assert_eq!(
            p(&format!("Basic {unpadded}")),
            Some(("ab".into(), "c".into()))
        );
        assert_eq!(p(&format!("Basic {}", b64("nocolon"))), None);
        assert_eq!(p(&format!("Basic {}", b64(":pw"))), None);
        assert_eq!(p(&format!("Bearer {}", b64("a:b"))), None);
        assert_eq!(p("Basic !!!"), None);
    }

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash_new(b"pw");
        let b = hash_new(b"pw");
        assert!(verify(&a, b"pw"));
        assert!(!verify(&a, b"pW"));
        assert_ne!(
            a.hash, b.hash,
            "two credentials with one password get different hashes"
        );
    }

    #[test]
    fn parallel_hashing_covers_every_credential() {
        let keys: Vec<HashKey> = (0..3).map(|i| (format!("u{i}"), [i as u8; 32])).collect();
        let todo: Vec<(&HashKey, &str)> = keys.iter().zip(["a", "b", "c"]).collect();
        let out = hash_all(&todo);
        assert_eq!(out.len(), 3);
        assert!(verify(&out[&keys[1]], b"b"));
        assert!(!verify(&out[&keys[1]], b"a"));
        assert!(hash_all(&[]).is_empty());
    }
}
