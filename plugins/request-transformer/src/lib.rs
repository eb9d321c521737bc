//! request-transformer: changes the request sent upstream — method, path, headers, query string
//! and JSON / form bodies — as Kong's request-transformer does (remove, rename, replace, add,
//! append, in that order), with Kong's templates for values.
//!
//! ```yaml
//! plugins:
//!   - name: request-transformer
//!     route: api
//!     config:
//!       remove: {headers: [x-debug]}
//!       add: {headers: ["x-api-version:$(uri_captures.version)"], querystring: ["source:gw"]}
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;

use portcullis_plugin_api::template::Template;
use portcullis_plugin_api::{
    async_trait, parse_config, percent_encode, query_args, BuildContext, ConfigError, Flow, Phases,
    Plugin, PluginFactory, PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;
use serde_json::Value;

pub const NAME: &str = "request-transformer";
/// Kong's PRIORITY: after authentication, so templates may read what auth plugins set.
pub const PRIORITY: i32 = 801;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lists {
    #[serde(default)]
    body: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    querystring: Vec<String>,
    /// Only under `replace`.
    #[serde(default)]
    uri: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    http_method: Option<String>,
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

/// One `name:value` entry with its value template.
#[derive(Debug)]
struct Pair {
    name: String,
    value: Template,
}

#[derive(Debug, Default)]
struct Ops {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    replace: Vec<Pair>,
    add: Vec<Pair>,
    append: Vec<Pair>,
}

impl Ops {
    fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.rename.is_empty()
            && self.replace.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
    }
}

#[derive(Debug)]
pub struct RequestTransformer {
    http_method: Option<http::Method>,
    uri: Option<Template>,
    headers: Ops,
    query: Ops,
    body: Ops,
    /// Some template reads `uri_captures`: the gateway must fill them.
    uses_captures: bool,
}

impl Ops {
    fn templates(&self) -> impl Iterator<Item = &Template> {
        self.replace
            .iter()
            .chain(&self.add)
            .chain(&self.append)
            .map(|p| &p.value)
    }
}

/// Kong's `validate_header_name`.
fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Kong splits entries with `^([^:]+):*(.-)$`: the name up to the first colon, the value after
/// any run of colons.
fn split_pair(entry: &str) -> (&str, &str) {
    match entry.split_once(':') {
        Some((n, v)) => (n, v.trim_start_matches(':')),
        None => (entry, ""),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Headers,
    Query,
    Body,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Kind::Headers => "headers",
            Kind::Query => "querystring",
            Kind::Body => "body",
        }
    }
}

fn build_ops(c: &Config, kind: Kind, errors: &mut Vec<ConfigError>) -> Ops {
    let pick = |l: &Lists| -> Vec<String> {
        match kind {
            Kind::Headers => l.headers.clone(),
            Kind::Query => l.querystring.clone(),
            Kind::Body => l.body.clone(),
        }
    };
    let field = kind.field();
    let mut ops = Ops::default();
    for (i, name) in pick(&c.remove).into_iter().enumerate() {
        let (n, _) = split_pair(&name);
        if kind == Kind::Headers && !valid_header_name(n) {
            errors.push(ConfigError::new(
                format!("remove.{field}[{i}]"),
                format!("'{n}' is not a valid header"),
            ));
        }
        ops.remove.push(n.to_string());
    }
    for (i, entry) in pick(&c.rename).into_iter().enumerate() {
        let path = format!("rename.{field}[{i}]");
        let (old, new) = split_pair(&entry);
        if !entry.contains(':') {
            errors.push(ConfigError::new(path, format!("invalid value: {entry}")));
            continue;
        }
        if kind == Kind::Headers {
            for n in [old, new] {
                if !valid_header_name(n) {
                    errors.push(ConfigError::new(
                        path.clone(),
                        format!("'{n}' is not a valid header"),
                    ));
                }
            }
        } else if new.is_empty() {
            errors.push(ConfigError::new(path, format!("key '{old}' has no value")));
            continue;
        }
        ops.rename.push((old.to_string(), new.to_string()));
    }
    for (op, list) in [
        ("replace", &c.replace),
        ("add", &c.add),
        ("append", &c.append),
    ] {
        for (i, entry) in pick(list).into_iter().enumerate() {
            let path = format!("{op}.{field}[{i}]");
            let (name, value) = split_pair(&entry);
            if kind == Kind::Headers {
                if !entry.contains(':') {
                    errors.push(ConfigError::new(path, format!("invalid value: {entry}")));
                    continue;
                }
                if !valid_header_name(name) {
                    errors.push(ConfigError::new(
                        path,
                        format!("'{name}' is not a valid header"),
                    ));
                    continue;
                }
            } else if value.is_empty() {
                errors.push(ConfigError::new(path, format!("key '{name}' has no value")));
                continue;
            }
            let value = match Template::parse(value) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(ConfigError::new(path, e));
                    continue;
                }
            };
            // A header entry with an empty value changes nothing in Kong.
            if kind == Kind::Headers && value.is_empty() {
                continue;
            }
            let pair = Pair {
                name: if kind == Kind::Headers {
                    name.to_ascii_lowercase()
                } else {
                    name.to_string()
                },
                value,
            };
            match op {
                "replace" => ops.replace.push(pair),
                "add" => ops.add.push(pair),
                _ => ops.append.push(pair),
            }
        }
    }
    if kind == Kind::Headers {
        for n in ops.remove.iter_mut() {
            *n = n.to_ascii_lowercase();
        }
        for (o, n) in ops.rename.iter_mut() {
            *o = o.to_ascii_lowercase();
            *n = n.to_ascii_lowercase();
        }
    }
    ops
}

