//! `services` and `routes` (HTTP and stream): URLs, TLS toward upstreams, match criteria.

use super::*;

pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(60_000);

pub(super) fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

pub(super) fn bad_url<T>(url: &V<String>, d: &mut Diags) -> Option<T> {
    d.err(
        &url.loc,
        &url.path,
        format!(
            "invalid url {:?}: expected scheme://host[:port][/path]",
            url.v
        ),
    );
    None
}

#[allow(clippy::too_many_arguments)]
pub(super) fn build_service(
    s: &RawService,
    cas: &[Arc<CaCertificate>],
    ca_index: &Index,
    certs: &[Arc<Certificate>],
    cert_index: &Index,
    upstreams: &HashMap<&str, usize>,
    d: &mut Diags,
) -> Option<Service> {
    let protocol;
    let host;
    let port;
    let path;
    if let Some(url) = &s.url {
        match url.v.split_once("://") {
            Some((scheme, rest)) => {
                protocol = Protocol::parse(scheme);
                if protocol.is_none() {
                    d.err(
                        &url.loc,
                        &url.path,
                        format!(
                            "unsupported scheme {scheme:?} (http, https, grpc, grpcs, tcp, tls)"
                        ),
                    );
                    return None;
                }
                let (authority, p) = match rest.find('/') {
                    Some(i) => (&rest[..i], Some(rest[i..].to_string())),
                    None => (rest, None),
                };
                let default_port = protocol.map(|p| p.default_port()).unwrap_or(80);
                let (h, pt) = split_host_port(authority, default_port);
                if h.is_none() || pt.is_none() {
                    return bad_url(url, d);
                }
                host = h;
                port = pt;
                path = p;
                // Kong expands `url` over the other fields: its parts win. A field that says
                // something else is almost certainly stale, so say which value applies.
                let url_says = |field: &str,
                                given: &str,
                                applied: &str,
                                loc: &Loc,
                                at: &str,
                                d: &mut Diags| {
                    if given != applied {
                        d.warn(
                            loc,
                            at,
                            format!("`{field}: {given}` disagrees with `url`, whose {field} `{applied}` applies (Kong expands `url` over `{field}`)"),
                        );
                    }
                };
                if let (Some(v), Some(applied)) = (&s.protocol, protocol) {
                    url_says("protocol", &v.v, applied.as_str(), &v.loc, &v.path, d);
                }
                if let (Some(v), Some(applied)) = (&s.host, &host) {
                    url_says("host", &v.v, applied, &v.loc, &v.path, d);
                }
                if let (Some(v), Some(applied)) = (&s.port, port) {
                    url_says(
                        "port",
                        &v.v.to_string(),
                        &applied.to_string(),
                        &v.loc,
                        &v.path,
                        d,
                    );
                }
                if let Some(v) = &s.path {
                    url_says(
                        "path",
                        &v.v,
                        path.as_deref().unwrap_or("(none)"),
                        &v.loc,
                        &v.path,
                        d,
                    );
                }
            }
            None => {
                return bad_url(url, d);
            }
        }
    } else {
        protocol = s.protocol.as_ref().and_then(|p| Protocol::parse(&p.v));
        if let Some(p) = &s.protocol {
            if protocol.is_none() {
                d.err(
                    &p.loc,
                    &p.path,
                    format!(
                        "unsupported protocol {:?} (http, https, grpc, grpcs, tcp, tls)",
                        p.v
                    ),
                );
                return None;
            }
        }
        match &s.host {
            Some(h) => host = Some(h.v.clone()),
            None => {
                d.err(
                    &s.loc,
                    &s.path_str,
                    "a service needs `url` or `host` (with optional protocol, port, path)",
                );
                return None;
            }
        }
        port = s.port.as_ref().map(|p| p.v as u16);
        path = s.path.as_ref().map(|p| p.v.clone());
    }
    let protocol = protocol.unwrap_or(Protocol::Http);
    let host = host?;
    let port = port.unwrap_or(protocol.default_port());
    // Sent upstream as the Host header (unless preserve_host): checked here so compiling a
    // validated configuration cannot fail.
    if http::HeaderValue::from_str(&host).is_err() {
        let (loc, path) = match (&s.host, &s.url) {
            (Some(v), _) => (&v.loc, v.path.as_str()),
            (None, Some(u)) => (&u.loc, u.path.as_str()),
            (None, None) => (&s.loc, s.path_str.as_str()),
        };
        d.err(
            loc,
            path,
            format!("host {host:?} cannot be sent as a Host header"),
        );
        return None;
    }
    if let Some(p) = &path {
        if !p.starts_with('/') {
            d.err(
                s.url.as_ref().map(|u| &u.loc).unwrap_or(&s.loc),
                &s.path_str,
                "service path must start with /",
            );
        }
    }
    let id =
        s.id.as_ref()
            .or(s.name.as_ref())
            .map(|v| v.v.clone())
            .unwrap_or_else(|| format!("service-{host}-{port}"));
    let name: Arc<str> = Arc::from(s.name.as_ref().map(|v| v.v.as_str()).unwrap_or(id.as_str()));
    let ca_certificates: Vec<Arc<CaCertificate>> = s
        .ca_certificates
        .iter()
        .filter_map(|r| ca_index.resolve(r, d).and_then(|i| cas.get(i)).cloned())
        .collect();
    let client_certificate = s
        .client_certificate
        .as_ref()
        .and_then(|r| cert_index.resolve(r, d))
        .and_then(|i| certs.get(i))
        .cloned();
    let verify = s.tls_verify.unwrap_or(true);
    let verify_depth = s.tls_verify_depth.as_ref().map(|v| v.v as u8);
    if let Some(v) = s.tls_server_name.as_ref().filter(|v| v.v.trim().is_empty()) {
        // OpenSSL takes an empty host name as "no host to check": the certificate of any name
        // would pass. Only `tls_verify: false` may turn name checks off.
        d.err(
            &v.loc,
            &v.path,
            "tls_server_name must not be empty (omit it to verify the service host; only tls_verify: false disables verification)",
        );
    }
    let server_name = s
        .tls_server_name
        .as_ref()
        .map(|v| v.v.clone())
        .unwrap_or_else(|| host.clone());
    // The name OpenSSL checks the upstream certificate against: an address or a host name it
    // accepts (checked here so compiling the TLS profile cannot fail on it).
    if !crate::tls::upstream::verifiable_name(&server_name) {
        let (loc, path) = match &s.tls_server_name {
            Some(v) => (&v.loc, v.path.clone()),
            None => (&s.loc, s.path_str.clone()),
        };
        d.err(
            loc,
            &path,
            format!("{server_name:?} cannot be verified as a TLS server name"),
        );
    }
    // Every certificate of every bundle: services trusting [A, B] and [A] must not share
    // connections verified by only one of them.
    let group_key = hash_of(&(
        verify,
        verify_depth,
        ca_certificates
            .iter()
            .flat_map(|c| c.certs.iter().map(fingerprint))
            .collect::<Vec<_>>(),
        client_certificate.as_ref().map(|c| c.fingerprint.clone()),
        server_name.clone(),
        protocol,
    ));
    let upstream = upstreams.get(host.as_str()).copied();
    Some(Service {
        id,
        name,
        protocol,
        host,
        port,
        path,
        retries: s.retries.unwrap_or(5) as usize,
        connect_timeout: s.connect_timeout.unwrap_or(DEFAULT_TIMEOUT),
        read_timeout: s.read_timeout.unwrap_or(DEFAULT_TIMEOUT),
        write_timeout: s.write_timeout.unwrap_or(DEFAULT_TIMEOUT),
        tls: Arc::new(UpstreamTls {
            verify,
            verify_depth,
            ca_certificates,
            client_certificate,
            server_name,
            group_key,
        }),
        upstream,
        enabled: s.enabled,
    })
}

