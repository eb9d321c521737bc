//! Revocation of the client's leaf certificate: `crl_file` CRLs first, then the OCSP responders
//! and CRL distribution points the certificate names (OCSP first, as Kong does). Network answers
//! are cached by `cert_cache_ttl` and refreshed in the background while still valid; every fetch
//! is bounded by `http_timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::ocsp::{
    OcspCertId, OcspCertStatus, OcspFlag, OcspRequest, OcspResponse, OcspResponseStatus,
};
use openssl::stack::Stack;
use openssl::x509::store::X509Store;
use openssl::x509::{CrlStatus, X509Crl, X509Ref, X509};

use crate::cache::{FetchCache, Fetched};
use crate::config::RevocationMode;
use crate::http::{self, HttpUrl};

const MAX_CRL_BYTES: usize = 32 * 1024 * 1024;
const MAX_OCSP_BYTES: usize = 1024 * 1024;
/// A failed fetch is retried no sooner than this, so an unreachable responder does not cost
/// every request a full timeout.
const ERROR_RETRY: Duration = Duration::from_secs(10);
/// Clock skew tolerated on OCSP thisUpdate/nextUpdate.
const OCSP_SKEW_SECS: u32 = 300;
/// Oldest thisUpdate accepted from a responder that gives no nextUpdate.
const OCSP_MAX_AGE_SECS: u32 = 3600;

/// What is known about the leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    Revoked,
    /// No source gave an answer (none named, unreachable, or the responder did not know).
    Unknown,
}

pub struct Revocation {
    pub mode: RevocationMode,
    file_crls: Vec<X509Crl>,
    http_timeout: Duration,
    cert_cache_ttl: Duration,
    /// Trust anchors with the OCSP-signer purpose (`verify::build_ocsp_store`).
    store: Arc<X509Store>,
    crls: FetchCache<X509Crl>,
    ocsp: FetchCache<Status>,
}

/// Parses every CRL in `data`: concatenated PEM blocks, or a single DER CRL.
pub fn parse_crls(data: &[u8]) -> Result<Vec<X509Crl>, String> {
    const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----";
    const END: &[u8] = b"-----END X509 CRL-----";
    if !contains(data, BEGIN) {
        return X509Crl::from_der(data)
            .map(|c| vec![c])
            .map_err(|e| format!("neither a PEM nor a DER CRL: {e}"));
    }
    let mut crls = Vec::new();
    let mut rest = data;
    while let Some(start) = position(rest, BEGIN) {
        let after = &rest[start..];
        let end = position(after, END).ok_or("unterminated PEM CRL block")? + END.len();
        let crl = X509Crl::from_pem(&after[..end]).map_err(|e| format!("bad PEM CRL: {e}"))?;
        crls.push(crl);
        rest = &after[end..];
    }
    Ok(crls)
}

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    position(haystack, needle).is_some()
}

/// The leaf's status according to one CRL, or `None` when the CRL is not the issuer's, its
/// signature does not verify, or it is past its nextUpdate without listing the leaf (a listing
/// in an old CRL still counts: revocation is permanent).
fn crl_status(crl: &X509Crl, leaf: &X509, issuer: &X509Ref) -> Option<Status> {
    if crl.issuer_name().try_cmp(issuer.subject_name()).ok()? != std::cmp::Ordering::Equal {
        return None;
    }
    let key = issuer.public_key().ok()?;
    if !crl.verify(&key).unwrap_or(false) {
        tracing::warn!(issuer = ?issuer.subject_name(), "CRL signature does not verify; ignored");
        return None;
    }
    match crl.get_by_cert(leaf) {
        CrlStatus::Revoked(_) => Some(Status::Revoked),
        CrlStatus::NotRevoked | CrlStatus::RemoveFromCrl(_) => {
            let expired = match crl.next_update() {
                Some(next) => Asn1Time::days_from_now(0).map_or(true, |now| next < now),
                None => false,
            };
            (!expired).then_some(Status::Good)
        }
    }
}

