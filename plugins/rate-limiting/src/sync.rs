//! `sync_rate > 0` with the redis policy: requests are counted in memory and the increments are
//! pushed to Redis in batches every `sync_rate` seconds on the background runtime (one pipeline
//! per distinct increment), reading back the shared totals — so a request never waits for Redis,
//! at the price of replicas seeing each other's traffic up to `sync_rate` late (Kong's trade).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_plugin_api::background;
use portcullis_plugin_api::state::{RedisStore, Store};

#[derive(Debug)]
struct Counter {
    /// The shared total as of the last sync.
    synced: i64,
    /// Requests counted here and not yet pushed.
    pending: i64,
    ttl: Duration,
    expires: Instant,
}

pub struct SyncState {
    store: Arc<RedisStore>,
    counters: Mutex<HashMap<String, Counter>>,
}

impl SyncState {
    /// Starts the periodic sync; it stops once the plugin instance (the last `Arc`) is gone.
    pub fn start(store: Arc<RedisStore>, every: Duration) -> Arc<SyncState> {
        let state = Arc::new(SyncState {
            store,
            counters: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&state);
        background::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { break };
                state.sync().await;
            }
        });
        state
    }

    /// Adds `delta` to each key; returns the totals as known here.
    pub fn incr(&self, keys: &[(String, Duration)], delta: i64) -> Vec<i64> {
        let now = Instant::now();
        let Ok(mut map) = self.counters.lock() else {
            return vec![0; keys.len()];
        };
        keys.iter()
            .map(|(k, ttl)| {
                let c = map.entry(k.clone()).or_insert_with(|| Counter {
                    synced: 0,
                    pending: 0,
                    ttl: *ttl,
                    expires: now + *ttl,
                });
                c.pending += delta;
                c.synced + c.pending
            })
            .collect()
    }

    /// Pushes pending increments and refreshes the totals of the other live windows.
    pub async fn sync(&self) {
        let now = Instant::now();
        let mut by_delta: HashMap<i64, Vec<(String, Duration)>> = HashMap::new();
        let mut idle = Vec::new();
        {
            let Ok(mut map) = self.counters.lock() else {
                return;
            };
            map.retain(|_, c| c.expires > now);
            for (k, c) in map.iter_mut() {
                if c.pending != 0 {
                    by_delta
                        .entry(c.pending)
                        .or_default()
                        .push((k.clone(), c.ttl));
                    c.pending = 0;
                } else {
                    idle.push(k.clone());
                }
            }
        }
        for (delta, keys) in by_delta {
            let result = self.store.incr(&keys, delta).await;
            let Ok(mut map) = self.counters.lock() else {
                return;
            };
            match result {
                Ok(totals) => {
                    for ((k, _), total) in keys.iter().zip(totals) {
                        if let Some(c) = map.get_mut(k) {
                            c.synced = total;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(plugin = crate::NAME, error = %e, "failed to sync counters");
                    // Kept for the next round rather than lost.
                    for (k, _) in &keys {
                        if let Some(c) = map.get_mut(k) {
                            c.pending += delta;
                        }
                    }
                }
            }
        }
        if !idle.is_empty() {
            match self.store.counters(&idle).await {
                Ok(values) => {
                    if let Ok(mut map) = self.counters.lock() {
                        for (k, v) in idle.iter().zip(values) {
                            if let Some(c) = map.get_mut(k) {
                                c.synced = c.synced.max(v);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(plugin = crate::NAME, error = %e, "failed to read counters")
                }
            }
        }
    }
}
