//! Upstreams (Kong Upstream/Target): target selection (weighted round-robin, least-connections,
//! consistent hashing), passive health from proxied traffic, active health probes, and DNS
//! re-resolution. A balancer whose definition did not change survives a reload with its health
//! state; a replaced one stops its probe thread on its own (the thread only holds a `Weak`).

pub mod dns;
mod health;

use crate::config::model::{Algorithm, Config, HashOn, Protocol, Upstream};
use crate::metrics;
use crate::tls::upstream::TlsProfile;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

const HEALTH_STATES: [&str; 4] = ["healthy", "unhealthy", "dns_error", "healthchecks_off"];

pub struct TargetState {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// host:port as configured, for labels and logs.
    pub label: String,
    addrs: RwLock<Vec<SocketAddr>>,
    healthy: AtomicBool,
    pub active_connections: AtomicUsize,
    // Counters toward Kong's thresholds; reset when the state flips.
    successes: AtomicU32,
    http_failures: AtomicU32,
    tcp_failures: AtomicU32,
    timeouts: AtomicU32,
}

impl TargetState {
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addrs.read().ok().and_then(|a| a.first().copied())
    }
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// A connection slot on one target, counted by least-connections balancing while it is held and
/// given back when dropped: on a retry, a failure or the request's end, whichever comes first,
/// and exactly once.
pub struct Lease {
    target: Arc<TargetState>,
    /// The target's index in its balancer.
    pub idx: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.target
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What happened on one attempt, for passive checks and probes.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Status(u16),
    TcpFailure,
    Timeout,
}

pub struct Balancer {
    pub upstream: Arc<Upstream>,
    pub targets: Vec<Arc<TargetState>>,
    /// Weighted round-robin sequence of target indices (smooth interleaving).
    wheel: Vec<usize>,
    rr: AtomicUsize,
    /// Consistent-hashing ring: (point, target index), sorted.
    ring: Vec<(u64, usize)>,
    /// TLS profile for https probes (from the first service using this upstream).
    pub probe_tls: Option<Arc<TlsProfile>>,
}

/// The TLS profile https probes use: the service's (CAs, client certificate, depth, server
/// name), always with a verifying store so `https_verify_certificate` can be honoured even when
/// the service itself has `tls_verify: false`.
fn probe_profile(config: &Config, upstream: &Upstream) -> Option<TlsProfile> {
    let s = config
        .services
        .iter()
        .find(|s| s.host == upstream.name && s.protocol.is_tls())?;
    let tls = &s.tls;
    let verifying = crate::config::model::UpstreamTls {
        verify: true,
        verify_depth: tls.verify_depth,
        ca_certificates: tls.ca_certificates.clone(),
        client_certificate: tls.client_certificate.clone(),
        server_name: tls.server_name.clone(),
        group_key: tls.group_key,
    };
    match crate::tls::upstream::build_profile(&verifying, &config.tls_groups) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::error!(upstream = %upstream.name, error = %e, "https health check TLS profile");
            None
        }
    }
}

fn hash64(data: &[u8]) -> u64 {
    // FNV-1a: stable across processes, so every replica maps a key to the same target.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    // FNV-1a leaves the high bits nearly untouched by the last bytes, and keys and ring points
    // differ mostly there ("tenant-1", "127.0.0.1:8080#3"): without this finalizer
    // (MurmurHash3's fmix64) every key landed on the same target.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    h
}

fn resolve(host: &str, port: u16) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    // IPv4 first, as Kong's default dns_order (A before AAAA): `localhost` often resolves to
    // ::1 first while the target listens on 127.0.0.1 only.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
}

impl Balancer {
    fn new(upstream: Arc<Upstream>, probe_tls: Option<Arc<TlsProfile>>) -> Balancer {
        let targets: Vec<Arc<TargetState>> = upstream
            .targets
            .iter()
            .map(|t| {
                Arc::new(TargetState {
                    host: t.host.clone(),
                    port: t.port,
                    weight: t.weight,
                    label: format!("{}:{}", t.host, t.port),
                    addrs: RwLock::new(resolve(&t.host, t.port)),
                    healthy: AtomicBool::new(true),
                    active_connections: AtomicUsize::new(0),
                    successes: AtomicU32::new(0),
                    http_failures: AtomicU32::new(0),
                    tcp_failures: AtomicU32::new(0),
                    timeouts: AtomicU32::new(0),
                })
            })
            .collect();
        // Smooth weighted round robin (nginx's), unrolled once into a wheel.
        let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
        let mut wheel = Vec::new();
        if total > 0 {
            let len = total.min(10_000) as usize;
            let mut current: Vec<i64> = vec![0; targets.len()];
            for _ in 0..len {
                let mut best = 0;
                for (i, t) in targets.iter().enumerate() {
                    current[i] += i64::from(t.weight);
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total as i64;
                wheel.push(best);
            }
        }
        let mut ring = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let points = (t.weight as usize).clamp(1, 1000) * 4;
            for p in 0..points {
                ring.push((hash64(format!("{}#{p}", t.label).as_bytes()), i));
            }
        }
        ring.sort_unstable();
        let b = Balancer {
            upstream,
            targets,
            wheel,
            rr: AtomicUsize::new(0),
            ring,
            probe_tls,
        };
        b.export_health();
        b
    }

