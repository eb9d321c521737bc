//! Raw entities → model: defaults applied, references resolved by id or name, PEM parsed,
//! cert/key pairs checked, regexes compiled, plugins built by their own schemas. Every problem is
//! recorded with its location; nothing is returned half-built.

use super::model::*;
use super::raw::*;
use super::yaml::Loc;
use super::Diags;
use crate::tls::x509::{fingerprint, is_ca, not_after_unix, subject_string};
use openssl::pkey::PKey;
use openssl::x509::X509;
use portcullis_plugin_api as api;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(60_000);

/// Index position of an entity that was reported and refused (see `Index::refuse`).
const REFUSED: usize = usize::MAX;

/// Index of entities by id and by name, reporting duplicates.
struct Index {
    kind: &'static str,
    map: HashMap<String, usize>,
}

impl Index {
    fn new(kind: &'static str) -> Self {
        Index {
            kind,
            map: HashMap::new(),
        }
    }

    fn add(&mut self, key: &V<String>, idx: usize, what: &str, d: &mut Diags) {
        if let Some(prev) = self.map.get(&key.v) {
            if *prev != idx {
                d.err(
                    &key.loc,
                    &key.path,
                    format!(
                        "duplicate {} {what} {:?}: {what}s must be unique",
                        self.kind, key.v
                    ),
                );
                return;
            }
        }
        self.map.insert(key.v.clone(), idx);
    }

    fn add_plain(&mut self, key: &str, idx: usize) {
        self.map.entry(key.to_string()).or_insert(idx);
    }

    /// Index entity `idx` by its id and name (each unique) and return its id: the given one,
    /// else the name, else `fallback()`.
    fn register(
        &mut self,
        id: &Option<V<String>>,
        name: &Option<V<String>>,
        fallback: impl FnOnce() -> String,
        idx: usize,
        d: &mut Diags,
    ) -> String {
        let resolved = id
            .as_ref()
            .or(name.as_ref())
            .map(|v| v.v.clone())
            .unwrap_or_else(fallback);
        match id {
            Some(v) => self.add(v, idx, "id", d),
            None => self.add_plain(&resolved, idx),
        }
        if let Some(v) = name {
            self.add(v, idx, "name", d);
        }
        resolved
    }

    /// Index an entity that was reported and refused: references to it resolve (adding no
    /// second, misleading "references unknown" error) to nothing.
    fn refuse(&mut self, id: &Option<V<String>>, name: &Option<V<String>>, d: &mut Diags) {
        if let Some(v) = id {
            self.add(v, REFUSED, "id", d);
        }
        if let Some(v) = name {
            self.add(v, REFUSED, "name", d);
        }
    }

