//! The HTTP router: compiled once per configuration into an immutable table shared by `Arc`.
//!
//! Each (route, path) pair is an entry; entries are sorted once by Kong's priority rules, and
//! requests only visit the entries whose host could match (exact host map, wildcard suffix and
//! prefix maps) or, for host-less entries, whose prefix path could match (a byte trie of the
//! prefixes; regex and path-less entries are listed apart), merged in priority order without
//! allocating.

use crate::config::model::{PathSpec, Route};
use crate::names::{self, NameUse};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

mod path;
pub use path::{normalize_path, upstream_path, BadPath};

/// What the router needs to know about a request. All borrowed: matching allocates nothing.
pub struct RequestInfo<'a> {
    /// Host header (or :authority), possibly with a port.
    pub host: &'a str,
    pub path: &'a str,
    pub method: &'a str,
    pub tls: bool,
    pub sni: Option<&'a str>,
    /// Looks up a request header value by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum HeaderValue {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct Entry {
    route: Arc<Route>,
    path: PathMatch,
    headers: Vec<(String, Vec<HeaderValue>)>,
    /// Lower-case SNIs (`*.x`, `x.*`) this route is limited to on TLS connections.
    snis: Vec<String>,
    methods: Vec<String>,
    /// The route limits hosts; host filtering already happened through the indexes.
    has_hosts: bool,
    /// `protocols` has `http` or `grpc`: plain requests may match.
    plain: bool,
    /// `protocols` has `https` or `grpcs`: requests over TLS may match.
    secure: bool,
    /// Which of the route's `paths` this entry is (`None` for a path-less route).
    path_index: Option<usize>,
}

/// A route and how much of the path it matched.
#[derive(Debug, Clone)]
pub struct Match {
    pub route: Arc<Route>,
    /// Bytes at the start of the path matched by the route's path (what `strip_path` removes).
    pub matched_len: usize,
    /// Index of the matching entry in the route's `paths` (to recover regex captures).
    pub path_index: Option<usize>,
}

/// The outcome of routing one request.
#[derive(Debug, Clone)]
pub enum Routed {
    /// The best route that accepts the request's protocol.
    Route(Match),
    /// A plain request that no route accepting plain HTTP matches, while this https-only route
    /// (the best of them) would match over TLS: answer its 426 or redirect, never proxy.
    UseHttps(Match),
    NoRoute,
}

#[derive(Debug, Default)]
pub struct Router {
    entries: Vec<Entry>,
    /// Exact host (without port unless the route gave one) → entry indices, ascending.
    exact_hosts: HashMap<String, Vec<u32>>,
    /// `*.example.com` stored as `example.com`.
    suffix_hosts: HashMap<String, Vec<u32>>,
    /// `example.*` stored as `example`.
    prefix_hosts: HashMap<String, Vec<u32>>,
    /// Host-less entries with a prefix path, by that prefix.
    hostless_prefixes: PrefixTrie,
    /// Every host-less prefix-path entry, for a request whose path crosses more configured
    /// prefixes than the merge takes lists.
    hostless_prefix_all: Vec<u32>,
    /// Host-less entries with a regex path or no path.
    hostless_other: Vec<u32>,
}

/// Entry indices by prefix path, one byte per edge: a request path visits only the nodes of its
/// own prefixes, however many routes there are.
#[derive(Debug)]
struct PrefixTrie {
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
    /// Entries whose prefix ends here, ascending.
    entries: Vec<u32>,
}

