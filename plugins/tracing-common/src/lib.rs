//! What Kong's tracing plugins (`opentelemetry`, `zipkin`) share: Kong's propagation module
//! (kong/observability/tracing/propagation — extractors, injectors, `get_plugin_params`,
//! `propagate`), the trace-id ratio sampler, ids, the node id, and the exporter's config checks.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod propagation;

pub use config::{Inject, Propagation, PropagationConfig, PropagationFields};
pub use propagation::{sample, to_hex, Extracted, Format, InjectCtx};

use portcullis_plugin_api::LogEntry;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// `N` random bytes for trace and span ids, from a thread-local ChaCha CSPRNG seeded by the OS
/// (~50 times cheaper per id than a RAND_bytes call through OpenSSL's locked DRBG).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b
}

/// A random number in [0, 1), for ratio samplers that do not look at the trace id.
pub fn random_unit() -> f64 {
    rand::Rng::random(&mut rand::rng())
}

/// A process-wide id in UUID form: Kong's node id (`kong.node.get_id()`), reported as
/// `kong.node.id` and `service.instance.id`.
pub fn node_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let h = to_hex(&random_bytes::<16>());
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    })
}

/// When the request ended: its start plus its latency.
pub fn request_end(entry: &LogEntry<'_>) -> SystemTime {
    Duration::try_from_secs_f64(entry.latency)
        .ok()
        .and_then(|d| entry.started_at.checked_add(d))
        .unwrap_or(entry.started_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_one_uuid_shaped_id_per_process() {
        let id = node_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(node_id(), id);
    }
}
