//! Typed raw entities read from YAML trees. Every field is checked here for shape (types, unknown
//! keys) and every problem is collected; references and cross-entity rules are `validate`'s job.

use super::kong;
use super::yaml::{Kind, Loc, Node};
use super::{Diag, Diags};
use portcullis_plugin_api as api;
use std::time::Duration;

/// Kong's bound on timeouts (2^31 - 2 ms, about 24.8 days); it also keeps every `Instant +
/// duration` made from configuration far from overflow.
pub const MAX_DURATION: Duration = Duration::from_millis((1 << 31) - 2);

/// A value with the place it was written, for errors found after parsing.
#[derive(Debug, Clone)]
pub struct V<T> {
    pub v: T,
    pub loc: Loc,
    pub path: String,
}

/// Fields of Kong's schema that are accepted but have no effect here: `check` warns about them.
const KONG_NO_EFFECT: &[&str] = &[
    "created_at",
    "updated_at",
    "path_handling",
    "request_buffering",
    "response_buffering",
    "ws_id",
    "instance_name",
    "ordering",
    "cert_digest",
    "slots",
    "hash_fallback",
    "hash_fallback_header",
    "hash_on_cookie",
    "hash_on_cookie_path",
    "hash_on_query_arg",
    "hash_fallback_query_arg",
    "hash_on_uri_capture",
    "hash_fallback_uri_capture",
    "use_srv_name",
    "expression",
    "priority",
    "cert_alt",
    "key_alt",
];

/// A mapping being read: records which keys were consumed so the rest can be reported.
pub struct Obj<'a> {
    node: &'a Node,
    pub path: String,
    used: Vec<&'a str>,
}

impl<'a> Obj<'a> {
    pub fn new(node: &'a Node, path: &str, d: &mut Diags) -> Option<Obj<'a>> {
        match &node.kind {
            Kind::Map(_) => Some(Obj {
                node,
                path: path.to_string(),
                used: Vec::new(),
            }),
            Kind::Null => None,
            _ => {
                d.err(
                    &node.loc,
                    path,
                    format!("expected a mapping, found {}", node.type_name()),
                );
                None
            }
        }
    }

    pub fn loc(&self) -> &Loc {
        &self.node.loc
    }

    fn sub(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// The node under `key`, marking it used; `null` counts as absent.
    pub fn field(&mut self, key: &'a str) -> Option<(&'a Node, String)> {
        self.used.push(key);
        let n = self.node.get(key)?;
        if matches!(n.kind, Kind::Null) {
            return None;
        }
        Some((n, self.sub(key)))
    }

    /// Where `key` itself is written (for errors about a whole section).
    pub fn key_loc(&self, key: &str) -> Loc {
        match &self.node.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, _)| k.loc.clone())
                .unwrap_or_else(|| self.node.loc.clone()),
            _ => self.node.loc.clone(),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.node.get(key).is_some()
    }

    pub fn str(&mut self, key: &'a str, d: &mut Diags) -> Option<V<String>> {
        let (n, p) = self.field(key)?;
        as_string(n, &p, d)
    }

    pub fn bool(&mut self, key: &'a str, d: &mut Diags) -> Option<bool> {
        let (n, p) = self.field(key)?;
        match n.kind {
            Kind::Bool(b) => Some(b),
            _ => {
                d.err(
                    &n.loc,
                    &p,
                    format!("expected true or false, found {}", n.type_name()),
                );
                None
            }
        }
    }

    pub fn int(&mut self, key: &'a str, min: i64, max: i64, d: &mut Diags) -> Option<V<i64>> {
        let (n, p) = self.field(key)?;
        as_int(n, &p, min, max, d)
    }

    /// A duration: a string with a unit (`10s`, `500ms`) or a number in `unit_ms` milliseconds,
    /// between zero and [`MAX_DURATION`].
    pub fn duration(&mut self, key: &'a str, unit_ms: u64, d: &mut Diags) -> Option<Duration> {
        let (n, p) = self.field(key)?;
        let value = match &n.kind {
            Kind::Int(i) => u64::try_from(*i)
                .ok()
                .and_then(|i| i.checked_mul(unit_ms))
                .map(Duration::from_millis)
                .ok_or(*i < 0),
            // NaN, infinities and huge values would panic in `Duration::from_secs_f64`.
            Kind::Float(f) => {
                Duration::try_from_secs_f64(*f * unit_ms as f64 / 1000.0).map_err(|_| *f < 0.0)
            }
            Kind::Str(s) => match humantime::parse_duration(s) {
                Ok(v) => Ok(v),
                Err(e) => {
                    d.err(
                        &n.loc,
                        &p,
                        format!("invalid duration {s:?}: {e} (write e.g. 10s or 500ms)"),
                    );
                    return None;
                }
            },
            _ => {
                d.err(
                    &n.loc,
                    &p,
                    format!("expected a duration, found {}", n.type_name()),
                );
                return None;
            }
        };
        match value {
            Ok(v) if v <= MAX_DURATION => Some(v),
            Err(true) => {
                d.err(&n.loc, &p, "a duration must not be negative");
                None
            }
            _ => {
                d.err(
                    &n.loc,
                    &p,
                    format!(
                        "duration out of range (at most {} ms, as in Kong)",
                        MAX_DURATION.as_millis()
                    ),
                );
                None
            }
        }
    }

    pub fn str_list(&mut self, key: &'a str, d: &mut Diags) -> Vec<V<String>> {
        match self.field(key) {
            Some((n, p)) => list(n, &p, d)
                .into_iter()
                .filter_map(|(item, ip)| as_string(item, &ip, d))
                .collect(),
            None => Vec::new(),
        }
    }

