//! Kong's log record (`kong.log.serialize()`): the JSON object Kong's logging plugins write, so
//! dashboards and parsers built for Kong keep working. Shared by every logging plugin.
//!
//! As in Kong, `Authorization` and `Proxy-Authorization` request headers are `REDACTED`; this
//! gateway also redacts `Cookie` values and the credentials auth plugins read (they list them in
//! [`RedactHeaders`] / [`RedactQuery`] extensions), because the quality bar is never to log a
//! secret.

use crate::{json, LogEntry, RequestCtx};
use serde_json::Value;

/// Request header names (lower case) whose values log records must not show, added by the
/// plugins that read credentials from them (`apikey` for key-auth).
#[derive(Debug, Clone, Default)]
pub struct RedactHeaders(pub Vec<String>);

/// Query argument names whose values log records must not show (`jwt`, `apikey`).
#[derive(Debug, Clone, Default)]
pub struct RedactQuery(pub Vec<String>);

const REDACTED: &str = "REDACTED";

/// Whether the values of header `name` are hidden: always `Authorization`,
/// `Proxy-Authorization` and `Cookie`, and `Set-Cookie` too (a session cookie, the session
/// plugin's or the upstream's, is a bearer credential, as replayable from a log as the `Cookie`
/// that carries it back); then what auth plugins listed.
fn hidden(name: &http::HeaderName, redact: &[String]) -> bool {
    use http::header::{AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, SET_COOKIE};
    // Standard names compare as enum values, without looking at their text.
    name == AUTHORIZATION
        || name == PROXY_AUTHORIZATION
        || name == COOKIE
        || name == SET_COOKIE
        || (!redact.is_empty() && redact.iter().any(|r| r == name.as_str()))
}

fn header_value(out: &mut Vec<u8>, v: &http::HeaderValue, hidden: bool) {
    out.push(b'"');
    if hidden {
        out.extend_from_slice(REDACTED.as_bytes());
    } else {
        json::escape_lossy(out, v.as_bytes());
    }
    out.push(b'"');
}

/// A header map as Kong writes it: one string per name, a list when the name repeats (`None`,
/// no response sent, writes `{}`). Returns Kong's `size` of the head: `name: value\r\n` lines.
fn headers(out: &mut Vec<u8>, map: Option<&http::HeaderMap>, redact: &[String]) -> usize {
    let mut size = 0;
    out.push(b'{');
    if let Some(map) = map {
        // `iter` yields each name's values together: a run is one entry, without a hash lookup
        // per name (`get_all`).
        let mut iter = map.iter().peekable();
        let mut first = true;
        while let Some((name, value)) = iter.next() {
            if !first {
                out.push(b',');
            }
            first = false;
            let n = name.as_str();
            let hide = hidden(name, redact);
            // Header names are tokens: nothing in them needs escaping.
            json::key(out, n);
            size += n.len() + value.len() + 4;
            if iter.peek().is_some_and(|(next, _)| *next == name) {
                out.push(b'[');
                header_value(out, value, hide);
                while let Some((_, v)) = iter.next_if(|(next, _)| *next == name) {
                    out.push(b',');
                    header_value(out, v, hide);
                    size += n.len() + v.len() + 4;
                }
                out.push(b']');
            } else {
                header_value(out, value, hide);
            }
        }
    }
    out.push(b'}');
    size
}

/// Kong's `querystring`: each argument once, a list when it repeats, `true` without a value.
fn querystring(out: &mut Vec<u8>, query: &str, redact: &[String]) {
    if query.is_empty() {
        out.extend_from_slice(b"{}");
        return;
    }
    enum Arg {
        Text(String),
        Flag,
        Hidden,
    }
    // First-seen order, repeated arguments gathered: queries are short, a scan is cheaper than
    // a map.
    let mut args: Vec<(String, Vec<Arg>)> = Vec::new();
    for (k, v) in crate::query_args(query) {
        let v = if redact.contains(&k) {
            Arg::Hidden
        } else if v.is_empty() {
            Arg::Flag
        } else {
            Arg::Text(v)
        };
        match args.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vs)) => vs.push(v),
            None => args.push((k, vec![v])),
        }
    }
    let one = |out: &mut Vec<u8>, a: &Arg| match a {
        Arg::Text(t) => json::string(out, t),
        Arg::Flag => out.extend_from_slice(b"true"),
        Arg::Hidden => json::string(out, REDACTED),
    };
    out.push(b'{');
    for (i, (k, vs)) in args.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::string(out, k);
        out.push(b':');
        match vs.as_slice() {
            [a] => one(out, a),
            many => {
                out.push(b'[');
                for (j, a) in many.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    one(out, a);
                }
                out.push(b']');
            }
        }
    }
    out.push(b'}');
}

