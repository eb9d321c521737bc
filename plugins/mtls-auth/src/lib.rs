//! mtls-auth: authenticates clients by their TLS client certificate and maps it to a consumer
//! (Kong Enterprise's mtls-auth, in the open; SPEC §4).
//!
//! The gateway captures the presented chain in the handshake without judging it; this plugin
//! verifies it against its own `ca_certificates`, checks revocation, finds the consumer, and
//! caches the whole decision by chain digest so keep-alive requests cost a hash and a map lookup.

// Tests may unwrap: a panic there is a failed test, not a crashed gateway.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cache;
mod config;
mod http;
mod revocation;
mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Object;
use openssl::nid::Nid;
use openssl::x509::X509;
use portcullis_plugin_api::{
    async_trait, auth, parse_config, BuildContext, ClientCertRequest, ClientCertificate,
    ConfigError, Consumer, Flow, Plugin, PluginFactory, PluginResponse, RequestCtx, RequestView,
};

use crate::cache::TtlMap;
use crate::config::{ConsumerField, GroupBy, RawConfig, RevocationMode};
use crate::revocation::{Revocation, Status};

pub const NAME: &str = "mtls-auth";
/// Kong's PRIORITY for mtls-auth: before every other authentication plugin.
pub const PRIORITY: i32 = 1600;

const MSG_NO_CERT: &str = "No required TLS certificate was sent";
const MSG_FAILED: &str = "TLS certificate failed verification";
const MSG_UNAUTHORIZED: &str = "Unauthorized";

/// Builds mtls-auth instances; register it with the gateway's plugin registry.
pub struct Factory;

/// What a certificate chain earned, cached by chain digest.
#[derive(Debug)]
enum Decision {
    Reject {
        reason: &'static str,
        message: &'static str,
    },
    Consumer {
        consumer: Arc<Consumer>,
        /// The certificate name that identified the consumer (`X-Credential-Identifier`).
        credential: String,
    },
    /// `skip_consumer_lookup`: any verified certificate, its CN or DN as the group.
    Groups { group: Option<String> },
}

struct CredentialEntry {
    /// SHA-256 digests of the certificates of the mapping's CA; `None` matches any CA.
    ca: Option<HashSet<[u8; 32]>>,
    consumer: Arc<Consumer>,
}

/// Consumers and `mtls_auth_credentials` indexed by the names a certificate can carry.
#[derive(Default)]
struct ConsumerIndex {
    credentials: HashMap<String, Vec<CredentialEntry>>,
    by_custom_id: HashMap<String, Arc<Consumer>>,
    by_username: HashMap<String, Arc<Consumer>>,
}

impl ConsumerIndex {
    fn build(ctx: &BuildContext) -> Self {
        let mut index = ConsumerIndex::default();
        for c in &ctx.consumers {
            if let Some(id) = &c.custom_id {
                index.by_custom_id.entry(id.clone()).or_insert(c.clone());
            }
            if let Some(name) = &c.username {
                index.by_username.entry(name.clone()).or_insert(c.clone());
            }
        }
        for cred in &ctx.credentials {
            let Some(consumer) = ctx.consumers.iter().find(|c| c.id == cred.consumer_id) else {
                continue;
            };
            // A mapping whose CA cannot be resolved must match nothing rather than any CA.
            let ca = cred.ca_certificate.as_ref().map(|r| {
                ctx.ca_certificate(r)
                    .and_then(|ca| X509::stack_from_pem(ca.pem.as_bytes()).ok())
                    .map(|certs| certs.iter().filter_map(|c| verify::digest(c)).collect())
                    .unwrap_or_default()
            });
            index
                .credentials
                .entry(cred.subject_name.clone())
                .or_default()
                .push(CredentialEntry {
                    ca,
                    consumer: consumer.clone(),
                });
        }
        index
    }

    /// Kong's order: mappings for the issuing CA, mappings for any CA, then `consumer_by`; each
    /// step tries the names in order (SANs, then CN).
    fn lookup(
        &self,
        names: &[&str],
        issuers: &[[u8; 32]],
        consumer_by: &[ConsumerField],
    ) -> Option<(Arc<Consumer>, String)> {
        let by_ca = |entry: &CredentialEntry| {
            entry
                .ca
                .as_ref()
                .is_some_and(|ca| issuers.iter().any(|d| ca.contains(d)))
        };
        let any_ca = |entry: &CredentialEntry| entry.ca.is_none();
        for accept in [&by_ca as &dyn Fn(&CredentialEntry) -> bool, &any_ca] {
            for name in names {
                if let Some(entry) = self
                    .credentials
                    .get(*name)
                    .and_then(|entries| entries.iter().find(|e| accept(e)))
                {
                    return Some((entry.consumer.clone(), name.to_string()));
                }
            }
        }
        for name in names {
            for field in consumer_by {
                let map = match field {
                    ConsumerField::CustomId => &self.by_custom_id,
                    ConsumerField::Username => &self.by_username,
                };
                let Some(c) = map.get(*name) else { continue };
                // A credential ties this name of this consumer to a CA, and that CA did not
                // issue the certificate (or the first step would have matched): the same
                // name from another CA must not log in as that consumer by its username.
                let pinned = self.credentials.get(*name).is_some_and(|entries| {
                    entries
                        .iter()
                        .any(|e| e.ca.is_some() && e.consumer.id == c.id)
                });
                if !pinned {
                    return Some((c.clone(), name.to_string()));
                }
            }
        }
        None
    }
}

