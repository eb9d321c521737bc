//! The stream routing table, compiled once per configuration and immutable: `tls_passthrough`,
//! `tls` and `tcp` routes by SNI, source and destination with Kong's priorities, plus each
//! route's weighted round-robin over its targets.
//!
//! Priority follows Kong's stream router: a route that matches on more of `snis`, `sources`,
//! `destinations` wins; between equally many, SNI outranks source outranks destination; then
//! routes with an entry giving both `ip` and `port` come first, then configuration order.
//! Wildcards follow Kong's host matching: `*.example.com` matches any name ending in
//! `.example.com` (one label or more), `example.*` any name starting with `example.`. An exact
//! name beats a wildcard; among wildcards the longest fixed part wins, leading before trailing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpStream;

use crate::config::model::NetMatch;
use crate::metrics::{STREAM_ACTIVE, STREAM_BYTES};
// Names from the ClientHello parser are already normalised: the lookup path does not allocate.
use crate::names::normalize;

use crate::tls::upstream::StreamTlsClient;
use crate::tls::CertStore;

/// Which stream protocols a route serves (its `protocols`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamKinds {
    /// `tls_passthrough`: relayed undecrypted from a TLS stream listener.
    pub passthrough: bool,
    /// `tls`: terminated on a TLS stream listener.
    pub terminate: bool,
    /// `tcp`: plain bytes on a `tls: false` stream listener.
    pub tcp: bool,
}

impl StreamKinds {
    pub const PASSTHROUGH: StreamKinds = StreamKinds {
        passthrough: true,
        terminate: false,
        tcp: false,
    };
}

/// One upstream address of a passthrough route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    pub host: String,
    pub port: u16,
    /// Relative share of connections; 0 disables the target (as in Kong).
    pub weight: u32,
}

/// A stream route as the configuration describes it.
#[derive(Debug, Clone)]
pub struct StreamRouteSpec {
    /// Route name (or id when unnamed), for logs and metrics.
    pub route: Arc<str>,
    /// Service name (or id), for logs.
    pub service: Arc<str>,
    /// Exact names, `*.example.com` or `example.*` wildcards; matched case-insensitively.
    pub snis: Vec<String>,
    /// Weighted round robin; on a failed connect the next target is tried.
    pub targets: Vec<StreamTarget>,
    /// Limit for each connect attempt.
    pub connect_timeout: Duration,
    /// When the service names an upstream: its balancer, whose health state (active probes and
    /// passive failures) decides which targets take connections. Target `i` here is target `i`
    /// of the balancer.
    pub health: Option<StreamHealth>,
    // PostgreSQL's classic SSLRequest is always recognised: there is nothing to configure.
    pub kinds: StreamKinds,
    /// Client addresses (any entry matches); empty: any.
    pub sources: Vec<NetMatch>,
    /// Addresses the client connected to (any entry matches); empty: any.
    pub destinations: Vec<NetMatch>,
    /// TLS toward the upstream: the `tls` service of a `tls` or `tcp` route. Never used for
    /// `tls_passthrough`, whose bytes are already the client's TLS.
    pub upstream_tls: Option<Arc<StreamTlsClient>>,
}

/// The HTTP side's balancer shared with a passthrough route, for target health.
#[derive(Clone)]
pub struct StreamHealth(pub Arc<crate::upstream::Balancer>);

impl std::fmt::Debug for StreamHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamHealth({})", self.0.upstream.name)
    }
}

