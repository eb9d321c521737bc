//! cors: answers CORS preflight requests and adds the CORS headers to responses, as Kong's cors
//! plugin (3.x `handler.lua`) does, header for header.
//!
//! ```yaml
//! plugins:
//!   - name: cors
//!     route: api
//!     config:
//!       origins: ["https://app.example.com", "https://.*\\.example\\.org"]
//!       credentials: true
//!       max_age: 3600
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, HeaderEdit, Phases, Plugin,
    PluginFactory, PluginResponse, RequestCtx, RequestView, ResponseHead,
};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

pub const NAME: &str = "cors";
/// Kong's PRIORITY: before authentication (a preflight carries no credentials).
pub const PRIORITY: i32 = 2000;

const METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    origins: Option<Vec<String>>,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    exposed_headers: Option<Vec<String>>,
    #[serde(default = "default_methods")]
    methods: Option<Vec<String>>,
    #[serde(default)]
    max_age: Option<f64>,
    #[serde(default, deserialize_with = "required_bool")]
    credentials: bool,
    #[serde(default, deserialize_with = "required_bool")]
    private_network: bool,
    #[serde(default, deserialize_with = "required_bool")]
    preflight_continue: bool,
    #[serde(default = "yes", deserialize_with = "required_bool")]
    allow_origin_absent: bool,
}

fn default_methods() -> Option<Vec<String>> {
    Some(METHODS.iter().map(|m| m.to_string()).collect())
}

fn yes() -> bool {
    true
}

/// Kong's booleans here are `required`: an explicit null is an error, not the default.
fn required_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    bool::deserialize(d)
}

/// One `origins` entry, prepared as Kong's handler caches it.
#[derive(Debug)]
enum Origin {
    /// A flat origin, compared after normalisation (default ports dropped).
    Exact(String),
    /// A regex, anchored at both ends; matched against the request origin's host when the
    /// entry has no `:` (no scheme or port), else against the whole normalised origin.
    Regex { re: Regex, by_host: bool },
}

#[derive(Debug)]
enum Origins {
    /// No origins, or only `*`: `Access-Control-Allow-Origin: *`.
    Any,
    /// One flat origin: sent as configured, whatever the request's origin.
    Fixed(String),
    /// Matched against the request's origin; `star` when a `*` appears among several entries
    /// (Kong then allows every origin that is present).
    List { entries: Vec<Origin>, star: bool },
}

#[derive(Debug)]
pub struct Cors {
    origins: Origins,
    allow_headers: Option<String>,
    exposed_headers: Option<String>,
    methods: String,
    max_age: Option<String>,
    credentials: bool,
    private_network: bool,
    preflight_continue: bool,
    allow_origin_absent: bool,
}

/// The request's Origin, kept from the access phase for the response headers.
#[derive(Clone)]
struct RequestOrigin(Option<String>);

/// The preflight was answered (or handed upstream): no response headers from this plugin.
#[derive(Clone)]
struct SkipResponseHeaders;

fn looks_flat(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".:/-".contains(&b))
}

/// Kong's `normalize_origin`: `(domain, host)`, with the default port of http/https dropped.
/// Something without `scheme://host` is kept as it is for both.
fn normalize_origin(origin: &str) -> (String, String) {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return (origin.to_string(), origin.to_string());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return (origin.to_string(), origin.to_string());
    }
    let (host, port) = match authority.rfind(':') {
        Some(i)
            if !authority[i + 1..].is_empty()
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !authority[..i].ends_with(':') =>
        {
            (&authority[..i], Some(&authority[i + 1..]))
        }
        _ => (authority, None),
    };
    let port = match (scheme, port) {
        ("http", Some("80")) | ("https", Some("443")) => None,
        (_, p) => p,
    };
    let domain = match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    };
    (domain, host.to_string())
}

/// Lua's `tostring` of a number: integers without a fraction.
fn lua_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

