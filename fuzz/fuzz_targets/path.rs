//! Fuzzes the request path handling: `routing::normalize_path` (run on every request before
//! routing) and `routing::upstream_path` (the path forwarded upstream).
//!
//! Input: the first byte picks how many bytes of the request path a route matched (`strip`), the
//! rest is `service path \n request path` (no `\n`: no service path).
//!
//! Checked, beyond "never panics":
//! - a normalised path (of a path starting with `/`) starts with `/`, has no `.`/`..` segment
//!   and no empty segment (`//`), and normalising it again changes nothing;
//! - no percent-escape of an unreserved character survives, and escapes are upper-case;
//! - a path the `http` crate accepted still parses after normalisation (the proxy rebuilds the
//!   request URI from it and answers 400 if it cannot);
//! - the upstream path starts with `/` and is the service path joined to the unmatched rest of
//!   the request path with exactly one `/` at the joint.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::routing::{normalize_path, upstream_path};

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (service, req) = match text.split_once('\n') {
        Some((s, r)) => (Some(s), r),
        None => (None, text),
    };

    check_normalise(req);
    if let Ok(uri) = req.parse::<http::Uri>() {
        check_normalise(uri.path());
        if let Ok(p) = normalize_path(uri.path()) {
            let rebuilt = match uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p.into_owned(),
            };
            if uri.path().starts_with('/') {
                assert!(
                    rebuilt.parse::<http::Uri>().is_ok(),
                    "{:?} normalised to {rebuilt:?}, which no longer parses",
                    uri.path()
                );
            }
        }
    }

    // The router only strips what a route's prefix or regex matched, which ends on a char
    // boundary of the (normalised) request path.
    let Ok(req) = normalize_path(req) else {
        return;
    };
    if !req.starts_with('/') {
        return;
    }
    let mut strip = usize::from(first) * (req.len() + 1) / 256;
    while !req.is_char_boundary(strip) {
        strip -= 1;
    }
    // Service paths are validated to start with `/`.
    let service = service.filter(|s| s.starts_with('/'));
    let up = upstream_path(service, &req, strip);
    assert!(up.starts_with('/'), "upstream path {up:?}");
    let rest = &req[strip..];
    let base = service.unwrap_or("");
    let (b, r) = (base.trim_end_matches('/'), rest.trim_start_matches('/'));
    if rest.is_empty() {
        assert_eq!(up, if base.is_empty() { "/" } else { base });
    } else if base.ends_with("//") || rest.starts_with("//") {
        // Only one slash is dropped at the joint; doubled ones on either side are the user's.
    } else {
        assert_eq!(up, format!("{b}/{r}"), "service {service:?}, rest {rest:?}");
    }
});

fn check_normalise(path: &str) {
    let Ok(n) = normalize_path(path) else {
        return;
    };
    assert_eq!(
        normalize_path(&n).as_deref(),
        Ok(&*n),
        "normalising {path:?} twice differs"
    );
    if !path.starts_with('/') {
        return;
    }
    assert!(n.starts_with('/'), "{path:?} normalised to {n:?}");
    for seg in n.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "{path:?} normalised to {n:?}");
    }
    assert!(!n.contains("//"), "{path:?} normalised to {n:?}");
    let b = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let (h, l) = (b[i + 1], b[i + 2]);
        assert!(
            h.is_ascii_digit() || h.is_ascii_uppercase(),
            "lower-case escape in {n:?}"
        );
        assert!(
            l.is_ascii_digit() || l.is_ascii_uppercase(),
            "lower-case escape in {n:?}"
        );
        let v = u8::from_str_radix(&n[i + 1..i + 3], 16).unwrap_or(0);
        assert!(
            !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
            "escaped unreserved character in {n:?}"
        );
    }
}
