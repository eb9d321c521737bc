//! The spans of one request in Zipkin's v2 model (zipkin2-api.yaml `Span`), as Kong's zipkin
//! handler and reporter (kong/plugins/zipkin/{handler,reporter}.lua) make them.

use crate::config::Settings;
use crate::Trace;
use portcullis_plugin_api::{http, LogEntry, RequestCtx};
use portcullis_tracing_common::{node_id, random_bytes, to_hex};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZipkinSpan {
    pub trace_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub id: String,
    pub kind: &'static str,
    /// Microseconds since the epoch.
    pub timestamp: u64,
    /// Microseconds.
    pub duration: u64,
    pub local_endpoint: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    /// Zipkin wants string values, never empty ones.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Annotation {
    pub value: &'static str,
    pub timestamp: u64,
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn millis_between(from: SystemTime, to: SystemTime) -> String {
    to.duration_since(from)
        .unwrap_or_default()
        .as_millis()
        .to_string()
}

/// A span under construction: Kong's `span.lua` object.
struct Builder<'a> {
    s: &'a Settings,
    t: &'a Trace,
    kind: &'static str,
    name: String,
    id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: SystemTime,
    tags: BTreeMap<String, String>,
    annotations: Vec<Annotation>,
    /// The Kong service's name, the remote endpoint's `serviceName`.
    service_name: Option<String>,
    ip: Option<IpAddr>,
    port: Option<u16>,
}

impl<'a> Builder<'a> {
    fn new(s: &'a Settings, t: &'a Trace, kind: &'static str, name: String) -> Self {
        Builder {
            s,
            t,
            kind,
            name,
            id: random_bytes(),
            parent: None,
            start: UNIX_EPOCH,
            tags: BTreeMap::new(),
            annotations: Vec::new(),
            service_name: None,
            ip: None,
            port: None,
        }
    }

    fn tag(&mut self, key: &str, value: impl Into<String>) {
        self.tags.insert(key.to_string(), value.into());
    }

    fn annotate(&mut self, value: &'static str, at: SystemTime) {
        self.annotations.push(Annotation {
            value,
            timestamp: micros(at),
        });
    }

    /// Kong's `tag_with_service_and_route`.
    fn tag_service_and_route(&mut self, ctx: &RequestCtx) {
        if let Some(svc) = &ctx.service_info {
            self.tag("kong.service", svc.id.clone());
            if let Some(name) = &svc.name {
                self.service_name = Some(name.clone());
                self.tag("kong.service_name", name.clone());
            }
        }
        if let Some(route) = &ctx.route_info {
            self.tag("kong.route", route.id.clone());
            if let Some(name) = &route.name {
                self.tag("kong.route_name", name.clone());
            }
        }
    }

    /// Kong's reporter: empty tags dropped; a remote endpoint when there is a port or a service
    /// name to show.
    fn finish(mut self, end: SystemTime) -> ZipkinSpan {
        self.tags.retain(|_, v| !v.is_empty());
        let service_name = self
            .service_name
            .or_else(|| self.s.default_service_name.clone());
        let remote_endpoint = (self.port.is_some() || service_name.is_some()).then(|| {
            let (ipv4, ipv6) = match self.ip {
                Some(IpAddr::V4(a)) => (Some(a.to_string()), None),
                Some(IpAddr::V6(a)) => (None, Some(a.to_string())),
                None => (None, None),
            };
            Endpoint {
                service_name,
                ipv4,
                ipv6,
                port: self.port,
            }
        });
        let timestamp = micros(self.start);
        ZipkinSpan {
            trace_id: self.t.trace_hex(),
            name: self.name,
            parent_id: self.parent.map(|p| to_hex(&p)),
            id: to_hex(&self.id),
            kind: self.kind,
            timestamp,
            duration: micros(end).saturating_sub(timestamp),
            local_endpoint: Endpoint {
                service_name: Some(self.s.local_service_name.clone()),
                ..Endpoint::default()
            },
            remote_endpoint,
            tags: self.tags,
            annotations: self.annotations,
        }
    }
}

/// `HTTP/1.1`, as Kong writes `'HTTP/' .. ngx.req.http_version()` (Lua prints 1.0 as `1`).
fn protocol(v: http::Version) -> Option<&'static str> {
    Some(match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => return None,
    })
}

/// Kong's `request_tags.parse` of one header line: `name=value` items separated by `;`, the
/// name the longest run of non-space characters before an `=` followed by a non-blank value
/// (Lua's `^%s*(%S+)%s*=%s*(.*%S)%s*$`). Items that do not parse are returned.
pub fn parse_tags<'v>(line: &'v str, dest: &mut BTreeMap<String, String>) -> Vec<&'v str> {
    let mut bad = Vec::new();
    for item in line.split(';').filter(|i| !i.is_empty()) {
        let s = item.trim_start();
        let run = s.find(char::is_whitespace).unwrap_or(s.len());
        let found = (1..=run).rev().find_map(|n| {
            let rest = s[n..].trim_start().strip_prefix('=')?;
            let value = rest.trim();
            (!value.is_empty()).then(|| (&s[..n], value))
        });
        match found {
            Some((name, value)) => {
                dest.insert(name.to_string(), value.to_string());
            }
            None => bad.push(item),
        }
    }
    bad
}

