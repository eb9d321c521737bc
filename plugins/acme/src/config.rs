//! Kong's `acme` schema (kong/plugins/acme/schema.lua), with Portcullis's extensions
//! (`api_ca_certificates`, `challenge_type`, `storage: file`). Every field accepts `null`, as
//! decK dumps write unset fields.

use portcullis_plugin_api::state::RedisConfig;
use portcullis_plugin_api::{BuildContext, ConfigError};
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    account_email: Option<String>,
    account_key: Option<Value>,
    api_uri: Option<String>,
    tos_accepted: Option<bool>,
    eab_kid: Option<String>,
    eab_hmac_key: Option<String>,
    cert_type: Option<String>,
    rsa_key_size: Option<u32>,
    renew_threshold_days: Option<f64>,
    domains: Option<Vec<String>>,
    allow_any_domain: Option<bool>,
    fail_backoff_minutes: Option<f64>,
    storage: Option<String>,
    storage_config: Option<RawStorageConfig>,
    preferred_chain: Option<String>,
    enable_ipv4_common_name: Option<bool>,
    // Extensions.
    api_ca_certificates: Option<Vec<String>>,
    challenge_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
// Kong's blocks for other storages are accepted (decK writes them all) and not read.
#[allow(dead_code)]
struct RawStorageConfig {
    shm: Option<RawShm>,
    kong: Option<Value>,
    redis: Option<RawRedis>,
    consul: Option<Value>,
    vault: Option<Value>,
    file: Option<RawFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShm {
    #[allow(dead_code)]
    shm_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: Option<String>,
}

/// Kong's shared Redis schema (kong/tools/redis/schema.lua) plus the acme plugin's legacy
/// shorthands (`auth`, `ssl_server_name`, `namespace`, `scan_count`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawRedis {
    host: Option<String>,
    port: Option<u16>,
    timeout: Option<u64>,
    connect_timeout: Option<u64>,
    send_timeout: Option<u64>,
    read_timeout: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    database: Option<i64>,
    ssl: Option<bool>,
    ssl_verify: Option<bool>,
    server_name: Option<String>,
    keepalive_pool_size: Option<u64>,
    keepalive_backlog: Option<u64>,
    sentinel_master: Option<String>,
    sentinel_role: Option<String>,
    sentinel_nodes: Option<Value>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    cluster_nodes: Option<Value>,
    cluster_max_redirections: Option<u64>,
    connection_is_proxied: Option<bool>,
    extra_options: Option<RawExtra>,
    auth: Option<String>,
    ssl_server_name: Option<String>,
    namespace: Option<String>,
    scan_count: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawExtra {
    namespace: Option<String>,
    scan_count: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertType {
    Rsa(u32),
    Ecc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone)]
pub enum Storage {
    Shm,
    Redis(RedisConfig),
    File(PathBuf),
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub account_email: String,
    /// `api_uri` as written.
    pub api_uri: String,
    /// The directory URL (`/directory` appended as Kong does).
    pub directory_url: String,
    pub tos_accepted: bool,
    /// (kid, decoded HMAC key).
    pub eab: Option<(String, Vec<u8>)>,
    pub cert_type: CertType,
    pub renew_threshold: Duration,
    pub fail_backoff: Duration,
    /// Exact names, lower case.
    pub domains: Vec<String>,
    /// Suffixes of `*.example.com` entries (`.example.com`).
    pub wildcard_suffixes: Vec<String>,
    pub allow_any_domain: bool,
    pub storage: Storage,
    /// Prefix of every storage key (Kong's `extra_options.namespace`).
    pub namespace: String,
    pub preferred_chain: Option<String>,
    /// PEM of the CAs trusted for the ACME server's HTTPS certificate, besides the system store.
    pub api_ca_pem: Vec<String>,
    pub challenge: Challenge,
}

impl Settings {
    /// Where the directory is looked for: Kong's URL, then `api_uri` as written when it differs
    /// (a CA whose directory is not at `…/directory`, such as pebble's `/dir`).
    pub fn directory_candidates(&self) -> Vec<String> {
        let mut v = vec![self.directory_url.clone()];
        if self.api_uri != self.directory_url {
            v.push(self.api_uri.clone());
        }
        v
    }

