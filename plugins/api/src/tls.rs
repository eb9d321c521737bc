//! Certificates a plugin provides to the HTTPS listeners (ACME), without the TLS code knowing
//! where they come from. The listener asks only when no configured certificate matches the SNI,
//! so configured certificates take precedence (as in Kong) and a handshake for a configured SNI
//! costs nothing extra.

use std::sync::{Arc, OnceLock};

/// A certificate chain and its private key, ready to install in a handshake.
pub struct ProvidedCertificate {
    /// Leaf first.
    pub chain: Vec<openssl::x509::X509>,
    pub key: openssl::pkey::PKey<openssl::pkey::Private>,
}

impl std::fmt::Debug for ProvidedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ProvidedCertificate")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Consulted by the TLS listeners of a configuration that has a global plugin exposing one
/// ([`crate::Plugin::certificates`]). Names are normalised (lower case, no trailing dot).
#[async_trait::async_trait]
pub trait CertificateProvider: Send + Sync {
    /// The certificate for `sni`, when one is ready. Called mid-handshake: must not block.
    fn certificate(&self, sni: &str) -> Option<Arc<ProvidedCertificate>>;

    /// No configured nor provided certificate matched `sni`: the handshake gets the default
    /// certificate, and the provider may start getting one. Must not block.
    fn missing(&self, sni: &str);

    /// Whether a validation connection offering [`ACME_TLS_ALPN`] for `sni` should be answered
    /// (the listener then selects that protocol). Must not block.
    fn answers_tls_alpn(&self, sni: &str) -> bool;

    /// The TLS-ALPN-01 challenge certificate for `sni`, once [`ACME_TLS_ALPN`] was selected.
    async fn tls_alpn_certificate(&self, sni: &str) -> Option<Arc<ProvidedCertificate>>;
}

/// `portcullis_certificate_expiry_timestamp_seconds{kind,name,subject}`: shared by the gateway
/// (configured certificates) and plugins that provide certificates (`kind="acme"`), so both
/// report in one family.
pub fn certificate_expiry() -> &'static prometheus::IntGaugeVec {
    static G: OnceLock<prometheus::IntGaugeVec> = OnceLock::new();
    G.get_or_init(|| {
        let g = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "portcullis_certificate_expiry_timestamp_seconds",
                "notAfter of every loaded certificate as a Unix timestamp",
            ),
            &["kind", "name", "subject"],
        )
        .unwrap_or_else(|_| invalid_gauge());
        let _ = prometheus::default_registry().register(Box::new(g.clone()));
        g
    })
}

#[allow(clippy::panic)]
fn invalid_gauge() -> prometheus::IntGaugeVec {
    // The name and labels are constants; `new` fails only for an invalid definition.
    panic!("invalid metric definition")
}
