//! Upstream TLS: one verification profile per service (trust anchors, depth, name, client
//! certificate), compiled once per configuration.
//!
//! Why verification happens in the handshake-complete hook rather than inside OpenSSL's handshake:
//! Pingora 0.9 offers no verify callback and no verify-depth option for upstream connections, it
//! turns verification off when the SNI is empty (IP upstreams), and when OpenSSL rejects a chain
//! the reason is lost (the error only says "certificate verify failed"). So Pingora is told not to
//! verify, the hook verifies the presented chain with an `X509Store` built for this service (depth,
//! host name or IP, purpose), and `connected_to_upstream` refuses the connection before a single
//! request byte is written when the result is not OK. The reason is OpenSSL's own text.

use crate::config::model::{Certificate, UpstreamTls};
use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509PurposeId, X509StoreContext, X509VerifyResult, X509};
use pingora::protocols::tls::TlsRef;
use pingora::tls::ssl::SslRef;
use pingora::utils::tls::CertKey;
use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

/// Result of verifying one upstream handshake; stored in the connection's `SslDigest`.
#[derive(Debug, Clone)]
pub struct UpstreamVerdict {
    /// `None` when the chain verified; otherwise OpenSSL's reason.
    pub failure: Option<String>,
    pub version: &'static str,
}

/// Everything needed to connect to a service's upstream over TLS.
pub struct TlsProfile {
    pub verify: bool,
    pub store: Option<Arc<X509Store>>,
    pub server_name: String,
    pub client_cert: Option<Arc<CertKey>>,
    pub group_key: u64,
    /// Key-exchange groups offered, in OpenSSL's list syntax (`tls.groups`).
    pub groups: &'static str,
}

impl std::fmt::Debug for TlsProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProfile")
            .field("verify", &self.verify)
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert.is_some())
            .finish()
    }
}

const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn system_roots(b: &mut X509StoreBuilder) {
    let from_env = std::env::var("SSL_CERT_FILE").ok();
    let candidates = from_env
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_BUNDLES.iter().copied());
    for path in candidates {
        if let Ok(pem) = std::fs::read(path) {
            if let Ok(certs) = X509::stack_from_pem(&pem) {
                for c in certs {
                    let _ = b.add_cert(c);
                }
                return;
            }
        }
    }
    let _ = b.set_default_paths();
}

/// Whether OpenSSL accepts `name` as the identity to check an upstream certificate against (an
/// IP address, or a host name) — validation asks, so building a profile cannot fail on it.
pub fn verifiable_name(name: &str) -> bool {
    let Ok(mut param) = X509VerifyParam::new() else {
        return false;
    };
    match name.parse::<IpAddr>() {
        Ok(ip) => param.set_ip(ip).is_ok(),
        Err(_) => !name.is_empty() && param.set_host(name).is_ok(),
    }
}

pub fn build_profile(
    tls: &UpstreamTls,
    groups: &[String],
) -> Result<TlsProfile, openssl::error::ErrorStack> {
    let groups = super::groups::interned_client_list(groups);
    let client_cert = tls
        .client_certificate
        .as_ref()
        .map(|c| Arc::new(cert_key(c)));
    if !tls.verify {
        return Ok(TlsProfile {
            verify: false,
            store: None,
            server_name: tls.server_name.clone(),
            client_cert,
            group_key: tls.group_key,
            groups,
        });
    }
    let mut b = X509StoreBuilder::new()?;
    if tls.ca_certificates.is_empty() {
        system_roots(&mut b);
    } else {
        for ca in &tls.ca_certificates {
            for c in &ca.certs {
                b.add_cert(c.clone())?;
            }
        }
    }
    let mut param = X509VerifyParam::new()?;
    match tls.server_name.parse::<IpAddr>() {
        Ok(ip) => param.set_ip(ip)?,
        Err(_) => param.set_host(&tls.server_name)?,
    }
    if let Some(depth) = tls.verify_depth {
        param.set_depth(i32::from(depth));
    }
    // A server certificate must be meant for servers: with an extended key usage, it needs
    // serverAuth (a client-only certificate of the same CA would otherwise impersonate it).
    param.set_purpose(X509PurposeId::SSL_SERVER)?;
    b.set_param(&param)?;
    Ok(TlsProfile {
        verify: true,
        store: Some(Arc::new(b.build())),
        server_name: tls.server_name.clone(),
        client_cert,
        group_key: tls.group_key,
        groups,
    })
}

fn cert_key(c: &Certificate) -> CertKey {
    CertKey::new(c.chain.clone(), c.key.clone())
}

