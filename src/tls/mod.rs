//! Downstream TLS: the SNI → certificate store (rebuilt per configuration and swapped with it),
//! the `TlsAccept` callbacks that install the chosen certificate mid-handshake, ask for client
//! certificates where mtls-auth needs them, and capture what the client presented.

pub mod groups;
pub mod upstream;
pub mod x509;

use crate::config::model::{Certificate, Config};
use crate::names::{self, NameUse};
use async_trait::async_trait;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{
    select_next_proto, AlpnError, NameType, Ssl, SslAcceptor, SslContext, SslMethod, SslRef,
    SslVerifyMode,
};
use openssl::stack::Stack;
use openssl::x509::{X509Name, X509NameBuilder, X509Ref, X509};
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use portcullis_plugin_api::tls::{CertificateProvider, ProvidedCertificate, ACME_TLS_ALPN};
use portcullis_plugin_api::ClientCertificate;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// Which SNIs must request a client certificate.
#[derive(Debug, Default, Clone)]
pub struct ClientCertPolicy {
    /// Some mtls-auth route has no `snis`: every handshake asks.
    pub all: bool,
    pub snis: Vec<String>,
    /// DER subject names to send in the CertificateRequest (`send_ca_dn`).
    pub ca_names_der: Vec<Vec<u8>>,
}

impl ClientCertPolicy {
    /// `sni` normalised (`names::normalize`), as routing sees it.
    pub(crate) fn applies(&self, sni: Option<&str>) -> bool {
        if self.all {
            return true;
        }
        match sni {
            Some(s) => self
                .snis
                .iter()
                .any(|p| names::matches(NameUse::ClientCertificateRequest, p, s)),
            None => false,
        }
    }
}

/// Certificates by SNI for one configuration. Wildcards cover exactly one label, as certificate
/// wildcards (and Kong's SNI matching) do: `*.example.com` serves `a.example.com`, not
/// `a.b.example.com` nor `example.com`; `shop.*` serves `shop.` plus one label (`shop.test`, not
/// `shop.example.org`, which would need `shop.example.*`). See `names` for every use.
pub struct CertStore {
    /// Exact names and wildcard patterns (`*.example.com`, `example.*`) as written.
    by_name: HashMap<String, Arc<Certificate>>,
    default: Arc<Certificate>,
    pub client_certs: ClientCertPolicy,
    /// Certificates a global plugin provides (ACME) for SNIs no configured certificate matches.
    pub provider: Option<Arc<dyn CertificateProvider>>,
}

impl CertStore {
    pub fn new(
        config: &Config,
        fallback: Arc<Certificate>,
        client_certs: ClientCertPolicy,
    ) -> Self {
        let default = config.default_certificate.clone().unwrap_or(fallback);
        Self::for_certificates(&config.certificates, default, client_certs)
    }

    /// The store for `certificates`, with `default` when no SNI matches.
    pub fn for_certificates(
        certificates: &[Arc<Certificate>],
        default: Arc<Certificate>,
        client_certs: ClientCertPolicy,
    ) -> Self {
        let mut by_name = HashMap::new();
        for c in certificates {
            for s in &c.snis {
                by_name.insert(s.clone(), c.clone());
            }
        }
        CertStore {
            by_name,
            default,
            client_certs,
            provider: None,
        }
    }

    /// This store, asking `provider` for SNIs no configured certificate matches.
    pub fn with_provider(mut self, provider: Option<Arc<dyn CertificateProvider>>) -> Self {
        self.provider = provider;
        self
    }

    /// Exact SNI, then `*.rest`, then `all-but-last.*`, then the default certificate.
    pub fn lookup(&self, sni: Option<&str>) -> &Arc<Certificate> {
        sni.and_then(|s| self.configured(s))
            .unwrap_or(&self.default)
    }

