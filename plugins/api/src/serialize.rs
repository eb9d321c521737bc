//! Kong's log record (`kong.log.serialize()`): the JSON object Kong's logging plugins write, so
//! dashboards and parsers built for Kong keep working. Shared by every logging plugin.
//!
//! As in Kong, `Authorization` and `Proxy-Authorization` request headers are `REDACTED`; this
//! gateway also redacts `Cookie` values and the credentials auth plugins read (they list them in
//! [`RedactHeaders`] / [`RedactQuery`] extensions), because the quality bar is never to log a
//! secret.

use crate::{LogEntry, RequestCtx};
use serde::{ser::SerializeMap, Serialize, Serializer};
use serde_json::{value::RawValue, Value};

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

/// A header map as Kong writes it: one string per name, a list when the name repeats.
struct Headers<'a> {
    /// `None` (no response sent) writes `{}`.
    map: Option<&'a http::HeaderMap>,
    redact: &'a [String],
}

impl Headers<'_> {
    /// Kong's `size` counts the head as `name: value\r\n` lines.
    fn size(&self) -> usize {
        self.map.map_or(0, |m| {
            m.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
        })
    }
}

/// One header name's values: the run of entries `HeaderMap::iter` yields for it.
struct Values<'a> {
    values: &'a [&'a http::HeaderValue],
    hidden: bool,
}

impl<'a> Values<'a> {
    fn text(&self, v: &'a http::HeaderValue) -> std::borrow::Cow<'a, str> {
        if self.hidden {
            std::borrow::Cow::Borrowed(REDACTED)
        } else {
            String::from_utf8_lossy(v.as_bytes())
        }
    }
}

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.values {
            [one] => s.serialize_str(&self.text(one)),
            many => s.collect_seq(many.iter().map(|v| self.text(v))),
        }
    }
}

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(map) = self.map else {
            return s.serialize_map(Some(0))?.end();
        };
        let mut m = s.serialize_map(Some(map.keys_len()))?;
        // `iter` yields each name's values together: grouping runs avoids a hash lookup per
        // name (`get_all`).
        let mut iter = map.iter().peekable();
        let mut run: Vec<&http::HeaderValue> = Vec::new();
        while let Some((name, value)) = iter.next() {
            run.clear();
            run.push(value);
            while let Some((_, v)) = iter.next_if(|(n, _)| *n == name) {
                run.push(v);
            }
            let n = name.as_str();
            let hidden = ALWAYS_REDACTED.contains(&n) || self.redact.iter().any(|r| r == n);
            m.serialize_entry(
                n,
                &Values {
                    values: &run,
                    hidden,
                },
            )?;
        }
        m.end()
    }
}

/// Kong's `querystring`: each argument once, a list when it repeats, `true` without a value.
struct Query<'a> {
    query: &'a str,
    redact: &'a [String],
}

impl Serialize for Query<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.query.is_empty() {
            return s.serialize_map(Some(0))?.end();
        }
        // First-seen order, repeated arguments gathered: queries are short, a scan is cheaper
        // than a map.
        let mut args: Vec<(String, Vec<Value>)> = Vec::new();
        for (k, v) in crate::query_args(self.query) {
            let v = if self.redact.contains(&k) {
                Value::from(REDACTED)
            } else if v.is_empty() {
                Value::Bool(true)
            } else {
                Value::from(v)
            };
            match args.iter_mut().find(|(n, _)| *n == k) {
                Some((_, vs)) => vs.push(v),
                None => args.push((k, vec![v])),
            }
        }
        let mut m = s.serialize_map(Some(args.len()))?;
        for (k, vs) in &args {
            match vs.as_slice() {
                [one] => m.serialize_entry(k, one)?,
                many => m.serialize_entry(k, many)?,
            }
        }
        m.end()
    }
}

/// `uri` with the values of the `redact` query arguments replaced by `REDACTED`.
fn redact_uri<'a>(uri: &'a str, redact: &[String]) -> std::borrow::Cow<'a, str> {
    let Some((path, query)) = uri.split_once('?') else {
        return uri.into();
    };
    if redact.is_empty() {
        return uri.into();
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
    format!("{path}?{}", kept.join("&")).into()
}

#[derive(Serialize)]
struct Record<'a> {
    request: Request<'a>,
    upstream_uri: std::borrow::Cow<'a, str>,
    response: Response<'a>,
    tries: Tries<'a>,
    latencies: Latencies,
    client_ip: Option<std::net::IpAddr>,
    started_at: u64,
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<ConsumerRecord<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    authenticated_entity: Option<Entity<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// correlation-id's `kong.log.set_serialize_value("correlation_id", …)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Request<'a> {
    uri: &'a str,
    url: String,
    querystring: Query<'a>,
    method: &'a str,
    headers: Headers<'a>,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls<'a>>,
}