/// Seconds from now until `t` (negative when past).
fn seconds_until(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let now = Asn1Time::days_from_now(0).ok()?;
    let d = now.diff(t).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Parses OpenSSL's GeneralizedTime print form (`Jan  2 03:04:05 2026 GMT`, optionally with
/// fractional seconds) into Unix seconds; the crate exposes no other way to read it.
fn generalized_print_to_unix(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = s.split_whitespace();
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as i64 + 1;
    let day: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec: i64 = hms.next()?.split('.').next()?.parse().ok()?;
    let year: i64 = parts.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Freshness of an answer valid for `valid_secs` more seconds (None: no stated end).
fn lifetimes(ttl: Duration, valid_secs: Option<i64>) -> (Instant, Instant) {
    let now = Instant::now();
    if ttl.is_zero() {
        // Caching turned off: no stale answers either.
        return (now, now);
    }
    match valid_secs {
        Some(s) => {
            let valid = Duration::from_secs(s.max(0) as u64);
            (now + ttl.min(valid), now + valid)
        }
        None => (now + ttl, now + ttl),
    }
}

fn http_urls(urls: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        if HttpUrl::parse(&u).is_some() && !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

fn ocsp_urls(leaf: &X509Ref) -> Vec<String> {
    match leaf.ocsp_responders() {
        Ok(stack) => http_urls(stack.iter().map(|s| s.to_string())),
        Err(_) => Vec::new(),
    }
}

fn crl_urls(leaf: &X509Ref) -> Vec<String> {
    let Some(points) = leaf.crl_distribution_points() else {
        return Vec::new();
    };
    let names = points
        .iter()
        .filter_map(|p| p.distpoint()?.fullname())
        .flat_map(|names| names.iter().filter_map(|n| n.uri().map(str::to_string)))
        .collect::<Vec<_>>();
    http_urls(names.into_iter())
}

impl Revocation {
    pub fn new(
        mode: RevocationMode,
        file_crls: Vec<X509Crl>,
        http_timeout: Duration,
        cert_cache_ttl: Duration,
        store: Arc<X509Store>,
    ) -> Self {
        Revocation {
            mode,
            file_crls,
            http_timeout,
            cert_cache_ttl,
            store,
            crls: FetchCache::new(),
            ocsp: FetchCache::new(),
        }
    }

    fn retry_after(&self) -> Duration {
        self.cert_cache_ttl.min(ERROR_RETRY)
    }

    /// The status of `chain[0]`, issued by `chain[1]` (a verified chain, leaf first).
    pub async fn check(&self, chain: &[X509]) -> Status {
        if self.mode == RevocationMode::Skip {
            return Status::Good;
        }
        let (Some(leaf), Some(issuer)) = (chain.first(), chain.get(1)) else {
            return Status::Unknown;
        };

        // An operator-supplied CRL that covers the issuer is authoritative: no network needed.
        let mut covered = false;
        for crl in &self.file_crls {
            match crl_status(crl, leaf, issuer) {
                Some(Status::Revoked) => return Status::Revoked,
                Some(_) => covered = true,
                None => {}
            }
        }
        if covered {
            return Status::Good;
        }

        for url in ocsp_urls(leaf) {
            match self.ocsp_status(&url, leaf, issuer, chain).await {
                Status::Unknown => {}
                answer => return answer,
            }
        }
        for url in crl_urls(leaf) {
            let (u, timeout, ttl, retry) = (
                url.clone(),
                self.http_timeout,
                self.cert_cache_ttl,
                self.retry_after(),
            );
            let fetched = self
                .crls
                .get(&url, move || fetch_crl(u, timeout, ttl, retry))
                .await;
            match fetched {
                Ok(crl) => {
                    if let Some(answer) = crl_status(&crl, leaf, issuer) {
                        return answer;
                    }
                }
                Err(e) => tracing::debug!(%url, error = %e, "CRL unavailable"),
            }
        }
        Status::Unknown
    }

    async fn ocsp_status(&self, url: &str, leaf: &X509, issuer: &X509, chain: &[X509]) -> Status {
        let Some(leaf_digest) = crate::verify::digest(leaf) else {
            return Status::Unknown;
        };
        let key = format!("{url} {}", hex(&leaf_digest));
        let request =
            match OcspCertId::from_cert(MessageDigest::sha1(), leaf, issuer).and_then(|id| {
                let mut req = OcspRequest::new()?;
                req.add_id(id)?;
                req.to_der()
            }) {
                Ok(der) => der,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build OCSP request");
                    return Status::Unknown;
                }
            };
        let url_owned = url.to_string();
        let (leaf, issuer) = (leaf.clone(), issuer.clone());
        let others: Vec<X509> = chain.iter().skip(1).cloned().collect();
        let store = self.store.clone();
        let timeout = self.http_timeout;
        let ttl = self.cert_cache_ttl;
        let retry = self.retry_after();
        let fetch = move || async move {
            let Some(parsed) = HttpUrl::parse(&url_owned) else {
                return Fetched::error("unsupported OCSP URL".into(), retry);
            };
            let post = Some(("application/ocsp-request", request.as_slice()));
            let body =
                match tokio::time::timeout(timeout, http::fetch(&parsed, post, MAX_OCSP_BYTES))
                    .await
                {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => {
                        tracing::warn!(url = %url_owned, error = %e, "OCSP query failed");
                        return Fetched::error(e.to_string(), retry);
                    }
                    Err(_) => {
                        tracing::warn!(url = %url_owned, "OCSP query timed out");
                        return Fetched::error("timed out".into(), retry);
                    }
                };
            match evaluate_ocsp(&body, &leaf, &issuer, &others, &store) {
                Ok((status, valid)) => {
                    let (fresh_until, usable_until) = lifetimes(ttl, valid);
                    Fetched {
                        value: Ok(Arc::new(status)),
                        fresh_until,
                        usable_until,
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %url_owned, error = %e, "OCSP response rejected");
                    Fetched::error(e, retry)
                }
            }
        };
        match self.ocsp.get(&key, fetch).await {
            Ok(status) => *status,
            Err(_) => Status::Unknown,
        }
    }
}

async fn fetch_crl(
    url: String,
    timeout: Duration,
    ttl: Duration,
    retry: Duration,
) -> Fetched<X509Crl> {
    let Some(parsed) = HttpUrl::parse(&url) else {
        return Fetched::error("unsupported CRL URL".into(), retry);
    };
    let body = match tokio::time::timeout(timeout, http::fetch(&parsed, None, MAX_CRL_BYTES)).await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            tracing::warn!(%url, error = %e, "CRL download failed");
            return Fetched::error(e.to_string(), retry);
        }
        Err(_) => {
            tracing::warn!(%url, "CRL download timed out");
            return Fetched::error("timed out".into(), retry);
        }
    };
    let crl = match parse_crls(&body) {
        Ok(mut crls) if !crls.is_empty() => crls.swap_remove(0),
        Ok(_) => return Fetched::error("empty CRL".into(), retry),
        Err(e) => {
            tracing::warn!(%url, error = %e, "downloaded CRL does not parse");
            return Fetched::error(e, retry);
        }
    };
    let valid = crl.next_update().and_then(seconds_until);
    let (fresh_until, usable_until) = lifetimes(ttl, valid);
    Fetched {
        value: Ok(Arc::new(crl)),
        fresh_until,
        usable_until,
    }
}

