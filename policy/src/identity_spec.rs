//! What users write for the identity policies (`key_auth`, `basic_auth`, `jwt_auth`,
//! `oauth2_introspection`), the authorisation ones (`acl`, `ip_restriction`): plain
//! configuration, apart from the policies that compile from it, so a document's types never
//! depend on the request path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `ip_restriction: {allow: [CIDR...], deny: [CIDR...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionSpec {
    /// When set, only clients in these networks pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Clients in these networks are refused (before `allow` is read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// `mtls_auth: {}`: nothing to set; the certificate's authority is the TLS listener's
/// (`certificates.*.client_auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsAuthSpec {}

/// `key_auth: {header, query, hide_credentials}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuthSpec {
    /// The header carrying the key (default `apikey`; `""`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The query parameter carrying the key (default `apikey`; `""`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Remove the key from the request before it goes upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_credentials: bool,
}

/// `basic_auth: {realm, hide_credentials}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_credentials: bool,
}

/// `acl: {allow_groups, deny_groups}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_groups: Vec<String>,
}

/// `jwt_auth: {issuers, claims_to_headers, hide_credentials}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerSpec>,
    /// Claims sent upstream as headers (`{sub: x-user-id}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims_to_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_credentials: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The `iss` its tokens carry (checked).
    pub issuer: String,
    pub jwks_uri: String,
    /// Accepted `aud` values (none: `aud` is not checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Accepted algorithms (default RS256 and ES256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// The claim naming the consumer (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// Slack on `exp` and `nbf` (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<String>,
    /// How often its keys are fetched again (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// Tokens whose consumer claim names no consumer are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_consumer: bool,
}

/// `oauth2_introspection: {...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSpec {
    pub endpoint: String,
    pub client_id: String,
    /// As users send it; open in memory only (never serialized).
    #[serde(default, skip_serializing)]
    pub client_secret: Option<String>,
    /// The secret encrypted with the node's key (set by the admin API; stored, never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// The answer's field naming the consumer (default `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hide_credentials: bool,
}
