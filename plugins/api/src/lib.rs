//! The hook trait Portcullis plugins implement, and the types they see.
//!
//! This crate is a leaf: the gateway depends on it and so do plugin crates, so plugins never
//! depend on the gateway (Cargo would reject the cycle). Nothing here knows about Pingora.
//!
//! Phases map onto Pingora's `ProxyHttp` hooks like this (a plugin declares the phases it
//! implements with [`Plugin::phases`]; the gateway calls nobody in a phase nobody declared):
//!
//! | phase (Kong name)  | method                        | called from Pingora's           | runs for |
//! |--------------------|-------------------------------|---------------------------------|----------|
//! | rewrite            | [`Plugin::rewrite`]           | `request_filter`, before routing | global instances |
//! | access             | [`Plugin::access`]            | `request_filter`, after routing | the route's chain |
//! | (body, buffered)   | `ctx.request_body`            | `request_filter` reads ≤ 64 KiB | [`Phases::BUFFER_REQUEST_BODY`] |
//! | request body       | [`Plugin::request_body`]      | `request_body_filter`           | each chunk |
//! | upstream request   | [`Plugin::upstream_request`]  | `upstream_request_filter`       | each try |
//! | header_filter      | [`Plugin::response_headers`]  | `response_filter`               | also gateway answers |
//! | body_filter        | [`Plugin::response_body`]     | `response_body_filter`          | each chunk |
//! | log                | [`Plugin::log`]               | `logging` (also after errors)   | every request |
//!
//! Authentication plugins identify consumers through [`auth`]; plugins that own credential
//! entities declare them with [`credentials::CredentialKind`]; counters that must survive reloads
//! or be shared between replicas live in a [`state::Store`]; queues and timers run on
//! [`background`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod auth;
pub mod background;
pub mod credentials;
pub mod json;
mod registry;
pub mod serialize;
pub mod state;
pub mod template;
pub mod tls;

pub use registry::Registry;

pub use async_trait::async_trait;
pub use bytes;
pub use http;
pub use serde_json;
pub use tracing;

/// A configuration problem found while building a plugin instance. `path` is relative to the
/// plugin's `config` object (`ca_certificates[1]`, `allow`), empty for the object itself; the
/// gateway turns it into `file:line:column` of the offending YAML node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Deserialise a plugin's typed config from the JSON the gateway hands over, reporting the path of
/// a bad field so the operator sees the exact line. Config structs should use
/// `#[serde(deny_unknown_fields)]` so a typo is an error, never a silently ignored setting.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, ConfigError> {
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value.clone()
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string())
    })
}

/// A consumer as configured (`consumers:`), with its ACL groups.
#[derive(Debug, Clone, Default)]
pub struct Consumer {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    pub groups: Vec<String>,
    pub tags: Vec<String>,
}

/// An `mtls_auth_credentials` entry of a consumer.
#[derive(Debug, Clone)]
pub struct MtlsCredential {
    pub id: String,
    pub subject_name: String,
    /// Resolved CA certificate id; `None` matches certificates of any CA.
    pub ca_certificate: Option<String>,
    pub consumer_id: String,
}

/// A CA certificate entity (`ca_certificates:`), resolved.
#[derive(Debug, Clone)]
pub struct CaCertificate {
    pub id: String,
    pub name: Option<String>,
    /// One or more PEM certificates.
    pub pem: String,
}

/// The files read while one configuration is built, each read once: a second read of the same
/// path in the same load gets the first bytes. The loader hashes these bytes, so the
/// configuration hash describes exactly what was applied even when a file changes mid-load.
#[derive(Debug, Default, Clone)]
pub struct FileLog(Arc<Mutex<Vec<FileRead>>>);

/// One file of a [`FileLog`] and the bytes read from it.
type FileRead = (PathBuf, Arc<[u8]>);

impl FileLog {
    /// The bytes of `path`: from this load's earlier read, else from disk (and recorded).
    pub fn read(&self, path: &Path) -> std::io::Result<Arc<[u8]>> {
        if let Some(b) = self.get(path) {
            return Ok(b);
        }
        let bytes: Arc<[u8]> = Arc::from(std::fs::read(path)?);
        let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.push((path.to_path_buf(), bytes.clone()));
        Ok(bytes)
    }

    /// What this load read from `path`, if it did.
    pub fn get(&self, path: &Path) -> Option<Arc<[u8]>> {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().find(|(p, _)| p == path).map(|(_, b)| b.clone())
    }
}