/// One configured mtls-auth instance.
pub struct MtlsAuth {
    store: Arc<openssl::x509::store::X509Store>,
    ca_names_der: Vec<Vec<u8>>,
    send_ca_dn: bool,
    skip_consumer_lookup: bool,
    consumer_by: Vec<ConsumerField>,
    group_by: GroupBy,
    anonymous: Option<Arc<Consumer>>,
    default_consumer: Option<Arc<Consumer>>,
    dirname_matcher: Vec<Asn1Object>,
    revocation: Revocation,
    index: ConsumerIndex,
    cache_ttl: Duration,
    decisions: TtlMap<[u8; 32], Arc<Decision>>,
}

fn resolve_consumer(
    ctx: &BuildContext,
    field: &str,
    reference: &Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<Consumer>> {
    let r = reference.as_deref()?;
    let found = ctx.consumer(r);
    if found.is_none() {
        errors.push(ConfigError::new(
            field,
            format!("unknown consumer `{r}` (use a consumer's id or username)"),
        ));
    }
    found
}

fn millis(ms: f64) -> Duration {
    Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::ZERO)
}

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(MtlsAuth::from_config(config, ctx)?))
    }
}

impl MtlsAuth {
    /// Parses and validates `config`, resolving its references against `ctx`; every problem is
    /// reported, each with its field path.
    pub fn from_config(
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<MtlsAuth, Vec<ConfigError>> {
        let raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = raw.check();

        let mut cas = Vec::new();
        for (i, reference) in raw.ca_certificates.iter().enumerate() {
            let path = format!("ca_certificates[{i}]");
            let Some(ca) = ctx.ca_certificate(reference) else {
                errors.push(ConfigError::new(
                    path,
                    format!("unknown CA certificate `{reference}` (use the id or name of a ca_certificates entry)"),
                ));
                continue;
            };
            match X509::stack_from_pem(ca.pem.as_bytes()) {
                Ok(certs) if !certs.is_empty() => cas.extend(certs),
                _ => errors.push(ConfigError::new(
                    path,
                    format!("CA certificate `{reference}` holds no PEM certificate"),
                )),
            }
        }

        let anonymous = resolve_consumer(ctx, "anonymous", &raw.anonymous, &mut errors);
        let default_consumer =
            resolve_consumer(ctx, "default_consumer", &raw.default_consumer, &mut errors);

        let mut file_crls = Vec::new();
        if let Some(file) = raw.crl_file.as_deref().filter(|f| !f.trim().is_empty()) {
            let path = ctx.conf_dir.join(file);
            match ctx.read_file(file) {
                Err(e) => errors.push(ConfigError::new(
                    "crl_file",
                    format!("cannot read {}: {e}", path.display()),
                )),
                Ok(data) => match revocation::parse_crls(&data) {
                    Ok(crls) if !crls.is_empty() => file_crls = crls,
                    Ok(_) => errors.push(ConfigError::new(
                        "crl_file",
                        format!("{} holds no CRL", path.display()),
                    )),
                    Err(e) => errors.push(ConfigError::new(
                        "crl_file",
                        format!("{}: {e}", path.display()),
                    )),
                },
            }
        }

        let mut dirname_matcher = Vec::new();
        for (i, m) in raw.san_dirname_matcher.iter().flatten().enumerate() {
            match Asn1Object::from_str(m) {
                Ok(o) => dirname_matcher.push(o),
                Err(_) => errors.push(ConfigError::new(
                    format!("san_dirname_matcher[{i}]"),
                    format!("`{m}` is not an attribute name or OID (e.g. CN, commonName, 2.5.4.3)"),
                )),
            }
        }

        let store = match verify::build_store(&cas, raw.allow_partial_chain) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                if !cas.is_empty() {
                    errors.push(ConfigError::new(
                        "ca_certificates",
                        format!("cannot build the trust store: {e}"),
                    ));
                }
                None
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(store) = store else {
            return Err(vec![ConfigError::new(
                "ca_certificates",
                "cannot build the trust store",
            )]);
        };

        let ca_names_der = cas
            .iter()
            .filter_map(|c| c.subject_name().to_der().ok())
            .collect();
        let ocsp_store = match verify::build_ocsp_store(&cas, raw.allow_partial_chain) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                return Err(vec![ConfigError::new(
                    "ca_certificates",
                    format!("cannot build the OCSP trust store: {e}"),
                )])
            }
        };
        let revocation = Revocation::new(
            raw.revocation_check_mode.unwrap_or_default(),
            file_crls,
            millis(raw.http_timeout),
            millis(raw.cert_cache_ttl),
            ocsp_store,
        );
        Ok(MtlsAuth {
            store,
            ca_names_der,
            send_ca_dn: raw.send_ca_dn,
            skip_consumer_lookup: raw.skip_consumer_lookup,
            consumer_by: raw.consumer_by.unwrap_or_default(),
            group_by: raw.authenticated_group_by.unwrap_or_default(),
            anonymous,
            default_consumer,
            dirname_matcher,
            revocation,
            index: ConsumerIndex::build(ctx),
            cache_ttl: Duration::try_from_secs_f64(raw.cache_ttl).unwrap_or(Duration::ZERO),
            decisions: TtlMap::new(),
        })
    }
}

