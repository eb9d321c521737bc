//! State that outlives a configuration: counters and values keyed by the plugin, kept in a
//! process-wide [`LocalStore`] (survives reloads; one process) or in Redis ([`RedisStore`];
//! shared by every replica, as Kong's `redis` policies are). Both sit behind [`Store`], so a
//! plugin chooses the policy in its config and the rest of its code is the same.

use async_trait::async_trait;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Why a store operation failed (Redis down, timed out, refused).
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Counters with expiry and small values, local or shared.
#[async_trait]
pub trait Store: Send + Sync {
    /// Adds `delta` to each counter (created at 0 with its expiry on first use) and returns the
    /// new values, in order. One round trip for all keys.
    async fn incr(&self, keys: &[(String, Duration)], delta: i64) -> Result<Vec<i64>, StoreError>;
    /// Current counter values (0 when absent or expired).
    async fn counters(&self, keys: &[String]) -> Result<Vec<i64>, StoreError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Sets `key` only when it is absent (a lock); true when this call set it.
    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

#[derive(Debug, Clone)]
enum Value {
    Counter(i64),
    Bytes(Vec<u8>),
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

const SHARDS: usize = 16;

/// A bounded in-memory store shared by the whole process: counters survive reloads because the
/// store is not part of any configuration. When full, expired entries are dropped first, then
/// the entries closest to expiry.
pub struct LocalStore {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    max_per_shard: usize,
}

impl LocalStore {
    pub fn new(max_entries: usize) -> LocalStore {
        LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_shard: (max_entries / SHARDS).max(1),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn make_room(map: &mut HashMap<String, Entry>, max: usize, now: Instant) {
        if map.len() < max {
            return;
        }
        map.retain(|_, e| e.live(now));
        while map.len() >= max {
            let victim = map
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
    }

    /// Synchronous increment, for plugins that must not await on the request path.
    pub fn incr_now(&self, key: &str, ttl: Duration, delta: i64) -> i64 {
        let now = Instant::now();
        let Ok(mut map) = self.shard(key).lock() else {
            return 0;
        };
        if let Some(e) = map.get_mut(key) {
            if e.live(now) {
                if let Value::Counter(c) = &mut e.value {
                    *c += delta;
                    return *c;
                }
            }
        }
        Self::make_room(&mut map, self.max_per_shard, now);
        map.insert(
            key.to_string(),
            Entry {
                value: Value::Counter(delta),
                expires: Some(now + ttl),
            },
        );
        delta
    }

    /// Synchronous read of a counter (0 when absent or expired).
    pub fn counter_now(&self, key: &str) -> i64 {
        let now = Instant::now();
        let Ok(map) = self.shard(key).lock() else {
            return 0;
        };
        match map.get(key) {
            Some(Entry {
                value: Value::Counter(c),
                expires,
            }) if expires.is_none_or(|e| e > now) => *c,
            _ => 0,
        }
    }

    /// Number of live entries (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|m| m.values().filter(|e| e.live(now)).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn incr(&self, keys: &[(String, Duration)], delta: i64) -> Result<Vec<i64>, StoreError> {
        Ok(keys
            .iter()
            .map(|(k, ttl)| self.incr_now(k, *ttl, delta))
            .collect())
    }

    async fn counters(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        Ok(keys.iter().map(|k| self.counter_now(k)).collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let now = Instant::now();
        let map = self
            .shard(key)
            .lock()
            .map_err(|_| StoreError("local store poisoned".into()))?;
        Ok(match map.get(key) {
            Some(e) if e.live(now) => match &e.value {
                Value::Bytes(b) => Some(b.clone()),
                Value::Counter(c) => Some(c.to_string().into_bytes()),
            },
            _ => None,
        })
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut map = self
            .shard(key)
            .lock()
            .map_err(|_| StoreError("local store poisoned".into()))?;
        if !map.contains_key(key) {
            Self::make_room(&mut map, self.max_per_shard, now);
        }
        map.insert(
            key.to_string(),
            Entry {
                value: Value::Bytes(value.to_vec()),
                expires: ttl.map(|t| now + t),
            },
        );
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut map = self
            .shard(key)
            .lock()
            .map_err(|_| StoreError("local store poisoned".into()))?;
        if map.get(key).is_some_and(|e| e.live(now)) {
            return Ok(false);
        }
        Self::make_room(&mut map, self.max_per_shard, now);
        map.insert(
            key.to_string(),
            Entry {
                value: Value::Bytes(value.to_vec()),
                expires: Some(now + ttl),
            },
        );
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if let Ok(mut map) = self.shard(key).lock() {
            map.remove(key);
        }
        Ok(())
    }
}

/// The process-wide local store (1,000,000 entries at most).
pub fn local() -> Arc<LocalStore> {
    static LOCAL: OnceLock<Arc<LocalStore>> = OnceLock::new();
    LOCAL
        .get_or_init(|| Arc::new(LocalStore::new(1_000_000)))
        .clone()
}

/// Where a Redis store connects (Kong's `redis` config block).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisConfig {
    pub host: String,
    pub port: u16,
    pub database: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ssl: bool,
    pub ssl_verify: bool,
    pub timeout: Duration,
}

impl RedisConfig {
    fn url(&self) -> String {
        let scheme = if self.ssl { "rediss" } else { "redis" };
        let auth = match (&self.username, &self.password) {
            (Some(u), Some(p)) => {
                format!("{}:{}@", crate::percent_encode(u), crate::percent_encode(p))
            }
            (None, Some(p)) => format!(":{}@", crate::percent_encode(p)),
            (Some(u), None) => format!("{}@", crate::percent_encode(u)),
            (None, None) => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let insecure = if self.ssl && !self.ssl_verify {
            "#insecure"
        } else {
            ""
        };
        format!(
            "{scheme}://{auth}{host}:{}/{}{insecure}",
            self.port, self.database
        )
    }
}

/// A Redis-backed store: one multiplexed, self-reconnecting connection per distinct config,
/// shared by every plugin instance and kept across reloads. After a failed connect it fails fast
/// for a second instead of making every request wait for the timeout.
pub struct RedisStore {
    config: RedisConfig,
    conn: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "RedisStore({}:{})", self.config.host, self.config.port)
    }
}

/// The shared store for `config` (created on first use; connections made lazily).
pub fn redis(config: &RedisConfig) -> Arc<RedisStore> {
    static STORES: OnceLock<Mutex<HashMap<RedisConfig, Arc<RedisStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(|| Mutex::new(HashMap::new()));
    let Ok(mut map) = stores.lock() else {
        return Arc::new(RedisStore::new(config.clone()));
    };
    map.entry(config.clone())
        .or_insert_with(|| Arc::new(RedisStore::new(config.clone())))
        .clone()
}

impl RedisStore {
    fn new(config: RedisConfig) -> RedisStore {
        RedisStore {
            config,
            conn: tokio::sync::Mutex::new(None),
            down_until: Mutex::new(None),
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!(
            "redis {}:{}: {e}",
            self.config.host, self.config.port
        ))
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, StoreError> {
        if let Ok(d) = self.down_until.lock() {
            if d.is_some_and(|t| t > Instant::now()) {
                return Err(self.err("unavailable (recent connection failure)"));
            }
        }
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = redis::Client::open(self.config.url()).map_err(|e| self.err(e))?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(1);
        // The connection's driver task lives on the background runtime, which outlives every
        // request runtime and configuration.
        let made = crate::background::handle()
            .spawn(async move { redis::aio::ConnectionManager::new_with_config(client, cfg).await })
            .await
            .map_err(|e| self.err(e))?;
        match made {
            Ok(c) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                if let Ok(mut d) = self.down_until.lock() {
                    *d = Some(Instant::now() + Duration::from_secs(1));
                }
                Err(self.err(e))
            }
        }
    }

