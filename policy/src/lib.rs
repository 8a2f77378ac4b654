//! The per-request policy chain of ringway.
//!
//! A [`Policy`] sees each request after routing and each response before it is written, and
//! returns a [`Verdict`]: go on, or answer now. The engine in `ringway-proxy` performs the
//! exit; policies never do I/O. Execution order comes from each policy's fixed
//! [`Policy::priority`], never from the order in the configuration.
//!
//! Configuration is parsed, not validated: users write [`PoliciesSpec`] (serde, unknown fields
//! rejected); [`compile`] turns it into a [`Chain`] that cannot be invalid, reporting every
//! problem with its path.
//!
//! Invariants: no socket I/O, no dependency on monoio, no locks on the request path (node-wide
//! limits lease from a shared bank in batches, see [`limits`]); time comes from the caller's
//! [`Context`].

mod auth;
mod cache;
mod calls;
mod chain;
pub mod consumer;
mod context;
mod duration;
mod error;
mod headers;
mod headers_policy;
mod http;
mod identity_spec;
mod introspect;
mod ip;
mod jwt;
mod kept;
pub mod keys;
pub mod limits;
mod seam;
mod spec;

pub use auth::IDENTITY_PRIORITY;
pub use cache::{CacheRule, CacheSpec};
pub use calls::{Answer, Outbound};
pub use chain::{compile, compile_consumer, Chain, ConsumerChains, Layered};
pub use consumer::{ConsumerSpec, Consumers};
pub use context::{Answers, Context, Credential, Identity, ResponseExtras, WorkerPolicyState};
pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use headers::{is_valid_header_name, is_valid_header_value, Header, HeaderList};
pub use headers_policy::HeadersPolicy;
pub use http::{Field, RequestHead, ResponseHead, Version};
pub use identity_spec::{
    AclSpec, BasicAuthSpec, IntrospectionSpec, IpRestrictionSpec, IssuerSpec, JwtAuthSpec, KeyAuthSpec,
};
pub use ip::{IpRestriction, Network};
pub use limits::{ConcurrencyLimitSpec, RateLimitSpec};
pub use seam::{Policy, Reply, RequestInfo, Verdict};
pub use spec::{
    DotSegments, EscapedSlashes, HeaderOpsSpec, HeadersPolicySpec, PathNormalization, PoliciesSpec, Semicolons,
    TrailingSlash,
};
