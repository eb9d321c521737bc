//! Host names and SNIs: one normalisation, and the meaning of wildcards for each use.
//!
//! A name sent by a client (SNI, `Host`) is normalised once, where it enters: ASCII lower case,
//! one trailing dot removed (`API.Example.TEST.` is `api.example.test`). Names in the
//! configuration are validated in that form already. Certificate choice, the decision to ask for
//! a client certificate and routing all see the same normalised name, so they cannot disagree
//! about which name a connection is for.
//!
//! Wildcards are `*.example.com` (leftmost label) and `example.*` (rightmost label). What they
//! cover depends on the use:
//!
//! | use | `*.example.com` covers | `example.*` covers | order |
//! | --- | --- | --- | --- |
//! | certificates (`certificates[].snis`) | one label: `a.example.com`, not `a.b.example.com` | `example.` plus one label: `example.org`, not `example.co.uk` | exact, `*.rest`, `all-but-last.*` (Kong's `produce_wild_snis`), default |
//! | route `hosts` | any depth: `a.b.example.com` | any depth: `example.co.uk` | Kong's router priority |
//! | route `snis` (HTTPS routes) | any depth | any depth | part of the route's match |
//! | passthrough `snis` (stream) | any depth | any depth | exact, longest `*.suffix`, longest `prefix.*` |
//! | client-certificate request | any depth, as route `snis`: asked exactly when an mtls-auth route could match the SNI | any depth | — |
//!
//! Certificates follow X.509 (RFC 6125 §6.4.3: a wildcard stands for one label) and Kong's
//! certificate lookup; routes follow Kong's router, where a wildcard host matches any depth.
//! Neither name matches with the wildcard label empty: `*.example.com` never covers
//! `example.com`.

use std::borrow::Cow;

/// Where a name is matched; each use has its wildcard meaning (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameUse {
    Certificate,
    RouteHost,
    RouteSni,
    Passthrough,
    ClientCertificateRequest,
}

impl NameUse {
    /// Whether a wildcard stands for exactly one label (else for one or more).
    pub const fn one_label(self) -> bool {
        matches!(self, NameUse::Certificate)
    }
}

/// ASCII lower case and no trailing dot; borrowed when already so (the common case).
pub fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether `pattern` (from the configuration) covers `name` (normalised) for `use_`.
pub fn matches(use_: NameUse, pattern: &str, name: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let Some(label) = name
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
        else {
            return false;
        };
        !label.is_empty() && (!use_.one_label() || !label.contains('.'))
    } else if let Some(prefix) = pattern.strip_suffix(".*") {
        let Some(label) = name
            .strip_prefix(prefix)
            .and_then(|tail| tail.strip_prefix('.'))
        else {
            return false;
        };
        !label.is_empty() && (!use_.one_label() || !label.contains('.'))
    } else {
        pattern == name
    }
}