impl Default for PrefixTrie {
    fn default() -> Self {
        PrefixTrie {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PrefixTrie {
    fn insert(&mut self, prefix: &[u8], entry: u32) {
        let mut at = 0usize;
        for &b in prefix {
            let next = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1,
                Err(i) => {
                    let id = self.nodes.len() as u32;
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.insert(i, (b, id));
                    id
                }
            };
            at = next as usize;
        }
        self.nodes[at].entries.push(entry);
    }

    /// Calls `f` with the entries of every configured prefix of `path`, shortest first, until
    /// it returns false.
    fn each_prefix_of<'a>(&'a self, path: &[u8], mut f: impl FnMut(&'a [u32]) -> bool) {
        let mut node = &self.nodes[0];
        if !node.entries.is_empty() && !f(&node.entries) {
            return;
        }
        for &b in path {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                Err(_) => return,
            }
            if !node.entries.is_empty() && !f(&node.entries) {
                return;
            }
        }
    }
}

fn categories(r: &Route) -> u32 {
    u32::from(!r.hosts.is_empty())
        + u32::from(!r.paths.is_empty())
        + u32::from(!r.methods.is_empty())
        + u32::from(!r.headers.is_empty())
        + u32::from(!r.snis.is_empty())
}

impl Router {
    pub fn new(routes: &[Arc<Route>]) -> Router {
        struct Keyed {
            entry: Entry,
            key: (u32, usize, bool, u8, i64, usize, usize),
        }
        let mut keyed = Vec::new();
        for r in routes {
            let headers: Vec<(String, Vec<HeaderValue>)> = r
                .headers
                .iter()
                .map(|(n, vals)| {
                    let vals = vals
                        .iter()
                        .filter_map(|v| match v.strip_prefix("~*") {
                            // Validation compiled these already; a failure here cannot happen.
                            Some(re) => Regex::new(&format!("(?i){re}"))
                                .ok()
                                .map(HeaderValue::Regex),
                            None => Some(HeaderValue::Exact(v.to_ascii_lowercase())),
                        })
                        .collect();
                    (n.clone(), vals)
                })
                .collect();
            let plain_hosts = !r.hosts.is_empty() && r.hosts.iter().all(|h| !h.contains('*'));
            let paths: Vec<PathMatch> = if r.paths.is_empty() {
                vec![PathMatch::Any]
            } else {
                r.paths
                    .iter()
                    .map(|p| match p {
                        PathSpec::Prefix(s) => PathMatch::Prefix(s.clone()),
                        PathSpec::Regex { re, .. } => PathMatch::Regex(re.clone()),
                    })
                    .collect()
            };
            for (i, path) in paths.into_iter().enumerate() {
                let path_index = (!r.paths.is_empty()).then_some(i);
                // Sort key, ascending: more attribute categories first, more headers first,
                // plain hosts before wildcards, regex paths (by regex_priority) before prefix
                // paths (longest first), then configuration order.
                let (kind, regex_prio, prefix_len) = match &path {
                    PathMatch::Regex(_) => (0u8, r.regex_priority, 0usize),
                    PathMatch::Prefix(p) => (1, 0, p.len()),
                    PathMatch::Any => (2, 0, 0),
                };
                let key = (
                    u32::MAX - categories(r),
                    usize::MAX - r.headers.len(),
                    !plain_hosts,
                    kind,
                    -regex_prio,
                    usize::MAX - prefix_len,
                    r.order,
                );
                keyed.push(Keyed {
                    entry: Entry {
                        route: r.clone(),
                        path,
                        headers: headers
                            .iter()
                            .map(|(n, v)| {
                                (
                                    n.clone(),
                                    v.iter()
                                        .map(|x| match x {
                                            HeaderValue::Exact(s) => HeaderValue::Exact(s.clone()),
                                            HeaderValue::Regex(re) => {
                                                HeaderValue::Regex(re.clone())
                                            }
                                        })
                                        .collect(),
                                )
                            })
                            .collect(),
                        snis: r.snis.clone(),
                        methods: r.methods.clone(),
                        has_hosts: !r.hosts.is_empty(),
                        plain: r.protocols.http || r.protocols.grpc,
                        secure: r.protocols.https || r.protocols.grpcs,
                        path_index,
                    },
                    key,
                });
            }
        }
        keyed.sort_by_key(|k| k.key);
        let mut router = Router::default();
        for (i, k) in keyed.into_iter().enumerate() {
            let idx = i as u32;
            let r = k.entry.route.clone();
            if r.hosts.is_empty() {
                match &k.entry.path {
                    PathMatch::Prefix(p) => {
                        router.hostless_prefixes.insert(p.as_bytes(), idx);
                        router.hostless_prefix_all.push(idx);
                    }
                    PathMatch::Regex(_) | PathMatch::Any => router.hostless_other.push(idx),
                }
            }
            for h in &r.hosts {
                if let Some(s) = h.strip_prefix("*.") {
                    router
                        .suffix_hosts
                        .entry(s.to_string())
                        .or_default()
                        .push(idx);
                } else if let Some(p) = h.strip_suffix(".*") {
                    router
                        .prefix_hosts
                        .entry(p.to_string())
                        .or_default()
                        .push(idx);
                } else {
                    router.exact_hosts.entry(h.clone()).or_default().push(idx);
                }
            }
            router.entries.push(k.entry);
        }
        for v in router
            .exact_hosts
            .values_mut()
            .chain(router.suffix_hosts.values_mut())
            .chain(router.prefix_hosts.values_mut())
        {
            v.dedup();
        }
        router
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best route accepting the request's protocol, by Kong's priority.
    pub fn route(&self, req: &RequestInfo<'_>) -> Option<Match> {
        match self.find(req) {
            Routed::Route(m) => Some(m),
            Routed::UseHttps(_) | Routed::NoRoute => None,
        }
    }

    /// Routes a request. `protocols` is a match criterion (SPEC §3): a request over TLS only
    /// matches routes with `https`/`grpcs`, a plain one only routes with `http`/`grpc`. One pass
    /// over the candidates also notes the best https-only route a plain request would have
    /// matched, for the 426 answer when nothing accepts it as it is.
    pub fn find(&self, req: &RequestInfo<'_>) -> Routed {
        // Host without port, lower-cased on the stack when needed.
        let raw_host = req.host;
        let host_no_port = match raw_host.rfind(':') {
            Some(i)
                if !raw_host.ends_with(']')
                    && raw_host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                &raw_host[..i]
            }
            _ => raw_host,
        };
        // Normalised as `names::normalize` does, on the stack: no trailing dot, lower case.
        let host_no_port = host_no_port.strip_suffix('.').unwrap_or(host_no_port);
        let mut buf = [0u8; 256];
        let host: &str = if host_no_port.bytes().any(|b| b.is_ascii_uppercase())
            && host_no_port.len() <= buf.len()
        {
            let n = host_no_port.len();
            buf[..n].copy_from_slice(host_no_port.as_bytes());
            buf[..n].make_ascii_lowercase();
            std::str::from_utf8(&buf[..n]).unwrap_or(host_no_port)
        } else {
            host_no_port
        };

        // Candidate lists, each ascending in priority order; at most a few per request.
        let mut lists: [&[u32]; 32] = [&[]; 32];
        let mut n = 0;
        fn push<'a>(l: &'a [u32], lists: &mut [&'a [u32]; 32], n: &mut usize) {
            if !l.is_empty() && *n < lists.len() {
                lists[*n] = l;
                *n += 1;
            }
        }
        if !host.is_empty() {
            if let Some(l) = self.exact_hosts.get(host) {
                push(l, &mut lists, &mut n);
            }
            if host.len() != raw_host.len() {
                // Routes may name a host with its port.
                let lower_full;
                let full = if raw_host.bytes().any(|b| b.is_ascii_uppercase()) {
                    lower_full = raw_host.to_ascii_lowercase();
                    lower_full.as_str()
                } else {
                    raw_host
                };
                if let Some(l) = self.exact_hosts.get(full) {
                    push(l, &mut lists, &mut n);
                }
            }
            // `*.example.com` stands for at least one label: never for `.example.com`.
            if !self.suffix_hosts.is_empty() && !host.starts_with('.') {
                let mut rest = host;
                while let Some(i) = rest.find('.') {
                    rest = &rest[i + 1..];
                    if let Some(l) = self.suffix_hosts.get(rest) {
                        push(l, &mut lists, &mut n);
                    }
                }
            }
            if !self.prefix_hosts.is_empty() {
                let mut end = host.len();
                while let Some(i) = host[..end].rfind('.') {
                    if let Some(l) = self.prefix_hosts.get(&host[..i]) {
                        push(l, &mut lists, &mut n);
                    }
                    end = i;
                }
            }
        }
        push(&self.hostless_other, &mut lists, &mut n);
        if !self.hostless_prefix_all.is_empty() {
            // The lists of the configured prefixes of this path; if there are more than the
            // merge has room for, every host-less prefix entry instead (the same candidates,
            // more of them checked).
            let before = n;
            let mut overflow = false;
            self.hostless_prefixes
                .each_prefix_of(req.path.as_bytes(), |l| {
                    if n < lists.len() {
                        lists[n] = l;
                        n += 1;
                        true
                    } else {
                        overflow = true;
                        false
                    }
                });
            if overflow {
                n = before;
                push(&self.hostless_prefix_all, &mut lists, &mut n);
            }
        }

        let lists = &mut lists[..n];
        let mut use_https: Option<(&Entry, usize)> = None;
        loop {
            // Take the smallest head among the lists: a k-way merge over sorted indices.
            let mut best: Option<(usize, u32)> = None;
            for (li, l) in lists.iter().enumerate() {
                if let Some(&h) = l.first() {
                    if best.map(|(_, b)| h < b).unwrap_or(true) {
                        best = Some((li, h));
                    }
                }
            }
            let Some((li, idx)) = best else {
                return match use_https {
                    Some((entry, len)) => Routed::UseHttps(Match {
                        route: entry.route.clone(),
                        matched_len: len,
                        path_index: entry.path_index,
                    }),
                    None => Routed::NoRoute,
                };
            };
            lists[li] = &lists[li][1..];
            let entry = &self.entries[idx as usize];
            let accepts = if req.tls { entry.secure } else { entry.plain };
            if !accepts && (req.tls || use_https.is_some() || !entry.secure) {
                continue;
            }
            if let Some(len) = self.matches(entry, req) {
                if !accepts {
                    use_https = Some((entry, len));
                    continue;
                }
                return Routed::Route(Match {
                    route: entry.route.clone(),
                    matched_len: len,
                    path_index: entry.path_index,
                });
            }
        }
    }

