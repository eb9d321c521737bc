//! The memory strategy: a byte-bounded TinyUFO (Pingora's S3-FIFO cache with TinyLFU sketch) per
//! plugin instance, kept process-wide so a reload does not empty it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use portcullis_plugin_api::bytes::Bytes;

/// One weight unit of the store: TinyUFO weighs entries in `u16`.
const UNIT: u64 = 1024;
/// Bookkeeping per entry beyond its bytes (the bucket, the key, the Arc, vectors).
const OVERHEAD: u64 = 256;

/// A stored response, shared by the requests it answers.
#[derive(Debug)]
pub struct Entry {
    pub key: [u8; 32],
    pub status: u16,
    /// Lower-case names, in the order the response had them, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Unix seconds when stored (Kong's `res.timestamp`, whole seconds as `ngx.time()`).
    pub timestamp: u64,
    /// The resource's TTL (`cache_ttl`, or what Cache-Control allowed), seconds.
    pub ttl: f64,
    /// When the store forgets it (`storage_ttl`, else the TTL); `None`: never (a TTL of 0, as
    /// in nginx's shared dictionaries).
    pub expires: Option<Instant>,
}

impl Entry {
    fn weight(&self) -> u16 {
        let bytes = self.body.len() as u64
            + self
                .headers
                .iter()
                .map(|(n, v)| (n.len() + v.len() + 48) as u64)
                .sum::<u64>()
            + OVERHEAD;
        bytes.div_ceil(UNIT).clamp(1, u16::MAX as u64) as u16
    }
}

pub struct Store {
    cache: tinyufo::TinyUfo<[u8; 32], Arc<Entry>>,
    max_size: u64,
}

impl Store {
    pub(crate) fn new(max_size: u64) -> Store {
        let units = (max_size / UNIT).max(1) as usize;
        // TinyUFO sizes its sketch by the expected number of entries: a few KiB each.
        let estimated = (units / 4).clamp(64, 1 << 20);
        Store {
            cache: tinyufo::TinyUfo::new_compact(units, estimated),
            max_size,
        }
    }

    /// The live entry for `key`; an expired one is removed.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Arc<Entry>> {
        let e = self.cache.get(key)?;
        if e.key != *key {
            // TinyUFO keys by a 64-bit hash: a collision is a miss, never another's response.
            return None;
        }
        if e.expires.is_some_and(|x| x <= now) {
            self.cache.remove(key);
            return None;
        }
        Some(e)
    }

    /// Stores (or replaces) an entry; whatever no longer fits is evicted.
    pub fn put(&self, entry: Entry) {
        let key = entry.key;
        let weight = entry.weight();
        // `force_put`: a response just fetched is always admitted (as Kong's dictionary `set`
        // does) so the next request hits; eviction picks the victims.
        drop(self.cache.force_put(key, Arc::new(entry), weight));
    }
}

/// Stores by plugin instance id. Weak: a store lives as long as an instance of some live
/// configuration uses it, so a removed plugin's memory is freed once its configuration retires.
type Registry = Mutex<HashMap<String, Weak<Store>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The store of instance `id`: the same one across reloads while its size is unchanged.
pub fn for_instance(id: &str, max_size: u64) -> Arc<Store> {
    let mut map = registry().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(s) = map.get(id).and_then(Weak::upgrade) {
        if s.max_size == max_size {
            return s;
        }
    }
    let s = Arc::new(Store::new(max_size));
    map.insert(id.to_string(), Arc::downgrade(&s));
    s
}

/// Seconds since the Unix epoch (Kong's `ngx.time()`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8, body: usize, expires: Option<Instant>) -> Entry {
        Entry {
            key: [i; 32],
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from(vec![b'x'; body]),
            timestamp: 0,
            ttl: 300.0,
            expires,
        }
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_unread_entries() {
        let s = Store::new(64 * 1024);
        let now = Instant::now();
        for i in 0..200u8 {
            s.put(entry(i, 2000, None));
        }
        assert!(s.get(&[0; 32], now).is_none(), "first entry still there");
        assert!(s.get(&[199; 32], now).is_some(), "last entry evicted");
        let live = (0..200u8)
            .filter(|i| s.get(&[*i; 32], now).is_some())
            .count();
        assert!(live <= 64 * 1024 / 2000, "{live} entries of 2 KB in 64 KiB");
    }

    #[test]
    fn expired_entries_are_misses() {
        let s = Store::new(1024 * 1024);
        let now = Instant::now();
        s.put(entry(1, 10, Some(now + Duration::from_secs(1))));
        s.put(entry(2, 10, None));
        assert!(s.get(&[1; 32], now).is_some());
        assert!(s.get(&[1; 32], now + Duration::from_secs(2)).is_none());
        assert!(s.get(&[2; 32], now + Duration::from_secs(3600)).is_some());
    }

    #[test]
    fn an_instance_keeps_its_store_while_alive_and_its_size_is_unchanged() {
        let a = for_instance("test-a", 1 << 20);
        let b = for_instance("test-a", 1 << 20);
        assert!(Arc::ptr_eq(&a, &b));
        let c = for_instance("test-a", 2 << 20);
        assert!(!Arc::ptr_eq(&a, &c), "a new size is a new store");
        drop((a, b, c));
        let d = for_instance("test-a", 2 << 20);
        assert_eq!(Arc::strong_count(&d), 1, "nothing kept a dead store");
    }
}
