//! Gateway settings: `listeners`, `server`, `tls`.

use super::*;

/// `tls.groups`: names OpenSSL knows, at least one, no repeats.
pub(super) fn tls_groups(doc: &RawDoc, d: &mut Diags) -> Vec<String> {
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

pub(super) fn check_address(a: &V<String>, d: &mut Diags) -> Option<String> {
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
pub(super) fn addresses_clash(a: &str, b: &str) -> bool {
    let (Some((ha, pa)), Some((hb, pb))) = (a.rsplit_once(':'), b.rsplit_once(':')) else {
        return a == b;
    };
    let wild = |h: &str| h == "0.0.0.0" || h == "[::]" || h == "::" || h.is_empty();
    pa == pb && (ha == hb || wild(ha) || wild(hb))
}

pub(super) fn build_listeners(doc: &RawDoc, d: &mut Diags) -> Listeners {
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
pub(super) fn finalize_listeners(
    mut l: Listeners,
    doc: &RawDoc,
    stream_routes: &[Arc<Route>],
) -> Listeners {
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

pub(super) fn build_server(doc: &RawDoc, d: &mut Diags) -> ServerSettings {
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
