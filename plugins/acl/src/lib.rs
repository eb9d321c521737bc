//! acl: allows or denies a request by the groups of its consumer (Kong's acl; SPEC §4).
//!
//! Groups come from the consumer's `acls`, or from the authenticated groups an authentication
//! plugin set without a consumer (mtls-auth's `skip_consumer_lookup`). As in Kong 3.x, the
//! authenticated groups win for an anonymous consumer (one without a credential) and whenever
//! `always_use_authenticated_groups` is on; otherwise the consumer's own groups decide.

// Tests may unwrap: a panic there is a failed test, not a crashed gateway.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashSet;
use std::sync::Arc;

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, Plugin, PluginFactory,
    PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;

pub const NAME: &str = "acl";
/// Kong's PRIORITY for acl: after every authentication plugin.
pub const PRIORITY: i32 = 950;

const MSG_UNAUTHORIZED: &str = "Unauthorized";
const MSG_FORBIDDEN: &str = "You cannot consume this service";

/// Builds acl instances; register it with the gateway's plugin registry.
pub struct Factory;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    allow: Option<Vec<String>>,
    #[serde(default)]
    deny: Option<Vec<String>>,
    #[serde(default)]
    hide_groups_header: bool,
    #[serde(default)]
    always_use_authenticated_groups: bool,
    /// Kong's consumer groups are not an entity here; accepted when false so Kong exports load.
    #[serde(default)]
    include_consumer_groups: bool,
}

#[derive(Debug)]
enum Rule {
    Allow(HashSet<String>),
    Deny(HashSet<String>),
}

/// One configured acl instance.
#[derive(Debug)]
pub struct Acl {
    rule: Rule,
    hide_groups_header: bool,
    always_use_authenticated_groups: bool,
}

fn groups(field: &str, list: &[String], errors: &mut Vec<ConfigError>) -> HashSet<String> {
    for (i, g) in list.iter().enumerate() {
        if g.trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{field}[{i}]"),
                "group names must not be empty",
            ));
        }
    }
    list.iter().cloned().collect()
}

impl Acl {
    /// Parses and validates `config`; every problem is reported with its field path.
    pub fn from_config(config: &serde_json::Value) -> Result<Acl, Vec<ConfigError>> {
        let raw: RawConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        // As in Kong, an empty list counts as not set.
        let allow = raw.allow.filter(|l| !l.is_empty());
        let deny = raw.deny.filter(|l| !l.is_empty());
        let rule = match (allow, deny) {
            (Some(a), None) => Some(Rule::Allow(groups("allow", &a, &mut errors))),
            (None, Some(d)) => Some(Rule::Deny(groups("deny", &d, &mut errors))),
            (Some(_), Some(_)) => {
                errors.push(ConfigError::new(
                    "deny",
                    "set either allow or deny, not both",
                ));
                None
            }
            (None, None) => {
                errors.push(ConfigError::new(
                    "",
                    "one of allow or deny must list at least one group",
                ));
                None
            }
        };
        if raw.include_consumer_groups {
            errors.push(ConfigError::new(
                "include_consumer_groups",
                "consumer groups are not supported; list ACL groups (consumers[].acls) instead",
            ));
        }
        match rule {
            Some(rule) if errors.is_empty() => Ok(Acl {
                rule,
                hide_groups_header: raw.hide_groups_header,
                always_use_authenticated_groups: raw.always_use_authenticated_groups,
            }),
            _ => Err(errors),
        }
    }

    fn blocked(&self, groups: &[String]) -> bool {
        match &self.rule {
            Rule::Allow(allowed) => !groups.iter().any(|g| allowed.contains(g)),
            Rule::Deny(denied) => groups.iter().any(|g| denied.contains(g)),
        }
    }
}

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        Ok(Arc::new(Acl::from_config(config)?))
    }
}

