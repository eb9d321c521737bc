//! The live state compiled from one `Config`: router, certificate store, per-route plugin chains
//! and metric handles, per-service upstream TLS profiles and balancers. Requests take a snapshot
//! (`Arc<Runtime>`) when they start, so a reload never changes a request mid-flight.

use crate::config::model::{Config, Protocol, Route, Service};
use crate::metrics;
use crate::plugin::{self, RoutePlugins};
use crate::routing::Router;
use crate::stream::{StreamHealth, StreamKinds, StreamRouteSpec, StreamTable, StreamTarget};
use crate::tls::upstream::StreamTlsClient;
use crate::tls::upstream::{build_profile, TlsProfile};
use crate::tls::{CertStore, ClientCertPolicy};
use crate::upstream::dns::DnsName;
use crate::upstream::{Balancer, BalancerSet};
use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

pub type Shared = Arc<ArcSwap<Runtime>>;

/// Metric handles of one route, resolved on first use instead of hashing labels per request.
pub struct RouteMetrics {
    service: Arc<str>,
    route: Arc<str>,
    codes: RwLock<Vec<(u16, IntCounter)>>,
    duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    ingress: OnceLock<IntCounter>,
    egress: OnceLock<IntCounter>,
}

impl RouteMetrics {
    pub fn new(service: Arc<str>, route: Arc<str>) -> Self {
        RouteMetrics {
            service,
            route,
            codes: RwLock::new(Vec::new()),
            duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            ingress: OnceLock::new(),
            egress: OnceLock::new(),
        }
    }

    pub fn request(&self, code: u16) {
        if let Ok(codes) = self.codes.read() {
            if let Some((_, c)) = codes.iter().find(|(k, _)| *k == code) {
                c.inc();
                return;
            }
        }
        let counter = metrics::HTTP_REQUESTS.with_label_values(&[
            &*self.service,
            &*self.route,
            &code.to_string(),
        ]);
        counter.inc();
        if let Ok(mut codes) = self.codes.write() {
            if !codes.iter().any(|(k, _)| *k == code) {
                codes.push((code, counter));
            }
        }
    }

    pub fn duration(&self) -> &Histogram {
        self.duration.get_or_init(|| {
            metrics::HTTP_DURATION.with_label_values(&[&*self.service, &*self.route])
        })
    }

    pub fn upstream_duration(&self) -> &Histogram {
        self.upstream_duration.get_or_init(|| {
            metrics::UPSTREAM_DURATION.with_label_values(&[&*self.service, &*self.route])
        })
    }

    pub fn ingress(&self) -> &IntCounter {
        self.ingress.get_or_init(|| {
            metrics::BANDWIDTH.with_label_values(&[&*self.service, &*self.route, "ingress"])
        })
    }

    pub fn egress(&self) -> &IntCounter {
        self.egress.get_or_init(|| {
            metrics::BANDWIDTH.with_label_values(&[&*self.service, &*self.route, "egress"])
        })
    }
}

/// Metric switches from the `prometheus` plugin (or defaults when it is absent).
#[derive(Debug, Clone)]
pub struct MetricFlags {
    pub per_consumer: bool,
    pub status_code: bool,
    pub latency: bool,
    pub bandwidth: bool,
}

pub struct ServiceRt {
    pub service: Arc<Service>,
    pub tls: Option<Arc<TlsProfile>>,
    /// The address when `host` is an IP literal.
    pub addr: Option<SocketAddr>,
    /// When `host` is a name (and no balancer): its addresses, kept fresh in the background
    /// (see upstream::dns) and used in turn.
    pub dns: Option<Arc<DnsName>>,
    pub balancer: Option<Arc<Balancer>>,
    /// The Host header sent upstream when `preserve_host` is off and no balancer picks a target.
    pub host_header: http::HeaderValue,
    /// The service as plugins' log records show it.
    pub info: Arc<portcullis_plugin_api::EntityInfo>,
}

pub struct RouteRt {
    pub route: Arc<Route>,
    /// The route as plugins' log records show it.
    pub info: Arc<portcullis_plugin_api::EntityInfo>,
    pub service: Arc<ServiceRt>,
    pub plugins: RoutePlugins,
    pub metrics: RouteMetrics,
    pub flags: MetricFlags,
}

pub struct Runtime {
    pub config: Arc<Config>,
    pub router: Router,
    /// Shared with the stream table, whose `tls` routes terminate with the same certificates.
    pub certs: Arc<CertStore>,
    /// By `Route::order`.
    pub routes: Vec<Option<Arc<RouteRt>>>,
    pub services: HashMap<String, Arc<ServiceRt>>,
    pub balancers: BalancerSet,
    pub loaded_at: SystemTime,
    /// Global plugin instances with a rewrite phase (run before routing).
    pub rewrite: plugin::Chain,
    /// The stream listeners' routes, swapped with everything else.
    pub stream: Arc<StreamTable>,
}