/// Checks an OCSP response: successful, signed by the issuer or its delegated responder (chained
/// to this plugin's trust anchors), about this certificate, and current. Returns the status and
/// how many seconds it stays valid.
fn evaluate_ocsp(
    body: &[u8],
    leaf: &X509,
    issuer: &X509,
    others: &[X509],
    store: &X509Store,
) -> Result<(Status, Option<i64>), String> {
    let response =
        OcspResponse::from_der(body).map_err(|e| format!("not an OCSP response: {e}"))?;
    if response.status() != OcspResponseStatus::SUCCESSFUL {
        return Err(format!("responder status {}", response.status().as_raw()));
    }
    let basic = response.basic().map_err(|e| e.to_string())?;
    let mut certs = Stack::new().map_err(|e| e.to_string())?;
    for c in others {
        certs.push(c.clone()).map_err(|e| e.to_string())?;
    }
    basic
        .verify(&certs, store, OcspFlag::empty())
        .map_err(|e| format!("signature does not verify: {e}"))?;
    let id =
        OcspCertId::from_cert(MessageDigest::sha1(), leaf, issuer).map_err(|e| e.to_string())?;
    let single = basic
        .find_status(&id)
        .ok_or("response does not cover the certificate")?;
    // Without a nonce, freshness is what stops a replayed "good" from before a revocation:
    // a response that states no nextUpdate must at least be recent.
    let max_age = single.next_update().is_none().then_some(OCSP_MAX_AGE_SECS);
    single
        .check_validity(OCSP_SKEW_SECS, max_age)
        .map_err(|e| format!("response not current: {e}"))?;
    let valid = single
        .next_update()
        .and_then(|t| generalized_print_to_unix(&t.to_string()))
        .map(|t| t - now_unix());
    let status = if single.status == OcspCertStatus::GOOD {
        Status::Good
    } else if single.status == OcspCertStatus::REVOKED {
        Status::Revoked
    } else {
        Status::Unknown
    };
    Ok((status, valid))
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_generalized_time_print_form() {
        assert_eq!(
            generalized_print_to_unix("Jan  1 00:00:00 1970 GMT"),
            Some(0)
        );
        assert_eq!(
            generalized_print_to_unix("Mar  1 12:30:05 2024 GMT"),
            Some(1_709_296_205)
        );
        assert_eq!(
            generalized_print_to_unix("Dec 31 23:59:59.5 1999 GMT"),
            Some(946_684_799)
        );
        assert_eq!(generalized_print_to_unix("garbage"), None);
    }

    #[test]
    fn rejects_non_crl_data() {
        assert!(parse_crls(b"not a crl").is_err());
        assert!(parse_crls(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").is_err());
        assert!(parse_crls(b"-----BEGIN X509 CRL-----\nAAAA\n").is_err());
    }
}
