//! response-transformer: changes the response headers and, for JSON responses, the body's
//! top-level keys, as Kong's response-transformer does (remove, rename, replace, add, append).
//!
//! ```yaml
//! plugins:
//!   - name: response-transformer
//!     route: api
//!     config:
//!       remove: {headers: [x-powered-by], json: [internal_id]}
//!       add: {json: ["api_version:2"], json_types: [number]}
//! ```
//!
//! A JSON body is held back until it is complete (Content-Length is dropped: the length
//! changes), up to [`MAX_BUFFERED_BODY`]; a longer body is passed on untouched from that point.
//! Every other response streams through untouched.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Phases, Plugin, PluginFactory,
    RequestCtx, ResponseHead,
};
use serde::Deserialize;
use serde_json::Value;

pub const NAME: &str = "response-transformer";
/// Kong's PRIORITY.
pub const PRIORITY: i32 = 800;
/// The largest JSON body rewritten; Kong has no limit, a gateway should not hold an unbounded
/// body in memory.
pub const MAX_BUFFERED_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lists {
    #[serde(default)]
    json: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    /// Only under replace, add and append.
    #[serde(default)]
    json_types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    remove: Lists,
    #[serde(default)]
    rename: Lists,
    #[serde(default)]
    replace: Lists,
    #[serde(default)]
    add: Lists,
    #[serde(default)]
    append: Lists,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum JsonType {
    String,
    Number,
    Boolean,
}

#[derive(Debug, Default)]
struct Ops<T> {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    replace: Vec<T>,
    add: Vec<T>,
    append: Vec<T>,
}

#[derive(Debug)]
pub struct ResponseTransformer {
    headers: Ops<(String, String)>,
    /// Values already converted to their JSON type; `None` is a value Kong drops (a `number`
    /// that does not parse).
    json: Ops<(String, Option<Value>)>,
    limit: usize,
}

/// Kong's `validate_header_name`.
fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn split_pair(entry: &str) -> (&str, &str) {
    match entry.split_once(':') {
        Some((n, v)) => (n, v.trim_start_matches(':')),
        None => (entry, ""),
    }
}

/// Kong's `json_value`: the configured text, cast to the configured type.
fn json_value(v: &str, t: JsonType) -> Option<Value> {
    match t {
        JsonType::String => Some(Value::String(v.to_string())),
        JsonType::Boolean => Some(Value::Bool(v == "true")),
        JsonType::Number => {
            let s = v.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Some(Value::from(i));
            }
            s.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
        }
    }
}

/// Kong's `is_json_body`: some `application/json` among the comma-separated types.
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(',').any(|t| {
            let mime = t.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        })
    })
}

/// Per-request buffering state, set in the header phase of a JSON response.
#[derive(Clone, Default)]
struct Buffer {
    data: BytesMut,
    /// The body outgrew the limit: the rest passes untouched.
    overflowed: bool,
}

