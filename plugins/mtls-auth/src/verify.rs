//! Chain verification against the plugin's own trust anchors. The TLS handshake accepts any
//! certificate; this is where trust is decided, per plugin instance, so two routes on one SNI can
//! trust different CAs.

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder, X509StoreRef};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509PurposeId, X509Ref, X509StoreContext, X509};

/// `X509_V_ERR_CERT_HAS_EXPIRED`, stable across OpenSSL versions.
const ERR_CERT_HAS_EXPIRED: i32 = 10;

/// Why a presented chain was not accepted (for logs and the metrics `reason` label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// A certificate in the chain is not DER we can parse.
    Malformed,
    Expired,
    Untrusted(String),
}

impl ChainError {
    pub fn reason(&self) -> &'static str {
        match self {
            ChainError::Expired => "expired",
            ChainError::Malformed | ChainError::Untrusted(_) => "verification_failed",
        }
    }
}

/// Trust anchors of one plugin instance. `allow_partial_chain` lets any certificate in the
/// store, intermediates included, terminate the chain.
pub fn build_store(cas: &[X509], allow_partial_chain: bool) -> Result<X509Store, ErrorStack> {
    build_store_for(cas, allow_partial_chain, X509PurposeId::SSL_CLIENT)
}

/// The same trust anchors for checking OCSP responses. OpenSSL lets a purpose set on the store
/// override the OCSP-signer purpose `OCSP_basic_verify` asks for, so the client store (purpose
/// SSL client) would refuse every delegated responder (EKU OCSPSigning only) and turn its
/// "revoked" into "unknown".
pub fn build_ocsp_store(cas: &[X509], allow_partial_chain: bool) -> Result<X509Store, ErrorStack> {
    build_store_for(cas, allow_partial_chain, X509PurposeId::OCSP_HELPER)
}

fn build_store_for(
    cas: &[X509],
    allow_partial_chain: bool,
    purpose: X509PurposeId,
) -> Result<X509Store, ErrorStack> {
    let mut builder = X509StoreBuilder::new()?;
    for ca in cas {
        builder.add_cert(ca.clone())?;
    }
    if allow_partial_chain {
        builder.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
    }
    // A server-only certificate (EKU serverAuth alone) must not log anyone in.
    builder.set_purpose(purpose)?;
    Ok(builder.build())
}

/// Verifies the client's chain (`chain_der[0]` the leaf, the rest untrusted intermediates) and
/// returns the verified path, leaf first, trust anchor last.
pub fn verify_chain(store: &X509StoreRef, chain_der: &[Vec<u8>]) -> Result<Vec<X509>, ChainError> {
    let (leaf_der, rest) = chain_der.split_first().ok_or(ChainError::Malformed)?;
    let leaf = X509::from_der(leaf_der).map_err(|_| ChainError::Malformed)?;
    let mut untrusted = Stack::new().map_err(|e| ChainError::Untrusted(e.to_string()))?;
    for der in rest {
        let cert = X509::from_der(der).map_err(|_| ChainError::Malformed)?;
        untrusted
            .push(cert)
            .map_err(|e| ChainError::Untrusted(e.to_string()))?;
    }
    let mut ctx = X509StoreContext::new().map_err(|e| ChainError::Untrusted(e.to_string()))?;
    let outcome = ctx
        .init(store, &leaf, &untrusted, |c| {
            if c.verify_cert()? {
                let chain = c
                    .chain()
                    .map(|s| s.iter().map(X509Ref::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default();
                Ok(Ok(chain))
            } else {
                Ok(Err(c.error()))
            }
        })
        .map_err(|e| ChainError::Untrusted(e.to_string()))?;
    match outcome {
        Ok(chain) if !chain.is_empty() => Ok(chain),
        Ok(_) => Err(ChainError::Untrusted("empty verified chain".into())),
        Err(e) if e.as_raw() == ERR_CERT_HAS_EXPIRED => Err(ChainError::Expired),
        Err(e) => Err(ChainError::Untrusted(e.error_string().to_string())),
    }
}

/// SHA-256 of a certificate's DER, the identity used to compare CA certificates.
pub fn digest(cert: &X509Ref) -> Option<[u8; 32]> {
    let d = cert.digest(MessageDigest::sha256()).ok()?;
    d.as_ref().try_into().ok()
}

/// Seconds from now until the certificate's notAfter (negative when past).
pub fn seconds_until_not_after(cert: &X509Ref) -> Option<i64> {
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
    let diff = now.diff(cert.not_after()).ok()?;
    Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}