/// Milliseconds without `as_millis`' 128-bit division (a library call per use).
fn millis(d: std::time::Duration) -> u64 {
    d.as_secs() * 1000 + u64::from(d.subsec_millis())
}

/// nginx's `$upstream_status`: one status per try, `, `-separated (502 for a try whose
/// connection failed), empty when nothing was sent upstream.
fn upstream_status(out: &mut Vec<u8>, entry: &LogEntry<'_>) {
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.extend_from_slice(b", ");
        }
        first = false;
    };
    for _ in entry.tries.iter().filter(|t| t.connected_at.is_none()) {
        sep(out);
        out.extend_from_slice(b"502");
    }
    if let Some(status) = entry.upstream_status {
        sep(out);
        json::uint(out, status.into());
    }
}

/// Kong's `request.url` authority: nginx's `$host` (the Host without its port, lower case; the
/// gateway's address when the client sent none) and the port the client connected to, so
/// `Host: API.example.com` on port 8000 logs `api.example.com:8000` as Kong does.
fn url_authority(out: &mut Vec<u8>, host: &str, server: Option<std::net::SocketAddr>) {
    let host = crate::host_without_port(host);
    if !host.is_empty() {
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            json::escape_into(out, &host.to_ascii_lowercase());
        } else {
            json::escape_into(out, host);
        }
    } else if let Some(addr) = server {
        let mut buf = [0; json::IP_TEXT_MAX];
        let v6 = addr.is_ipv6();
        if v6 {
            out.push(b'[');
        }
        out.extend_from_slice(json::ip_bytes(addr.ip(), &mut buf));
        if v6 {
            out.push(b']');
        }
    }
    if let Some(addr) = server {
        out.push(b':');
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(addr.port()).as_bytes());
    }
}