impl ResponseTransformer {
    pub fn from_config(config: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut headers: Ops<(String, String)> = Ops::default();
        let mut json: Ops<(String, Option<Value>)> = Ops::default();
        for (op, l) in [("remove", &c.remove), ("rename", &c.rename)] {
            if !l.json_types.is_empty() {
                errors.push(ConfigError::new(
                    format!("{op}.json_types"),
                    "unknown field 'json_types' (only under replace, add and append)",
                ));
            }
        }
        headers.remove = c.remove.headers.clone();
        json.remove = c.remove.json.clone();
        for (i, e) in c.rename.headers.iter().enumerate() {
            let path = format!("rename.headers[{i}]");
            if !e.contains(':') {
                errors.push(ConfigError::new(path, format!("invalid value: {e}")));
                continue;
            }
            let (old, new) = split_pair(e);
            for n in [old, new] {
                if !valid_header_name(n) {
                    errors.push(ConfigError::new(
                        path.clone(),
                        format!("'{n}' is not a valid header"),
                    ));
                }
            }
            headers.rename.push((old.to_string(), new.to_string()));
        }
        for (i, e) in c.rename.json.iter().enumerate() {
            if !e.contains(':') {
                errors.push(ConfigError::new(
                    format!("rename.json[{i}]"),
                    format!("invalid value: {e}"),
                ));
                continue;
            }
            let (old, new) = split_pair(e);
            if !new.is_empty() {
                json.rename.push((old.to_string(), new.to_string()));
            }
        }
        for (op, l) in [
            ("replace", &c.replace),
            ("add", &c.add),
            ("append", &c.append),
        ] {
            let mut types = Vec::new();
            for (i, t) in l.json_types.iter().enumerate() {
                types.push(match t.as_str() {
                    "string" => JsonType::String,
                    "number" => JsonType::Number,
                    "boolean" => JsonType::Boolean,
                    _ => {
                        errors.push(ConfigError::new(
                            format!("{op}.json_types[{i}]"),
                            "expected one of: boolean, number, string",
                        ));
                        JsonType::String
                    }
                });
            }
            let mut hs = Vec::new();
            for (i, e) in l.headers.iter().enumerate() {
                if !e.contains(':') {
                    errors.push(ConfigError::new(
                        format!("{op}.headers[{i}]"),
                        format!("invalid value: {e}"),
                    ));
                    continue;
                }
                let (n, v) = split_pair(e);
                if http::HeaderName::from_bytes(n.as_bytes()).is_err()
                    || http::HeaderValue::from_str(v).is_err()
                {
                    errors.push(ConfigError::new(
                        format!("{op}.headers[{i}]"),
                        format!("'{e}' is not a valid header"),
                    ));
                    continue;
                }
                // Kong skips an entry without a value.
                if !v.is_empty() {
                    hs.push((n.to_string(), v.to_string()));
                }
            }
            let mut js = Vec::new();
            for (i, e) in l.json.iter().enumerate() {
                if !e.contains(':') {
                    errors.push(ConfigError::new(
                        format!("{op}.json[{i}]"),
                        format!("invalid value: {e}"),
                    ));
                    continue;
                }
                let (n, v) = split_pair(e);
                if v.is_empty() {
                    continue;
                }
                let t = types.get(i).copied().unwrap_or(JsonType::String);
                js.push((n.to_string(), json_value(v, t)));
            }
            match op {
                "replace" => (headers.replace, json.replace) = (hs, js),
                "add" => (headers.add, json.add) = (hs, js),
                _ => (headers.append, json.append) = (hs, js),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ResponseTransformer {
            headers,
            json,
            limit: MAX_BUFFERED_BODY,
        })
    }

    fn transforms_body(&self) -> bool {
        let j = &self.json;
        !(j.remove.is_empty()
            && j.rename.is_empty()
            && j.replace.is_empty()
            && j.add.is_empty()
            && j.append.is_empty())
    }

    /// Kong's `transform_json_body`; `None` when the body is no JSON object.
    fn transform_json(&self, body: &[u8]) -> Option<Vec<u8>> {
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        let j = &self.json;
        for n in &j.remove {
            obj.remove(n);
        }
        for (old, new) in &j.rename {
            if let Some(v) = obj.remove(old) {
                obj.insert(new.clone(), v);
            }
        }
        // Lua truthiness: absent and `false` are false; `null` is a value.
        let truthy = |v: Option<&Value>| !matches!(v, None | Some(Value::Bool(false)));
        for (n, v) in &j.replace {
            if let Some(v) = v {
                if truthy(obj.get(n)) {
                    obj.insert(n.clone(), v.clone());
                }
            }
        }
        for (n, v) in &j.add {
            if let Some(v) = v {
                if !truthy(obj.get(n)) {
                    obj.insert(n.clone(), v.clone());
                }
            }
        }
        for (n, v) in &j.append {
            let Some(v) = v else { continue };
            let new = match obj.remove(n) {
                Some(Value::String(s)) => Value::Array(vec![Value::String(s), v.clone()]),
                Some(Value::Array(mut a)) => {
                    a.push(v.clone());
                    Value::Array(a)
                }
                _ => Value::Array(vec![v.clone()]),
            };
            obj.insert(n.clone(), new);
        }
        Some(Value::Object(obj).to_string().into_bytes())
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &Value,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(ResponseTransformer::from_config(config)?))
    }
}

