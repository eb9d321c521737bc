//! Kong's logging plugins: `file-log`, `http-log`, `tcp-log`, `udp-log`.
//!
//! Each writes Kong's log record ([`portcullis_plugin_api::serialize::kong_record`]) for every
//! request. The request path only serialises the record and pushes it on a bounded queue
//! ([`portcullis_plugin_api::background::Queue`], drop-oldest, counted); a task on the background
//! runtime sends batches, retries with backoff (http-log), and stops when its plugin instance is
//! retired. `flush` (reload, SIGTERM) sends what is queued.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod fields;
mod file;
mod http;
mod net;
pub mod queue;

pub use file::FileLogFactory;
pub use http::HttpLogFactory;
pub use net::{TcpLogFactory, UdpLogFactory};

/// Kong files carry `custom_fields_by_lua` on the log plugins; they load, and the operator is told
/// at the field's location that its Lua is not run.
fn warn_lua(ctx: &portcullis_plugin_api::BuildContext, lua: Option<serde::de::IgnoredAny>) {
    if lua.is_some() {
        ctx.warn(
            "custom_fields_by_lua",
            "custom_fields_by_lua is accepted and ignored: Portcullis runs no Lua (custom_fields sets record fields without it)",
        );
    }
}