    /// Every entry in priority order, hosts checked here: what the indexes must agree with.
    #[cfg(test)]
    fn route_linear(&self, req: &RequestInfo<'_>) -> Option<Match> {
        let host = names::normalize(req.host.split(':').next().unwrap_or("")).into_owned();
        self.entries.iter().find_map(|e| {
            if !(if req.tls { e.secure } else { e.plain }) {
                return None;
            }
            let host_ok = e.route.hosts.is_empty()
                || e.route
                    .hosts
                    .iter()
                    .any(|h| names::matches(NameUse::RouteHost, h, &host));
            let len = if host_ok {
                self.matches(e, req)?
            } else {
                return None;
            };
            Some(Match {
                route: e.route.clone(),
                matched_len: len,
                path_index: e.path_index,
            })
        })
    }

    fn matches(&self, e: &Entry, req: &RequestInfo<'_>) -> Option<usize> {
        let _ = e.has_hosts;
        if !e.methods.is_empty() && !e.methods.iter().any(|m| m == req.method) {
            return None;
        }
        if req.tls && !e.snis.is_empty() {
            let sni = req.sni?;
            // `sni` was normalised at the handshake (`tls::Acceptor`).
            if !e
                .snis
                .iter()
                .any(|p| names::matches(NameUse::RouteSni, p, sni))
            {
                return None;
            }
        }
        for (name, vals) in &e.headers {
            let v = (req.header)(name)?;
            let ok = vals.iter().any(|want| match want {
                HeaderValue::Exact(s) => s.eq_ignore_ascii_case(v),
                HeaderValue::Regex(re) => re.is_match(v),
            });
            if !ok {
                return None;
            }
        }
        match &e.path {
            PathMatch::Any => Some(0),
            PathMatch::Prefix(p) => req.path.starts_with(p.as_str()).then_some(p.len()),
            PathMatch::Regex(re) => re.find(req.path).map(|m| m.end()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router_from(yaml: &str) -> Router {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("gateway.yaml"), yaml).expect("write");
        let (config, _) = crate::config::load(dir.path(), crate::plugin::registry())
            .expect("configuration loads");
        Router::new(&config.routes)
    }

    fn get<'a>(host: &'a str, path: &'a str, method: &'a str) -> RequestInfo<'a> {
        RequestInfo {
            host,
            path,
            method,
            tls: false,
            sni: None,
            header: &|_| None,
        }
    }

