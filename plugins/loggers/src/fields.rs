//! `custom_fields`: a Portcullis extension standing in for Kong's `custom_fields_by_lua`, which
//! needs Lua. Each key is a field of the log record, a dotted path like Kong's
//! `kong.log.set_serialize_value` (`request.headers.x-team`, `env`); each value is set as written
//! (numbers, booleans, lists, objects), a string is a request-transformer template
//! (`$(headers.x_team)`, `$(query_params.v or 'none')`), and `null` removes the field.
//!
//! Records of instances without `custom_fields` are written straight to bytes as before; only
//! instances with it build the record as a tree to edit.

use portcullis_plugin_api::json;
use portcullis_plugin_api::serialize::{kong_record, kong_record_bytes, RECORD_KEYS};
use portcullis_plugin_api::template::Template;
use portcullis_plugin_api::{ConfigError, LogEntry, Phases, RequestCtx, RequestView};
use serde_json::{Map, Value};

enum FieldValue {
    Remove,
    Json(Value),
    Template(Template),
}

struct Field {
    path: Vec<String>,
    value: FieldValue,
}

/// A log plugin instance's record writer: Kong's record, edited by `custom_fields` when set.
#[derive(Default)]
pub struct Record {
    fields: Vec<Field>,
    /// Every field is a new top-level one: appended to Kong's bytes, no tree built.
    append: bool,
}

impl Record {
    /// Reads `custom_fields` (absent or `null`: Kong's record unchanged).
    pub fn from_config(fields: Option<&Value>) -> Result<Record, Vec<ConfigError>> {
        let map = match fields {
            None | Some(Value::Null) => return Ok(Record::default()),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(vec![ConfigError::new(
                    "custom_fields",
                    "expected a map of record fields to values",
                )])
            }
        };
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for (key, value) in map {
            let at = format!("custom_fields.{key}");
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                errors.push(ConfigError::new(
                    &at,
                    "a field is a dotted path of non-empty names (request.headers.x-team)",
                ));
                continue;
            }
            let value = match value {
                Value::Null => FieldValue::Remove,
                Value::String(s) => match Template::parse(s) {
                    Ok(t) => FieldValue::Template(t),
                    Err(e) => {
                        errors.push(ConfigError::new(&at, e));
                        continue;
                    }
                },
                v => FieldValue::Json(v.clone()),
            };
            out.push(Field { path, value });
        }
        if errors.is_empty() {
            let append = out.iter().all(|f| {
                f.path.len() == 1
                    && !matches!(f.value, FieldValue::Remove)
                    && !RECORD_KEYS.contains(&f.path[0].as_str())
            });
            Ok(Record {
                fields: out,
                append,
            })
        } else {
            Err(errors)
        }
    }

    /// The phases a log plugin with these fields needs: the route's regex captures only when a
    /// template reads them.
    pub fn phases(&self) -> Phases {
        let captures = self.fields.iter().any(|f| match &f.value {
            FieldValue::Template(t) => t.uses_captures(),
            _ => false,
        });
        if captures {
            Phases::LOG | Phases::URI_CAPTURES
        } else {
            Phases::LOG
        }
    }

    /// The record of one request as JSON bytes.
    pub fn bytes(&self, entry: &LogEntry<'_>, ctx: &RequestCtx) -> Vec<u8> {
        if self.fields.is_empty() {
            return kong_record_bytes(entry, ctx);
        }
        let req = RequestView {
            method: entry.method,
            uri: entry.uri,
            headers: entry.request_headers,
        };
        if self.append {
            let mut out = kong_record_bytes(entry, ctx);
            if out.pop() == Some(b'}') {
                for f in &self.fields {
                    // `append` is never set with a removal; there would be nothing to write.
                    if matches!(f.value, FieldValue::Remove) {
                        continue;
                    }
                    out.push(b',');
                    json::string(&mut out, &f.path[0]);
                    out.push(b':');
                    match &f.value {
                        FieldValue::Template(t) => json::string(&mut out, &t.render(&req, ctx)),
                        FieldValue::Json(v) => {
                            let _ = serde_json::to_writer(&mut out, v);
                        }
                        FieldValue::Remove => {}
                    }
                }
                out.push(b'}');
                return out;
            }
        }
        let mut record = kong_record(entry, ctx);
        for f in &self.fields {
            let value = match &f.value {
                FieldValue::Remove => None,
                FieldValue::Json(v) => Some(v.clone()),
                FieldValue::Template(t) => Some(Value::String(t.render(&req, ctx))),
            };
            set(&mut record, &f.path, value);
        }
        serde_json::to_vec(&record).unwrap_or_else(|_| kong_record_bytes(entry, ctx))
    }
}