/// The consumers and CA certificates of the configuration a plugin instance is built for.
#[derive(Debug, Default)]
pub struct BuildContext {
    pub consumers: Vec<Arc<Consumer>>,
    pub credentials: Vec<MtlsCredential>,
    pub ca_certificates: Vec<Arc<CaCertificate>>,
    /// The conf directory, for files a plugin's config names relative to it (`crl_file`).
    pub conf_dir: PathBuf,
    /// Credential entities declared by plugins ([`PluginFactory::credential_kinds`]), by
    /// collection name, validated by their kind and with consumers resolved.
    pub plugin_credentials: HashMap<&'static str, Vec<Arc<credentials::Credential>>>,
    /// A stable id of the instance being built: its `id` in the file, else derived from its
    /// name and scope, so state keyed by it survives reloads.
    pub instance_id: String,
    /// The route and service the instance is scoped to (Kong's `conf.route_id` and
    /// `conf.service_id`); `None` when not scoped to one.
    pub route_id: Option<String>,
    pub service_id: Option<String>,
    /// Files read for this configuration; read them with [`BuildContext::read_file`].
    pub files: FileLog,
    /// What [`BuildContext::warn`] collected for the instance being built.
    pub warnings: std::sync::Mutex<Vec<ConfigError>>,
}

impl BuildContext {
    /// A warning about the instance's config (a deprecated or ignored field, a risky default):
    /// the loader reports it with the file, line and column of `path` (a field of the plugin's
    /// `config`; empty for the config as a whole) — at startup, on reload and in
    /// `portcullis check`. Build runs before logging is set up, so `tracing` would lose it.
    pub fn warn(&self, path: impl Into<String>, message: impl Into<String>) {
        if let Ok(mut w) = self.warnings.lock() {
            w.push(ConfigError::new(path, message));
        }
    }

    /// A file the plugin's config names, relative to the conf directory. Through here, the
    /// configuration hash covers the very bytes the plugin uses.
    pub fn read_file(&self, rel: &str) -> std::io::Result<Arc<[u8]>> {
        self.files.read(&self.conf_dir.join(rel))
    }

    /// A consumer by id or username (Kong accepts either in references).
    pub fn consumer(&self, reference: &str) -> Option<Arc<Consumer>> {
        self.consumers
            .iter()
            .find(|c| c.id == reference)
            .or_else(|| {
                self.consumers
                    .iter()
                    .find(|c| c.username.as_deref() == Some(reference))
            })
            .cloned()
    }

    /// The credentials of one collection (`keyauth_credentials`), in file order.
    pub fn credentials_of(&self, collection: &str) -> &[Arc<credentials::Credential>] {
        self.plugin_credentials
            .get(collection)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// A CA certificate by id or name.
    pub fn ca_certificate(&self, reference: &str) -> Option<Arc<CaCertificate>> {
        self.ca_certificates
            .iter()
            .find(|c| c.id == reference || c.name.as_deref() == Some(reference))
            .cloned()
    }
}

/// What the TLS handshake saw of the client's certificate. Captured by the gateway once per
/// connection; plugins verify it themselves against their own trust anchors.
#[derive(Debug, Clone, Default)]
pub struct ClientCertificate {
    /// DER of every certificate the client sent, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// Subject in RFC 2253 form (`CN=alice,O=Example`).
    pub subject_dn: String,
    pub issuer_dn: String,
    pub common_name: Option<String>,
    /// DNS names, e-mail addresses and URIs, in certificate order.
    pub sans: Vec<String>,
    /// Hex serial number, upper case.
    pub serial: String,
    /// SHA-256 of the leaf DER, lower-case hex: a stable cache key.
    pub fingerprint_sha256: String,
    /// [`chain_sha256`] of `chain_der`, computed once per connection by the gateway so that
    /// plugins caching per chain do not hash it on every request; `None` when not computed.
    pub chain_sha256: Option<[u8; 32]>,
}

/// SHA-256 of `data`. OpenSSL 3's one-shot `SHA256()` (`openssl::sha::sha256`) goes through
/// `EVP_Q_digest`, which looks the algorithm up by name on every call: ~4,500 instructions for
/// a short API key, where the init/update/final path costs a fraction. Plugins hash a secret per
/// request (key-auth's key, jwt's token, basic-auth's password) to look it up in constant time.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(data);
    h.finish()
}

/// SHA-256 over a certificate chain (each certificate's length, then its DER): one key for the
/// exact chain a client presented.
pub fn chain_sha256(chain_der: &[Vec<u8>]) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    for der in chain_der {
        h.update(&(der.len() as u64).to_be_bytes());
        h.update(der);
    }
    h.finish()
}

