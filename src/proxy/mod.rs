//! The HTTP proxy: one `GatewayProxy` (Pingora `ProxyHttp`) per listener. The route is matched
//! first and kept in the per-request context; every later hook reads from it.

mod checks;
mod forward;
pub mod guard;
mod observe;
mod peer;
pub mod request_line;
pub mod respond;

use checks::*;
use forward::*;

use crate::config::model::Protocol;
use crate::metrics;
use crate::plugin::chain::{self, Chain};
use crate::plugin::headers::{RequestEdit, ResponseEdit};
use crate::routing::{normalize_path, upstream_path, RequestInfo, Routed};
use crate::runtime::{RouteRt, Runtime, Shared};
use crate::tls::upstream::{handshake_hook, UpstreamVerdict};
use crate::tls::ConnInfo;
use crate::upstream::Outcome;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, ALPN};
use pingora::{Error, ErrorSource, ErrorType};
use portcullis_plugin_api::{
    is_identity_header, LogEntry, Phases, RequestCtx, RequestView, ResponseHead, Try,
    MAX_BUFFERED_REQUEST_BODY,
};
use respond::{ErrorKind, ResponseSpec};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Pingora error types of our own, mapped to Kong's responses in `respond`.
pub const NO_HEALTHY_TARGET: ErrorType = ErrorType::Custom("NoHealthyTarget");
pub const UPSTREAM_TLS_REJECTED: ErrorType = ErrorType::Custom("UpstreamTlsRejected");
/// The reason logged and counted when a verifying service gets a connection without a verdict.
const NO_VERDICT: &str = "no verification result for this connection";

pub struct GatewayProxy {
    pub shared: Shared,
    /// Whether this listener terminates TLS (decides http vs https for routing).
    pub tls: bool,
    /// The listener's port, and as a ready `X-Forwarded-Port` value.
    pub port: u16,
    pub port_header: http::HeaderValue,
}

impl GatewayProxy {
    pub fn new(shared: Shared, tls: bool, address: &str) -> GatewayProxy {
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0);
        GatewayProxy {
            shared,
            tls,
            port,
            port_header: http::HeaderValue::from(port),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    pub rt: Option<Arc<Runtime>>,
    pub route: Option<Arc<RouteRt>>,
    matched_len: usize,
    pub plugin: RequestCtx,
    pub start: Instant,
    upstream_start: Option<Instant>,
    upstream_ttfb: Option<f64>,
    /// The status the upstream answered, for log plugins (Kong's `upstream_status`).
    upstream_status: Option<u16>,
    pub upstream_addr: Option<SocketAddr>,
    /// Targets of the balancer tried for this request.
    tried: Vec<usize>,
    /// The slot held on the balancer target of the current attempt.
    lease: Option<crate::upstream::Lease>,
    tries: usize,
    pub tls_failure: Option<String>,
    pub tls_version: Option<&'static str>,
    /// The key-exchange group the client's handshake negotiated.
    pub tls_group: Option<&'static str>,
    /// Set when the gateway answered itself (404, 426, plugin responses).
    pub responded: Option<u16>,
    original_host: Option<String>,
    /// The plugin chain of this request (the consumer's once one is identified); `None` on
    /// routes without plugins, so they pay for no phase.
    pub chain: Option<Arc<Chain>>,
    /// A replacement request body still to be sent upstream.
    body_replacement: Option<Bytes>,
    /// Connection attempts, for log plugins (Kong's `tries`).
    tries_log: Vec<Try>,
    /// The path and query sent upstream, for log plugins.
    upstream_uri: Option<String>,
    /// When the current try's peer was chosen (its connect time ends in `connected_to_upstream`).
    peer_selected: Option<Instant>,
    /// The connection's peer address; `plugin.client_ip` is the client a trusted proxy reported.
    peer_ip: Option<IpAddr>,
}

impl Ctx {
    pub fn request_id(&self) -> &str {
        &self.plugin.request_id
    }
}

fn conn_info(session: &Session) -> Option<&ConnInfo> {
    session
        .digest()
        .and_then(|d: &Digest| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<ConnInfo>())
}

impl GatewayProxy {
    /// Applies what the access phase asked to change in the upstream request: request line,
    /// body length, headers. Runs on every try (Pingora calls the hook per attempt), so nothing
    /// is consumed from the context.
    fn apply_plugin_request_edits(&self, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
        let p = &ctx.plugin;
        let rw = &p.upstream_rewrite;
        if let Some(m) = &rw.method {
            req.set_method(m.clone());
        }
        if rw.path.is_some() || rw.query.is_some() {
            let path = rw
                .path
                .clone()
                .unwrap_or_else(|| req.uri.path().to_string());
            let query = match &rw.query {
                Some(q) => q.clone(),
                None => req.uri.query().unwrap_or("").to_string(),
            };
            let uri = if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            };
            match uri.parse::<http::Uri>() {
                Ok(u) => req.set_uri(u),
                Err(e) => {
                    return Err(Error::explain(
                        ErrorType::InternalError,
                        format!("a plugin's upstream uri is invalid: {e}"),
                    ))
                }
            }
        }
        if let Some(b) = &p.request_body_replacement {
            req.remove_header(&http::header::TRANSFER_ENCODING);
            req.insert_header(http::header::CONTENT_LENGTH, b.len().to_string())?;
        }
        for n in &p.upstream_headers_remove {
            req.remove_header(n);
        }
        for (n, v) in &p.upstream_headers {
            req.insert_header(n.clone(), v.clone())?;
        }
        for (n, v) in &p.upstream_headers_append {
            req.append_header(n.clone(), v.clone())?;
        }
        Ok(())
    }