/// The request's spans in the order Kong reports them: balancer tries, proxy, request.
pub fn spans(
    s: &Settings,
    t: &Trace,
    entry: &LogEntry<'_>,
    ctx: &RequestCtx,
    end: SystemTime,
) -> Vec<ZipkinSpan> {
    let method = entry.method.as_str();
    let path = entry.uri.path();
    let name = if s.span_name_with_path {
        format!("{method} {path}")
    } else {
        method.to_string()
    };
    let mut out = Vec::with_capacity(entry.tries.len() + 2);

    // The request span.
    let mut request = Builder::new(s, t, "SERVER", name.clone());
    request.id = t.request_span_id;
    request.parent = t.request_parent;
    request.start = entry.started_at;
    request.ip = ctx.client_ip;
    request.port = ctx.client_port;
    request.tag("lc", "kong");
    request.tag("http.method", method);
    request.tag(
        "http.host",
        portcullis_plugin_api::host_without_port(entry.host).to_ascii_lowercase(),
    );
    request.tag("http.path", path);
    if let Some(p) = protocol(entry.version) {
        request.tag("http.protocol", p);
    }
    for (k, v) in &s.static_tags {
        request.tag(k, v.clone());
    }
    let mut bad = Vec::new();
    for line in entry.request_headers.get_all(s.tags_header.as_str()) {
        if let Ok(line) = line.to_str() {
            bad.extend(parse_tags(line, &mut request.tags));
        }
    }
    if !bad.is_empty() {
        tracing::warn!(
            plugin = crate::NAME,
            "Could not parse the following Zipkin tags: {}",
            bad.join(", ")
        );
    }

    // The proxy span: from the access phase to the end of the response.
    let mut proxy = Builder::new(s, t, "CLIENT", format!("{name} (proxy)"));
    proxy.id = t.proxy_span_id;
    proxy.parent = Some(t.request_span_id);
    proxy.start = t.proxy_start.min(end);
    // Phase boundaries the gateway does not stamp are taken from the nearest event it does:
    // access ends when the first try picks its peer, header and body filters start with the
    // response headers.
    let rewrite_end = proxy.start.max(entry.started_at);
    let headers_at = t.headers_at.unwrap_or(end).clamp(proxy.start, end);
    let access_end = entry
        .tries
        .first()
        .and_then(|tr| tr.started_at)
        .unwrap_or(headers_at)
        .clamp(proxy.start, headers_at);
    if s.phase_annotations {
        request.annotate("krs", entry.started_at);
        request.annotate("krf", rewrite_end);
        proxy.annotate("kas", proxy.start);
        proxy.annotate("kaf", access_end);
        proxy.annotate("khs", headers_at);
        proxy.annotate("khf", headers_at);
        proxy.annotate("kbs", headers_at);
        proxy.annotate("kbf", end);
    } else {
        request.tag(
            "kong.rewrite.duration_ms",
            millis_between(entry.started_at, rewrite_end),
        );
        proxy.tag(
            "kong.access.duration_ms",
            millis_between(proxy.start, access_end),
        );
        proxy.tag("kong.header_filter.duration_ms", "0");
        proxy.tag(
            "kong.body_filter.duration_ms",
            millis_between(headers_at, end),
        );
    }

    // One span per balancer try, under the request span.
    let n = entry.tries.len();
    for (i, tr) in entry.tries.iter().enumerate() {
        let mut b = Builder::new(s, t, "CLIENT", format!("{name} (balancer try {})", i + 1));
        b.parent = Some(t.request_span_id);
        b.start = tr.started_at.unwrap_or(proxy.start);
        b.ip = tr.addr.map(|a| a.ip());
        b.port = tr.addr.map(|a| a.port());
        b.tag("kong.balancer.try", (i + 1).to_string());
        if i + 1 < n {
            // A try the balancer moved on from: its connection failed (nginx's "failed", a
            // 502), or its response was retried ("next").
            b.tag("error", "true");
            if tr.connected_at.is_none() {
                b.tag("kong.balancer.state", "failed");
                b.tag("http.status_code", "502");
            } else {
                b.tag("kong.balancer.state", "next");
            }
        }
        b.tag_service_and_route(ctx);
        let try_end = match (tr.started_at, tr.connected_at) {
            (_, Some(connected)) => connected,
            (Some(started), None) => started
                .checked_add(Duration::from_millis(tr.connect_ms))
                .unwrap_or(started),
            (None, None) => end,
        }
        .max(b.start);
        out.push(b.finish(try_end));
    }
    if let Some(last) = entry.tries.last() {
        if let Some(host) = ctx.service_info.as_ref().and_then(|s| s.host.as_deref()) {
            proxy.tag("peer.hostname", host);
        }
        proxy.ip = last.addr.map(|a| a.ip());
        proxy.port = last.addr.map(|a| a.port());
    }

    if entry.status != 0 {
        request.tag("http.status_code", entry.status.to_string());
    }
    if let Some(c) = &ctx.consumer {
        request.tag("kong.consumer", c.id.clone());
    }
    if s.include_credential {
        if let Some(cred) = &ctx.credential_identifier {
            request.tag("kong.credential", cred.clone());
        }
    }
    request.tag("kong.node.id", node_id());
    proxy.tag_service_and_route(ctx);

    out.push(proxy.finish(end));
    out.push(request.finish(end));
    out
}
