//! The session cookie: its sealed value (AES-256-GCM under a key derived from `secret`), the
//! `Cookie` request header, and `Set-Cookie` attributes as lua-resty-session 4 writes them.
//!
//! A value is `base64url(header ‖ nonce ‖ ciphertext ‖ tag)` where the header (version, kind,
//! creation time, rolling and idling offsets, session id) is the AEAD's associated data: the
//! timestamps are authenticated without being secret, so a touch (new idling offset) or a
//! renewal re-seals and nothing a client edits survives. Each session id gets its own key
//! (HKDF-Expand over the secret's PRK), and every seal takes a fresh random nonce, so a key
//! never sees more than a handful of nonces.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

const VERSION: u8 = 1;
pub const SID_LEN: usize = 32;
const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 8 + SID_LEN;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// HKDF-Extract salt: binds the derived keys to this use of the secret.
const SALT: &[u8] = b"portcullis session cookie v1";

/// Which cookie a value was sealed for: a `remember` value never opens as a session value (its
/// timeouts are longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session = 1,
    Remember = 2,
}

/// The authenticated, unencrypted part of a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Unix seconds when the session was created (kept across renewals).
    pub creation: u64,
    /// Seconds from creation to the last renewal.
    pub rolling_offset: u64,
    /// Seconds from the last renewal to the last touch.
    pub idling_offset: u64,
    pub sid: [u8; SID_LEN],
}

/// Keys derived from one `secret`.
pub struct Keys {
    prk: PKey<Private>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn hmac(key: &PKey<Private>, parts: &[&[u8]]) -> Option<Vec<u8>> {
    let mut s = Signer::new(MessageDigest::sha256(), key).ok()?;
    for p in parts {
        s.update(p).ok()?;
    }
    s.sign_to_vec().ok()
}

impl Keys {
    /// HKDF-Extract(SALT, secret).
    pub fn new(secret: &[u8]) -> Option<Keys> {
        let salt = PKey::hmac(SALT).ok()?;
        let prk = hmac(&salt, &[secret])?;
        Some(Keys {
            prk: PKey::hmac(&prk).ok()?,
        })
    }

    /// HKDF-Expand(PRK, "aes-256-gcm" ‖ kind ‖ sid, 32): one block of SHA-256 is the whole key.
    fn key(&self, kind: Kind, sid: &[u8]) -> Option<Vec<u8>> {
        hmac(&self.prk, &[b"aes-256-gcm", &[kind as u8], sid, &[1]])
    }

    pub fn seal(&self, kind: Kind, meta: &Meta, plaintext: &[u8]) -> Option<String> {
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(VERSION);
        header.push(kind as u8);
        header.extend_from_slice(&meta.creation.to_be_bytes());
        header.extend_from_slice(&meta.rolling_offset.to_be_bytes());
        header.extend_from_slice(&meta.idling_offset.to_be_bytes());
        header.extend_from_slice(&meta.sid);
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).ok()?;
        let key = self.key(kind, &meta.sid)?;
        let mut tag = [0u8; TAG_LEN];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &key,
            Some(&nonce),
            &header,
            plaintext,
            &mut tag,
        )
        .ok()?;
        let mut out = header;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// The meta and plaintext of a value this secret sealed for `kind`; why not, otherwise (a
    /// reason for debug logs, never the value).
    pub fn open(&self, kind: Kind, value: &str) -> Result<(Meta, Vec<u8>), &'static str> {
        let raw = URL_SAFE_NO_PAD
            .decode(value.as_bytes())
            .map_err(|_| "invalid session cookie encoding")?;
        if raw.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err("invalid session cookie size");
        }
        if raw[0] != VERSION || raw[1] != kind as u8 {
            return Err("invalid session cookie type");
        }
        let (header, rest) = raw.split_at(HEADER_LEN);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let mut sid = [0u8; SID_LEN];
        sid.copy_from_slice(&header[26..26 + SID_LEN]);
        let key = self.key(kind, &sid).ok_or("unable to derive session key")?;
        let plaintext = decrypt_aead(Cipher::aes_256_gcm(), &key, Some(nonce), header, ct, tag)
            .map_err(|_| "invalid session cookie (tampered with, or sealed with another secret)")?;
        Ok((
            Meta {
                creation: u64_at(2),
                rolling_offset: u64_at(10),
                idling_offset: u64_at(18),
                sid,
            },
            plaintext,
        ))
    }
}

/// A fresh random session id.
pub fn new_sid() -> Option<[u8; SID_LEN]> {
    let mut sid = [0u8; SID_LEN];
    openssl::rand::rand_bytes(&mut sid).ok()?;
    Some(sid)
}

pub fn sid_text(sid: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sid)
}

/// The value of cookie `name` in the request's `Cookie` headers: the first one, as nginx's
/// `$cookie_<name>` (what lua-resty-session reads) finds it.
pub fn request_cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// The name of the cookie a `Set-Cookie` value sets.
pub fn set_cookie_name(value: &str) -> &str {
    value.split_once('=').map_or("", |(n, _)| n.trim())
}

/// RFC 6265 `token`: what a cookie name may hold.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An attribute value (`Path`, `Domain`): visible ASCII without `;`.
pub fn is_attribute_value(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';')
}

/// lua-resty-session's expiry attributes for a cleared cookie.
pub const EXPIRE_FLAGS: &str = "; Expires=Thu, 01 Jan 1970 00:00:01 GMT; Max-Age=0";

/// `Expires=…; Max-Age=…` of a persistent (`remember`) cookie.
pub fn persistent_flags(expires_at: u64, max_age: u64) -> String {
    // HTTP dates end with year 9999 (and `SystemTime` arithmetic must not overflow).
    const LAST_HTTP_DATE: u64 = 253_402_300_799;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires_at.min(LAST_HTTP_DATE));
    format!(
        "; Expires={}; Max-Age={max_age}",
        httpdate::fmt_http_date(at)
    )
}
