//! The plugin's `config`: Kong's mtls-auth schema, parsed strictly, then checked field by field so
//! every problem is reported at once with its path.

use portcullis_plugin_api::ConfigError;
use serde::Deserialize;

/// Consumer fields `consumer_by` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerField {
    CustomId,
    Username,
}

/// What `skip_consumer_lookup` hands to `acl` as the authenticated group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum GroupBy {
    #[default]
    #[serde(rename = "CN")]
    Cn,
    #[serde(rename = "DN")]
    Dn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum RevocationMode {
    #[serde(rename = "SKIP")]
    Skip,
    #[default]
    #[serde(rename = "IGNORE_CA_ERROR")]
    IgnoreCaError,
    #[serde(rename = "STRICT")]
    Strict,
}

fn default_consumer_by() -> Option<Vec<ConsumerField>> {
    Some(vec![ConsumerField::CustomId, ConsumerField::Username])
}
/// Kong's bound on timeouts, 2^31 - 2 ms (about 24.8 days).
const MAX_MS: f64 = 2_147_483_646.0;

fn default_cache_ttl() -> f64 {
    60.0
}
fn default_cert_cache_ttl() -> f64 {
    60_000.0
}
fn default_http_timeout() -> f64 {
    30_000.0
}

/// The config as written. Kong's fields that only make sense in Kong (HTTP proxies for the
/// revocation fetches) are accepted when null, so a deck export loads unchanged, and rejected
/// when set, because silently fetching without the proxy would not be what the operator asked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub ca_certificates: Vec<String>,
    #[serde(default)]
    pub skip_consumer_lookup: bool,
    /// Absent: Kong's default; `null` or `[]`: matching off.
    #[serde(default = "default_consumer_by")]
    pub consumer_by: Option<Vec<ConsumerField>>,
    /// `null` is treated as the default (Kong fixed the same case in FTI-5101).
    #[serde(default)]
    pub authenticated_group_by: Option<GroupBy>,
    #[serde(default)]
    pub anonymous: Option<String>,
    #[serde(default)]
    pub default_consumer: Option<String>,
    #[serde(default)]
    pub revocation_check_mode: Option<RevocationMode>,
    /// Extension: CRLs (PEM or DER) in a file relative to the conf directory.
    #[serde(default)]
    pub crl_file: Option<String>,
    #[serde(default)]
    pub allow_partial_chain: bool,
    #[serde(default)]
    pub send_ca_dn: bool,
    /// Seconds a verification and consumer-lookup result is cached.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: f64,
    /// Milliseconds a revocation answer (OCSP response, downloaded CRL) is reused.
    #[serde(default = "default_cert_cache_ttl")]
    pub cert_cache_ttl: f64,
    /// Milliseconds allowed for one OCSP or CRL fetch.
    #[serde(default = "default_http_timeout")]
    pub http_timeout: f64,
    /// SAN directoryName attributes matched during consumer lookup; empty: all of them.
    #[serde(default)]
    pub san_dirname_matcher: Option<Vec<String>>,
    /// Only plain-HTTP CRL and OCSP URLs are fetched, so this has no effect; accepted for Kong
    /// compatibility.
    #[serde(default, rename = "ssl_verify")]
    pub _ssl_verify: Option<bool>,
    #[serde(default)]
    pub http_proxy_host: Option<String>,
    #[serde(default)]
    pub http_proxy_port: Option<u16>,
    #[serde(default)]
    pub https_proxy_host: Option<String>,
    #[serde(default)]
    pub https_proxy_port: Option<u16>,
}

