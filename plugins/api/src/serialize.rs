//! Kong's log record (`kong.log.serialize()`): the JSON object Kong's logging plugins write, so
//! dashboards and parsers built for Kong keep working. Shared by every logging plugin.
//!
//! As in Kong, `Authorization` and `Proxy-Authorization` request headers are `REDACTED`; this
//! gateway also redacts `Cookie` values and the credentials auth plugins read (they list them in
//! [`RedactHeaders`] / [`RedactQuery`] extensions), because the quality bar is never to log a
//! secret.

use crate::{LogEntry, RequestCtx};
use serde_json::{json, Map, Value};

/// Request header names (lower case) whose values log records must not show, added by the
/// plugins that read credentials from them (`apikey` for key-auth).
#[derive(Debug, Clone, Default)]
pub struct RedactHeaders(pub Vec<String>);

/// Query argument names whose values log records must not show (`jwt`, `apikey`).
#[derive(Debug, Clone, Default)]
pub struct RedactQuery(pub Vec<String>);

const REDACTED: &str = "REDACTED";
/// `Set-Cookie` too: a session cookie (the session plugin's, or the upstream's) is a bearer
/// credential, as replayable from a log as the `Cookie` that carries it back.
const ALWAYS_REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

fn headers_json(headers: &http::HeaderMap, redact: &[String]) -> (Value, usize) {
    let mut m = Map::new();
    let mut size = 0usize;
    for name in headers.keys() {
        let n = name.as_str();
        let hidden = ALWAYS_REDACTED.contains(&n) || redact.iter().any(|r| r == n);
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                size += n.len() + v.len() + 4;
                if hidden {
                    Value::from(REDACTED)
                } else {
                    Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }
            })
            .collect();
        let v = if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        m.insert(n.to_string(), v);
    }
    (Value::Object(m), size)
}

fn query_json(query: &str, redact: &[String]) -> Value {
    let mut m = Map::new();
    for (k, v) in crate::query_args(query) {
        let v = if redact.contains(&k) {
            Value::from(REDACTED)
        } else if v.is_empty() {
            // Kong shows an argument without a value as `true`.
            Value::Bool(true)
        } else {
            Value::from(v)
        };
        match m.get_mut(&k) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, v]);
            }
            None => {
                m.insert(k, v);
            }
        }
    }
    Value::Object(m)
}

/// `uri` with the values of the `redact` query arguments replaced by `REDACTED`.
fn redact_uri(uri: &str, redact: &[String]) -> String {
    let Some((path, query)) = uri.split_once('?') else {
        return uri.to_string();
    };
    if redact.is_empty() {
        return uri.to_string();
    }
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
    format!("{path}?{}", kept.join("&"))
}

/// The Kong log record of one request.
pub fn kong_record(entry: &LogEntry<'_>, ctx: &RequestCtx) -> Value {
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
    let (req_headers, req_head_size) = headers_json(entry.request_headers, redact_h);
    let (resp_headers, resp_head_size) = match entry.response_headers {
        Some(h) => headers_json(h, &[]),
        None => (json!({}), 0),
    };
    let path_and_query = entry
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let query = entry.uri.query().unwrap_or("");
    let request_uri = redact_uri(path_and_query, redact_q);
    let upstream_uri = redact_uri(entry.upstream_uri.unwrap_or(""), redact_q);
    let started_ms = entry
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let request_ms = (entry.latency * 1000.0).round() as i64;
    let proxy_ms = entry
        .upstream_latency
        .map(|u| (u * 1000.0).round() as i64)
        .unwrap_or(-1);
    let kong_ms = if proxy_ms >= 0 {
        (request_ms - proxy_ms).max(0)
    } else {
        request_ms
    };
    let mut rec = json!({
        "request": {
            "uri": request_uri,
            "url": format!("{}://{}{}", entry.scheme, entry.host, request_uri),
            "querystring": query_json(query, redact_q),
            "method": entry.method.as_str(),
            "headers": req_headers,
            "size": entry.request_body_bytes as usize + req_head_size,
        },
        "upstream_uri": upstream_uri,
        "response": {
            "status": entry.status,
            "headers": resp_headers,
            "size": entry.response_body_bytes as usize + resp_head_size,
        },
        "tries": entry.tries.iter().map(|t| json!({
            "ip": t.addr.map(|a| a.ip().to_string()),
            "port": t.addr.map(|a| a.port()),
            "balancer_latency": t.connect_ms,
        })).collect::<Vec<_>>(),
        "latencies": {
            "kong": kong_ms,
            "proxy": proxy_ms,
            "request": request_ms,
        },
        "client_ip": ctx.client_ip.map(|i| i.to_string()),
        "started_at": started_ms,
        "source": if entry.upstream_latency.is_some() { "upstream" } else { "kong" },
    });
    if let (Some(v), Value::Object(m)) = (entry.tls_version, &mut rec["request"]) {
        m.insert("tls".into(), json!({ "version": v }));
    }
    let Value::Object(m) = &mut rec else {
        return rec;
    };
    if let Some(r) = &ctx.route_info {
        m.insert("route".into(), r.json.clone());
    }
    if let Some(s) = &ctx.service_info {
        m.insert("service".into(), s.json.clone());
    }
    if let Some(c) = &ctx.consumer {
        m.insert(
            "consumer".into(),
            json!({
                "id": c.id,
                "username": c.username,
                "custom_id": c.custom_id,
                "tags": c.tags,
            }),
        );
        if let Some(cred) = &ctx.credential_identifier {
            m.insert(
                "authenticated_entity".into(),
                json!({ "id": cred, "consumer_id": c.id }),
            );
        }
    }
    if let Some(e) = entry.error {
        m.insert("error".into(), Value::from(e));
    }
    // correlation-id's `kong.log.set_serialize_value("correlation_id", …)`.
    if let Some(id) = ctx.shared.get("correlation_id") {
        m.insert("correlation_id".into(), Value::from(id.as_str()));
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
            host: "h.test",
            request_headers: &headers,
            response_headers: None,
            status: 200,
            request_body_bytes: 0,
            response_body_bytes: 5,
            started_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1500),
            latency: 0.010,
            upstream_latency: Some(0.004),
            upstream_uri: Some("/up?jwt=tok"),
            tries: &[],
            error: None,
            scheme: "http",
            tls_version: None,
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
        assert_eq!(r["consumer"]["username"], "alice");
        assert_eq!(r["authenticated_entity"]["id"], "cred-1");
        assert_eq!(r["client_ip"], "127.0.0.9");
        assert_eq!(r["upstream_uri"], "/up?jwt=REDACTED");
        assert_eq!(r.get("correlation_id"), None);
        ctx.shared.insert("correlation_id", "abc#1".into());
        assert_eq!(kong_record(&entry, &ctx)["correlation_id"], "abc#1");
    }

    #[test]
    fn cookies_are_redacted_both_ways() {
        let mut h = http::HeaderMap::new();
        h.insert("cookie", "session=abc".parse().unwrap());
        h.append("set-cookie", "session=abc; Path=/".parse().unwrap());
        h.append("set-cookie", "theme=dark".parse().unwrap());
        let (v, _) = headers_json(&h, &[]);
        assert_eq!(v["cookie"], "REDACTED");
        assert_eq!(v["set-cookie"], json!(["REDACTED", "REDACTED"]));
    }
}
