//! request-size-limiting: refuses request bodies larger than `allowed_payload_size` (Kong's
//! request-size-limiting). A declared `Content-Length` is checked before anything is proxied;
//! a body without one (chunked) is counted as it streams upstream and cut off with the same
//! answer once it passes the limit, so it is never buffered whole.
//!
//! ```yaml
//! plugins:
//!   - name: request-size-limiting
//!     route: upload
//!     config:
//!       allowed_payload_size: 10
//!       size_unit: megabytes
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;

use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, Flow, Phases, Plugin, PluginFactory,
    PluginResponse, RequestCtx, RequestView,
};
use serde::Deserialize;
use serde_json::Value;

pub const NAME: &str = "request-size-limiting";
/// Kong's PRIORITY: early, before authentication reads anything of the body.
pub const PRIORITY: i32 = 951;

const TOO_LARGE: &str = "Request size limit exceeded";
const LENGTH_REQUIRED: &str = "A valid Content-Length header is required";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_size")]
    allowed_payload_size: u64,
    #[serde(default = "default_unit")]
    size_unit: String,
    #[serde(default)]
    require_content_length: bool,
}

fn default_size() -> u64 {
    128
}

fn default_unit() -> String {
    "megabytes".into()
}

#[derive(Debug)]
pub struct RequestSizeLimiting {
    allowed_bytes: u64,
    require_content_length: bool,
}

/// Body bytes seen so far on a request without a usable Content-Length.
#[derive(Clone, Copy)]
struct Streamed(u64);

impl RequestSizeLimiting {
    pub fn from_config(value: &Value) -> Result<Self, Vec<ConfigError>> {
        let c: Config = parse_config(value).map_err(|e| vec![e])?;
        let unit: u64 = match c.size_unit.as_str() {
            "megabytes" => 1 << 20,
            "kilobytes" => 1 << 10,
            "bytes" => 1,
            other => {
                return Err(vec![ConfigError::new(
                    "size_unit",
                    format!("expected one of: megabytes, kilobytes, bytes (got {other:?})"),
                )])
            }
        };
        let allowed_bytes = c
            .allowed_payload_size
            .checked_mul(unit)
            .ok_or_else(|| vec![ConfigError::new("allowed_payload_size", "is too large")])?;
        Ok(RequestSizeLimiting {
            allowed_bytes,
            require_content_length: c.require_content_length,
        })
    }

    /// Kong answers 417 instead of 413 to a client waiting for `100 Continue`, so it does not
    /// send the body at all.
    fn too_large(expects_continue: bool) -> PluginResponse {
        PluginResponse::message(if expects_continue { 417 } else { 413 }, TOO_LARGE)
    }
}

#[async_trait]
impl Plugin for RequestSizeLimiting {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS | Phases::REQUEST_BODY
    }

    async fn access(&self, req: &RequestView<'_>, ctx: &mut RequestCtx) -> Flow {
        let declared = req.header("content-length");
        if self.require_content_length && declared.is_none() {
            return Flow::Respond(PluginResponse::message(411, LENGTH_REQUIRED));
        }
        match declared.and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(len) => {
                if len > self.allowed_bytes {
                    let expects = req
                        .header("expect")
                        .is_some_and(|e| e.trim().eq_ignore_ascii_case("100-continue"));
                    return Flow::Respond(Self::too_large(expects));
                }
            }
            // No usable length: count the body as it streams.
            None => {
                ctx.extensions.insert(Streamed(0));
            }
        }
        Flow::Continue
    }

    fn request_body(
        &self,
        chunk: &mut Option<portcullis_plugin_api::bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), PluginResponse> {
        let Some(seen) = ctx.extensions.get_mut::<Streamed>() else {
            return Ok(());
        };
        seen.0 = seen
            .0
            .saturating_add(chunk.as_ref().map_or(0, |c| c.len() as u64));
        if seen.0 > self.allowed_bytes {
            *chunk = None;
            return Err(Self::too_large(false));
        }
        Ok(())
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
        Ok(Arc::new(RequestSizeLimiting::from_config(config)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_plugin_api::bytes::Bytes;
    use serde_json::json;

    async fn access(p: &RequestSizeLimiting, headers: &[(&str, &str)]) -> (Flow, RequestCtx) {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let uri: http::Uri = "/".parse().unwrap();
        let view = RequestView {
            method: &http::Method::POST,
            uri: &uri,
            headers: &h,
        };
        let mut ctx = RequestCtx::default();
        let flow = p.access(&view, &mut ctx).await;
        (flow, ctx)
    }

    fn status(f: &Flow) -> Option<u16> {
        match f {
            Flow::Respond(r) => Some(r.status),
            Flow::Continue => None,
        }
    }

    #[tokio::test]
    async fn declared_length_is_checked_with_the_unit() {
        let p = RequestSizeLimiting::from_config(
            &json!({"allowed_payload_size": 1, "size_unit": "kilobytes"}),
        )
        .unwrap();
        assert_eq!(
            status(&access(&p, &[("content-length", "1024")]).await.0),
            None
        );
        let (f, _) = access(&p, &[("content-length", "1025")]).await;
        match f {
            Flow::Respond(r) => {
                assert_eq!(r.status, 413);
                assert_eq!(r.message.as_deref(), Some("Request size limit exceeded"));
            }
            Flow::Continue => panic!("passed"),
        }
        let (f, _) = access(
            &p,
            &[("content-length", "2000"), ("expect", "100-Continue")],
        )
        .await;
        assert_eq!(status(&f), Some(417));
    }

    #[tokio::test]
    async fn streamed_bodies_are_counted_chunk_by_chunk() {
        let p = RequestSizeLimiting::from_config(
            &json!({"allowed_payload_size": 10, "size_unit": "bytes"}),
        )
        .unwrap();
        let (f, mut ctx) = access(&p, &[("transfer-encoding", "chunked")]).await;
        assert_eq!(status(&f), None);
        let mut chunk = Some(Bytes::from_static(b"123456"));
        assert!(p.request_body(&mut chunk, false, &mut ctx).is_ok());
        let mut chunk = Some(Bytes::from_static(b"7890"));
        assert!(p.request_body(&mut chunk, false, &mut ctx).is_ok());
        let mut chunk = Some(Bytes::from_static(b"x"));
        let e = p.request_body(&mut chunk, true, &mut ctx).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(chunk.is_none(), "the chunk over the limit is not forwarded");
    }

    #[tokio::test]
    async fn content_length_can_be_required() {
        let p = RequestSizeLimiting::from_config(&json!({"require_content_length": true})).unwrap();
        let (f, _) = access(&p, &[]).await;
        match f {
            Flow::Respond(r) => {
                assert_eq!(r.status, 411);
                assert_eq!(
                    r.message.as_deref(),
                    Some("A valid Content-Length header is required")
                );
            }
            Flow::Continue => panic!("passed"),
        }
        assert_eq!(
            status(&access(&p, &[("content-length", "0")]).await.0),
            None
        );
    }

    #[test]
    fn unknown_units_are_refused() {
        let e = RequestSizeLimiting::from_config(&json!({"size_unit": "gigabytes"})).unwrap_err();
        assert_eq!(e[0].path, "size_unit");
        assert_eq!(
            RequestSizeLimiting::from_config(&json!({}))
                .unwrap()
                .allowed_bytes,
            128 << 20
        );
    }
}