/// `uri` with the values of the `redact` query arguments replaced by `REDACTED`.
fn redact_uri<'a>(uri: &'a str, redact: &[String]) -> std::borrow::Cow<'a, str> {
    if redact.is_empty() {
        return uri.into();
    }
    let Some((path, query)) = uri.split_once('?') else {
        return uri.into();
    };
    let kept: Vec<String> = query
        .split('&')
        .map(|pair| {
            let k = pair.split_once('=').map_or(pair, |(k, _)| k);
            if redact.iter().any(|r| *r == crate::percent_decode(k)) {
                format!("{k}={REDACTED}")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{path}?{}", kept.join("&")).into()
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json::string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes the Kong log record of one request straight to JSON text (Kong's field order): header
/// values borrowed from the request, route and service spliced in as serialised at load.
pub fn write_kong_record(out: &mut Vec<u8>, entry: &LogEntry<'_>, ctx: &RequestCtx) {
    let redact_h = ctx
        .extensions
        .get::<RedactHeaders>()
        .map(|r| r.0.as_slice())
        .unwrap_or(&[]);
    let redact_q = ctx
        .extensions
        .get::<RedactQuery>()
        .map(|r| r.0.as_slice())
        .unwrap_or(&[]);
    let path_and_query = entry
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let request_uri = redact_uri(path_and_query, redact_q);
    let request_ms = (entry.latency * 1000.0).round() as i64;
    let proxy_ms = entry
        .upstream_latency
        .map(|u| (u * 1000.0).round() as i64)
        .unwrap_or(-1);
    // Kong's split: `kong` until the request went upstream, `proxy` waiting for the upstream's
    // first byte, `receive` the rest (the response streamed back). Without an upstream answer
    // the whole request is the gateway's.
    let (kong_ms, receive_ms) = match (proxy_ms >= 0, entry.upstream_sent) {
        (true, Some(sent)) => {
            let kong = ((sent * 1000.0).round() as i64).clamp(0, request_ms.max(0));
            (kong, (request_ms - kong - proxy_ms).max(0))
        }
        (true, None) => ((request_ms - proxy_ms).max(0), 0),
        (false, _) => (request_ms, 0),
    };

    out.extend_from_slice(b"{\"request\":{\"id\":");
    json::string(out, &ctx.request_id);
    out.extend_from_slice(b",\"uri\":");
    json::string(out, &request_uri);
    out.extend_from_slice(b",\"url\":\"");
    json::escape_into(out, entry.scheme);
    out.extend_from_slice(b"://");
    url_authority(out, entry.host, ctx.server_addr);
    json::escape_into(out, &request_uri);
    out.extend_from_slice(b"\",\"querystring\":");
    querystring(out, entry.uri.query().unwrap_or(""), redact_q);
    out.extend_from_slice(b",\"method\":");
    json::string(out, entry.method.as_str());
    out.extend_from_slice(b",\"headers\":");
    let head = headers(out, Some(entry.request_headers), redact_h);
    out.extend_from_slice(b",\"size\":");
    json::uint(out, entry.request_body_bytes.saturating_add(head as u64));
    if let Some(version) = entry.tls_version {
        out.extend_from_slice(b",\"tls\":{\"version\":");
        json::string(out, version);
        out.extend_from_slice(b",\"cipher\":");
        opt_string(out, entry.tls_cipher);
        out.extend_from_slice(b",\"client_verify\":");
        json::string(out, ctx.client_verify.as_deref().unwrap_or("NONE"));
        out.push(b'}');
    }
    out.extend_from_slice(b"},\"upstream_uri\":");
    json::string(out, &redact_uri(entry.upstream_uri.unwrap_or(""), redact_q));
    out.extend_from_slice(b",\"upstream_status\":\"");
    upstream_status(out, entry);
    out.push(b'"');

    out.extend_from_slice(b",\"response\":{\"status\":");
    json::uint(out, entry.status.into());
    out.extend_from_slice(b",\"headers\":");
    let head = headers(out, entry.response_headers, &[]);
    out.extend_from_slice(b",\"size\":");
    json::uint(out, entry.response_body_bytes.saturating_add(head as u64));

    out.extend_from_slice(b"},\"tries\":[");
    for (i, t) in entry.tries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"ip\":");
        match t.addr {
            Some(a) => json::ip(out, a.ip()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"port\":");
        match t.addr {
            Some(a) => json::uint(out, a.port().into()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"balancer_latency\":");
        json::uint(out, t.connect_ms);
        if let Some(start) = t
            .started_at
            .and_then(|s| s.duration_since(std::time::UNIX_EPOCH).ok())
        {
            out.extend_from_slice(b",\"balancer_start\":");
            json::uint(out, millis(start));
            out.extend_from_slice(b",\"balancer_start_ns\":");
            json::uint(
                out,
                start.as_secs() * 1_000_000_000 + u64::from(start.subsec_nanos()),
            );
        }
        // As Kong records a try that was followed by another: why it was left.
        if t.connected_at.is_none() && i + 1 < entry.tries.len() {
            out.extend_from_slice(b",\"state\":\"failed\",\"code\":502");
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"latencies\":{\"kong\":");
    json::int(out, kong_ms);
    out.extend_from_slice(b",\"proxy\":");
    json::int(out, proxy_ms);
    out.extend_from_slice(b",\"request\":");
    json::int(out, request_ms);
    out.extend_from_slice(b",\"receive\":");
    json::int(out, receive_ms);
    out.extend_from_slice(b"},\"client_ip\":");
    match ctx.client_ip {
        Some(ip) => json::ip(out, ip),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"started_at\":");
    json::uint(
        out,
        entry
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0),
    );
    out.extend_from_slice(if entry.upstream_latency.is_some() {
        b",\"source\":\"upstream\""
    } else {
        b",\"source\":\"kong\""
    });
    if let Some(r) = &ctx.route_info {
        out.extend_from_slice(b",\"route\":");
        out.extend_from_slice(r.json_text.get().as_bytes());
    }
    if let Some(s) = &ctx.service_info {
        out.extend_from_slice(b",\"service\":");
        out.extend_from_slice(s.json_text.get().as_bytes());
    }
    if let Some(c) = &ctx.consumer {
        out.extend_from_slice(b",\"consumer\":{\"id\":");
        json::string(out, &c.id);
        out.extend_from_slice(b",\"username\":");
        opt_string(out, c.username.as_deref());
        out.extend_from_slice(b",\"custom_id\":");
        opt_string(out, c.custom_id.as_deref());
        out.extend_from_slice(b",\"tags\":[");
        for (i, t) in c.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::string(out, t);
        }
        out.extend_from_slice(b"]}");
        if let Some(id) = ctx.credential_identifier.as_deref() {
            out.extend_from_slice(b",\"authenticated_entity\":{\"id\":");
            json::string(out, id);
            out.extend_from_slice(b",\"consumer_id\":");
            json::string(out, &c.id);
            out.push(b'}');
        }
    }
    if let Some(e) = entry.error {
        key_after_comma(out, "error");
        json::string(out, e);
    }
    if let Some(id) = ctx.shared.get("correlation_id") {
        key_after_comma(out, "correlation_id");
        json::string(out, id);
    }
    out.push(b'}');
}

/// Every top-level field [`write_kong_record`] may write: a field added under another name can
/// be appended to the bytes without building the record as a tree.
pub const RECORD_KEYS: [&str; 15] = [
    "request",
    "upstream_uri",
    "upstream_status",
    "response",
    "tries",
    "latencies",
    "client_ip",
    "started_at",
    "source",
    "route",
    "service",
    "consumer",
    "authenticated_entity",
    "error",
    "correlation_id",
];

fn key_after_comma(out: &mut Vec<u8>, k: &str) {
    out.push(b',');
    json::key(out, k);
}

/// The Kong log record of one request, as UTF-8 JSON bytes (what the logging plugins queue).
pub fn kong_record_bytes(entry: &LogEntry<'_>, ctx: &RequestCtx) -> Vec<u8> {
    // Room for a typical record (a dozen headers, route and service), so it is written
    // without regrowing.
    let mut out = Vec::with_capacity(1536);
    write_kong_record(&mut out, entry, ctx);
    out
}

/// The Kong log record of one request, as text.
pub fn kong_record_text(entry: &LogEntry<'_>, ctx: &RequestCtx) -> String {
    // Everything written comes from `&str`s, lossily converted bytes and ASCII.
    String::from_utf8(kong_record_bytes(entry, ctx)).unwrap_or_else(|_| "{}".into())
}

/// The Kong log record of one request, as a JSON tree (for plugins that edit it).
pub fn kong_record(entry: &LogEntry<'_>, ctx: &RequestCtx) -> Value {
    serde_json::from_str(&kong_record_text(entry, ctx)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    #[track_caller]
    fn assert_known_keys(r: &Value) {
        for k in r.as_object().unwrap().keys() {
            assert!(
                RECORD_KEYS.contains(&k.as_str()),
                "{k} is not in RECORD_KEYS"
            );
        }
    }

    #[test]
    fn record_has_kongs_shape_and_redacts_secrets() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer secret".parse().unwrap());
        headers.insert("apikey", "k1".parse().unwrap());
        headers.append("x-multi", "a".parse().unwrap());
        headers.append("x-multi", "b".parse().unwrap());
        let uri: http::Uri = "/p?a=1&jwt=tok&flag".parse().unwrap();
        let mut ctx = RequestCtx {
            client_ip: Some("127.0.0.9".parse().unwrap()),
            consumer: Some(Arc::new(crate::Consumer {
                id: "c1".into(),
                username: Some("alice".into()),
                ..Default::default()
            })),
            credential_identifier: Some("cred-1".into()),
            ..Default::default()
        };
        ctx.extensions.insert(RedactHeaders(vec!["apikey".into()]));
        ctx.extensions.insert(RedactQuery(vec!["jwt".into()]));
        let entry = LogEntry {
            method: &http::Method::GET,
            uri: &uri,
            version: http::Version::HTTP_11,
            host: "h.test",
            request_headers: &headers,
            response_headers: None,
            status: 200,
            request_body_bytes: 0,
            response_body_bytes: 5,
            started_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1500),
            latency: 0.010,
            upstream_latency: Some(0.004),
            upstream_sent: None,
            upstream_status: None,
            upstream_uri: Some("/up?jwt=tok"),
            tries: &[],
            error: None,
            scheme: "http",
            tls_version: None,
            tls_cipher: None,
        };
        let r = kong_record(&entry, &ctx);
        let text = r.to_string();
        assert!(
            !text.contains("secret") && !text.contains("k1") && !text.contains("tok"),
            "{text}"
        );
        assert_eq!(r["request"]["headers"]["authorization"], "REDACTED");
        assert_eq!(r["request"]["headers"]["x-multi"], json!(["a", "b"]));
        assert_eq!(r["request"]["querystring"]["a"], "1");
        assert_eq!(r["request"]["querystring"]["flag"], true);
        assert_eq!(r["request"]["uri"], "/p?a=1&jwt=REDACTED&flag");
        assert_eq!(r["started_at"], 1500);
        assert_eq!(r["latencies"]["request"], 10);
        assert_eq!(r["latencies"]["proxy"], 4);
        assert_eq!(r["latencies"]["kong"], 6);
        assert_eq!(r["latencies"]["receive"], 0);
        assert_eq!(r["upstream_status"], "");
        assert_eq!(r["consumer"]["username"], "alice");
        assert_eq!(r["authenticated_entity"]["id"], "cred-1");
        assert_eq!(r["client_ip"], "127.0.0.9");
        assert_eq!(r["upstream_uri"], "/up?jwt=REDACTED");
        assert_eq!(r.get("correlation_id"), None);
        ctx.shared.insert("correlation_id", "abc#1".into());
        let r = kong_record(&entry, &ctx);
        assert_eq!(r["correlation_id"], "abc#1");
        assert_known_keys(&r);
    }

    /// Every field of the record, checked whole: tries, TLS, repeated and non-UTF-8 headers,
    /// escapes, the response, the source; keys in Kong's order.
    #[test]
    fn the_whole_record_is_valid_json_with_every_field() {
        let mut req = http::HeaderMap::new();
        req.insert("host", "h.test:8000".parse().unwrap());
        req.insert(
            "x-odd",
            http::HeaderValue::from_bytes(b"caf\xe9 \"q\"").unwrap(),
        );
        let mut resp = http::HeaderMap::new();
        resp.insert("content-type", "text/plain".parse().unwrap());
        resp.append("via", "a".parse().unwrap());
        resp.append("via", "b".parse().unwrap());
        resp.append("via", "c".parse().unwrap());
        let uri: http::Uri = "/p%20x?a=1&a=2&b".parse().unwrap();
        let tries = [
            crate::Try {
                addr: Some("10.0.0.1:8080".parse().unwrap()),
                connect_ms: 3,
                started_at: Some(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_125),
                ),
                connected_at: None,
                reused: false,
                tls: false,
            },
            crate::Try {
                addr: Some("[::1]:443".parse().unwrap()),
                connect_ms: 0,
                started_at: None,
                connected_at: None,
                reused: true,
                tls: true,
            },
        ];
        let mut ctx = RequestCtx {
            client_ip: Some("::ffff:1.2.3.4".parse().unwrap()),
            server_addr: Some("127.0.0.1:8443".parse().unwrap()),
            request_id: "4f1c0ffee".into(),
            client_verify: Some("SUCCESS".into()),
            ..Default::default()
        };
        ctx.route_info = Some(Arc::new(crate::EntityInfo::new(
            "r1".into(),
            None,
            json!({"id": "r1", "paths": ["/p"]}),
        )));
        let entry = LogEntry {
            method: &http::Method::POST,
            uri: &uri,
            version: http::Version::HTTP_2,
            host: "H.Test:8000",
            request_headers: &req,
            response_headers: Some(&resp),
            status: 502,
            request_body_bytes: 10,
            response_body_bytes: 7,
            started_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
            latency: 0.0304,
            upstream_latency: None,
            upstream_sent: None,
            upstream_status: None,
            upstream_uri: Some("/up"),
            tries: &tries,
            error: Some("Connect\"Refused\n"),
            scheme: "https",
            tls_version: Some("TLSv1.3"),
            tls_cipher: Some("TLS_AES_256_GCM_SHA384"),
        };
        let text = kong_record_text(&entry, &ctx);
        let r: Value = serde_json::from_str(&text).unwrap();
        assert_known_keys(&r);
        let req_size = 10 + "host: h.test:8000\r\n".len() + "x-odd: caf\u{e9} \"q\"\r\n".len() - 1;
        let resp_size = 7 + "content-type: text/plain\r\n".len() + 3 * "via: a\r\n".len();
        assert_eq!(
            r,
            json!({
                "request": {
                    "id": "4f1c0ffee",
                    "uri": "/p%20x?a=1&a=2&b",
                    "url": "https://h.test:8443/p%20x?a=1&a=2&b",
                    "querystring": {"a": ["1", "2"], "b": true},
                    "method": "POST",
                    "headers": {"host": "h.test:8000", "x-odd": "caf\u{fffd} \"q\""},
                    "size": req_size,
                    "tls": {
                        "version": "TLSv1.3",
                        "cipher": "TLS_AES_256_GCM_SHA384",
                        "client_verify": "SUCCESS",
                    },
                },
                "upstream_uri": "/up",
                "upstream_status": "502, 502",
                "response": {
                    "status": 502,
                    "headers": {"content-type": "text/plain", "via": ["a", "b", "c"]},
                    "size": resp_size,
                },
                "tries": [
                    {
                        "ip": "10.0.0.1",
                        "port": 8080,
                        "balancer_latency": 3,
                        "balancer_start": 1_700_000_000_125u64,
                        "balancer_start_ns": 1_700_000_000_125_000_000u64,
                        "state": "failed",
                        "code": 502,
                    },
                    {"ip": "::1", "port": 443, "balancer_latency": 0},
                ],
                "latencies": {"kong": 30, "proxy": -1, "request": 30, "receive": 0},
                "client_ip": "::ffff:1.2.3.4",
                "started_at": 1_700_000_000_123u64,
                "source": "kong",
                "route": {"id": "r1", "paths": ["/p"]},
                "error": "Connect\"Refused\n",
            })
        );
        let order = [
            "\"request\"",
            "\"upstream_uri\"",
            "\"upstream_status\"",
            "\"response\"",
            "\"tries\"",
            "\"latencies\"",
            "\"client_ip\"",
            "\"started_at\"",
            "\"source\"",
            "\"route\"",
            "\"error\"",
        ];
        let at: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn cookies_are_redacted_both_ways() {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", "session=abc".parse().unwrap());
        h.append("set-cookie", "session=abc; Path=/".parse().unwrap());
        h.append("set-cookie", "theme=dark".parse().unwrap());
        let mut out = Vec::new();
        let size = headers(&mut out, Some(&h), &[]);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            size,
            "cookie: session=abc\r\n".len()
                + "set-cookie: session=abc; Path=/\r\n".len()
                + "set-cookie: theme=dark\r\n".len()
        );
        assert_eq!(v["cookie"], "REDACTED");
        assert_eq!(v["set-cookie"], json!(["REDACTED", "REDACTED"]));
    }

    #[test]
    fn latencies_split_as_kongs_and_upstream_status_lists_each_try() {
        let headers = http::HeaderMap::new();
        let uri: http::Uri = "/".parse().unwrap();
        let t = |connected: bool| crate::Try {
            addr: Some("10.0.0.1:80".parse().unwrap()),
            connect_ms: 1,
            started_at: None,
            connected_at: connected.then(std::time::SystemTime::now),
            reused: false,
            tls: false,
        };
        let tries = [t(false), t(true)];
        let entry = LogEntry {
            method: &http::Method::GET,
            uri: &uri,
            version: http::Version::HTTP_11,
            host: "h",
            request_headers: &headers,
            response_headers: Some(&headers),
            status: 201,
            request_body_bytes: 0,
            response_body_bytes: 0,
            started_at: std::time::UNIX_EPOCH,
            latency: 0.030,
            upstream_latency: Some(0.020),
            upstream_sent: Some(0.005),
            upstream_status: Some(200),
            upstream_uri: Some("/"),
            tries: &tries,
            error: None,
            scheme: "http",
            tls_version: None,
            tls_cipher: None,
        };
        let r = kong_record(&entry, &RequestCtx::default());
        assert_eq!(
            r["latencies"],
            json!({"kong": 5, "proxy": 20, "request": 30, "receive": 5})
        );
        assert_eq!(r["upstream_status"], "502, 200");
        assert_eq!(r["tries"][0]["state"], "failed");
        assert_eq!(r["tries"][1].get("state"), None);
        assert_eq!(r["request"].get("tls"), None);
    }

    #[test]
    fn url_authority_is_kongs_host_and_server_port() {
        let url = |host: &str, server: Option<&str>| {
            let mut out = Vec::new();
            url_authority(&mut out, host, server.map(|s| s.parse().unwrap()));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            url("API.example.com", Some("10.0.0.1:8000")),
            "api.example.com:8000"
        );
        assert_eq!(
            url("api.example.com:80", Some("10.0.0.1:8000")),
            "api.example.com:8000"
        );
        assert_eq!(url("[::1]:8443", Some("[::1]:8443")), "[::1]:8443");
        assert_eq!(url("", Some("10.0.0.1:8000")), "10.0.0.1:8000");
        assert_eq!(url("", Some("[2001:db8::1]:8000")), "[2001:db8::1]:8000");
        assert_eq!(url("h.test", None), "h.test");
        assert_eq!(url("a\"b", None), "a\\\"b");
    }
}
