//! What the configuration of `rate_limit` and `concurrency_limit` says, and what it compiles
//! to: the specs, the compiled limits (with what `key` and `algorithm` become), the keyed hash
//! that names their counters, and `RateLimit::compile`. A concurrency limit's `compile` takes
//! its slots from the bank, so it stands in `policies`.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigErrors;
use crate::headers::is_valid_header_name;

/// `rate_limit: {limit, window, key, algorithm, burst}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests admitted per window (node-wide).
    pub limit: u64,
    /// The window, as a duration (`"1s"`, `"1m"`, `"1h"`...).
    pub window: String,
    /// What is counted separately: `ip` (the default), `route`, `header:NAME` or `consumer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `sliding_window` (the default) or `token_bucket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// Token bucket only: the most requests admitted at once after a quiet spell (default:
    /// `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// `concurrency_limit: {max_in_flight}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitSpec {
    /// Requests of the route in flight at once, node-wide.
    pub max_in_flight: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyKind {
    Ip,
    Route,
    /// Lower-case header name; requests without it are counted by client address.
    Header(String),
    /// The authenticated consumer; requests without one are counted by client address.
    Consumer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Algorithm {
    SlidingWindow,
    TokenBucket { burst: u64 },
}

/// The compiled `rate_limit` of one route.
#[derive(Debug)]
pub struct RateLimit {
    /// Identifies the counters: the route's path in the config and the limit's settings, so an
    /// unchanged limit keeps its counters across config changes.
    pub(super) id: u64,
    pub(super) limit: u64,
    pub(super) window_ms: u64,
    pub(super) key: KeyKind,
    pub(super) algorithm: Algorithm,
}

/// The compiled `concurrency_limit` of one route.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    pub(super) id: u64,
    pub(super) max: u64,
}

fn hasher() -> &'static RandomState {
    static H: OnceLock<RandomState> = OnceLock::new();
    H.get_or_init(RandomState::new)
}

pub(super) fn keyed_hash(v: impl Hash) -> u64 {
    hasher().hash_one(v)
}

/// What a `key: consumer` limit counts consumer `id` under.
pub fn consumer_key(id: &str) -> u64 {
    keyed_hash(("consumer", id))
}

impl RateLimit {
    pub fn compile(spec: &RateLimitSpec, path: &str, errors: &mut ConfigErrors) -> Option<RateLimit> {
        let before = errors.0.len();
        if spec.limit == 0 || spec.limit > 1_000_000_000 {
            errors.push(format!("{path}.limit"), "must be between 1 and 1000000000");
        }
        let window = match crate::duration::parse_duration(&spec.window) {
            Ok(d) if d >= Duration::from_millis(100) => d,
            Ok(_) => {
                errors.push(format!("{path}.window"), "must be at least 100ms");
                Duration::from_secs(1)
            }
            Err(e) => {
                errors.push(format!("{path}.window"), e);
                Duration::from_secs(1)
            }
        };
        let key = match spec.key.as_deref().unwrap_or("ip") {
            "ip" => KeyKind::Ip,
            "route" => KeyKind::Route,
            "consumer" => KeyKind::Consumer,
            other => match other.strip_prefix("header:") {
                Some(name) if is_valid_header_name(name) => KeyKind::Header(name.to_ascii_lowercase()),
                _ => {
                    errors
                        .push(format!("{path}.key"), format!("{other:?}: expected ip, route, consumer or header:NAME"));
                    KeyKind::Ip
                }
            },
        };
        let algorithm = match spec.algorithm.as_deref().unwrap_or("sliding_window") {
            "sliding_window" => {
                if spec.burst.is_some() {
                    errors.push(format!("{path}.burst"), "burst only applies to algorithm: token_bucket");
                }
                Algorithm::SlidingWindow
            }
            "token_bucket" => {
                let burst = spec.burst.unwrap_or(spec.limit);
                if burst == 0 || burst > 1_000_000_000 {
                    errors.push(format!("{path}.burst"), "must be between 1 and 1000000000");
                }
                Algorithm::TokenBucket { burst }
            }
            other => {
                errors.push(
                    format!("{path}.algorithm"),
                    format!("unknown algorithm {other:?}: expected sliding_window or token_bucket"),
                );
                Algorithm::SlidingWindow
            }
        };
        if errors.0.len() != before {
            return None;
        }
        let id = keyed_hash((path, spec.limit, &spec.window, &spec.key, &spec.algorithm, spec.burst));
        Some(RateLimit { id, limit: spec.limit, window_ms: window.as_millis() as u64, key, algorithm })
    }
}

#[cfg(test)]
pub(super) fn limit(limit: u64, window: &str, algorithm: Option<&str>, burst: Option<u64>, path: &str) -> RateLimit {
    let spec = RateLimitSpec {
        limit,
        window: window.into(),
        key: Some("route".into()),
        algorithm: algorithm.map(String::from),
        burst,
    };
    RateLimit::compile(&spec, path, &mut ConfigErrors::default()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_name_their_field() {
        let mut errors = ConfigErrors::default();
        let spec = RateLimitSpec {
            limit: 0,
            window: "soon".into(),
            key: Some("user".into()),
            algorithm: Some("leaky".into()),
            burst: None,
        };
        assert!(RateLimit::compile(&spec, "p", &mut errors).is_none());
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["p.limit", "p.window", "p.key", "p.algorithm"]);
    }
}