#[async_trait]
impl Plugin for ResponseTransformer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        if self.transforms_body() {
            Phases::RESPONSE_HEADERS | Phases::RESPONSE_BODY
        } else {
            Phases::RESPONSE_HEADERS
        }
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        let h = &mut *resp.headers;
        // Kong tests presence against the headers as they were before any change.
        let before = |h: &dyn portcullis_plugin_api::HeaderEdit, n: &str| {
            h.get_all(n)
                .into_iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
        };
        let o = &self.headers;
        let renamed: Vec<Vec<String>> = o.rename.iter().map(|(old, _)| before(h, old)).collect();
        let replaced: Vec<bool> = o.replace.iter().map(|(n, _)| h.get(n).is_some()).collect();
        let added: Vec<bool> = o.add.iter().map(|(n, _)| h.get(n).is_some()).collect();
        let content_type = h
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        for n in &o.remove {
            h.remove(n);
        }
        for ((old, new), values) in o.rename.iter().zip(renamed) {
            if let Some((first, rest)) = values.split_first() {
                h.set(new, first);
                for v in rest {
                    h.append(new, v);
                }
                if !old.eq_ignore_ascii_case(new) {
                    h.remove(old);
                }
            }
        }
        for ((n, v), present) in o.replace.iter().zip(replaced) {
            if present {
                h.set(n, v);
            }
        }
        for ((n, v), present) in o.add.iter().zip(added) {
            if !present {
                h.set(n, v);
            }
        }
        for (n, v) in &o.append {
            h.append(n, v);
        }
        // The body is rewritten only for JSON from the upstream (the gateway's own answers have
        // no body phase).
        if self.transforms_body() && !resp.from_gateway && is_json(content_type.as_deref()) {
            h.remove("content-length");
            ctx.extensions.insert(Buffer::default());
        }
    }

    fn response_body(&self, chunk: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let Some(buf) = ctx.extensions.get_mut::<Buffer>() else {
            return;
        };
        if buf.overflowed {
            return;
        }
        if let Some(c) = chunk.take() {
            if buf.data.len() + c.len() > self.limit {
                tracing::warn!(
                    request_id = %ctx.request_id,
                    limit = self.limit,
                    "response-transformer: JSON body larger than the limit, passed on untouched"
                );
                buf.overflowed = true;
                let mut all = std::mem::take(&mut buf.data);
                all.extend_from_slice(&c);
                *chunk = Some(all.freeze());
                return;
            }
            buf.data.extend_from_slice(&c);
        }
        if !end_of_stream {
            return;
        }
        let data = std::mem::take(&mut buf.data).freeze();
        *chunk = match self.transform_json(&data) {
            Some(b) => Some(Bytes::from(b)),
            None => {
                if !data.is_empty() {
                    tracing::warn!(
                        request_id = %ctx.request_id,
                        "response-transformer: body transform failed: failed parsing json body"
                    );
                }
                Some(data)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(config: Value) -> ResponseTransformer {
        ResponseTransformer::from_config(&config).unwrap_or_else(|e| panic!("{config}: {e:?}"))
    }

    #[test]
    fn json_body_like_kong() {
        let p = plugin(json!({
            "remove": {"json": ["secret"]},
            "rename": {"json": ["old:new"]},
            "replace": {"json": ["r:1", "f:x"], "json_types": ["number"]},
            "add": {"json": ["a:true", "r:no", "f:y"], "json_types": ["boolean"]},
            "append": {"json": ["s:2", "n:3"], "json_types": ["string", "number"]},
        }));
        let out = p
            .transform_json(br#"{"secret":1,"old":"o","r":"0","f":false,"s":"1","n":null}"#)
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"new":"o","r":1,"f":"y","a":true,"s":["1","2"],"n":[3]})
        );
        assert!(p.transform_json(b"[1]").is_none());
        assert!(p.transform_json(b"nope").is_none());
    }

    #[test]
    fn body_is_buffered_then_rewritten_or_passed_on_beyond_the_limit() {
        let mut p = plugin(json!({"add": {"json": ["x:1"]}}));
        let mut ctx = RequestCtx::default();
        ctx.extensions.insert(Buffer::default());
        let mut c = Some(Bytes::from_static(b"{\"a\":"));
        p.response_body(&mut c, false, &mut ctx);
        assert!(c.is_none());
        let mut c = Some(Bytes::from_static(b"1}"));
        p.response_body(&mut c, true, &mut ctx);
        assert_eq!(c.as_deref(), Some(&br#"{"a":1,"x":"1"}"#[..]));

        p.limit = 4;
        let mut ctx = RequestCtx::default();
        ctx.extensions.insert(Buffer::default());
        let mut c = Some(Bytes::from_static(b"{\"a\""));
        p.response_body(&mut c, false, &mut ctx);
        assert!(c.is_none());
        let mut c = Some(Bytes::from_static(b":1}"));
        p.response_body(&mut c, false, &mut ctx);
        assert_eq!(c.as_deref(), Some(&b"{\"a\":1}"[..]));
        let mut c = Some(Bytes::from_static(b" "));
        p.response_body(&mut c, true, &mut ctx);
        assert_eq!(c.as_deref(), Some(&b" "[..]));
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("text/plain, application/json")));
        assert!(!is_json(Some("text/json")));
        assert!(!is_json(None));
    }

    #[test]
    fn bad_config() {
        let e =
            ResponseTransformer::from_config(&json!({"add": {"json_types": ["int"]}})).unwrap_err();
        assert_eq!(
            (e[0].path.as_str(), e[0].message.as_str()),
            (
                "add.json_types[0]",
                "expected one of: boolean, number, string"
            )
        );
        let e = ResponseTransformer::from_config(&json!({"add": {"headers": ["nocolon"]}}))
            .unwrap_err();
        assert_eq!(
            (e[0].path.as_str(), e[0].message.as_str()),
            ("add.headers[0]", "invalid value: nocolon")
        );
        let e = ResponseTransformer::from_config(&json!({"rename": {"headers": ["a:b c"]}}))
            .unwrap_err();
        assert_eq!(e[0].message, "'b c' is not a valid header");
        let e = ResponseTransformer::from_config(&json!({"remove": {"body": []}})).unwrap_err();
        assert_eq!(e[0].path, "remove.body");
    }
}
