//! session: cookie sessions for the authentication plugins (Kong's session, priority 1900).
//!
//! After another plugin identified a consumer with a credential, the response sets an
//! encrypted, authenticated cookie holding the consumer id, the credential identifier and the
//! authenticated groups; later requests presenting it are identified through
//! [`auth::authenticated`] before the authentication plugins run (so those with `anonymous` set
//! skip: Kong's logical OR). Timeouts follow lua-resty-session 4 (idling, rolling, absolute;
//! renewal after ¾ of the rolling timeout; touches), logout by method plus query or body
//! argument clears the cookie. Cookie storage only: there is no database for Kong's `kong`
//! storage. The secret and cookie contents are never logged.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cookie;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cookie::{Keys, Kind, Meta};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Consumer, Flow, Phases, Plugin,
    PluginFactory, PluginResponse, RequestCtx, RequestView, ResponseHead,
};
use portcullis_plugin_api::{auth, tracing};
use serde::{Deserialize, Serialize};

pub const NAME: &str = "session";
/// Kong's PRIORITY for session: before every authentication plugin.
pub const PRIORITY: i32 = 1900;

/// lua-resty-session's limits: one cookie of 4 KiB (we do not split into chunks), the longest
/// persistent cookie lifetime (400 days), and the touch threshold.
const MAX_COOKIE_SIZE: usize = 4096;
const MAX_TTL: u64 = 34_560_000;
const TOUCH_THRESHOLD: u64 = 60;

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Storage {
    Cookie,
    Kong,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum SameSite {
    Strict,
    Lax,
    None,
    Default,
}

impl SameSite {
    fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
            SameSite::Default => "Default",
        }
    }
}

/// The session properties `request_headers` / `response_headers` can carry.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Property {
    Id,
    Audience,
    Subject,
    Timeout,
    IdlingTimeout,
    RollingTimeout,
    AbsoluteTimeout,
}

impl Property {
    fn header(self) -> &'static str {
        match self {
            Property::Id => "Session-Id",
            Property::Audience => "Session-Audience",
            Property::Subject => "Session-Subject",
            Property::Timeout => "Session-Timeout",
            Property::IdlingTimeout => "Session-Idling-Timeout",
            Property::RollingTimeout => "Session-Rolling-Timeout",
            Property::AbsoluteTimeout => "Session-Absolute-Timeout",
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum LogoutMethod {
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "DELETE")]
    Delete,
}

impl LogoutMethod {
    fn is(self, m: &http::Method) -> bool {
        match self {
            LogoutMethod::Get => m == http::Method::GET,
            LogoutMethod::Post => m == http::Method::POST,
            LogoutMethod::Delete => m == http::Method::DELETE,
        }
    }
}

/// Kong 3.x's `config` of session, with the Kong 2.x names it still accepts (its
/// `shorthand_fields`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default = "default_storage")]
    storage: Storage,
    #[serde(default = "default_audience")]
    audience: String,
    #[serde(default = "default_idling")]
    idling_timeout: f64,
    #[serde(default = "default_rolling")]
    rolling_timeout: f64,
    #[serde(default = "default_absolute")]
    absolute_timeout: f64,
    #[serde(default = "default_stale_ttl")]
    stale_ttl: f64,
    #[serde(default = "default_cookie_name")]
    cookie_name: String,
    #[serde(default = "default_path")]
    cookie_path: String,
    #[serde(default)]
    cookie_domain: Option<String>,
    #[serde(default = "default_same_site")]
    cookie_same_site: SameSite,
    #[serde(default = "yes")]
    cookie_http_only: bool,
    #[serde(default = "yes")]
    cookie_secure: bool,
    #[serde(default)]
    remember: bool,
    #[serde(default = "default_remember_name")]
    remember_cookie_name: String,
    #[serde(default = "default_remember_rolling")]
    remember_rolling_timeout: f64,
    #[serde(default = "default_remember_absolute")]
    remember_absolute_timeout: f64,
    #[serde(default)]
    response_headers: Option<Vec<Property>>,
    #[serde(default)]
    request_headers: Option<Vec<Property>>,
    #[serde(default)]
    read_body_for_logout: bool,
    #[serde(default = "default_logout_methods")]
    logout_methods: Vec<LogoutMethod>,
    #[serde(default = "default_logout_arg")]
    logout_query_arg: Option<String>,
    #[serde(default = "default_logout_arg")]
    logout_post_arg: Option<String>,
    /// Metadata of sessions lives in Kong's database (`kong` storage): accepted, no effect.
    #[serde(default)]
    #[allow(dead_code)]
    hash_subject: bool,
    #[serde(default)]
    #[allow(dead_code)]
    store_metadata: bool,
    // Kong 2.x names (Kong 3.x `shorthand_fields`): when given they override the new field.
    #[serde(default)]
    cookie_lifetime: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    cookie_idletime: Option<Option<f64>>,
    #[serde(default)]
    cookie_renew: Option<f64>,
    #[serde(default)]
    cookie_discard: Option<f64>,
    #[serde(default)]
    cookie_samesite: Option<String>,
    #[serde(default)]
    cookie_httponly: Option<bool>,
    #[serde(default)]
    cookie_persistent: Option<bool>,
}