    fn usable(&self, i: usize, exclude: &[usize]) -> bool {
        let t = &self.targets[i];
        t.weight > 0 && t.is_healthy() && !exclude.contains(&i) && t.addr().is_some()
    }

    /// Pick a target; `key` feeds consistent hashing; `exclude` holds targets already tried for
    /// this request (retries go elsewhere when possible).
    pub fn select(&self, key: Option<&[u8]>, exclude: &[usize]) -> Option<(usize, SocketAddr)> {
        let pick = match self.upstream.algorithm {
            Algorithm::RoundRobin => self.pick_rr(exclude),
            Algorithm::LeastConnections => self.pick_least(exclude),
            Algorithm::ConsistentHashing => match key {
                Some(k) if !self.ring.is_empty() => {
                    let h = hash64(k);
                    let start = self.ring.partition_point(|(p, _)| *p < h);
                    (0..self.ring.len())
                        .map(|o| self.ring[(start + o) % self.ring.len()].1)
                        .find(|i| self.usable(*i, exclude))
                }
                _ => self.pick_rr(exclude),
            },
        };
        match pick {
            Some(i) => self.targets[i].addr().map(|a| (i, a)),
            // All candidates tried: allow a retry on an already tried healthy target.
            None if !exclude.is_empty() => self.select(key, &[]),
            None => None,
        }
    }

    fn pick_rr(&self, exclude: &[usize]) -> Option<usize> {
        if self.wheel.is_empty() {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..self.wheel.len())
            .map(|o| self.wheel[(start + o) % self.wheel.len()])
            .find(|i| self.usable(*i, exclude))
    }

    fn pick_least(&self, exclude: &[usize]) -> Option<usize> {
        // Fewest active connections relative to weight; ties broken round-robin.
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let n = self.targets.len();
        (0..n)
            .map(|o| (start + o) % n)
            .filter(|i| self.usable(*i, exclude))
            .min_by(|a, b| {
                let ta = &self.targets[*a];
                let tb = &self.targets[*b];
                let la =
                    ta.active_connections.load(Ordering::Relaxed) as u64 * u64::from(tb.weight);
                let lb =
                    tb.active_connections.load(Ordering::Relaxed) as u64 * u64::from(ta.weight);
                la.cmp(&lb)
            })
    }

    /// Hash key for consistent hashing, from the request.
    /// Takes a connection slot on target `idx` (from [`Balancer::select`]).
    pub fn lease(&self, idx: usize) -> Option<Lease> {
        let target = self.targets.get(idx)?.clone();
        target.active_connections.fetch_add(1, Ordering::Relaxed);
        Some(Lease { target, idx })
    }

    pub fn hash_key<'a>(
        &self,
        client_ip: Option<&'a [u8]>,
        header: &dyn Fn(&str) -> Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        match &self.upstream.hash_on {
            HashOn::None => None,
            HashOn::Ip => client_ip,
            HashOn::Header(h) => header(h),
        }
    }

    /// Passive health: outcomes of proxied requests (Kong's `healthchecks.passive`).
    pub fn report_passive(&self, idx: usize, outcome: Outcome) {
        let Some(p) = &self.upstream.passive else {
            return;
        };
        let Some(t) = self.targets.get(idx) else {
            return;
        };
        match outcome {
            Outcome::Status(s) if p.unhealthy_http_statuses.contains(&s) => {
                self.fail(t, &t.http_failures, p.unhealthy_http_failures)
            }
            Outcome::Status(s) if p.healthy_http_statuses.contains(&s) => {
                self.succeed(t, p.healthy_successes)
            }
            Outcome::Status(_) => {}
            Outcome::TcpFailure => self.fail(t, &t.tcp_failures, p.unhealthy_tcp_failures),
            Outcome::Timeout => self.fail(t, &t.timeouts, p.unhealthy_timeouts),
        }
    }

    fn fail(&self, t: &TargetState, counter: &AtomicU32, threshold: u32) {
        t.successes.store(0, Ordering::Relaxed);
        if threshold == 0 {
            return;
        }
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold && t.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.upstream.name, target = %t.label, "target marked unhealthy");
            self.reset_counters(t);
            self.export_health();
        }
    }

    fn succeed(&self, t: &TargetState, threshold: u32) {
        t.http_failures.store(0, Ordering::Relaxed);
        t.tcp_failures.store(0, Ordering::Relaxed);
        t.timeouts.store(0, Ordering::Relaxed);
        if t.is_healthy() || threshold == 0 {
            return;
        }
        let n = t.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            t.healthy.store(true, Ordering::Relaxed);
            tracing::info!(upstream = %self.upstream.name, target = %t.label, "target healthy again");
            self.reset_counters(t);
            self.export_health();
        }
    }

    fn reset_counters(&self, t: &TargetState) {
        t.successes.store(0, Ordering::Relaxed);
        t.http_failures.store(0, Ordering::Relaxed);
        t.tcp_failures.store(0, Ordering::Relaxed);
        t.timeouts.store(0, Ordering::Relaxed);
    }

    /// One gauge per target and state (Kong's `kong_upstream_target_health` shape).
    pub fn export_health(&self) {
        let checks_on = self.upstream.active.is_some() || self.upstream.passive.is_some();
        for t in &self.targets {
            let current = if t.addr().is_none() {
                "dns_error"
            } else if !checks_on {
                "healthchecks_off"
            } else if t.is_healthy() {
                "healthy"
            } else {
                "unhealthy"
            };
            for state in HEALTH_STATES {
                metrics::TARGET_HEALTH
                    .with_label_values(&[&self.upstream.name, &t.label, state])
                    .set(i64::from(state == current));
            }
        }
    }
}

