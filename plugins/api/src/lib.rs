//! The hook trait Portcullis plugins implement, and the types they see.
//!
//! This crate is a leaf: the gateway depends on it and so do plugin crates, so plugins never
//! depend on the gateway (Cargo would reject the cycle). Nothing here knows about Pingora.
//!
//! Phases map onto Pingora's `ProxyHttp` hooks like this:
//!
//! | phase (Kong name)        | method                    | called from Pingora's   |
//! |--------------------------|---------------------------|-------------------------|
//! | access                   | [`Plugin::access`]        | `request_filter`        |
//! | upstream request         | [`Plugin::upstream_request`] | `upstream_request_filter` |
//! | header_filter            | [`Plugin::response_headers`] | `response_filter`     |
//! | log                      | [`Plugin::log`]           | `logging` (also after errors) |

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use async_trait::async_trait;
pub use http;
pub use serde_json;

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

/// The consumers and CA certificates of the configuration a plugin instance is built for.
#[derive(Debug, Default)]
pub struct BuildContext {
    pub consumers: Vec<Arc<Consumer>>,
    pub credentials: Vec<MtlsCredential>,
    pub ca_certificates: Vec<Arc<CaCertificate>>,
    /// The conf directory, for files a plugin's config names relative to it (`crl_file`).
    pub conf_dir: PathBuf,
}

impl BuildContext {
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
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    pub sni: Option<String>,
    pub client_certificate: Option<Arc<ClientCertificate>>,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// Set by an authentication plugin.
    pub consumer: Option<Arc<Consumer>>,
    pub credential_identifier: Option<String>,
    /// Groups an authentication plugin derived without a consumer (mtls-auth's
    /// `authenticated_group_by`).
    pub authenticated_groups: Option<Vec<String>>,
    pub anonymous: bool,
    /// Headers the gateway sets (replacing) on the upstream request after the access phase.
    pub upstream_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Headers the gateway removes from the upstream request.
    pub upstream_headers_remove: Vec<http::HeaderName>,
    /// Headers the gateway sets on the response to the client.
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Why authentication failed, for `portcullis_auth_failures_total{plugin,reason}`.
    pub auth_failure: Option<(&'static str, &'static str)>,
    /// Free-form values plugins hand each other.
    pub shared: HashMap<&'static str, String>,
}

impl RequestCtx {
    /// Set (replace) a header on the upstream request. Invalid values are dropped: a header
    /// built from certificate data must never fail a request.
    pub fn set_upstream_header(&mut self, name: &'static str, value: &str) {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            let name = http::HeaderName::from_static(name);
            self.upstream_headers.retain(|(n, _)| n != name);
            self.upstream_headers.push((name, v));
        }
    }

    pub fn remove_upstream_header(&mut self, name: &'static str) {
        let name = http::HeaderName::from_static(name);
        self.upstream_headers.retain(|(n, _)| n != name);
        self.upstream_headers_remove.push(name);
    }
}

/// A read-only view of the client's request.
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
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

/// One configured plugin instance. Instances are built once per configuration and shared by
/// `Arc` across requests, so per-request state lives in [`RequestCtx`].
#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's name as written in `plugins[].name`.
    fn name(&self) -> &'static str;

    /// Kong's PRIORITY: higher runs first.
    fn priority(&self) -> i32;

    /// When this instance needs the TLS listener to ask for a client certificate on the SNIs of
    /// the routes it is attached to.
    fn client_cert_request(&self) -> Option<ClientCertRequest> {
        None
    }

    /// Access phase (Pingora `request_filter`): authenticate, authorise, or answer directly.
    async fn access(&self, _req: &RequestView<'_>, _ctx: &mut RequestCtx) -> Flow {
        Flow::Continue
    }

    /// Upstream request phase (Pingora `upstream_request_filter`): add headers to
    /// `ctx.upstream_headers` that depend on the chosen upstream.
    fn upstream_request(&self, _ctx: &mut RequestCtx) {}

    /// Response header phase (Pingora `response_filter`).
    fn response_headers(&self, _status: u16, _ctx: &mut RequestCtx) {}

    /// Log phase (Pingora `logging`): runs for every request, after errors too.
    fn log(&self, _status: u16, _ctx: &RequestCtx) {}
}

/// Builds instances of one plugin from their `config`; registered once with the gateway.
pub trait PluginFactory: Send + Sync {
    fn name(&self) -> &'static str;

    /// Validate `config` (JSON converted from YAML) and build an instance. Report every problem
    /// found, each with the path of the offending field.
    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>>;
}

/// Headers that carry an identity the gateway established; a client must never set them.
pub fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    let starts = |p: &str| n.len() >= p.len() && n[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    starts("x-consumer-")
        || starts("x-client-cert-")
        || name.eq_ignore_ascii_case("x-credential-identifier")
        || name.eq_ignore_ascii_case("x-anonymous-consumer")
        || name.eq_ignore_ascii_case("x-authenticated-groups")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn identity_headers() {
        assert!(is_identity_header("X-Consumer-ID"));
        assert!(is_identity_header("x-consumer-groups"));
        assert!(is_identity_header("X-Client-Cert-DN"));
        assert!(is_identity_header("X-Credential-Identifier"));
        assert!(is_identity_header("x-anonymous-consumer"));
        assert!(is_identity_header("X-Authenticated-Groups"));
        assert!(!is_identity_header("X-Consumer"));
        assert!(!is_identity_header("Host"));
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
