//! hello-header: adds `X-Hello: <greeting>` to every request sent upstream.

use std::sync::Arc;

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, Plugin, PluginFactory, RequestCtx,
    RequestView,
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)] // a typo in the conf is a load error, never ignored
struct Config {
    greeting: String,
}

struct HelloHeader {
    greeting: String,
}

pub struct Factory;

impl PluginFactory for Factory {
    fn name(&self) -> &'static str {
        "hello-header"
    }

    fn build(
        &self,
        config: &serde_json::Value,
        _ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        if c.greeting.is_empty() {
            return Err(vec![ConfigError::new("greeting", "must not be empty")]);
        }
        Ok(Arc::new(HelloHeader {
            greeting: c.greeting,
        }))
    }
}

#[async_trait]
impl Plugin for HelloHeader {
    fn name(&self) -> &'static str {
        "hello-header"
    }

    fn priority(&self) -> i32 {
        10 // Kong's PRIORITY: higher runs first
    }

    async fn access(&self, _req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        ctx.set_upstream_header("x-hello", &self.greeting);
        Flow::Continue // or Flow::Respond(PluginResponse::message(403, "..."))
    }
}