/// The wildcard patterns that may hold a certificate for `name` (normalised), in lookup order:
/// the first label replaced by `*`, then the last (`www.shop.test` → `*.shop.test`,
/// `www.shop.*`). Each covers `name` with one label, as [`NameUse::Certificate`] means.
pub fn certificate_wildcards(name: &str) -> [Option<String>; 2] {
    let leading = name
        .find('.')
        .filter(|&i| i > 0 && i + 1 < name.len())
        .map(|i| format!("*{}", &name[i..]));
    let trailing = name
        .rfind('.')
        .filter(|&i| i > 0 && i + 1 < name.len())
        .map(|i| format!("{}.*", &name[..i]));
    [leading, trailing]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::Certificate;
    use crate::routing::{RequestInfo, Router};
    use crate::stream::{StreamRouteSpec, StreamTable, StreamTarget};
    use crate::tls::{CertStore, ClientCertPolicy};
    use std::sync::Arc;

    #[test]
    fn normalises_case_and_one_trailing_dot() {
        assert_eq!(normalize("API.Example.TEST."), "api.example.test");
        assert_eq!(normalize("api.example.test"), "api.example.test");
        assert!(matches!(normalize("api.example.test"), Cow::Borrowed(_)));
        assert_eq!(normalize("a.test.."), "a.test.");
        assert_eq!(normalize(""), "");
    }

    fn router(route: &str) -> Router {
        let dir = tempfile::tempdir().expect("tempdir");
        let yaml = format!(
            "_format_version: \"3.0\"\nservices:\n  - name: s\n    url: http://127.0.0.1:9\n    routes:\n      - {route}\n"
        );
        std::fs::write(dir.path().join("gateway.yaml"), yaml).expect("write");
        let (config, _) = crate::config::load(dir.path(), crate::plugin::registry())
            .expect("configuration loads");
        Router::new(&config.routes)
    }

    fn routed(router: &Router, host: &str, sni: Option<&str>) -> bool {
        router
            .route(&RequestInfo {
                host,
                path: "/",
                method: "GET",
                tls: sni.is_some(),
                sni,
                header: &|_| None,
            })
            .is_some()
    }

    fn cert_store(pattern: &str) -> CertStore {
        let fallback = crate::tls::self_signed().expect("self-signed certificate");
        let mine = Arc::new(Certificate {
            id: "mine".into(),
            name: Some("mine".into()),
            chain: fallback.chain.clone(),
            key: fallback.key.clone(),
            snis: vec![pattern.to_string()],
            subject: fallback.subject.clone(),
            not_after: fallback.not_after,
            fingerprint: String::new(),
            origin: "test".into(),
        });
        CertStore::for_certificates(&[mine], fallback, ClientCertPolicy::default())
    }

    fn passthrough(pattern: &str) -> StreamTable {
        StreamTable::new(vec![StreamRouteSpec {
            route: "p".into(),
            service: "s".into(),
            snis: vec![pattern.to_string()],
            targets: vec![StreamTarget {
                host: "127.0.0.1".into(),
                port: 9,
                weight: 1,
            }],
            connect_timeout: std::time::Duration::from_secs(1),
            health: None,
            kinds: crate::stream::table::StreamKinds::PASSTHROUGH,
            sources: Vec::new(),
            destinations: Vec::new(),
            upstream_tls: None,
        }])
    }

    /// One table for every use: the pattern, the name a client sends, whether a certificate
    /// with that SNI pattern is chosen, and whether routes (hosts, snis), passthrough routes and
    /// the client-certificate request cover it. Each implementation is checked, not only
    /// [`matches`].
    #[test]
    fn every_use_agrees_with_its_documented_meaning() {
        #[rustfmt::skip]
        let table: &[(&str, &str, bool, bool)] = &[
            // pattern            client name              cert   route/passthrough/client-cert
            ("api.example.test",  "api.example.test",      true,  true),
            ("api.example.test",  "API.Example.TEST.",     true,  true),
            ("api.example.test",  "api.example.test.x",    false, false),
            ("*.example.test",    "a.example.test",        true,  true),
            ("*.example.test",    "A.EXAMPLE.TEST.",       true,  true),
            ("*.example.test",    "a.b.example.test",      false, true),
            ("*.example.test",    "example.test",          false, false),
            ("*.example.test",    ".example.test",         false, false),
            ("*.example.test",    "aexample.test",         false, false),
            ("shop.*",            "shop.test",             true,  true),
            ("shop.*",            "SHOP.TEST.",            true,  true),
            ("shop.*",            "shop.example.org",      false, true),
            ("shop.*",            "shop",                  false, false),
            ("shop.*",            "shop.",                 false, false),
            ("shop.*",            "shops.test",            false, false),
            ("shop.*",            "a.shop.test",           false, false),
        ];
        for &(pattern, name, cert, route) in table {
            let n = normalize(name);
            let row = format!("{pattern} vs {name}");
            assert_eq!(
                matches(NameUse::Certificate, pattern, &n),
                cert,
                "certificate: {row}"
            );
            for use_ in [
                NameUse::RouteHost,
                NameUse::RouteSni,
                NameUse::Passthrough,
                NameUse::ClientCertificateRequest,
            ] {
                assert_eq!(matches(use_, pattern, &n), route, "{use_:?}: {row}");
            }

            let chosen = cert_store(pattern).lookup(Some(name)).id == "mine";
            assert_eq!(chosen, cert, "CertStore::lookup: {row}");
            let hosts = router(&format!("{{ name: r, hosts: [\"{pattern}\"] }}"));
            assert_eq!(routed(&hosts, name, None), route, "route hosts: {row}");
            let snis = router(&format!(
                "{{ name: r, protocols: [https], snis: [\"{pattern}\"] }}"
            ));
            assert_eq!(
                routed(&snis, "h.test", Some(&n)),
                route,
                "route snis: {row}"
            );
            assert_eq!(
                passthrough(pattern).lookup(name).is_some(),
                route,
                "passthrough: {row}"
            );
            let policy = ClientCertPolicy {
                all: false,
                snis: vec![pattern.to_string()],
                ca_names_der: Vec::new(),
            };
            assert_eq!(
                policy.applies(Some(&n)),
                route,
                "client-cert request: {row}"
            );
        }
    }
}
