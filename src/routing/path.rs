//! Request paths: Kong's normalisation before routing, and the path sent upstream once a route
//! matched.

/// Why a request path cannot be normalised.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Kong's path normalisation before routing (RFC 3986 §6.2.2): percent-encoded unreserved
/// characters decoded, other escapes upper-cased, dot segments removed, repeated slashes merged.
/// Without it `/public/../private` would match a `/public` route (and its plugins) and reach an
/// upstream that resolves it to `/private`. Borrowed (no allocation) when already normal.
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, BadPath> {
    let b = path.as_bytes();
    let needs = b.contains(&b'%')
        || path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/.")
        || path.ends_with("/..");
    if !needs {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    // 1. Escapes.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadPath);
            };
            let v = h * 16 + l;
            if unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(b[i + 1].to_ascii_uppercase() as char);
                decoded.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            // Multi-byte UTF-8 is copied through unchanged.
            let ch_len = match b[i] {
                x if x < 0x80 => 1,
                x if x >= 0xF0 => 4,
                x if x >= 0xE0 => 3,
                _ => 2,
            };
            let end = (i + ch_len).min(b.len());
            decoded.push_str(path.get(i..end).ok_or(BadPath)?);
            i = end;
        }
    }
    // 2. Dot segments and empty segments.
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || (trailing && !out.is_empty()) {
        result.push('/');
    }
    Ok(std::borrow::Cow::Owned(result))
}

/// The upstream path for a matched request (Kong `path_handling: v0`): the service path joined
/// with what remains of the request path after `strip_path`.
pub fn upstream_path(service_path: Option<&str>, req_path: &str, strip: usize) -> String {
    let rest = &req_path[strip.min(req_path.len())..];
    match service_path {
        None | Some("") => {
            if rest.is_empty() {
                "/".to_string()
            } else if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            }
        }
        Some(base) => {
            if rest.is_empty() {
                base.to_string()
            } else if base.ends_with('/') && rest.starts_with('/') {
                format!("{}{}", base, &rest[1..])
            } else if !base.ends_with('/') && !rest.starts_with('/') {
                format!("{base}/{rest}")
            } else {
                format!("{base}{rest}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{normalize_path, upstream_path};

    fn n(p: &str) -> String {
        normalize_path(p)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| "ERR".into())
    }

    #[test]
    fn normalises_like_kong() {
        assert_eq!(n("/a/b"), "/a/b");
        assert_eq!(n("/api/public/../private/x"), "/api/private/x");
        assert_eq!(n("/api/public/./../private"), "/api/private");
        assert_eq!(n("/api/public/%2e%2e/private"), "/api/private");
        assert_eq!(n("/api/public/.%2E/private"), "/api/private");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("//a///b/"), "/a/b/");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/%zz"), "ERR");
        assert_eq!(n("/%4"), "ERR");
        assert_eq!(n("/caf%C3%A9"), "/caf%C3%A9");
        assert_eq!(n("/café/./x"), "/café/x");
    }

    #[test]
    fn path_join() {
        assert_eq!(upstream_path(None, "/a/b", 2), "/b");
        assert_eq!(upstream_path(None, "/a", 2), "/");
        assert_eq!(upstream_path(Some("/svc"), "/a/b", 2), "/svc/b");
        assert_eq!(upstream_path(Some("/svc/"), "/a/b", 2), "/svc/b");
        assert_eq!(upstream_path(Some("/svc"), "/a", 2), "/svc");
        assert_eq!(upstream_path(Some("/svc"), "/ab", 2), "/svc/b");
        assert_eq!(upstream_path(None, "/a/b", 0), "/a/b");
    }
}
