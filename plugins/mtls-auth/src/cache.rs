//! The two caches that keep mtls-auth off the request's critical path: finished decisions by
//! certificate chain (so keep-alive requests never re-verify), and revocation answers by URL or
//! certificate (single-flight, refreshed in the background while the old answer is still valid).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Entries beyond this trigger a sweep of expired ones; a flood of distinct certificates can
/// then only cost a cache flush, never unbounded memory.
const MAX_ENTRIES: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated in a way that matters here.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A map whose entries expire.
pub struct TtlMap<K, V> {
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    pub fn new() -> Self {
        TtlMap {
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let map = lock(&self.map);
        match map.get(key) {
            Some((until, v)) if Instant::now() < *until => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, key: K, value: V, until: Instant) {
        let mut map = lock(&self.map);
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, (t, _)| *t > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (until, value));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// One fetched answer: a value or why there is none, how long it may be served without asking
/// again, and how long it may still be served while a refresh runs.
pub struct Fetched<T> {
    pub value: Result<Arc<T>, String>,
    pub fresh_until: Instant,
    pub usable_until: Instant,
}

impl<T> Fetched<T> {
    pub fn error(message: String, retry_after: Duration) -> Self {
        let until = Instant::now() + retry_after;
        Fetched {
            value: Err(message),
            fresh_until: until,
            usable_until: until,
        }
    }
}

struct Slot<T> {
    state: Mutex<Option<Fetched<T>>>,
    /// Held while a fetch for this key runs, so concurrent misses wait for one fetch.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

/// Fetch results by key, with single-flight fetching and stale-while-revalidate.
pub struct FetchCache<T> {
    slots: Mutex<HashMap<String, Arc<Slot<T>>>>,
}

enum Cached<T> {
    Fresh(Result<Arc<T>, String>),
    Stale(Arc<T>),
    Missing,
}

impl<T: Send + Sync + 'static> FetchCache<T> {
    pub fn new() -> Self {
        FetchCache {
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &str) -> Arc<Slot<T>> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(key) {
            return s.clone();
        }
        if slots.len() >= MAX_ENTRIES {
            let now = Instant::now();
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || lock(&s.state)
                        .as_ref()
                        .is_some_and(|f| f.usable_until > now)
            });
            if slots.len() >= MAX_ENTRIES {
                slots.clear();
            }
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(None),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
        });
        slots.insert(key.to_string(), slot.clone());
        slot
    }

    fn cached(slot: &Slot<T>) -> Cached<T> {
        let state = lock(&slot.state);
        let now = Instant::now();
        match state.as_ref() {
            Some(f) if now < f.fresh_until => Cached::Fresh(f.value.clone()),
            Some(Fetched {
                value: Ok(v),
                usable_until,
                ..
            }) if now < *usable_until => Cached::Stale(v.clone()),
            _ => Cached::Missing,
        }
    }

    fn store(slot: &Slot<T>, fetched: Fetched<T>) -> Result<Arc<T>, String> {
        let mut state = lock(&slot.state);
        let now = Instant::now();
        // A failed refresh must not throw away an answer that is still valid.
        if fetched.value.is_err() {
            if let Some(old) = state.as_mut() {
                if old.value.is_ok() && now < old.usable_until {
                    old.fresh_until = fetched.fresh_until.min(old.usable_until);
                    return old.value.clone();
                }
            }
        }
        let value = fetched.value.clone();
        *state = Some(fetched);
        value
    }

    /// The answer for `key`, fetching it with `fetch` when there is no usable one. A stale but
    /// still valid answer is returned at once while a background task refreshes it.
    pub async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Arc<T>, String>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Fetched<T>> + Send + 'static,
    {
        let slot = self.slot(key);
        match Self::cached(&slot) {
            Cached::Fresh(v) => return v,
            Cached::Stale(v) => {
                if let (Ok(guard), Ok(handle)) = (
                    slot.fetching.clone().try_lock_owned(),
                    tokio::runtime::Handle::try_current(),
                ) {
                    let slot = slot.clone();
                    handle.spawn(async move {
                        let fetched = fetch().await;
                        Self::store(&slot, fetched).ok();
                        drop(guard);
                    });
                }
                return Ok(v);
            }
            Cached::Missing => {}
        }
        let _guard = slot.fetching.lock().await;
        if let Cached::Fresh(v) = Self::cached(&slot) {
            return v;
        }
        let fetched = fetch().await;
        Self::store(&slot, fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ttl_map_expires_and_stays_bounded() {
        let m = TtlMap::new();
        let now = Instant::now();
        m.insert(1u32, "a", now + Duration::from_secs(60));
        m.insert(2u32, "b", now);
        assert_eq!(m.get(&1), Some("a"));
        assert_eq!(m.get(&2), None);
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            m.insert(i + 10, "x", now + Duration::from_secs(60));
        }
        assert!(m.len() <= MAX_ENTRIES);
    }

    fn answer(v: u32, fresh: Duration, usable: Duration) -> Fetched<u32> {
        let now = Instant::now();
        Fetched {
            value: Ok(Arc::new(v)),
            fresh_until: now + fresh,
            usable_until: now + usable,
        }
    }

    #[tokio::test]
    async fn fetches_once_for_concurrent_misses() {
        let cache = Arc::new(FetchCache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get("k", move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        answer(7, Duration::from_secs(60), Duration::from_secs(60))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stale_answer_is_served_while_refreshing() {
        let cache = Arc::new(FetchCache::new());
        let v = cache
            .get("k", || async {
                answer(1, Duration::ZERO, Duration::from_secs(60))
            })
            .await;
        assert_eq!(*v.unwrap(), 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let v = cache
            .get("k", move || async move {
                rx.await.ok();
                answer(2, Duration::from_secs(60), Duration::from_secs(60))
            })
            .await;
        assert_eq!(*v.unwrap(), 1, "stale answer served at once");
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = cache
                .get("k", || async { answer(3, Duration::ZERO, Duration::ZERO) })
                .await
                .unwrap();
            if *v == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "refresh never landed");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn failed_refresh_keeps_valid_answer() {
        let cache = FetchCache::new();
        cache
            .get("k", || async {
                answer(1, Duration::ZERO, Duration::from_secs(60))
            })
            .await
            .unwrap();
        // Force the slow path by making the stale answer unusable for this call only.
        let slot = cache.slot("k");
        let r = FetchCache::store(&slot, Fetched::error("down".into(), Duration::from_secs(5)));
        assert_eq!(*r.unwrap(), 1);
        let e = cache
            .get("e", || async {
                Fetched::error("down".into(), Duration::from_secs(5))
            })
            .await;
        assert_eq!(e.unwrap_err(), "down");
        // The error is cached: no second fetch within the retry delay.
        let e = cache
            .get("e", || async {
                answer(9, Duration::from_secs(1), Duration::from_secs(1))
            })
            .await;
        assert!(e.is_err());
    }
}