/// A compiled route: the spec plus its balancer state and resolved metric handles.
#[derive(Debug)]
pub struct StreamRoute {
    pub name: Arc<str>,
    pub service: Arc<str>,
    pub connect_timeout: Duration,
    targets: Vec<StreamTarget>,
    /// `host:port` of each target, formatted once for the connection logs.
    labels: Vec<Arc<str>>,
    /// Target indices in smooth weighted round-robin order, one cycle long.
    schedule: Vec<usize>,
    next: AtomicUsize,
    health: Option<StreamHealth>,
    pub kinds: StreamKinds,
    snis: Vec<String>,
    sources: Vec<NetMatch>,
    destinations: Vec<NetMatch>,
    pub upstream_tls: Option<Arc<StreamTlsClient>>,
    pub(crate) active: IntGauge,
    pub(crate) bytes_up: IntCounter,
    pub(crate) bytes_down: IntCounter,
}

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("route has no target with a weight above 0")]
    NoTarget,
    #[error("every target of the upstream is unhealthy")]
    NoHealthyTarget,
    #[error("every target failed; last: {target}: {reason}")]
    AllFailed { target: String, reason: String },
}

impl StreamRoute {
    fn compile(spec: StreamRouteSpec) -> Self {
        let schedule = smooth_wrr(&spec.targets);
        let route: &str = &spec.route;
        StreamRoute {
            active: STREAM_ACTIVE.with_label_values(&[route]),
            bytes_up: STREAM_BYTES.with_label_values(&[route, "upstream"]),
            bytes_down: STREAM_BYTES.with_label_values(&[route, "downstream"]),
            name: spec.route,
            service: spec.service,
            connect_timeout: spec.connect_timeout,
            labels: spec
                .targets
                .iter()
                .map(|t| Arc::from(format!("{}:{}", t.host, t.port)))
                .collect(),
            targets: spec.targets,
            schedule,
            next: AtomicUsize::new(0),
            health: spec.health,
            kinds: spec.kinds,
            snis: spec
                .snis
                .iter()
                .map(|s| normalize(s).into_owned())
                .collect(),
            sources: spec.sources,
            destinations: spec.destinations,
            upstream_tls: spec.upstream_tls,
        }
    }

    /// The targets in configuration order.
    pub fn targets(&self) -> &[StreamTarget] {
        &self.targets
    }

    /// The index of the target the next connection goes to first.
    fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.schedule.get(turn).copied()
    }

    /// Connects to the next target in weighted round-robin order; when a connect fails or times
    /// out, tries each other enabled target once, in configuration order after the failed one.
    /// Returns the connection and the `host:port` it went to.
    pub async fn connect(&self) -> Result<(TcpStream, Arc<str>), ConnectError> {
        let first = self.pick().ok_or(ConnectError::NoTarget)?;
        let count = self.targets.len();
        let mut last = None;
        let healthy = |i: usize| {
            self.health
                .as_ref()
                .is_none_or(|h| h.0.targets.get(i).is_none_or(|t| t.is_healthy()))
        };
        if !(0..count).any(|i| healthy(i) && self.targets[i].weight > 0) {
            return Err(ConnectError::NoHealthyTarget);
        }
        for i in (0..count).map(|k| (first + k) % count) {
            let Some(target) = self.targets.get(i).filter(|t| t.weight > 0) else {
                continue;
            };
            if !healthy(i) {
                continue;
            }
            let report = |outcome| {
                if let Some(h) = &self.health {
                    h.0.report_passive(i, outcome);
                }
            };
            let addr = &self.labels[i];
            let attempt = tokio::time::timeout(
                self.connect_timeout,
                TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await;
            match attempt {
                Ok(Ok(stream)) => {
                    // Small TLS records (handshake, PostgreSQL queries) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr.clone()));
                }
                Ok(Err(e)) => {
                    report(crate::upstream::Outcome::TcpFailure);
                    tracing::warn!(route = %self.name, upstream = %addr, error = %e, "stream upstream connect failed");
                    last = Some((addr.to_string(), e.to_string()));
                }
                Err(_) => {
                    report(crate::upstream::Outcome::Timeout);
                    tracing::warn!(route = %self.name, upstream = %addr, "stream upstream connect timed out");
                    last = Some((addr.to_string(), "connect timed out".to_string()));
                }
            }
        }
        match last {
            Some((target, reason)) => Err(ConnectError::AllFailed { target, reason }),
            None => Err(ConnectError::NoTarget),
        }
    }
}

