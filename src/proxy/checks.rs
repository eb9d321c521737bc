//! Request checks before routing: the header size limits and the `Host` and `X-Request-Id`
//! values accepted from clients.

use pingora::http::RequestHeader;

/// Largest single header line and all headers together that a request may carry.
pub(super) const MAX_HEADER_BYTES: usize = 16 * 1024;
pub(super) const MAX_HEADERS_TOTAL_BYTES: usize = 64 * 1024;

pub(super) fn host_header_ok(req: &RequestHeader) -> bool {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => valid_host(h.as_bytes()),
        (Some(_), Some(_)) => false,
        // HTTP/1.0 may omit it; HTTP/2 carries :authority in the URI.
        (None, _) => req.version != http::Version::HTTP_11 || req.uri.authority().is_some(),
    }
}

/// A `Host` value as nginx accepts it: a reg-name, IPv4 or bracketed IPv6 literal and an
/// optional port — no spaces, slashes, backslashes, `..` or bytes outside ASCII.
pub(super) fn valid_host(h: &[u8]) -> bool {
    !h.is_empty()
        && !h.windows(2).any(|w| w == b"..")
        && h.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

pub(super) fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_values() {
        for ok in [
            "h.test",
            "H.Test:8000",
            "127.0.0.1:80",
            "[::1]:8443",
            "a-b_c.example",
        ] {
            assert!(super::valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "bad host",
            "a/b",
            "a\\b",
            "x..y",
            "h.test\u{7f}",
            "h\u{e9}.test",
            "a@b",
        ] {
            assert!(!super::valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