    /// Whether a certificate may be ordered for `host` (Kong's domain matcher: exact names, and
    /// `*.example.com` for any name ending in `.example.com`).
    pub fn allowed(&self, host: &str) -> bool {
        if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
            return false;
        }
        self.allow_any_domain
            || self.domains.iter().any(|d| d == host)
            || self
                .wildcard_suffixes
                .iter()
                .any(|s| host.ends_with(s.as_str()))
    }

    /// What identifies the certificates this configuration serves: another CA, account or
    /// storage means other certificates.
    pub fn identity(&self) -> String {
        let storage = match &self.storage {
            Storage::Shm => "shm".to_string(),
            Storage::Redis(r) => format!("redis:{}:{}/{}", r.host, r.port, r.database),
            Storage::File(p) => format!("file:{}", p.display()),
        };
        format!(
            "{}|{}|{}|{}",
            self.directory_url, self.account_email, storage, self.namespace
        )
    }
}

fn err(errors: &mut Vec<ConfigError>, path: &str, msg: impl Into<String>) {
    errors.push(ConfigError::new(path, msg));
}

/// Kong's rule (client.lua): the URI is the directory unless it does not end with `/directory`,
/// in which case `/directory` is appended.
pub fn directory_url(api_uri: &str) -> String {
    if api_uri.ends_with("/directory") {
        api_uri.to_string()
    } else if api_uri.ends_with('/') {
        format!("{api_uri}directory")
    } else {
        format!("{api_uri}/directory")
    }
}

fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub fn parse(value: &Value, ctx: &BuildContext) -> Result<Settings, Vec<ConfigError>> {
    let raw: Raw = portcullis_plugin_api::parse_config(value).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    if ctx.route_id.is_some() || ctx.service_id.is_some() {
        // Kong's schema: `route`/`service` are `typedefs.no_route`/`no_service`.
        err(
            &mut errors,
            "",
            "the acme plugin can only be configured globally (no route, service or consumer)",
        );
    }
    let account_email = match raw.account_email {
        Some(e) if e.contains('@') => e,
        Some(_) => {
            err(
                &mut errors,
                "account_email",
                "invalid value: not an e-mail address",
            );
            String::new()
        }
        None => {
            err(&mut errors, "account_email", "required field missing");
            String::new()
        }
    };
    if raw.account_key.as_ref().is_some_and(|v| !v.is_null()) {
        err(
            &mut errors,
            "account_key",
            "keys entities are not supported: remove account_key and an account key is generated and kept in the configured storage",
        );
    }
    let api_uri = raw.api_uri.unwrap_or_else(|| LETS_ENCRYPT.to_string());
    if !(api_uri.starts_with("https://") || api_uri.starts_with("http://")) {
        err(
            &mut errors,
            "api_uri",
            "missing URL scheme: must be https://",
        );
    } else if api_uri.starts_with("http://") {
        err(
            &mut errors,
            "api_uri",
            "the ACME server must be reached over https:// (its answers carry the certificates)",
        );
    }
    let tos_accepted = raw.tos_accepted.unwrap_or(false);
    let lets_encrypt = [
        "https://acme-v02.api.letsencrypt.org",
        "https://acme-staging-v02.api.letsencrypt.org",
    ];
    if !tos_accepted
        && lets_encrypt
            .iter()
            .any(|u| api_uri.trim_end_matches('/').trim_end_matches("/directory") == *u)
    {
        err(
            &mut errors,
            "tos_accepted",
            "terms of service must be accepted, see https://letsencrypt.org/repository/",
        );
    }
    let eab = match (raw.eab_kid, raw.eab_hmac_key) {
        (None, None) => None,
        (Some(kid), Some(key)) => {
            use base64::Engine;
            let key = key.trim_end_matches('=');
            match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key) {
                Ok(k) => Some((kid, k)),
                Err(_) => {
                    err(&mut errors, "eab_hmac_key", "must be base64url-encoded");
                    None
                }
            }
        }
        (Some(_), None) => {
            err(&mut errors, "eab_hmac_key", "required with eab_kid");
            None
        }
        (None, Some(_)) => {
            err(&mut errors, "eab_kid", "required with eab_hmac_key");
            None
        }
    };
    let rsa_bits = raw.rsa_key_size.unwrap_or(4096);
    if ![2048, 3072, 4096].contains(&rsa_bits) {
        err(
            &mut errors,
            "rsa_key_size",
            "expected one of: 2048, 3072, 4096",
        );
    }
    let cert_type = match raw.cert_type.as_deref().unwrap_or("rsa") {
        "rsa" => CertType::Rsa(rsa_bits),
        "ecc" => CertType::Ecc,
        _ => {
            err(&mut errors, "cert_type", "expected one of: rsa, ecc");
            CertType::Ecc
        }
    };
    let days = raw.renew_threshold_days.unwrap_or(14.0);
    if !(days.is_finite() && days >= 0.0) {
        err(
            &mut errors,
            "renew_threshold_days",
            "must be a number of days, 0 or more",
        );
    }
    let minutes = raw.fail_backoff_minutes.unwrap_or(5.0);
    if !(minutes.is_finite() && minutes >= 0.0) {
        err(
            &mut errors,
            "fail_backoff_minutes",
            "must be a number of minutes, 0 or more",
        );
    }
    let mut domains = Vec::new();
    let mut wildcard_suffixes = Vec::new();
    for (i, d) in raw.domains.unwrap_or_default().iter().enumerate() {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if !valid_host(&d) {
            err(&mut errors, &format!("domains[{i}]"), "invalid hostname");
        } else if let Some(rest) = d.strip_prefix('*') {
            wildcard_suffixes.push(rest.to_string());
        } else {
            domains.push(d);
        }
    }
    let sc = raw.storage_config.unwrap_or_default();
    let mut namespace = String::new();
    let storage = match raw.storage.as_deref().unwrap_or("shm") {
        "shm" => Storage::Shm,
        "redis" => {
            let r = sc.redis.unwrap_or_default();
            if r.sentinel_master.is_some() || r.cluster_nodes.as_ref().is_some_and(|v| !v.is_null())
            {
                err(
                    &mut errors,
                    "storage_config.redis",
                    "Redis Sentinel and Cluster are not supported: use host and port",
                );
            }
            if r.host.is_none() {
                err(
                    &mut errors,
                    "storage_config.redis.host",
                    "required field missing",
                );
            }
            if r.port.is_none() {
                err(
                    &mut errors,
                    "storage_config.redis.port",
                    "required field missing",
                );
            }
            let extra = r.extra_options.unwrap_or_default();
            namespace = extra.namespace.or(r.namespace).unwrap_or_default();
            Storage::Redis(RedisConfig {
                host: r.host.unwrap_or_default(),
                port: r.port.unwrap_or(6379),
                database: r.database.unwrap_or(0),
                username: r.username,
                password: r.password.or(r.auth),
                ssl: r.ssl.unwrap_or(false),
                ssl_verify: r.ssl_verify.unwrap_or(false),
                timeout: Duration::from_millis(r.timeout.unwrap_or(2000).max(1)),
            })
        }
        "file" => match sc.file.and_then(|f| f.path) {
            Some(p) => {
                let path = ctx.conf_dir.join(&p);
                match std::fs::create_dir_all(&path).and_then(|_| probe_writable(&path)) {
                    Ok(()) => Storage::File(path),
                    Err(e) => {
                        err(
                            &mut errors,
                            "storage_config.file.path",
                            format!("not a writable directory: {e}"),
                        );
                        Storage::Shm
                    }
                }
            }
            None => {
                err(
                    &mut errors,
                    "storage_config.file.path",
                    "required field missing",
                );
                Storage::Shm
            }
        },
        "kong" => {
            // Kong's own message for db-less mode, which is what Portcullis is.
            err(
                &mut errors,
                "storage",
                "\"kong\" storage can't be used with dbless mode",
            );
            Storage::Shm
        }
        s @ ("consul" | "vault") => {
            err(
                &mut errors,
                "storage",
                format!("\"{s}\" storage is not supported: use shm, redis or file"),
            );
            Storage::Shm
        }
        _ => {
            err(
                &mut errors,
                "storage",
                "expected one of: kong, shm, redis, consul, vault, file",
            );
            Storage::Shm
        }
    };
    let mut api_ca_pem = Vec::new();
    for (i, r) in raw
        .api_ca_certificates
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match ctx.ca_certificate(r) {
            Some(c) => api_ca_pem.push(c.pem.clone()),
            None => err(
                &mut errors,
                &format!("api_ca_certificates[{i}]"),
                format!("no ca_certificate with id or name {r:?}"),
            ),
        }
    }
    let challenge = match raw.challenge_type.as_deref().unwrap_or("http-01") {
        "http-01" => Challenge::Http01,
        "tls-alpn-01" => Challenge::TlsAlpn01,
        _ => {
            err(
                &mut errors,
                "challenge_type",
                "expected one of: http-01, tls-alpn-01",
            );
            Challenge::Http01
        }
    };
    let _ = raw.enable_ipv4_common_name;
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Settings {
        account_email,
        directory_url: directory_url(&api_uri),
        api_uri,
        tos_accepted,
        eab,
        cert_type,
        renew_threshold: Duration::from_secs_f64(days * 86400.0),
        fail_backoff: Duration::from_secs_f64(minutes * 60.0),
        domains,
        wildcard_suffixes,
        allow_any_domain: raw.allow_any_domain.unwrap_or(false),
        storage,
        namespace,
        preferred_chain: raw.preferred_chain,
        api_ca_pem,
        challenge,
    })
}

fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(".portcullis-acme-probe");
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(v: Value) -> Result<Settings, Vec<ConfigError>> {
        parse(&v, &BuildContext::default())
    }

    #[test]
    fn directory_is_appended_as_kong_does() {
        assert_eq!(
            directory_url("https://ca.test/dir/directory"),
            "https://ca.test/dir/directory"
        );
        assert_eq!(
            directory_url("https://ca.test/acme/"),
            "https://ca.test/acme/directory"
        );
        assert_eq!(
            directory_url("https://ca.test:14000"),
            "https://ca.test:14000/directory"
        );
    }

    #[test]
    fn kong_defaults() {
        let s = build(json!({"account_email": "a@b.test", "tos_accepted": true})).unwrap();
        assert_eq!(s.directory_url, LETS_ENCRYPT);
        assert_eq!(s.cert_type, CertType::Rsa(4096));
        assert_eq!(s.renew_threshold, Duration::from_secs(14 * 86400));
        assert_eq!(s.fail_backoff, Duration::from_secs(300));
        assert!(matches!(s.storage, Storage::Shm));
        assert!(
            !s.allowed("a.test"),
            "no domains, no allow_any_domain: nothing allowed"
        );
    }

    #[test]
    fn domains_match_exactly_or_by_wildcard_suffix() {
        let s = build(
            json!({"account_email": "a@b.test", "api_uri": "https://ca.test",
            "domains": ["One.test", "*.two.test"]}),
        )
        .unwrap();
        assert!(s.allowed("one.test"));
        assert!(s.allowed("a.two.test"));
        assert!(s.allowed("a.b.two.test"));
        assert!(!s.allowed("two.test"));
        assert!(!s.allowed("other.test"));
        assert!(!s.allowed("127.0.0.1"));
    }

    #[test]
    fn refusals_name_the_field() {
        let e = build(json!({"account_email": "a@b.test"})).unwrap_err();
        assert_eq!(e[0].path, "tos_accepted");
        let e = build(
            json!({"account_email": "a@b.test", "api_uri": "https://ca.test",
            "storage": "kong"}),
        )
        .unwrap_err();
        assert_eq!(
            (e[0].path.as_str(), e[0].message.as_str()),
            ("storage", "\"kong\" storage can't be used with dbless mode")
        );
        let e = build(
            json!({"account_email": "a@b.test", "api_uri": "https://ca.test",
            "storage": "redis", "storage_config": {"redis": {"port": 6379}}}),
        )
        .unwrap_err();
        assert_eq!(e[0].path, "storage_config.redis.host");
        let e = build(json!({"api_uri": "https://ca.test", "cert_type": "dsa"})).unwrap_err();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["account_email", "cert_type"]);
        let e = build(
            json!({"account_email": "a@b.test", "api_uri": "https://ca.test",
            "api_ca_certificates": ["nope"]}),
        )
        .unwrap_err();
        assert_eq!(e[0].path, "api_ca_certificates[0]");
    }

    #[test]
    fn kong_redis_shape_is_accepted() {
        let s = build(
            json!({"account_email": "a@b.test", "api_uri": "https://ca.test",
            "storage": "redis", "storage_config": {"redis": {"host": "r.test", "port": 6380,
            "database": 2, "password": "pw", "ssl": false, "ssl_verify": false,
            "server_name": null, "extra_options": {"namespace": "gw1", "scan_count": 10}},
            "shm": {"shm_name": "kong"}, "kong": {}, "consul": {}, "vault": {}}}),
        )
        .unwrap();
        match s.storage {
            Storage::Redis(r) => {
                assert_eq!((r.host.as_str(), r.port, r.database), ("r.test", 6380, 2))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.namespace, "gw1");
    }
}
