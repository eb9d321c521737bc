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
    /// Requests being pushed now: still counted here until Redis's total (which includes them)
    /// arrives, or a burst during a slow round trip would slip past the limit.
    inflight: i64,
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
                    inflight: 0,
                    ttl: *ttl,
                    expires: now + *ttl,
                });
                c.pending += delta;
                c.total()
            })
            .collect()
    }

    /// Pushes pending increments and refreshes the totals of the other live windows.
    pub async fn sync(&self) {
        let Some((by_delta, idle)) = self.take_pending(Instant::now()) else {
            return;
        };
        for (delta, keys) in by_delta {
            let result = self.store.incr(&keys, delta).await;
            if let Err(e) = &result {
                tracing::error!(plugin = crate::NAME, error = %e, "failed to sync counters");
            }
            self.settle(&keys, delta, result.ok());
        }
        if !idle.is_empty() {
            match self.store.counters(&idle).await {
                Ok(values) => self.refresh(&idle, &values),
                Err(e) => {
                    tracing::error!(plugin = crate::NAME, error = %e, "failed to read counters")
                }
            }
        }
    }

    /// Drops expired windows and moves each live window's pending count in flight, grouped by
    /// increment (one pipeline each); windows with nothing pending are returned to be re-read.
    fn take_pending(&self, now: Instant) -> Option<(Batches, Vec<String>)> {
        let mut by_delta: Batches = HashMap::new();
        let mut idle = Vec::new();
        let mut map = self.counters.lock().ok()?;
        map.retain(|_, c| c.expires > now);
        for (k, c) in map.iter_mut() {
            if c.pending != 0 {
                by_delta
                    .entry(c.pending)
                    .or_default()
                    .push((k.clone(), c.ttl));
                c.inflight += c.pending;
                c.pending = 0;
            } else {
                idle.push(k.clone());
            }
        }
        Some((by_delta, idle))
    }

    /// Ends a push of `delta` to `keys`: with Redis's totals they replace what was known; without
    /// (Redis failed) the increments go back to pending for the next round rather than being lost.
    fn settle(&self, keys: &[(String, Duration)], delta: i64, totals: Option<Vec<i64>>) {
        let Ok(mut map) = self.counters.lock() else {
            return;
        };
        for (i, (k, _)) in keys.iter().enumerate() {
            let Some(c) = map.get_mut(k) else { continue };
            c.inflight -= delta;
            match &totals {
                Some(t) => c.synced = t.get(i).copied().unwrap_or(c.synced),
                None => c.pending += delta,
            }
        }
    }

    /// Takes the shared totals of windows this instance did not touch since the last sync.
    fn refresh(&self, keys: &[String], values: &[i64]) {
        let Ok(mut map) = self.counters.lock() else {
            return;
        };
        for (k, v) in keys.iter().zip(values) {
            if let Some(c) = map.get_mut(k) {
                c.synced = c.synced.max(*v);
            }
        }
    }
}

type Batches = HashMap<i64, Vec<(String, Duration)>>;

impl Counter {
    fn total(&self) -> i64 {
        self.synced + self.inflight + self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_plugin_api::state::{self, RedisConfig};

    fn unsynced() -> SyncState {
        // Connections are made lazily and these tests never push, so no Redis is contacted.
        SyncState {
            store: state::redis(&RedisConfig {
                host: "127.0.0.1".into(),
                port: 1,
                database: 0,
                username: None,
                password: None,
                ssl: false,
                ssl_verify: true,
                timeout: Duration::from_secs(1),
            }),
            counters: Mutex::new(HashMap::new()),
        }
    }

    fn key() -> Vec<(String, Duration)> {
        vec![("k".to_string(), Duration::from_secs(60))]
    }

    #[test]
    fn requests_during_a_push_still_see_the_pushed_ones() {
        let s = unsynced();
        s.incr(&key(), 1);
        assert_eq!(s.incr(&key(), 1), vec![2]);
        let (batches, idle) = s.take_pending(Instant::now()).unwrap();
        assert_eq!(batches.get(&2), Some(&key()));
        assert!(idle.is_empty());
        // Redis has not answered yet: the two in flight are still counted.
        assert_eq!(s.incr(&key(), 1), vec![3]);
        assert_eq!(s.incr(&key(), 1), vec![4]);
        // Redis answers with the shared total, which includes another instance's 5.
        s.settle(&key(), 2, Some(vec![7]));
        assert_eq!(s.incr(&key(), 1), vec![10]);
    }

    #[test]
    fn a_failed_push_is_kept_for_the_next_round() {
        let s = unsynced();
        s.incr(&key(), 1);
        s.incr(&key(), 1);
        let _ = s.take_pending(Instant::now()).unwrap();
        s.incr(&key(), 1);
        s.settle(&key(), 2, None);
        assert_eq!(s.incr(&key(), 1), vec![4]);
        let (batches, _) = s.take_pending(Instant::now()).unwrap();
        assert_eq!(batches.get(&4), Some(&key()));
    }

    #[test]
    fn untouched_windows_take_the_shared_total_and_expired_ones_go() {
        let s = unsynced();
        s.incr(&key(), 1);
        let _ = s.take_pending(Instant::now()).unwrap();
        s.settle(&key(), 1, Some(vec![1]));
        let (batches, idle) = s.take_pending(Instant::now()).unwrap();
        assert!(batches.is_empty());
        assert_eq!(idle, vec!["k".to_string()]);
        s.refresh(&idle, &[6]);
        assert_eq!(s.incr(&key(), 1), vec![7]);
        let later = Instant::now() + Duration::from_secs(61);
        let (batches, idle) = s.take_pending(later).unwrap();
        assert!(batches.is_empty() && idle.is_empty());
    }
}
