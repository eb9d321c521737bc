//! `storage: file`: one file per key in a directory, for a single instance that must keep its
//! account and certificates across restarts without Redis. Files are written to a temporary name
//! and renamed, so a crash never leaves half a certificate; private keys are written 0600.

use async_trait::async_trait;
use portcullis_plugin_api::state::{Store, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: PathBuf) -> FileStore {
        FileStore { dir }
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys hold `:` and `/` (URLs): hex-escape everything but a safe set.
        let mut name = String::with_capacity(key.len());
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02x}"));
            }
        }
        self.dir.join(name)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("file storage: {e}"))
}

/// File layout: the expiry (Unix seconds, 0 for none) on the first line, then the value.
fn encode(value: &[u8], ttl: Option<Duration>) -> Vec<u8> {
    let expires = ttl.map(|t| now() + t.as_secs().max(1)).unwrap_or(0);
    let mut out = format!("{expires}\n").into_bytes();
    out.extend_from_slice(value);
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let expires: u64 = std::str::from_utf8(&bytes[..nl]).ok()?.parse().ok()?;
    if expires != 0 && expires <= now() {
        return None;
    }
    Some(bytes[nl + 1..].to_vec())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl Store for FileStore {
    async fn incr(&self, _: &[(String, Duration)], _: i64) -> Result<Vec<i64>, StoreError> {
        Err(err("counters are not supported"))
    }

    async fn counters(&self, _: &[String]) -> Result<Vec<i64>, StoreError> {
        Err(err("counters are not supported"))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(self.path(key)) {
            Ok(b) => Ok(decode(&b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        write_atomic(&self.path(key), &encode(value, ttl)).map_err(err)
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(key);
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(&encode(value, Some(ttl))).map_err(err)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A lock left by a crashed process expires like any other.
                    let live = std::fs::read(&path).ok().and_then(|b| decode(&b)).is_some();
                    if live {
                        return Ok(false);
                    }
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(false)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_locks_and_expiry() {
        let dir = std::env::temp_dir().join(format!("acme-file-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = FileStore::new(dir.clone());
        s.set("a:https://ca/x", b"v", None).await.unwrap();
        assert_eq!(s.get("a:https://ca/x").await.unwrap().unwrap(), b"v");
        assert!(s
            .set_nx("lock", b"1", Duration::from_secs(30))
            .await
            .unwrap());
        assert!(!s
            .set_nx("lock", b"2", Duration::from_secs(30))
            .await
            .unwrap());
        s.delete("lock").await.unwrap();
        assert!(s
            .set_nx("lock", b"3", Duration::from_secs(30))
            .await
            .unwrap());
        std::fs::write(s.path("old"), b"1\nstale").unwrap();
        assert_eq!(s.get("old").await.unwrap(), None, "expired");
        assert!(s
            .set_nx("old", b"x", Duration::from_secs(30))
            .await
            .unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
