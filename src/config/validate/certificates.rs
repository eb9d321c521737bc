//! `ca_certificates`, `certificates` and `snis`: PEM read once (inline or from files), key pairs
//! checked, SNIs owned by one certificate.

use super::*;

/// Warns, at the certificate's definition, about one that has expired or expires within 30 days.
pub(super) fn warn_expiring(
    loc: &Loc,
    path: &str,
    kind: &str,
    name: Option<&str>,
    cert: &X509,
    now: i64,
    d: &mut Diags,
) {
    let not_after = not_after_unix(cert);
    let subject = subject_string(cert);
    let what = match name {
        Some(n) => format!("{kind} {n:?} ({subject})"),
        None => format!("{kind} {subject}"),
    };
    if not_after < now {
        d.warn(
            loc,
            path,
            format!(
                "{what} expired at {}; it is still loaded and served (as Kong does; clients decide): replace it",
                rfc3339(not_after)
            ),
        );
    } else if not_after - now < 30 * 86_400 {
        d.warn(
            loc,
            path,
            format!(
                "{what} expires in {} days ({})",
                (not_after - now) / 86_400,
                rfc3339(not_after)
            ),
        );
    }
}

/// A private key others may read is a key others may have copied: worth a warning at every load.
pub(super) fn warn_if_readable_by_others(p: &Path, f: &V<String>, d: &mut Diags) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(p) {
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            d.warn(
                &f.loc,
                &f.path,
                format!(
                    "private key file {} is readable by group or others (mode {mode:03o}); chmod 600 it",
                    p.display()
                ),
            );
        }
    }
}

/// Reads PEM given inline or by file; a file path is relative to the conf dir.
#[allow(clippy::too_many_arguments)]
pub(super) fn pem_source(
    dir: &Path,
    inline: &Option<V<String>>,
    file: &Option<V<String>>,
    field: &str,
    loc: &Loc,
    path: &str,
    files: &mut Vec<PathBuf>,
    log: &api::FileLog,
    d: &mut Diags,
) -> Option<(String, Loc, String)> {
    match (inline, file) {
        (Some(_), Some(f)) => {
            d.err(
                &f.loc,
                &f.path,
                format!("give either `{field}` or `{field}_file`, not both"),
            );
            None
        }
        (Some(v), None) => Some((v.v.clone(), v.loc.clone(), v.path.clone())),
        (None, Some(f)) => {
            let p = dir.join(&f.v);
            files.push(p.clone());
            if field == "key" {
                warn_if_readable_by_others(&p, f, d);
            }
            match log.read(&p) {
                Ok(bytes) => match std::str::from_utf8(&bytes) {
                    Ok(t) => Some((t.to_string(), f.loc.clone(), f.path.clone())),
                    Err(_) => {
                        d.err(&f.loc, &f.path, format!("{} is not UTF-8 PEM", p.display()));
                        None
                    }
                },
                Err(e) => {
                    d.err(&f.loc, &f.path, format!("cannot read {}: {e}", p.display()));
                    None
                }
            }
        }
        (None, None) => {
            d.err(
                loc,
                path,
                format!("missing required field `{field}` (or `{field}_file`)"),
            );
            None
        }
    }
}

/// An SNI belongs to one certificate (as in Kong): record the owner or report the clash.
pub(super) fn claim_snis(
    names: &[V<String>],
    owner_id: &str,
    owners: &mut HashMap<String, (String, Loc)>,
    out: &mut Vec<String>,
    d: &mut Diags,
) {
    for s in names {
        let Some(n) = check_wildcard(s, "SNI", d) else {
            continue;
        };
        if let Some((owner, at)) = owners.get(&n) {
            d.err(
                &s.loc,
                &s.path,
                format!("SNI {n:?} already belongs to certificate {owner:?} ({at})"),
            );
        } else {
            owners.insert(n.clone(), (owner_id.to_string(), s.loc.clone()));
            out.push(n);
        }
    }
}

