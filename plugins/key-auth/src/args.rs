//! Finding and removing a named argument in a query string, a form body, a JSON body or a
//! multipart body the way Kong's `kong.request.get_query` / `get_body` see them: a name given
//! twice is a list (Kong answers "Duplicate API key found"), a name without `=` is `true` (not a
//! key).

use portcullis_plugin_api::percent_decode;

#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Missing,
    /// Present but not a string (a bare `apikey` in a query, a number in JSON).
    NotString,
    Value(String),
    /// Given more than once (or a JSON array/object): Kong sees a table.
    Duplicate,
}

/// `name` in `a=1&b=2` (a query string or a form body).
pub fn find_arg(raw: &str, name: &str) -> Found {
    let mut found = Found::Missing;
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        if percent_decode(k) != name {
            continue;
        }
        if found != Found::Missing {
            return Found::Duplicate;
        }
        found = match v {
            Some(v) => Found::Value(percent_decode(v)),
            None => Found::NotString,
        };
    }
    found
}

/// `raw` without any `name` argument; the other arguments keep their encoding.
pub fn without_arg(raw: &str, name: &str) -> String {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| percent_decode(p.split_once('=').map_or(*p, |(k, _)| k)) != name)
        .collect::<Vec<_>>()
        .join("&")
}

/// The body encodings Kong's `get_body` understands, picked from Content-Type.
enum Kind {
    Form,
    Json,
    Multipart(String),
}

fn kind(content_type: &str) -> Option<Kind> {
    let lower = content_type.to_ascii_lowercase();
    if lower.contains("application/x-www-form-urlencoded") {
        Some(Kind::Form)
    } else if lower.contains("application/json") {
        Some(Kind::Json)
    } else if lower.contains("multipart/form-data") {
        let b = content_type.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })?;
        (!b.is_empty()).then_some(Kind::Multipart(b))
    } else {
        None
    }
}

/// The byte range of each part (delimiter line included) and its field name.
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<(std::ops::Range<usize>, Option<String>)> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while i + d.len() <= body.len() {
        if &body[i..i + d.len()] == d && (i == 0 || body[..i].ends_with(b"\r\n")) {
            starts.push(i);
            i += d.len();
        } else {
            i += 1;
        }
    }
    let mut parts = Vec::new();
    for w in starts.windows(2) {
        let (start, next) = (w[0], w[1]);
        let part = &body[start + d.len()..next];
        if part.starts_with(b"--") {
            break;
        }
        let Some(head_end) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..head_end]);
        let name = head
            .split("\r\n")
            .find(|l| {
                l.split_once(':')
                    .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
            })
            .and_then(|l| {
                l.split(';').find_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
                })
            });
        parts.push((start..next, name));
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn multipart_value(body: &[u8], range: &std::ops::Range<usize>) -> String {
    let part = &body[range.clone()];
    let value = find(part, b"\r\n\r\n").map_or(&[][..], |h| &part[h + 4..]);
    let value = value.strip_suffix(b"\r\n").unwrap_or(value);
    String::from_utf8_lossy(value).into_owned()
}

/// `name` in a request body of `content_type`; bodies Kong cannot read have no arguments.
pub fn find_in_body(content_type: Option<&str>, body: &[u8], name: &str) -> Found {
    match content_type.and_then(kind) {
        None => Found::Missing,
        Some(Kind::Form) => find_arg(&String::from_utf8_lossy(body), name),
        Some(Kind::Json) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => match m.get(name) {
                None | Some(serde_json::Value::Null) => Found::Missing,
                Some(serde_json::Value::String(s)) => Found::Value(s.clone()),
                Some(serde_json::Value::Array(_) | serde_json::Value::Object(_)) => {
                    Found::Duplicate
                }
                Some(_) => Found::NotString,
            },
            _ => Found::Missing,
        },
        Some(Kind::Multipart(boundary)) => {
            let parts = multipart_parts(body, &boundary);
            let mut matching = parts.iter().filter(|(_, n)| n.as_deref() == Some(name));
            match (matching.next(), matching.next()) {
                (None, _) => Found::Missing,
                (Some(_), Some(_)) => Found::Duplicate,
                (Some((range, _)), None) => Found::Value(multipart_value(body, range)),
            }
        }
    }
}

/// The body without `name`, or `None` when it has no such argument (then it is sent unchanged).
pub fn remove_from_body(content_type: Option<&str>, body: &[u8], name: &str) -> Option<Vec<u8>> {
    match content_type.and_then(kind)? {
        Kind::Form => {
            let raw = String::from_utf8_lossy(body);
            let out = without_arg(&raw, name);
            (out != raw.trim_matches('&')).then(|| out.into_bytes())
        }
        Kind::Json => {
            let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v.as_object_mut()?.remove(name)?;
            serde_json::to_vec(&v).ok()
        }
        Kind::Multipart(boundary) => {
            let parts = multipart_parts(body, &boundary);
            if !parts.iter().any(|(_, n)| n.as_deref() == Some(name)) {
                return None;
            }
            let mut out = body.to_vec();
            for (range, _) in parts.iter().rev() {
                if parts
                    .iter()
                    .any(|(r, n)| r == range && n.as_deref() == Some(name))
                {
                    out.drain(range.clone());
                }
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_arguments_as_kong_sees_them() {
        assert_eq!(
            find_arg("a=1&apikey=k%20y", "apikey"),
            Found::Value("k y".into())
        );
        assert_eq!(find_arg("apikey=a&apikey=b", "apikey"), Found::Duplicate);
        assert_eq!(find_arg("apikey", "apikey"), Found::NotString);
        assert_eq!(find_arg("apikey=", "apikey"), Found::Value(String::new()));
        assert_eq!(find_arg("apikeyx=1", "apikey"), Found::Missing);
        assert_eq!(without_arg("a=1&apikey=x&b=%20", "apikey"), "a=1&b=%20");
        assert_eq!(without_arg("apikey=x", "apikey"), "");
    }

    #[test]
    fn bodies_by_content_type() {
        let form = Some("application/x-www-form-urlencoded");
        assert_eq!(
            find_in_body(form, b"x=1&apikey=k", "apikey"),
            Found::Value("k".into())
        );
        assert_eq!(
            remove_from_body(form, b"x=1&apikey=k", "apikey").unwrap(),
            b"x=1"
        );
        assert_eq!(remove_from_body(form, b"x=1", "apikey"), None);

        let json = Some("application/json; charset=utf-8");
        assert_eq!(
            find_in_body(json, br#"{"apikey":"k"}"#, "apikey"),
            Found::Value("k".into())
        );
        assert_eq!(
            find_in_body(json, br#"{"apikey":["a"]}"#, "apikey"),
            Found::Duplicate
        );
        assert_eq!(
            find_in_body(json, br#"{"apikey":1}"#, "apikey"),
            Found::NotString
        );
        assert_eq!(
            remove_from_body(json, br#"{"apikey":"k","a":1}"#, "apikey").unwrap(),
            br#"{"a":1}"#
        );

        let mp = Some("multipart/form-data; boundary=\"XyZ\"");
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nsecret\r\n--XyZ--\r\n";
        assert_eq!(
            find_in_body(mp, body, "apikey"),
            Found::Value("secret".into())
        );
        let out = remove_from_body(mp, body, "apikey").unwrap();
        assert_eq!(
            out,
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--\r\n".to_vec()
        );
        assert_eq!(
            find_in_body(Some("text/plain"), b"apikey=x", "apikey"),
            Found::Missing
        );
    }
}