    /// The configured certificate for `sni` (exact, then wildcards), if any.
    pub fn configured(&self, sni: &str) -> Option<&Arc<Certificate>> {
        let sni = names::normalize(sni);
        if let Some(c) = self.by_name.get(sni.as_ref()) {
            return Some(c);
        }
        // Kong's rule (`produce_wild_snis`): replace the first label by `*`, then the last one:
        // `www.domain.com` tries `*.domain.com`, then `www.domain.*`.
        names::certificate_wildcards(&sni)
            .iter()
            .flatten()
            .find_map(|pattern| self.by_name.get(pattern))
    }

    /// Whether a handshake for `sni` offering ALPN `acme-tls/1` is a TLS-ALPN-01 validation the
    /// provider answers.
    pub fn answers_tls_alpn(&self, sni: Option<&str>) -> bool {
        match (&self.provider, sni) {
            (Some(p), Some(s)) => p.answers_tls_alpn(&names::normalize(s)),
            _ => false,
        }
    }
}

/// A self-signed certificate for handshakes that match no SNI when no default is configured
/// (Kong does the same). Generated once per process.
pub fn self_signed() -> Result<Arc<Certificate>, openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Portcullis self-signed")?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(365)?)?;
    let san = openssl::x509::extension::SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = b.build();
    Ok(Arc::new(Certificate {
        id: "self-signed".into(),
        name: Some("self-signed".into()),
        subject: x509::subject_string(&cert),
        not_after: x509::not_after_unix(&cert),
        fingerprint: String::new(),
        chain: vec![cert],
        key,
        snis: Vec::new(),
        origin: "generated at start".into(),
    }))
}

/// The server side of a handshake on the stream listener for a `tls` route: the certificate the
/// HTTPS listeners would serve for `sni`, installed before the handshake starts (the stream
/// listener has already read the ClientHello, so no callback is needed).
pub fn stream_server_ssl(
    certs: &CertStore,
    sni: Option<&str>,
    groups: &[String],
) -> Result<Ssl, ErrorStack> {
    // One context per distinct group list (the listeners' lists are fixed at start: a
    // handful at most), built on first use.
    type Contexts = std::sync::Mutex<Vec<(Vec<String>, SslContext)>>;
    static CONTEXTS: Contexts = std::sync::Mutex::new(Vec::new());
    let ctx = {
        let mut contexts = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
        match contexts.iter().find(|(g, _)| g == groups) {
            Some((_, ctx)) => ctx.clone(),
            None => {
                // Mozilla's intermediate profile: TLS 1.2 and 1.3, as the HTTPS listeners allow.
                let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
                b.set_groups_list(&groups::server_list(groups))?;
                // The relayed protocol is unknown, so no ALPN is negotiated, except `postgresql`:
                // a client offering it speaks PostgreSQL whatever the backend, and PostgreSQL 17's
                // direct SSL refuses a server that does not select it.
                b.set_alpn_select_callback(|_, offered| {
                    select_next_proto(b"\x0apostgresql", offered).ok_or(AlpnError::NOACK)
                });
                let ctx = b.build().into_context();
                contexts.push((groups.to_vec(), ctx.clone()));
                ctx
            }
        }
    };
    let mut ssl = Ssl::new(&ctx)?;
    install(&mut ssl, certs.lookup(sni))?;
    Ok(ssl)
}

/// What the gateway learnt in the handshake, stored in Pingora's `SslDigest` extension.
#[derive(Debug, Default)]
pub struct ConnInfo {
    pub sni: Option<String>,
    /// The negotiated key-exchange group (`X25519MLKEM768`, `X25519`, ...).
    pub group: Option<&'static str>,
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// Where the TLS listeners find the certificates of the configuration in force. The gateway's
/// snapshot implements it (see `runtime`), so this module never depends on the rest of a
/// configuration; a reload swaps the store seen by the next handshake.
pub trait CertSource: Send + Sync + 'static {
    fn current(&self) -> Arc<CertStore>;
}

/// The `TlsAccept` callbacks of every TLS proxy listener.
pub struct Acceptor {
    pub certs: Arc<dyn CertSource>,
    /// The listener's address, for `portcullis_tls_handshakes_total`.
    pub listener: String,
}