    /// Reads the whole request body (for plugins that declared `BUFFER_REQUEST_BODY`) into the
    /// plugin context. Pingora replays a body read here from its retry buffer, which holds
    /// 64 KiB: a longer body could not be forwarded afterwards, so it is refused with 413.
    async fn buffer_request_body(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        session.enable_retry_buffering();
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > MAX_BUFFERED_REQUEST_BODY {
                let r = portcullis_plugin_api::PluginResponse::message(
                    413,
                    "Request size limit exceeded",
                );
                respond::send(session, ctx, ResponseSpec::Plugin(r)).await?;
                return Ok(false);
            }
            body.extend_from_slice(&chunk);
        }
        ctx.plugin.request_body = Some(body.freeze());
        Ok(true)
    }

    async fn run_access(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &RouteRt,
    ) -> Result<Option<ResponseSpec>> {
        if route.plugins.is_empty() {
            return Ok(None);
        }
        let mut current = route.plugins.base.clone();
        ctx.plugin.route_info = Some(route.info.clone());
        ctx.plugin.service_info = Some(route.service.info.clone());
        if route.plugins.phases().contains(Phases::BUFFER_REQUEST_BODY)
            && !self.buffer_request_body(session, ctx).await?
        {
            return Ok(None);
        }
        let req = session.req_header();
        let view = RequestView {
            method: &req.method,
            uri: &req.uri,
            headers: &req.headers,
        };
        let answer = chain::access(&route.plugins, &mut current, &view, &mut ctx.plugin).await;
        ctx.chain = Some(current);
        ctx.body_replacement = ctx.plugin.request_body_replacement.clone();
        Ok(answer.map(ResponseSpec::Plugin))
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = Ctx;

    /// No downstream modules. Pingora's default registers its response-compression module
    /// switched off, which still builds a module context and runs its filters on every request
    /// (~1 % of a keep-alive request); the gateway passes bodies through as the upstream sent
    /// them, as Kong does.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        // Pingora makes the context right after parsing the request header.
        guard::header_received();
        Ctx {
            rt: None,
            route: None,
            matched_len: 0,
            plugin: RequestCtx::default(),
            start: Instant::now(),
            upstream_start: None,
            upstream_ttfb: None,
            upstream_status: None,
            upstream_addr: None,
            tried: Vec::new(),
            lease: None,
            tries: 0,
            tls_failure: None,
            tls_version: None,
            tls_group: None,
            responded: None,
            original_host: None,
            chain: None,
            body_replacement: None,
            tries_log: Vec::new(),
            upstream_uri: None,
            peer_selected: None,
            peer_ip: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let rt = self.shared.load_full();
        ctx.rt = Some(rt.clone());

        // X-Request-Id: the client's when it looks sane, else ours.
        let rid = session
            .req_header()
            .headers
            .get("x-request-id")
            .map(|v| v.as_bytes())
            .filter(|v| valid_request_id(v))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned);
        ctx.plugin.request_id = rid.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());

        // A target with spaces or control characters: nginx answers 400, Pingora would have
        // proxied it percent-encoded (see `request_line`).
        if let Some(h1) = session.as_downstream().as_http1() {
            let head = h1.get_headers_raw_bytes();
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if request_line::escaped_by_pingora(h1.stream(), line) {
                respond::send(session, ctx, ResponseSpec::Error(ErrorKind::BadRequest)).await?;
                return Ok(true);
            }
        }

        // nginx (and so Kong) refuse headers beyond 4 × 8 KiB buffers; Pingora alone would take
        // about 1 MiB and forward it. Refuse oversized headers before doing anything with them.
        let (mut total, mut largest) = (0usize, 0usize);
        for (n, v) in session.req_header().headers.iter() {
            let len = n.as_str().len() + v.len();
            total += len;
            largest = largest.max(len);
        }
        if largest > MAX_HEADER_BYTES || total > MAX_HEADERS_TOTAL_BYTES {
            respond::send(
                session,
                ctx,
                ResponseSpec::Error(ErrorKind::HeadersTooLarge),
            )
            .await?;
            return Ok(true);
        }

        // RFC 9112 §3.2: an HTTP/1.1 request without Host, with several, or with a Host that is
        // not a host[:port] gets 400 (nginx, and so Kong, refuse the same). Routing by a host
        // like `a/../b` or one with spaces would otherwise be routing by garbage.
        if !host_header_ok(session.req_header()) {
            respond::send(session, ctx, ResponseSpec::Error(ErrorKind::BadRequest)).await?;
            return Ok(true);
        }

        // Identity headers are the gateway's: drop what the client sent before any plugin runs.
        let spoofed: Vec<http::HeaderName> = session
            .req_header()
            .headers
            .keys()
            .filter(|n| is_identity_header(n.as_str()))
            .cloned()
            .collect();
        for n in spoofed {
            session.req_header_mut().remove_header(&n);
        }

        let (sni, client_cert) = match conn_info(session) {
            Some(ci) => {
                ctx.tls_group = ci.group;
                (ci.sni.clone(), ci.client_certificate.clone())
            }
            None => (None, None),
        };
        ctx.tls_version = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| match s.version.as_ref() {
                "TLSv1.3" => "TLSv1.3",
                "TLSv1.2" => "TLSv1.2",
                _ => "TLS",
            });
        ctx.plugin.tls = self.tls;
        ctx.plugin.sni = sni;
        ctx.plugin.client_certificate = client_cert;
        let peer = session.client_addr().and_then(|a| a.as_inet());
        ctx.peer_ip = peer.map(|a| a.ip());
        ctx.plugin.client_port = peer.map(|a| a.port());
        // Plugins (ip-restriction, rate-limiting by ip, load balancing on ip) see the client a
        // trusted proxy reported, as Kong's `kong.client.get_forwarded_ip()` does.
        ctx.plugin.client_ip = ctx.peer_ip.map(|peer| {
            forwarded_client(
                peer,
                &session.req_header().headers,
                &rt.config.server.trusted_proxies,
            )
        });
        ctx.plugin.server_addr = session.server_addr().and_then(|a| a.as_inet()).copied();

        // Route (and forward) the normalised path, as Kong does: otherwise `/public/../private`
        // would take the public route's plugins and reach /private upstream.
        let rewritten = {
            let uri = &session.req_header().uri;
            match normalize_path(uri.path()) {
                Ok(std::borrow::Cow::Borrowed(_)) => None,
                Ok(std::borrow::Cow::Owned(p)) => Some(match uri.query() {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                }),
                Err(_) => Some(String::new()),
            }
        };
        match rewritten {
            None => {}
            Some(p) if p.is_empty() => {
                respond::send(session, ctx, ResponseSpec::Error(ErrorKind::BadRequest)).await?;
                return Ok(true);
            }
            Some(p) => match p.parse::<http::Uri>() {
                Ok(u) => session.req_header_mut().set_uri(u),
                Err(_) => {
                    respond::send(session, ctx, ResponseSpec::Error(ErrorKind::BadRequest)).await?;
                    return Ok(true);
                }
            },
        }

        // Global plugins' rewrite phase runs before routing (ACME challenges, request ids for
        // requests no route matches).
        if !rt.rewrite.is_empty() {
            let answer = {
                let req = session.req_header();
                let view = RequestView {
                    method: &req.method,
                    uri: &req.uri,
                    headers: &req.headers,
                };
                chain::rewrite(&rt.rewrite, &view, &mut ctx.plugin).await
            };
            if let Some(r) = answer {
                respond::send(session, ctx, ResponseSpec::Plugin(r)).await?;
                return Ok(true);
            }
        }

        // Routing borrows the request; keep it in a block so nothing borrowed lives across an
        // await point.
        let matched = {
            let req = session.req_header();
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()))
                .unwrap_or("");
            ctx.original_host = Some(host.to_string());
            let headers = &req.headers;
            let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let info = RequestInfo {
                host,
                path: req.uri.path(),
                method: req.method.as_str(),
                tls: self.tls,
                sni: ctx.plugin.sni.as_deref(),
                header: &lookup,
            };
            rt.router.find(&info)
        };
        let (m, use_https) = match matched {
            Routed::Route(m) => (m, false),
            Routed::UseHttps(m) => (m, true),
            Routed::NoRoute => {
                respond::send(session, ctx, ResponseSpec::Error(ErrorKind::NoRoute)).await?;
                return Ok(true);
            }
        };
        let Some(route_rt) = rt.route_rt(&m.route).cloned() else {
            respond::send(session, ctx, ResponseSpec::Error(ErrorKind::NoRoute)).await?;
            return Ok(true);
        };
        ctx.matched_len = m.matched_len;
        if route_rt.plugins.phases().contains(Phases::URI_CAPTURES) {
            ctx.plugin.uri_captures = uri_captures(&m, &session.req_header().uri);
        }
        ctx.plugin.route = Some(route_rt.route.name.clone());
        ctx.plugin.service = Some(route_rt.route.service.name.clone());
        ctx.route = Some(route_rt.clone());

        if use_https {
            let code = route_rt.route.https_redirect_status_code;
            let spec = if code == 426 {
                ResponseSpec::Error(ErrorKind::UseHttps)
            } else {
                let path = session
                    .req_header()
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let host = ctx.original_host.clone().unwrap_or_default();
                let host = host.split(':').next().unwrap_or("");
                ResponseSpec::Redirect(code, format!("https://{host}{path}"))
            };
            respond::send(session, ctx, spec).await?;
            return Ok(true);
        }

        if let Some(resp) = self.run_access(session, ctx, &route_rt).await? {
            respond::send(session, ctx, resp).await?;
            return Ok(true);
        }
        // A 413 from buffering was already sent.
        Ok(ctx.responded.is_some())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(chain) = ctx.chain.clone() else {
            return Ok(());
        };
        if ctx.plugin.request_body_replacement.is_some() {
            // The buffered body arrives once from Pingora's retry buffer; send the plugins'
            // version instead (Content-Length was set to match).
            *body = ctx.body_replacement.take();
        }
        if !chain.has(Phases::REQUEST_BODY) {
            return Ok(());
        }
        if let Err(r) = chain::request_body(&chain, body, end_of_stream, &mut ctx.plugin) {
            let status = r.status;
            if session.response_written().is_none() && ctx.responded.is_none() {
                respond::send(session, ctx, ResponseSpec::Plugin(r)).await?;
            }
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "a plugin refused the request body",
            ));
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.select_peer(session, ctx).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let now = Instant::now();
        if ctx.chain.as_ref().is_some_and(|c| c.has(Phases::LOG)) {
            let connect_ms = ctx
                .peer_selected
                .map(|t| now.duration_since(t).as_millis() as u64)
                .unwrap_or(0);
            let wall = std::time::SystemTime::now();
            ctx.tries_log.push(Try {
                addr: ctx.upstream_addr,
                connect_ms,
                started_at: ctx.peer_selected.map(|t| wall - now.duration_since(t)),
                connected_at: Some(wall),
                reused,
                tls: peer.is_tls(),
            });
        }
        ctx.upstream_start = Some(now);
        let verdict = digest
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<UpstreamVerdict>());
        // A verifying peer carries the hook; its connections (new or reused) must carry the
        // hook's verdict. None means the chain was never checked for this trust: fail closed.
        let verifies = peer.options.upstream_tls_handshake_complete_hook.is_some();
        let failure = match verdict {
            Some(v) => v.failure.clone(),
            None if verifies => Some(NO_VERDICT.to_string()),
            None => None,
        };
        if let Some(reason) = failure {
            ctx.tls_failure = Some(reason.clone());
            // Refused before a single request byte is written.
            return Err(Error::explain(UPSTREAM_TLS_REJECTED, reason));
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if ctx.chain.as_ref().is_some_and(|c| c.has(Phases::LOG)) {
            // A failed try is a try too (Kong's `tries` lists it; tracing shows it as an error).
            let now = Instant::now();
            let wall = std::time::SystemTime::now();
            let took = ctx.peer_selected.map(|t| now.duration_since(t));
            ctx.tries_log.push(Try {
                addr: ctx.upstream_addr,
                connect_ms: took.map_or(0, |d| d.as_millis() as u64),
                started_at: took.map(|d| wall - d),
                connected_at: None,
                reused: false,
                tls: peer.is_tls(),
            });
        }
        if let (Some(route), Some(lease)) = (&ctx.route, ctx.lease.take()) {
            if let Some(b) = &route.service.balancer {
                let outcome = if matches!(e.etype(), ErrorType::ConnectTimedout) {
                    Outcome::Timeout
                } else {
                    Outcome::TcpFailure
                };
                b.report_passive(lease.idx, outcome);
            }
        }
        let retries = ctx
            .route
            .as_ref()
            .map(|r| r.service.service.retries)
            .unwrap_or(0);
        let tls_problem = matches!(
            e.etype(),
            ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert
        );
        if tls_problem {
            ctx.tls_failure = Some(respond::tls_reason(&e));
        }
        // Connection failures are safe to retry: nothing reached the upstream.
        if ctx.tries <= retries && !tls_problem {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        let r = &route.route;
        let s = &route.service.service;

        // Path: strip the matched part, join with the service path, keep the query. Nothing to
        // rewrite (and nothing allocated) when neither applies.
        let strip = if r.strip_path { ctx.matched_len } else { 0 };
        if strip > 0 || s.path.is_some() {
            let uri = &session.req_header().uri;
            let path = upstream_path(s.path.as_deref(), uri.path(), strip);
            let new_uri = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let parsed = new_uri.parse::<http::Uri>().map_err(|e| {
                Error::explain(
                    ErrorType::InternalError,
                    format!("rewritten path is invalid: {e}"),
                )
            })?;
            upstream_request.set_uri(parsed);
        }

        // Host: the client's with preserve_host, else the upstream's.
        let original_host = ctx.original_host.clone().unwrap_or_default();
        if !r.preserve_host {
            let host = match &route.service.balancer {
                Some(b) => match (&b.upstream.host_header, ctx.lease.as_ref().map(|l| l.idx)) {
                    (Some(h), _) => h.clone(),
                    (None, Some(i)) => {
                        let t = &b.targets[i];
                        crate::upstream::host_with_port(&t.host, t.port, s.protocol)
                    }
                    (None, None) => s.host.clone(),
                },
                // Precompiled per service: no formatting per request.
                None => {
                    upstream_request
                        .insert_header(http::header::HOST, route.service.host_header.clone())?;
                    String::new()
                }
            };
            if !host.is_empty() {
                upstream_request.insert_header(http::header::HOST, host)?;
            }
        }

        // X-Forwarded-*: replaced unless the peer is a trusted proxy.
        let client_ip = ctx.peer_ip;
        let trusted = client_ip
            .map(|ip| {
                ctx.rt
                    .as_ref()
                    .map(|rt| {
                        rt.config
                            .server
                            .trusted_proxies
                            .iter()
                            .any(|n| n.contains(ip))
                    })
                    .unwrap_or(false)
            })
            .unwrap_or(false);
        // One formatted address serves both headers (HeaderValue clones share the bytes).
        let ip = client_ip.map_or_else(|| http::HeaderValue::from_static(""), ip_header_value);
        let xff = match (trusted, upstream_request.headers.get("x-forwarded-for")) {
            (true, Some(prev)) => http::HeaderValue::from_str(&format!(
                "{}, {}",
                prev.to_str().unwrap_or(""),
                ip.to_str().unwrap_or("")
            ))
            .unwrap_or_else(|_| ip.clone()),
            _ => ip.clone(),
        };
        upstream_request.insert_header("x-forwarded-for", xff)?;
        upstream_request.insert_header("x-real-ip", ip)?;
        if !(trusted && upstream_request.headers.contains_key("x-forwarded-proto")) {
            let proto = if self.tls { "https" } else { "http" };
            upstream_request
                .insert_header("x-forwarded-proto", http::HeaderValue::from_static(proto))?;
        }
        if !(trusted && upstream_request.headers.contains_key("x-forwarded-host")) {
            upstream_request.insert_header("x-forwarded-host", strip_port(&original_host))?;
        }
        if !(trusted && upstream_request.headers.contains_key("x-forwarded-port")) {
            // The listener's port, formatted once when the listener was built.
            let port = match session.server_addr().and_then(|a| a.as_inet()) {
                Some(a) if a.port() == self.port => self.port_header.clone(),
                Some(a) => http::HeaderValue::from(a.port()),
                None => self.port_header.clone(),
            };
            upstream_request.insert_header("x-forwarded-port", port)?;
        }
        if upstream_request.headers.contains_key("x-forwarded-prefix") {
            upstream_request.remove_header("x-forwarded-prefix");
        }
        // Already there when the client sent the id we kept.
        if upstream_request
            .headers
            .get("x-request-id")
            .is_none_or(|v| v.as_bytes() != ctx.plugin.request_id.as_bytes())
        {
            upstream_request.insert_header("x-request-id", ctx.plugin.request_id.as_str())?;
        }

        let Some(chain) = ctx.chain.clone() else {
            return Ok(());
        };
        self.apply_plugin_request_edits(upstream_request, ctx)?;
        if chain.has(Phases::UPSTREAM_REQUEST) {
            ctx.plugin.upstream = ctx
                .upstream_addr
                .map(|a| portcullis_plugin_api::UpstreamInfo {
                    addr: Some(a),
                    host: a.ip().to_string(),
                    port: a.port(),
                    tls: route.service.service.protocol.is_tls(),
                });
            chain::upstream_request(&chain, &mut RequestEdit(upstream_request), &mut ctx.plugin);
        }
        if chain.phases.contains(Phases::LOG) {
            ctx.upstream_uri = upstream_request.uri.path_and_query().map(|p| p.to_string());
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(t) = ctx.upstream_start {
            ctx.upstream_ttfb = Some(t.elapsed().as_secs_f64());
        }
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        if let (Some(route), Some(lease)) = (&ctx.route, &ctx.lease) {
            if let Some(b) = &route.service.balancer {
                b.report_passive(
                    lease.idx,
                    Outcome::Status(upstream_response.status.as_u16()),
                );
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.plugin.request_id.as_str())?;
        let Some(chain) = ctx.chain.clone() else {
            return Ok(());
        };
        for (n, v) in std::mem::take(&mut ctx.plugin.response_headers) {
            upstream_response.insert_header(n, v)?;
        }
        if chain.has(Phases::RESPONSE_HEADERS) {
            let status = upstream_response.status.as_u16();
            let mut edit = ResponseEdit(upstream_response);
            let mut head = ResponseHead {
                status,
                headers: &mut edit,
                from_gateway: false,
            };
            chain::response_headers(&chain, &mut head, &mut ctx.plugin);
            for (n, v) in std::mem::take(&mut ctx.plugin.response_headers) {
                upstream_response.insert_header(n, v)?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(chain) = &ctx.chain {
            if chain.has(Phases::RESPONSE_BODY) {
                let chain = chain.clone();
                chain::response_body(&chain, body, end_of_stream, &mut ctx.plugin);
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(status) = ctx.responded {
            // A plugin already answered (a body refused mid-stream): nothing more to send.
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let kind = respond::classify(e, ctx);
        if let (Some(reason), Some(route)) = (&ctx.tls_failure, &ctx.route) {
            metrics::UPSTREAM_TLS_FAILURES
                .with_label_values(&[&*route.route.service.name, reason])
                .inc();
        }
        if let (Some(route), Some(lease)) = (&ctx.route, ctx.lease.take()) {
            if let Some(b) = &route.service.balancer {
                if matches!(
                    e.etype(),
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout
                ) {
                    b.report_passive(lease.idx, Outcome::Timeout);
                }
            }
        }
        let code = match kind {
            Some(k) => {
                if ctx.tls_failure.is_some() || matches!(e.esource(), ErrorSource::Upstream) {
                    tracing::warn!(
                        request_id = %ctx.plugin.request_id,
                        route = ctx.route.as_ref().map(|r| &*r.route.name).unwrap_or("-"),
                        upstream = ?ctx.upstream_addr,
                        tls_reason = ctx.tls_failure.as_deref().unwrap_or(""),
                        error = %e,
                        "upstream request failed"
                    );
                }
                let status = k.status();
                match respond::send(session, ctx, ResponseSpec::Error(k)).await {
                    Ok(()) => status,
                    Err(_) => 0,
                }
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        observe::observe(self.tls, session, e, ctx);
    }
}

/// The groups a regex route path captured, for plugins (Kong's `uri_captures`). Only routes
/// with a plugin that asked for them pay for it: the router itself only asks whether the regex
/// matches.
fn uri_captures(
    m: &crate::routing::Match,
    uri: &http::Uri,
) -> Option<Arc<portcullis_plugin_api::UriCaptures>> {
    let crate::config::model::PathSpec::Regex { re, .. } = m.route.paths.get(m.path_index?)? else {
        return None;
    };
    let caps = re.captures(uri.path())?;
    let unnamed = caps
        .iter()
        .skip(1)
        .map(|g| g.map(|g| g.as_str().to_string()))
        .collect();
    let named = re
        .capture_names()
        .flatten()
        .filter_map(|n| Some((n.to_string(), caps.name(n)?.as_str().to_string())))
        .collect();
    Some(Arc::new(portcullis_plugin_api::UriCaptures {
        unnamed,
        named,
    }))
}

pub fn json_body(message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({ "message": message, "request_id": request_id });
    Bytes::from(v.to_string())
}
