//! Kong 3.x's rate-limiting schema: the `redis` block and, as Kong 3.x still accepts them, the
//! 2.x flat `redis_*` names mapped onto it.

use std::time::Duration;

use portcullis_plugin_api::state::RedisConfig;
use portcullis_plugin_api::{parse_config, ConfigError};
use serde::Deserialize;
use serde_json::Value;

use crate::window::{Period, PERIODS};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisBlock {
    host: Option<String>,
    port: Option<u16>,
    timeout: Option<u64>,
    username: Option<String>,
    password: Option<String>,
    database: Option<i64>,
    ssl: Option<bool>,
    ssl_verify: Option<bool>,
    server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    second: Option<u64>,
    minute: Option<u64>,
    hour: Option<u64>,
    day: Option<u64>,
    month: Option<u64>,
    year: Option<u64>,
    limit_by: Option<String>,
    header_name: Option<String>,
    path: Option<String>,
    policy: Option<String>,
    fault_tolerant: Option<bool>,
    hide_client_headers: Option<bool>,
    error_code: Option<u16>,
    error_message: Option<String>,
    sync_rate: Option<f64>,
    redis: Option<RedisBlock>,
    redis_host: Option<String>,
    redis_port: Option<u16>,
    redis_password: Option<String>,
    redis_username: Option<String>,
    redis_database: Option<i64>,
    redis_timeout: Option<u64>,
    redis_ssl: Option<bool>,
    redis_ssl_verify: Option<bool>,
    redis_server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Service,
    Header(http::HeaderName),
    Path(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Local,
    Redis {
        config: RedisConfig,
        /// `None`: every request goes to Redis (`sync_rate: -1`).
        sync_every: Option<Duration>,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The configured limits, shortest period first.
    pub limits: Vec<(Period, u64)>,
    pub limit_by: LimitBy,
    pub policy: Policy,
    pub fault_tolerant: bool,
    pub hide_client_headers: bool,
    pub error_code: u16,
    pub error_message: String,
}

/// A 2.x flat field and its `redis.*` counterpart: either may be set, not both differently.
fn merge<T: PartialEq + Clone>(
    flat: Option<T>,
    flat_name: &str,
    block: Option<T>,
    block_name: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match (flat, block) {
        (Some(f), Some(b)) if f != b => {
            errors.push(ConfigError::new(
                flat_name,
                format!("conflicts with redis.{block_name}; set one of them"),
            ));
            Some(b)
        }
        (f, b) => b.or(f),
    }
}

pub fn parse(value: &Value) -> Result<Config, Vec<ConfigError>> {
    let raw: Raw = parse_config(value).map_err(|e| vec![e])?;
    let mut errors = Vec::new();

    let values = [
        raw.second, raw.minute, raw.hour, raw.day, raw.month, raw.year,
    ];
    let mut limits = Vec::new();
    for (period, v) in PERIODS.iter().zip(values) {
        if let Some(v) = v {
            if v == 0 {
                errors.push(ConfigError::new(period.name, "must be greater than 0"));
            }
            limits.push((*period, v));
        }
    }
    if limits.is_empty() {
        errors.push(ConfigError::new(
            "",
            "at least one of these fields must be non-empty: 'second', 'minute', 'hour', 'day', 'month', 'year'",
        ));
    }
    // Kong's check: a longer period may not allow fewer requests than a shorter one.
    for (i, (lower, v1)) in limits.iter().enumerate() {
        for (upper, v2) in &limits[i + 1..] {
            if v2 < v1 {
                errors.push(ConfigError::new(
                    upper.name,
                    format!(
                        "The limit for {}({v2}.0) cannot be lower than the limit for {}({v1}.0)",
                        upper.name, lower.name
                    ),
                ));
            }
        }
    }

    let limit_by = match raw.limit_by.as_deref().unwrap_or("consumer") {
        "consumer" => Some(LimitBy::Consumer),
        "credential" => Some(LimitBy::Credential),
        "ip" => Some(LimitBy::Ip),
        "service" => Some(LimitBy::Service),
        "header" => match raw.header_name.as_deref() {
            None | Some("") => {
                errors.push(ConfigError::new(
                    "header_name",
                    "required field missing (limit_by is header)",
                ));
                None
            }
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(LimitBy::Header(n)),
                Err(_) => {
                    errors.push(ConfigError::new("header_name", "not a valid header name"));
                    None
                }
            },
        },
        "path" => match raw.path.as_deref() {
            Some(p) if p.starts_with('/') => Some(LimitBy::Path(p.to_string())),
            Some(_) => {
                errors.push(ConfigError::new("path", "should start with: /"));
                None
            }
            None => {
                errors.push(ConfigError::new(
                    "path",
                    "required field missing (limit_by is path)",
                ));
                None
            }
        },
        "consumer-group" => {
            errors.push(ConfigError::new(
                "limit_by",
                "consumer-group needs Kong Enterprise's consumer groups, which Portcullis does not have",
            ));
            None
        }
        other => {
            errors.push(ConfigError::new(
                "limit_by",
                format!(
                    "expected one of: consumer, credential, ip, service, header, path (got {other:?})"
                ),
            ));
            None
        }
    };

    let block = raw.redis.unwrap_or_default();
    let host = merge(
        raw.redis_host,
        "redis_host",
        block.host,
        "host",
        &mut errors,
    );
    let port = merge(
        raw.redis_port,
        "redis_port",
        block.port,
        "port",
        &mut errors,
    );
    let timeout = merge(
        raw.redis_timeout,
        "redis_timeout",
        block.timeout,
        "timeout",
        &mut errors,
    );
    let username = merge(
        raw.redis_username,
        "redis_username",
        block.username,
        "username",
        &mut errors,
    );
    let password = merge(
        raw.redis_password,
        "redis_password",
        block.password,
        "password",
        &mut errors,
    );
    let database = merge(
        raw.redis_database,
        "redis_database",
        block.database,
        "database",
        &mut errors,
    );
    let ssl = merge(raw.redis_ssl, "redis_ssl", block.ssl, "ssl", &mut errors);
    let ssl_verify = merge(
        raw.redis_ssl_verify,
        "redis_ssl_verify",
        block.ssl_verify,
        "ssl_verify",
        &mut errors,
    );
    // Accepted for compatibility; the TLS name checked is `host` (see README).
    let _server_name = merge(
        raw.redis_server_name,
        "redis_server_name",
        block.server_name,
        "server_name",
        &mut errors,
    );

    let sync_rate = raw.sync_rate.unwrap_or(-1.0);
    let policy = match raw.policy.as_deref().unwrap_or("local") {
        "local" => {
            if sync_rate != -1.0 {
                errors.push(ConfigError::new(
                    "sync_rate",
                    "only the redis policy syncs counters; use -1 with the local policy",
                ));
            }
            Some(Policy::Local)
        }
        "redis" => {
            let host = host.filter(|h| !h.is_empty());
            if host.is_none() {
                errors.push(ConfigError::new(
                    "redis.host",
                    "required field missing (policy is redis)",
                ));
            }
            if database.is_some_and(|d| d < 0) {
                errors.push(ConfigError::new("redis.database", "must be 0 or more"));
            }
            let sync_every = if sync_rate == -1.0 {
                None
            } else if sync_rate.is_finite() && sync_rate >= 0.02 {
                Some(Duration::from_secs_f64(sync_rate))
            } else {
                errors.push(ConfigError::new(
                    "sync_rate",
                    "must be -1 (every request goes to Redis) or at least 0.02 seconds",
                ));
                None
            };
            let timeout_ms = timeout.unwrap_or(2000);
            if timeout_ms == 0 {
                errors.push(ConfigError::new("redis.timeout", "must be greater than 0"));
            }
            host.map(|host| Policy::Redis {
                config: RedisConfig {
                    host,
                    port: port.unwrap_or(6379),
                    database: database.unwrap_or(0),
                    username,
                    password,
                    ssl: ssl.unwrap_or(false),
                    ssl_verify: ssl_verify.unwrap_or(false),
                    timeout: Duration::from_millis(timeout_ms.max(1)),
                },
                sync_every,
            })
        }
        "cluster" => {
            errors.push(ConfigError::new(
                "policy",
                "the cluster policy keeps counters in Kong's database, which Portcullis does not have; use local (one gateway) or redis (shared by replicas)",
            ));
            None
        }
        other => {
            errors.push(ConfigError::new(
                "policy",
                format!("expected one of: local, redis (got {other:?})"),
            ));
            None
        }
    };

    let error_code = raw.error_code.unwrap_or(429);
    if !(400..=599).contains(&error_code) {
        errors.push(ConfigError::new(
            "error_code",
            "must be an error status (400 to 599)",
        ));
    }

    match (limit_by, policy) {
        (Some(limit_by), Some(policy)) if errors.is_empty() => Ok(Config {
            limits,
            limit_by,
            policy,
            fault_tolerant: raw.fault_tolerant.unwrap_or(true),
            hide_client_headers: raw.hide_client_headers.unwrap_or(false),
            error_code,
            error_message: raw
                .error_message
                .unwrap_or_else(|| "API rate limit exceeded".to_string()),
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> Vec<ConfigError> {
        parse(&v).unwrap_err()
    }

    #[test]
    fn defaults_are_kongs() {
        let c = parse(&json!({"minute": 5})).unwrap();
        assert_eq!(c.limit_by, LimitBy::Consumer);
        assert_eq!(c.policy, Policy::Local);
        assert!(c.fault_tolerant);
        assert!(!c.hide_client_headers);
        assert_eq!(c.error_code, 429);
        assert_eq!(c.error_message, "API rate limit exceeded");
        assert_eq!(c.limits.len(), 1);
        assert_eq!(c.limits[0].0.name, "minute");
    }

    #[test]
    fn flat_redis_names_map_onto_the_block() {
        let c = parse(&json!({
            "second": 1, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6380,
            "redis_password": "pw", "redis_username": "u", "redis_database": 3,
            "redis_timeout": 500, "redis_ssl": true, "redis_ssl_verify": true,
            "redis_server_name": "r.test"
        }))
        .unwrap();
        let Policy::Redis { config, sync_every } = c.policy else {
            panic!("not redis")
        };
        assert_eq!(sync_every, None);
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 6380);
        assert_eq!(config.password.as_deref(), Some("pw"));
        assert_eq!(config.username.as_deref(), Some("u"));
        assert_eq!(config.database, 3);
        assert_eq!(config.timeout, Duration::from_millis(500));
        assert!(config.ssl && config.ssl_verify);

        let block = parse(&json!({
            "second": 1, "policy": "redis", "sync_rate": 0.5,
            "redis": {"host": "r", "port": 6380, "database": 1, "timeout": 100}
        }))
        .unwrap();
        let Policy::Redis { config, sync_every } = block.policy else {
            panic!("not redis")
        };
        assert_eq!((config.host.as_str(), config.port), ("r", 6380));
        assert_eq!(sync_every, Some(Duration::from_millis(500)));
    }

    #[test]
    fn invalid_configs_are_refused_with_the_field() {
        let e = err(json!({"policy": "cluster", "minute": 1}));
        assert_eq!(e[0].path, "policy");
        assert!(e[0].message.contains("database"), "{}", e[0].message);
        let e = err(json!({}));
        assert!(e[0].message.contains("at least one"));
        let e = err(json!({"second": 10, "minute": 5}));
        assert_eq!(e[0].path, "minute");
        assert_eq!(
            e[0].message,
            "The limit for minute(5.0) cannot be lower than the limit for second(10.0)"
        );
        let e = err(json!({"minute": 1, "limit_by": "header"}));
        assert_eq!(e[0].path, "header_name");
        let e = err(json!({"minute": 1, "limit_by": "path"}));
        assert_eq!(e[0].path, "path");
        let e = err(json!({"minute": 1, "policy": "redis"}));
        assert_eq!(e[0].path, "redis.host");
        let e =
            err(json!({"minute": 1, "policy": "redis", "redis_host": "a", "redis": {"host": "b"}}));
        assert_eq!(e[0].path, "redis_host");
        let e = err(json!({"minute": 1, "sync_rate": 1}));
        assert_eq!(e[0].path, "sync_rate");
        let e = err(json!({"minute": 1, "redis": {"hots": "x"}}));
        assert!(e[0].message.contains("hots"), "{}", e[0].message);
    }
}