impl RawConfig {
    /// Checks that need no other entity; reference checks happen when the plugin is built.
    pub fn check(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.ca_certificates.is_empty() {
            errors.push(ConfigError::new(
                "ca_certificates",
                "at least one CA certificate (id or name) is required",
            ));
        }
        for (name, value, unit, max) in [
            ("cache_ttl", self.cache_ttl, "seconds", MAX_MS / 1000.0),
            (
                "cert_cache_ttl",
                self.cert_cache_ttl,
                "milliseconds",
                MAX_MS,
            ),
            ("http_timeout", self.http_timeout, "milliseconds", MAX_MS),
        ] {
            // A value past the bound would become a zero duration (no cache, no time to fetch)
            // or overflow the clock arithmetic done with it.
            if !value.is_finite() || !(0.0..=max).contains(&value) {
                errors.push(ConfigError::new(
                    name,
                    format!("must be a number of {unit} between 0 and {max}"),
                ));
            }
        }
        if self.http_timeout == 0.0 {
            errors.push(ConfigError::new(
                "http_timeout",
                "must be greater than 0 milliseconds",
            ));
        }
        for (name, set) in [
            ("http_proxy_host", self.http_proxy_host.is_some()),
            ("http_proxy_port", self.http_proxy_port.is_some()),
            ("https_proxy_host", self.https_proxy_host.is_some()),
            ("https_proxy_port", self.https_proxy_port.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    name,
                    "proxies for OCSP and CRL fetches are not supported; remove the field \
                     (the gateway fetches them directly)",
                ));
            }
        }
        if let Some(path) = &self.crl_file {
            if path.trim().is_empty() {
                errors.push(ConfigError::new("crl_file", "must not be empty"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_plugin_api::parse_config;
    use serde_json::json;

    #[test]
    fn defaults_follow_kong() {
        let c: RawConfig = parse_config(&json!({"ca_certificates": ["ca"]})).unwrap();
        assert_eq!(c.consumer_by, default_consumer_by());
        assert_eq!(c.authenticated_group_by, None);
        assert_eq!(c.revocation_check_mode, None);
        assert_eq!(c.cache_ttl, 60.0);
        assert!(!c.skip_consumer_lookup && !c.allow_partial_chain && !c.send_ca_dn);
        assert!(c.check().is_empty());
    }

    #[test]
    fn null_consumer_by_turns_matching_off() {
        let c: RawConfig =
            parse_config(&json!({"ca_certificates": ["ca"], "consumer_by": null})).unwrap();
        assert_eq!(c.consumer_by, None);
    }

    #[test]
    fn bad_fields_have_paths() {
        let e =
            parse_config::<RawConfig>(&json!({"ca_certificates": ["ca"], "consumer_by": ["id"]}))
                .unwrap_err();
        assert_eq!(e.path, "consumer_by[0]");
        let e = parse_config::<RawConfig>(
            &json!({"ca_certificates": ["ca"], "revocation_check_mode": "strict"}),
        )
        .unwrap_err();
        assert_eq!(e.path, "revocation_check_mode");
        let e = parse_config::<RawConfig>(&json!({"ca_certificates": ["ca"], "cache_tll": 3}))
            .unwrap_err();
        assert!(e.message.contains("cache_tll"), "{}", e.message);
        let e = parse_config::<RawConfig>(&json!({})).unwrap_err();
        assert!(e.message.contains("ca_certificates"), "{}", e.message);
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        let c: RawConfig = parse_config(&json!({
            "ca_certificates": ["ca"], "cache_ttl": 1e30, "cert_cache_ttl": 1e300,
            "http_timeout": 3e9
        }))
        .unwrap();
        let paths: Vec<_> = c.check().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["cache_ttl", "cert_cache_ttl", "http_timeout"]);
    }

    #[test]
    fn check_reports_every_problem() {
        let c: RawConfig = parse_config(&json!({
            "ca_certificates": [], "cache_ttl": -1, "http_timeout": 0,
            "http_proxy_host": "proxy", "http_proxy_port": null
        }))
        .unwrap();
        let paths: Vec<_> = c.check().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "ca_certificates",
                "cache_ttl",
                "http_timeout",
                "http_proxy_host"
            ]
        );
    }
}