impl Cors {
    pub fn from_config(config: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let origins_in = c.origins.unwrap_or_default();
        let mut entries = Vec::new();
        let mut star = false;
        for (i, o) in origins_in.iter().enumerate() {
            if o == "*" {
                star = true;
                continue;
            }
            if !looks_flat(o) {
                // Kong did not anchor regexes in 0.x; an explicit `^`/`$` is tolerated.
                let mut body = o.strip_prefix('^').unwrap_or(o).to_string();
                if !body.ends_with('$') {
                    body.push('$');
                }
                match Regex::new(&format!("^(?:{body})")) {
                    Ok(re) => entries.push(Origin::Regex {
                        re,
                        by_host: !o.contains(':'),
                    }),
                    Err(_) => errors.push(ConfigError::new(
                        format!("origins[{i}]"),
                        format!("'{o}' is not a valid regex"),
                    )),
                }
            } else {
                entries.push(Origin::Exact(normalize_origin(o).0));
            }
        }
        let origins = match origins_in.as_slice() {
            [] => Origins::Any,
            [one] if one == "*" => Origins::Any,
            [one] if looks_flat(one) => Origins::Fixed(one.clone()),
            _ => Origins::List { entries, star },
        };
        let methods = match &c.methods {
            Some(m) => {
                for (i, method) in m.iter().enumerate() {
                    if !METHODS.contains(&method.as_str()) {
                        errors.push(ConfigError::new(
                            format!("methods[{i}]"),
                            format!("expected one of: {}", METHODS.join(", ")),
                        ));
                    }
                }
                m.join(",")
            }
            None => METHODS.join(","),
        };
        let join = |v: &Option<Vec<String>>, field: &str, errors: &mut Vec<ConfigError>| {
            let v = v.as_ref().filter(|v| !v.is_empty())?;
            let joined = v.join(",");
            if http::HeaderValue::from_str(&joined).is_err() {
                errors.push(ConfigError::new(field, "not a valid header value"));
                return None;
            }
            Some(joined)
        };
        let allow_headers = join(&c.headers, "headers", &mut errors);
        let exposed_headers = join(&c.exposed_headers, "exposed_headers", &mut errors);
        if let Some(o) = origins_in.iter().find(|o| looks_flat(o)) {
            if http::HeaderValue::from_str(o).is_err() {
                errors.push(ConfigError::new("origins", "not a valid header value"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Cors {
            origins,
            allow_headers,
            exposed_headers,
            methods,
            max_age: c.max_age.map(lua_number),
            credentials: c.credentials,
            private_network: c.private_network,
            preflight_continue: c.preflight_continue,
            allow_origin_absent: c.allow_origin_absent,
        })
    }

    /// Kong's `configure_origin`: sets or clears Access-Control-Allow-Origin (and Vary) and
    /// tells whether every origin is allowed.
    fn configure_origin(&self, h: &mut Headers<'_>, origin: Option<&str>) -> bool {
        let entries = match &self.origins {
            Origins::Any => {
                h.set("access-control-allow-origin", "*");
                return true;
            }
            Origins::Fixed(o) => {
                h.vary();
                h.set("access-control-allow-origin", o);
                return false;
            }
            Origins::List { entries, star } => {
                h.vary();
                if origin.is_some() && *star {
                    h.set("access-control-allow-origin", "*");
                    return true;
                }
                entries
            }
        };
        if let Some(origin) = origin {
            let (domain, host) = normalize_origin(origin);
            let found = entries.iter().any(|e| match e {
                Origin::Exact(d) => *d == domain,
                Origin::Regex { re, by_host } => {
                    re.is_match(if *by_host { &host } else { &domain })
                }
            });
            if found {
                h.set("access-control-allow-origin", &domain);
                return false;
            }
        }
        h.remove("access-control-allow-origin");
        false
    }

    /// Kong's `configure_credentials`: never `*` with credentials — the origin is echoed.
    fn configure_credentials(&self, h: &mut Headers<'_>, allow_all: bool, origin: Option<&str>) {
        if !self.credentials {
            return;
        }
        if !allow_all {
            h.set("access-control-allow-credentials", "true");
            return;
        }
        if let Some(origin) = origin {
            h.vary();
            h.set("access-control-allow-origin", origin);
            h.set("access-control-allow-credentials", "true");
        }
    }

    fn preflight(&self, req: &RequestView<'_>, origin: &str) -> PluginResponse {
        let mut headers = Vec::new();
        let mut h = Headers::List(&mut headers);
        let allow_all = self.configure_origin(&mut h, Some(origin));
        self.configure_credentials(&mut h, allow_all, Some(origin));
        match (
            &self.allow_headers,
            req.header("access-control-request-headers"),
        ) {
            (Some(v), _) => h.set("access-control-allow-headers", v),
            (None, Some(v)) => h.set("access-control-allow-headers", v),
            (None, None) => {}
        }
        h.set("access-control-allow-methods", &self.methods);
        if let Some(m) = &self.max_age {
            h.set("access-control-max-age", m);
        }
        if self.private_network
            && req.header("access-control-request-private-network") == Some("true")
        {
            h.set("access-control-allow-private-network", "true");
        }
        PluginResponse {
            status: 200,
            message: None,
            body: None,
            content_type: None,
            headers,
        }
    }
}

/// Where headers go: a gateway answer being built (access phase) or a response head.
enum Headers<'a> {
    List(&'a mut Vec<(String, String)>),
    Response(&'a mut dyn HeaderEdit),
}

impl Headers<'_> {
    fn set(&mut self, name: &str, value: &str) {
        match self {
            Headers::List(l) => {
                l.retain(|(n, _)| n != name);
                l.push((name.to_string(), value.to_string()));
            }
            Headers::Response(r) => r.set(name, value),
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Headers::List(l) => l.retain(|(n, _)| n != name),
            Headers::Response(r) => r.remove(name),
        }
    }

    /// Kong sets `Vary: Origin` on its own preflight answer and adds it to other responses
    /// (keeping what the upstream varies on).
    fn vary(&mut self) {
        match self {
            Headers::List(_) => self.set("vary", "Origin"),
            Headers::Response(r) => r.append("vary", "Origin"),
        }
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
        Ok(Arc::new(Cors::from_config(config)?))
    }
}

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS | Phases::RESPONSE_HEADERS
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let origin = req.header("origin").filter(|o| !o.is_empty());
        let preflight = req.method == http::Method::OPTIONS
            && origin.is_some()
            && req.headers.contains_key("access-control-request-method");
        if !preflight {
            if let Some(o) = origin {
                ctx.extensions.insert(RequestOrigin(Some(o.to_string())));
            }
            return Flow::Continue;
        }
        ctx.extensions.insert(SkipResponseHeaders);
        if self.preflight_continue {
            return Flow::Continue;
        }
        Flow::Respond(self.preflight(req, origin.unwrap_or("")))
    }

    fn response_headers(&self, resp: &mut ResponseHead<'_>, ctx: &mut RequestCtx) {
        if ctx.extensions.get::<SkipResponseHeaders>().is_some() {
            return;
        }
        let origin = ctx
            .extensions
            .get::<RequestOrigin>()
            .and_then(|o| o.0.as_deref());
        if origin.is_none() && !self.allow_origin_absent {
            return;
        }
        let mut h = Headers::Response(&mut *resp.headers);
        let allow_all = self.configure_origin(&mut h, origin);
        self.configure_credentials(&mut h, allow_all, origin);
        if let Some(e) = &self.exposed_headers {
            h.set("access-control-expose-headers", e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cors(config: Value) -> Cors {
        Cors::from_config(&config).unwrap_or_else(|e| panic!("{config} rejected: {e:?}"))
    }

    fn errors(config: Value) -> Vec<(String, String)> {
        match Cors::from_config(&config) {
            Ok(_) => panic!("{config} accepted"),
            Err(e) => e.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    fn preflight(c: &Cors, origin: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut map = http::HeaderMap::new();
        for (n, v) in extra {
            map.insert(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let uri: http::Uri = "/".parse().unwrap();
        let req = RequestView {
            method: &http::Method::OPTIONS,
            uri: &uri,
            headers: &map,
        };
        c.preflight(&req, origin).headers
    }

    fn get<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn origins_normalise_like_kong() {
        assert_eq!(
            normalize_origin("https://a.test:443").0,
            "https://a.test".to_string()
        );
        assert_eq!(normalize_origin("http://a.test:80/x").0, "http://a.test");
        assert_eq!(
            normalize_origin("http://a.test:8080").0,
            "http://a.test:8080"
        );
        assert_eq!(
            normalize_origin("http://a.test:8080").1,
            "a.test".to_string()
        );
        assert_eq!(normalize_origin("null").0, "null");
        assert_eq!(lua_number(3600.0), "3600");
        assert_eq!(lua_number(1.5), "1.5");
    }

    #[test]
    fn preflight_defaults() {
        let c = cors(Value::Null);
        let h = preflight(&c, "http://x.test", &[]);
        assert_eq!(get(&h, "access-control-allow-origin"), Some("*"));
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT")
        );
        assert_eq!(get(&h, "vary"), None);
        assert_eq!(get(&h, "access-control-allow-credentials"), None);
        assert_eq!(get(&h, "access-control-max-age"), None);
    }

    #[test]
    fn regex_origins_match_host_or_whole_origin() {
        let c = cors(
            json!({"origins": ["http://a.test", r".*\.example\.org", r"https://b\.test:\d+"]}),
        );
        let h = preflight(&c, "http://a.test:80", &[]);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("http://a.test")
        );
        assert_eq!(get(&h, "vary"), Some("Origin"));
        let h = preflight(&c, "https://api.example.org", &[]);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://api.example.org")
        );
        // Anchored: a suffix elsewhere does not match.
        let h = preflight(&c, "https://api.example.org.evil.test", &[]);
        assert_eq!(get(&h, "access-control-allow-origin"), None);
        let h = preflight(&c, "https://b.test:8443", &[]);
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://b.test:8443")
        );
        let h = preflight(&c, "https://b.test", &[]);
        assert_eq!(get(&h, "access-control-allow-origin"), None);
    }

    #[test]
    fn credentials_echo_the_origin_instead_of_star() {
        let c = cors(json!({"credentials": true, "max_age": 60, "private_network": true}));
        let h = preflight(
            &c,
            "http://x.test",
            &[("access-control-request-private-network", "true")],
        );
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("http://x.test")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&h, "vary"), Some("Origin"));
        assert_eq!(get(&h, "access-control-max-age"), Some("60"));
        assert_eq!(
            get(&h, "access-control-allow-private-network"),
            Some("true")
        );
    }

    #[test]
    fn allow_headers_from_config_or_request() {
        let c = cors(json!({"headers": ["X-A", "X-B"], "methods": ["GET", "POST"]}));
        let h = preflight(
            &c,
            "http://x.test",
            &[("access-control-request-headers", "x-c")],
        );
        assert_eq!(get(&h, "access-control-allow-headers"), Some("X-A,X-B"));
        assert_eq!(get(&h, "access-control-allow-methods"), Some("GET,POST"));
        let c = cors(json!({}));
        let h = preflight(
            &c,
            "http://x.test",
            &[("access-control-request-headers", "x-c")],
        );
        assert_eq!(get(&h, "access-control-allow-headers"), Some("x-c"));
    }

    #[test]
    fn bad_config() {
        assert_eq!(
            errors(json!({"origins": ["http://ok.test", "(unclosed"]})),
            [(
                "origins[1]".to_string(),
                "'(unclosed' is not a valid regex".to_string()
            )]
        );
        assert_eq!(
            errors(json!({"methods": ["GET", "FETCH"]}))[0].0,
            "methods[1]"
        );
        assert_eq!(errors(json!({"credentials": null}))[0].0, "credentials");
        assert_eq!(errors(json!({"origin": ["*"]}))[0].0, "origin");
        // A Kong export spells out every field.
        cors(
            json!({"origins": null, "headers": null, "exposed_headers": null,
                    "methods": ["GET"], "max_age": null, "credentials": false,
                    "private_network": false, "preflight_continue": false,
                    "allow_origin_absent": true}),
        );
    }
}
