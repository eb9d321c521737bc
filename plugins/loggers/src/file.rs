//! file-log: one JSON record per line appended to `path`.

use crate::fields::Record;
use crate::queue::{QueueConfig, Shipper, Sink};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, LogEntry, Phases, Plugin, PluginFactory,
    RequestCtx,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub const NAME: &str = "file-log";
/// Kong's PRIORITY for file-log.
pub const PRIORITY: i32 = 9;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
    #[serde(default)]
    reopen: bool,
    /// Lua: accepted so Kong files load, never run (a located warning says so).
    #[serde(default)]
    custom_fields_by_lua: Option<serde::de::IgnoredAny>,
    /// Portcullis's stand-in for `custom_fields_by_lua`: record fields set from values and
    /// templates (see `fields.rs`).
    #[serde(default)]
    custom_fields: Option<serde_json::Value>,
}

struct FileSink {
    path: PathBuf,
    reopen: bool,
    file: tokio::sync::Mutex<Option<tokio::fs::File>>,
}

impl Sink for FileSink {
    type Item = Vec<u8>;

    async fn send(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(batch.iter().map(|l| l.len() + 1).sum());
        for line in batch {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        let mut slot = self.file.lock().await;
        if self.reopen || slot.is_none() {
            // `reopen`: a new descriptor per write, so a file logrotate renamed away is
            // recreated at `path` (Kong's meaning).
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            *slot = Some(f);
        }
        let Some(f) = slot.as_mut() else {
            return Err("no file".into());
        };
        // One write per batch: appends from several instances never interleave within a line.
        let r = f.write_all(&buf).await;
        if r.is_err() || self.reopen {
            *slot = None;
        }
        r.map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

struct FileLog {
    shipper: Arc<Shipper<FileSink>>,
    record: Record,
}

pub struct FileLogFactory;

impl PluginFactory for FileLogFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: Config = parse_config(config).map_err(|e| vec![e])?;
        if c.path.is_empty() || c.path.contains(['*', '&', '%', '\\', '`']) {
            return Err(vec![ConfigError::new(
                "path",
                "not a valid filename (Kong's rule: no *, &, %, \\ or `)",
            )]);
        }
        crate::warn_lua(ctx, c.custom_fields_by_lua);
        let record = Record::from_config(c.custom_fields.as_ref())?;
        let sink = FileSink {
            path: PathBuf::from(&c.path),
            reopen: c.reopen,
            file: tokio::sync::Mutex::new(None),
        };
        // Kong's file-log writes every entry as it comes; a batch of what is queued is the same
        // file content with fewer writes.
        let q = QueueConfig {
            max_batch_size: 1000,
            max_coalescing_delay: 0.0,
            ..QueueConfig::default()
        };
        Ok(Arc::new(FileLog {
            shipper: Shipper::new(NAME, q, sink),
            record,
        }))
    }
}

#[async_trait]
impl Plugin for FileLog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn priority(&self) -> i32 {
        PRIORITY
    }

    fn phases(&self) -> Phases {
        self.record.phases()
    }

    fn log(&self, entry: &LogEntry<'_>, ctx: &RequestCtx) {
        self.shipper.queue.push(self.record.bytes(entry, ctx));
    }

    async fn flush(&self) {
        self.shipper.flush().await;
    }
}