#[async_trait]
impl Plugin for Acl {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    async fn access(&self, _req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        // Which groups decide, and which header reports them upstream.
        let (groups, header) = match &ctx.consumer {
            None => match &ctx.authenticated_groups {
                Some(g) => (g.clone(), "x-authenticated-groups"),
                None => {
                    ctx.auth_failure = Some((NAME, "no_consumer"));
                    return Flow::Respond(PluginResponse::message(401, MSG_UNAUTHORIZED));
                }
            },
            Some(consumer) => {
                let prefer_authenticated = ctx.anonymous
                    || ctx.credential_identifier.is_none()
                    || self.always_use_authenticated_groups;
                match (&ctx.authenticated_groups, prefer_authenticated) {
                    (Some(g), true) => (g.clone(), "x-authenticated-groups"),
                    _ => (consumer.groups.clone(), "x-consumer-groups"),
                }
            }
        };
        if self.blocked(&groups) {
            ctx.auth_failure = Some((NAME, "forbidden"));
            return Flow::Respond(PluginResponse::message(403, MSG_FORBIDDEN));
        }
        if !self.hide_groups_header && !groups.is_empty() {
            ctx.set_upstream_header(header, &portcullis_plugin_api::header_list(&groups));
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_plugin_api::Consumer;
    use serde_json::json;

    fn acl(config: serde_json::Value) -> Arc<dyn Plugin> {
        Factory
            .build(&config, &BuildContext::default())
            .unwrap_or_else(|e| panic!("{config} rejected: {e:?}"))
    }

    fn errors(config: serde_json::Value) -> Vec<String> {
        match Factory.build(&config, &BuildContext::default()) {
            Ok(_) => panic!("{config} accepted"),
            Err(e) => e.into_iter().map(|e| e.path).collect(),
        }
    }

    fn consumer(groups: &[&str]) -> Arc<Consumer> {
        Arc::new(Consumer {
            id: "c-1".into(),
            username: Some("alice".into()),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        })
    }

    /// A consumer authenticated with a credential (as mtls-auth leaves it).
    fn authenticated(groups: &[&str]) -> RequestCtx {
        RequestCtx {
            consumer: Some(consumer(groups)),
            credential_identifier: Some("alice@example.com".into()),
            ..Default::default()
        }
    }

    async fn run(plugin: &dyn Plugin, ctx: &mut RequestCtx) -> Flow {
        let method = http::Method::GET;
        let uri: http::Uri = "/".parse().unwrap();
        let headers = http::HeaderMap::new();
        let req = RequestView {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        plugin.access(&req, ctx).await
    }

    fn header(ctx: &RequestCtx, name: &str) -> Option<String> {
        ctx.upstream_headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.to_str().unwrap().to_string())
    }

    #[track_caller]
    fn assert_status(flow: &Flow, status: u16, message: &str) {
        match flow {
            Flow::Respond(r) => {
                assert_eq!(r.status, status);
                assert_eq!(r.message.as_deref(), Some(message));
            }
            Flow::Continue => panic!("expected {status}, request continued"),
        }
    }

    #[tokio::test]
    async fn allow_list() {
        let p = acl(json!({"allow": ["admins", "ops"]}));
        let mut ctx = authenticated(&["users", "ops"]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-consumer-groups").as_deref(),
            Some("users, ops")
        );
        assert_eq!(header(&ctx, "x-authenticated-groups"), None);
        assert!(ctx.auth_failure.is_none());

        let mut ctx = authenticated(&["users"]);
        assert_status(
            &run(&*p, &mut ctx).await,
            403,
            "You cannot consume this service",
        );
        assert_eq!(ctx.auth_failure, Some(("acl", "forbidden")));
        assert!(ctx.upstream_headers.is_empty());

        let mut ctx = authenticated(&[]);
        assert_status(
            &run(&*p, &mut ctx).await,
            403,
            "You cannot consume this service",
        );
    }

    #[tokio::test]
    async fn deny_list() {
        let p = acl(json!({"deny": ["banned"]}));
        let mut ctx = authenticated(&["users"]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(header(&ctx, "x-consumer-groups").as_deref(), Some("users"));
        let mut ctx = authenticated(&["users", "banned"]);
        assert_status(
            &run(&*p, &mut ctx).await,
            403,
            "You cannot consume this service",
        );
        // No groups at all: nothing denies, no header.
        let mut ctx = authenticated(&[]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert!(ctx.upstream_headers.is_empty());
    }

    #[tokio::test]
    async fn no_consumer_and_no_groups_is_401() {
        let p = acl(json!({"deny": ["banned"]}));
        let mut ctx = RequestCtx::default();
        assert_status(&run(&*p, &mut ctx).await, 401, "Unauthorized");
        assert_eq!(ctx.auth_failure, Some(("acl", "no_consumer")));
    }

    #[tokio::test]
    async fn a_group_name_with_a_comma_is_one_item_of_the_header() {
        let p = acl(json!({"allow": ["admins, ops"]}));
        let mut ctx = RequestCtx {
            authenticated_groups: Some(vec!["admins, ops".into(), "dev".into()]),
            ..Default::default()
        };
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-authenticated-groups").as_deref(),
            Some(r#""admins, ops", dev"#)
        );
    }

    #[tokio::test]
    async fn authenticated_groups_without_consumer() {
        let p = acl(json!({"allow": ["bob"]}));
        let mut ctx = RequestCtx {
            authenticated_groups: Some(vec!["bob".into()]),
            ..Default::default()
        };
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-authenticated-groups").as_deref(),
            Some("bob")
        );
        assert_eq!(header(&ctx, "x-consumer-groups"), None);

        let mut ctx = RequestCtx {
            authenticated_groups: Some(vec!["carol".into()]),
            ..Default::default()
        };
        assert_status(
            &run(&*p, &mut ctx).await,
            403,
            "You cannot consume this service",
        );
        // mtls-auth without a CN hands an empty group list: Kong answers 403, not 401.
        let mut ctx = RequestCtx {
            authenticated_groups: Some(Vec::new()),
            ..Default::default()
        };
        assert_status(
            &run(&*p, &mut ctx).await,
            403,
            "You cannot consume this service",
        );
    }

    #[tokio::test]
    async fn which_groups_decide() {
        let p = acl(json!({"allow": ["from-cert"]}));
        // A consumer with a credential: its own groups, authenticated groups ignored.
        let mut ctx = authenticated(&["own"]);
        ctx.authenticated_groups = Some(vec!["from-cert".into()]);
        assert_status(
            &run(&*p, &mut ctx).await,
            403,
            "You cannot consume this service",
        );

        // Anonymous consumer: authenticated groups override.
        let mut ctx = authenticated(&["own"]);
        ctx.anonymous = true;
        ctx.credential_identifier = None;
        ctx.authenticated_groups = Some(vec!["from-cert".into()]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-authenticated-groups").as_deref(),
            Some("from-cert")
        );

        // Anonymous without authenticated groups: the consumer's groups.
        let mut ctx = authenticated(&["from-cert"]);
        ctx.anonymous = true;
        ctx.credential_identifier = None;
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-consumer-groups").as_deref(),
            Some("from-cert")
        );

        // always_use_authenticated_groups: authenticated groups even with a credential...
        let p = acl(json!({"allow": ["from-cert"], "always_use_authenticated_groups": true}));
        let mut ctx = authenticated(&["own"]);
        ctx.authenticated_groups = Some(vec!["from-cert".into()]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-authenticated-groups").as_deref(),
            Some("from-cert")
        );
        // ...falling back to the consumer's groups when there are none.
        let mut ctx = authenticated(&["from-cert"]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert_eq!(
            header(&ctx, "x-consumer-groups").as_deref(),
            Some("from-cert")
        );
    }

    #[tokio::test]
    async fn hide_groups_header() {
        let p = acl(json!({"allow": ["users"], "hide_groups_header": true}));
        let mut ctx = authenticated(&["users"]);
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert!(ctx.upstream_headers.is_empty());
        let mut ctx = RequestCtx {
            authenticated_groups: Some(vec!["users".into()]),
            ..Default::default()
        };
        assert!(matches!(run(&*p, &mut ctx).await, Flow::Continue));
        assert!(ctx.upstream_headers.is_empty());
    }

    #[test]
    fn factory_identity() {
        assert_eq!(Factory.name(), "acl");
        let p = acl(json!({"allow": ["a"]}));
        assert_eq!((p.name(), p.priority()), ("acl", 950));
        assert!(p.client_cert_request().is_none());
    }

    #[test]
    fn config_errors_have_paths() {
        assert_eq!(errors(json!({"allow": ["a"], "deny": ["b"]})), ["deny"]);
        assert_eq!(errors(json!({})), [""]);
        assert_eq!(errors(json!({"allow": [], "deny": []})), [""]);
        assert_eq!(errors(json!({"allow": ["a", ""]})), ["allow[1]"]);
        assert_eq!(errors(json!({"allow": ["a", 3]})), ["allow[1]"]);
        assert_eq!(
            errors(json!({"allow": ["a"], "hide_group_header": true})),
            ["hide_group_header"]
        );
        assert_eq!(
            errors(json!({"allow": ["a"], "include_consumer_groups": true})),
            ["include_consumer_groups"]
        );
        // Kong exports: the unused list null or empty, defaults spelled out.
        acl(
            json!({"allow": ["a"], "deny": null, "hide_groups_header": false,
                   "always_use_authenticated_groups": false, "include_consumer_groups": false}),
        );
        acl(json!({"allow": [], "deny": ["b"]}));
    }
}