/// `sources` / `destinations` entries: `ip` (an address or CIDR range) and/or `port`.
pub(super) fn nets(raw: &[RawNet], d: &mut Diags) -> Vec<NetMatch> {
    raw.iter()
        .filter_map(|n| {
            if n.ip.is_none() && n.port.is_none() {
                d.err(&n.loc, &n.path, "needs `ip`, `port` or both");
                return None;
            }
            let net = match &n.ip {
                Some(ip) => Some(parse_net(ip, d)?),
                None => None,
            };
            Some(NetMatch {
                net,
                port: n.port.as_ref().map(|p| p.v as u16),
            })
        })
        .collect()
}

/// Kong's rules for stream routes (routes_subschemas.lua and the routes entity checks), plus
/// the service protocols that can carry them.
pub(super) fn check_stream_route(
    r: &RawRoute,
    protocols: &Protocols,
    service: &Service,
    snis: &[String],
    has_addresses: bool,
    d: &mut Diags,
) {
    let kind = if protocols.tls_passthrough {
        "tls_passthrough"
    } else if protocols.tls {
        "tls"
    } else {
        "tcp"
    };
    if protocols.tls_passthrough && snis.is_empty() {
        d.err(
            &r.loc,
            &r.path,
            "a tls_passthrough route needs `snis` (the gateway routes by SNI without decrypting)",
        );
    }
    if (protocols.tls || protocols.tcp) && snis.is_empty() && !has_addresses {
        d.err(
            &r.loc,
            &r.path,
            format!("a {kind} route needs at least one of `snis`, `sources` or `destinations`"),
        );
    }
    if !protocols.tls_passthrough && !protocols.tls && !r.snis.is_empty() {
        d.err(
            &r.snis[0].loc,
            &format!("{}.snis", r.path),
            "'snis' can only be set when 'protocols' is https, grpcs, tls or tls_passthrough (a tcp route sees no SNI)",
        );
    }
    // tcp and tls routes relay plain bytes to a `tcp` service, or originate TLS to a `tls`
    // service (as Kong does). A tls_passthrough route relays the client's own TLS unchanged
    // whichever of the two its service says.
    if !matches!(service.protocol, Protocol::Tcp | Protocol::Tls) {
        let wanted = if protocols.tls_passthrough {
            "tcp"
        } else {
            "tcp or tls"
        };
        d.err(
            &r.loc,
            &r.path,
            format!(
                "a {kind} route needs a service with protocol {wanted} (service {:?} is {})",
                &*service.name,
                service.protocol.as_str()
            ),
        );
    }
    let fields = [
        ("hosts", r.hosts.first().map(|v| &v.loc)),
        ("paths", r.paths.first().map(|v| &v.loc)),
        ("methods", r.methods.first().map(|v| &v.loc)),
        ("headers", r.headers.first().map(|(k, _)| &k.loc)),
    ];
    for (field, at) in fields {
        if let Some(loc) = at {
            d.err(
                loc,
                &format!("{}.{field}", r.path),
                format!("cannot set '{field}' when 'protocols' is {kind} (stream routes match on snis, sources and destinations only)"),
            );
        }
    }
}