    fn resolve(&self, r: &V<String>, d: &mut Diags) -> Option<usize> {
        match self.map.get(&r.v) {
            Some(i) => Some(*i),
            None => {
                d.err(
                    &r.loc,
                    &r.path,
                    format!(
                        "references unknown {} {:?} (no {} has this id or name)",
                        self.kind, r.v, self.kind
                    ),
                );
                None
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rfc3339(unix: i64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64),
    )
}

/// Warns, at the certificate's definition, about one that has expired or expires within 30 days.
fn warn_expiring(
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
fn warn_if_readable_by_others(p: &Path, f: &V<String>, d: &mut Diags) {
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
fn pem_source(
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

fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// An SNI belongs to one certificate (as in Kong): record the owner or report the clash.
fn claim_snis(
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

/// Wildcard names as Kong allows them: exact, `*.example.com`, or `example.*`.
fn check_wildcard(name: &V<String>, what: &str, d: &mut Diags) -> Option<String> {
    let n = name.v.trim().to_ascii_lowercase();
    let stars = n.matches('*').count();
    // Host-name characters only (IDNs in their xn-- form), labels of 1..=63, at most 253 in all.
    let chars_ok = n.len() <= 253
        && n.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'.' | b'*' | b'_')
                    // Kong allows `host:port` in route hosts.
                    || (b == b':' && what == "host")
        })
        && n.split('.').all(|l| !l.is_empty() && l.len() <= 63);
    let ok = chars_ok
        && !n.is_empty()
        && (stars == 0
            || (stars == 1 && (n.starts_with("*.") || n.ends_with(".*")) && n.len() > 2));
    if !ok {
        d.err(
            &name.loc,
            &name.path,
            format!(
                "invalid {what} {:?}: only one wildcard, as the leftmost or rightmost label (`*.example.com`, `example.*`)",
                name.v
            ),
        );
        return None;
    }
    Some(n)
}

pub fn validate(
    dir: &Path,
    doc: RawDoc,
    sources: &[(PathBuf, String)],
    d: &mut Diags,
) -> Option<Config> {
    let mut files: Vec<PathBuf> = sources.iter().map(|(p, _)| p.clone()).collect();
    let now = unix_now();
    // Every referenced file is read once, through here, and hashed from these same bytes.
    let file_log = api::FileLog::default();

    // ---- CA certificates
    let mut ca_index = Index::new("ca_certificate");
    let mut cas: Vec<Arc<CaCertificate>> = Vec::new();
    for raw in &doc.ca_certificates {
        let Some((pem, loc, path)) = pem_source(
            dir,
            &raw.cert,
            &raw.cert_file,
            "cert",
            &raw.loc,
            &raw.path,
            &mut files,
            &file_log,
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
            ca_index.refuse(&raw.id, &raw.name, d);
            continue;
        }
        // Kong refuses an expired CA certificate: nothing it issued can verify any more.
        let name = raw.name.as_ref().or(raw.id.as_ref()).map(|v| v.v.as_str());
        if let Some(old) = certs.iter().find(|c| not_after_unix(c) < now) {
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
            ca_index.refuse(&raw.id, &raw.name, d);
            continue;
        }
        for c in &certs {
            warn_expiring(&raw.loc, &raw.path, "ca_certificate", name, c, now, d);
        }
        let id = ca_index.register(
            &raw.id,
            &raw.name,
            || format!("ca-{}", fingerprint(&certs[0])),
            cas.len(),
            d,
        );
        cas.push(Arc::new(CaCertificate {
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

    // ---- Certificates
    let mut cert_index = Index::new("certificate");
    let mut certs: Vec<Arc<Certificate>> = Vec::new();
    let mut sni_owner: HashMap<String, (String, Loc)> = HashMap::new();
    let mut extra_snis: HashMap<usize, Vec<V<String>>> = HashMap::new();
    // Top-level `snis` entities name their certificate; resolved after certificates are indexed.
    for raw in &doc.certificates {
        let cert_pem = pem_source(
            dir,
            &raw.cert,
            &raw.cert_file,
            "cert",
            &raw.loc,
            &raw.path,
            &mut files,
            &file_log,
            d,
        );
        let key_pem = pem_source(
            dir,
            &raw.key,
            &raw.key_file,
            "key",
            &raw.loc,
            &raw.path,
            &mut files,
            &file_log,
            d,
        );
        let chain =
            cert_pem.and_then(
                |(pem, cloc, cpath)| match X509::stack_from_pem(pem.as_bytes()) {
                    Ok(c) if !c.is_empty() => Some(c),
                    _ => {
                        d.err(
                            &cloc,
                            &cpath,
                            "no certificate could be read (expected one or more PEM certificates)",
                        );
                        None
                    }
                },
            );
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
        warn_expiring(&raw.loc, &raw.path, "certificate", name, &chain[0], now, d);
        let id = cert_index.register(
            &raw.id,
            &raw.name,
            || format!("cert-{}", fingerprint(&chain[0])),
            certs.len(),
            d,
        );
        let mut snis = Vec::new();
        claim_snis(&raw.snis, &id, &mut sni_owner, &mut snis, d);
        certs.push(Arc::new(Certificate {
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
        if let Some(idx) = cert_index.resolve(c, d) {
            extra_snis.entry(idx).or_default().push(s.name.clone());
        }
    }
    if !extra_snis.is_empty() {
        // Rebuild the affected certificates with their extra SNIs (Arc contents are immutable).
        for (idx, names) in extra_snis {
            let Some(old) = certs.get(idx) else { continue };
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
            certs[idx] = Arc::new(rebuilt);
        }
    }

    // ---- Settings
    let listeners = build_listeners(&doc, d);
    let server = build_server(&doc, d);
    let default_certificate = doc
        .tls
        .as_ref()
        .and_then(|t| t.default_certificate.as_ref())
        .and_then(|r| cert_index.resolve(r, d))
        .and_then(|i| certs.get(i).cloned());
    let tls_groups = tls_groups(&doc, d);

    // ---- Upstreams and targets
    let mut up_index = Index::new("upstream");
    let mut upstream_targets: Vec<Vec<Target>> = Vec::new();
    let mut upstream_raws: Vec<&RawUpstream> = Vec::new();
    for u in &doc.upstreams {
        let idx = upstream_raws.len();
        up_index.add(&u.name, idx, "name", d);
        if let Some(id) = &u.id {
            up_index.add(id, idx, "id", d);
        }
        upstream_raws.push(u);
        upstream_targets.push(u.targets.iter().filter_map(|t| target(t, d)).collect());
    }
    for t in &doc.targets {
        let Some(u) = &t.upstream else {
            d.err(&t.loc, &t.path, "missing required field `upstream`");
            continue;
        };
        if let Some(idx) = up_index.resolve(u, d) {
            if let Some(tg) = target(t, d) {
                upstream_targets[idx].push(tg);
            }
        }
    }
    let mut upstreams = Vec::new();
    for (u, targets) in upstream_raws.iter().zip(upstream_targets) {
        if let Some(up) = build_upstream(u, targets, d) {
            upstreams.push(Arc::new(up));
        }
    }
    let upstream_by_name: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();

    // ---- Services (nested routes collected alongside)
    let mut svc_index = Index::new("service");
    let mut services: Vec<Arc<Service>> = Vec::new();
    // (raw route, service index) pairs, nested first then top-level, in file order.
    let mut route_raws: Vec<(&RawRoute, Option<usize>)> = Vec::new();
    let mut plugin_raws: Vec<(&RawPlugin, Scope)> = Vec::new();
    for s in &doc.services {
        let svc = build_service(
            s,
            &cas,
            &ca_index,
            &certs,
            &cert_index,
            &upstream_by_name,
            d,
        );
        let idx = services.len();
        let Some(svc) = svc else {
            continue;
        };
        if let Some(v) = &s.id {
            svc_index.add(v, idx, "id", d);
        } else {
            svc_index.add_plain(&svc.id, idx);
        }
        if let Some(v) = &s.name {
            svc_index.add(v, idx, "name", d);
        }
        for r in &s.routes {
            route_raws.push((r, Some(idx)));
        }
        for p in &s.plugins {
            plugin_raws.push((
                p,
                Scope {
                    service: Some(svc.id.clone()),
                    ..Scope::default()
                },
            ));
        }
        services.push(Arc::new(svc));
    }
    for r in &doc.routes {
        let svc = match &r.service {
            Some(reference) => svc_index.resolve(reference, d),
            None => {
                d.err(
                    &r.loc,
                    &r.path,
                    "a top-level route needs a `service` reference",
                );
                None
            }
        };
        if svc.is_some() {
            route_raws.push((r, svc));
        }
    }

    // ---- Routes
    let mut route_index = Index::new("route");
    let mut routes = Vec::new();
    let mut stream_routes = Vec::new();
    for (order, (r, svc)) in route_raws.iter().enumerate() {
        let Some(service) = svc.and_then(|i| services.get(i)).cloned() else {
            continue;
        };
        let Some(route) = build_route(r, service, order, d) else {
            continue;
        };
        let idx = order;
        if let Some(v) = &r.id {
            route_index.add(v, idx, "id", d);
        }
        if let Some(v) = &r.name {
            route_index.add(v, idx, "name", d);
        }
        for p in &r.plugins {
            plugin_raws.push((
                p,
                Scope {
                    route: Some(route.id.clone()),
                    ..Scope::default()
                },
            ));
        }
        if route.protocols.is_stream() {
            stream_routes.push(Arc::new(route));
        } else {
            routes.push(Arc::new(route));
        }
    }
    let route_id_by_idx: HashMap<usize, String> = route_raws
        .iter()
        .enumerate()
        .filter_map(|(i, (r, _))| {
            r.id.as_ref()
                .or(r.name.as_ref())
                .map(|v| (i, v.v.clone()))
                .or_else(|| Some((i, format!("route-{i}"))))
        })
        .collect();

    // ---- Consumers, ACLs, credentials
    let mut cons_index = Index::new("consumer");
    let mut consumers: Vec<api::Consumer> = Vec::new();
    let mut credentials = Vec::new();
    let mut custom_ids: HashMap<String, Loc> = HashMap::new();
    for c in &doc.consumers {
        let idx = consumers.len();
        let id =
            c.id.as_ref()
                .or(c.username.as_ref())
                .or(c.custom_id.as_ref())
                .map(|v| v.v.clone())
                .unwrap_or_else(|| format!("consumer-{idx}"));
        if let Some(v) = &c.id {
            cons_index.add(v, idx, "id", d);
        } else {
            cons_index.add_plain(&id, idx);
        }
        if let Some(v) = &c.username {
            cons_index.add(v, idx, "username", d);
        }
        if let Some(v) = &c.custom_id {
            if let Some(prev) = custom_ids.get(&v.v) {
                d.err(
                    &v.loc,
                    &v.path,
                    format!("duplicate consumer custom_id {:?} (first at {prev})", v.v),
                );
            }
            custom_ids.insert(v.v.clone(), v.loc.clone());
            cons_index.add_plain(&v.v, idx);
        }
        consumers.push(api::Consumer {
            id: id.clone(),
            username: c.username.as_ref().map(|v| v.v.clone()),
            custom_id: c.custom_id.as_ref().map(|v| v.v.clone()),
            groups: c.acls.iter().map(|a| a.group.v.clone()).collect(),
            tags: c.tags.clone(),
        });
        for cred in &c.mtls_auth_credentials {
            if let Some(cr) = credential(cred, &id, &cas, &ca_index, d) {
                credentials.push(cr);
            }
        }
        for p in &c.plugins {
            plugin_raws.push((
                p,
                Scope {
                    consumer: Some(id.clone()),
                    ..Scope::default()
                },
            ));
        }
    }
    for a in &doc.acls {
        if let Some(r) = &a.consumer {
            if let Some(i) = cons_index.resolve(r, d) {
                consumers[i].groups.push(a.group.v.clone());
            }
        }
    }
    for cred in &doc.mtls_auth_credentials {
        if let Some(r) = &cred.consumer {
            if let Some(i) = cons_index.resolve(r, d) {
                let id = consumers[i].id.clone();
                if let Some(cr) = credential(cred, &id, &cas, &ca_index, d) {
                    credentials.push(cr);
                }
            }
        }
    }
    let consumers: Vec<Arc<api::Consumer>> = consumers.into_iter().map(Arc::new).collect();

    // ---- Credential entities declared by plugins (keyauth_credentials, jwt_secrets, …)
    let plugin_credentials = plugin_credentials(&doc, &consumers, &mut cons_index, d);

    // ---- Plugins
    for p in &doc.plugins {
        let mut scope = Scope::default();
        if let Some(r) = &p.service {
            scope.service = svc_index
                .resolve(r, d)
                .and_then(|i| services.get(i))
                .map(|s| s.id.clone());
        }
        if let Some(r) = &p.route {
            scope.route = route_index
                .resolve(r, d)
                .and_then(|i| route_id_by_idx.get(&i).cloned());
        }
        if let Some(r) = &p.consumer {
            scope.consumer = cons_index
                .resolve(r, d)
                .and_then(|i| consumers.get(i))
                .map(|c| c.id.clone());
        }
        plugin_raws.push((p, scope));
    }
    // Plugins run in HTTP phases only: one on a stream route would be silently skipped, and an
    // access-control plugin skipped is a route left open. Metrics are always on (prometheus).
    for (p, scope) in &plugin_raws {
        let on_stream = scope
            .route
            .as_ref()
            .and_then(|id| stream_routes.iter().find(|r| &r.id == id));
        if let (Some(route), true) = (on_stream, p.enabled && p.name.v != "prometheus") {
            d.err(
                &p.name.loc,
                &p.name.path,
                format!(
                    "plugin {:?} cannot run on stream route {:?} (plugins apply to HTTP routes only here); remove it",
                    p.name.v, &*route.name
                ),
            );
        }
    }
    let build_ctx = api::BuildContext {
        consumers: consumers.clone(),
        credentials: credentials.clone(),
        ca_certificates: cas
            .iter()
            .map(|c| {
                Arc::new(api::CaCertificate {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    pem: c.pem.clone(),
                })
            })
            .collect(),
        conf_dir: dir.to_path_buf(),
        plugin_credentials,
        instance_id: String::new(),
        route_id: None,
        service_id: None,
        files: file_log.clone(),
    };
    let mut build_ctx = build_ctx;
    let registry = crate::plugin::registry();
    let mut plugins = Vec::new();
    let mut seen_scopes: Vec<(String, Scope, Loc)> = Vec::new();
    for (p, scope) in plugin_raws {
        // A disabled instance is still validated (as Kong does): enabling it later must not
        // surface errors that were there all along.
        let Some(factory) = registry.iter().find(|f| f.name() == p.name.v) else {
            let message = if super::kong::is_kong_plugin(&p.name.v) {
                super::kong::plugin_not_provided(&p.name.v)
            } else {
                let known: Vec<&str> = registry.iter().map(|f| f.name()).collect();
                format!(
                    "unknown plugin {:?} (available: {})",
                    p.name.v,
                    known.join(", ")
                )
            };
            d.err(&p.name.loc, &p.name.path, message);
            continue;
        };
        if !p.enabled {
            // Validated below, never applied, and no competitor for its scope.
        } else if let Some((_, _, at)) = seen_scopes
            .iter()
            .find(|(n, s, _)| n == &p.name.v && s == &scope)
        {
            d.err(
                &p.loc,
                &p.path,
                format!(
                    "plugin {:?} is configured twice for the same scope (first at {at}); one instance per name applies",
                    p.name.v
                ),
            );
            continue;
        }
        if p.enabled {
            seen_scopes.push((p.name.v.clone(), scope.clone(), p.loc.clone()));
        }
        let config_json = p
            .config
            .as_ref()
            .map(|n| n.to_json())
            .unwrap_or(serde_json::Value::Null);
        // Files a plugin config names (`crl_file`) are watched for reloads too.
        collect_files(&config_json, dir, &mut files);
        build_ctx.instance_id = match &p.id {
            Some(id) => id.v.clone(),
            None => format!(
                "{}:{}:{}:{}",
                p.name.v,
                scope.route.as_deref().unwrap_or(""),
                scope.service.as_deref().unwrap_or(""),
                scope.consumer.as_deref().unwrap_or("")
            ),
        };
        build_ctx.route_id = scope.route.clone();
        build_ctx.service_id = scope.service.clone();
        match factory.build(&config_json, &build_ctx) {
            Ok(_) if !p.enabled => {}
            Ok(plugin) => plugins.push(PluginInstance {
                name: p.name.v.clone(),
                scope,
                plugin,
                config: config_json,
            }),
            Err(errs) => {
                for e in errs {
                    let (loc, path) = match &p.config {
                        Some(node) => locate_node_error(node, &format!("{}.config", p.path), &e),
                        None => (p.loc.clone(), format!("{}.config", p.path)),
                    };
                    d.err(&loc, &path, e.message);
                }
            }
        }
    }

    // ---- Whole-config hash over every source and referenced file.
    files.sort();
    files.dedup();
    let mut hasher = openssl::sha::Sha256::new();
    for (p, text) in sources {
        hasher.update(p.to_string_lossy().as_bytes());
        hasher.update(text.as_bytes());
    }
    for f in &files {
        // A file named by a config but read by nobody is hashed from disk: it only tells
        // whether something changed.
        let bytes = file_log
            .get(f)
            .or_else(|| std::fs::read(f).ok().map(Arc::from));
        if let Some(bytes) = bytes {
            hasher.update(&bytes);
        }
    }
    let hash: String = hasher
        .finish()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();

    let listeners = finalize_listeners(listeners, &doc, &stream_routes);
    for r in &stream_routes {
        let served = listeners.stream.iter().any(|l| {
            if l.tls {
                r.protocols.tls || r.protocols.tls_passthrough
            } else {
                r.protocols.tcp
            }
        });
        if let (false, Some((raw, _))) = (served, route_raws.get(r.order)) {
            let hint = if r.protocols.tcp && !r.protocols.tls {
                "a listeners.stream entry with `tls: false`"
            } else {
                "a listeners.stream entry (`tls: true` is the default)"
            };
            d.warn(
                &raw.loc,
                &raw.path,
                format!("no stream listener serves this route: add {hint}"),
            );
        }
    }

    Some(Config {
        dir: dir.to_path_buf(),
        listeners,
        server,
        certificates: certs,
        default_certificate,
        tls_groups,
        ca_certificates: cas,
        services,
        routes,
        stream_routes,
        upstreams,
        consumers,
        credentials,
        plugins,
        files,
        hash,
    })
}

/// Where a problem a plugin reported (`path` relative to `node`) is written, and its entity path.
fn locate_node_error(node: &super::yaml::Node, base: &str, e: &api::ConfigError) -> (Loc, String) {
    // An unknown field is pointed at by its key, like entity fields.
    let n = if e.message.starts_with("unknown field") {
        node.locate_key(&e.path)
            .unwrap_or_else(|| node.locate(&e.path))
    } else {
        node.locate(&e.path)
    };
    let path = if e.path.is_empty() {
        base.to_string()
    } else {
        format!("{base}.{}", e.path)
    };
    (n.loc.clone(), path)
}

/// Checks every plugin-declared credential entity with its kind's schema and uniqueness rules and
/// resolves its consumer (nested entries belong to the enclosing consumer).
fn plugin_credentials(
    doc: &RawDoc,
    consumers: &[Arc<api::Consumer>],
    cons_index: &mut Index,
    d: &mut Diags,
) -> HashMap<&'static str, Vec<Arc<api::credentials::Credential>>> {
    let mut entries: Vec<(&super::raw::RawPluginCredential, usize)> = Vec::new();
    for (i, c) in doc.consumers.iter().enumerate() {
        entries.extend(c.plugin_credentials.iter().map(|pc| (pc, i)));
    }
    for pc in &doc.plugin_credentials {
        if let Some(i) = pc.consumer.as_ref().and_then(|r| cons_index.resolve(r, d)) {
            entries.push((pc, i));
        }
    }
    let mut out: HashMap<&'static str, Vec<Arc<api::credentials::Credential>>> = HashMap::new();
    let mut unique: HashMap<(&'static str, &'static str, String), Loc> = HashMap::new();
    let mut ids: HashMap<(&'static str, String), Loc> = HashMap::new();
    for (n, (pc, ci)) in entries.into_iter().enumerate() {
        let Some(kind) = crate::plugin::credential_kind(pc.collection) else {
            continue;
        };
        let Some(consumer) = consumers.get(ci) else {
            continue;
        };
        let fields = pc.fields();
        // Kong's entity `ttl` counts from creation in the database; a file has no creation time.
        if let Some(k) = pc.node.locate_key("ttl") {
            d.warn(
                &k.loc,
                &format!("{}.ttl", pc.path),
                "ttl is accepted and ignored: credentials from a file do not expire",
            );
        }
        let errors = (kind.validate)(&fields);
        if !errors.is_empty() {
            for e in errors {
                let (loc, path) = locate_node_error(&pc.node, &pc.path, &e);
                d.err(&loc, &path, e.message);
            }
            continue;
        }
        let mut duplicate = false;
        for field in kind.unique {
            let Some(value) = fields.get(*field).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }) else {
                continue;
            };
            let at = pc.node.locate(field).loc.clone();
            match unique.get(&(kind.collection, *field, value.clone())) {
                Some(first) => {
                    // The value itself may be a secret (an API key): name the places only.
                    d.err(
                        &at,
                        &format!("{}.{field}", pc.path),
                        format!(
                            "duplicate {field} in {} (first at {first}); each must be unique",
                            kind.collection
                        ),
                    );
                    duplicate = true;
                }
                None => {
                    unique.insert((kind.collection, *field, value), at);
                }
            }
        }
        let id = match &pc.id {
            Some(v) => {
                if let Some(first) = ids.get(&(kind.collection, v.v.clone())) {
                    d.err(
                        &v.loc,
                        &v.path,
                        format!(
                            "duplicate {} id {:?} (first at {first})",
                            kind.collection, v.v
                        ),
                    );
                    duplicate = true;
                }
                ids.insert((kind.collection, v.v.clone()), v.loc.clone());
                v.v.clone()
            }
            None => format!("{}-{n}", kind.collection),
        };
        if duplicate {
            continue;
        }
        out.entry(kind.collection)
            .or_default()
            .push(Arc::new(api::credentials::Credential {
                id,
                consumer: consumer.clone(),
                fields,
                tags: pc.tags.clone(),
            }));
    }
    out
}

/// `tls.groups`: names OpenSSL knows, at least one, no repeats.
fn tls_groups(doc: &RawDoc, d: &mut Diags) -> Vec<String> {
    let Some((loc, list)) = doc.tls.as_ref().and_then(|t| t.groups.as_ref()) else {
        return crate::tls::groups::DEFAULT_GROUPS
            .iter()
            .map(|g| g.to_string())
            .collect();
    };
    if list.is_empty() {
        d.err(loc, "tls.groups", "needs at least one key-exchange group");
    }
    let mut groups: Vec<String> = Vec::new();
    for g in list {
        if !crate::tls::groups::is_known(&g.v) {
            d.err(
                &g.loc,
                &g.path,
                format!(
                    "unknown TLS group {:?}: expected a name OpenSSL knows, e.g. {}",
                    g.v,
                    crate::tls::groups::DEFAULT_GROUPS.join(", ")
                ),
            );
        } else if groups.iter().any(|x| x.eq_ignore_ascii_case(&g.v)) {
            d.err(&g.loc, &g.path, format!("group {} is listed twice", g.v));
        } else {
            groups.push(g.v.clone());
        }
    }
    groups
}

fn collect_files(v: &serde_json::Value, dir: &Path, files: &mut Vec<PathBuf>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, val) in m {
                if k.ends_with("_file") {
                    if let Some(s) = val.as_str() {
                        files.push(dir.join(s));
                    }
                }
                collect_files(val, dir, files);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_files(x, dir, files)),
        _ => {}
    }
}

fn credential(
    c: &RawCredential,
    consumer_id: &str,
    cas: &[Arc<CaCertificate>],
    ca_index: &Index,
    d: &mut Diags,
) -> Option<api::MtlsCredential> {
    let ca = match &c.ca_certificate {
        Some(r) => Some(ca_index.resolve(r, d).and_then(|i| cas.get(i))?.id.clone()),
        None => None,
    };
    Some(api::MtlsCredential {
        id: c
            .id
            .as_ref()
            .map(|v| v.v.clone())
            .unwrap_or_else(|| format!("{consumer_id}:{}", c.subject_name.v)),
        subject_name: c.subject_name.v.clone(),
        ca_certificate: ca,
        consumer_id: consumer_id.to_string(),
    })
}

fn check_address(a: &V<String>, d: &mut Diags) -> Option<String> {
    let ok = a.v.parse::<std::net::SocketAddr>().is_ok()
        || a.v
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            .unwrap_or(false);
    if ok {
        Some(a.v.clone())
    } else {
        d.err(
            &a.loc,
            &a.path,
            format!(
                "invalid address {:?}: expected host:port, e.g. 0.0.0.0:8000",
                a.v
            ),
        );
        None
    }
}

/// Same port on the same or a wildcard host.
fn addresses_clash(a: &str, b: &str) -> bool {
    let (Some((ha, pa)), Some((hb, pb))) = (a.rsplit_once(':'), b.rsplit_once(':')) else {
        return a == b;
    };
    let wild = |h: &str| h == "0.0.0.0" || h == "[::]" || h == "::" || h.is_empty();
    pa == pb && (ha == hb || wild(ha) || wild(hb))
}

fn build_listeners(doc: &RawDoc, d: &mut Diags) -> Listeners {
    let raw = doc.listeners.as_ref();
    let proxy = match raw.and_then(|l| l.proxy.as_ref()) {
        Some(list) => list
            .iter()
            .filter_map(|l| {
                Some(ProxyListener {
                    address: check_address(&l.address, d)?,
                    tls: l.tls,
                    http2: l.http2.unwrap_or(l.tls),
                    max_connections: l
                        .max_connections
                        .map(|v| v as usize)
                        .unwrap_or(PROXY_MAX_CONNECTIONS),
                    client_header_timeout: l.client_header_timeout.unwrap_or(CLIENT_HEADER_TIMEOUT),
                    tls_handshake_timeout: l.tls_handshake_timeout.unwrap_or(TLS_HANDSHAKE_TIMEOUT),
                })
            })
            .collect(),
        None => vec![
            ProxyListener {
                address: "0.0.0.0:8000".into(),
                tls: false,
                http2: false,
                max_connections: PROXY_MAX_CONNECTIONS,
                client_header_timeout: CLIENT_HEADER_TIMEOUT,
                tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            },
            ProxyListener {
                address: "0.0.0.0:8443".into(),
                tls: true,
                http2: true,
                max_connections: PROXY_MAX_CONNECTIONS,
                client_header_timeout: CLIENT_HEADER_TIMEOUT,
                tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            },
        ],
    };
    let stream = raw
        .and_then(|l| l.stream.as_ref())
        .map(|list| {
            list.iter()
                .filter_map(|l| {
                    Some(StreamListener {
                        address: check_address(&l.address, d)?,
                        tls: l.tls.unwrap_or(true),
                        client_hello_timeout: l
                            .client_hello_timeout
                            .unwrap_or(Duration::from_secs(10)),
                        idle_timeout: l.idle_timeout.unwrap_or(STREAM_IDLE_TIMEOUT),
                        max_connections: l
                            .max_connections
                            .map(|v| v as usize)
                            .unwrap_or(STREAM_MAX_CONNECTIONS),
                        max_connections_per_client: l
                            .max_connections_per_client
                            .map(|v| v as usize)
                            .unwrap_or(STREAM_MAX_CONNECTIONS_PER_CLIENT),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let status = match raw {
        Some(l) => l.status.as_ref().and_then(|a| check_address(a, d)),
        None => Some("0.0.0.0:8100".into()),
    };
    if let Some(l) = raw {
        // Two listeners on one address would share one socket inside Pingora.
        let mut seen: Vec<&V<String>> = Vec::new();
        let all = l
            .proxy
            .iter()
            .flatten()
            .map(|p| &p.address)
            .chain(l.stream.iter().flatten().map(|s| &s.address))
            .chain(l.status.iter());
        for a in all {
            if let Some(first) = seen.iter().find(|f| addresses_clash(&f.v, &a.v)) {
                d.err(
                    &a.loc,
                    &a.path,
                    format!(
                        "address {} is already used by {} ({}): each listener needs its own port",
                        a.v, first.path, first.loc
                    ),
                );
            } else {
                seen.push(a);
            }
        }
    }
    Listeners {
        proxy,
        stream,
        status,
    }
}

/// The stream port exists by default only when some route passes TLS through or terminates it
/// there (`tls_passthrough`, `tls`); Kong has no default plain TCP stream port either.
fn finalize_listeners(mut l: Listeners, doc: &RawDoc, stream_routes: &[Arc<Route>]) -> Listeners {
    let stream_given = doc
        .listeners
        .as_ref()
        .map(|l| l.stream.is_some())
        .unwrap_or(false);
    let wants_tls = stream_routes
        .iter()
        .any(|r| r.protocols.tls_passthrough || r.protocols.tls);
    if !stream_given && wants_tls {
        l.stream.push(StreamListener {
            address: "0.0.0.0:9443".into(),
            tls: true,
            client_hello_timeout: Duration::from_secs(10),
            idle_timeout: STREAM_IDLE_TIMEOUT,
            max_connections: STREAM_MAX_CONNECTIONS,
            max_connections_per_client: STREAM_MAX_CONNECTIONS_PER_CLIENT,
        });
    }
    l
}

fn build_server(doc: &RawDoc, d: &mut Diags) -> ServerSettings {
    let s = doc.server.as_ref();
    let trusted_proxies = s
        .map(|s| {
            s.trusted_proxies
                .iter()
                .filter_map(|t| parse_net(t, d))
                .collect()
        })
        .unwrap_or_default();
    let log_json = s
        .and_then(|s| s.log_format.as_ref())
        .and_then(|f| match f.v.as_str() {
            "json" => Some(true),
            "text" | "plain" => Some(false),
            other => {
                d.err(
                    &f.loc,
                    &f.path,
                    format!("unknown log_format {other:?} (use json or text)"),
                );
                None
            }
        });
    ServerSettings {
        threads: s.and_then(|s| s.threads).map(|t| t as usize).unwrap_or(2),
        runtime_shutdown_seconds: s
            .and_then(|s| s.runtime_shutdown_seconds)
            .map(|t| t as u64)
            .unwrap_or(1),
        graceful_shutdown_seconds: s
            .and_then(|s| s.graceful_shutdown_seconds)
            .map(|t| t as u64)
            .unwrap_or(10),
        upgrade_sock: s.and_then(|s| s.upgrade_sock.clone()),
        pid_file: s.and_then(|s| s.pid_file.clone()),
        status_details: s.and_then(|s| s.status_details).unwrap_or(false),
        trusted_proxies,
        log_level: s.and_then(|s| s.log_level.clone()),
        log_json,
        // A zero interval would resolve in a busy loop; one tick of the refresher is the floor.
        dns_refresh_interval: s
            .and_then(|s| s.dns_refresh_interval)
            .unwrap_or(DNS_REFRESH_INTERVAL)
            .max(Duration::from_millis(200)),
    }
}

fn parse_net(t: &V<String>, d: &mut Diags) -> Option<IpNet> {
    let (addr, prefix) = match t.v.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok()),
        None => (t.v.as_str(), None),
    };
    match addr.parse::<IpAddr>() {
        Ok(ip) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = prefix.unwrap_or(max);
            if prefix > max {
                d.err(
                    &t.loc,
                    &t.path,
                    format!("invalid prefix length in {:?}", t.v),
                );
                return None;
            }
            Some(IpNet { addr: ip, prefix })
        }
        Err(_) => {
            d.err(
                &t.loc,
                &t.path,
                format!(
                    "invalid address range {:?} (write 10.0.0.0/8 or 127.0.0.1)",
                    t.v
                ),
            );
            None
        }
    }
}

fn target(t: &RawTarget, d: &mut Diags) -> Option<Target> {
    let (host, port) = split_host_port(&t.target.v, 8000);
    let Some((host, port)) = host.zip(port) else {
        d.err(
            &t.target.loc,
            &t.target.path,
            format!("invalid target {:?}: expected host:port", t.target.v),
        );
        return None;
    };
    Some(Target {
        host,
        port,
        weight: t.weight.unwrap_or(100) as u32,
    })
}

/// `host[:port]`, `[v6]:port`; the default port when none is given.
fn split_host_port(s: &str, default_port: u16) -> (Option<String>, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            let port = match p.strip_prefix(':') {
                Some(p) => p.parse().ok(),
                None if p.is_empty() => Some(default_port),
                None => None,
            };
            return (Some(h.to_string()), port);
        }
        return (None, None);
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            Some(h.to_string()).filter(|h| !h.is_empty()),
            p.parse().ok(),
        ),
        Some(_) => (Some(s.to_string()), Some(default_port)), // bare IPv6
        None => (
            Some(s.to_string()).filter(|h| !h.is_empty()),
            Some(default_port),
        ),
    }
}

fn statuses(v: &[i64], default: &[u16]) -> Vec<u16> {
    if v.is_empty() {
        default.to_vec()
    } else {
        v.iter().map(|s| *s as u16).collect()
    }
}

fn build_upstream(u: &RawUpstream, targets: Vec<Target>, d: &mut Diags) -> Option<Upstream> {
    let algorithm = match u.algorithm.as_ref().map(|v| v.v.as_str()) {
        None | Some("round-robin") => Algorithm::RoundRobin,
        Some("least-connections") => Algorithm::LeastConnections,
        Some("consistent-hashing") => Algorithm::ConsistentHashing,
        Some(other) => {
            let a = u.algorithm.as_ref()?;
            d.err(
                &a.loc,
                &a.path,
                format!("unknown algorithm {other:?} (round-robin, least-connections, consistent-hashing)"),
            );
            Algorithm::RoundRobin
        }
    };
    let hash_on = match u.hash_on.as_ref().map(|v| v.v.as_str()) {
        None | Some("none") => HashOn::None,
        Some("ip") => HashOn::Ip,
        Some("header") => match &u.hash_on_header {
            Some(h) => HashOn::Header(h.v.to_ascii_lowercase()),
            None => {
                let h = u.hash_on.as_ref()?;
                d.err(&h.loc, &h.path, "hash_on: header needs `hash_on_header`");
                HashOn::None
            }
        },
        Some(other) => {
            let h = u.hash_on.as_ref()?;
            d.err(
                &h.loc,
                &h.path,
                format!("unsupported hash_on {other:?} (none, ip, header)"),
            );
            HashOn::None
        }
    };
    let h = &u.healthchecks;
    // Kong's defaults: all-zero thresholds and intervals mean "off".
    let active = h.active_type.as_ref().map(|_| ()).or(
        if h.active_healthy_interval.is_some() || h.active_unhealthy_interval.is_some() {
            Some(())
        } else {
            None
        },
    );
    let active = match active {
        Some(()) => {
            let kind = match h.active_type.as_ref().map(|v| v.v.as_str()) {
                None | Some("http") => CheckKind::Http,
                Some("https") => CheckKind::Https,
                Some("tcp") => CheckKind::Tcp,
                Some(other) => {
                    let t = h.active_type.as_ref()?;
                    d.err(
                        &t.loc,
                        &t.path,
                        format!(
                            "unsupported active health check type {other:?} (http, https, tcp)"
                        ),
                    );
                    CheckKind::Http
                }
            };
            let a = ActiveCheck {
                kind,
                http_path: h.active_http_path.clone().unwrap_or_else(|| "/".into()),
                timeout: h.active_timeout.unwrap_or(Duration::from_secs(1)),
                https_verify_certificate: h.active_https_verify_certificate.unwrap_or(true),
                https_sni: h.active_https_sni.clone(),
                healthy_interval: h.active_healthy_interval.unwrap_or(Duration::ZERO),
                healthy_successes: h.active_healthy_successes.unwrap_or(0) as u32,
                healthy_http_statuses: statuses(&h.active_healthy_http_statuses, &[200, 302]),
                unhealthy_interval: h.active_unhealthy_interval.unwrap_or(Duration::ZERO),
                unhealthy_http_failures: h.active_unhealthy_http_failures.unwrap_or(0) as u32,
                unhealthy_tcp_failures: h.active_unhealthy_tcp_failures.unwrap_or(0) as u32,
                unhealthy_timeouts: h.active_unhealthy_timeouts.unwrap_or(0) as u32,
                unhealthy_http_statuses: statuses(
                    &h.active_unhealthy_http_statuses,
                    &[429, 404, 500, 501, 502, 503, 504, 505],
                ),
            };
            if a.healthy_interval.is_zero() && a.unhealthy_interval.is_zero() {
                None
            } else {
                Some(a)
            }
        }
        None => None,
    };
    let passive = PassiveCheck {
        healthy_successes: h.passive_healthy_successes.unwrap_or(0) as u32,
        healthy_http_statuses: statuses(
            &h.passive_healthy_http_statuses,
            &[
                200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                306, 307, 308,
            ],
        ),
        unhealthy_http_failures: h.passive_unhealthy_http_failures.unwrap_or(0) as u32,
        unhealthy_tcp_failures: h.passive_unhealthy_tcp_failures.unwrap_or(0) as u32,
        unhealthy_timeouts: h.passive_unhealthy_timeouts.unwrap_or(0) as u32,
        unhealthy_http_statuses: statuses(&h.passive_unhealthy_http_statuses, &[429, 500, 503]),
    };
    let passive_on = passive.unhealthy_http_failures > 0
        || passive.unhealthy_tcp_failures > 0
        || passive.unhealthy_timeouts > 0;
    Some(Upstream {
        id: u
            .id
            .as_ref()
            .map(|v| v.v.clone())
            .unwrap_or_else(|| u.name.v.clone()),
        name: u.name.v.clone(),
        algorithm,
        hash_on,
        host_header: u.host_header.as_ref().map(|v| v.v.clone()),
        targets,
        active,
        passive: passive_on.then_some(passive),
    })
}

fn bad_url<T>(url: &V<String>, d: &mut Diags) -> Option<T> {
    d.err(
        &url.loc,
        &url.path,
        format!(
            "invalid url {:?}: expected scheme://host[:port][/path]",
            url.v
        ),
    );
    None
}

#[allow(clippy::too_many_arguments)]
fn build_service(
    s: &RawService,
    cas: &[Arc<CaCertificate>],
    ca_index: &Index,
    certs: &[Arc<Certificate>],
    cert_index: &Index,
    upstreams: &HashMap<&str, usize>,
    d: &mut Diags,
) -> Option<Service> {
    let protocol;
    let host;
    let port;
    let path;
    if let Some(url) = &s.url {
        match url.v.split_once("://") {
            Some((scheme, rest)) => {
                protocol = Protocol::parse(scheme);
                if protocol.is_none() {
                    d.err(
                        &url.loc,
                        &url.path,
                        format!(
                            "unsupported scheme {scheme:?} (http, https, grpc, grpcs, tcp, tls)"
                        ),
                    );
                    return None;
                }
                let (authority, p) = match rest.find('/') {
                    Some(i) => (&rest[..i], Some(rest[i..].to_string())),
                    None => (rest, None),
                };
                let default_port = protocol.map(|p| p.default_port()).unwrap_or(80);
                let (h, pt) = split_host_port(authority, default_port);
                if h.is_none() || pt.is_none() {
                    return bad_url(url, d);
                }
                host = h;
                port = pt;
                path = p;
                // Kong expands `url` over the other fields: its parts win. A field that says
                // something else is almost certainly stale, so say which value applies.
                let url_says = |field: &str,
                                given: &str,
                                applied: &str,
                                loc: &Loc,
                                at: &str,
                                d: &mut Diags| {
                    if given != applied {
                        d.warn(
                            loc,
                            at,
                            format!("`{field}: {given}` disagrees with `url`, whose {field} `{applied}` applies (Kong expands `url` over `{field}`)"),
                        );
                    }
                };
                if let (Some(v), Some(applied)) = (&s.protocol, protocol) {
                    url_says("protocol", &v.v, applied.as_str(), &v.loc, &v.path, d);
                }
                if let (Some(v), Some(applied)) = (&s.host, &host) {
                    url_says("host", &v.v, applied, &v.loc, &v.path, d);
                }
                if let (Some(v), Some(applied)) = (&s.port, port) {
                    url_says(
                        "port",
                        &v.v.to_string(),
                        &applied.to_string(),
                        &v.loc,
                        &v.path,
                        d,
                    );
                }
                if let Some(v) = &s.path {
                    url_says(
                        "path",
                        &v.v,
                        path.as_deref().unwrap_or("(none)"),
                        &v.loc,
                        &v.path,
                        d,
                    );
                }
            }
            None => {
                return bad_url(url, d);
            }
        }
    } else {
        protocol = s.protocol.as_ref().and_then(|p| Protocol::parse(&p.v));
        if let Some(p) = &s.protocol {
            if protocol.is_none() {
                d.err(
                    &p.loc,
                    &p.path,
                    format!(
                        "unsupported protocol {:?} (http, https, grpc, grpcs, tcp, tls)",
                        p.v
                    ),
                );
                return None;
            }
        }
        match &s.host {
            Some(h) => host = Some(h.v.clone()),
            None => {
                d.err(
                    &s.loc,
                    &s.path_str,
                    "a service needs `url` or `host` (with optional protocol, port, path)",
                );
                return None;
            }
        }
        port = s.port.as_ref().map(|p| p.v as u16);
        path = s.path.as_ref().map(|p| p.v.clone());
    }
    let protocol = protocol.unwrap_or(Protocol::Http);
    let host = host?;
    let port = port.unwrap_or(protocol.default_port());
    if let Some(p) = &path {
        if !p.starts_with('/') {
            d.err(
                s.url.as_ref().map(|u| &u.loc).unwrap_or(&s.loc),
                &s.path_str,
                "service path must start with /",
            );
        }
    }
    let id =
        s.id.as_ref()
            .or(s.name.as_ref())
            .map(|v| v.v.clone())
            .unwrap_or_else(|| format!("service-{host}-{port}"));
    let name: Arc<str> = Arc::from(s.name.as_ref().map(|v| v.v.as_str()).unwrap_or(id.as_str()));
    let ca_certificates: Vec<Arc<CaCertificate>> = s
        .ca_certificates
        .iter()
        .filter_map(|r| ca_index.resolve(r, d).and_then(|i| cas.get(i)).cloned())
        .collect();
    let client_certificate = s
        .client_certificate
        .as_ref()
        .and_then(|r| cert_index.resolve(r, d))
        .and_then(|i| certs.get(i))
        .cloned();
    let verify = s.tls_verify.unwrap_or(true);
    let verify_depth = s.tls_verify_depth.as_ref().map(|v| v.v as u8);
    if let Some(v) = s.tls_server_name.as_ref().filter(|v| v.v.trim().is_empty()) {
        // OpenSSL takes an empty host name as "no host to check": the certificate of any name
        // would pass. Only `tls_verify: false` may turn name checks off.
        d.err(
            &v.loc,
            &v.path,
            "tls_server_name must not be empty (omit it to verify the service host; only tls_verify: false disables verification)",
        );
    }
    let server_name = s
        .tls_server_name
        .as_ref()
        .map(|v| v.v.clone())
        .unwrap_or_else(|| host.clone());
    // Every certificate of every bundle: services trusting [A, B] and [A] must not share
    // connections verified by only one of them.
    let group_key = hash_of(&(
        verify,
        verify_depth,
        ca_certificates
            .iter()
            .flat_map(|c| c.certs.iter().map(fingerprint))
            .collect::<Vec<_>>(),
        client_certificate.as_ref().map(|c| c.fingerprint.clone()),
        server_name.clone(),
        protocol,
    ));
    let upstream = upstreams.get(host.as_str()).copied();
    Some(Service {
        id,
        name,
        protocol,
        host,
        port,
        path,
        retries: s.retries.unwrap_or(5) as usize,
        connect_timeout: s.connect_timeout.unwrap_or(DEFAULT_TIMEOUT),
        read_timeout: s.read_timeout.unwrap_or(DEFAULT_TIMEOUT),
        write_timeout: s.write_timeout.unwrap_or(DEFAULT_TIMEOUT),
        tls: Arc::new(UpstreamTls {
            verify,
            verify_depth,
            ca_certificates,
            client_certificate,
            server_name,
            group_key,
        }),
        upstream,
        enabled: s.enabled,
    })
}

/// `sources` / `destinations` entries: `ip` (an address or CIDR range) and/or `port`.
fn nets(raw: &[RawNet], d: &mut Diags) -> Vec<NetMatch> {
    raw.iter()
        .filter_map(|n| {
            if n.ip.is_none() && n.port.is_none() {
                d.err(&n.loc, &n.path, "needs `ip`, `port` or both");
                return None;
            }
            let net = match &n.ip {
                Some(ip) => Some(parse_net(ip, d)?),
                None => None,
            };
            Some(NetMatch {
                net,
                port: n.port.as_ref().map(|p| p.v as u16),
            })
        })
        .collect()
}

/// Kong's rules for stream routes (routes_subschemas.lua and the routes entity checks), plus
/// the service protocols that can carry them.
fn check_stream_route(
    r: &RawRoute,
    protocols: &Protocols,
    service: &Service,
    snis: &[String],
    has_addresses: bool,
    d: &mut Diags,
) {
    let kind = if protocols.tls_passthrough {
        "tls_passthrough"
    } else if protocols.tls {
        "tls"
    } else {
        "tcp"
    };
    if protocols.tls_passthrough && snis.is_empty() {
        d.err(
            &r.loc,
            &r.path,
            "a tls_passthrough route needs `snis` (the gateway routes by SNI without decrypting)",
        );
    }
    if (protocols.tls || protocols.tcp) && snis.is_empty() && !has_addresses {
        d.err(
            &r.loc,
            &r.path,
            format!("a {kind} route needs at least one of `snis`, `sources` or `destinations`"),
        );
    }
    if !protocols.tls_passthrough && !protocols.tls && !r.snis.is_empty() {
        d.err(
            &r.snis[0].loc,
            &format!("{}.snis", r.path),
            "'snis' can only be set when 'protocols' is https, grpcs, tls or tls_passthrough (a tcp route sees no SNI)",
        );
    }
    // tcp and tls routes relay plain bytes to a `tcp` service, or originate TLS to a `tls`
    // service (as Kong does). A tls_passthrough route relays the client's own TLS unchanged
    // whichever of the two its service says.
    if !matches!(service.protocol, Protocol::Tcp | Protocol::Tls) {
        let wanted = if protocols.tls_passthrough {
            "tcp"
        } else {
            "tcp or tls"
        };
        d.err(
            &r.loc,
            &r.path,
            format!(
                "a {kind} route needs a service with protocol {wanted} (service {:?} is {})",
                &*service.name,
                service.protocol.as_str()
            ),
        );
    }
    let fields = [
        ("hosts", r.hosts.first().map(|v| &v.loc)),
        ("paths", r.paths.first().map(|v| &v.loc)),
        ("methods", r.methods.first().map(|v| &v.loc)),
        ("headers", r.headers.first().map(|(k, _)| &k.loc)),
    ];
    for (field, at) in fields {
        if let Some(loc) = at {
            d.err(
                loc,
                &format!("{}.{field}", r.path),
                format!("cannot set '{field}' when 'protocols' is {kind} (stream routes match on snis, sources and destinations only)"),
            );
        }
    }
}

fn build_route(r: &RawRoute, service: Arc<Service>, order: usize, d: &mut Diags) -> Option<Route> {
    let errors_before = d.errors.len();
    let mut protocols = Protocols::default();
    if r.protocols.is_empty() {
        protocols.http = true;
        protocols.https = true;
    }
    for p in &r.protocols {
        match p.v.as_str() {
            "http" => protocols.http = true,
            "https" => protocols.https = true,
            "grpc" => protocols.grpc = true,
            "grpcs" => protocols.grpcs = true,
            "tls_passthrough" => protocols.tls_passthrough = true,
            "tls" => protocols.tls = true,
            "tcp" => protocols.tcp = true,
            other => d.err(
                &p.loc,
                &p.path,
                format!(
                    "unsupported protocol {other:?} (http, https, grpc, grpcs, tls_passthrough, tls, tcp)"
                ),
            ),
        }
    }
    if protocols.tls_passthrough && r.protocols.len() > 1 {
        let p = &r.protocols[0];
        d.err(
            &p.loc,
            &format!("{}.protocols", r.path),
            "tls_passthrough cannot be combined with other protocols",
        );
    }
    let http_kind = protocols.http || protocols.https || protocols.grpc || protocols.grpcs;
    if (protocols.tls || protocols.tcp) && http_kind {
        // Kong's mutually exclusive protocol sets: a route is served by one subsystem.
        let p = &r.protocols[0];
        d.err(
            &p.loc,
            &format!("{}.protocols", r.path),
            "tcp and tls (stream) cannot be combined with http, https, grpc or grpcs",
        );
    }
    let sources = nets(&r.sources, d);
    let destinations = nets(&r.destinations, d);
    let hosts: Vec<String> = r
        .hosts
        .iter()
        .filter_map(|h| {
            // Kong allows a port in hosts (`example.com:8000`): matched against the Host header.
            check_wildcard(h, "host", d)
        })
        .collect();
    let mut paths = Vec::new();
    for p in &r.paths {
        if let Some(src) = p.v.strip_prefix('~') {
            match regex::Regex::new(&format!("^(?:{src})")) {
                Ok(re) => paths.push(PathSpec::Regex {
                    source: src.to_string(),
                    re,
                }),
                Err(e) => {
                    let msg = e.to_string();
                    let short = msg.lines().last().unwrap_or("").trim();
                    d.err(&p.loc, &p.path, format!("regex does not compile: {short}"));
                }
            }
        } else if p.v.starts_with('/') {
            paths.push(PathSpec::Prefix(p.v.clone()));
        } else {
            d.err(
                &p.loc,
                &p.path,
                format!("path {:?} must start with / (prefix) or ~ (regex)", p.v),
            );
        }
    }
    let methods: Vec<String> = r
        .methods
        .iter()
        .filter_map(|m| {
            let up = m.v.to_ascii_uppercase();
            if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                d.err(&m.loc, &m.path, format!("invalid method {:?}", m.v));
                None
            } else {
                Some(up)
            }
        })
        .collect();
    let mut headers = Vec::new();
    for (name, values) in &r.headers {
        let lname = name.v.to_ascii_lowercase();
        if lname == "host" {
            d.err(
                &name.loc,
                &name.path,
                "use `hosts` to match the Host header",
            );
            continue;
        }
        if values.is_empty() {
            d.err(&name.loc, &name.path, "header needs at least one value");
            continue;
        }
        let mut vals = Vec::new();
        for v in values {
            if let Some(re) = v.v.strip_prefix("~*") {
                if let Err(e) = regex::Regex::new(re) {
                    d.err(&v.loc, &v.path, format!("regex does not compile: {e}"));
                }
            }
            vals.push(v.v.clone());
        }
        headers.push((lname, vals));
    }
    let snis: Vec<String> = r
        .snis
        .iter()
        .filter_map(|s| check_wildcard(s, "SNI", d))
        .collect();
    if protocols.is_stream() {
        check_stream_route(
            r,
            &protocols,
            &service,
            &snis,
            // As written: an entry with an error of its own is not also "missing".
            !r.sources.is_empty() || !r.destinations.is_empty(),
            d,
        );
    } else {
        if hosts.is_empty()
            && paths.is_empty()
            && methods.is_empty()
            && headers.is_empty()
            && snis.is_empty()
            && r.paths.is_empty()
            && r.hosts.is_empty()
        {
            d.err(
                &r.loc,
                &r.path,
                "a route needs at least one of `hosts`, `paths`, `methods`, `headers` or `snis`",
            );
        }
        if matches!(service.protocol, Protocol::Tcp | Protocol::Tls) {
            d.err(
                &r.loc,
                &r.path,
                format!(
                    "service {:?} has protocol {}, which only stream routes (tcp, tls, tls_passthrough) can use",
                    &*service.name,
                    service.protocol.as_str()
                ),
            );
        }
        for (field, list) in [("sources", &r.sources), ("destinations", &r.destinations)] {
            if let Some(first) = list.first() {
                d.err(
                    &first.loc,
                    &format!("{}.{field}", r.path),
                    format!("cannot set '{field}' when 'protocols' is http, https, grpc or grpcs (only stream routes match on addresses)"),
                );
            }
        }
    }
    let https_redirect_status_code = match &r.https_redirect_status_code {
        Some(v) if [301, 302, 307, 308, 426].contains(&v.v) => v.v as u16,
        Some(v) => {
            d.err(
                &v.loc,
                &v.path,
                "https_redirect_status_code must be one of 301, 302, 307, 308, 426",
            );
            426
        }
        None => 426,
    };
    if d.errors.len() > errors_before {
        return None;
    }
    let id =
        r.id.as_ref()
            .or(r.name.as_ref())
            .map(|v| v.v.clone())
            .unwrap_or_else(|| format!("route-{order}"));
    let name: Arc<str> = Arc::from(r.name.as_ref().map(|v| v.v.as_str()).unwrap_or(&id));
    Some(Route {
        id,
        name,
        service,
        protocols,
        hosts,
        paths,
        methods,
        headers,
        snis,
        sources,
        destinations,
        strip_path: r.strip_path.unwrap_or(true),
        preserve_host: r.preserve_host.unwrap_or(false),
        regex_priority: r.regex_priority.unwrap_or(0),
        https_redirect_status_code,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("a.b:81", 80),
            (Some("a.b".into()), Some(81))
        );
        assert_eq!(split_host_port("a.b", 80), (Some("a.b".into()), Some(80)));
        assert_eq!(
            split_host_port("[::1]:9", 80),
            (Some("::1".into()), Some(9))
        );
        assert_eq!(split_host_port("a:x", 80).1, None);
    }

    fn load(yaml: &str) -> (Option<Config>, Diags) {
        let f: Arc<str> = Arc::from("conf/kong.yml");
        let node = crate::config::yaml::parse(&f, yaml).expect("yaml");
        let mut doc = RawDoc::default();
        let mut d = Diags::default();
        crate::config::raw::read_root(&node, &mut doc, &mut d);
        let c = validate(Path::new("conf"), doc, &[], &mut d);
        (c, d)
    }

    #[test]
    fn url_parts_win_over_separate_fields_and_disagreements_warn() {
        let (c, d) = load(
            "services:\n- name: a\n  url: https://new.internal:8443/v2\n  protocol: http\n  host: old.internal\n  port: 80\n  path: /v1\n- name: b\n  url: http://b.internal\n  protocol: http\n  host: b.internal\n  port: 80\n",
        );
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let c = c.expect("config");
        let a = &c.services[0];
        assert_eq!(
            (a.protocol, a.host.as_str(), a.port, a.path.as_deref()),
            (Protocol::Https, "new.internal", 8443, Some("/v2"))
        );
        let w: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 4, "one warning per disagreeing field: {w:#?}");
        assert_eq!(
            w[0],
            "conf/kong.yml:4:13: services[0].protocol: warning: `protocol: http` disagrees with `url`, whose protocol `https` applies (Kong expands `url` over `protocol`)"
        );
        assert!(
            w[1].starts_with("conf/kong.yml:5:9: services[0].host: "),
            "{}",
            w[1]
        );
        assert!(
            w[2].contains("`port: 80` disagrees with `url`, whose port `8443` applies"),
            "{}",
            w[2]
        );
        assert!(
            w[3].contains("`path: /v1` disagrees with `url`, whose path `/v2` applies"),
            "{}",
            w[3]
        );
        // Service b's fields say what its url says (port 80 is http's default): silent.
        assert_eq!(c.services[1].port, 80);
    }

    #[test]
    fn a_kong_plugin_not_provided_is_named_as_such() {
        let (_, d) = load("plugins:\n- name: oauth2\n- name: oauth3\n");
        let e: Vec<String> = d.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            e[0],
            "conf/kong.yml:2:9: plugins[0].name: `oauth2` is a Kong plugin that Portcullis does not provide; remove it or write it as a Rust plugin"
        );
        assert!(
            e[1].starts_with(
                "conf/kong.yml:3:9: plugins[1].name: unknown plugin \"oauth3\" (available: "
            ),
            "{}",
            e[1]
        );
    }

    #[test]
    fn ipnet_contains() {
        let n = IpNet {
            addr: "10.0.0.0".parse().expect("ip"),
            prefix: 8,
        };
        assert!(n.contains("10.1.2.3".parse().expect("ip")));
        assert!(!n.contains("11.0.0.1".parse().expect("ip")));
    }
}