/// The state plugins share during one request.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    /// The port of the connection's peer (Kong's `kong.client.get_forwarded_port()`, which is
    /// nginx's `$remote_port`).
    pub client_port: Option<u16>,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    pub sni: Option<String>,
    pub client_certificate: Option<Arc<ClientCertificate>>,
    /// The matched route's name (its id when it has none); `None` before routing.
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// The matched route and its service as Kong's log serializer shows them.
    pub route_info: Option<Arc<EntityInfo>>,
    pub service_info: Option<Arc<EntityInfo>>,
    /// Set by an authentication plugin (see [`auth`]).
    pub consumer: Option<Arc<Consumer>>,
    pub credential_identifier: Option<String>,
    /// Groups an authentication plugin derived without a consumer (mtls-auth's
    /// `authenticated_group_by`).
    pub authenticated_groups: Option<Vec<String>>,
    pub anonymous: bool,
    /// Headers the gateway sets (replacing) on the upstream request after the access phase.
    pub upstream_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Headers the gateway appends to the upstream request (after the replacements).
    pub upstream_headers_append: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Headers the gateway removes from the upstream request.
    pub upstream_headers_remove: Vec<http::HeaderName>,
    /// Request line changes for the upstream, applied after `strip_path` and the service path.
    pub upstream_rewrite: UpstreamRewrite,
    /// The whole request body when a plugin of the route declared
    /// [`Phases::BUFFER_REQUEST_BODY`] (up to [`MAX_BUFFERED_REQUEST_BODY`]); `None` otherwise.
    pub request_body: Option<bytes::Bytes>,
    /// A replacement for the request body sent upstream (Content-Length is fixed to match).
    pub request_body_replacement: Option<bytes::Bytes>,
    /// Headers the gateway sets on the response to the client.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Why authentication failed, for `portcullis_auth_failures_total{plugin,reason}`.
    pub auth_failure: Option<(&'static str, &'static str)>,
    /// Kong's `kong.client.tls.set_client_verify`: `SUCCESS`, `NONE` or `FAILED:<reason>`, set
    /// by the plugin that verified the client certificate; the log record's
    /// `request.tls.client_verify` (`NONE` when unset).
    pub client_verify: Option<std::borrow::Cow<'static, str>>,
    /// The upstream chosen for this request, once known (upstream request phase onwards).
    pub upstream: Option<UpstreamInfo>,
    /// Free-form values plugins hand each other.
    pub shared: HashMap<&'static str, String>,
    /// Capture groups of the matched route's regex path (Kong's `uri_captures`) when a plugin
    /// of the route declared [`Phases::URI_CAPTURES`]; `None` for prefix or path-less routes.
    pub uri_captures: Option<Arc<UriCaptures>>,
    /// The gateway address the client connected to (Kong's `server_addr`/`server_port`).
    pub server_addr: Option<SocketAddr>,
    /// Typed per-request values (a plugin's own state between phases, or values for others).
    pub extensions: Extensions,
}

/// Typed per-request values, one per type, with `http::Extensions`' methods. A request carries
/// a handful at most, so a list searched linearly: `http::Extensions` (a boxed hash map) cost
/// three allocations for the first value, this one allocation per value and one for the list.
#[derive(Default)]
pub struct Extensions {
    items: Vec<(std::any::TypeId, Box<dyn std::any::Any + Send + Sync>)>,
}

impl Extensions {
    /// Stores `value`, returning the value of its type stored before.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        let id = std::any::TypeId::of::<T>();
        if let Some((_, slot)) = self.items.iter_mut().find(|(k, _)| *k == id) {
            let old = std::mem::replace(slot, Box::new(value));
            return old.downcast::<T>().ok().map(|b| *b);
        }
        if self.items.capacity() == 0 {
            self.items.reserve_exact(4);
        }
        self.items.push((id, Box::new(value)));
        None
    }

    pub fn get<T: 'static>(&self) -> Option<&T> {
        let id = std::any::TypeId::of::<T>();
        self.items
            .iter()
            .find(|(k, _)| *k == id)
            .and_then(|(_, v)| v.downcast_ref())
    }

    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        let id = std::any::TypeId::of::<T>();
        self.items
            .iter_mut()
            .find(|(k, _)| *k == id)
            .and_then(|(_, v)| v.downcast_mut())
    }

    pub fn remove<T: 'static>(&mut self) -> Option<T> {
        let id = std::any::TypeId::of::<T>();
        let i = self.items.iter().position(|(k, _)| *k == id)?;
        self.items.swap_remove(i).1.downcast::<T>().ok().map(|b| *b)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.items.len())
            .finish()
    }
}