    async fn run<T: redis::FromRedisValue + Send + 'static>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        let fut = async move { pipe.query_async::<T>(&mut conn).await };
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(e)),
            Err(_) => Err(self.err("timed out")),
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn incr(&self, keys: &[(String, Duration)], delta: i64) -> Result<Vec<i64>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, ttl) in keys {
            pipe.cmd("INCRBY").arg(k).arg(delta);
            // NX: the window's expiry is set once, by its first increment.
            pipe.cmd("EXPIRE")
                .arg(k)
                .arg(ttl.as_secs().max(1))
                .arg("NX")
                .ignore();
        }
        self.run::<Vec<i64>>(pipe).await
    }

    async fn counters(&self, keys: &[String]) -> Result<Vec<i64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(keys);
        let (values,): (Vec<Option<i64>>,) = self.run(pipe).await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key);
        let (v,): (Option<Vec<u8>>,) = self.run(pipe).await?;
        Ok(v)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let cmd = pipe.cmd("SET").arg(key).arg(value);
        if let Some(t) = ttl {
            cmd.arg("PX").arg(t.as_millis().max(1) as u64);
        }
        cmd.ignore();
        self.run::<()>(pipe).await
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        let (v,): (Option<String>,) = self.run(pipe).await?;
        Ok(v.is_some())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(key).ignore();
        self.run::<()>(pipe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_counters_expire_and_stay_bounded() {
        let s = LocalStore::new(32);
        let k = vec![("a".to_string(), Duration::from_millis(50))];
        assert_eq!(s.incr(&k, 1).await.unwrap(), vec![1]);
        assert_eq!(s.incr(&k, 2).await.unwrap(), vec![3]);
        assert_eq!(s.counters(&["a".into()]).await.unwrap(), vec![3]);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.counters(&["a".into()]).await.unwrap(), vec![0]);
        assert_eq!(s.incr(&k, 1).await.unwrap(), vec![1], "a new window");
        for i in 0..1000 {
            s.incr_now(&format!("k{i}"), Duration::from_secs(60), 1);
        }
        assert!(s.len() <= 32, "bounded: {}", s.len());
    }

    #[tokio::test]
    async fn local_set_nx_is_a_lock() {
        let s = LocalStore::new(100);
        assert!(s.set_nx("l", b"1", Duration::from_secs(5)).await.unwrap());
        assert!(!s.set_nx("l", b"2", Duration::from_secs(5)).await.unwrap());
        assert_eq!(s.get("l").await.unwrap().unwrap(), b"1");
        s.delete("l").await.unwrap();
        assert!(s.set_nx("l", b"3", Duration::from_secs(5)).await.unwrap());
    }

    #[test]
    fn redis_url_escapes_credentials() {
        let c = RedisConfig {
            host: "r.test".into(),
            port: 6380,
            database: 2,
            username: Some("u".into()),
            password: Some("p@ss:w/rd".into()),
            ssl: true,
            ssl_verify: false,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(c.url(), "rediss://u:p%40ss%3Aw%2Frd@r.test:6380/2#insecure");
        assert!(!format!("{:?}", RedisStore::new(c)).contains("p@ss"));
    }
}
