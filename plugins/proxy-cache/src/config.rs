//! Kong 3.x's proxy-cache schema (`schema.lua`), plus the memory bound Kong leaves to the nginx
//! template (`lua_shared_dict` size): `memory.max_size` and `memory.max_entry_size`.

use portcullis_plugin_api::{parse_config, ConfigError};
use serde::Deserialize;
use serde_json::Value;

/// Kong's `request_method` choices.
const METHODS: [&str; 5] = ["HEAD", "GET", "POST", "PATCH", "PUT"];

/// 128 MiB: the size of Kong's `kong_db_cache` dictionary (`mem_cache_size`), the default
/// `memory.dictionary_name`.
pub const DEFAULT_MAX_SIZE: u64 = 128 * 1024 * 1024;
pub const DEFAULT_MAX_ENTRY_SIZE: u64 = 1024 * 1024;
/// TinyUFO weighs entries in u16 units; one unit is 1 KiB, so one entry is at most 64 MiB.
pub const MAX_ENTRY_SIZE_LIMIT: u64 = 32 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    /// Kong's shared dictionary; accepted, not used: each instance has its own store.
    #[allow(dead_code)]
    dictionary_name: Option<String>,
    max_size: Option<Value>,
    max_entry_size: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaders {
    #[serde(alias = "Age")]
    age: Option<bool>,
    #[serde(rename = "X-Cache-Status")]
    x_cache_status: Option<bool>,
    #[serde(rename = "X-Cache-Key")]
    x_cache_key: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    response_code: Option<Vec<i64>>,
    request_method: Option<Vec<String>>,
    content_type: Option<Vec<String>>,
    cache_ttl: Option<i64>,
    strategy: Option<String>,
    cache_control: Option<bool>,
    ignore_uri_case: Option<bool>,
    storage_ttl: Option<i64>,
    memory: Option<RawMemory>,
    vary_query_params: Option<Vec<String>>,
    vary_headers: Option<Vec<String>>,
    response_headers: Option<RawHeaders>,
}

/// A `content_type` entry as Kong's `parse_mime_type` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimeType {
    pub kind: String,
    pub subtype: String,
    /// Parameter names lower case, values as written (quotes removed), sorted by name.
    pub params: Vec<(String, String)>,
}

impl MimeType {
    /// `type/subtype; k=v`, or `*` for any; `None` when it does not parse (Kong then never
    /// matches the entry).
    pub fn parse(s: &str) -> Option<MimeType> {
        let mut parts = s.split(';');
        let t = parts.next()?.trim();
        let (kind, subtype) = if t == "*" {
            ("*".to_string(), "*".to_string())
        } else {
            let (k, st) = t.split_once('/')?;
            let token = |x: &str| !x.is_empty() && x.bytes().all(is_token_byte);
            if !token(k) || !token(st) {
                return None;
            }
            (k.to_ascii_lowercase(), st.to_ascii_lowercase())
        };
        let mut params = Vec::new();
        for p in parts {
            // An empty parameter (`application/xml;`) makes the whole type invalid, as in Kong.
            let (k, v) = p.trim().split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            params.push((k.trim().to_ascii_lowercase(), v.to_string()));
        }
        params.sort();
        params.dedup_by(|a, b| a.0 == b.0);
        Some(MimeType {
            kind,
            subtype,
            params,
        })
    }

    /// Kong's match: type and subtype equal (or `*`), and exactly the same parameters.
    pub fn accepts(&self, actual: &MimeType) -> bool {
        (self.kind == "*" || self.kind == actual.kind)
            && (self.subtype == "*" || self.subtype == actual.subtype)
            && self.params == actual.params
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
}

#[derive(Debug, Clone)]
pub struct Config {
    pub response_code: Vec<u16>,
    pub request_method: Vec<http::Method>,
    pub content_type: Vec<MimeType>,
    pub cache_ttl: u64,
    pub cache_control: bool,
    pub ignore_uri_case: bool,
    pub storage_ttl: Option<u64>,
    pub max_size: u64,
    pub max_entry_size: u64,
    pub vary_query_params: Vec<String>,
    /// As configured (the key shows them so), with the lookup name (lower case, `_` as `-`).
    pub vary_headers: Vec<(String, http::HeaderName)>,
    pub header_age: bool,
    pub header_status: bool,
    pub header_key: bool,
}

/// `128m`, `64k`, `1g` (nginx's size syntax, as in `lua_shared_dict`) or a number of bytes.
fn size(v: &Value) -> Result<u64, String> {
    const MSG: &str = "expected a size in bytes or with a k, m or g suffix";
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| MSG.to_string()),
        Value::String(s) => {
            let s = s.trim();
            let (digits, mult) = match s.as_bytes().last().map(u8::to_ascii_lowercase) {
                Some(b'k') => (&s[..s.len() - 1], 1024),
                Some(b'm') => (&s[..s.len() - 1], 1024 * 1024),
                Some(b'g') => (&s[..s.len() - 1], 1024 * 1024 * 1024),
                _ => (s, 1),
            };
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| MSG.to_string())
        }
        _ => Err(MSG.to_string()),
    }
}