/// One cycle of nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, spreading
/// each target's turns instead of bunching them. Weights are divided by their greatest common
/// divisor and the cycle is capped so that huge weights cannot make it large.
fn smooth_wrr(targets: &[StreamTarget]) -> Vec<usize> {
    const MAX_CYCLE: u64 = 4096;
    let divisor = targets
        .iter()
        .map(|t| u64::from(t.weight))
        .filter(|&w| w > 0)
        .fold(0, gcd);
    if divisor == 0 {
        return Vec::new();
    }
    let mut weights: Vec<u64> = targets
        .iter()
        .map(|t| u64::from(t.weight) / divisor)
        .collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_CYCLE {
        // Scale down, keeping every enabled target at least once per cycle.
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_CYCLE / total).max(1);
        }
    }
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            current[i] += w as i64;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
            schedule.push(b);
        }
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Kong's match-rule bits: a route's category is the set of fields it matches on.
const SNI: u8 = 4;
const SRC: u8 = 2;
const DST: u8 = 1;

/// Categories from the highest priority: more fields first, then by bit value (Kong's
/// `sort_categories`). The SNI-only category is [`Index`]'s hash maps.
const CATEGORY_ORDER: [u8; 7] = [
    SNI | SRC | DST,
    SNI | SRC,
    SNI | DST,
    SRC | DST,
    SNI,
    SRC,
    DST,
];

/// What is known about a connection when it is routed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Incoming<'a> {
    /// From the ClientHello (TLS listeners only), normalised.
    pub sni: Option<&'a str>,
    pub client: Option<SocketAddr>,
    /// The listener address the client connected to.
    pub local: Option<SocketAddr>,
}