/// The stream listeners read the route table of the snapshot in force.
impl crate::stream::TableSource for ArcSwap<Runtime> {
    fn current(&self) -> Arc<StreamTable> {
        self.load().stream.clone()
    }
}

/// The TLS listeners read the certificates of the snapshot in force.
impl crate::tls::CertSource for ArcSwap<Runtime> {
    fn current(&self) -> Arc<CertStore> {
        self.load().certs.clone()
    }
}

impl Runtime {
    pub fn route_rt(&self, route: &Route) -> Option<&Arc<RouteRt>> {
        self.routes.get(route.order).and_then(|r| r.as_ref())
    }
}

fn flags_for(config: &Config, route: &Route) -> MetricFlags {
    // The most specific prometheus instance decides (route > service > global).
    let inst = config
        .plugins
        .iter()
        .filter(|p| p.name == "prometheus" && p.scope.consumer.is_none())
        .filter(|p| p.scope.route.as_ref().is_none_or(|r| r == &route.id))
        .filter(|p| {
            p.scope
                .service
                .as_ref()
                .is_none_or(|s| s == &route.service.id)
        })
        .max_by_key(|p| (p.scope.route.is_some(), p.scope.service.is_some()));
    // Typed when the instance was built at validation: nothing is parsed again here.
    let cfg = inst
        .and_then(|p| p.plugin.gateway_settings())
        .and_then(|a| a.downcast_ref::<crate::plugin::prometheus::PrometheusConfig>())
        .cloned()
        .unwrap_or_default();
    MetricFlags {
        per_consumer: cfg.per_consumer,
        status_code: cfg.status_code_metrics,
        latency: cfg.latency_metrics,
        bandwidth: cfg.bandwidth_metrics,
    }
}

/// Compile a validated configuration into live state: router, certificate store, stream table,
/// balancers and plugin chains, one snapshot swapped as a whole. `previous` lets unchanged
/// balancers (and their health state) carry over across a reload. Validation has checked every
/// input compiling reads (host names, TLS server names, certificates), so this fails only when
/// OpenSSL cannot allocate.
pub fn compile(
    config: Arc<Config>,
    fallback_cert: Arc<crate::config::model::Certificate>,
    previous: Option<&Runtime>,
) -> anyhow::Result<Runtime> {
    let balancers = BalancerSet::build(&config, previous.map(|p| &p.balancers));
    let mut services = HashMap::new();
    for s in &config.services {
        let tls = if s.protocol.is_tls() {
            Some(Arc::new(
                build_profile(&s.tls, &config.tls_groups).map_err(|e| {
                    anyhow::anyhow!("service {}: building TLS profile: {e}", s.name)
                })?,
            ))
        } else {
            None
        };
        let balancer = s
            .upstream
            .and_then(|i| config.upstreams.get(i))
            .and_then(|u| balancers.get(&u.name));
        let literal = s
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        let addr = match (&balancer, literal) {
            (None, Some(ip)) => Some(SocketAddr::new(ip, s.port)),
            _ => None,
        };
        let dns = if balancer.is_none() && literal.is_none() {
            // The same name on a reload keeps its addresses and turn; a new one resolves now.
            let kept = previous.and_then(|p| previous_dns(p, &s.host, s.port));
            Some(kept.unwrap_or_else(|| Arc::new(DnsName::new(&s.host, s.port, None))))
        } else {
            None
        };
        let host = crate::upstream::host_with_port(&s.host, s.port, s.protocol);
        let host_header = http::HeaderValue::from_str(&host).map_err(|_| {
            anyhow::anyhow!(
                "service {}: host {:?} is not a valid Host header",
                s.name,
                host
            )
        })?;
        services.insert(
            s.id.clone(),
            Arc::new(ServiceRt {
                service: s.clone(),
                tls,
                addr,
                dns,
                balancer,
                host_header,
                info: Arc::new(service_info(s)),
            }),
        );
    }
    let mut policy = ClientCertPolicy::default();
    let mut routes: Vec<Option<Arc<RouteRt>>> = Vec::new();
    let enabled: Vec<Arc<Route>> = config
        .routes
        .iter()
        .filter(|r| r.service.enabled)
        .cloned()
        .collect();
    for r in &enabled {
        let Some(service) = services.get(&r.service.id).cloned() else {
            continue;
        };
        let plugins = plugin::compile(&config, r);
        if let Some(req) = &plugins.client_cert {
            if r.snis.is_empty() {
                policy.all = true;
            } else {
                policy.snis.extend(r.snis.iter().cloned());
            }
            for n in &req.ca_names_der {
                if !policy.ca_names_der.contains(n) {
                    policy.ca_names_der.push(n.clone());
                }
            }
        }
        if routes.len() <= r.order {
            routes.resize_with(r.order + 1, || None);
        }
        routes[r.order] = Some(Arc::new(RouteRt {
            info: Arc::new(route_info(r)),
            route: r.clone(),
            service,
            metrics: RouteMetrics::new(r.service.name.clone(), r.name.clone()),
            flags: flags_for(&config, r),
            plugins,
        }));
    }
    let router = Router::new(&enabled);
    update_cert_metrics(&config);
    let certs = Arc::new(
        CertStore::new(&config, fallback_cert, policy).with_provider(certificate_provider(&config)),
    );
    let stream = Arc::new(stream_table(&config, &balancers, &services, &certs));
    Ok(Runtime {
        certs,
        stream,
        router,
        routes,
        services,
        balancers,
        loaded_at: SystemTime::now(),
        rewrite: plugin::compile_rewrite(&config),
        config,
    })
}

