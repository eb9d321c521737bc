//! Every metric the gateway exports, defined in one place so names and label sets stay consistent.
//!
//! All metrics live in the `prometheus` crate's default registry, which the status listener serves
//! at `GET /metrics`. Hot paths resolve label handles once (per route, when a configuration is
//! compiled) instead of formatting labels per request.

// Registration can only fail on a duplicate name, a programming error caught by any test run.
#![allow(clippy::expect_used)]

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec, Opts,
};
use std::sync::LazyLock;

/// Latency buckets in seconds: sub-millisecond resolution at the low end for a loopback proxy,
/// up to a minute for slow upstreams.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

macro_rules! metric {
    ($name:ident, $ty:ty, $reg:ident, $metric:expr, $help:expr, $labels:expr) => {
        pub static $name: LazyLock<$ty> = LazyLock::new(|| {
            $reg!($metric, $help, $labels).expect(concat!("metric ", $metric, " registers once"))
        });
    };
}

/// `portcullis_http_requests_total` is one family whose series carry `consumer` only on routes
/// where the prometheus plugin's `per_consumer` is on (SPEC §6: "and `consumer` when enabled").
/// A registry fixes one label set per name, so the two label sets live in two unregistered vecs
/// that one collector serves as a single family. Series from the two vecs never collide: those of
/// `HTTP_REQUESTS_BY_CONSUMER` always have a non-empty consumer, and a request counts in exactly
/// one of them. Dashboards summing by `service`/`route`/`code` see every request either way.
const HTTP_REQUESTS_NAME: &str = "portcullis_http_requests_total";
const HTTP_REQUESTS_HELP: &str =
    "HTTP requests by service, route and status code (and consumer where per_consumer is on)";

struct HttpRequestsFamily {
    plain: IntCounterVec,
    by_consumer: IntCounterVec,
}

impl Collector for HttpRequestsFamily {
    fn desc(&self) -> Vec<&Desc> {
        self.plain.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.plain.collect();
        let extra = self
            .by_consumer
            .collect()
            .into_iter()
            .flat_map(|mut f| f.take_metric());
        if let Some(family) = families.first_mut() {
            family.mut_metric().extend(extra);
        }
        families
    }
}

static HTTP_REQUESTS_VECS: LazyLock<(IntCounterVec, IntCounterVec)> = LazyLock::new(|| {
    let vec = |labels: &[&str]| {
        IntCounterVec::new(Opts::new(HTTP_REQUESTS_NAME, HTTP_REQUESTS_HELP), labels)
            .expect("valid metric options")
    };
    let plain = vec(&["service", "route", "code"]);
    let by_consumer = vec(&["service", "route", "code", "consumer"]);
    prometheus::register(Box::new(HttpRequestsFamily {
        plain: plain.clone(),
        by_consumer: by_consumer.clone(),
    }))
    .expect("metric portcullis_http_requests_total registers once");
    (plain, by_consumer)
});

/// `portcullis_http_requests_total{service,route,code}`.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| HTTP_REQUESTS_VECS.0.clone());

/// `portcullis_http_requests_total{service,route,code,consumer}` (same family as
/// [`HTTP_REQUESTS`]); only for requests with an identified consumer on `per_consumer` routes.
pub static HTTP_REQUESTS_BY_CONSUMER: LazyLock<IntCounterVec> =
    LazyLock::new(|| HTTP_REQUESTS_VECS.1.clone());

metric!(
    BANDWIDTH,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_bandwidth_bytes_total",
    "Bytes proxied by service, route and direction (ingress/egress)",
    &["service", "route", "direction"]
);
metric!(
    UPSTREAM_TLS_FAILURES,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_upstream_tls_failures_total",
    "Failed upstream TLS handshakes by service and OpenSSL reason",
    &["service", "reason"]
);
metric!(
    TLS_HANDSHAKES,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_tls_handshakes_total",
    "Completed TLS handshakes on proxy listeners by listener address, protocol version and negotiated key-exchange group",
    &["listener", "version", "group"]
);
metric!(
    CONNECTIONS_REFUSED,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_connections_closed_total",
    "Proxy-listener connections the gateway closed to protect itself, by listener and reason (max_connections, client_header_timeout, tls_handshake_timeout)",
    &["listener", "reason"]
);
/// Access lines dropped because stderr did not keep up (see `logging::access`).
pub static ACCESS_LOG_DROPPED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "portcullis_access_log_dropped_total",
        "Access log lines dropped because the log output did not keep up (8 MiB waiting)"
    )
    .expect("metric portcullis_access_log_dropped_total registers once")
});
metric!(
    AUTH_FAILURES,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_auth_failures_total",
    "Rejected authentications by route, plugin and reason",
    &["route", "plugin", "reason"]
);
metric!(
    PLUGIN_PANICS,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_plugin_panics_total",
    "Plugin phases that panicked (the request got 500 or the phase was skipped)",
    &["plugin", "phase"]
);
metric!(
    STREAM_CONNECTIONS,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_stream_connections_total",
    "Stream connections by route and result",
    &["route", "result"]
);
metric!(
    STREAM_ACTIVE,
    IntGaugeVec,
    register_int_gauge_vec,
    "portcullis_stream_active_connections",
    "Open stream connections by route",
    &["route"]
);
metric!(
    STREAM_BYTES,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_stream_bytes_total",
    "Stream bytes by route and direction (upstream/downstream)",
    &["route", "direction"]
);
/// `portcullis_certificate_expiry_timestamp_seconds{kind,name,subject}`, defined in the plugin
/// API so that plugins providing certificates (ACME) report in the same family.
pub static CERT_EXPIRY: LazyLock<IntGaugeVec> =
    LazyLock::new(|| portcullis_plugin_api::tls::certificate_expiry().clone());