/// The groups a regex route path captured, as Kong's router exposes them to plugins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UriCaptures {
    /// Group 1, 2, … in order (`uri_captures[1]`); `None` for a group that did not take part.
    pub unnamed: Vec<Option<String>>,
    /// Named groups (`(?<version>…)`) that matched, in pattern order.
    pub named: Vec<(String, String)>,
}

impl UriCaptures {
    /// A named group's value.
    pub fn named(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Group `index` (1-based, as Lua counts).
    pub fn index(&self, index: usize) -> Option<&str> {
        index
            .checked_sub(1)
            .and_then(|i| self.unnamed.get(i))
            .and_then(|v| v.as_deref())
    }
}

/// How the request line sent upstream differs from the client's.
#[derive(Debug, Default, Clone)]
pub struct UpstreamRewrite {
    pub method: Option<http::Method>,
    /// A new path (must start with `/`).
    pub path: Option<String>,
    /// A new query string without `?`; `Some("")` removes it.
    pub query: Option<String>,
}

/// The largest request body the gateway buffers for access-phase plugins: Pingora replays a
/// body read before proxying from its retry buffer, which holds 64 KiB.
pub const MAX_BUFFERED_REQUEST_BODY: usize = 64 * 1024;

/// A route or service as log records show it.
#[derive(Debug, Clone)]
pub struct EntityInfo {
    pub id: String,
    pub name: Option<String>,
    /// Kong's JSON shape of the entity (for plugins that read its fields).
    pub json: serde_json::Value,
    /// The same, serialised once per configuration: log records splice the text in rather than
    /// serialising the entity per request.
    pub json_text: Box<serde_json::value::RawValue>,
    /// `paths[0]` of a route (tracing's `http.route`), `host` of a service (`net.peer.name`):
    /// read per request by the tracing plugins, so taken out of `json` once.
    pub first_path: Option<String>,
    pub host: Option<String>,
}

impl EntityInfo {
    pub fn new(id: String, name: Option<String>, json: serde_json::Value) -> Self {
        let json_text = serde_json::value::to_raw_value(&json).unwrap_or_else(|_| null_raw());
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(String::from);
        EntityInfo {
            id,
            name,
            first_path: text(json.get("paths").and_then(|p| p.get(0))),
            host: text(json.get("host")),
            json,
            json_text,
        }
    }
}

fn null_raw() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("null".into()).expect("`null` is a JSON value")
}

impl Default for EntityInfo {
    fn default() -> Self {
        EntityInfo::new(String::new(), None, serde_json::Value::Null)
    }
}

/// Where a request is proxied.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub addr: Option<SocketAddr>,
    /// Host (name or address) and port the gateway connects to.
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

fn header_name(name: &str) -> Option<http::HeaderName> {
    // `from_bytes` lower-cases; `from_static` would panic on `X-Upper`.
    http::HeaderName::from_bytes(name.as_bytes()).ok()
}

impl RequestCtx {
    /// Set (replace) a header on the upstream request. Names of any case are accepted; invalid
    /// names or values are dropped: a header built from client or certificate data must never fail
    /// a request.
    pub fn set_upstream_header(&mut self, name: &str, value: &str) {
        if let (Some(name), Ok(v)) = (header_name(name), http::HeaderValue::from_str(value)) {
            self.upstream_headers.retain(|(n, _)| *n != name);
            self.upstream_headers_append.retain(|(n, _)| *n != name);
            self.upstream_headers.push((name, v));
        }
    }

    /// [`RequestCtx::set_upstream_header`] for a name and value already made (no parsing, no
    /// copy).
    pub fn set_upstream_header_value(&mut self, name: http::HeaderName, value: http::HeaderValue) {
        self.upstream_headers.retain(|(n, _)| *n != name);
        self.upstream_headers_append.retain(|(n, _)| *n != name);
        self.upstream_headers.push((name, value));
    }

    /// Append a header to the upstream request (keeping what is there).
    pub fn append_upstream_header(&mut self, name: &str, value: &str) {
        if let (Some(name), Ok(v)) = (header_name(name), http::HeaderValue::from_str(value)) {
            self.upstream_headers_append.push((name, v));
        }
    }

    pub fn remove_upstream_header(&mut self, name: &str) {
        if let Some(name) = header_name(name) {
            self.upstream_headers.retain(|(n, _)| *n != name);
            self.upstream_headers_append.retain(|(n, _)| *n != name);
            self.upstream_headers_remove.push(name);
        }
    }