/// Kong's `set_serialize_value`: intermediate objects are created (replacing a non-object in
/// the way); `None` removes the last name.
fn set(root: &mut Value, path: &[String], value: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for name in parents {
        let Some(obj) = object(cur) else { return };
        cur = obj
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Some(obj) = object(cur) else { return };
    match value {
        Some(v) => {
            obj.insert(last.clone(), v);
        }
        None => {
            obj.remove(last);
        }
    }
}

fn object(v: &mut Value) -> Option<&mut Map<String, Value>> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs `f` on the record entry of `GET /p?v=2` with `X-Team` and `Cookie`.
    fn with_entry<R>(f: impl FnOnce(&LogEntry<'_>) -> R) -> R {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-team", "payments".parse().unwrap());
        headers.insert("cookie", "s=1".parse().unwrap());
        let uri: http::Uri = "/p?v=2".parse().unwrap();
        f(&LogEntry {
            method: &http::Method::GET,
            uri: &uri,
            version: http::Version::HTTP_11,
            host: "h",
            request_headers: &headers,
            response_headers: None,
            status: 200,
            request_body_bytes: 0,
            response_body_bytes: 0,
            started_at: std::time::UNIX_EPOCH,
            latency: 0.0,
            upstream_latency: None,
            upstream_sent: None,
            upstream_status: None,
            upstream_uri: None,
            tries: &[],
            error: None,
            scheme: "http",
            tls_version: None,
            tls_cipher: None,
        })
    }

    fn record(fields: Value) -> Value {
        let r = Record::from_config(Some(&fields)).unwrap();
        let bytes = with_entry(|e| r.bytes(e, &RequestCtx::default()));
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn fields_are_set_templated_nested_and_removed() {
        let r = record(json!({
            "env": "production",
            "team": "$(headers.x_team)",
            "version": "v$(query_params.v or '1')",
            "sampled": true,
            "weight": 2.5,
            "labels": {"a": [1, 2]},
            "request.headers.cookie": null,
            "request.querystring": null,
            "meta.region.name": "eu-west",
            "missing": "[$(headers['x-none'])]",
        }));
        assert_eq!(r["env"], "production");
        assert_eq!(r["team"], "payments");
        assert_eq!(r["version"], "v2");
        assert_eq!(r["sampled"], true);
        assert_eq!(r["weight"], 2.5);
        assert_eq!(r["labels"], json!({"a": [1, 2]}));
        assert_eq!(r["request"]["headers"].get("cookie"), None);
        assert_eq!(r["request"]["headers"]["x-team"], "payments");
        assert_eq!(r["request"].get("querystring"), None);
        assert_eq!(r["meta"], json!({"region": {"name": "eu-west"}}));
        assert_eq!(r["missing"], "[]");
        // Kong's record is otherwise intact.
        assert_eq!(r["request"]["method"], "GET");
        assert_eq!(r["response"]["status"], 200);
    }

    #[test]
    fn new_top_level_fields_are_appended_to_the_same_record() {
        let fields = json!({
            "env": "pro\"duction",
            "team": "$(headers.x_team)",
            "n": 3,
            "obj": {"a": [1, null]},
        });
        let mut r = Record::from_config(Some(&fields)).unwrap();
        assert!(r.append);
        let ctx = RequestCtx::default();
        let appended = with_entry(|e| r.bytes(e, &ctx));
        r.append = false;
        let edited = with_entry(|e| r.bytes(e, &ctx));
        let appended: Value = serde_json::from_slice(&appended).unwrap();
        assert_eq!(appended, serde_json::from_slice::<Value>(&edited).unwrap());
        assert_eq!(appended["env"], "pro\"duction");
        assert_eq!(appended["team"], "payments");
        // Nested, replacing or removing fields take the tree.
        for f in [json!({"a.b": 1}), json!({"route": 1}), json!({"x": null})] {
            assert!(!Record::from_config(Some(&f)).unwrap().append, "{f}");
        }
    }

    #[test]
    fn without_fields_the_record_is_kongs_bytes() {
        let ctx = RequestCtx::default();
        let (ours, kongs) = with_entry(|e| {
            (
                Record::from_config(None).unwrap().bytes(e, &ctx),
                kong_record_bytes(e, &ctx),
            )
        });
        assert_eq!(ours, kongs);
    }

    #[test]
    fn bad_fields_are_located() {
        let errors = |v: Value| match Record::from_config(Some(&v)) {
            Err(e) => format!("{e:?}"),
            Ok(_) => String::new(),
        };
        assert!(errors(json!("x")).contains("custom_fields"));
        let e = errors(json!({"a..b": 1, "t": "$(string.upper(headers.x))"}));
        assert!(e.contains("custom_fields.a..b"), "{e}");
        assert!(e.contains("custom_fields.t"), "{e}");
        assert!(e.contains("not supported"), "{e}");
        let captures = Record::from_config(Some(&json!({"u": "$(uri_captures.id)"}))).unwrap();
        assert!(captures.phases().contains(Phases::URI_CAPTURES));
        let plain = Record::from_config(Some(&json!({"u": "x"}))).unwrap();
        assert_eq!(plain.phases(), Phases::LOG);
    }
}
