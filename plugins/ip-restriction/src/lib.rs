//! ip-restriction: allows or denies clients by address (Kong's ip-restriction). `deny` is checked
//! first, then `allow` (when set, only its ranges pass). The address is the client's as the
//! gateway established it (`RequestCtx::client_ip`): the peer, or the client a trusted proxy
//! reported in `X-Forwarded-For` (see `server.trusted_proxies`).
//!
//! ```yaml
//! plugins:
//!   - name: ip-restriction
//!     route: admin
//!     config:
//!       allow: [10.0.0.0/8, "2001:db8::/32"]
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, Plugin, PluginFactory,
    PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;
use serde_json::Value;

pub const NAME: &str = "ip-restriction";
/// Kong's PRIORITY: before authentication, so refused addresses cost no credential check.
pub const PRIORITY: i32 = 990;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    message: Option<String>,
}

/// An address range, v4 and v6 kept apart (a v4 range never matches a v6 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Net {
    /// `10.0.0.1`, `10.0.0.0/8`, `::1`, `2001:db8::/32`.
    fn parse(s: &str) -> Option<Net> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().ok()?)),
            None => (s, None),
        };
        match addr.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => {
                let bits = u32::from(prefix.unwrap_or(32));
                if bits > 32 {
                    return None;
                }
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                Some(Net::V4 {
                    net: u32::from(a) & mask,
                    mask,
                })
            }
            IpAddr::V6(a) => {
                let bits = u32::from(prefix.unwrap_or(128));
                if bits > 128 {
                    return None;
                }
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                Some(Net::V6 {
                    net: u128::from(a) & mask,
                    mask,
                })
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // A v4-mapped v6 address (`::ffff:10.0.0.1`, from a dual-stack listener) is the v4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self, ip) {
            (Net::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == *net,
            (Net::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == *net,
            _ => false,
        }
    }
}

#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<Net>,
    deny: Vec<Net>,
    status: u16,
    message: String,
}

fn parse_list(field: &str, list: Option<Vec<String>>, errors: &mut Vec<ConfigError>) -> Vec<Net> {
    let mut nets = Vec::new();
    for (i, s) in list.unwrap_or_default().iter().enumerate() {
        match Net::parse(s.trim()) {
            Some(n) => nets.push(n),
            None => errors.push(ConfigError::new(
                format!("{field}[{i}]"),
                format!("invalid ip or cidr range: '{s}'"),
            )),
        }
    }
    nets
}

impl IpRestriction {
    pub fn from_config(value: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(value).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let allow = parse_list("allow", c.allow, &mut errors);
        let deny = parse_list("deny", c.deny, &mut errors);
        if allow.is_empty() && deny.is_empty() && errors.is_empty() {
            errors.push(ConfigError::new(
                "",
                "at least one of these fields must be non-empty: 'allow', 'deny'",
            ));
        }
        let status = c.status.unwrap_or(403);
        if !(100..=599).contains(&status) {
            errors.push(ConfigError::new("status", "must be between 100 and 599"));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(IpRestriction {
            allow,
            deny,
            status,
            message: c
                .message
                .unwrap_or_else(|| "Your IP address is not allowed".into()),
        })
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }
}

#[async_trait]
impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    async fn access(&self, _req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let Some(ip) = ctx.client_ip else {
            // Kong's answer on a unix socket, where there is no address to check.
            return Flow::Respond(PluginResponse::message(
                403,
                "Cannot identify the client IP address, unix domain sockets are not supported.",
            ));
        };
        if self.allowed(ip) {
            Flow::Continue
        } else {
            Flow::Respond(PluginResponse::message(self.status, self.message.clone()))
        }
    }
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &Value,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(IpRestriction::from_config(config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_then_allow_restricts() {
        let p = IpRestriction::from_config(&json!({
            "allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"],
            "deny": ["10.1.0.0/16", "2001:db8:dead::/48"]
        }))
        .unwrap();
        assert!(p.allowed(ip("10.2.3.4")));
        assert!(!p.allowed(ip("10.1.3.4")));
        assert!(p.allowed(ip("192.0.2.1")));
        assert!(!p.allowed(ip("192.0.2.2")));
        assert!(p.allowed(ip("2001:db8::1")));
        assert!(!p.allowed(ip("2001:db8:dead::1")));
        assert!(!p.allowed(ip("::1")));
        assert!(
            p.allowed(ip("::ffff:10.2.3.4")),
            "v4-mapped is the v4 client"
        );
    }

    #[test]
    fn deny_only_lets_others_through() {
        let p = IpRestriction::from_config(&json!({"deny": ["::1", "0.0.0.0/0"]})).unwrap();
        assert!(!p.allowed(ip("::1")));
        assert!(!p.allowed(ip("203.0.113.9")));
        assert!(p.allowed(ip("::2")));
        assert_eq!(p.message, "Your IP address is not allowed");
        assert_eq!(p.status, 403);
    }

    #[test]
    fn bad_ranges_name_their_entry() {
        let e = IpRestriction::from_config(&json!({"allow": ["10.0.0.1", "10.0.0.0/33", "x"]}))
            .unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].path, "allow[1]");
        assert_eq!(e[0].message, "invalid ip or cidr range: '10.0.0.0/33'");
        assert_eq!(e[1].path, "allow[2]");
        let e = IpRestriction::from_config(&json!({})).unwrap_err();
        assert!(e[0].message.contains("at least one"));
    }
}