/// The cache key of a presented chain: SHA-256 over every certificate, length-prefixed. The
/// plugin computes it itself rather than trusting a digest from elsewhere, because a collision
/// here would hand one client another's identity.
fn chain_key(cert: &ClientCertificate) -> [u8; 32] {
    cert.chain_sha256
        .unwrap_or_else(|| portcullis_plugin_api::chain_sha256(&cert.chain_der))
}

/// `RequestCtx::set_upstream_header` drops values a header cannot carry (certificate data may
/// contain anything) rather than failing the request.
fn set_header(ctx: &mut RequestCtx, name: &'static str, value: &str) {
    ctx.set_upstream_header(name, value);
}

/// Forgets a header an earlier plugin set in this request. Not `remove_upstream_header`: that
/// would also strip a value a later plugin sets.
fn drop_header(ctx: &mut RequestCtx, name: &'static str) {
    ctx.upstream_headers.retain(|(n, _)| n.as_str() != name);
}

impl MtlsAuth {
    fn dirname_values(&self, leaf: &X509) -> Vec<String> {
        let Some(sans) = leaf.subject_alt_names() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in sans.iter().filter_map(|gn| gn.directory_name()) {
            for entry in name.entries() {
                let obj = entry.object();
                let wanted = self.dirname_matcher.is_empty()
                    || self.dirname_matcher.iter().any(|m| {
                        if m.nid() != Nid::UNDEF {
                            m.nid() == obj.nid()
                        } else {
                            m.to_string() == obj.to_string()
                        }
                    });
                if wanted {
                    if let Ok(v) = entry.data().to_string() {
                        out.push(v);
                    }
                }
            }
        }
        out
    }

    /// Verifies, checks revocation and looks up the consumer; returns the decision and whether
    /// it may be cached.
    async fn evaluate(&self, cert: &ClientCertificate) -> (Decision, Option<Instant>) {
        let cache_until = |leaf: Option<&X509>| {
            if self.cache_ttl.is_zero() {
                return None;
            }
            let mut until = Instant::now() + self.cache_ttl;
            // A cached acceptance must not outlive the certificate.
            if let Some(secs) = leaf.and_then(|l| verify::seconds_until_not_after(l)) {
                until = until.min(Instant::now() + Duration::from_secs(secs.max(0) as u64));
            }
            Some(until)
        };
        let chain = match verify::verify_chain(&self.store, &cert.chain_der) {
            Ok(chain) => chain,
            Err(e) => {
                tracing::info!(
                    plugin = NAME,
                    subject = %cert.subject_dn,
                    error = ?e,
                    "client certificate rejected"
                );
                let d = Decision::Reject {
                    reason: e.reason(),
                    message: MSG_FAILED,
                };
                return (d, cache_until(None));
            }
        };
        let leaf = &chain[0];
        match self.revocation.check(&chain).await {
            Status::Revoked => {
                tracing::info!(plugin = NAME, subject = %cert.subject_dn, "client certificate revoked");
                let d = Decision::Reject {
                    reason: "revoked",
                    message: MSG_FAILED,
                };
                return (d, cache_until(Some(leaf)));
            }
            Status::Unknown if self.revocation.mode == RevocationMode::Strict => {
                tracing::info!(
                    plugin = NAME,
                    subject = %cert.subject_dn,
                    "revocation status unknown and revocation_check_mode is STRICT"
                );
                // Not cached: the answer may come once the responder is back.
                let d = Decision::Reject {
                    reason: "revocation_unknown",
                    message: MSG_FAILED,
                };
                return (d, None);
            }
            _ => {}
        }

        if self.skip_consumer_lookup {
            let group = match self.group_by {
                GroupBy::Cn => cert.common_name.clone(),
                GroupBy::Dn => Some(cert.subject_dn.clone()),
            };
            return (Decision::Groups { group }, cache_until(Some(leaf)));
        }

        let dirnames = self.dirname_values(leaf);
        let names: Vec<&str> = cert
            .sans
            .iter()
            .map(String::as_str)
            .chain(dirnames.iter().map(String::as_str))
            .chain(cert.common_name.as_deref())
            .collect();
        let issuers: Vec<[u8; 32]> = chain
            .iter()
            .skip(1)
            .filter_map(|c| verify::digest(c))
            .collect();
        let decision = match self.index.lookup(&names, &issuers, &self.consumer_by) {
            Some((consumer, credential)) => Decision::Consumer {
                consumer,
                credential,
            },
            None => match &self.default_consumer {
                Some(consumer) => Decision::Consumer {
                    consumer: consumer.clone(),
                    credential: cert
                        .common_name
                        .clone()
                        .or_else(|| cert.sans.first().cloned())
                        .unwrap_or_else(|| cert.subject_dn.clone()),
                },
                None => {
                    tracing::info!(plugin = NAME, subject = %cert.subject_dn, "no consumer matches the certificate");
                    Decision::Reject {
                        reason: "no_consumer",
                        message: MSG_UNAUTHORIZED,
                    }
                }
            },
        };
        (decision, cache_until(Some(leaf)))
    }