impl Resolver<'_> {
    pub(super) fn ca_certificates(&mut self, doc: &RawDoc, d: &mut Diags) {
        for raw in &doc.ca_certificates {
            let Some((pem, loc, path)) = pem_source(
                self.dir,
                &raw.cert,
                &raw.cert_file,
                "cert",
                &raw.loc,
                &raw.path,
                &mut self.files,
                &self.file_log,
                d,
            ) else {
                continue;
            };
            let certs = match X509::stack_from_pem(pem.as_bytes()) {
                Ok(c) if !c.is_empty() => c,
                _ => {
                    d.err(
                        &loc,
                        &path,
                        "no certificate could be read (expected one or more PEM certificates)",
                    );
                    continue;
                }
            };
            // Kong refuses a CA certificate without the CA basic constraint: a leaf there would be
            // trusted as an issuer by nothing and silently verify nothing.
            if let Some(leaf) = certs.iter().find(|c| !is_ca(c)) {
                d.err(
                    &loc,
                    &path,
                    format!(
                        "certificate {} does not appear to be a CA because it is missing the \"CA\" basic constraint",
                        subject_string(leaf)
                    ),
                );
                self.ca_index.refuse(&raw.id, &raw.name, d);
                continue;
            }
            // Kong refuses an expired CA certificate: nothing it issued can verify any more.
            let name = raw.name.as_ref().or(raw.id.as_ref()).map(|v| v.v.as_str());
            if let Some(old) = certs.iter().find(|c| not_after_unix(c) < self.now) {
                let named = name.map(|n| format!(" {n:?}")).unwrap_or_default();
                d.err(
                    &loc,
                    &path,
                    format!(
                        "ca_certificate{named} ({}) expired at {}: \"Not After\" time is in the past (an expired CA certificate is refused, as in Kong); replace it",
                        subject_string(old),
                        rfc3339(not_after_unix(old))
                    ),
                );
                self.ca_index.refuse(&raw.id, &raw.name, d);
                continue;
            }
            for c in &certs {
                warn_expiring(&raw.loc, &raw.path, "ca_certificate", name, c, self.now, d);
            }
            let id = self.ca_index.register(
                &raw.id,
                &raw.name,
                || format!("ca-{}", fingerprint(&certs[0])),
                self.cas.len(),
                d,
            );
            self.cas.push(Arc::new(CaCertificate {
                id,
                name: raw.name.as_ref().map(|v| v.v.clone()),
                subject: subject_string(&certs[0]),
                not_after: not_after_unix(&certs[0]),
                fingerprint: fingerprint(&certs[0]),
                certs,
                pem,
                origin: format!("{}: {}", raw.loc, raw.path),
            }));
        }
    }

    pub(super) fn certificates(&mut self, doc: &RawDoc, d: &mut Diags) {
        let mut sni_owner: HashMap<String, (String, Loc)> = HashMap::new();
        let mut extra_snis: HashMap<usize, Vec<V<String>>> = HashMap::new();
        // Top-level `snis` entities name their certificate; resolved after certificates are indexed.
        for raw in &doc.certificates {
            let cert_pem = pem_source(
                self.dir,
                &raw.cert,
                &raw.cert_file,
                "cert",
                &raw.loc,
                &raw.path,
                &mut self.files,
                &self.file_log,
                d,
            );
            let key_pem = pem_source(
                self.dir,
                &raw.key,
                &raw.key_file,
                "key",
                &raw.loc,
                &raw.path,
                &mut self.files,
                &self.file_log,
                d,
            );
            let chain = cert_pem.and_then(|(pem, cloc, cpath)| {
                match X509::stack_from_pem(pem.as_bytes()) {
                    Ok(c) if !c.is_empty() => Some(c),
                    _ => {
                        d.err(
                            &cloc,
                            &cpath,
                            "no certificate could be read (expected one or more PEM certificates)",
                        );
                        None
                    }
                }
            });
            let (Some(chain), Some((key_pem, kloc, kpath))) = (chain, key_pem) else {
                continue;
            };
            let key = match PKey::private_key_from_pem(key_pem.as_bytes()) {
                Ok(k) => k,
                Err(_) => {
                    // The key text itself is never echoed: it is a secret.
                    d.err(
                        &kloc,
                        &kpath,
                        "no private key could be read (expected an unencrypted PKCS#8, RSA or EC key in PEM armour)",
                    );
                    continue;
                }
            };
            let matches = chain[0]
                .public_key()
                .map(|pk| pk.public_eq(&key))
                .unwrap_or(false);
            if !matches {
                d.err(
                    &kloc,
                    &kpath,
                    "private key does not match the certificate (the first certificate must be the leaf for this key)",
                );
                continue;
            }
            // An expired certificate stays loaded and served, as in Kong: one lapsed certificate
            // must not refuse a whole configuration (every other route with it). Clients decide;
            // the warning and the expiry metrics make it visible.
            let name = raw.name.as_ref().or(raw.id.as_ref()).map(|v| v.v.as_str());
            warn_expiring(
                &raw.loc,
                &raw.path,
                "certificate",
                name,
                &chain[0],
                self.now,
                d,
            );
            let id = self.cert_index.register(
                &raw.id,
                &raw.name,
                || format!("cert-{}", fingerprint(&chain[0])),
                self.certs.len(),
                d,
            );
            let mut snis = Vec::new();
            claim_snis(&raw.snis, &id, &mut sni_owner, &mut snis, d);
            self.certs.push(Arc::new(Certificate {
                id,
                name: raw.name.as_ref().map(|v| v.v.clone()),
                subject: subject_string(&chain[0]),
                not_after: not_after_unix(&chain[0]),
                fingerprint: fingerprint(&chain[0]),
                chain,
                key,
                snis,
                origin: format!("{}: {}", raw.loc, raw.path),
            }));
        }
        for s in &doc.snis {
            let Some(c) = &s.certificate else {
                d.err(
                    &s.name.loc,
                    &s.name.path,
                    "an SNI needs a `certificate` reference",
                );
                continue;
            };
            if let Some(idx) = self.cert_index.resolve(c, d) {
                extra_snis.entry(idx).or_default().push(s.name.clone());
            }
        }
        if !extra_snis.is_empty() {
            // Rebuild the affected certificates with their extra SNIs (Arc contents are immutable).
            for (idx, names) in extra_snis {
                let Some(old) = self.certs.get(idx) else {
                    continue;
                };
                let mut snis = old.snis.clone();
                claim_snis(&names, &old.id, &mut sni_owner, &mut snis, d);
                let rebuilt = Certificate {
                    id: old.id.clone(),
                    name: old.name.clone(),
                    chain: old.chain.clone(),
                    key: old.key.clone(),
                    snis,
                    subject: old.subject.clone(),
                    not_after: old.not_after,
                    fingerprint: old.fingerprint.clone(),
                    origin: old.origin.clone(),
                };
                self.certs[idx] = Arc::new(rebuilt);
            }
        }
    }
}