pub(super) fn build_route(
    r: &RawRoute,
    service: Arc<Service>,
    order: usize,
    d: &mut Diags,
) -> Option<Route> {
    let errors_before = d.errors.len();
    let mut protocols = Protocols::default();
    if r.protocols.is_empty() {
        protocols.http = true;
        protocols.https = true;
    }
    for p in &r.protocols {
        match p.v.as_str() {
            "http" => protocols.http = true,
            "https" => protocols.https = true,
            "grpc" => protocols.grpc = true,
            "grpcs" => protocols.grpcs = true,
            "tls_passthrough" => protocols.tls_passthrough = true,
            "tls" => protocols.tls = true,
            "tcp" => protocols.tcp = true,
            other => d.err(
                &p.loc,
                &p.path,
                format!(
                    "unsupported protocol {other:?} (http, https, grpc, grpcs, tls_passthrough, tls, tcp)"
                ),
            ),
        }
    }
    if protocols.tls_passthrough && r.protocols.len() > 1 {
        let p = &r.protocols[0];
        d.err(
            &p.loc,
            &format!("{}.protocols", r.path),
            "tls_passthrough cannot be combined with other protocols",
        );
    }
    let http_kind = protocols.http || protocols.https || protocols.grpc || protocols.grpcs;
    if (protocols.tls || protocols.tcp) && http_kind {
        // Kong's mutually exclusive protocol sets: a route is served by one subsystem.
        let p = &r.protocols[0];
        d.err(
            &p.loc,
            &format!("{}.protocols", r.path),
            "tcp and tls (stream) cannot be combined with http, https, grpc or grpcs",
        );
    }
    let sources = nets(&r.sources, d);
    let destinations = nets(&r.destinations, d);
    let hosts: Vec<String> = r
        .hosts
        .iter()
        .filter_map(|h| {
            // Kong allows a port in hosts (`example.com:8000`): matched against the Host header.
            check_wildcard(h, "host", d)
        })
        .collect();
    let mut paths = Vec::new();
    for p in &r.paths {
        if let Some(src) = p.v.strip_prefix('~') {
            match regex::Regex::new(&format!("^(?:{src})")) {
                Ok(re) => paths.push(PathSpec::Regex {
                    source: src.to_string(),
                    re,
                }),
                Err(e) => {
                    let msg = e.to_string();
                    let short = msg.lines().last().unwrap_or("").trim();
                    d.err(&p.loc, &p.path, format!("regex does not compile: {short}"));
                }
            }
        } else if p.v.starts_with('/') {
            paths.push(PathSpec::Prefix(p.v.clone()));
        } else {
            d.err(
                &p.loc,
                &p.path,
                format!("path {:?} must start with / (prefix) or ~ (regex)", p.v),
            );
        }
    }
    let methods: Vec<String> = r
        .methods
        .iter()
        .filter_map(|m| {
            let up = m.v.to_ascii_uppercase();
            if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                d.err(&m.loc, &m.path, format!("invalid method {:?}", m.v));
                None
            } else {
                Some(up)
            }
        })
        .collect();
    let mut headers = Vec::new();
    for (name, values) in &r.headers {
        let lname = name.v.to_ascii_lowercase();
        if lname == "host" {
            d.err(
                &name.loc,
                &name.path,
                "use `hosts` to match the Host header",
            );
            continue;
        }
        if values.is_empty() {
            d.err(&name.loc, &name.path, "header needs at least one value");
            continue;
        }
        let mut vals = Vec::new();
        for v in values {
            if let Some(re) = v.v.strip_prefix("~*") {
                if let Err(e) = regex::Regex::new(re) {
                    d.err(&v.loc, &v.path, format!("regex does not compile: {e}"));
                }
            }
            vals.push(v.v.clone());
        }
        headers.push((lname, vals));
    }
    let snis: Vec<String> = r
        .snis
        .iter()
        .filter_map(|s| check_wildcard(s, "SNI", d))
        .collect();
    if protocols.is_stream() {
        check_stream_route(
            r,
            &protocols,
            &service,
            &snis,
            // As written: an entry with an error of its own is not also "missing".
            !r.sources.is_empty() || !r.destinations.is_empty(),
            d,
        );
    } else {
        if hosts.is_empty()
            && paths.is_empty()
            && methods.is_empty()
            && headers.is_empty()
            && snis.is_empty()
            && r.paths.is_empty()
            && r.hosts.is_empty()
        {
            d.err(
                &r.loc,
                &r.path,
                "a route needs at least one of `hosts`, `paths`, `methods`, `headers` or `snis`",
            );
        }
        if matches!(service.protocol, Protocol::Tcp | Protocol::Tls) {
            d.err(
                &r.loc,
                &r.path,
                format!(
                    "service {:?} has protocol {}, which only stream routes (tcp, tls, tls_passthrough) can use",
                    &*service.name,
                    service.protocol.as_str()
                ),
            );
        }
        for (field, list) in [("sources", &r.sources), ("destinations", &r.destinations)] {
            if let Some(first) = list.first() {
                d.err(
                    &first.loc,
                    &format!("{}.{field}", r.path),
                    format!("cannot set '{field}' when 'protocols' is http, https, grpc or grpcs (only stream routes match on addresses)"),
                );
            }
        }
    }
    let https_redirect_status_code = match &r.https_redirect_status_code {
        Some(v) if [301, 302, 307, 308, 426].contains(&v.v) => v.v as u16,
        Some(v) => {
            d.err(
                &v.loc,
                &v.path,
                "https_redirect_status_code must be one of 301, 302, 307, 308, 426",
            );
            426
        }
        None => 426,
    };
    if d.errors.len() > errors_before {
        return None;
    }
    let id =
        r.id.as_ref()
            .or(r.name.as_ref())
            .map(|v| v.v.clone())
            .unwrap_or_else(|| format!("route-{order}"));
    let name: Arc<str> = Arc::from(r.name.as_ref().map(|v| v.v.as_str()).unwrap_or(&id));
    Some(Route {
        id,
        name,
        service,
        protocols,
        hosts,
        paths,
        methods,
        headers,
        snis,
        sources,
        destinations,
        strip_path: r.strip_path.unwrap_or(true),
        preserve_host: r.preserve_host.unwrap_or(false),
        regex_priority: r.regex_priority.unwrap_or(0),
        https_redirect_status_code,
        order,
    })
}