    async fn decide(&self, cert: &ClientCertificate) -> Arc<Decision> {
        let key = chain_key(cert);
        if let Some(d) = self.decisions.get(&key) {
            return d;
        }
        // Boxed: the verification future (CRL and OCSP fetches) is many kilobytes, and inline it
        // would be allocated and copied for every request, cached ones included.
        Box::pin(self.decide_uncached(cert, key)).await
    }

    async fn decide_uncached(&self, cert: &ClientCertificate, key: [u8; 32]) -> Arc<Decision> {
        let (decision, until) = self.evaluate(cert).await;
        let decision = Arc::new(decision);
        if let Some(until) = until {
            self.decisions.insert(key, decision.clone(), until);
        }
        decision
    }

    /// A failed authentication: the anonymous consumer when configured, else Kong's 401.
    fn reject(&self, ctx: &mut RequestCtx, reason: &'static str, message: &'static str) -> Flow {
        auth::failed(
            ctx,
            NAME,
            self.anonymous.as_ref(),
            reason,
            PluginResponse::message(401, message),
        )
    }
}

#[async_trait]
impl Plugin for MtlsAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn client_cert_request(&self) -> Option<ClientCertRequest> {
        Some(ClientCertRequest {
            ca_names_der: if self.send_ca_dn {
                self.ca_names_der.clone()
            } else {
                Vec::new()
            },
        })
    }

    async fn access(&self, _req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        // Kong's logical OR between auth plugins: with `anonymous` set, a client another plugin
        // already authenticated is not asked again.
        if auth::skip_when_authenticated(ctx, self.anonymous.is_some()) {
            return Flow::Continue;
        }
        let cert = match &ctx.client_certificate {
            Some(c) if ctx.tls && !c.chain_der.is_empty() => c.clone(),
            _ => return self.reject(ctx, "no_certificate", MSG_NO_CERT),
        };
        let decision = self.decide(&cert).await;
        // Kong's `kong.client.tls.set_client_verify`, for the log record: the chain verified
        // (whether or not a consumer matched it), or why not.
        ctx.client_verify = Some(match &*decision {
            Decision::Reject { reason, .. } if *reason != "no_consumer" => {
                format!("FAILED:{reason}").into()
            }
            _ => "SUCCESS".into(),
        });
        match &*decision {
            Decision::Reject { reason, message } => self.reject(ctx, reason, message),
            Decision::Consumer {
                consumer,
                credential,
            } => {
                auth::authenticated(ctx, consumer, credential);
                Flow::Continue
            }
            Decision::Groups { group } => {
                ctx.authenticated_groups = Some(group.iter().cloned().collect());
                ctx.anonymous = false;
                set_header(ctx, "x-client-cert-dn", &cert.subject_dn);
                if cert.sans.is_empty() {
                    drop_header(ctx, "x-client-cert-san");
                } else {
                    let sans = portcullis_plugin_api::header_list(&cert.sans);
                    set_header(ctx, "x-client-cert-san", &sans);
                }
                Flow::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests;