    /// A list of mappings, each read by `f`.
    pub fn objs<T>(
        &mut self,
        key: &'a str,
        d: &mut Diags,
        mut f: impl FnMut(Obj<'a>, &mut Diags) -> Option<T>,
    ) -> Vec<T> {
        match self.field(key) {
            Some((n, p)) => list(n, &p, d)
                .into_iter()
                .filter_map(|(item, ip)| Obj::new(item, &ip, d).and_then(|o| f(o, d)))
                .collect(),
            None => Vec::new(),
        }
    }

    /// A reference to another entity: a string (id or name) or Kong's `{id: ...}` / `{name: ...}`.
    pub fn reference(&mut self, key: &'a str, d: &mut Diags) -> Option<V<String>> {
        let (n, p) = self.field(key)?;
        as_reference(n, &p, d)
    }

    /// Collections of credential entities declared by plugins (`keyauth_credentials`, …) that
    /// this mapping holds; each entry is kept as a located node for the owning plugin's schema.
    pub fn plugin_credentials(
        &mut self,
        d: &mut Diags,
        top_level: bool,
        registry: &api::Registry,
    ) -> Vec<RawPluginCredential> {
        let Kind::Map(entries) = &self.node.kind else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, _) in entries {
            let Some(key) = k.as_str() else { continue };
            let Some(kind) = registry.credential_kind(key) else {
                continue;
            };
            let collection = kind.collection;
            out.extend(self.objs(key, d, |mut o, d| {
                let id = o.str("id", d);
                let consumer = if top_level {
                    let c = o.reference("consumer", d);
                    if c.is_none() {
                        d.err(o.loc(), &o.path, "a top-level credential needs `consumer`");
                        return None;
                    }
                    c
                } else {
                    None
                };
                let tags = o.str_list("tags", d).into_iter().map(|v| v.v).collect();
                for meta in ["created_at", "updated_at", "ws_id", "_comment", "_ignore"] {
                    o.field(meta);
                }
                let node = o.node.clone();
                Some(RawPluginCredential {
                    collection,
                    id,
                    consumer,
                    tags,
                    node,
                    loc: o.loc().clone(),
                    path: o.path.clone(),
                })
            }));
        }
        out
    }

    /// Kong's `_comment` (a string) and `_ignore` (a list of anything), which Kong allows on every
    /// entity of the declarative format (and its tools add): accepted, not interpreted.
    pub fn kong_annotations(&mut self, d: &mut Diags) {
        if let Some((n, p)) = self.field("_comment") {
            as_string(n, &p, d);
        }
        if let Some((n, p)) = self.field("_ignore") {
            list(n, &p, d);
        }
    }

    /// Credential collections of Kong plugins that nothing here reads (the plugin is not
    /// provided): say whose they are rather than suggest a typo.
    pub fn unclaimed_credentials(&mut self, d: &mut Diags) {
        let Kind::Map(entries) = &self.node.kind else {
            return;
        };
        for (k, _) in entries {
            let Some(name) = k.as_str() else {
                continue;
            };
            if self.used.contains(&name) {
                continue;
            }
            if let Some(plugin) = kong::credential_plugin(name) {
                self.used.push(name);
                d.err(
                    &k.loc,
                    &self.sub(name),
                    kong::credentials_not_provided(name, plugin),
                );
            }
        }
    }

    /// Report keys nobody read: unknown fields are errors (a typo must not silently disable
    /// security), Kong fields without effect here are warnings.
    pub fn finish(self, d: &mut Diags) {
        finish_with(self, d, &[])
    }

    pub fn finish_known(self, d: &mut Diags, known: &[&str]) {
        finish_with(self, d, known)
    }
}

fn finish_with(o: Obj<'_>, d: &mut Diags, also_known: &[&str]) {
    let Kind::Map(entries) = &o.node.kind else {
        return;
    };
    for (k, _) in entries {
        let Some(name) = k.as_str() else {
            d.err(&k.loc, &o.path, "mapping keys must be strings");
            continue;
        };
        if o.used.contains(&name) || also_known.contains(&name) {
            continue;
        }
        let p = o.sub(name);
        if KONG_NO_EFFECT.contains(&name) {
            d.warn(
                &k.loc,
                &p,
                "Kong field accepted but has no effect in Portcullis",
            );
        } else {
            let hint = closest(name, &o.used)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            d.err(&k.loc, &p, format!("unknown field `{name}`{hint}"));
        }
    }
}

fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(name, c), *c))
        .filter(|(dist, c)| *dist <= 2.max(c.len() / 4))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub fn list<'a>(n: &'a Node, path: &str, d: &mut Diags) -> Vec<(&'a Node, String)> {
    match &n.kind {
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{path}[{i}]")))
            .collect(),
        Kind::Null => Vec::new(),
        _ => {
            d.err(
                &n.loc,
                path,
                format!("expected a list, found {}", n.type_name()),
            );
            Vec::new()
        }
    }
}

pub fn as_string(n: &Node, path: &str, d: &mut Diags) -> Option<V<String>> {
    let v = match &n.kind {
        Kind::Str(s) => s.clone(),
        // Kong configs often carry numbers where strings are meant (ports in hosts, ids).
        Kind::Int(i) => i.to_string(),
        _ => {
            d.err(
                &n.loc,
                path,
                format!("expected a string, found {}", n.type_name()),
            );
            return None;
        }
    };
    Some(V {
        v,
        loc: n.loc.clone(),
        path: path.to_string(),
    })
}

pub fn as_int(n: &Node, path: &str, min: i64, max: i64, d: &mut Diags) -> Option<V<i64>> {
    let v = match &n.kind {
        Kind::Int(i) => *i,
        Kind::Str(s) if s.parse::<i64>().is_ok() => s.parse::<i64>().ok()?,
        _ => {
            d.err(
                &n.loc,
                path,
                format!("expected an integer, found {}", n.type_name()),
            );
            return None;
        }
    };
    if v < min || v > max {
        d.err(
            &n.loc,
            path,
            format!("{v} is out of range (allowed {min}..={max})"),
        );
        return None;
    }
    Some(V {
        v,
        loc: n.loc.clone(),
        path: path.to_string(),
    })
}

pub fn as_reference(n: &Node, path: &str, d: &mut Diags) -> Option<V<String>> {
    match &n.kind {
        Kind::Map(_) => {
            let mut o = Obj::new(n, path, d)?;
            let r = o.str("id", d).or_else(|| o.str("name", d));
            // Kong's nested references may also carry `username` (consumers).
            let r = r.or_else(|| o.str("username", d));
            o.finish(d);
            match r {
                Some(mut r) => {
                    r.loc = n.loc.clone();
                    r.path = path.to_string();
                    Some(r)
                }
                None => {
                    d.err(&n.loc, path, "a reference needs `id` or `name`");
                    None
                }
            }
        }
        _ => as_string(n, path, d),
    }
}

// ---------------------------------------------------------------------------------------------
// Entities