    /// The host and path indexes pick exactly what a scan of every entry in priority order
    /// picks: generated routes with nested prefixes, regexes, hosts, wildcards and methods.
    #[test]
    fn indexes_agree_with_a_linear_scan() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let seg = ["a", "ab", "b", "api", "v1", "x"];
        let mut y = String::from("_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n");
        for i in 0..400 {
            let depth = 1 + next(4);
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                path.push_str(seg[next(seg.len() as u64) as usize]);
            }
            if next(5) == 0 && path.len() > 2 {
                path.truncate(path.len() - 1); // prefixes that end mid-segment
            }
            let paths = match next(10) {
                0 => format!("[\"~{path}/[0-9]+$\"]"),
                1 => "[]".to_string(),
                _ => format!("[\"{path}\"]"),
            };
            let hosts = match next(6) {
                0 => "[h1.test]",
                1 => "[\"*.w.test\"]",
                _ => "[]",
            };
            let methods = if next(4) == 0 {
                "[POST]"
            } else if paths == "[]" && hosts == "[]" {
                "[GET]" // a route needs at least one attribute
            } else {
                "[]"
            };
            let protocols =
                ["[http, https]", "[https]", "[http]", "[grpc, grpcs]"][next(4) as usize];
            y.push_str(&format!(
                "      - {{ name: r{i}, paths: {paths}, hosts: {hosts}, methods: {methods}, protocols: {protocols}, regex_priority: {} }}\n",
                next(3)
            ));
        }
        // More nested prefixes of one path than the merge takes lists: the fallback path.
        let mut deep = String::new();
        for i in 0..40 {
            deep.push('z');
            y.push_str(&format!(
                "      - {{ name: deep{i}, paths: [\"/{deep}\"], methods: [PUT] }}\n"
            ));
        }
        let router = router_from(&y);
        let (mut checked, mut via_other) = (0, 0);
        for _ in 0..3000 {
            let depth = next(5);
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                path.push_str(seg[next(seg.len() as u64) as usize]);
                if next(4) == 0 {
                    path.push('/');
                    path.push_str(&next(1000).to_string());
                }
            }
            if path.is_empty() {
                path.push('/');
            }
            let host = ["h1.test", "a.w.test", "other.test", "h1.test:8000"][next(4) as usize];
            let method = ["GET", "POST"][next(2) as usize];
            let mut req = get(host, &path, method);
            req.tls = next(2) == 0;
            let fast = router
                .route(&req)
                .map(|m| (m.route.name.clone(), m.matched_len));
            let slow = router
                .route_linear(&req)
                .map(|m| (m.route.name.clone(), m.matched_len));
            assert_eq!(fast, slow, "{method} {host}{path}");
            checked += usize::from(fast.is_some());
            via_other += usize::from(
                router
                    .route(&req)
                    .is_some_and(|m| !matches!(m.route.paths.first(), Some(PathSpec::Prefix(_)))),
            );
        }
        assert!(
            checked > 1000,
            "only {checked} requests matched a route: a weak test"
        );
        assert!(
            via_other > 100,
            "only {via_other} requests went to regex or path-less host-less routes"
        );
        let deep_path = format!("/{}", "z".repeat(45));
        let req = get("any.test", &deep_path, "PUT");
        assert_eq!(
            router.route(&req).map(|m| m.route.name.clone()),
            Some("deep39".into())
        );
        assert_eq!(
            router.route(&req).map(|m| m.route.name.clone()),
            router.route_linear(&req).map(|m| m.route.name.clone())
        );
    }

    #[test]
    fn protocols_are_a_match_criterion() {
        let router = router_from(
            "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n      - { name: plain, protocols: [http], paths: [/api] }\n      - { name: secure, protocols: [https], paths: [/api] }\n      - { name: secure-long, protocols: [https], paths: [/only/secure] }\n      - { name: any, paths: [/only] }\n      - { name: grpc, protocols: [grpc], paths: [/g] }\n      - { name: grpcs, protocols: [grpcs], paths: [/g] }\n",
        );
        let find = |tls: bool, path: &str| {
            let mut req = get("h.test", path, "GET");
            req.tls = tls;
            match router.find(&req) {
                Routed::Route(m) => format!("route {}", m.route.name),
                Routed::UseHttps(m) => format!("426 {}", m.route.name),
                Routed::NoRoute => "404".to_string(),
            }
        };
        assert_eq!(find(false, "/api/x"), "route plain");
        assert_eq!(find(true, "/api/x"), "route secure");
        assert_eq!(find(false, "/g"), "route grpc");
        assert_eq!(find(true, "/g"), "route grpcs");
        // A plain request takes a lower-priority route that accepts it over a 426.
        assert_eq!(find(false, "/only/secure"), "route any");
        assert_eq!(find(true, "/only/secure"), "route secure-long");
        let only_https = router_from(
            "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n      - { name: long, protocols: [https], paths: [/a/b] }\n      - { name: short, protocols: [https], paths: [/a] }\n      - { name: plain, protocols: [http], paths: [/p] }\n",
        );
        let find = |tls: bool, path: &str| {
            let mut req = get("h.test", path, "GET");
            req.tls = tls;
            match only_https.find(&req) {
                Routed::Route(m) => format!("route {}", m.route.name),
                Routed::UseHttps(m) => format!("426 {}", m.route.name),
                Routed::NoRoute => "404".to_string(),
            }
        };
        // The 426 names the best https-only route that would have matched.
        assert_eq!(find(false, "/a/b/c"), "426 long");
        assert_eq!(find(false, "/a/c"), "426 short");
        assert_eq!(find(true, "/p"), "404");
        assert_eq!(find(false, "/nothing"), "404");
    }
}
