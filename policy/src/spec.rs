//! What users write in a route's `policies` (and later in `global_policies`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache::CacheSpec;
use crate::limits::{ConcurrencyLimitSpec, RateLimitSpec};

/// The policies of one route, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSpec {
    /// Header transforms on the request to the upstream and the response to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersPolicySpec>,
    /// Node-wide rate limit of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Node-wide cap on the route's requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<ConcurrencyLimitSpec>,
    /// Response caching in per-worker partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// `headers: {request: {...}, response: {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersPolicySpec {
    /// Applied to the request before it is sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOpsSpec>,
    /// Applied to the response before it is sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOpsSpec>,
}

/// Edits applied in the order remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsSpec {
    /// Replace (or create) each named header with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append a field with this value, keeping existing ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove every field with these names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}
