//! What users write in a route's `policies` (and later in `global_policies`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cache::CacheSpec;
use crate::limits::{ConcurrencyLimitSpec, RateLimitSpec};

/// The policies of one route, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSpec {
    /// Authentication by API key (a consumer's `key_auth` credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_auth: Option<crate::identity_spec::KeyAuthSpec>,
    /// Authentication by the client certificate the TLS handshake verified (a consumer's
    /// `mtls` credential names its subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_auth: Option<crate::identity_spec::MtlsAuthSpec>,
    /// Authentication by username and password (a consumer's `basic_auth` credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<crate::identity_spec::BasicAuthSpec>,
    /// Authentication by bearer token (JWT): issuers' keys from their JWKS, consumers' own keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_auth: Option<crate::identity_spec::JwtAuthSpec>,
    /// Authentication by opaque bearer token, asked of an introspection endpoint (RFC 7662).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_introspection: Option<crate::identity_spec::IntrospectionSpec>,
    /// Authorisation by the consumer's groups (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<crate::identity_spec::AclSpec>,
    /// Header transforms on the request to the upstream and the response to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersPolicySpec>,
    /// Allow and deny lists on the client address (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_restriction: Option<crate::identity_spec::IpRestrictionSpec>,
    /// Node-wide rate limit of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Node-wide cap on the route's requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<ConcurrencyLimitSpec>,
    /// Response caching in per-worker partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// How the request path is put in canonical form before routing, policies and forwarding.
    /// Not a step of the chain: the proxy reads it when it routes (see `ringway-proxy`'s
    /// `h1::path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalization>,
}

impl PoliciesSpec {
    pub fn is_empty(&self) -> bool {
        *self == PoliciesSpec::default()
    }
}

/// `path_normalization: {...}`: each field has a default, so `{}` means the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathNormalization {
    /// `//` counts as `/` (default true).
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// `.` and `..` segments (also written `%2E`): `resolve` (default) or `reject`.
    #[serde(default)]
    pub dot_segments: DotSegments,
    /// `%2F` inside a segment: `keep` (default), `reject` or `decode`.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// A trailing `/`: `ignore` (default; `/a/` routes as `/a`) or `strict`.
    #[serde(default)]
    pub trailing_slash: TrailingSlash,
    /// `;` parameters of a segment: `ignore` (default; `/a;x` routes as `/a`), `reject` or
    /// `literal` (an ordinary character of the segment).
    #[serde(default)]
    pub semicolons: Semicolons,
}

fn yes() -> bool {
    true
}

impl Default for PathNormalization {
    fn default() -> Self {
        PathNormalization {
            merge_slashes: true,
            dot_segments: DotSegments::default(),
            escaped_slashes: EscapedSlashes::default(),
            trailing_slash: TrailingSlash::default(),
            semicolons: Semicolons::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DotSegments {
    /// Removed as RFC 3986 5.2.4 says; a `..` above the root is refused.
    #[default]
    Resolve,
    Reject,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Part of its segment for matching, and forwarded as sent.
    #[default]
    Keep,
    Reject,
    /// Turned into `/` before anything else.
    Decode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrailingSlash {
    /// `/a/` selects the route `/a` would; it is forwarded as sent.
    #[default]
    Ignore,
    /// `/a/` is matched as written: an exact `/a` route does not match it.
    Strict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Semicolons {
    /// `;params` play no part in routing (`/a;x/b` routes as `/a/b`) and are forwarded as
    /// sent; `..;x` counts as a dot segment.
    #[default]
    Ignore,
    Reject,
    /// `;` is an ordinary character of its segment.
    Literal,
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