impl<'a> Resolver<'a> {
    pub(super) fn services(&mut self, doc: &'a RawDoc, d: &mut Diags) {
        let upstream_by_name: HashMap<&str, usize> = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        for s in &doc.services {
            let svc = build_service(
                s,
                &self.cas,
                &self.ca_index,
                &self.certs,
                &self.cert_index,
                &upstream_by_name,
                d,
            );
            let idx = self.services.len();
            let Some(svc) = svc else {
                continue;
            };
            if let Some(v) = &s.id {
                self.svc_index.add(v, idx, "id", d);
            } else {
                self.svc_index.add_plain(&svc.id, idx);
            }
            if let Some(v) = &s.name {
                self.svc_index.add(v, idx, "name", d);
            }
            for r in &s.routes {
                self.route_raws.push((r, Some(idx)));
            }
            for p in &s.plugins {
                self.plugin_raws.push((
                    p,
                    Scope {
                        service: Some(svc.id.clone()),
                        ..Scope::default()
                    },
                ));
            }
            self.services.push(Arc::new(svc));
        }
        for r in &doc.routes {
            let svc = match &r.service {
                Some(reference) => self.svc_index.resolve(reference, d),
                None => {
                    d.err(
                        &r.loc,
                        &r.path,
                        "a top-level route needs a `service` reference",
                    );
                    None
                }
            };
            if svc.is_some() {
                self.route_raws.push((r, svc));
            }
        }
    }

