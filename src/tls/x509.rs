//! X.509 helpers shared by configuration loading, the certificate store and metrics. A leaf
//! module: it depends on OpenSSL only, so `config` can use it without depending on the TLS
//! listeners.

use openssl::hash::MessageDigest;
use openssl::x509::X509;

/// SHA-256 of the DER encoding, lower-case hex (Kong's certificate fingerprints).
pub fn fingerprint(c: &X509) -> String {
    c.digest(MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default()
}

/// Whether the certificate carries the CA basic constraint (`CA:TRUE`). The openssl crate has no
/// accessor for basic constraints; its text form is OpenSSL's own rendering of the extension.
pub fn is_ca(cert: &X509) -> bool {
    let Ok(text) = cert.to_text() else {
        return false;
    };
    let text = String::from_utf8_lossy(&text);
    text.split("X509v3 Basic Constraints")
        .nth(1)
        .and_then(|rest| rest.lines().nth(1))
        .is_some_and(|l| l.trim_start().starts_with("CA:TRUE"))
}

/// The subject as `CN=...,O=...` (short names, in certificate order).
pub fn subject_string(c: &X509) -> String {
    c.subject_name()
        .entries()
        .filter_map(|e| {
            let key = e.object().nid().short_name().ok()?;
            let val = e.data().to_string().ok()?;
            Some(format!("{key}={val}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// "Not After" as Unix seconds (0 when it cannot be computed).
pub fn not_after_unix(c: &X509) -> i64 {
    let epoch = match openssl::asn1::Asn1Time::from_unix(0) {
        Ok(t) => t,
        Err(_) => return 0,
    };
    match epoch.diff(c.not_after()) {
        Ok(diff) => i64::from(diff.days) * 86_400 + i64::from(diff.secs),
        Err(_) => 0,
    }
}