impl RequestTransformer {
    pub fn from_config(config: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        for (op, l) in [
            ("remove", &c.remove),
            ("rename", &c.rename),
            ("add", &c.add),
            ("append", &c.append),
        ] {
            if l.uri.is_some() {
                errors.push(ConfigError::new(
                    format!("{op}.uri"),
                    "unknown field 'uri' (only replace.uri exists)",
                ));
            }
        }
        let http_method = match &c.http_method {
            None => None,
            Some(m) if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                http::Method::from_bytes(m.as_bytes()).ok()
            }
            Some(m) => {
                errors.push(ConfigError::new(
                    "http_method",
                    format!("invalid value: {m}"),
                ));
                None
            }
        };
        let uri = match &c.replace.uri {
            None => None,
            Some(u) => match Template::parse(u) {
                Ok(t) => Some(t),
                Err(e) => {
                    errors.push(ConfigError::new("replace.uri", e));
                    None
                }
            },
        };
        let headers = build_ops(&c, Kind::Headers, &mut errors);
        let query = build_ops(&c, Kind::Query, &mut errors);
        let body = build_ops(&c, Kind::Body, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let uses_captures = uri
            .iter()
            .chain(headers.templates())
            .chain(query.templates())
            .chain(body.templates())
            .any(Template::uses_captures);
        Ok(RequestTransformer {
            http_method,
            uri,
            headers,
            query,
            body,
            uses_captures,
        })
    }

    /// Whether the body must be read: body operations, or a method change to GET/HEAD/TRACE
    /// that moves a form body into the query string.
    fn needs_body(&self) -> bool {
        !self.body.is_empty()
            || matches!(
                &self.http_method,
                Some(m) if *m == http::Method::GET || *m == http::Method::HEAD || *m == http::Method::TRACE
            )
    }

