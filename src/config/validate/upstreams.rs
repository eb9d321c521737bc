//! `upstreams` and `targets`: balancer settings and health checks.

use super::*;

pub(super) fn target(t: &RawTarget, d: &mut Diags) -> Option<Target> {
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

pub(super) fn statuses(v: &[i64], default: &[u16]) -> Vec<u16> {
    if v.is_empty() {
        default.to_vec()
    } else {
        v.iter().map(|s| *s as u16).collect()
    }
}

pub(super) fn build_upstream(
    u: &RawUpstream,
    targets: Vec<Target>,
    d: &mut Diags,
) -> Option<Upstream> {
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

impl Resolver<'_> {
    pub(super) fn upstreams(&mut self, doc: &RawDoc, d: &mut Diags) {
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
        for (u, targets) in upstream_raws.iter().zip(upstream_targets) {
            if let Some(up) = build_upstream(u, targets, d) {
                self.upstreams.push(Arc::new(up));
            }
        }
    }
}