    /// Set (replace) a header on the response to the client.
    pub fn set_response_header(&mut self, name: &str, value: &str) {
        if let (Some(name), Ok(v)) = (header_name(name), http::HeaderValue::from_str(value)) {
            self.response_headers.retain(|(n, _)| *n != name);
            self.response_headers.push((name, v));
        }
    }
}

/// A read-only view of the client's request.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
}

impl RequestView<'_> {
    /// The first value of `name` as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first value of query argument `name`, percent-decoded (`+` as space).
    pub fn query_arg(&self, name: &str) -> Option<String> {
        query_args(self.uri.query().unwrap_or("")).find_map(|(k, v)| (k == name).then_some(v))
    }
}

/// `a=1&b=%20x` → `("a","1"), ("b"," x")`: form/query decoding (`+` is a space).
pub fn query_args(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// Percent-decoding of a query component; invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encoding for query components (unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// A response a plugin sends instead of proxying.
#[derive(Debug, Clone)]
pub struct PluginResponse {
    pub status: u16,
    /// When set, the body is Kong's `{"message": ..., "request_id": ...}` JSON.
    pub message: Option<String>,
    /// A raw body instead of the message JSON.
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// Sent in order; the first of a name replaces the gateway's default (`Content-Type`,
    /// `Server`), later ones of the same name are added beside it.
    pub headers: Vec<(String, String)>,
}

impl PluginResponse {
    /// Kong's JSON error shape with `message`.
    pub fn message(status: u16, message: impl Into<String>) -> Self {
        PluginResponse {
            status,
            message: Some(message.into()),
            body: None,
            content_type: None,
            headers: Vec::new(),
        }
    }

    /// An answer with a raw body (e.g. a CORS preflight's empty 204).
    pub fn raw(status: u16, body: impl Into<Vec<u8>>) -> Self {
        PluginResponse {
            status,
            message: None,
            body: Some(body.into()),
            content_type: None,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the access phase decided.
#[derive(Debug, Clone)]
pub enum Flow {
    Continue,
    Respond(PluginResponse),
}

/// A client-certificate request the TLS listener must make for routes that use a plugin.
#[derive(Debug, Clone, Default)]
pub struct ClientCertRequest {
    /// DER-encoded subject names sent in the CertificateRequest (`send_ca_dn`); empty: none.
    pub ca_names_der: Vec<Vec<u8>>,
}

/// The phases a plugin implements. The gateway calls a plugin only in the phases it declares, so
/// a phase no plugin of a route declares costs that route nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u16);

impl Phases {
    pub const NONE: Phases = Phases(0);
    /// [`Plugin::rewrite`]: before routing; global instances only.
    pub const REWRITE: Phases = Phases(1);
    /// [`Plugin::access`].
    pub const ACCESS: Phases = Phases(1 << 1);
    /// The whole request body (up to [`MAX_BUFFERED_REQUEST_BODY`]) is read before the access
    /// phase and available as [`RequestCtx::request_body`].
    pub const BUFFER_REQUEST_BODY: Phases = Phases(1 << 2);
    /// [`Plugin::request_body`]: each body chunk as it streams upstream.
    pub const REQUEST_BODY: Phases = Phases(1 << 3);
    /// [`Plugin::upstream_request`].
    pub const UPSTREAM_REQUEST: Phases = Phases(1 << 4);
    /// [`Plugin::response_headers`].
    pub const RESPONSE_HEADERS: Phases = Phases(1 << 5);
    /// [`Plugin::response_body`].
    pub const RESPONSE_BODY: Phases = Phases(1 << 6);
    /// [`Plugin::log`].
    pub const LOG: Phases = Phases(1 << 7);
    /// Not a phase: the gateway fills [`RequestCtx::uri_captures`] from the route's regex path
    /// (a second regex run, paid only by routes with a plugin that declares this).
    pub const URI_CAPTURES: Phases = Phases(1 << 8);

    pub const fn union(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    pub const fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub const fn intersects(self, other: Phases) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, rhs: Phases) -> Phases {
        self.union(rhs)
    }
}

/// Headers of a message the gateway is about to send, edited through the gateway (Pingora keeps
/// header-name case alongside the map, so plugins never touch the map directly).
pub trait HeaderEdit {
    fn get(&self, name: &str) -> Option<&http::HeaderValue>;
    fn get_all(&self, name: &str) -> Vec<&http::HeaderValue>;
    /// Every header name present (lower case), each once.
    fn names(&self) -> Vec<http::HeaderName>;
    fn set(&mut self, name: &str, value: &str);
    fn append(&mut self, name: &str, value: &str);
    fn remove(&mut self, name: &str);
}

/// The response head in the response-headers phase.
pub struct ResponseHead<'a> {
    /// The status code sent to the client.
    pub status: u16,
    pub headers: &'a mut dyn HeaderEdit,
    /// Whether the gateway itself produced this response (an error or a plugin's answer).
    pub from_gateway: bool,
}

/// One connection attempt to an upstream (Kong's `tries`).
#[derive(Debug, Clone)]
pub struct Try {
    pub addr: Option<SocketAddr>,
    /// Connection time, milliseconds (0 when the pool had a connection).
    pub connect_ms: u64,
    /// When the balancer picked this peer (the try's start, for tracing spans).
    pub started_at: Option<std::time::SystemTime>,
    /// When the connection was ready (TCP connect and, to a TLS upstream, the handshake done);
    /// `None` when connecting failed (`connect_ms` is then the time until it failed).
    pub connected_at: Option<std::time::SystemTime>,
    /// Whether the connection came from the pool (no connect, no handshake).
    pub reused: bool,
    /// Whether the connection to the upstream is TLS.
    pub tls: bool,
}

/// What the log phase sees of a finished request.
pub struct LogEntry<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    /// The HTTP version the client spoke.
    pub version: http::Version,
    /// The Host the client sent.
    pub host: &'a str,
    pub request_headers: &'a http::HeaderMap,
    /// `None` when no response was sent (the client went away).
    pub response_headers: Option<&'a http::HeaderMap>,
    /// 0 when no response was sent.
    pub status: u16,
    /// Request body bytes read from the client.
    pub request_body_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_body_bytes: u64,
    /// When the request started.
    pub started_at: std::time::SystemTime,
    /// Whole request, seconds.
    pub latency: f64,
    /// Upstream time to first response byte, seconds.
    pub upstream_latency: Option<f64>,
    /// Seconds from the request's start until it went upstream (the last try's connection
    /// ready); `None` when it never did.
    pub upstream_sent: Option<f64>,
    /// The status the upstream answered (before any plugin changed the response).
    pub upstream_status: Option<u16>,
    /// The path and query sent upstream.
    pub upstream_uri: Option<&'a str>,
    pub tries: &'a [Try],
    /// Pingora's error kind when the request failed (`ConnectRefused`, …).
    pub error: Option<&'a str>,
    /// `http`/`https` as the client spoke it.
    pub scheme: &'static str,
    /// The TLS version of the client connection (`TLSv1.3`), when TLS.
    pub tls_version: Option<&'a str>,
    /// The client connection's cipher, OpenSSL's name (nginx's `$ssl_cipher`).
    pub tls_cipher: Option<&'a str>,
}

/// One configured plugin instance. Instances are built once per configuration and shared by
/// `Arc` across requests, so per-request state lives in [`RequestCtx`].
///
/// Every phase method but `access` runs only when [`Plugin::phases`] declares it. A panic in any
/// phase is caught by the gateway: the client gets 500 (when nothing was sent yet) and the panic
/// is logged.
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's name as written in `plugins[].name`.
    fn name(&self) -> &'static str;

    /// Kong's PRIORITY: higher runs first.
    fn priority(&self) -> i32;

    /// The phases this instance implements (default: access only).
    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    /// When this instance needs the TLS listener to ask for a client certificate on the SNIs of
    /// the routes it is attached to.
    fn client_cert_request(&self) -> Option<ClientCertRequest> {
        None
    }

    /// Certificates this instance provides to the TLS listeners (ACME); consulted for global
    /// instances only, and only for SNIs no configured certificate matches.
    fn certificates(&self) -> Option<Arc<dyn tls::CertificateProvider>> {
        None
    }

    /// Rewrite phase (Pingora `request_filter`, before routing): global instances only; the
    /// request may be answered here (ACME challenges, correlation ids for 404s).
    async fn rewrite(&self, _req: &RequestView<'_>, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Access phase (Pingora `request_filter`, after routing): authenticate, authorise, change
    /// what is sent upstream (`ctx.upstream_*`), or answer directly.
    async fn access(&self, _req: &RequestView<'_>, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Request body phase (Pingora `request_body_filter`): each chunk on its way upstream;
    /// `chunk` may be replaced. `Err` answers the client with that response when nothing was sent
    /// upstream yet, else aborts the request.
    fn request_body(
        &self,
        _chunk: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<(), PluginResponse> {
        Ok(())
    }

    /// Upstream request phase (Pingora `upstream_request_filter`): `ctx.upstream` names the
    /// chosen upstream; `headers` is the request about to be sent.
    fn upstream_request(&self, _headers: &mut dyn HeaderEdit, _ctx: &mut RequestCtx) {}

    /// Response header phase (Pingora `response_filter`): read, replace or remove the headers
    /// sent to the client.
    fn response_headers(&self, _resp: &mut ResponseHead<'_>, _ctx: &mut RequestCtx) {}

    /// Response body phase (Pingora `response_body_filter`): each chunk on its way to the client;
    /// set `*chunk = None` to hold it back (buffering) and emit the rewritten body at
    /// `end_of_stream`. A plugin that changes the length removes `Content-Length` in
    /// `response_headers`.
    fn response_body(
        &self,
        _chunk: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) {
    }

    /// Log phase (Pingora `logging`): runs for every request, after errors too. Must not block:
    /// hand the record to a queue (see [`background`]).
    fn log(&self, _entry: &LogEntry<'_>, _ctx: &RequestCtx) {}

    /// Typed settings the gateway itself reads from this instance (Kong's `prometheus` flags),
    /// resolved once when the configuration was validated. Other plugins keep the default.
    fn gateway_settings(&self) -> Option<&(dyn std::any::Any + Send + Sync)> {
        None
    }

    /// Called when this instance is retired (a reload replaced the configuration, or the gateway
    /// shuts down): flush queues. Runs on the background runtime.
    async fn flush(&self) {}
}

/// Builds instances of one plugin from their `config`; registered once with the gateway.
pub trait PluginFactory: Send + Sync {
    fn name(&self) -> &'static str;

    /// Credential entities this plugin owns (`keyauth_credentials`, …): the loader accepts them
    /// nested under consumers and at top level and hands them to [`PluginFactory::build`] through
    /// [`BuildContext::credentials_of`].
    fn credential_kinds(&self) -> &'static [credentials::CredentialKind] {
        &[]
    }

    /// Validate `config` (JSON converted from YAML) and build an instance. Report every problem
    /// found, each with the path of the offending field.
    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>>;
}

/// Headers that carry an identity the gateway established; a client must never set them. Any
/// case, and with underscores for hyphens: CGI, PHP and WSGI stacks read `X_Consumer_Username`
/// as `X-Consumer-Username` (both become `HTTP_X_CONSUMER_USERNAME`).
pub fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    // Case-insensitive, `_` and `-` alike; `p` is lower case with hyphens.
    let same = |a: &[u8], p: &[u8]| {
        a.len() == p.len()
            && a.iter().zip(p).all(|(&x, &y)| {
                let x = if x == b'_' {
                    b'-'
                } else {
                    x.to_ascii_lowercase()
                };
                x == y
            })
    };
    let starts = |p: &str| n.len() >= p.len() && same(&n[..p.len()], p.as_bytes());
    let is = |p: &str| same(n, p.as_bytes());
    starts("x-consumer-")
        || starts("x-client-cert-")
        || is("x-credential-identifier")
        || is("x-anonymous-consumer")
        || is("x-authenticated-groups")
}

/// A header value listing `items` (`a, b`). An item that would not read back as itself from a
/// comma-separated list (it holds a comma or a quote, or starts or ends with space) is written
/// as a quoted string (RFC 9110 §5.6.4), so a certificate name `admins, ops` stays one item
/// instead of becoming the two groups `admins` and `ops` upstream.
pub fn header_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let item = item.as_ref();
        if i > 0 {
            out.push_str(", ");
        }
        let plain = !item.is_empty() && !item.contains([',', '"', '\\']) && item.trim() == item;
        if plain {
            out.push_str(item);
        } else {
            out.push('"');
            for c in item.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
    }
    out
}

/// nginx's `$host`: the Host header without its port.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    // A byte scan from the end: hosts are short, and this runs for every traced request.
    let b = host.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    let colon = b.len() - digits;
    if colon == 0 || b[colon - 1] != b':' || b[..colon - 1].contains(&b':') {
        return host;
    }
    &host[..colon - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_dropped() {
        assert_eq!(host_without_port("example.com:8000"), "example.com");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("example.com:"), "example.com");
        assert_eq!(host_without_port("8000"), "8000");
        assert_eq!(host_without_port(":80"), "");
        assert_eq!(host_without_port("a:b:80"), "a:b:80");
        assert_eq!(host_without_port("10.0.0.1:8"), "10.0.0.1");
    }

    #[test]
    fn a_file_is_read_once_per_load_so_what_is_hashed_is_what_was_applied() {
        let dir = std::env::temp_dir().join(format!("portcullis-filelog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ctx = BuildContext {
            conf_dir: dir.clone(),
            ..Default::default()
        };
        std::fs::write(dir.join("a.crl"), "old").unwrap();
        assert_eq!(&*ctx.read_file("a.crl").unwrap(), b"old");
        // Swapped while the same load goes on: the load keeps (and hashes) what it applied.
        std::fs::write(dir.join("a.crl"), "new").unwrap();
        assert_eq!(&*ctx.read_file("a.crl").unwrap(), b"old");
        assert_eq!(&*ctx.files.get(&dir.join("a.crl")).unwrap(), b"old");
        // The next load sees the new bytes.
        let next = BuildContext {
            conf_dir: dir.clone(),
            ..Default::default()
        };
        assert_eq!(&*next.read_file("a.crl").unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn header_list_quotes_items_that_would_split() {
        assert_eq!(header_list(&["a", "b"]), "a, b");
        assert_eq!(header_list(&["admins, ops"]), r#""admins, ops""#);
        assert_eq!(header_list(&[r#"say "hi"\"#]), r#""say \"hi\"\\""#);
        assert_eq!(header_list(&[" pad", ""]), r#"" pad", """#);
    }

    #[test]
    fn chain_digest_frames_each_certificate() {
        let ab_c = chain_sha256(&[b"ab".to_vec(), b"c".to_vec()]);
        let a_bc = chain_sha256(&[b"a".to_vec(), b"bc".to_vec()]);
        assert_ne!(
            ab_c, a_bc,
            "moving bytes between certificates must change the key"
        );
        assert_ne!(chain_sha256(&[b"abc".to_vec()]), ab_c);
        assert_eq!(ab_c, chain_sha256(&[b"ab".to_vec(), b"c".to_vec()]));
    }

    #[test]
    fn extensions_hold_one_value_per_type() {
        let mut e = Extensions::default();
        assert!(e.is_empty());
        assert_eq!(e.insert(1u32), None);
        assert_eq!(e.insert("a".to_string()), None);
        assert_eq!(e.insert(2u32), Some(1));
        assert_eq!(e.len(), 2);
        *e.get_mut::<String>().unwrap() += "b";
        assert_eq!(e.get::<String>().map(String::as_str), Some("ab"));
        assert_eq!(e.get::<u64>(), None);
        assert_eq!(e.remove::<u32>(), Some(2));
        assert_eq!(e.remove::<u32>(), None);
        assert_eq!(e.get::<String>().map(String::as_str), Some("ab"));
    }

    #[test]
    fn sha256_is_openssls() {
        for data in [&b""[..], b"abc", &[7u8; 1000][..]] {
            assert_eq!(sha256(data), openssl::sha::sha256(data));
        }
    }

    #[test]
    fn identity_headers() {
        assert!(is_identity_header("X-Consumer-ID"));
        assert!(is_identity_header("x-consumer-groups"));
        assert!(is_identity_header("X-Client-Cert-DN"));
        assert!(is_identity_header("X-Credential-Identifier"));
        assert!(is_identity_header("x-anonymous-consumer"));
        assert!(is_identity_header("X-Authenticated-Groups"));
        assert!(!is_identity_header("X-Consumer"));
        assert!(!is_identity_header("Host"));
        // Underscores for hyphens, any case: what CGI/WSGI stacks read as the same header.
        assert!(is_identity_header("X_Consumer_Username"));
        assert!(is_identity_header("x_client_cert_dn"));
        assert!(is_identity_header("X_CLIENT_CERT_SAN"));
        assert!(is_identity_header("x-credential_identifier"));
        assert!(is_identity_header("X_Anonymous_Consumer"));
        assert!(is_identity_header("x_authenticated_groups"));
        assert!(!is_identity_header("x_consumer"));
        assert!(!is_identity_header("x_authenticated_groupsx"));
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        allow: Vec<String>,
        #[serde(default)]
        hide: bool,
    }

    #[test]
    fn parse_config_reports_path() {
        let v = serde_json::json!({"allow": ["a", 1]});
        let e = parse_config::<Conf>(&v).unwrap_err();
        assert_eq!(e.path, "allow[1]");
        let v = serde_json::json!({"allow": [], "hdie": true});
        let e = parse_config::<Conf>(&v).unwrap_err();
        assert!(e.message.contains("hdie"), "{}", e.message);
        assert!(parse_config::<Conf>(&serde_json::json!({"allow": ["x"]})).is_ok());
    }
}