/// `Some(None)` for an explicit `null` (Kong's `cookie_idletime: null` means 0).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

fn default_storage() -> Storage {
    Storage::Cookie
}
fn default_audience() -> String {
    "default".into()
}
fn default_idling() -> f64 {
    900.0
}
fn default_rolling() -> f64 {
    3600.0
}
fn default_absolute() -> f64 {
    86400.0
}
fn default_stale_ttl() -> f64 {
    10.0
}
fn default_cookie_name() -> String {
    "session".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_same_site() -> SameSite {
    SameSite::Strict
}
fn yes() -> bool {
    true
}
fn default_remember_name() -> String {
    "remember".into()
}
fn default_remember_rolling() -> f64 {
    604800.0
}
fn default_remember_absolute() -> f64 {
    2592000.0
}
fn default_logout_methods() -> Vec<LogoutMethod> {
    vec![LogoutMethod::Post, LogoutMethod::Delete]
}
fn default_logout_arg() -> Option<String> {
    Some("session_logout".into())
}

/// The secret used when none is configured (Kong generates a random one too): one per process,
/// so sessions survive reloads but not restarts, and replicas do not share it.
fn process_secret() -> &'static [u8] {
    static SECRET: OnceLock<Vec<u8>> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut b = vec![0u8; 32];
        if openssl::rand::rand_bytes(&mut b).is_err() {
            // Without randomness a fixed secret would forge-proof nothing: fall back to the
            // address space layout and time, still unknown to a client.
            let seed = format!("{:p}{:?}", &b, SystemTime::now());
            b = openssl::sha::sha256(seed.as_bytes()).to_vec();
        }
        b
    })
}

/// What the cookie carries (encrypted). Short keys keep the cookie small.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Data {
    /// Consumer id.
    c: String,
    /// Credential identifier.
    k: String,
    /// Authenticated groups, when a plugin set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<Vec<String>>,
    /// Audience.
    a: String,
    /// Subject (consumer username, custom id or id).
    #[serde(default)]
    s: Option<String>,
}

/// Timeouts of one cookie kind, seconds (0: none).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idling: f64,
    rolling: f64,
    absolute: f64,
}

/// One configured session instance.
pub struct Session {
    keys: Keys,
    audience: String,
    session: Timeouts,
    remember: Option<Timeouts>,
    cookie_name: String,
    remember_cookie_name: String,
    /// `; Domain=…; Path=…; SameSite=…; Secure; HttpOnly` as lua-resty-session orders them.
    cookie_flags: String,
    response_headers: Vec<Property>,
    request_headers: Vec<Property>,
    read_body_for_logout: bool,
    logout_methods: Vec<LogoutMethod>,
    logout_query_arg: Option<String>,
    logout_post_arg: Option<String>,
    /// Consumers by id: a session names its consumer by id.
    consumers: HashMap<String, Arc<Consumer>>,
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(Session::from_config(config, ctx)?))
    }
}

fn seconds(errors: &mut Vec<ConfigError>, field: &str, v: f64) -> f64 {
    if !v.is_finite() || v < 0.0 {
        errors.push(ConfigError::new(
            field,
            "must be a number of seconds, 0 or more",
        ));
        return 0.0;
    }
    v
}