fn install(ssl: &mut SslRef, cert: &Certificate) -> Result<(), openssl::error::ErrorStack> {
    install_chain(ssl, &cert.chain, &cert.key)
}

fn install_chain(
    ssl: &mut SslRef,
    chain: &[X509],
    key: &PKey<openssl::pkey::Private>,
) -> Result<(), openssl::error::ErrorStack> {
    let Some(leaf) = chain.first() else {
        return Err(ErrorStack::get());
    };
    pingora::tls::ext::ssl_use_certificate(ssl, leaf)?;
    for c in chain.iter().skip(1) {
        pingora::tls::ext::ssl_add_chain_cert(ssl, c)?;
    }
    pingora::tls::ext::ssl_use_private_key(ssl, key)
}

fn install_provided(ssl: &mut SslRef, cert: &ProvidedCertificate) {
    if let Err(e) = install_chain(ssl, &cert.chain, &cert.key) {
        tracing::error!(error = %e, "installing a provided certificate failed");
    }
}

/// The ALPN choice of an HTTPS listener: `acme-tls/1` for a TLS-ALPN-01 validation the
/// certificate provider answers, else `h2` then `http/1.1` when HTTP/2 is on, else no ALPN.
pub fn select_alpn<'a>(
    certs: &dyn CertSource,
    http2: bool,
    ssl: &mut SslRef,
    offered: &'a [u8],
) -> Result<&'a [u8], AlpnError> {
    // Only validation servers offer `acme-tls/1`; other handshakes pay one scan of the list.
    if offered_protocol(offered, ACME_TLS_ALPN) {
        let sni = ssl.servername(NameType::HOST_NAME);
        if certs.current().answers_tls_alpn(sni) {
            return select_next_proto(b"\x0aacme-tls/1", offered).ok_or(AlpnError::NOACK);
        }
    }
    if http2 {
        select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    } else {
        Err(AlpnError::NOACK)
    }
}

fn offered_protocol(mut list: &[u8], proto: &[u8]) -> bool {
    while let Some((&len, rest)) = list.split_first() {
        let len = len as usize;
        if rest.len() < len {
            return false;
        }
        if &rest[..len] == proto {
            return true;
        }
        list = &rest[len..];
    }
    false
}

impl Acceptor {
    fn install_default(&self, ssl: &mut SslRef, certs: &CertStore, sni: Option<&str>) {
        let cert = certs.lookup(sni);
        if let Err(e) = install(ssl, cert) {
            tracing::error!(certificate = cert.display_name(), error = %e, "installing certificate failed");
        }
    }
}

#[async_trait]
impl TlsAccept for Acceptor {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let certs = self.certs.current();
        // Normalised once: the certificate and the client-certificate request are decided on
        // the name routing will see (`handshake_complete_callback`).
        let sni = ssl
            .servername(NameType::HOST_NAME)
            .map(|s| names::normalize(s).into_owned());
        match (sni.as_deref(), &certs.provider) {
            (Some(s), Some(p)) if certs.configured(s).is_none() => {
                if ssl.selected_alpn_protocol() == Some(ACME_TLS_ALPN) {
                    // TLS 1.3 selects ALPN before this callback: a TLS-ALPN-01 validation gets
                    // the challenge certificate and nothing else.
                    if let Some(c) = p.tls_alpn_certificate(s).await {
                        install_provided(ssl, &c);
                    }
                    return;
                }
                match p.certificate(s) {
                    Some(c) => install_provided(ssl, &c),
                    None => {
                        p.missing(s);
                        self.install_default(ssl, &certs, sni.as_deref());
                    }
                }
            }
            _ => self.install_default(ssl, &certs, sni.as_deref()),
        }
        if certs.client_certs.applies(sni.as_deref()) {
            // Ask, accept whatever comes: each mtls-auth instance verifies against its own CAs,
            // so two routes on one SNI can trust different issuers.
            ssl.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
            let names = &certs.client_certs.ca_names_der;
            if !names.is_empty() {
                if let Ok(mut stack) = Stack::<X509Name>::new() {
                    for der in names {
                        if let Ok(n) = X509Name::from_der(der) {
                            let _ = stack.push(n);
                        }
                    }
                    ssl.set_client_ca_list(stack);
                }
            }
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let sni = ssl
            .servername(NameType::HOST_NAME)
            .map(|s| names::normalize(s).into_owned());
        let client_certificate = ssl.peer_certificate().map(|leaf| {
            let mut chain_der = Vec::new();
            if let Ok(d) = leaf.to_der() {
                chain_der.push(d);
            }
            if let Some(chain) = ssl.peer_cert_chain() {
                for c in chain {
                    if let Ok(d) = c.to_der() {
                        // The server-side chain may or may not repeat the leaf.
                        if chain_der.first() != Some(&d) {
                            chain_der.push(d);
                        }
                    }
                }
            }
            Arc::new(describe(&leaf, chain_der))
        });
        let group = group_label(portcullis_openssl_ext::negotiated_group(ssl));
        crate::metrics::TLS_HANDSHAKES
            .with_label_values(&[&self.listener, ssl.version_str(), group.unwrap_or("none")])
            .inc();
        Some(Arc::new(ConnInfo {
            sni,
            group,
            client_certificate,
        }))
    }
}

