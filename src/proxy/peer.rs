//! Peer selection: which upstream address a request goes to, and how the gateway connects to it.

use super::*;

impl GatewayProxy {
    /// Picks the upstream address (balancer, literal, or DNS) and builds the peer: timeouts,
    /// HTTP version, TLS verification hook, client certificate, pool key.
    pub(super) async fn select_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        let svc = &route.service;
        let s = &svc.service;
        ctx.tries += 1;
        // A retry Pingora decided itself (a pooled connection found dead) skips
        // fail_to_connect: the previous attempt's slot is given back here.
        ctx.lease = None;
        let addr = if let Some(b) = &svc.balancer {
            let client_ip = ctx.plugin.client_ip.map(|ip| match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            });
            let headers = &session.req_header().headers;
            let lookup = |name: &str| headers.get(name).map(|v| v.as_bytes());
            let key = b.hash_key(client_ip.as_deref(), &lookup);
            match b.select(key, &ctx.tried) {
                Some((idx, addr)) => {
                    ctx.tried.push(idx);
                    ctx.lease = b.lease(idx);
                    addr
                }
                None => {
                    return Err(Error::explain(
                        NO_HEALTHY_TARGET,
                        format!("upstream {}: no healthy target", b.upstream.name),
                    ))
                }
            }
        } else if let Some(a) = svc.addr {
            a
        } else {
            // A name that never resolved (no address at compile nor since) is looked up now.
            match svc.dns.as_ref().and_then(|d| d.pick()) {
                Some(a) => a,
                None => match tokio::net::lookup_host((s.host.as_str(), s.port)).await {
                    Ok(mut it) => it.next().ok_or_else(|| {
                        Error::explain(
                            ErrorType::ConnectNoRoute,
                            format!("{} resolved to nothing", s.host),
                        )
                    })?,
                    Err(e) => {
                        return Err(Error::explain(
                            ErrorType::ConnectNoRoute,
                            format!("resolving {}: {e}", s.host),
                        ))
                    }
                },
            }
        };
        ctx.upstream_addr = Some(addr);
        if ctx.chain.is_some() {
            ctx.peer_selected = Some(Instant::now());
        }
        let tls = s.protocol.is_tls();
        let sni = svc
            .tls
            .as_ref()
            .map(|t| t.server_name.clone())
            .unwrap_or_default();
        let mut peer = HttpPeer::new(addr, tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(s.connect_timeout);
        o.read_timeout = Some(s.read_timeout);
        o.write_timeout = Some(s.write_timeout);
        o.idle_timeout = Some(std::time::Duration::from_secs(60));
        if matches!(s.protocol, Protocol::Grpc | Protocol::Grpcs) {
            // gRPC needs HTTP/2 upstream; many streams share one connection.
            o.set_http_version(2, 2);
            o.max_h2_streams = 128;
        }
        if let Some(p) = &svc.tls {
            // Verification happens in the handshake hook (see tls::upstream): Pingora itself
            // must not verify, or a failing chain would lose OpenSSL's reason.
            o.verify_cert = false;
            o.verify_hostname = false;
            if p.verify {
                o.upstream_tls_handshake_complete_hook = Some(handshake_hook(p.store.clone()));
            }
            peer.client_cert_key = p.client_cert.clone();
            peer.group_key = p.group_key;
            // Part of Pingora's pool key: a reload changing `tls.groups` opens new connections.
            o.curves = Some(std::borrow::Cow::Borrowed(p.groups));
            if !matches!(s.protocol, Protocol::Grpcs) {
                peer.options.alpn = ALPN::H1;
            }
        }
        Ok(Box::new(peer))
    }
}