/// Every balancer of a configuration, by upstream name.
#[derive(Default)]
pub struct BalancerSet {
    map: HashMap<String, Arc<Balancer>>,
}

impl BalancerSet {
    pub fn build(config: &Config, previous: Option<&BalancerSet>) -> BalancerSet {
        let mut map = HashMap::new();
        for u in &config.upstreams {
            let probe_tls = probe_profile(config, u).map(Arc::new);
            let probe_key = probe_tls.as_ref().map(|p| p.group_key);
            // Health state survives a reload only when nothing the balancer uses changed,
            // including what probes trust and present (a CA fixed by a reload must be used).
            let reuse = previous.and_then(|p| p.map.get(&u.name)).filter(|old| {
                old.upstream.targets == u.targets
                    && old.upstream.algorithm == u.algorithm
                    && old.upstream.hash_on == u.hash_on
                    && old.upstream.host_header == u.host_header
                    && old.upstream.active == u.active
                    && old.upstream.passive == u.passive
                    && old.probe_tls.as_ref().map(|p| p.group_key) == probe_key
            });
            let b = match reuse {
                Some(old) => old.clone(),
                None => {
                    let b = Arc::new(Balancer::new(u.clone(), probe_tls));
                    health::spawn(&b);
                    b
                }
            };
            map.insert(u.name.clone(), b);
        }
        // Targets (or upstreams) gone from the configuration must not keep exporting their last
        // state forever.
        if let Some(prev) = previous {
            for old in prev.map.values() {
                let kept = map.get(&old.upstream.name);
                for t in &old.targets {
                    let still = kept.is_some_and(|b| b.targets.iter().any(|n| n.label == t.label));
                    if !still {
                        for state in HEALTH_STATES {
                            let _ = metrics::TARGET_HEALTH.remove_label_values(&[
                                &old.upstream.name,
                                &t.label,
                                state,
                            ]);
                        }
                    }
                }
            }
        }
        BalancerSet { map }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Balancer>> {
        self.map.get(name).cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Balancer>> {
        self.map.values()
    }
}

pub(crate) fn re_resolve(b: &Balancer) {
    let mut changed = false;
    for t in &b.targets {
        let fresh = resolve(&t.host, t.port);
        if let Ok(mut a) = t.addrs.write() {
            if !fresh.is_empty() && *a != fresh {
                *a = fresh;
                changed = true;
            }
        }
    }
    if changed {
        b.export_health();
    }
}

pub(crate) fn record_active(b: &Balancer, idx: usize, outcome: Outcome) {
    let Some(a) = &b.upstream.active else {
        return;
    };
    let Some(t) = b.targets.get(idx) else {
        return;
    };
    match outcome {
        Outcome::Status(s) if a.healthy_http_statuses.contains(&s) => {
            b.succeed(t, a.healthy_successes.max(1))
        }
        Outcome::Status(s) if a.unhealthy_http_statuses.contains(&s) => {
            b.fail(t, &t.http_failures, a.unhealthy_http_failures)
        }
        Outcome::Status(_) => {}
        Outcome::TcpFailure => b.fail(t, &t.tcp_failures, a.unhealthy_tcp_failures),
        Outcome::Timeout => b.fail(t, &t.timeouts, a.unhealthy_timeouts),
    }
}

pub fn host_with_port(host: &str, port: u16, protocol: Protocol) -> String {
    if port == protocol.default_port() {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