#[derive(Debug, Default)]
pub struct RawDoc {
    pub format_version: Option<V<String>>,
    pub listeners: Option<RawListeners>,
    pub tls: Option<RawTls>,
    pub server: Option<RawServer>,
    pub certificates: Vec<RawCertificate>,
    pub ca_certificates: Vec<RawCaCertificate>,
    pub services: Vec<RawService>,
    pub routes: Vec<RawRoute>,
    pub upstreams: Vec<RawUpstream>,
    pub targets: Vec<RawTarget>,
    pub consumers: Vec<RawConsumer>,
    pub plugins: Vec<RawPlugin>,
    pub acls: Vec<RawAcl>,
    pub mtls_auth_credentials: Vec<RawCredential>,
    pub plugin_credentials: Vec<RawPluginCredential>,
    pub snis: Vec<RawSni>,
    /// Where each settings section was written, so a second definition can be reported.
    pub sections: Vec<(&'static str, Loc)>,
}

#[derive(Debug)]
pub struct RawListeners {
    pub proxy: Option<Vec<RawProxyListener>>,
    pub stream: Option<Vec<RawStreamListener>>,
    pub status: Option<V<String>>,
}

#[derive(Debug)]
pub struct RawProxyListener {
    pub address: V<String>,
    pub tls: bool,
    pub http2: Option<bool>,
    pub max_connections: Option<i64>,
    pub client_header_timeout: Option<Duration>,
    pub tls_handshake_timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct RawStreamListener {
    pub address: V<String>,
    /// `false`: a plain TCP listener (Kong `stream_listen` without `ssl`).
    pub tls: Option<bool>,
    pub client_hello_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<i64>,
    pub max_connections_per_client: Option<i64>,
}

#[derive(Debug)]
pub struct RawTls {
    pub default_certificate: Option<V<String>>,
    /// `None` when absent (the default list); the key's location for an empty list.
    pub groups: Option<(Loc, Vec<V<String>>)>,
}

#[derive(Debug, Default)]
pub struct RawServer {
    pub threads: Option<i64>,
    pub graceful_shutdown_seconds: Option<i64>,
    pub runtime_shutdown_seconds: Option<i64>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    pub status_details: Option<bool>,
    pub trusted_proxies: Vec<V<String>>,
    pub log_level: Option<String>,
    pub log_format: Option<V<String>>,
    pub dns_refresh_interval: Option<Duration>,
}

#[derive(Debug)]
pub struct RawCertificate {
    pub id: Option<V<String>>,
    pub name: Option<V<String>>,
    pub cert: Option<V<String>>,
    pub cert_file: Option<V<String>>,
    pub key: Option<V<String>>,
    pub key_file: Option<V<String>>,
    pub snis: Vec<V<String>>,
    pub loc: Loc,
    pub path: String,
}

#[derive(Debug)]
pub struct RawSni {
    pub name: V<String>,
    pub certificate: Option<V<String>>,
}

#[derive(Debug)]
pub struct RawCaCertificate {
    pub id: Option<V<String>>,
    pub name: Option<V<String>>,
    pub cert: Option<V<String>>,
    pub cert_file: Option<V<String>>,
    pub loc: Loc,
    pub path: String,
}

#[derive(Debug)]
pub struct RawService {
    pub id: Option<V<String>>,
    pub name: Option<V<String>>,
    pub url: Option<V<String>>,
    pub protocol: Option<V<String>>,
    pub host: Option<V<String>>,
    pub port: Option<V<i64>>,
    pub path: Option<V<String>>,
    pub retries: Option<i64>,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    pub tls_verify: Option<bool>,
    pub tls_verify_depth: Option<V<i64>>,
    pub ca_certificates: Vec<V<String>>,
    pub client_certificate: Option<V<String>>,
    pub tls_server_name: Option<V<String>>,
    pub enabled: bool,
    pub routes: Vec<RawRoute>,
    pub plugins: Vec<RawPlugin>,
    pub loc: Loc,
    pub path_str: String,
}

#[derive(Debug)]
pub struct RawRoute {
    pub id: Option<V<String>>,
    pub name: Option<V<String>>,
    pub service: Option<V<String>>,
    pub protocols: Vec<V<String>>,
    pub methods: Vec<V<String>>,
    pub hosts: Vec<V<String>>,
    pub paths: Vec<V<String>>,
    pub headers: Vec<(V<String>, Vec<V<String>>)>,
    pub snis: Vec<V<String>>,
    pub sources: Vec<RawNet>,
    pub destinations: Vec<RawNet>,
    pub strip_path: Option<bool>,
    pub preserve_host: Option<bool>,
    pub regex_priority: Option<i64>,
    pub https_redirect_status_code: Option<V<i64>>,
    pub plugins: Vec<RawPlugin>,
    pub loc: Loc,
    pub path: String,
}

/// One entry of a stream route's `sources` / `destinations`: `{ip: CIDR, port: N}`.
#[derive(Debug)]
pub struct RawNet {
    pub ip: Option<V<String>>,
    pub port: Option<V<i64>>,
    pub loc: Loc,
    pub path: String,
}

#[derive(Debug)]
pub struct RawPlugin {
    pub id: Option<V<String>>,
    pub name: V<String>,
    pub config: Option<Node>,
    pub enabled: bool,
    pub service: Option<V<String>>,
    pub route: Option<V<String>>,
    pub consumer: Option<V<String>>,
    pub protocols: Vec<V<String>>,
    pub loc: Loc,
    pub path: String,
}

#[derive(Debug)]
pub struct RawUpstream {
    pub id: Option<V<String>>,
    pub name: V<String>,
    pub algorithm: Option<V<String>>,
    pub hash_on: Option<V<String>>,
    pub hash_on_header: Option<V<String>>,
    pub host_header: Option<V<String>>,
    pub healthchecks: RawHealthchecks,
    pub targets: Vec<RawTarget>,
    pub loc: Loc,
    pub path: String,
}

#[derive(Debug, Default)]
pub struct RawHealthchecks {
    pub active_type: Option<V<String>>,
    pub active_http_path: Option<String>,
    pub active_timeout: Option<Duration>,
    pub active_https_verify_certificate: Option<bool>,
    pub active_https_sni: Option<String>,
    pub active_healthy_interval: Option<Duration>,
    pub active_healthy_successes: Option<i64>,
    pub active_healthy_http_statuses: Vec<i64>,
    pub active_unhealthy_interval: Option<Duration>,
    pub active_unhealthy_http_failures: Option<i64>,
    pub active_unhealthy_tcp_failures: Option<i64>,
    pub active_unhealthy_timeouts: Option<i64>,
    pub active_unhealthy_http_statuses: Vec<i64>,
    pub passive_healthy_successes: Option<i64>,
    pub passive_healthy_http_statuses: Vec<i64>,
    pub passive_unhealthy_http_failures: Option<i64>,
    pub passive_unhealthy_tcp_failures: Option<i64>,
    pub passive_unhealthy_timeouts: Option<i64>,
    pub passive_unhealthy_http_statuses: Vec<i64>,
    pub threshold: Option<i64>,
}

#[derive(Debug)]
pub struct RawTarget {
    pub id: Option<V<String>>,
    pub target: V<String>,
    pub weight: Option<i64>,
    pub upstream: Option<V<String>>,
    pub loc: Loc,
    pub path: String,
}

#[derive(Debug)]
pub struct RawConsumer {
    pub id: Option<V<String>>,
    pub username: Option<V<String>>,
    pub custom_id: Option<V<String>>,
    pub tags: Vec<String>,
    pub acls: Vec<RawAcl>,
    pub mtls_auth_credentials: Vec<RawCredential>,
    pub plugin_credentials: Vec<RawPluginCredential>,
    pub plugins: Vec<RawPlugin>,
    pub loc: Loc,
    pub path: String,
}

/// One entry of a plugin-declared credential collection, before its plugin's schema checks it.
#[derive(Debug)]
pub struct RawPluginCredential {
    pub collection: &'static str,
    pub id: Option<V<String>>,
    /// The `consumer` reference of a top-level entry.
    pub consumer: Option<V<String>>,
    pub tags: Vec<String>,
    /// The whole entry; `id`, `consumer`, `tags` and Kong's metadata are dropped before the
    /// plugin's validator sees it.
    pub node: Node,
    pub loc: Loc,
    pub path: String,
}

impl RawPluginCredential {
    /// The entry's own fields, as JSON for the plugin's validator.
    pub fn fields(&self) -> serde_json::Value {
        let mut v = self.node.to_json();
        if let serde_json::Value::Object(m) = &mut v {
            for meta in [
                "id",
                "consumer",
                "tags",
                "created_at",
                "updated_at",
                "ws_id",
                "_comment",
                "_ignore",
            ] {
                m.remove(meta);
            }
        }
        v
    }
}

#[derive(Debug)]
pub struct RawAcl {
    pub consumer: Option<V<String>>,
    pub group: V<String>,
}

#[derive(Debug)]
pub struct RawCredential {
    pub id: Option<V<String>>,
    pub consumer: Option<V<String>>,
    pub subject_name: V<String>,
    pub ca_certificate: Option<V<String>>,
}

// ---------------------------------------------------------------------------------------------
// Readers

/// Read one file's root mapping into `doc` (appending list entities).
pub fn read_root(root: &Node, doc: &mut RawDoc, registry: &api::Registry, d: &mut Diags) {
    let Some(mut o) = Obj::new(root, "", d) else {
        return;
    };
    let version_node = root.get("_format_version");
    if let Some(
        n @ Node {
            kind: Kind::Float(_) | Kind::Int(_),
            ..
        },
    ) = version_node
    {
        // Unquoted, YAML reads `3.0` as the number 3; Kong refuses it as well.
        o.field("_format_version");
        d.err(
            &n.loc,
            "_format_version",
            "expected a string: quote the version (`_format_version: \"3.0\"`), unquoted YAML reads it as a number",
        );
    } else if let Some(v) = o.str("_format_version", d) {
        if !kong::FORMAT_VERSIONS.contains(&v.v.as_str()) {
            d.err(
                &v.loc,
                "_format_version",
                format!(
                    "unsupported format version {:?} (Kong's declarative formats are \"1.1\", \"2.1\" and \"3.0\")",
                    v.v
                ),
            );
        }
        doc.format_version = Some(v);
    }
    for key in ["_transform", "_workspace"] {
        if let Some((n, p)) = o.field(key) {
            d.warn(
                &n.loc,
                &p,
                "Kong field accepted but has no effect in Portcullis",
            );
        }
    }
    for key in ["_info", "_konnect"] {
        if o.field(key).is_some() {
            d.warn(
                &o.key_loc(key),
                key,
                format!(
                    "`{key}` is decK metadata (for decK and Konnect, not for the gateway); ignored"
                ),
            );
        }
    }
    if let Some((n, p)) = o.field("parameters") {
        // `kong config db_export` writes Kong's own `parameters` rows (cluster_id, ...).
        list(n, &p, d);
        d.warn(
            &o.key_loc("parameters"),
            "parameters",
            "`parameters` is Kong's internal table (cluster_id, ...) written by `kong config db_export`; ignored",
        );
    }
    if let Some((n, p)) = o.field("listeners") {
        doc.sections.push(("listeners", o.key_loc("listeners")));
        doc.listeners = read_listeners(n, &p, d);
    }
    if let Some((n, p)) = o.field("tls") {
        doc.sections.push(("tls", o.key_loc("tls")));
        if let Some(mut t) = Obj::new(n, &p, d) {
            let groups = t.has("groups").then(|| t.key_loc("groups"));
            doc.tls = Some(RawTls {
                default_certificate: t.reference("default_certificate", d),
                groups: groups.map(|loc| (loc, t.str_list("groups", d))),
            });
            t.finish(d);
        }
    }
    if let Some((n, p)) = o.field("server") {
        doc.sections.push(("server", o.key_loc("server")));
        doc.server = read_server(n, &p, d);
    }
    doc.certificates
        .extend(o.objs("certificates", d, read_certificate));
    doc.ca_certificates
        .extend(o.objs("ca_certificates", d, read_ca_certificate));
    doc.services.extend(o.objs("services", d, read_service));
    let routes = o.objs("routes", d, |r, d| read_route(r, d, true));
    doc.routes.extend(routes);
    doc.upstreams.extend(o.objs("upstreams", d, read_upstream));
    let targets = o.objs("targets", d, |t, d| read_target(t, d, true));
    doc.targets.extend(targets);
    doc.consumers
        .extend(o.objs("consumers", d, |o, d| read_consumer(o, registry, d)));
    let plugins = o.objs("plugins", d, |p, d| read_plugin(p, d, true));
    doc.plugins.extend(plugins);
    let acls = o.objs("acls", d, |a, d| read_acl(a, d, true));
    doc.acls.extend(acls);
    let creds = o.objs("mtls_auth_credentials", d, |c, d| {
        read_credential(c, d, true)
    });
    doc.mtls_auth_credentials.extend(creds);
    let snis = o.objs("snis", d, |mut s, d| {
        let name = s.str("name", d);
        let name = required(&s, "name", name, d);
        let certificate = s.reference("certificate", d);
        s.str("id", d);
        s.str_list("tags", d);
        s.kong_annotations(d);
        s.finish(d);
        Some(RawSni {
            name: name?,
            certificate,
        })
    });
    doc.snis.extend(snis);
    let creds = o.plugin_credentials(d, true, registry);
    doc.plugin_credentials.extend(creds);
    let version = doc.format_version.as_ref().map(|v| v.v.clone());
    if let Some(v @ ("1.1" | "2.1")) = version.as_deref() {
        migrate_2x_paths(doc, v, d);
    }
    o.kong_annotations(d);
    o.unclaimed_credentials(d);
    o.finish(d);
}

/// Kong 3.x's load-time migration of a 1.1/2.1 file: a route path that 2.x treated as a regex
/// (it looks like one and has no `~`) gets the `~` prefix. Each migrated path is named, so the
/// operator can write it in the 3.0 form.
fn migrate_2x_paths(doc: &mut RawDoc, version: &str, d: &mut Diags) {
    let nested = doc.services.iter_mut().flat_map(|s| s.routes.iter_mut());
    for route in nested.chain(doc.routes.iter_mut()) {
        for p in &mut route.paths {
            if let Some(migrated) = kong::migrate_2x_path(&p.v) {
                d.warn(
                    &p.loc,
                    &p.path,
                    format!(
                        "path `{}` is a regex in _format_version \"{version}\"; read as `{migrated}`, as Kong 3.x migrates it (write it so, with _format_version \"3.0\", to silence this)",
                        p.v
                    ),
                );
                p.v = migrated;
            }
        }
    }
}

fn required(o: &Obj<'_>, field: &str, v: Option<V<String>>, d: &mut Diags) -> Option<V<String>> {
    if v.is_none() && !o.has(field) {
        d.err(
            o.loc(),
            &o.path,
            format!("missing required field `{field}`"),
        );
    }
    v
}

fn read_listeners(n: &Node, p: &str, d: &mut Diags) -> Option<RawListeners> {
    let mut o = Obj::new(n, p, d)?;
    let proxy = o.field("proxy").map(|(n, p)| {
        list(n, &p, d)
            .into_iter()
            .filter_map(|(item, ip)| {
                let mut l = Obj::new(item, &ip, d)?;
                let address = l.str("address", d);
                let address = required(&l, "address", address, d)?;
                let tls = l.bool("tls", d).unwrap_or(false);
                let http2 = l.bool("http2", d);
                let max_connections = l.int("max_connections", 1, 10_000_000, d).map(|v| v.v);
                let client_header_timeout = l.duration("client_header_timeout", 1000, d);
                let tls_handshake_timeout = l.duration("tls_handshake_timeout", 1000, d);
                l.finish(d);
                Some(RawProxyListener {
                    address,
                    tls,
                    http2,
                    max_connections,
                    client_header_timeout,
                    tls_handshake_timeout,
                })
            })
            .collect()
    });
    let stream = o.field("stream").map(|(n, p)| {
        list(n, &p, d)
            .into_iter()
            .filter_map(|(item, ip)| {
                let mut l = Obj::new(item, &ip, d)?;
                let address = l.str("address", d);
                let address = required(&l, "address", address, d)?;
                let tls = l.bool("tls", d);
                let client_hello_timeout = l.duration("client_hello_timeout", 1000, d);
                let idle_timeout = l.duration("idle_timeout", 1000, d);
                let max_connections = l.int("max_connections", 1, 10_000_000, d).map(|v| v.v);
                let max_connections_per_client = l
                    .int("max_connections_per_client", 1, 10_000_000, d)
                    .map(|v| v.v);
                l.finish(d);
                Some(RawStreamListener {
                    address,
                    tls,
                    client_hello_timeout,
                    idle_timeout,
                    max_connections,
                    max_connections_per_client,
                })
            })
            .collect()
    });
    let status = o.field("status").and_then(|(n, p)| {
        let mut s = Obj::new(n, &p, d)?;
        let a = s.str("address", d);
        let a = required(&s, "address", a, d);
        s.finish(d);
        a
    });
    o.finish(d);
    Some(RawListeners {
        proxy,
        stream,
        status,
    })
}

fn read_server(n: &Node, p: &str, d: &mut Diags) -> Option<RawServer> {
    let mut o = Obj::new(n, p, d)?;
    let s = RawServer {
        threads: o.int("threads", 1, 1024, d).map(|v| v.v),
        graceful_shutdown_seconds: o
            .int("graceful_shutdown_seconds", 0, 86_400, d)
            .map(|v| v.v),
        runtime_shutdown_seconds: o.int("runtime_shutdown_seconds", 0, 3_600, d).map(|v| v.v),
        upgrade_sock: o.str("upgrade_sock", d).map(|v| v.v),
        pid_file: o.str("pid_file", d).map(|v| v.v),
        status_details: o.bool("status_details", d),
        trusted_proxies: o.str_list("trusted_proxies", d),
        log_level: o.str("log_level", d).map(|v| v.v),
        log_format: o.str("log_format", d),
        dns_refresh_interval: o.duration("dns_refresh_interval", 1000, d),
    };
    o.finish(d);
    Some(s)
}

fn read_certificate(mut o: Obj<'_>, d: &mut Diags) -> Option<RawCertificate> {
    let snis = match o.field("snis") {
        Some((n, p)) => list(n, &p, d)
            .into_iter()
            .filter_map(|(item, ip)| match &item.kind {
                Kind::Map(_) => {
                    let mut s = Obj::new(item, &ip, d)?;
                    let name = s.str("name", d);
                    s.str("id", d);
                    s.str_list("tags", d);
                    let name = required(&s, "name", name, d);
                    s.kong_annotations(d);
                    s.finish_known(d, &["certificate"]);
                    name
                }
                _ => as_string(item, &ip, d),
            })
            .collect(),
        None => Vec::new(),
    };
    let c = RawCertificate {
        id: o.str("id", d),
        name: o.str("name", d),
        cert: o.str("cert", d),
        cert_file: o.str("cert_file", d),
        key: o.str("key", d),
        key_file: o.str("key_file", d),
        snis,
        loc: o.loc().clone(),
        path: o.path.clone(),
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(c)
}

fn read_ca_certificate(mut o: Obj<'_>, d: &mut Diags) -> Option<RawCaCertificate> {
    let c = RawCaCertificate {
        id: o.str("id", d),
        name: o.str("name", d),
        cert: o.str("cert", d),
        cert_file: o.str("cert_file", d),
        loc: o.loc().clone(),
        path: o.path.clone(),
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(c)
}

fn read_service(mut o: Obj<'_>, d: &mut Diags) -> Option<RawService> {
    let s = RawService {
        id: o.str("id", d),
        name: o.str("name", d),
        url: o.str("url", d),
        protocol: o.str("protocol", d),
        host: o.str("host", d),
        port: o.int("port", 0, 65535, d),
        path: o.str("path", d),
        retries: o.int("retries", 0, 32767, d).map(|v| v.v),
        connect_timeout: o.duration("connect_timeout", 1, d),
        read_timeout: o.duration("read_timeout", 1, d),
        write_timeout: o.duration("write_timeout", 1, d),
        tls_verify: o.bool("tls_verify", d),
        tls_verify_depth: o.int("tls_verify_depth", 0, 64, d),
        ca_certificates: o.str_list("ca_certificates", d),
        client_certificate: o.reference("client_certificate", d),
        tls_server_name: o.str("tls_server_name", d),
        enabled: o.bool("enabled", d).unwrap_or(true),
        routes: o.objs("routes", d, |r, d| read_route(r, d, false)),
        plugins: o.objs("plugins", d, |p, d| read_plugin(p, d, false)),
        loc: o.loc().clone(),
        path_str: o.path.clone(),
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(s)
}

fn read_route(mut o: Obj<'_>, d: &mut Diags, top_level: bool) -> Option<RawRoute> {
    let headers = match o.field("headers") {
        Some((n, p)) => match &n.kind {
            Kind::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| {
                    let kp = format!("{p}.{}", k.as_str().unwrap_or("?"));
                    let name = as_string(k, &kp, d)?;
                    let values = match &v.kind {
                        Kind::Seq(_) => list(v, &kp, d)
                            .into_iter()
                            .filter_map(|(i, ip)| as_string(i, &ip, d))
                            .collect(),
                        _ => as_string(v, &kp, d).into_iter().collect(),
                    };
                    Some((name, values))
                })
                .collect(),
            _ => {
                d.err(
                    &n.loc,
                    &p,
                    "expected a mapping of header name to values".to_string(),
                );
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let service = if top_level {
        o.reference("service", d)
    } else {
        None
    };
    let r = RawRoute {
        id: o.str("id", d),
        name: o.str("name", d),
        service,
        protocols: o.str_list("protocols", d),
        methods: o.str_list("methods", d),
        hosts: o.str_list("hosts", d),
        paths: o.str_list("paths", d),
        headers,
        snis: o.str_list("snis", d),
        sources: read_nets(&mut o, "sources", d),
        destinations: read_nets(&mut o, "destinations", d),
        strip_path: o.bool("strip_path", d),
        preserve_host: o.bool("preserve_host", d),
        regex_priority: o
            .int("regex_priority", -1_000_000, 1_000_000, d)
            .map(|v| v.v),
        https_redirect_status_code: o.int("https_redirect_status_code", 300, 499, d),
        plugins: o.objs("plugins", d, |p, d| read_plugin(p, d, false)),
        loc: o.loc().clone(),
        path: o.path.clone(),
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(r)
}

fn read_nets<'a>(o: &mut Obj<'a>, key: &'a str, d: &mut Diags) -> Vec<RawNet> {
    o.objs(key, d, |mut n, d| {
        let net = RawNet {
            ip: n.str("ip", d),
            port: n.int("port", 0, 65535, d),
            loc: n.loc().clone(),
            path: n.path.clone(),
        };
        n.finish(d);
        Some(net)
    })
}

fn read_plugin(mut o: Obj<'_>, d: &mut Diags, top_level: bool) -> Option<RawPlugin> {
    let name = o.str("name", d);
    let name = required(&o, "name", name, d);
    let (service, route, consumer) = if top_level {
        (
            o.reference("service", d),
            o.reference("route", d),
            o.reference("consumer", d),
        )
    } else {
        (None, None, None)
    };
    let p = RawPlugin {
        id: o.str("id", d),
        config: o.field("config").map(|(n, _)| n.clone()),
        enabled: o.bool("enabled", d).unwrap_or(true),
        service,
        route,
        consumer,
        protocols: o.str_list("protocols", d),
        loc: o.loc().clone(),
        path: o.path.clone(),
        name: name?,
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(p)
}

fn read_upstream(mut o: Obj<'_>, d: &mut Diags) -> Option<RawUpstream> {
    let name = o.str("name", d);
    let name = required(&o, "name", name, d);
    let healthchecks = match o.field("healthchecks") {
        Some((n, p)) => read_healthchecks(n, &p, d),
        None => RawHealthchecks::default(),
    };
    let u = RawUpstream {
        id: o.str("id", d),
        algorithm: o.str("algorithm", d),
        hash_on: o.str("hash_on", d),
        hash_on_header: o.str("hash_on_header", d),
        host_header: o.str("host_header", d),
        healthchecks,
        targets: o.objs("targets", d, |t, d| read_target(t, d, false)),
        loc: o.loc().clone(),
        path: o.path.clone(),
        name: name?,
    };
    o.reference("client_certificate", d);
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(u)
}

fn statuses(o: &mut Obj<'_>, key: &'static str, d: &mut Diags) -> Vec<i64> {
    match o.field(key) {
        Some((n, p)) => list(n, &p, d)
            .into_iter()
            .filter_map(|(i, ip)| as_int(i, &ip, 100, 999, d).map(|v| v.v))
            .collect(),
        None => Vec::new(),
    }
}

fn read_healthchecks(n: &Node, p: &str, d: &mut Diags) -> RawHealthchecks {
    let mut h = RawHealthchecks::default();
    let Some(mut o) = Obj::new(n, p, d) else {
        return h;
    };
    h.threshold = o.int("threshold", 0, 100, d).map(|v| v.v);
    if let Some((an, ap)) = o.field("active") {
        if let Some(mut a) = Obj::new(an, &ap, d) {
            h.active_type = a.str("type", d);
            h.active_http_path = a.str("http_path", d).map(|v| v.v);
            h.active_timeout = a.duration("timeout", 1000, d);
            h.active_https_verify_certificate = a.bool("https_verify_certificate", d);
            h.active_https_sni = a.str("https_sni", d).map(|v| v.v);
            a.int("concurrency", 1, 65536, d);
            // SPEC §3 lists `interval` directly under `active`; Kong has one per state. Both
            // spellings are accepted: `active.interval` is the default for either state.
            let interval = a.duration("interval", 1000, d);
            if let Some((hn, hp)) = a.field("healthy") {
                if let Some(mut x) = Obj::new(hn, &hp, d) {
                    h.active_healthy_interval = x.duration("interval", 1000, d);
                    h.active_healthy_successes = x.int("successes", 0, 255, d).map(|v| v.v);
                    h.active_healthy_http_statuses = statuses(&mut x, "http_statuses", d);
                    x.finish(d);
                }
            }
            if let Some((un, up)) = a.field("unhealthy") {
                if let Some(mut x) = Obj::new(un, &up, d) {
                    h.active_unhealthy_interval = x.duration("interval", 1000, d);
                    h.active_unhealthy_http_failures =
                        x.int("http_failures", 0, 255, d).map(|v| v.v);
                    h.active_unhealthy_tcp_failures = x.int("tcp_failures", 0, 255, d).map(|v| v.v);
                    h.active_unhealthy_timeouts = x.int("timeouts", 0, 255, d).map(|v| v.v);
                    h.active_unhealthy_http_statuses = statuses(&mut x, "http_statuses", d);
                    x.finish(d);
                }
            }
            h.active_healthy_interval = h.active_healthy_interval.or(interval);
            h.active_unhealthy_interval = h.active_unhealthy_interval.or(interval);
            a.finish_known(d, &["headers"]);
        }
    }
    if let Some((pn, pp)) = o.field("passive") {
        if let Some(mut a) = Obj::new(pn, &pp, d) {
            a.str("type", d);
            if let Some((hn, hp)) = a.field("healthy") {
                if let Some(mut x) = Obj::new(hn, &hp, d) {
                    h.passive_healthy_successes = x.int("successes", 0, 255, d).map(|v| v.v);
                    h.passive_healthy_http_statuses = statuses(&mut x, "http_statuses", d);
                    x.finish(d);
                }
            }
            if let Some((un, up)) = a.field("unhealthy") {
                if let Some(mut x) = Obj::new(un, &up, d) {
                    h.passive_unhealthy_http_failures =
                        x.int("http_failures", 0, 255, d).map(|v| v.v);
                    h.passive_unhealthy_tcp_failures =
                        x.int("tcp_failures", 0, 255, d).map(|v| v.v);
                    h.passive_unhealthy_timeouts = x.int("timeouts", 0, 255, d).map(|v| v.v);
                    h.passive_unhealthy_http_statuses = statuses(&mut x, "http_statuses", d);
                    x.finish(d);
                }
            }
            a.finish(d);
        }
    }
    o.finish(d);
    h
}

fn read_target(mut o: Obj<'_>, d: &mut Diags, top_level: bool) -> Option<RawTarget> {
    let target = o.str("target", d);
    let target = required(&o, "target", target, d);
    let upstream = if top_level {
        o.reference("upstream", d)
    } else {
        None
    };
    let t = RawTarget {
        id: o.str("id", d),
        weight: o.int("weight", 0, 65535, d).map(|v| v.v),
        upstream,
        loc: o.loc().clone(),
        path: o.path.clone(),
        target: target?,
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(t)
}

fn read_consumer(mut o: Obj<'_>, registry: &api::Registry, d: &mut Diags) -> Option<RawConsumer> {
    let c = RawConsumer {
        id: o.str("id", d),
        username: o.str("username", d),
        custom_id: o.str("custom_id", d),
        tags: o.str_list("tags", d).into_iter().map(|v| v.v).collect(),
        acls: o.objs("acls", d, |a, d| read_acl(a, d, false)),
        mtls_auth_credentials: o.objs("mtls_auth_credentials", d, |c, d| {
            read_credential(c, d, false)
        }),
        plugins: o.objs("plugins", d, |p, d| read_plugin(p, d, false)),
        plugin_credentials: Vec::new(),
        loc: o.loc().clone(),
        path: o.path.clone(),
    };
    let mut c = c;
    c.plugin_credentials = o.plugin_credentials(d, false, registry);
    if c.username.is_none() && c.custom_id.is_none() {
        d.err(
            &c.loc,
            &c.path,
            "a consumer needs `username` or `custom_id`",
        );
    }
    o.kong_annotations(d);
    o.unclaimed_credentials(d);
    o.finish(d);
    Some(c)
}

fn read_acl(mut o: Obj<'_>, d: &mut Diags, top_level: bool) -> Option<RawAcl> {
    let group = o.str("group", d);
    let group = required(&o, "group", group, d);
    let consumer = if top_level {
        let c = o.reference("consumer", d);
        if c.is_none() {
            d.err(o.loc(), &o.path, "missing required field `consumer`");
        }
        c
    } else {
        None
    };
    o.str("id", d);
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(RawAcl {
        consumer,
        group: group?,
    })
}

fn read_credential(mut o: Obj<'_>, d: &mut Diags, top_level: bool) -> Option<RawCredential> {
    let subject_name = o.str("subject_name", d);
    let subject_name = required(&o, "subject_name", subject_name, d);
    let consumer = if top_level {
        let c = o.reference("consumer", d);
        if c.is_none() {
            d.err(o.loc(), &o.path, "missing required field `consumer`");
        }
        c
    } else {
        None
    };
    let c = RawCredential {
        id: o.str("id", d),
        consumer,
        ca_certificate: o.reference("ca_certificate", d),
        subject_name: subject_name?,
    };
    o.str_list("tags", d);
    o.kong_annotations(d);
    o.finish(d);
    Some(c)
}

impl Diag {
    pub fn at(loc: &Loc, path: &str, message: impl Into<String>) -> Diag {
        Diag {
            loc: loc.clone(),
            path: path.to_string(),
            message: message.into(),
            warning: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml;
    use std::sync::Arc;

    fn read(text: &str) -> (RawDoc, Diags) {
        let f: Arc<str> = Arc::from("conf/gateway.yaml");
        let node = yaml::parse(&f, text).expect("yaml");
        let mut doc = RawDoc::default();
        let mut d = Diags::default();
        read_root(&node, &mut doc, crate::plugin::registry(), &mut d);
        (doc, d)
    }

    #[test]
    fn unknown_field_has_location_and_hint() {
        let (_, d) = read("services:\n  - name: a\n    url: http://x\n    retires: 3\n");
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        let e = d.errors[0].to_string();
        assert!(
            e.starts_with("conf/gateway.yaml:4:5: services[0].retires: unknown field `retires`"),
            "{e}"
        );
        assert!(e.contains("did you mean `retries`"), "{e}");
    }

    #[test]
    fn kong_no_effect_fields_warn() {
        let (_, d) = read("services:\n  - name: a\n    url: http://x\n    routes:\n      - paths: [/]\n        path_handling: v0\n");
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0]
            .to_string()
            .starts_with("conf/gateway.yaml:6:9: services[0].routes[0].path_handling"));
    }

    #[test]
    fn kong_format_versions_are_accepted_and_others_located() {
        for v in ["1.1", "2.1", "3.0"] {
            let (_, d) = read(&format!("_format_version: \"{v}\"\nservices: []\n"));
            assert!(d.errors.is_empty(), "{v}: {:?}", d.errors);
        }
        let (_, d) = read("services: []\n_format_version: \"4.0\"\n");
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert!(
            d.errors[0].to_string().starts_with(
                "conf/gateway.yaml:2:18: _format_version: unsupported format version \"4.0\""
            ),
            "{}",
            d.errors[0]
        );
    }

    #[test]
    fn an_unquoted_format_version_says_to_quote_it() {
        let (_, d) = read("_format_version: 3.0\n");
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        assert!(
            d.errors[0].to_string().starts_with(
                "conf/gateway.yaml:1:18: _format_version: expected a string: quote the version"
            ),
            "{}",
            d.errors[0]
        );
    }

    #[test]
    fn format_2x_regex_paths_migrate_nested_and_top_level_with_a_located_warning() {
        let yaml = "_format_version: \"2.1\"\nservices:\n- name: a\n  url: http://x\n  routes:\n  - paths: ['/users/\\d+', /plain]\nroutes:\n- service: a\n  paths: ['/(a|b)$']\n";
        let (doc, d) = read(yaml);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let nested: Vec<&str> = doc.services[0].routes[0]
            .paths
            .iter()
            .map(|p| p.v.as_str())
            .collect();
        assert_eq!(nested, ["~/users/\\d+", "/plain"]);
        assert_eq!(doc.routes[0].paths[0].v, "~/(a|b)$");
        let w: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].starts_with("conf/gateway.yaml:6:13: services[0].routes[0].paths[0]: warning: path `/users/\\d+` is a regex in _format_version \"2.1\"; read as `~/users/\\d+`"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with("conf/gateway.yaml:9:11: routes[0].paths[0]: "),
            "{}",
            w[1]
        );

        // 3.0 files are read as written: a path without `~` is a prefix.
        let (doc, d) =
            read("_format_version: \"3.0\"\nroutes:\n- service: a\n  paths: ['/(a|b)$']\n");
        assert_eq!(doc.routes[0].paths[0].v, "/(a|b)$");
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn comment_and_ignore_accepted_on_every_entity_silently() {
        let yaml = r#"_comment: file
_ignore: [x]
certificates:
- cert: x
  key: z
  _comment: c
  snis:
  - name: a.example
    _comment: s
ca_certificates:
- cert: x
  _ignore: []
services:
- name: a
  url: http://x
  _comment: s
  _ignore: [1, {k: v}]
  routes:
  - paths: [/]
    _comment: r
  plugins:
  - name: acl
    _comment: p
upstreams:
- name: u
  _comment: u
  targets:
  - target: a:1
    _comment: t
consumers:
- username: c
  _comment: c
  acls:
  - group: g
    _comment: a
  mtls_auth_credentials:
  - subject_name: x
    _ignore: [a]
snis:
- name: b.example
  certificate: x
  _comment: s
"#;
        let (_, d) = read(yaml);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        let (_, d) = read("services:\n- name: a\n  url: http://x\n  _comment: [not, a, string]\n");
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    }

    #[test]
    fn deck_and_db_export_metadata_warn() {
        let (_, d) = read(
            "_info:\n  select_tags: [a]\n_konnect:\n  control_plane_name: cp\nparameters:\n- key: cluster_id\n  value: abc\n",
        );
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        let w: Vec<String> = d.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w[0].starts_with("conf/gateway.yaml:1:1: _info: warning: `_info` is decK metadata"),
            "{}",
            w[0]
        );
        assert!(
            w[1].starts_with(
                "conf/gateway.yaml:3:1: _konnect: warning: `_konnect` is decK metadata"
            ),
            "{}",
            w[1]
        );
        assert!(
            w[2].starts_with("conf/gateway.yaml:5:1: parameters: warning: "),
            "{}",
            w[2]
        );
    }

    #[test]
    fn credentials_of_kong_plugins_not_provided_say_whose_they_are() {
        let (_, d) = read(
            "consumers:\n- username: a\n  oauth2_credentials:\n  - client_id: x\noauth2_tokens:\n- access_token: k\n  consumer: a\n",
        );
        let e: Vec<String> = d.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e.iter().any(|l| l.starts_with("conf/gateway.yaml:3:3: consumers[0].oauth2_credentials: `oauth2_credentials` are credentials of the Kong plugin `oauth2`, which Portcullis does not provide")), "{e:#?}");
        assert!(e.iter().any(|l| l.starts_with("conf/gateway.yaml:5:1: oauth2_tokens: `oauth2_tokens` are credentials of the Kong plugin `oauth2`")), "{e:#?}");
        assert!(!e.iter().any(|l| l.contains("did you mean")), "{e:#?}");
    }

    #[test]
    fn collects_every_error() {
        let (_, d) = read(
            "services:\n  - name: a\n    port: 99999\n    tls_verify: maybe\nroutes:\n  - foo: 1\n",
        );
        assert_eq!(d.errors.len(), 3, "{:?}", d.errors);
    }
}
