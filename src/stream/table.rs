//! The passthrough routing table: SNI → route, compiled once per configuration and immutable,
//! plus each route's weighted round-robin over its targets.
//!
//! Wildcards follow Kong's host matching: `*.example.com` matches any name ending in
//! `.example.com` (one label or more), `example.*` any name starting with `example.`. An exact
//! name beats a wildcard; among wildcards the longest fixed part wins, leading before trailing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpStream;

use crate::metrics::{STREAM_ACTIVE, STREAM_BYTES};
// Names from the ClientHello parser are already normalised: the lookup path does not allocate.
use crate::names::normalize;

/// One upstream address of a passthrough route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    pub host: String,
    pub port: u16,
    /// Relative share of connections; 0 disables the target (as in Kong).
    pub weight: u32,
}

/// A `tls_passthrough` route as the configuration describes it.
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

/// Compiled SNI → route table; swapped whole on reload, so tunnels keep the route they began on.
#[derive(Debug, Default)]
pub struct StreamTable {
    routes: Vec<Arc<StreamRoute>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `.example.com`.
    leading: HashMap<String, usize>,
    /// `example.*` stored as `example.`.
    trailing: HashMap<String, usize>,
}

impl StreamTable {
    /// Compiles the routes. When two routes claim the same SNI (configuration validation should
    /// prevent it) the first one keeps it.
    pub fn new(routes: Vec<StreamRouteSpec>) -> Self {
        let mut table = StreamTable::default();
        for spec in routes {
            let index = table.routes.len();
            for sni in &spec.snis {
                let sni = normalize(sni);
                let (map, key) = if let Some(rest) = sni.strip_prefix('*') {
                    (&mut table.leading, rest.to_string())
                } else if let Some(rest) = sni.strip_suffix('*') {
                    (&mut table.trailing, rest.to_string())
                } else {
                    (&mut table.exact, sni.to_string())
                };
                map.entry(key).or_insert(index);
            }
            table.routes.push(Arc::new(StreamRoute::compile(spec)));
        }
        table
    }

    /// The route for a server name: exact first, then the longest `*.suffix`, then the longest
    /// `prefix.*`.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<StreamRoute>> {
        let sni = normalize(sni);
        let sni: &str = &sni;
        let index = self.exact.get(sni).or_else(|| {
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
        })?;
        self.routes.get(*index)
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
