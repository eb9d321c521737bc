//! Live reconfiguration. The conf directory and every file the configuration references are
//! polled for changes (one `stat` per file: size, mtime, ctime, inode — so Kubernetes' `..data`
//! symlink swaps, editors' rename-over and in-place writes all count); SIGHUP forces a reload.
//! A burst of writes is debounced (but never postponed indefinitely); a half-written file fails
//! validation and is simply retried on the next change. While the last attempt failed, the
//! whole conf tree is watched too, so a file the rejected configuration references that appears
//! later (YAML edited before the certificate was copied) triggers a retry. A new configuration
//! is validated whole off the request path and swapped atomically.

use super::Gateway;
use crate::config;
use crate::metrics::CONFIG_RELOADS;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Poll interval: proportional to the number of files watched (each costs one `stat`), so a
/// small conf reacts fast and a conf with thousands of certificates stays cheap to watch.
const POLL_PER_FILE: Duration = Duration::from_micros(100);
const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(1);
/// Quiet time after the last observed change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// A steady trickle of writes must not postpone a reload forever.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Bounds of the conf tree walk done while the last attempt failed.
const TREE_DEPTH: usize = 6;
const TREE_FILES: usize = 20_000;

static SIGHUP: AtomicBool = AtomicBool::new(false);

/// What a `stat` (following symlinks) says about one file; `None` when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

type Fingerprint = Vec<(PathBuf, Option<Stamp>)>;

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
        dev: m.dev(),
    })
}

/// Fingerprint of the conf dir's YAML files, every referenced file and the `..data` link of
/// Kubernetes volumes (a swap gives every file behind it a new inode, even with equal content
/// sizes). With `tree`, every non-hidden file below the conf dir as well.
fn fingerprint(dir: &Path, files: &[PathBuf], tree: bool) -> Fingerprint {
    let mut all: Vec<PathBuf> = config::conf_files(dir).unwrap_or_default();
    all.extend(files.iter().cloned());
    all.push(dir.join("..data"));
    if tree {
        walk(dir, 0, &mut all);
    }
    all.sort();
    all.dedup();
    all.into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

/// Every file below `dir`, following symlinked directories (Kubernetes links `certs` to
/// `..data/certs`), skipping hidden names; depth and count are bounded against link loops.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > TREE_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if out.len() >= TREE_FILES {
            return;
        }
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, depth + 1, out),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
}

/// Whether a file seen before a reload looked different right after it: it changed while the
/// reload was reading, so what was applied may be older than what is on disk.
fn changed_between(before: &Fingerprint, after: &Fingerprint) -> bool {
    let before: HashMap<&PathBuf, &Option<Stamp>> = before.iter().map(|(p, s)| (p, s)).collect();
    after
        .iter()
        .any(|(p, s)| before.get(p).is_some_and(|b| *b != s))
}

pub fn start(gw: Arc<Gateway>) {
    let spawned = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || watch(gw));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "config watcher failed to start: live reload is off");
    }
}

/// Registers the SIGHUP handler before returning (so a SIGHUP right after start reloads instead
/// of killing the process with the default action), then serves it on its own thread.
pub fn spawn_sighup_listener() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP listener runtime failed to start");
            return;
        }
    };
    let registered = rt
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) });
    let mut hup = match registered {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            rt.block_on(async {
                while hup.recv().await.is_some() {
                    SIGHUP.store(true, Ordering::SeqCst);
                    // Names are resolved again even when the configuration is unchanged.
                    crate::upstream::dns::force_refresh();
                }
            });
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "SIGHUP listener failed to start");
    }
}

fn watch(gw: Arc<Gateway>) {
    let look = |failed: bool| fingerprint(&gw.conf_dir, &gw.shared.load().config.files, failed);
    // Whether the last attempt was rejected: then the whole tree is watched.
    let mut failed = false;
    let mut seen = look(failed);
    // (first, last) change observed and not yet applied.
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let files = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        std::thread::sleep((POLL_PER_FILE * files).clamp(POLL_MIN, POLL_MAX));
        let hup = SIGHUP.swap(false, Ordering::SeqCst);
        let now = look(failed);
        if now != seen {
            seen = now;
            let t = Instant::now();
            pending = Some((pending.map_or(t, |(first, _)| first), t));
        }
        let due = hup
            || pending.is_some_and(|(first, last)| {
                last.elapsed() >= DEBOUNCE || first.elapsed() >= MAX_DELAY
            });
        if !due {
            continue;
        }
        if hup {
            tracing::info!("SIGHUP received: reloading configuration");
        }
        pending = None;
        let before = seen;
        failed = !reload(&gw);
        // The new config may reference other files: watch those from now on.
        seen = look(failed);
        if changed_between(&before, &seen) {
            let t = Instant::now();
            pending = Some((t, t));
        }
    }
}

