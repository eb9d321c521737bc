//! Live reconfiguration. The conf directory and every file the configuration references are
//! polled for changes (content fingerprints, so Kubernetes' `..data` symlink swaps, editors'
//! rename-over and in-place writes all count); SIGHUP forces a reload. A burst of writes is
//! debounced; a half-written file fails validation and is simply retried on the next change.
//! A new configuration is validated whole off the request path and swapped atomically.

use super::Gateway;
use crate::config;
use crate::metrics::CONFIG_RELOADS;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);
/// Quiet time after the last observed change before reloading.
const DEBOUNCE: Duration = Duration::from_millis(300);

static SIGHUP: AtomicBool = AtomicBool::new(false);

/// Fingerprint of the conf dir's YAML files and every referenced file: path, size, mtime and
/// the resolved target of symlinks.
fn fingerprint(
    dir: &Path,
    files: &[PathBuf],
) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>, Option<PathBuf>)> {
    let mut all: Vec<PathBuf> = config::conf_files(dir).unwrap_or_default();
    all.extend(files.iter().cloned());
    // The ..data link of Kubernetes volumes: a swap changes its target even when sizes match.
    all.push(dir.join("..data"));
    all.sort();
    all.dedup();
    all.into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let target = std::fs::canonicalize(&p).ok();
            (
                p,
                meta.as_ref().map(|m| m.len()).unwrap_or(u64::MAX),
                meta.and_then(|m| m.modified().ok()),
                target,
            )
        })
        .collect()
}

pub fn start(gw: Arc<Gateway>) {
    spawn_sighup_listener();
    let spawned = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || watch(gw));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "config watcher failed to start: live reload is off");
    }
}

fn spawn_sighup_listener() {
    let spawned = std::thread::Builder::new().name("sighup".into()).spawn(|| {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(_) => return,
        };
        rt.block_on(async {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                tracing::error!("cannot listen for SIGHUP");
                return;
            };
            while hup.recv().await.is_some() {
                SIGHUP.store(true, Ordering::SeqCst);
            }
        });
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "SIGHUP listener failed to start");
    }
}

fn watch(gw: Arc<Gateway>) {
    let mut seen = fingerprint(&gw.conf_dir, &gw.shared.load().config.files);
    let mut changed_at: Option<Instant> = None;
    loop {
        std::thread::sleep(POLL);
        if SIGHUP.swap(false, Ordering::SeqCst) {
            tracing::info!("SIGHUP received: reloading configuration");
            reload(&gw);
            seen = fingerprint(&gw.conf_dir, &gw.shared.load().config.files);
            changed_at = None;
            continue;
        }
        let now = fingerprint(&gw.conf_dir, &gw.shared.load().config.files);
        if now != seen {
            seen = now;
            changed_at = Some(Instant::now());
            continue;
        }
        if let Some(t) = changed_at {
            if t.elapsed() >= DEBOUNCE {
                changed_at = None;
                reload(&gw);
                // The new config may reference other files: watch those from now on.
                seen = fingerprint(&gw.conf_dir, &gw.shared.load().config.files);
            }
        }
    }
}

/// Validate and swap; on any error keep the running configuration.
pub fn reload(gw: &Gateway) -> bool {
    let started = Instant::now();
    let old = gw.shared.load_full();
    match config::load(&gw.conf_dir) {
        Ok((cfg, warnings)) => {
            if cfg.hash == old.config.hash {
                CONFIG_RELOADS.with_label_values(&["success"]).inc();
                tracing::debug!("configuration unchanged");
                return true;
            }
            for w in &warnings {
                tracing::warn!(warning = %w, "configuration warning");
            }
            if listener_addresses(&cfg) != listener_addresses(&old.config) {
                tracing::warn!("listener addresses changed: they take effect after a restart (portcullis run --upgrade); the rest of the configuration is applied now");
            }
            super::log_config_warnings(&cfg);
            match super::build_runtime(cfg.clone(), gw.fallback_cert.clone(), Some(&old)) {
                Ok(rt) => {
                    gw.shared.store(Arc::new(rt));
                    gw.stream_table.store(Arc::new(super::stream_table(&cfg)));
                    CONFIG_RELOADS.with_label_values(&["success"]).inc();
                    tracing::info!(
                        config_hash = %cfg.hash,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "configuration reloaded"
                    );
                    true
                }
                Err(e) => {
                    CONFIG_RELOADS.with_label_values(&["error"]).inc();
                    tracing::error!(error = %e, "configuration rejected; keeping the running one");
                    false
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
            false
        }
    }
}

fn listener_addresses(c: &config::Config) -> (Vec<(String, bool)>, Vec<String>, Option<String>) {
    (
        c.listeners
            .proxy
            .iter()
            .map(|l| (l.address.clone(), l.tls))
            .collect(),
        c.listeners
            .stream
            .iter()
            .map(|l| l.address.clone())
            .collect(),
        c.listeners.status.clone(),
    )
}