    pub(super) fn routes(&mut self, d: &mut Diags) {
        for (order, (r, svc)) in self.route_raws.iter().enumerate() {
            let Some(service) = svc.and_then(|i| self.services.get(i)).cloned() else {
                continue;
            };
            let Some(route) = build_route(r, service, order, d) else {
                continue;
            };
            let idx = order;
            if let Some(v) = &r.id {
                self.route_index.add(v, idx, "id", d);
            }
            if let Some(v) = &r.name {
                self.route_index.add(v, idx, "name", d);
            }
            for p in &r.plugins {
                self.plugin_raws.push((
                    p,
                    Scope {
                        route: Some(route.id.clone()),
                        ..Scope::default()
                    },
                ));
            }
            if route.protocols.is_stream() {
                self.stream_routes.push(Arc::new(route));
            } else {
                self.routes.push(Arc::new(route));
            }
        }
        self.route_ids = self
            .route_raws
            .iter()
            .enumerate()
            .filter_map(|(i, (r, _))| {
                r.id.as_ref()
                    .or(r.name.as_ref())
                    .map(|v| (i, v.v.clone()))
                    .or_else(|| Some((i, format!("route-{i}"))))
            })
            .collect();
    }

    /// A stream route no stream listener can serve is a configuration mistake worth a warning.
    pub(super) fn warn_unserved_stream_routes(&self, listeners: &Listeners, d: &mut Diags) {
        for r in &self.stream_routes {
            let served = listeners.stream.iter().any(|l| {
                if l.tls {
                    r.protocols.tls || r.protocols.tls_passthrough
                } else {
                    r.protocols.tcp
                }
            });
            if let (false, Some((raw, _))) = (served, self.route_raws.get(r.order)) {
                let hint = if r.protocols.tcp && !r.protocols.tls {
                    "a listeners.stream entry with `tls: false`"
                } else {
                    "a listeners.stream entry (`tls: true` is the default)"
                };
                d.warn(
                    &raw.loc,
                    &raw.path,
                    format!("no stream listener serves this route: add {hint}"),
                );
            }
        }
    }
}