/// The certificate provider of the first global plugin instance that has one (ACME).
fn certificate_provider(
    config: &Config,
) -> Option<Arc<dyn portcullis_plugin_api::tls::CertificateProvider>> {
    config
        .plugins
        .iter()
        .filter(|p| {
            p.scope.route.is_none() && p.scope.service.is_none() && p.scope.consumer.is_none()
        })
        .find_map(|p| p.plugin.certificates())
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Https => "https",
        Protocol::Grpc => "grpc",
        Protocol::Grpcs => "grpcs",
        Protocol::Tcp => "tcp",
        Protocol::Tls => "tls",
    }
}

/// Kong's JSON shape of a service, as log serializers write it.
fn service_info(s: &Service) -> portcullis_plugin_api::EntityInfo {
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    portcullis_plugin_api::EntityInfo::new(
        s.id.clone(),
        Some(s.name.to_string()),
        serde_json::json!({
            "id": s.id,
            "name": &*s.name,
            "host": s.host,
            "port": s.port,
            "protocol": protocol_name(s.protocol),
            "path": s.path,
            "retries": s.retries,
            "connect_timeout": ms(s.connect_timeout),
            "read_timeout": ms(s.read_timeout),
            "write_timeout": ms(s.write_timeout),
            "enabled": s.enabled,
        }),
    )
}