/// Verify what the upstream presented against the profile's store.
pub fn verify_peer(store: &X509Store, ssl: &SslRef) -> Option<String> {
    let Some(leaf) = ssl.peer_certificate() else {
        return Some("no peer certificate".into());
    };
    let mut chain = match Stack::<X509>::new() {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    if let Some(presented) = ssl.peer_cert_chain() {
        for c in presented {
            let _ = chain.push(c.to_owned());
        }
    }
    let mut ctx = match X509StoreContext::new() {
        Ok(c) => c,
        Err(e) => return Some(e.to_string()),
    };
    let result = ctx.init(store, &leaf, &chain, |c| {
        let ok = c.verify_cert()?;
        Ok((ok, c.error()))
    });
    match result {
        Ok((true, _)) => None,
        Ok((false, err)) => Some(reason(err)),
        Err(e) => Some(e.to_string()),
    }
}

fn reason(err: X509VerifyResult) -> String {
    err.error_string().to_string()
}

/// TLS toward a `tls` service from the stream listener (`tls` and `tcp` routes), with the same
/// profile as proxied HTTPS: OpenSSL itself does not verify; the presented chain is checked
/// against the profile's store after the handshake, so the reason is OpenSSL's own text.
pub struct StreamTlsClient {
    ctx: SslContext,
    profile: Arc<TlsProfile>,
}

impl std::fmt::Debug for StreamTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.profile.fmt(f)
    }
}

/// Why a stream route's upstream TLS connection was refused.
#[derive(Debug)]
pub struct StreamTlsError {
    /// A short label for `portcullis_upstream_tls_failures_total{reason}`.
    pub reason: String,
    /// Everything OpenSSL said, for the connection log.
    pub detail: String,
}

impl StreamTlsClient {
    /// One client context per service, built when the configuration compiles (loading trust
    /// roots per connection would cost more than the handshake).
    pub fn new(profile: Arc<TlsProfile>) -> Result<Self, ErrorStack> {
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        b.set_verify(SslVerifyMode::NONE);
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        if let Some(ck) = &profile.client_cert {
            b.set_certificate(ck.leaf())?;
            for c in ck.intermediates() {
                b.add_extra_chain_cert(c.clone())?;
            }
            b.set_private_key(ck.key())?;
        }
        Ok(StreamTlsClient {
            ctx: b.build(),
            profile,
        })
    }

    /// Handshakes over `stream` and verifies the upstream's chain and name.
    pub async fn connect<S>(&self, stream: S) -> Result<SslStream<S>, StreamTlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let failed = |reason: &str, detail: String| StreamTlsError {
            reason: reason.to_string(),
            detail,
        };
        let setup = || -> Result<Ssl, ErrorStack> {
            let mut ssl = Ssl::new(&self.ctx)?;
            // No SNI for an IP address (RFC 6066), as Pingora does.
            if self.profile.server_name.parse::<IpAddr>().is_err() {
                ssl.set_hostname(&self.profile.server_name)?;
            }
            Ok(ssl)
        };
        let ssl = setup().map_err(|e| failed("internal error", e.to_string()))?;
        let mut tls =
            SslStream::new(ssl, stream).map_err(|e| failed("internal error", e.to_string()))?;
        if let Err(e) = std::pin::Pin::new(&mut tls).connect().await {
            let detail = e.to_string();
            let reason = match e.ssl_error() {
                Some(stack) => stack
                    .errors()
                    .first()
                    .and_then(|e| e.reason())
                    .unwrap_or("handshake failure")
                    .to_string(),
                None => "handshake failure".to_string(),
            };
            return Err(failed(&reason, detail));
        }
        if self.profile.verify {
            let failure = match &self.profile.store {
                Some(store) => verify_peer(store, tls.ssl()),
                None => Some("no trust store".to_string()),
            };
            if let Some(reason) = failure {
                return Err(failed(&reason, reason.clone()));
            }
        }
        Ok(tls)
    }
}

/// Pingora's upstream handshake-complete hook type.
pub type HandshakeHook = Arc<dyn Fn(&TlsRef) -> Option<Arc<dyn Any + Send + Sync>> + Send + Sync>;

/// The hook Pingora runs after every upstream handshake of a verifying profile.
pub fn handshake_hook(store: Option<Arc<X509Store>>) -> HandshakeHook {
    Arc::new(move |ssl: &TlsRef| {
        let failure = store.as_ref().and_then(|s| verify_peer(s, ssl));
        Some(Arc::new(UpstreamVerdict {
            failure,
            version: ssl.version_str(),
        }) as Arc<dyn Any + Send + Sync>)
    })
}