/// Validate and swap; on any error keep the running configuration. A panic while loading or
/// compiling (a bug, but one reachable from a file an operator wrote) counts as a rejected
/// configuration: this thread is the only watcher, so letting it die would stop every later
/// reload without a trace.
pub fn reload(gw: &Gateway) -> bool {
    let outcome = guarded(|| try_reload(gw));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(message)) => Some(message),
        Err(panic) => {
            CONFIG_RELOADS.with_label_values(&["error"]).inc();
            tracing::error!(panic = %panic, "configuration reload failed with an internal error; keeping the running one");
            Some(format!(
                "internal error while loading the configuration: {panic}"
            ))
        }
    };
    let ok = failure.is_none();
    let mut last = gw
        .last_reload_error
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *last = failure.map(|message| super::ReloadFailure {
        at: std::time::SystemTime::now(),
        message,
    });
    ok
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// One reload attempt; `Err` carries what `/status` reports.
fn try_reload(gw: &Gateway) -> Result<(), String> {
    let started = Instant::now();
    let old = gw.shared.load_full();
    match config::load(&gw.conf_dir, crate::plugin::registry()) {
        Ok((cfg, warnings)) => {
            if cfg.hash == old.config.hash {
                CONFIG_RELOADS.with_label_values(&["success"]).inc();
                tracing::debug!("configuration unchanged");
                return Ok(());
            }
            for w in &warnings {
                tracing::warn!(warning = %w, "configuration warning");
            }
            if listener_addresses(&cfg) != listener_addresses(&old.config) {
                tracing::warn!("listener addresses (or a stream listener's tls setting) changed: they take effect after a restart (portcullis run --upgrade); the rest of the configuration is applied now");
            }
            if cfg.tls_groups != old.config.tls_groups {
                tracing::warn!("tls.groups changed: upstream connections use the new list now, TLS listeners after a restart (portcullis run --upgrade)");
            }
            super::log_config_warnings(&cfg);
            match super::build_runtime(cfg.clone(), gw.fallback_cert.clone(), Some(&old)) {
                Ok(rt) => {
                    gw.shared.store(Arc::new(rt));
                    // Retired plugin instances send what they queued now, not whenever their
                    // last in-flight request ends.
                    crate::plugin::chain::flush_all(
                        old.config
                            .plugins
                            .iter()
                            .map(|p| p.plugin.clone())
                            .collect(),
                    );
                    crate::metrics::forget_removed(&old.config, &cfg);
                    CONFIG_RELOADS.with_label_values(&["success"]).inc();
                    tracing::info!(
                        config_hash = %cfg.hash,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "configuration reloaded"
                    );
                    Ok(())
                }
                Err(e) => {
                    CONFIG_RELOADS.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, "configuration rejected; keeping the running one");
                    Err(e.to_string())
                }
            }
        }
        Err(e) => {
            CONFIG_RELOADS.with_label_values(&["error"]).inc();
            for d in &e.diags.errors {
                tracing::error!(error = %d, "configuration error");
            }
            tracing::error!(
                errors = e.diags.errors.len(),
                "configuration rejected; keeping the running one"
            );
            Err(e.to_string().trim_end().to_string())
        }
    }
}

type ListenerSet = (Vec<(String, bool)>, Vec<(String, bool)>, Option<String>);

/// What only a restart changes: addresses, and whether each listener speaks TLS.
fn listener_addresses(c: &config::Config) -> ListenerSet {
    (
        c.listeners
            .proxy
            .iter()
            .map(|l| (l.address.clone(), l.tls))
            .collect(),
        c.listeners
            .stream
            .iter()
            .map(|l| (l.address.clone(), l.tls))
            .collect(),
        c.listeners.status.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(guarded(|| 7), Ok(7));
        let e = guarded(|| -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(e, "boom 1");
        let e = guarded(|| -> u8 { panic!("static") }).unwrap_err();
        assert_eq!(e, "static");
    }
}
