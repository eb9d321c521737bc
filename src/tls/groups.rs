//! Key-exchange groups (`tls.groups`): which groups the gateway offers toward upstreams and
//! accepts from clients, in order of preference. The default puts the post-quantum hybrid
//! X25519MLKEM768 first (SPEC §5) and keeps classical groups for older peers.

use openssl::ssl::{SslContext, SslMethod};

/// Offered and accepted when `tls.groups` is absent.
pub const DEFAULT_GROUPS: &[&str] = &["X25519MLKEM768", "X25519", "P-256", "P-384", "P-521"];

/// Whether the linked OpenSSL knows `name` as a key-exchange group. The name must be a bare
/// group name: the list syntax (`:`, `/`, `*`, `?`, `-`) is ours to write.
pub fn is_known(name: &str) -> bool {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        || name.starts_with('-')
    {
        return false;
    }
    SslContext::builder(SslMethod::tls())
        .and_then(|mut b| b.set_groups_list(name))
        .is_ok()
}

/// The server's list: every group in a tuple of its own (`A/B/C`), so the gateway's order
/// decides. With one flat list OpenSSL would take any group the client sent a key share for,
/// and a client offering X25519MLKEM768 but guessing X25519 would get X25519.
pub fn server_list(groups: &[String]) -> String {
    groups.join("/")
}

/// The client's list toward upstreams: key shares (`*`) for the first two groups, so a
/// classical-only server answers at once instead of asking for another key share (a
/// HelloRetryRequest round trip) — what OpenSSL 3.5 and browsers send by default.
pub fn client_list(groups: &[String]) -> String {
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| if i < 2 { format!("*{g}") } else { g.clone() })
        .collect::<Vec<_>>()
        .join(":")
}

/// The client list as the `'static` string Pingora's peer options take, made once per
/// distinct list (a reload changing `tls.groups` adds one; the set stays tiny).
pub fn interned_client_list(groups: &[String]) -> &'static str {
    static LISTS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let list = client_list(groups);
    let Ok(mut lists) = LISTS.lock() else {
        return Box::leak(list.into_boxed_str());
    };
    if let Some(s) = lists.iter().find(|s| **s == list) {
        return s;
    }
    let s: &'static str = Box::leak(list.into_boxed_str());
    lists.push(s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_linked_openssl_knows_every_default_group() {
        for g in DEFAULT_GROUPS {
            assert!(is_known(g), "{g}");
        }
        assert!(!is_known("X25519Kyber768Draft00"));
        assert!(!is_known("nonsense"));
        assert!(!is_known(""));
        assert!(!is_known("X25519:P-256"));
        assert!(!is_known("*X25519"));
        assert!(!is_known("?X25519"));
    }

    #[test]
    fn lists_are_accepted_by_openssl() {
        let g = owned(DEFAULT_GROUPS);
        assert_eq!(server_list(&g), "X25519MLKEM768/X25519/P-256/P-384/P-521");
        assert_eq!(client_list(&g), "*X25519MLKEM768:*X25519:P-256:P-384:P-521");
        for list in [
            server_list(&g),
            client_list(&g),
            client_list(&owned(&["X25519"])),
        ] {
            let mut b = SslContext::builder(SslMethod::tls()).unwrap();
            b.set_groups_list(&list).unwrap();
        }
    }

    #[test]
    fn interning_returns_one_string_per_list() {
        let a = interned_client_list(&owned(&["X25519", "P-256"]));
        let b = interned_client_list(&owned(&["X25519", "P-256"]));
        assert!(std::ptr::eq(a, b));
    }
}
