//! Credential entities owned by plugins (`keyauth_credentials`, `jwt_secrets`, …).
//!
//! A plugin crate declares each collection it owns with a [`CredentialKind`]: its name, the
//! plugin it belongs to, a validator for one entry, and the fields that must be unique across
//! the collection. The gateway's loader accepts the entries nested under `consumers[]` and at top
//! level (with a `consumer` reference), checks them with `file:line:col` errors, and hands them to
//! the plugin's factory through [`crate::BuildContext::credentials_of`] — the gateway's config code
//! knows no kind by name.

use crate::{ConfigError, Consumer};
use std::sync::Arc;

/// One collection of credential entities a plugin owns.
#[derive(Debug)]
pub struct CredentialKind {
    /// The key in the declarative file (`keyauth_credentials`).
    pub collection: &'static str,
    /// The owning plugin's name (`key-auth`).
    pub plugin: &'static str,
    /// Fields whose values must be unique across the whole collection (`key`), as in Kong's
    /// schema; a duplicate is a load error naming both places.
    pub unique: &'static [&'static str],
    /// Checks one entry (the entity without `id`, `consumer`, `tags`, `created_at`, `ttl`):
    /// types, required fields, unknown fields. Paths are relative to the entry.
    pub validate: fn(&serde_json::Value) -> Vec<ConfigError>,
}

/// One credential entity, validated, with its consumer resolved.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Its `id` from the file, else one derived from the collection and position.
    pub id: String,
    pub consumer: Arc<Consumer>,
    /// The entry's fields (without `id`/`consumer`/`tags`), as written.
    pub fields: serde_json::Value,
    pub tags: Vec<String>,
}

impl Credential {
    /// A string field of the entry.
    pub fn str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(|v| v.as_str())
    }
}

/// A validator for entries that deserialise into `T` (use `#[serde(deny_unknown_fields)]`).
pub fn validate_as<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Vec<ConfigError> {
    match crate::parse_config::<T>(value) {
        Ok(_) => Vec::new(),
        Err(e) => vec![e],
    }
}
