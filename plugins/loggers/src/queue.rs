//! Kong's `queue` settings (kong/tools/queue_schema.lua) and the sending loop they drive.

use portcullis_plugin_api::background::Queue;
use portcullis_plugin_api::ConfigError;
use serde::Deserialize;
use std::sync::{Arc, Weak};
use std::time::Duration;

fn d_batch() -> u64 {
    1
}
fn d_delay() -> f64 {
    1.0
}
fn d_entries() -> u64 {
    10_000
}
fn d_retry_time() -> f64 {
    60.0
}
fn d_initial() -> f64 {
    0.01
}
fn d_max_delay() -> f64 {
    60.0
}

/// `config.queue` of Kong 3.x logging plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "d_batch")]
    pub max_batch_size: u64,
    #[serde(default = "d_delay")]
    pub max_coalescing_delay: f64,
    #[serde(default = "d_entries")]
    pub max_entries: u64,
    /// Accepted; the queue is bounded by `max_entries`.
    #[serde(default)]
    #[allow(dead_code)]
    pub max_bytes: Option<u64>,
    #[serde(default = "d_retry_time")]
    pub max_retry_time: f64,
    #[serde(default = "d_initial")]
    pub initial_retry_delay: f64,
    #[serde(default = "d_max_delay")]
    pub max_retry_delay: f64,
    /// Kong 3.5+: 1 (one batch at a time) or -1 (no limit); batches are sent one at a time here.
    #[serde(default)]
    pub concurrency_limit: Option<i64>,
    /// Kong's queue name (shared queues between instances); each instance has its own here.
    #[serde(default)]
    #[allow(dead_code)]
    pub name: Option<String>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_batch_size: d_batch(),
            max_coalescing_delay: d_delay(),
            max_entries: d_entries(),
            max_bytes: None,
            max_retry_time: d_retry_time(),
            initial_retry_delay: d_initial(),
            max_retry_delay: d_max_delay(),
            concurrency_limit: None,
            name: None,
        }
    }
}

impl QueueConfig {
    pub fn check(&self, errors: &mut Vec<ConfigError>) {
        let range = |v: f64, lo: f64, hi: f64| v.is_finite() && v >= lo && v <= hi;
        if !(1..=1_000_000).contains(&self.max_batch_size) {
            errors.push(ConfigError::new(
                "queue.max_batch_size",
                "value should be between 1 and 1000000",
            ));
        }
        if !(1..=1_000_000).contains(&self.max_entries) {
            errors.push(ConfigError::new(
                "queue.max_entries",
                "value should be between 1 and 1000000",
            ));
        }
        if !range(self.max_coalescing_delay, 0.0, 3600.0) {
            errors.push(ConfigError::new(
                "queue.max_coalescing_delay",
                "value should be between 0 and 3600",
            ));
        }
        if !range(self.initial_retry_delay, 0.001, 1_000_000.0) {
            errors.push(ConfigError::new(
                "queue.initial_retry_delay",
                "value should be between 0.001 and 1000000",
            ));
        }
        if !range(self.max_retry_delay, 0.001, 1_000_000.0) {
            errors.push(ConfigError::new(
                "queue.max_retry_delay",
                "value should be between 0.001 and 1000000",
            ));
        }
        if !self.max_retry_time.is_finite()
            || (self.max_retry_time < 0.0 && self.max_retry_time != -1.0)
        {
            errors.push(ConfigError::new(
                "queue.max_retry_time",
                "must be -1 (no retries) or a number of seconds",
            ));
        }
        if let Some(c) = self.concurrency_limit {
            if c != 1 && c != -1 {
                errors.push(ConfigError::new(
                    "queue.concurrency_limit",
                    "expected one of: -1, 1",
                ));
            }
        }
    }
}

/// Something that sends one batch of entries (serialised records, spans).
pub trait Sink: Send + Sync + 'static {
    /// What the queue holds.
    type Item: Send + Sync + 'static;

    /// Borrows the batch: a failed one is sent again as it is, without a copy per attempt.
    fn send(
        &self,
        batch: &[Self::Item],
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// A queue of entries and the sink that drains it.
pub struct Shipper<S: Sink> {
    pub plugin: &'static str,
    pub queue: Queue<S::Item>,
    pub config: QueueConfig,
    pub sink: S,
}

impl<S: Sink> Shipper<S> {
    pub fn new(plugin: &'static str, config: QueueConfig, sink: S) -> Arc<Self> {
        let s = Arc::new(Shipper {
            plugin,
            queue: Queue::new(plugin, config.max_entries as usize),
            config,
            sink,
        });
        let weak = Arc::downgrade(&s);
        portcullis_plugin_api::background::spawn(run(weak));
        s
    }

    /// Sends one batch with Kong's retry policy: exponential backoff from
    /// `initial_retry_delay` up to `max_retry_delay`, giving up after `max_retry_time`.
    async fn deliver(&self, batch: Vec<S::Item>) {
        let started = tokio::time::Instant::now();
        let mut delay = self.config.initial_retry_delay;
        loop {
            match self.sink.send(&batch).await {
                Ok(()) => return,
                Err(e) => {
                    let give_up = self.config.max_retry_time < 0.0
                        || started.elapsed().as_secs_f64() + delay > self.config.max_retry_time;
                    if give_up {
                        tracing::error!(plugin = self.plugin, error = %e, entries = batch.len(), "could not send log entries; dropped");
                        return;
                    }
                    tracing::warn!(plugin = self.plugin, error = %e, retry_in_s = delay, "sending log entries failed; retrying");
                    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
                    delay = (delay * 2.0).min(self.config.max_retry_delay);
                }
            }
        }
    }

    /// Sends everything queued now (one attempt per batch).
    pub async fn flush(&self) {
        loop {
            let batch = self.queue.take(self.config.max_batch_size as usize);
            if batch.is_empty() {
                return;
            }
            if let Err(e) = self.sink.send(&batch).await {
                tracing::error!(plugin = self.plugin, error = %e, "flushing log entries failed");
                return;
            }
        }
    }
}

/// The sending loop: holds its shipper only while working, so a retired plugin instance (and its
/// queue) is freed and the loop ends.
async fn run<S: Sink>(weak: Weak<Shipper<S>>) {
    loop {
        let Some(s) = weak.upgrade() else { return };
        let max = s.config.max_batch_size as usize;
        let delay = Duration::from_secs_f64(if max == 1 {
            0.0
        } else {
            s.config.max_coalescing_delay
        });
        let batch =
            tokio::time::timeout(Duration::from_secs(1), s.queue.next_batch(max, delay)).await;
        match batch {
            Ok(b) if !b.is_empty() => s.deliver(b).await,
            _ => {}
        }
    }
}