/// OpenSSL's group names are static strings; copying them into a `'static` set keeps the
/// per-connection record a pointer (and the metric label set bounded by OpenSSL's table).
fn group_label(name: Option<&str>) -> Option<&'static str> {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let name = name?;
    let mut seen = SEEN.lock().ok()?;
    if let Some(s) = seen.iter().find(|s| **s == name) {
        return Some(s);
    }
    let s: &'static str = Box::leak(name.to_owned().into_boxed_str());
    seen.push(s);
    Some(s)
}

fn name_to_string(name: &openssl::x509::X509NameRef) -> String {
    // RFC 2253 order is most-specific first.
    let mut parts: Vec<String> = name
        .entries()
        .filter_map(|e| {
            let key = e.object().nid().short_name().ok()?;
            let val = e.data().to_string().ok()?;
            Some(format!("{key}={}", escape_dn(&val)))
        })
        .collect();
    parts.reverse();
    parts.join(",")
}

fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Facts about a client certificate that plugins match on.
pub fn describe(leaf: &X509Ref, chain_der: Vec<Vec<u8>>) -> ClientCertificate {
    let common_name = leaf
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    let mut sans = Vec::new();
    if let Some(names) = leaf.subject_alt_names() {
        for n in &names {
            if let Some(d) = n.dnsname() {
                sans.push(d.to_string());
            } else if let Some(e) = n.email() {
                sans.push(e.to_string());
            } else if let Some(u) = n.uri() {
                sans.push(u.to_string());
            }
        }
    }
    let serial = leaf
        .serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default();
    let fingerprint_sha256 = leaf
        .digest(MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    ClientCertificate {
        chain_sha256: Some(portcullis_plugin_api::chain_sha256(&chain_der)),
        chain_der,
        subject_dn: name_to_string(leaf.subject_name()),
        issuer_dn: name_to_string(leaf.issuer_name()),
        common_name,
        sans,
        serial,
        fingerprint_sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::offered_protocol;

    #[test]
    fn acme_tls_alpn_is_found_only_as_a_whole_protocol() {
        assert!(offered_protocol(b"\x0aacme-tls/1", b"acme-tls/1"));
        assert!(offered_protocol(b"\x02h2\x0aacme-tls/1", b"acme-tls/1"));
        assert!(!offered_protocol(b"\x02h2\x08http/1.1", b"acme-tls/1"));
        // A name inside another protocol's bytes, or a truncated list, is not an offer.
        assert!(!offered_protocol(b"\x0cxacme-tls/1x", b"acme-tls/1"));
        assert!(!offered_protocol(b"\x0bacme-tls/1", b"acme-tls/1"));
        assert!(!offered_protocol(b"", b"acme-tls/1"));
    }
}