/// Kong's JSON shape of a route, as log serializers write it.
fn route_info(r: &Route) -> portcullis_plugin_api::EntityInfo {
    let p = r.protocols;
    let protocols: Vec<&str> = [
        (p.http, "http"),
        (p.https, "https"),
        (p.grpc, "grpc"),
        (p.grpcs, "grpcs"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    let paths: Vec<String> = r
        .paths
        .iter()
        .map(|p| match p {
            crate::config::model::PathSpec::Prefix(s) => s.clone(),
            crate::config::model::PathSpec::Regex { source, .. } => format!("~{source}"),
        })
        .collect();
    portcullis_plugin_api::EntityInfo::new(
        r.id.clone(),
        Some(r.name.to_string()),
        serde_json::json!({
            "id": r.id,
            "name": &*r.name,
            "hosts": r.hosts,
            "paths": paths,
            "methods": r.methods,
            "protocols": protocols,
            "strip_path": r.strip_path,
            "preserve_host": r.preserve_host,
            "regex_priority": r.regex_priority,
            "https_redirect_status_code": r.https_redirect_status_code,
            "service": {"id": r.service.id},
        }),
    )
}

fn previous_dns(rt: &Runtime, host: &str, port: u16) -> Option<Arc<DnsName>> {
    rt.services
        .values()
        .filter_map(|r| r.dns.as_ref())
        .find(|d| d.host == host && d.port == port)
        .cloned()
}

/// `portcullis_certificate_expiry_timestamp_seconds` for every certificate of the config. Series
/// are set first and stale ones removed after, so a scrape during a reload never sees a
/// certificate missing (an alert on absent series would fire).
pub fn update_cert_metrics(config: &Config) {
    static EXPORTED: std::sync::Mutex<Vec<[String; 3]>> = std::sync::Mutex::new(Vec::new());
    let mut now: Vec<([String; 3], i64)> = Vec::new();
    let client_ids: Vec<&str> = config
        .services
        .iter()
        .filter_map(|s| s.tls.client_certificate.as_ref().map(|c| c.id.as_str()))
        .collect();
    for c in &config.certificates {
        let as_client = client_ids.contains(&c.id.as_str());
        // A certificate can serve both roles; each role gets its series.
        if !as_client
            || !c.snis.is_empty()
            || config
                .default_certificate
                .as_ref()
                .is_some_and(|d| d.id == c.id)
        {
            now.push((
                ["server".into(), c.display_name().into(), c.subject.clone()],
                c.not_after,
            ));
        }
        if as_client {
            now.push((
                ["client".into(), c.display_name().into(), c.subject.clone()],
                c.not_after,
            ));
        }
    }
    for c in &config.ca_certificates {
        for (i, cert) in c.certs.iter().enumerate() {
            let name = if i == 0 {
                c.display_name().to_string()
            } else {
                format!("{}#{i}", c.display_name())
            };
            now.push((
                ["ca".into(), name, crate::tls::x509::subject_string(cert)],
                crate::tls::x509::not_after_unix(cert),
            ));
        }
    }
    metrics::set_loaded_certificates(
        now.iter()
            .map(|(labels, not_after)| {
                let kind = match labels[0].as_str() {
                    "server" => "server",
                    "client" => "client",
                    _ => "ca",
                };
                (kind, *not_after)
            })
            .collect(),
    );
    for (labels, value) in &now {
        metrics::CERT_EXPIRY
            .with_label_values(&[&labels[0], &labels[1], &labels[2]])
            .set(*value);
    }
    let Ok(mut exported) = EXPORTED.lock() else {
        return;
    };
    for old in exported.iter() {
        if !now.iter().any(|(l, _)| l == old) {
            let _ = metrics::CERT_EXPIRY.remove_label_values(&[&old[0], &old[1], &old[2]]);
        }
    }
    *exported = now.into_iter().map(|(l, _)| l).collect();
}

pub fn scheme_default_port(p: Protocol) -> u16 {
    p.default_port()
}

/// Starts the DNS refresher thread: every `server.dns_refresh_interval` (or at once after
/// `upstream::dns::force_refresh`, on SIGHUP)
/// it re-resolves the names of the running configuration's services and balancers' targets.
pub fn spawn_dns_refresher(shared: Shared) {
    const TICK: std::time::Duration = std::time::Duration::from_millis(200);
    let spawned = std::thread::Builder::new()
        .name("dns-refresh".into())
        .spawn(move || {
            let mut last = std::time::Instant::now();
            loop {
                std::thread::sleep(TICK);
                let rt = shared.load_full();
                let forced = crate::upstream::dns::take_forced();
                if !forced && last.elapsed() < rt.config.server.dns_refresh_interval {
                    continue;
                }
                last = std::time::Instant::now();
                for s in rt.services.values() {
                    if let Some(d) = &s.dns {
                        d.refresh();
                    }
                }
                if forced {
                    // Balancers re-resolve on their own interval; SIGHUP makes it now.
                    for b in rt.balancers.all() {
                        crate::upstream::re_resolve(b);
                    }
                    tracing::info!("SIGHUP: host names resolved again");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "DNS refresher failed to start");
    }
}

/// The stream routes of a configuration, compiled with the rest of its snapshot (certificates
/// for `tls` routes, upstream TLS profiles, balancers). Routes of a disabled service serve nothing.
fn stream_table(
    config: &Config,
    balancers: &BalancerSet,
    services: &HashMap<String, Arc<ServiceRt>>,
    certs: &Arc<CertStore>,
) -> StreamTable {
    let specs = config
        .stream_routes
        .iter()
        .filter(|r| r.service.enabled)
        .map(|r| {
            let s = &r.service;
            let targets = match s.upstream.and_then(|i| config.upstreams.get(i)) {
                Some(u) => u
                    .targets
                    .iter()
                    .map(|t| StreamTarget {
                        host: t.host.clone(),
                        port: t.port,
                        weight: t.weight,
                    })
                    .collect(),
                None => vec![StreamTarget {
                    host: s.host.clone(),
                    port: s.port,
                    weight: 100,
                }],
            };
            let health = s
                .upstream
                .and_then(|i| config.upstreams.get(i))
                .and_then(|u| balancers.get(&u.name))
                .map(StreamHealth);
            let p = &r.protocols;
            let kinds = StreamKinds {
                passthrough: p.tls_passthrough,
                terminate: p.tls,
                tcp: p.tcp,
            };
            // A passthrough route's bytes are the client's own TLS: never wrapped again.
            let upstream_tls = if p.tls_passthrough {
                None
            } else {
                services
                    .get(&s.id)
                    .and_then(|svc| svc.tls.clone())
                    .and_then(|profile| match StreamTlsClient::new(profile) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            tracing::error!(service = %s.name, error = %e, "building the stream TLS client failed");
                            None
                        }
                    })
            };
            StreamRouteSpec {
                route: r.name.clone(),
                service: s.name.clone(),
                snis: r.snis.clone(),
                targets,
                connect_timeout: s.connect_timeout,
                health,
                kinds,
                sources: r.sources.clone(),
                destinations: r.destinations.clone(),
                upstream_tls,
            }
        })
        .collect();
    StreamTable::new(specs).with_certs(certs.clone())
}