impl Config {
    pub fn parse(value: &Value) -> Result<Config, Vec<ConfigError>> {
        let raw: Raw = parse_config(value).map_err(|e| vec![e])?;
        let mut errors = Vec::new();

        let codes = raw.response_code.unwrap_or_else(|| vec![200, 301, 404]);
        if codes.is_empty() {
            errors.push(ConfigError::new(
                "response_code",
                "length must be at least 1",
            ));
        }
        let mut response_code = Vec::new();
        for (i, c) in codes.iter().enumerate() {
            match u16::try_from(*c).ok().filter(|c| (100..=900).contains(c)) {
                Some(c) => response_code.push(c),
                None => errors.push(ConfigError::new(
                    format!("response_code[{i}]"),
                    "value should be between 100 and 900",
                )),
            }
        }

        let methods = raw
            .request_method
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()]);
        let mut request_method = Vec::new();
        for (i, m) in methods.iter().enumerate() {
            match METHODS
                .contains(&m.as_str())
                .then(|| m.parse::<http::Method>())
            {
                Some(Ok(m)) => request_method.push(m),
                _ => errors.push(ConfigError::new(
                    format!("request_method[{i}]"),
                    format!("expected one of: {}", METHODS.join(", ")),
                )),
            }
        }

        let content_type = raw
            .content_type
            .unwrap_or_else(|| vec!["text/plain".into(), "application/json".into()])
            .iter()
            .filter_map(|c| MimeType::parse(c))
            .collect();

        let cache_ttl = raw.cache_ttl.unwrap_or(300);
        if cache_ttl <= 0 {
            errors.push(ConfigError::new(
                "cache_ttl",
                "value must be greater than 0",
            ));
        }

        match raw.strategy.as_deref() {
            Some("memory") => {}
            Some(_) => errors.push(ConfigError::new("strategy", "expected one of: memory")),
            None => errors.push(ConfigError::new("strategy", "required field missing")),
        }

        let storage_ttl = match raw.storage_ttl {
            Some(t) if t < 0 => {
                errors.push(ConfigError::new(
                    "storage_ttl",
                    "value must be greater than or equal to 0",
                ));
                None
            }
            t => t.map(|t| t as u64),
        };

        let memory = raw.memory.unwrap_or_default();
        let mut sized = |field: &str, v: Option<&Value>, default: u64| match v {
            None | Some(Value::Null) => default,
            Some(v) => size(v).unwrap_or_else(|m| {
                errors.push(ConfigError::new(format!("memory.{field}"), m));
                default
            }),
        };
        let max_size = sized("max_size", memory.max_size.as_ref(), DEFAULT_MAX_SIZE);
        let max_entry_size = sized(
            "max_entry_size",
            memory.max_entry_size.as_ref(),
            DEFAULT_MAX_ENTRY_SIZE.min(max_size),
        );
        if max_size < 64 * 1024 {
            errors.push(ConfigError::new(
                "memory.max_size",
                "value must be at least 64k",
            ));
        }
        if max_entry_size == 0 || max_entry_size > MAX_ENTRY_SIZE_LIMIT.min(max_size) {
            errors.push(ConfigError::new(
                "memory.max_entry_size",
                "value should be between 1 and the smaller of memory.max_size and 32m",
            ));
        }

        let mut vary_headers = Vec::new();
        for (i, h) in raw.vary_headers.unwrap_or_default().iter().enumerate() {
            let lookup = h.to_ascii_lowercase().replace('_', "-");
            match http::HeaderName::from_bytes(lookup.as_bytes()) {
                Ok(n) => vary_headers.push((h.clone(), n)),
                Err(_) => errors.push(ConfigError::new(
                    format!("vary_headers[{i}]"),
                    "not a valid header name",
                )),
            }
        }

        let headers = raw.response_headers.unwrap_or_default();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            response_code,
            request_method,
            content_type,
            cache_ttl: cache_ttl as u64,
            cache_control: raw.cache_control.unwrap_or(false),
            ignore_uri_case: raw.ignore_uri_case.unwrap_or(false),
            storage_ttl,
            max_size,
            max_entry_size,
            vary_query_params: raw.vary_query_params.unwrap_or_default(),
            vary_headers,
            header_age: headers.age.unwrap_or(true),
            header_status: headers.x_cache_status.unwrap_or(true),
            header_key: headers.x_cache_key.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<(String, String)> {
        Config::parse(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    #[test]
    fn kong_defaults() {
        let c = Config::parse(&json!({"strategy": "memory"})).unwrap();
        assert_eq!(c.response_code, [200, 301, 404]);
        assert_eq!(c.request_method, [http::Method::GET, http::Method::HEAD]);
        assert_eq!(c.content_type.len(), 2);
        assert_eq!(c.cache_ttl, 300);
        assert!(!c.cache_control && !c.ignore_uri_case);
        assert_eq!(c.storage_ttl, None);
        assert_eq!(c.max_size, DEFAULT_MAX_SIZE);
        assert!(c.header_age && c.header_status && c.header_key);
    }

    #[test]
    fn strategy_is_required_and_only_memory() {
        assert_eq!(
            errors(json!({})),
            [("strategy".into(), "required field missing".into())]
        );
        assert_eq!(
            errors(json!({"strategy": "redis"})),
            [("strategy".into(), "expected one of: memory".into())]
        );
    }

    #[test]
    fn bad_fields_are_located() {
        let e = errors(json!({"strategy": "memory", "response_code": [200, 99],
            "request_method": ["GET", "DELETE"], "cache_ttl": 0,
            "memory": {"max_size": "12q"}}));
        let paths: Vec<&str> = e.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "response_code[1]",
                "request_method[1]",
                "cache_ttl",
                "memory.max_size"
            ]
        );
        let e = errors(json!({"strategy": "memory", "memory": {"nope": 1}}));
        assert_eq!(e[0].0, "memory.nope");
    }

    #[test]
    fn sizes_and_header_toggles() {
        let c = Config::parse(&json!({"strategy": "memory",
            "memory": {"dictionary_name": "cache", "max_size": "2m", "max_entry_size": 4096},
            "response_headers": {"age": false, "X-Cache-Status": true, "X-Cache-Key": false}}))
        .unwrap();
        assert_eq!(c.max_size, 2 * 1024 * 1024);
        assert_eq!(c.max_entry_size, 4096);
        assert!(!c.header_age && c.header_status && !c.header_key);
        let e = errors(
            json!({"strategy": "memory", "memory": {"max_size": "1m", "max_entry_size": "2m"}}),
        );
        assert_eq!(e[0].0, "memory.max_entry_size");
    }

    #[test]
    fn mime_types_match_as_kong() {
        let json = MimeType::parse("application/json").unwrap();
        assert!(json.accepts(&MimeType::parse("Application/JSON").unwrap()));
        assert!(!json.accepts(&MimeType::parse("application/json; charset=utf-8").unwrap()));
        let utf8 = MimeType::parse("application/json; charset=utf-8").unwrap();
        assert!(utf8.accepts(&MimeType::parse("application/json;charset=\"utf-8\"").unwrap()));
        let any_text = MimeType::parse("text/*").unwrap();
        assert!(any_text.accepts(&MimeType::parse("text/html").unwrap()));
        assert!(MimeType::parse("*")
            .unwrap()
            .accepts(&MimeType::parse("image/png").unwrap()));
        assert!(MimeType::parse("nonsense").is_none());
        assert!(MimeType::parse("application/xml;").is_none());
        assert!(MimeType::parse("*/*")
            .unwrap()
            .accepts(&MimeType::parse("application/xml").unwrap()));
    }
}
