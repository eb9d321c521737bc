//! Raw entities → model: defaults applied, references resolved by id or name, PEM parsed,
//! cert/key pairs checked, regexes compiled, plugins built by their own schemas. Every problem is
//! recorded with its location; nothing is returned half-built.
//!
//! One module per entity kind, run in dependency order by [`validate`]; each adds what it built
//! to the [`Resolver`], whose indexes the later kinds resolve their references through.

mod certificates;
mod consumers;
mod plugins;
mod services;
mod settings;
mod upstreams;

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

/// What validation has built so far, and the indexes (by id and by name) that later entities
/// resolve their references through.
struct Resolver<'a> {
    dir: &'a Path,
    now: i64,
    /// Every file the configuration read (sources, PEM files, plugin files), for reloads.
    files: Vec<PathBuf>,
    /// Every referenced file is read once, through here, and hashed from these same bytes.
    file_log: api::FileLog,
    cas: Vec<Arc<CaCertificate>>,
    ca_index: Index,
    certs: Vec<Arc<Certificate>>,
    cert_index: Index,
    upstreams: Vec<Arc<Upstream>>,
    services: Vec<Arc<Service>>,
    svc_index: Index,
    /// (raw route, service index) pairs, nested first then top-level, in file order.
    route_raws: Vec<(&'a RawRoute, Option<usize>)>,
    routes: Vec<Arc<Route>>,
    stream_routes: Vec<Arc<Route>>,
    route_index: Index,
    /// Route ids by position in `route_raws`.
    route_ids: HashMap<usize, String>,
    consumers: Vec<Arc<api::Consumer>>,
    cons_index: Index,
    credentials: Vec<api::MtlsCredential>,
    /// Plugin entries with their scope, nested ones collected as their parents are read.
    plugin_raws: Vec<(&'a RawPlugin, Scope)>,
}

pub fn validate(
    dir: &Path,
    doc: RawDoc,
    sources: &[(PathBuf, String)],
    registry: &api::Registry,
    d: &mut Diags,
) -> Option<Config> {
    let mut r = Resolver {
        dir,
        now: unix_now(),
        files: sources.iter().map(|(p, _)| p.clone()).collect(),
        file_log: api::FileLog::default(),
        cas: Vec::new(),
        ca_index: Index::new("ca_certificate"),
        certs: Vec::new(),
        cert_index: Index::new("certificate"),
        upstreams: Vec::new(),
        services: Vec::new(),
        svc_index: Index::new("service"),
        route_raws: Vec::new(),
        routes: Vec::new(),
        stream_routes: Vec::new(),
        route_index: Index::new("route"),
        route_ids: HashMap::new(),
        consumers: Vec::new(),
        cons_index: Index::new("consumer"),
        credentials: Vec::new(),
        plugin_raws: Vec::new(),
    };
    r.ca_certificates(&doc, d);
    r.certificates(&doc, d);
    let listeners = settings::build_listeners(&doc, d);
    let server = settings::build_server(&doc, d);
    let default_certificate = doc
        .tls
        .as_ref()
        .and_then(|t| t.default_certificate.as_ref())
        .and_then(|c| r.cert_index.resolve(c, d))
        .and_then(|i| r.certs.get(i).cloned());
    let tls_groups = settings::tls_groups(&doc, d);
    r.upstreams(&doc, d);
    r.services(&doc, d);
    r.routes(d);
    r.consumers(&doc, d);
    let plugin_credentials = r.plugin_credentials(&doc, registry, d);
    let plugins = r.plugins(&doc, registry, plugin_credentials, d);
    let hash = r.config_hash(sources);
    let listeners = settings::finalize_listeners(listeners, &doc, &r.stream_routes);
    r.warn_unserved_stream_routes(&listeners, d);
    Some(Config {
        dir: dir.to_path_buf(),
        listeners,
        server,
        certificates: r.certs,
        default_certificate,
        tls_groups,
        ca_certificates: r.cas,
        services: r.services,
        routes: r.routes,
        stream_routes: r.stream_routes,
        upstreams: r.upstreams,
        consumers: r.consumers,
        credentials: r.credentials,
        plugins,
        files: r.files,
        hash,
    })
}

impl Resolver<'_> {
    /// The whole configuration's hash: every source and every referenced file, from the bytes
    /// that were applied.
    fn config_hash(&mut self, sources: &[(PathBuf, String)]) -> String {
        self.files.sort();
        self.files.dedup();
        let mut hasher = openssl::sha::Sha256::new();
        for (p, text) in sources {
            hasher.update(p.to_string_lossy().as_bytes());
            hasher.update(text.as_bytes());
        }
        for f in &self.files {
            // A file named by a config but read by nobody is hashed from disk: it only tells
            // whether something changed.
            let bytes = self
                .file_log
                .get(f)
                .or_else(|| std::fs::read(f).ok().map(Arc::from));
            if let Some(bytes) = bytes {
                hasher.update(&bytes);
            }
        }
        hasher
            .finish()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
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
        crate::config::raw::read_root(&node, &mut doc, crate::plugin::registry(), &mut d);
        let c = validate(
            Path::new("conf"),
            doc,
            &[],
            crate::plugin::registry(),
            &mut d,
        );
        (c, d)
    }

    /// What compiling a configuration would stumble on is refused here, with its location.
    #[test]
    fn hosts_and_server_names_compiling_cannot_use_are_located_errors() {
        let (c, d) = load(
            "services:\n- name: a\n  host: \"bad\\x01host\"\n- name: b\n  url: https://ok.test\n  tls_server_name: \"x\\0y\"\n",
        );
        assert!(c.is_none() || !d.errors.is_empty());
        let e: Vec<String> = d.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            e.iter().any(|m| m.starts_with("conf/kong.yml:3:9: services[0].host: host \"bad\\u{1}host\" cannot be sent as a Host header")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("conf/kong.yml:6:20: services[1].tls_server_name: \"x\\0y\" cannot be verified as a TLS server name")),
            "{e:?}"
        );
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