fn dedup(props: Option<Vec<Property>>) -> Vec<Property> {
    let mut out: Vec<Property> = Vec::new();
    for p in props.unwrap_or_default() {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

impl Session {
    pub fn from_config(
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Session, Vec<ConfigError>> {
        let mut raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        // Kong 2.x names first, so the checks below see the value in effect.
        if let Some(v) = raw.cookie_lifetime {
            raw.rolling_timeout = v;
        }
        if let Some(v) = raw.cookie_idletime {
            raw.idling_timeout = v.unwrap_or(0.0);
        }
        if let Some(v) = raw.cookie_discard {
            raw.stale_ttl = v;
        }
        if let Some(v) = raw.cookie_httponly {
            raw.cookie_http_only = v;
        }
        if let Some(v) = raw.cookie_persistent {
            raw.remember = v;
        }
        if let Some(v) = &raw.cookie_samesite {
            raw.cookie_same_site = match v.as_str() {
                "off" | "Lax" => SameSite::Lax,
                "Strict" => SameSite::Strict,
                "None" => SameSite::None,
                "Default" => SameSite::Default,
                other => {
                    errors.push(ConfigError::new(
                        "cookie_samesite",
                        format!("unknown value `{other}`, expected one of `Strict`, `Lax`, `None`, `Default`, `off`"),
                    ));
                    SameSite::Strict
                }
            };
        }
        let _ = raw.cookie_renew; // lua-resty-session 4 computes renewal itself (Kong ignores it)
        if raw.storage == Storage::Kong {
            errors.push(ConfigError::new(
                "storage",
                "`kong` storage keeps sessions in Kong's database, which DB-less Portcullis does not have; use `cookie`",
            ));
        }
        let idling = seconds(&mut errors, "idling_timeout", raw.idling_timeout);
        let rolling = seconds(&mut errors, "rolling_timeout", raw.rolling_timeout);
        let absolute = seconds(&mut errors, "absolute_timeout", raw.absolute_timeout);
        seconds(&mut errors, "stale_ttl", raw.stale_ttl);
        let r_rolling = seconds(
            &mut errors,
            "remember_rolling_timeout",
            raw.remember_rolling_timeout,
        );
        let r_absolute = seconds(
            &mut errors,
            "remember_absolute_timeout",
            raw.remember_absolute_timeout,
        );
        for (field, name) in [
            ("cookie_name", &raw.cookie_name),
            ("remember_cookie_name", &raw.remember_cookie_name),
        ] {
            if !cookie::is_token(name) {
                errors.push(ConfigError::new(
                    field,
                    "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                ));
            }
        }
        if raw.remember && raw.remember_cookie_name == raw.cookie_name {
            errors.push(ConfigError::new(
                "remember_cookie_name",
                "must differ from cookie_name",
            ));
        }
        if raw.cookie_path.is_empty() || !cookie::is_attribute_value(&raw.cookie_path) {
            errors.push(ConfigError::new(
                "cookie_path",
                "must be a non-empty path without spaces, `;` or control characters",
            ));
        }
        if let Some(d) = &raw.cookie_domain {
            if !cookie::is_attribute_value(d) {
                errors.push(ConfigError::new(
                    "cookie_domain",
                    "must not contain spaces, `;` or control characters",
                ));
            }
        }
        let secret: &[u8] = match &raw.secret {
            Some(s) if s.is_empty() => {
                errors.push(ConfigError::new("secret", "must not be empty"));
                b""
            }
            // Kong resolves `{vault://…}` references; taken literally, the reference itself
            // would become a secret anyone reading the file knows.
            Some(s) if s.starts_with("{vault://") => {
                errors.push(ConfigError::new(
                    "secret",
                    "vault references are not supported: write the secret itself",
                ));
                b""
            }
            Some(s) => s.as_bytes(),
            None => {
                ctx.warn(
                    "secret",
                    "no secret configured: a random one is used, so sessions end when the process restarts and are not shared between replicas",
                );
                process_secret()
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let keys = Keys::new(secret)
            .ok_or_else(|| vec![ConfigError::new("secret", "cannot derive keys from it")])?;

        let mut flags = String::new();
        if let Some(d) = raw.cookie_domain.as_deref() {
            if !d.is_empty() && d != "localhost" {
                flags.push_str("; Domain=");
                flags.push_str(d);
            }
        }
        flags.push_str("; Path=");
        flags.push_str(&raw.cookie_path);
        flags.push_str("; SameSite=");
        flags.push_str(raw.cookie_same_site.as_str());
        // Browsers drop `SameSite=None` cookies without `Secure`; lua-resty-session forces it.
        if raw.cookie_secure || raw.cookie_same_site == SameSite::None {
            flags.push_str("; Secure");
        }
        if raw.cookie_http_only {
            flags.push_str("; HttpOnly");
        }

        let mut methods = Vec::new();
        for m in raw.logout_methods {
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        Ok(Session {
            keys,
            audience: raw.audience,
            session: Timeouts {
                idling,
                rolling,
                absolute,
            },
            remember: raw.remember.then_some(Timeouts {
                idling: 0.0,
                rolling: r_rolling,
                absolute: r_absolute,
            }),
            cookie_name: raw.cookie_name,
            remember_cookie_name: raw.remember_cookie_name,
            cookie_flags: flags,
            response_headers: dedup(raw.response_headers),
            request_headers: dedup(raw.request_headers),
            read_body_for_logout: raw.read_body_for_logout,
            logout_methods: methods,
            logout_query_arg: raw.logout_query_arg,
            logout_post_arg: raw.logout_post_arg,
            consumers: ctx
                .consumers
                .iter()
                .map(|c| (c.id.clone(), c.clone()))
                .collect(),
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An open session: its meta as of this request and its data.
#[derive(Debug, Clone)]
struct Open {
    meta: Meta,
    data: Data,
    /// When the meta was read or written (lua-resty-session's `meta.timestamp`).
    at: u64,
}

/// What the access phase leaves for the response phase.
#[derive(Debug, Clone, Default)]
struct State {
    /// The session this request presented, when valid.
    open: Option<Open>,
    /// `Set-Cookie` values to send.
    cookies: Vec<String>,
    /// Session-* response headers.
    headers: Vec<(&'static str, String)>,
    logged_out: bool,
}

/// A timeout in whole seconds as a header shows it.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Session {
    fn cookie_name(&self, kind: Kind) -> &str {
        match kind {
            Kind::Session => &self.cookie_name,
            Kind::Remember => &self.remember_cookie_name,
        }
    }

    fn timeouts(&self, kind: Kind) -> Timeouts {
        match (kind, self.remember) {
            (Kind::Remember, Some(t)) => t,
            _ => self.session,
        }
    }

    /// lua-resty-session's `open`: the cookie of `kind`, checked against every timeout and the
    /// audience.
    fn open(&self, headers: &http::HeaderMap, kind: Kind, at: u64) -> Result<Open, &'static str> {
        let value = cookie::request_cookie(headers, self.cookie_name(kind))
            .ok_or("missing session cookie")?;
        let (meta, plaintext) = self.keys.open(kind, value)?;
        let t = self.timeouts(kind);
        let now = at as i128;
        let absolute_elapsed = now - meta.creation as i128;
        if t.absolute != 0.0 && absolute_elapsed as f64 > t.absolute {
            return Err("session absolute timeout exceeded");
        }
        let rolling_elapsed = absolute_elapsed - meta.rolling_offset as i128;
        if t.rolling != 0.0 && rolling_elapsed as f64 > t.rolling {
            return Err("session rolling timeout exceeded");
        }
        if kind == Kind::Remember {
            if meta.idling_offset != 0 {
                return Err("invalid session idling offset");
            }
        } else if t.idling != 0.0
            && (rolling_elapsed - meta.idling_offset as i128) as f64 > t.idling
        {
            return Err("session idling timeout exceeded");
        }
        let data: Data =
            serde_json::from_slice(&plaintext).map_err(|_| "unable to decode session data")?;
        if data.a != self.audience {
            return Err("missing session audience");
        }
        Ok(Open { meta, data, at })
    }

    /// A `Set-Cookie` value for `kind` holding `open`, or `None` when it cannot be made (too
    /// large for one cookie, or no randomness).
    fn seal(&self, kind: Kind, open: &Open) -> Option<String> {
        let plaintext = serde_json::to_vec(&open.data).ok()?;
        let value = self.keys.seal(kind, &open.meta, &plaintext)?;
        let name = self.cookie_name(kind);
        let mut c = format!("{name}={value}{}", self.cookie_flags);
        if kind == Kind::Remember {
            let mut max_age = self.timeouts(kind).rolling as u64;
            if max_age == 0 || max_age > MAX_TTL {
                max_age = MAX_TTL;
            }
            c.push_str(&cookie::persistent_flags(
                open.meta.creation.saturating_add(max_age),
                max_age,
            ));
        }
        if c.len() > MAX_COOKIE_SIZE {
            tracing::warn!(
                plugin = NAME,
                size = c.len(),
                "session cookie would exceed 4096 bytes (too many authenticated groups?); no session is issued"
            );
            return None;
        }
        Some(c)
    }

    /// lua-resty-session's `save`: a new session id; the creation time is kept when renewing.
    fn save(
        &self,
        kind: Kind,
        data: Data,
        creation: Option<u64>,
        at: u64,
    ) -> Option<(Open, String)> {
        let creation = creation.unwrap_or(at);
        let open = Open {
            meta: Meta {
                creation,
                rolling_offset: at.saturating_sub(creation),
                idling_offset: 0,
                sid: cookie::new_sid()?,
            },
            data,
            at,
        };
        let c = self.seal(kind, &open)?;
        Some((open, c))
    }

    fn clear(&self, kind: Kind) -> String {
        format!(
            "{}={}{}",
            self.cookie_name(kind),
            self.cookie_flags,
            cookie::EXPIRE_FLAGS
        )
    }

    /// lua-resty-session's `refresh`: renew after ¾ of the rolling timeout, else touch (move
    /// the idling offset) when the last touch is older than the threshold.
    fn refresh(&self, open: &mut Open, state: &mut State) {
        let t = self.session;
        let m = &open.meta;
        let rolling_elapsed = open
            .at
            .saturating_sub(m.creation.saturating_add(m.rolling_offset));
        if t.rolling > 0.0 && rolling_elapsed as f64 > (t.rolling * 0.75).floor() {
            if let Some((renewed, c)) =
                self.save(Kind::Session, open.data.clone(), Some(m.creation), open.at)
            {
                *open = renewed;
                state.cookies.push(c);
            }
            return;
        }
        if t.idling > 0.0 {
            // With an idling timeout under two minutes a one-minute threshold would let an active
            // session expire; touch at half of it then (the same as Kong's for the default 900).
            let threshold = TOUCH_THRESHOLD.min((t.idling / 2.0).floor() as u64);
            if rolling_elapsed.saturating_sub(m.idling_offset) > threshold {
                let mut touched = open.clone();
                touched.meta.idling_offset = rolling_elapsed;
                if let Some(c) = self.seal(Kind::Session, &touched) {
                    *open = touched;
                    state.cookies.push(c);
                }
            }
        }
    }

    fn property(&self, open: &Open, p: Property) -> Option<String> {
        let t = self.session;
        let m = &open.meta;
        let abs = open.at as f64 - m.creation as f64;
        let rolling = abs - m.rolling_offset as f64;
        let idling = rolling - m.idling_offset as f64;
        let left = |timeout: f64, elapsed: f64| (timeout > 0.0).then_some(timeout - elapsed);
        Some(match p {
            Property::Id => cookie::sid_text(&m.sid),
            Property::Audience => open.data.a.clone(),
            Property::Subject => open.data.s.clone()?,
            Property::Timeout => number(
                [
                    left(t.idling, idling),
                    left(t.rolling, rolling),
                    left(t.absolute, abs),
                ]
                .into_iter()
                .flatten()
                .reduce(f64::min)?,
            ),
            Property::IdlingTimeout => number(left(t.idling, idling)?),
            Property::RollingTimeout => number(left(t.rolling, rolling)?),
            Property::AbsoluteTimeout => number(left(t.absolute, abs)?),
        })
    }

    /// Kong's `session.logout(conf)`: a logout method, with the query argument or (when
    /// `read_body_for_logout`) the body argument present.
    fn wants_logout(&self, req: &RequestView<'_>, ctx: &RequestCtx) -> bool {
        if !self.logout_methods.iter().any(|m| m.is(req.method)) {
            return false;
        }
        if let Some(arg) = &self.logout_query_arg {
            if req.query_arg(arg).is_some() {
                return true;
            }
        }
        let body_method = [
            http::Method::POST,
            http::Method::DELETE,
            http::Method::PUT,
            http::Method::PATCH,
        ];
        if !self.read_body_for_logout || !body_method.contains(req.method) {
            return false;
        }
        let (Some(arg), Some(body)) = (&self.logout_post_arg, &ctx.request_body) else {
            return false;
        };
        let ct = req
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        if ct.starts_with("application/x-www-form-urlencoded") {
            let body = String::from_utf8_lossy(body);
            let found = portcullis_plugin_api::query_args(&body).any(|(k, _)| k == *arg);
            found
        } else if ct.starts_with("application/json") {
            // Lua's truthiness: anything but `false` (JSON null decodes to a truthy value).
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(serde_json::Value::Object(o)) => o
                    .get(arg)
                    .is_some_and(|v| v != &serde_json::Value::Bool(false)),
                _ => false,
            }
        } else {
            false
        }
    }

    /// The identity of `open` on the request, as Kong's session `authenticate`.
    fn authenticate(&self, ctx: &mut RequestCtx, consumer: &Arc<Consumer>, data: &Data) {
        auth::authenticated(ctx, consumer, &data.k);
        match &data.g {
            Some(g) => {
                ctx.authenticated_groups = Some(g.clone());
                ctx.set_upstream_header("x-authenticated-groups", &g.join(", "));
            }
            None => ctx.remove_upstream_header("x-authenticated-groups"),
        }
    }

    fn access_inner(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> (State, Option<Flow>) {
        let mut state = State::default();
        let at = now();
        let mut open = match self.open(req.headers, Kind::Session, at) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::debug!(plugin = NAME, request_id = %ctx.request_id, "session not present ({e})");
                None
            }
        };
        if open.is_none() && self.remember.is_some() {
            // A persistent session starts a new session: the remember cookie is renewed and a
            // fresh session cookie issued (lua-resty-session's `open` with `remember`).
            if let Ok(r) = self.open(req.headers, Kind::Remember, at) {
                let creation = Some(r.meta.creation);
                let renewed = self.save(Kind::Remember, r.data.clone(), creation, at);
                let fresh = self.save(Kind::Session, r.data, None, at);
                if let (Some((_, rc)), Some((s, sc))) = (renewed, fresh) {
                    state.cookies.push(rc);
                    state.cookies.push(sc);
                    open = Some(s);
                }
            }
        }
        let Some(mut open) = open else {
            return (state, None);
        };
        if self.wants_logout(req, ctx) {
            tracing::debug!(plugin = NAME, request_id = %ctx.request_id, "session logging out");
            state.cookies = self.logout_cookies(req.headers, at);
            state.logged_out = true;
            return (
                state,
                Some(Flow::Respond(PluginResponse::raw(200, Vec::new()))),
            );
        }
        let Some(consumer) = self.consumers.get(&open.data.c).cloned() else {
            tracing::debug!(plugin = NAME, request_id = %ctx.request_id, "failed to find consumer, destroying session");
            state.cookies = self.logout_cookies(req.headers, at);
            return (state, None);
        };
        self.refresh(&mut open, &mut state);
        for &p in &self.request_headers {
            if let Some(v) = self.property(&open, p) {
                ctx.set_upstream_header(p.header(), &v);
            }
        }
        for &p in &self.response_headers {
            if let Some(v) = self.property(&open, p) {
                state.headers.push((p.header(), v));
            }
        }
        self.authenticate(ctx, &consumer, &open.data);
        state.open = Some(open);
        (state, None)
    }

    /// lua-resty-session's `destroy`: clear the session cookie, and the remember cookie when
    /// one is present and valid.
    fn logout_cookies(&self, headers: &http::HeaderMap, at: u64) -> Vec<String> {
        let mut v = vec![self.clear(Kind::Session)];
        if self.remember.is_some() && self.open(headers, Kind::Remember, at).is_ok() {
            v.push(self.clear(Kind::Remember));
        }
        v
    }

    /// Kong's header_filter: a request another plugin identified with a credential gets a
    /// session, unless the one it presented already holds that consumer and credential.
    fn issue(&self, ctx: &RequestCtx, state: &mut State, headers: &http::HeaderMap) {
        let (Some(consumer), Some(credential)) = (&ctx.consumer, &ctx.credential_identifier) else {
            return;
        };
        if ctx.anonymous {
            return;
        }
        if let Some(o) = &state.open {
            if o.data.c == consumer.id && o.data.k == *credential {
                return;
            }
        }
        let at = now();
        let data = Data {
            c: consumer.id.clone(),
            k: credential.clone(),
            g: ctx.authenticated_groups.clone(),
            a: self.audience.clone(),
            s: Some(
                consumer
                    .username
                    .clone()
                    .or_else(|| consumer.custom_id.clone())
                    .unwrap_or_else(|| consumer.id.clone()),
            ),
        };
        let Some((open, c)) = self.save(Kind::Session, data.clone(), None, at) else {
            return;
        };
        state
            .cookies
            .retain(|x| cookie::set_cookie_name(x) != self.cookie_name);
        state.cookies.push(c);
        if self.remember.is_some() {
            // A valid remember cookie keeps its creation time (lua-resty-session opens its meta).
            let creation = self
                .open(headers, Kind::Remember, at)
                .ok()
                .map(|r| r.meta.creation);
            if let Some((_, rc)) = self.save(Kind::Remember, data, creation, at) {
                state
                    .cookies
                    .retain(|x| cookie::set_cookie_name(x) != self.remember_cookie_name);
                state.cookies.push(rc);
            }
        }
        state.headers.clear();
        for &p in &self.response_headers {
            if let Some(v) = self.property(&open, p) {
                state.headers.push((p.header(), v));
            }
        }
    }
}

/// The request's headers, kept for the response phase (the remember cookie is read again there).
#[derive(Clone)]
struct RequestCookies(http::HeaderMap);

#[async_trait]
impl Plugin for Session {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        let p = Phases::ACCESS | Phases::RESPONSE_HEADERS;
        if self.read_body_for_logout {
            p | Phases::BUFFER_REQUEST_BODY
        } else {
            p
        }
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let (state, flow) = self.access_inner(req, ctx);
        if self.remember.is_some() {
            let mut h = http::HeaderMap::new();
            for v in req.headers.get_all(http::header::COOKIE) {
                h.append(http::header::COOKIE, v.clone());
            }
            ctx.extensions.insert(RequestCookies(h));
        }
        ctx.extensions.insert(state);
        flow.unwrap_or(Flow::Continue)
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let mut state = ctx.extensions.remove::<State>().unwrap_or_default();
        if !state.logged_out {
            let cookies = ctx
                .extensions
                .get::<RequestCookies>()
                .map(|c| c.0.clone())
                .unwrap_or_default();
            self.issue(ctx, &mut state, &cookies);
        }
        for (name, value) in &state.headers {
            resp.headers.set(name, value);
        }
        if state.cookies.is_empty() {
            return;
        }
        // A cookie of the same name the upstream set is replaced; its other cookies stay.
        let ours: Vec<&str> = state
            .cookies
            .iter()
            .map(|c| cookie::set_cookie_name(c))
            .collect();
        let is_ours = |v: &http::HeaderValue| {
            let v = String::from_utf8_lossy(v.as_bytes());
            ours.contains(&cookie::set_cookie_name(&v))
        };
        let upstream = resp.headers.get_all("set-cookie");
        if upstream.iter().any(|v| is_ours(v)) {
            let kept: Vec<String> = upstream
                .into_iter()
                .filter(|v| !is_ours(v))
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect();
            resp.headers.remove("set-cookie");
            for c in &kept {
                resp.headers.append("set-cookie", c);
            }
        }
        for c in &state.cookies {
            resp.headers.append("set-cookie", c);
        }
    }
}

#[cfg(test)]
mod tests;