#[derive(Serialize)]
struct Tls<'a> {
    version: &'a str,
}

#[derive(Serialize)]
struct Response<'a> {
    status: u16,
    headers: Headers<'a>,
    size: usize,
}

struct Tries<'a>(&'a [crate::Try]);

impl Serialize for Tries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct One {
            ip: Option<std::net::IpAddr>,
            port: Option<u16>,
            balancer_latency: u64,
        }
        s.collect_seq(self.0.iter().map(|t| One {
            ip: t.addr.map(|a| a.ip()),
            port: t.addr.map(|a| a.port()),
            balancer_latency: t.connect_ms,
        }))
    }
}

#[derive(Serialize)]
struct Latencies {
    kong: i64,
    proxy: i64,
    request: i64,
}

#[derive(Serialize)]
struct ConsumerRecord<'a> {
    id: &'a str,
    username: &'a Option<String>,
    custom_id: &'a Option<String>,
    tags: &'a [String],
}

#[derive(Serialize)]
struct Entity<'a> {
    id: &'a str,
    consumer_id: &'a str,
}

/// Writes the Kong log record of one request straight to JSON text: no intermediate tree, header
/// values borrowed from the request, route and service spliced in as serialised at load.
pub fn write_kong_record(
    out: &mut Vec<u8>,
    entry: &LogEntry<'_>,
    ctx: &RequestCtx,
) -> Result<(), serde_json::Error> {
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
    let req_headers = Headers {
        map: Some(entry.request_headers),
        redact: redact_h,
    };
    let resp_headers = Headers {
        map: entry.response_headers,
        redact: &[],
    };
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
    let kong_ms = if proxy_ms >= 0 {
        (request_ms - proxy_ms).max(0)
    } else {
        request_ms
    };
    let record = Record {
        request: Request {
            url: format!("{}://{}{}", entry.scheme, entry.host, request_uri),
            uri: &request_uri,
            querystring: Query {
                query: entry.uri.query().unwrap_or(""),
                redact: redact_q,
            },
            method: entry.method.as_str(),
            size: entry.request_body_bytes as usize + req_headers.size(),
            headers: req_headers,
            tls: entry.tls_version.map(|version| Tls { version }),
        },
        upstream_uri: redact_uri(entry.upstream_uri.unwrap_or(""), redact_q),
        response: Response {
            status: entry.status,
            size: entry.response_body_bytes as usize + resp_headers.size(),
            headers: resp_headers,
        },
        tries: Tries(entry.tries),
        latencies: Latencies {
            kong: kong_ms,
            proxy: proxy_ms,
            request: request_ms,
        },
        client_ip: ctx.client_ip,
        started_at: entry
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        source: if entry.upstream_latency.is_some() {
            "upstream"
        } else {
            "kong"
        },
        route: ctx.route_info.as_ref().map(|r| &*r.json_text),
        service: ctx.service_info.as_ref().map(|s| &*s.json_text),
        consumer: ctx.consumer.as_ref().map(|c| ConsumerRecord {
            id: &c.id,
            username: &c.username,
            custom_id: &c.custom_id,
            tags: &c.tags,
        }),
        authenticated_entity: ctx.consumer.as_ref().and_then(|c| {
            ctx.credential_identifier.as_deref().map(|id| Entity {
                id,
                consumer_id: &c.id,
            })
        }),
        error: entry.error,
        correlation_id: ctx.shared.get("correlation_id").map(|s| s.as_str()),
    };
    serde_json::to_writer(out, &record)
}

/// The Kong log record of one request, as text.
pub fn kong_record_text(entry: &LogEntry<'_>, ctx: &RequestCtx) -> String {
    let mut out = Vec::with_capacity(1024);
    if write_kong_record(&mut out, entry, ctx).is_err() {
        // Serialising borrowed strings and numbers into memory cannot fail; an empty object
        // keeps the stream parseable if it ever did.
        return "{}".into();
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(out).unwrap_or_else(|_| "{}".into())
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
        let v = serde_json::to_value(Headers {
            map: Some(&h),
            redact: &[],
        })
        .unwrap();
        assert_eq!(v["cookie"], "REDACTED");
        assert_eq!(v["set-cookie"], json!(["REDACTED", "REDACTED"]));
    }
}