    fn transform_headers(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) {
        let ops = &self.headers;
        if ops.is_empty() {
            return;
        }
        // The headers this configuration touches, as Kong's header table would hold them.
        let mut table: Vec<(String, Vec<String>)> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        fn slot<'a>(
            table: &'a mut Vec<(String, Vec<String>)>,
            touched: &mut Vec<String>,
            req: &RequestView<'_>,
            name: &str,
        ) -> &'a mut Vec<String> {
            if !touched.iter().any(|t| t == name) {
                touched.push(name.to_string());
                let values = if name == "host" {
                    Vec::new()
                } else {
                    req.headers
                        .get_all(name)
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect()
                };
                table.push((name.to_string(), values));
            }
            let i = table.iter().position(|(n, _)| n == name).unwrap_or(0);
            &mut table[i].1
        }
        for n in &ops.remove {
            slot(&mut table, &mut touched, req, n).clear();
        }
        for (old, new) in &ops.rename {
            if old == new {
                continue;
            }
            let values = std::mem::take(slot(&mut table, &mut touched, req, old));
            if !values.is_empty() {
                *slot(&mut table, &mut touched, req, new) = values;
            }
        }
        for p in &ops.replace {
            let v = p.value.render(req, ctx);
            let s = slot(&mut table, &mut touched, req, &p.name);
            if !s.is_empty() || p.name == "host" {
                *s = vec![v];
            }
        }
        for p in &ops.add {
            if p.name == "host" {
                continue;
            }
            let v = p.value.render(req, ctx);
            let s = slot(&mut table, &mut touched, req, &p.name);
            if s.is_empty() {
                s.push(v);
            }
        }
        for p in &ops.append {
            let v = p.value.render(req, ctx);
            slot(&mut table, &mut touched, req, &p.name).push(v);
        }
        for (name, values) in &table {
            match values.split_first() {
                None if name != "host" => ctx.remove_upstream_header(name),
                None => {}
                Some((first, rest)) => {
                    ctx.set_upstream_header(name, first);
                    for v in rest {
                        ctx.append_upstream_header(name, v);
                    }
                }
            }
        }
    }

    /// The upstream query after the method change and the querystring operations; `None`
    /// when nothing changes it.
    fn transform_query(
        &self,
        req: &RequestView<'_>,
        ctx: &RequestCtx,
        form_into_query: Option<&Args>,
    ) -> Option<String> {
        if self.query.is_empty() && form_into_query.is_none() {
            return None;
        }
        let mut args = Args::parse(req.uri.query().unwrap_or(""));
        if let Some(form) = form_into_query {
            for (k, vs) in &form.0 {
                for v in vs {
                    args.append(k, v.clone());
                }
            }
        }
        if !self.query.is_empty() {
            apply_args(&mut args, &self.query, req, ctx, true);
        }
        Some(args.encode_sorted())
    }
}

/// Decoded `application/x-www-form-urlencoded` / query arguments, in order, repeats grouped.
/// `None` is a bare key (`?flag`).
#[derive(Debug, Default, Clone)]
struct Args(Vec<(String, Vec<Option<String>>)>);

impl Args {
    fn parse(s: &str) -> Args {
        let mut a = Args::default();
        for pair in s.split('&').filter(|p| !p.is_empty()) {
            let has_value = pair.contains('=');
            let (k, v) = query_args(pair).next().unwrap_or_default();
            a.append(&k, has_value.then_some(v));
        }
        a
    }

