//! `cache`: the rules of a route's response cache. The cache itself (per-worker partitions,
//! storing and serving) lives in the engine; this is what the configuration says.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigErrors;
use crate::headers::is_valid_header_name;

/// `cache: {ttl, methods, vary, key_extra, max_body}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Freshness when the response says nothing about it (default `"60s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// `GET` and/or `HEAD` (default both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Request headers that are part of the key and reach the upstream (default
    /// `["accept-encoding"]`). On a cached request no other client header reaches the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vary: Option<Vec<String>>,
    /// More of the key: `"header:NAME"` (`"consumer"` once identities exist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_extra: Vec<String>,
    /// Largest body stored, in bytes (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<u64>,
}

/// A compiled `cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    pub ttl_ms: u64,
    pub get: bool,
    pub head: bool,
    /// Lower-case names of the request headers in the key, sorted, without duplicates.
    pub keyed: Vec<String>,
    pub max_body: u64,
}

impl CacheRule {
    pub fn compile(spec: &CacheSpec, path: &str, errors: &mut ConfigErrors) -> Option<CacheRule> {
        let before = errors.0.len();
        let ttl = match spec.ttl.as_deref().map(crate::duration::parse_duration) {
            None => Duration::from_secs(60),
            Some(Ok(d)) if d >= Duration::from_secs(1) => d,
            Some(Ok(_)) => {
                errors.push(format!("{path}.ttl"), "must be at least 1s");
                Duration::ZERO
            }
            Some(Err(e)) => {
                errors.push(format!("{path}.ttl"), e);
                Duration::ZERO
            }
        };
        let (mut get, mut head) = (spec.methods.is_empty(), spec.methods.is_empty());
        for (i, m) in spec.methods.iter().enumerate() {
            match m.to_ascii_uppercase().as_str() {
                "GET" => get = true,
                "HEAD" => head = true,
                _ => errors.push(format!("{path}.methods[{i}]"), format!("{m:?}: only GET and HEAD are cached")),
            }
        }
        let mut keyed = Vec::new();
        let vary = spec.vary.clone().unwrap_or_else(|| vec!["accept-encoding".to_string()]);
        for (i, name) in vary.iter().enumerate() {
            if is_valid_header_name(name) {
                keyed.push(name.to_ascii_lowercase());
            } else {
                errors.push(format!("{path}.vary[{i}]"), format!("{name:?} is not a header name"));
            }
        }
        for (i, extra) in spec.key_extra.iter().enumerate() {
            match extra.strip_prefix("header:") {
                Some(name) if is_valid_header_name(name) => keyed.push(name.to_ascii_lowercase()),
                _ if extra == "consumer" => errors.push(
                    format!("{path}.key_extra[{i}]"),
                    "\"consumer\" needs consumer identities, which this version does not have yet",
                ),
                _ => errors.push(format!("{path}.key_extra[{i}]"), format!("{extra:?}: expected \"header:NAME\"")),
            }
        }
        for name in &keyed {
            if matches!(name.as_str(), "authorization" | "cookie" | "host" | "connection" | "content-length") {
                errors.push(format!("{path}.vary"), format!("{name:?} cannot be part of a shared cache key"));
            }
        }
        keyed.sort();
        keyed.dedup();
        let max_body = spec.max_body.unwrap_or(1 << 20);
        if max_body == 0 || max_body > 64 << 20 {
            errors.push(format!("{path}.max_body"), "must be between 1 and 67108864 bytes");
        }
        if errors.0.len() != before {
            return None;
        }
        Some(CacheRule { ttl_ms: ttl.as_millis() as u64, get, head, keyed, max_body })
    }
}