metric!(
    TARGET_HEALTH,
    IntGaugeVec,
    register_int_gauge_vec,
    "portcullis_upstream_target_health",
    "1 for the current health state of each upstream target",
    &["upstream", "target", "state"]
);
metric!(
    CONFIG_RELOADS,
    IntCounterVec,
    register_int_counter_vec,
    "portcullis_config_reloads_total",
    "Configuration reload attempts by result",
    &["result"]
);

pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "portcullis_http_request_duration_seconds",
        "Time from request received to response finished, by service and route",
        &["service", "route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "portcullis_upstream_duration_seconds",
        "Time from upstream request sent to upstream response headers, by service and route",
        &["service", "route"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

/// `portcullis_certificates_expired{kind}`: loaded certificates past their notAfter. Counted at
/// scrape time against the clock, so a certificate that lapses while loaded is counted without
/// waiting for a reload; every kind always has a series (0 included) so alerts need no `absent()`.
struct CertificatesExpired(IntGaugeVec);

const CERT_KINDS: [&str; 3] = ["server", "client", "ca"];

/// (kind, notAfter) of every loaded certificate, replaced whole at each load.
static LOADED_CERT_EXPIRY: std::sync::Mutex<Vec<(&'static str, i64)>> =
    std::sync::Mutex::new(Vec::new());

impl Collector for CertificatesExpired {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if let Ok(loaded) = LOADED_CERT_EXPIRY.lock() {
            for kind in CERT_KINDS {
                let n = loaded
                    .iter()
                    .filter(|(k, not_after)| *k == kind && *not_after < now)
                    .count();
                self.0.with_label_values(&[kind]).set(n as i64);
            }
        }
        self.0.collect()
    }
}

static CERTIFICATES_EXPIRED: LazyLock<()> = LazyLock::new(|| {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "portcullis_certificates_expired",
            "Loaded certificates past their notAfter, by kind (server, client, ca)",
        ),
        &["kind"],
    )
    .expect("valid metric options");
    prometheus::register(Box::new(CertificatesExpired(gauge)))
        .expect("metric portcullis_certificates_expired registers once");
});

/// Records the loaded certificates for `portcullis_certificates_expired`: (kind, notAfter), kind
/// one of `server`, `client`, `ca`.
pub fn set_loaded_certificates(certs: Vec<(&'static str, i64)>) {
    LazyLock::force(&CERTIFICATES_EXPIRED);
    if let Ok(mut loaded) = LOADED_CERT_EXPIRY.lock() {
        *loaded = certs;
    }
}

/// Drops the series of routes and services a reload removed, so `/metrics` neither grows with
/// every renamed route nor keeps reporting entities that no longer exist. Series of entities
/// still configured stay (their counters must not restart).
pub fn forget_removed(old: &crate::config::Config, new: &crate::config::Config) {
    use std::collections::HashSet;
    let pairs = |c: &crate::config::Config| -> HashSet<(String, String)> {
        c.routes
            .iter()
            .map(|r| (r.service.name.to_string(), r.name.to_string()))
            .collect()
    };
    let (old_pairs, new_pairs) = (pairs(old), pairs(new));
    let gone_pair = |l: &Labels| {
        let pair = (label(l, "service"), label(l, "route"));
        old_pairs.contains(&pair) && !new_pairs.contains(&pair)
    };
    prune(&HTTP_REQUESTS, &gone_pair);
    prune(&HTTP_REQUESTS_BY_CONSUMER, &gone_pair);
    prune(&HTTP_DURATION, &gone_pair);
    prune(&UPSTREAM_DURATION, &gone_pair);
    prune(&BANDWIDTH, &gone_pair);

    let services = |c: &crate::config::Config| -> HashSet<String> {
        c.services.iter().map(|s| s.name.to_string()).collect()
    };
    let (old_services, new_services) = (services(old), services(new));
    prune(&UPSTREAM_TLS_FAILURES, &|l: &Labels| {
        let s = label(l, "service");
        old_services.contains(&s) && !new_services.contains(&s)
    });

    let routes = |c: &crate::config::Config| -> HashSet<String> {
        c.routes
            .iter()
            .map(|r| r.name.to_string())
            .chain(c.stream_routes.iter().map(|r| r.name.to_string()))
            .collect()
    };
    let (old_routes, new_routes) = (routes(old), routes(new));
    let gone_route = |l: &Labels| {
        let r = label(l, "route");
        old_routes.contains(&r) && !new_routes.contains(&r)
    };
    prune(&AUTH_FAILURES, &gone_route);
    prune(&STREAM_CONNECTIONS, &gone_route);
    prune(&STREAM_BYTES, &gone_route);
    prune(&STREAM_ACTIVE, &gone_route);
}

type Labels = Vec<(String, String)>;

fn label(labels: &Labels, name: &str) -> String {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Removes every series of `vec` whose labels `stale` selects.
fn prune<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    stale: &dyn Fn(&Labels) -> bool,
) {
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels: Labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            if stale(&labels) {
                let by_name: std::collections::HashMap<&str, &str> = labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let _ = vec.remove(&by_name);
            }
        }
    }
}