/// The routes one kind of listener can serve, indexed for lookup.
#[derive(Debug, Default)]
struct Index {
    /// SNI-only routes (the common passthrough case) by name: one hash lookup per connection.
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`.
    leading: HashMap<String, usize>,
    /// `example.*` stored as `example.`.
    trailing: HashMap<String, usize>,
    /// Route indices per category of [`CATEGORY_ORDER`] (the SNI-only one stays empty), in
    /// priority order within the category.
    categories: [Vec<usize>; 7],
}

impl Index {
    fn add(&mut self, index: usize, route: &StreamRoute) {
        let category = category(route);
        if category == SNI {
            for sni in &route.snis {
                let (map, key) = if let Some(rest) = sni.strip_prefix('*') {
                    (&mut self.leading, rest.to_string())
                } else if let Some(rest) = sni.strip_suffix('*') {
                    (&mut self.trailing, rest.to_string())
                } else {
                    (&mut self.exact, sni.to_string())
                };
                map.entry(key).or_insert(index);
            }
        } else if let Some(slot) = CATEGORY_ORDER.iter().position(|&c| c == category) {
            self.categories[slot].push(index);
        }
    }

    /// Within a category, an entry giving both `ip` and `port` is more specific (Kong's
    /// `sort_sources` / `sort_destinations`); the sort is stable, so configuration order
    /// decides the rest.
    fn sort(&mut self, routes: &[Arc<StreamRoute>]) {
        let specific = |i: &usize| {
            let r = &routes[*i];
            let full = |l: &[NetMatch]| l.iter().any(|n| n.net.is_some() && n.port.is_some());
            std::cmp::Reverse((full(&r.sources), full(&r.destinations)))
        };
        for list in &mut self.categories {
            list.sort_by_key(specific);
        }
    }

    fn lookup_sni(&self, sni: &str) -> Option<usize> {
        self.exact
            .get(sni)
            .or_else(|| {
                // Suffixes from the longest: each '.' (not the first byte) starts a candidate.
                let leading = sni
                    .char_indices()
                    .filter(|&(i, c)| c == '.' && i > 0)
                    .find_map(|(i, _)| self.leading.get(&sni[i..]));
                leading.or_else(|| {
                    sni.char_indices()
                        .rev()
                        .filter(|&(i, c)| c == '.' && i + 1 < sni.len())
                        .find_map(|(i, _)| self.trailing.get(&sni[..=i]))
                })
            })
            .copied()
    }

    fn lookup(&self, routes: &[Arc<StreamRoute>], conn: &Incoming<'_>) -> Option<usize> {
        for (slot, &category) in CATEGORY_ORDER.iter().enumerate() {
            if category == SNI {
                if let Some(i) = conn.sni.and_then(|s| self.lookup_sni(s)) {
                    return Some(i);
                }
                continue;
            }
            // The best SNI match in the category wins; the first in priority order among equals.
            let mut best: Option<(SniRank, usize)> = None;
            for &i in &self.categories[slot] {
                let Some(rank) = routes[i].matches(conn) else {
                    continue;
                };
                if best.is_none_or(|(b, _)| rank < b) {
                    best = Some((rank, i));
                }
            }
            if let Some((_, i)) = best {
                return Some(i);
            }
        }
        None
    }
}

/// How well a route's SNI matched: exact, then leading wildcards, then trailing ones, longer
/// fixed parts first. Routes without `snis` rank as exact.
type SniRank = (u8, std::cmp::Reverse<usize>);

fn category(route: &StreamRoute) -> u8 {
    let mut c = 0;
    if !route.snis.is_empty() {
        c |= SNI;
    }
    if !route.sources.is_empty() {
        c |= SRC;
    }
    if !route.destinations.is_empty() {
        c |= DST;
    }
    c
}

fn sni_rank(pattern: &str, sni: &str) -> Option<SniRank> {
    if let Some(suffix) = pattern.strip_prefix('*') {
        // `.example.com`: at least one label before it.
        (sni.len() > suffix.len() && sni.ends_with(suffix))
            .then_some((1, std::cmp::Reverse(suffix.len())))
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        (sni.len() > prefix.len() && sni.starts_with(prefix))
            .then_some((2, std::cmp::Reverse(prefix.len())))
    } else {
        (pattern == sni).then_some((0, std::cmp::Reverse(0)))
    }
}

impl StreamRoute {
    /// Whether every field the route sets matches the connection; with the SNI's rank.
    fn matches(&self, conn: &Incoming<'_>) -> Option<SniRank> {
        let any = |list: &[NetMatch], addr: Option<SocketAddr>| {
            list.is_empty() || addr.is_some_and(|a| list.iter().any(|n| n.matches(a)))
        };
        if !any(&self.sources, conn.client) || !any(&self.destinations, conn.local) {
            return None;
        }
        if self.snis.is_empty() {
            return Some((0, std::cmp::Reverse(0)));
        }
        let sni = conn.sni?;
        self.snis.iter().filter_map(|p| sni_rank(p, sni)).min()
    }
}

/// Compiled stream routes; swapped whole on reload, so tunnels keep the route they began on.
#[derive(Default)]
pub struct StreamTable {
    routes: Vec<Arc<StreamRoute>>,
    /// Routes a TLS stream listener serves (`tls_passthrough`, `tls`).
    tls: Index,
    /// Routes a plain (`tls: false`) stream listener serves (`tcp`).
    tcp: Index,
    /// The certificates `tls` routes terminate with: the HTTPS listeners' store of the same
    /// configuration.
    certs: Option<Arc<CertStore>>,
}

impl std::fmt::Debug for StreamTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTable")
            .field("routes", &self.routes)
            .finish()
    }
}

impl StreamTable {
    /// Compiles the routes. When two routes of one category claim the same SNI (configuration
    /// validation does not refuse it, nor does Kong) the first one keeps it.
    pub fn new(routes: Vec<StreamRouteSpec>) -> Self {
        let mut table = StreamTable::default();
        for spec in routes {
            let index = table.routes.len();
            let route = StreamRoute::compile(spec);
            if route.kinds.passthrough || route.kinds.terminate {
                table.tls.add(index, &route);
            }
            if route.kinds.tcp {
                table.tcp.add(index, &route);
            }
            table.routes.push(Arc::new(route));
        }
        table.tls.sort(&table.routes);
        table.tcp.sort(&table.routes);
        table
    }

    /// The certificate store `tls` routes terminate with.
    pub fn with_certs(mut self, certs: Arc<CertStore>) -> Self {
        self.certs = Some(certs);
        self
    }

    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// The route for a server name on a TLS stream listener, ignoring addresses.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<StreamRoute>> {
        let sni = normalize(sni);
        self.lookup_tls(&Incoming {
            sni: Some(&sni),
            ..Incoming::default()
        })
    }

    /// The route for a connection on a TLS stream listener (`conn.sni` already normalised).
    pub fn lookup_tls(&self, conn: &Incoming<'_>) -> Option<&Arc<StreamRoute>> {
        self.tls
            .lookup(&self.routes, conn)
            .and_then(|i| self.routes.get(i))
    }

    /// The route for a connection on a plain TCP stream listener.
    pub fn lookup_tcp(&self, conn: &Incoming<'_>) -> Option<&Arc<StreamRoute>> {
        self.tcp
            .lookup(&self.routes, conn)
            .and_then(|i| self.routes.get(i))
    }

    /// Every compiled route, in configuration order.
    pub fn routes(&self) -> &[Arc<StreamRoute>] {
        &self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, snis: &[&str]) -> StreamRouteSpec {
        StreamRouteSpec {
            route: name.into(),
            service: "svc".into(),
            snis: snis.iter().map(|s| s.to_string()).collect(),
            targets: vec![StreamTarget {
                host: "127.0.0.1".into(),
                port: 1,
                weight: 100,
            }],
            connect_timeout: Duration::from_secs(1),
            health: None,
            kinds: StreamKinds::PASSTHROUGH,
            sources: Vec::new(),
            destinations: Vec::new(),
            upstream_tls: None,
        }
    }

    fn route_for(table: &StreamTable, sni: &str) -> Option<String> {
        table.lookup(sni).map(|r| r.name.to_string())
    }

    #[test]
    fn exact_beats_wildcards_and_longest_wildcard_wins() {
        let table = StreamTable::new(vec![
            spec("wild", &["*.example.com"]),
            spec("deeper", &["*.db.example.com"]),
            spec("exact", &["api.example.com"]),
            spec("trailing", &["example.*", "example.co.*"]),
        ]);
        assert_eq!(
            route_for(&table, "api.example.com").as_deref(),
            Some("exact")
        );
        assert_eq!(
            route_for(&table, "web.example.com").as_deref(),
            Some("wild")
        );
        assert_eq!(
            route_for(&table, "a.b.example.com").as_deref(),
            Some("wild")
        );
        assert_eq!(
            route_for(&table, "pg.db.example.com").as_deref(),
            Some("deeper")
        );
        assert_eq!(
            route_for(&table, "example.org").as_deref(),
            Some("trailing")
        );
        assert_eq!(
            route_for(&table, "example.co.uk").as_deref(),
            Some("trailing")
        );
        // A wildcard needs at least one label in place of the '*'.
        assert_eq!(
            route_for(&table, "example.com").as_deref(),
            Some("trailing")
        );
        assert_eq!(route_for(&table, ".example.com"), None);
        assert_eq!(route_for(&table, "example."), None);
        assert_eq!(route_for(&table, "other.org"), None);
        assert_eq!(route_for(&table, ""), None);
    }

    #[test]
    fn leading_wildcard_beats_trailing() {
        let table = StreamTable::new(vec![spec("t", &["example.*"]), spec("l", &["*.com"])]);
        assert_eq!(route_for(&table, "example.com").as_deref(), Some("l"));
        assert_eq!(route_for(&table, "example.net").as_deref(), Some("t"));
    }

    #[test]
    fn lookup_ignores_case_and_trailing_dot() {
        let table = StreamTable::new(vec![spec("pg", &["Postgres.Example.COM"])]);
        assert_eq!(
            route_for(&table, "postgres.example.com.").as_deref(),
            Some("pg")
        );
        assert_eq!(
            route_for(&table, "POSTGRES.example.com").as_deref(),
            Some("pg")
        );
    }

    #[test]
    fn first_route_keeps_a_duplicate_sni() {
        let table = StreamTable::new(vec![spec("one", &["a.test"]), spec("two", &["a.test"])]);
        assert_eq!(route_for(&table, "a.test").as_deref(), Some("one"));
        assert_eq!(table.routes().len(), 2);
    }

    fn net(ip: Option<&str>, port: Option<u16>) -> NetMatch {
        NetMatch {
            net: ip.map(|ip| {
                let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "32"));
                crate::config::model::IpNet {
                    addr: addr.parse().unwrap(),
                    prefix: prefix.parse().unwrap(),
                }
            }),
            port,
        }
    }

    fn tcp(name: &str, sources: Vec<NetMatch>, destinations: Vec<NetMatch>) -> StreamRouteSpec {
        let mut s = spec(name, &[]);
        s.kinds = StreamKinds {
            tcp: true,
            ..StreamKinds::default()
        };
        s.sources = sources;
        s.destinations = destinations;
        s
    }

    fn tcp_route(table: &StreamTable, client: &str, local: &str) -> Option<String> {
        let conn = Incoming {
            sni: None,
            client: Some(client.parse().unwrap()),
            local: Some(local.parse().unwrap()),
        };
        table.lookup_tcp(&conn).map(|r| r.name.to_string())
    }

    #[test]
    fn tcp_routes_follow_kongs_category_priority() {
        let table = StreamTable::new(vec![
            tcp("dst", vec![], vec![net(None, Some(9000))]),
            tcp("src", vec![net(Some("127.0.0.0/8"), None)], vec![]),
            tcp(
                "src-and-dst",
                vec![net(Some("127.0.0.2"), None)],
                vec![net(None, Some(9000))],
            ),
        ]);
        // Both fields beat one; source outranks destination; nothing matches → none.
        assert_eq!(
            tcp_route(&table, "127.0.0.2:5000", "127.0.0.1:9000").as_deref(),
            Some("src-and-dst")
        );
        assert_eq!(
            tcp_route(&table, "127.0.0.5:5000", "127.0.0.1:9000").as_deref(),
            Some("src")
        );
        assert_eq!(
            tcp_route(&table, "10.0.0.1:5000", "127.0.0.1:9000").as_deref(),
            Some("dst")
        );
        assert_eq!(tcp_route(&table, "10.0.0.1:5000", "127.0.0.1:9001"), None);
    }

    #[test]
    fn an_entry_with_ip_and_port_comes_first_within_a_category() {
        let table = StreamTable::new(vec![
            tcp("ip-only", vec![net(Some("127.0.0.0/8"), None)], vec![]),
            tcp(
                "ip-and-port",
                vec![net(Some("127.0.0.0/8"), Some(4000))],
                vec![],
            ),
        ]);
        assert_eq!(
            tcp_route(&table, "127.0.0.1:4000", "127.0.0.1:9000").as_deref(),
            Some("ip-and-port")
        );
        assert_eq!(
            tcp_route(&table, "127.0.0.1:4001", "127.0.0.1:9000").as_deref(),
            Some("ip-only")
        );
    }

    #[test]
    fn tls_and_tcp_listeners_see_only_their_routes() {
        let mut terminate = spec("terminate", &["t.test"]);
        terminate.kinds = StreamKinds {
            terminate: true,
            ..StreamKinds::default()
        };
        let table = StreamTable::new(vec![
            spec("passthrough", &["p.test"]),
            terminate,
            tcp("plain", vec![], vec![net(None, Some(9000))]),
        ]);
        assert_eq!(route_for(&table, "p.test").as_deref(), Some("passthrough"));
        assert_eq!(route_for(&table, "t.test").as_deref(), Some("terminate"));
        let on_tls = Incoming {
            sni: Some("other.test"),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            local: Some("127.0.0.1:9000".parse().unwrap()),
        };
        assert!(table.lookup_tls(&on_tls).is_none());
        assert_eq!(
            tcp_route(&table, "127.0.0.1:5000", "127.0.0.1:9000").as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn a_tls_route_by_destination_serves_clients_without_sni() {
        let mut by_port = spec("by-port", &[]);
        by_port.kinds = StreamKinds {
            terminate: true,
            ..StreamKinds::default()
        };
        by_port.destinations = vec![net(None, Some(9443))];
        let table = StreamTable::new(vec![spec("named", &["a.test"]), by_port]);
        let conn = |sni| Incoming {
            sni,
            client: Some("127.0.0.1:5000".parse().unwrap()),
            local: Some("127.0.0.1:9443".parse().unwrap()),
        };
        let name = |sni| table.lookup_tls(&conn(sni)).map(|r| r.name.to_string());
        assert_eq!(name(None).as_deref(), Some("by-port"));
        assert_eq!(name(Some("other.test")).as_deref(), Some("by-port"));
        // SNI outranks destination.
        assert_eq!(name(Some("a.test")).as_deref(), Some("named"));
    }

    #[test]
    fn sni_with_a_destination_beats_sni_alone() {
        let mut on_port = spec("sni-and-port", &["*.x.test"]);
        on_port.destinations = vec![net(None, Some(9443))];
        let table = StreamTable::new(vec![spec("sni", &["a.x.test"]), on_port]);
        let conn = |port: u16| Incoming {
            sni: Some("a.x.test"),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            local: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        };
        let name = |port| table.lookup_tls(&conn(port)).map(|r| r.name.to_string());
        assert_eq!(name(9443).as_deref(), Some("sni-and-port"));
        assert_eq!(name(9444).as_deref(), Some("sni"));
    }

    fn targets(weights: &[u32]) -> Vec<StreamTarget> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| StreamTarget {
                host: format!("h{i}"),
                port: 1,
                weight,
            })
            .collect()
    }

    #[test]
    fn smooth_wrr_spreads_turns_by_weight() {
        assert_eq!(smooth_wrr(&targets(&[5, 1, 1])), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&targets(&[100, 100])), vec![0, 1]);
        assert_eq!(smooth_wrr(&targets(&[0, 3])), vec![1]);
        assert!(smooth_wrr(&targets(&[0, 0])).is_empty());
        assert!(smooth_wrr(&[]).is_empty());
    }

    #[test]
    fn smooth_wrr_caps_the_cycle_and_keeps_small_targets() {
        let schedule = smooth_wrr(&targets(&[u32::MAX, 1, u32::MAX - 1]));
        assert!(schedule.len() <= 4096 + 3, "{}", schedule.len());
        assert!(schedule.contains(&1));
    }

    #[tokio::test]
    async fn connect_falls_through_to_the_next_target() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap().port();
        // A port that was just free: connecting to it is refused.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut s = spec("fallthrough", &["x.test"]);
        s.targets = vec![
            StreamTarget {
                host: "127.0.0.1".into(),
                port: closed,
                weight: 1,
            },
            StreamTarget {
                host: "127.0.0.1".into(),
                port: good,
                weight: 1,
            },
        ];
        let table = StreamTable::new(vec![s]);
        let route = table.lookup("x.test").unwrap();
        for _ in 0..4 {
            let (_stream, addr) = route.connect().await.unwrap();
            assert_eq!(&*addr, format!("127.0.0.1:{good}"));
        }
    }

    #[tokio::test]
    async fn connect_without_enabled_targets_fails() {
        let mut s = spec("none", &["x.test"]);
        s.targets[0].weight = 0;
        let table = StreamTable::new(vec![s]);
        let err = table.lookup("x.test").unwrap().connect().await.unwrap_err();
        assert!(matches!(err, ConnectError::NoTarget));
    }
}