    fn get_mut(&mut self, k: &str) -> Option<&mut Vec<Option<String>>> {
        self.0.iter_mut().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    fn append(&mut self, k: &str, v: Option<String>) {
        match self.get_mut(k) {
            Some(vs) => vs.push(v),
            None => self.0.push((k.to_string(), vec![v])),
        }
    }

    fn remove(&mut self, k: &str) -> Option<Vec<Option<String>>> {
        let i = self.0.iter().position(|(n, _)| n == k)?;
        Some(self.0.remove(i).1)
    }

    fn encode_one(k: &str, vs: &[Option<String>]) -> String {
        vs.iter()
            .map(|v| match v {
                Some(v) if !v.is_empty() => format!("{}={}", percent_encode(k), percent_encode(v)),
                _ => percent_encode(k),
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Kong's `kong.service.request.set_query`: each argument encoded, then sorted.
    fn encode_sorted(&self) -> String {
        let mut parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, vs)| Self::encode_one(k, vs))
            .collect();
        parts.sort();
        parts.join("&")
    }

    /// A form body, arguments in their original order.
    fn encode(&self) -> String {
        self.0
            .iter()
            .map(|(k, vs)| {
                vs.iter()
                    .map(|v| {
                        format!(
                            "{}={}",
                            percent_encode(k),
                            percent_encode(v.as_deref().unwrap_or(""))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Kong's operations on a decoded argument table. `always` is false for bodies, where remove,
/// rename and replace apply only to a non-empty body. Returns whether anything ran.
fn apply_args(
    args: &mut Args,
    ops: &Ops,
    req: &RequestView<'_>,
    ctx: &RequestCtx,
    always: bool,
) -> bool {
    let mut changed = false;
    if always || !args.0.is_empty() {
        for n in &ops.remove {
            args.remove(n);
            changed = true;
        }
        for (old, new) in &ops.rename {
            if old != new {
                if let Some(v) = args.remove(old) {
                    args.remove(new);
                    args.0.push((new.clone(), v));
                    changed = true;
                }
            }
        }
        for p in &ops.replace {
            if let Some(vs) = args.get_mut(&p.name) {
                *vs = vec![Some(p.value.render(req, ctx))];
                changed = true;
            }
        }
    }
    for p in &ops.add {
        if args.get_mut(&p.name).is_none() {
            args.append(&p.name, Some(p.value.render(req, ctx)));
            changed = true;
        }
    }
    for p in &ops.append {
        args.append(&p.name, Some(p.value.render(req, ctx)));
        changed = true;
    }
    changed
}

/// Lua truthiness of a decoded JSON value: only `false` (and absence) is false.
fn truthy(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Bool(false)))
}

/// Kong's `append_value`: a string becomes `[old, new]`, an array grows, anything else is
/// replaced by `[new]`.
fn append_json(old: Option<Value>, v: String) -> Value {
    match old {
        Some(Value::String(s)) => Value::Array(vec![Value::String(s), Value::String(v)]),
        Some(Value::Array(mut a)) => {
            a.push(Value::String(v));
            Value::Array(a)
        }
        _ => Value::Array(vec![Value::String(v)]),
    }
}

fn transform_json(
    ops: &Ops,
    body: &[u8],
    req: &RequestView<'_>,
    ctx: &RequestCtx,
) -> Option<Vec<u8>> {
    let non_empty = !body.is_empty();
    let mut obj = if non_empty {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            // Kong leaves a body it cannot decode (or that is no object) as it is.
            _ => return None,
        }
    } else {
        serde_json::Map::new()
    };
    let mut changed = false;
    if non_empty {
        for n in &ops.remove {
            obj.remove(n);
            changed = true;
        }
        for (old, new) in &ops.rename {
            if old != new {
                if let Some(v) = obj.remove(old).filter(|v| truthy(Some(v))) {
                    obj.insert(new.clone(), v);
                    changed = true;
                }
            }
        }
        for p in &ops.replace {
            if truthy(obj.get(&p.name)) {
                obj.insert(p.name.clone(), Value::String(p.value.render(req, ctx)));
                changed = true;
            }
        }
    }
    for p in &ops.add {
        if !truthy(obj.get(&p.name)) {
            obj.insert(p.name.clone(), Value::String(p.value.render(req, ctx)));
            changed = true;
        }
    }
    for p in &ops.append {
        let old = obj.remove(&p.name);
        obj.insert(p.name.clone(), append_json(old, p.value.render(req, ctx)));
        changed = true;
    }
    changed.then(|| Value::Object(obj).to_string().into_bytes())
}

#[derive(PartialEq)]
enum BodyType {
    Json,
    Form,
    Multipart,
}

fn body_type(req: &RequestView<'_>) -> Option<BodyType> {
    let ct = req.header("content-type")?.to_ascii_lowercase();
    if ct.contains("application/json") {
        Some(BodyType::Json)
    } else if ct.contains("multipart/form-data") {
        Some(BodyType::Multipart)
    } else if ct.contains("application/x-www-form-urlencoded") {
        Some(BodyType::Form)
    } else {
        None
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
        Ok(Arc::new(RequestTransformer::from_config(config)?))
    }
}

#[async_trait]
impl Plugin for RequestTransformer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::ACCESS;
        if self.needs_body() {
            p = p | Phases::BUFFER_REQUEST_BODY;
        }
        if self.uses_captures {
            p = p | Phases::URI_CAPTURES;
        }
        p
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        // Kong's order: uri, method, headers, body, querystring.
        if let Some(t) = &self.uri {
            let path = t.render(req, ctx);
            if !path.starts_with('/') {
                tracing::error!(
                    request_id = %ctx.request_id,
                    path = %path,
                    "request-transformer: replace.uri must render a path starting with /"
                );
                return Flow::Respond(PluginResponse::message(500, "An unexpected error occurred"));
            }
            ctx.upstream_rewrite.path = Some(path);
        }
        let btype = body_type(req);
        let mut form_into_query = None;
        if let Some(m) = &self.http_method {
            ctx.upstream_rewrite.method = Some(m.clone());
            if self.needs_body_for_method(m) && btype == Some(BodyType::Form) {
                let body = ctx.request_body.clone().unwrap_or_default();
                let args = Args::parse(&String::from_utf8_lossy(&body));
                if !args.0.is_empty() {
                    form_into_query = Some(args);
                }
            }
        }
        self.transform_headers(req, ctx);
        if !self.body.is_empty() {
            let body = ctx.request_body.clone().unwrap_or_default();
            let new = match btype {
                Some(BodyType::Json) => transform_json(&self.body, &body, req, ctx),
                Some(BodyType::Form) => {
                    let mut args = Args::parse(&String::from_utf8_lossy(&body));
                    let non_empty = !body.is_empty();
                    let mut tmp = Args::default();
                    // Remove/rename/replace run only on a non-empty body (Kong checks the
                    // length, not the decoded table).
                    let target = if non_empty { &mut args } else { &mut tmp };
                    apply_args(target, &self.body, req, ctx, non_empty)
                        .then(|| target.encode().into_bytes())
                }
                // Multipart bodies are passed through untouched (see README).
                Some(BodyType::Multipart) | None => None,
            };
            if let Some(b) = new {
                ctx.request_body_replacement = Some(b.into());
            }
        }
        if let Some(q) = self.transform_query(req, ctx, form_into_query.as_ref()) {
            ctx.upstream_rewrite.query = Some(q);
        }
        Flow::Continue
    }
}

impl RequestTransformer {
    fn needs_body_for_method(&self, m: &http::Method) -> bool {
        *m == http::Method::GET || *m == http::Method::HEAD || *m == http::Method::TRACE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin(config: Value) -> RequestTransformer {
        RequestTransformer::from_config(&config).unwrap_or_else(|e| panic!("{config}: {e:?}"))
    }

    fn errors(config: Value) -> Vec<(String, String)> {
        match RequestTransformer::from_config(&config) {
            Ok(_) => panic!("{config} accepted"),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    async fn run(
        p: &RequestTransformer,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RequestCtx {
        let uri: http::Uri = uri.parse().unwrap();
        let mut map = http::HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestView {
            method: &http::Method::POST,
            uri: &uri,
            headers: &map,
        };
        let mut ctx = RequestCtx {
            request_body: Some(body.to_string().into()),
            ..Default::default()
        };
        assert!(matches!(p.access(&req, &mut ctx).await, Flow::Continue));
        ctx
    }

    fn set(ctx: &RequestCtx) -> Vec<(String, String)> {
        ctx.upstream_headers
            .iter()
            .chain(ctx.upstream_headers_append.iter())
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[tokio::test]
    async fn headers_follow_kongs_order_and_semantics() {
        let p = plugin(json!({
            "remove": {"headers": ["x-gone"]},
            "rename": {"headers": ["x-old:x-new"]},
            "replace": {"headers": ["x-rep:r", "x-absent:r"]},
            "add": {"headers": ["x-rep:added", "x-add2:$(headers.x_in)"]},
            "append": {"headers": ["x-rep:more"]},
        }));
        assert_eq!(p.phases(), Phases::ACCESS);
        let q = plugin(json!({"add": {"headers": ["x-id:$(uri_captures[1] or 'none')"]}}));
        assert_eq!(q.phases(), Phases::ACCESS | Phases::URI_CAPTURES);
        let ctx = run(
            &p,
            "/",
            &[
                ("x-gone", "1"),
                ("x-old", "o"),
                ("x-rep", "1"),
                ("x-in", "v"),
            ],
            "",
        )
        .await;
        let h = set(&ctx);
        assert!(h.contains(&("x-new".into(), "o".into())));
        assert!(h.contains(&("x-rep".into(), "r".into())));
        assert!(h.contains(&("x-rep".into(), "more".into())));
        assert!(h.contains(&("x-add2".into(), "v".into())));
        assert!(!h.iter().any(|(n, _)| n == "x-absent"));
        let removed: Vec<&str> = ctx
            .upstream_headers_remove
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert!(removed.contains(&"x-gone") && removed.contains(&"x-old"));
    }

    #[tokio::test]
    async fn query_is_rewritten_and_sorted() {
        let p = plugin(json!({
            "remove": {"querystring": ["drop"]},
            "rename": {"querystring": ["old:new"]},
            "replace": {"querystring": ["r:x y"]},
            "add": {"querystring": ["a:1", "r:no"]},
            "append": {"querystring": ["m:2"]},
        }));
        let ctx = run(&p, "/?drop=1&r=0&old=o&m=1&z", &[], "").await;
        assert_eq!(
            ctx.upstream_rewrite.query.as_deref(),
            Some("a=1&m=1&m=2&new=o&r=x%20y&z")
        );
    }

    #[tokio::test]
    async fn json_and_form_bodies() {
        let p = plugin(json!({
            "remove": {"body": ["secret"]},
            "rename": {"body": ["old:new"]},
            "replace": {"body": ["r:R", "f:F"]},
            "add": {"body": ["a:$(query_params.q)"]},
            "append": {"body": ["s:2"]},
        }));
        assert!(p.phases().contains(Phases::BUFFER_REQUEST_BODY));
        assert!(!p.phases().contains(Phases::URI_CAPTURES));
        let ctx = run(
            &p,
            "/?q=Q",
            &[("content-type", "application/json")],
            r#"{"secret":1,"old":"o","r":1,"f":false,"s":"1"}"#,
        )
        .await;
        let v: Value =
            serde_json::from_slice(ctx.request_body_replacement.as_deref().unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"new":"o","r":"R","f":false,"a":"Q","s":["1","2"]})
        );
        let ctx = run(
            &p,
            "/?q=Q",
            &[("content-type", "application/x-www-form-urlencoded")],
            "secret=1&old=o&r=1&s=1",
        )
        .await;
        assert_eq!(
            ctx.request_body_replacement.as_deref(),
            Some(&b"r=R&s=1&s=2&new=o&a=Q"[..])
        );
        let ctx = run(
            &p,
            "/",
            &[("content-type", "multipart/form-data; boundary=x")],
            "--x--",
        )
        .await;
        assert!(ctx.request_body_replacement.is_none());
        // Not JSON: left alone.
        let ctx = run(&p, "/", &[("content-type", "application/json")], "{nope").await;
        assert!(ctx.request_body_replacement.is_none());
    }

    #[tokio::test]
    async fn method_and_uri() {
        let p = plugin(json!({"http_method": "GET", "replace": {"uri": "/v2/$(uri_captures.id)"}}));
        let mut ctx = RequestCtx {
            uri_captures: Some(Arc::new(portcullis_plugin_api::UriCaptures {
                unnamed: vec![Some("7".into())],
                named: vec![("id".into(), "7".into())],
            })),
            request_body: Some("a=1&b=2".into()),
            ..Default::default()
        };
        let uri: http::Uri = "/u/7?b=0".parse().unwrap();
        let mut map = http::HeaderMap::new();
        map.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let req = RequestView {
            method: &http::Method::POST,
            uri: &uri,
            headers: &map,
        };
        p.access(&req, &mut ctx).await;
        assert_eq!(ctx.upstream_rewrite.method, Some(http::Method::GET));
        assert_eq!(ctx.upstream_rewrite.path.as_deref(), Some("/v2/7"));
        assert_eq!(ctx.upstream_rewrite.query.as_deref(), Some("a=1&b=0&b=2"));
    }

    #[test]
    fn bad_config() {
        assert_eq!(
            errors(json!({"http_method": "get"})),
            [("http_method".into(), "invalid value: get".into())]
        );
        assert_eq!(
            errors(json!({"add": {"headers": ["bad header:x"]}})),
            [(
                "add.headers[0]".into(),
                "'bad header' is not a valid header".into()
            )]
        );
        assert_eq!(
            errors(json!({"add": {"querystring": ["novalue"]}})),
            [(
                "add.querystring[0]".into(),
                "key 'novalue' has no value".into()
            )]
        );
        assert_eq!(
            errors(json!({"add": {"headers": ["x:$(os.exit())"]}}))[0].0,
            "add.headers[0]"
        );
        assert_eq!(errors(json!({"add": {"uri": "/x"}}))[0].0, "add.uri");
        assert_eq!(
            errors(json!({"rename": {"headers": ["x-a"]}}))[0].0,
            "rename.headers[0]"
        );
    }
}
