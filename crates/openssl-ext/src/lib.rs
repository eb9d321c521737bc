//! OpenSSL calls the `openssl` crate does not wrap (yet), each behind a safe function, so the
//! gateway crates can keep `unsafe_code = "forbid"`. Keep this crate tiny and every call
//! documented with the OpenSSL contract it relies on.

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;
use std::ffi::CStr;

/// The key-exchange group negotiated on this connection (`X25519MLKEM768`, `X25519`,
/// `secp256r1`, ...), as OpenSSL names it; `None` before the handshake or without a group
/// (TLS 1.2 with RSA key exchange).
pub fn negotiated_group(ssl: &SslRef) -> Option<&str> {
    // OpenSSL reads the session's group without a NULL check: before a handshake has
    // completed (no session yet) the call would dereference NULL.
    if !ssl.is_init_finished() || ssl.session().is_none() {
        return None;
    }
    // SAFETY: `SSL_get0_group_name` (OpenSSL >= 3.2) only reads the SSL object, which `ssl`
    // borrows for the returned lifetime. It returns NULL or a pointer to a static,
    // NUL-terminated name owned by OpenSSL's group table, valid at least as long as `ssl`.
    #[allow(unsafe_code)]
    let name = unsafe {
        let p = openssl_sys::SSL_get0_group_name(ssl.as_ptr());
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p)
    };
    name.to_str().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use openssl::ssl::{SslContext, SslMethod};

    #[test]
    fn no_group_before_a_handshake() {
        let ctx = SslContext::builder(SslMethod::tls()).unwrap().build();
        let ssl = openssl::ssl::Ssl::new(&ctx).unwrap();
        assert_eq!(negotiated_group(&ssl), None);
    }
}
