//! The configuration document users write (`ringway.yaml`, and the admin API's bodies).
//!
//! Raw `*Spec` types straight from serde, unknown fields rejected; [`crate::snapshot`] compiles
//! them into a [`crate::Snapshot`] that cannot be invalid.

use std::collections::BTreeMap;
use std::time::Duration;

use ringway_policy::{ConfigErrors, PoliciesSpec};
use serde::{Deserialize, Serialize};

/// A whole configuration document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Upstream services by id.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    /// Routes by id.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteSpec>,
    /// Consumers by id: who calls, with their groups, credentials (sealed) and own policies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, ringway_policy::ConsumerSpec>,
    /// Policies for every route; a route's own policy of the same name replaces the global one.
    #[serde(default, skip_serializing_if = "is_default_policies")]
    pub global_policies: PoliciesSpec,
    /// Where the JSON access log goes: a file path, `stdout`, or `off` (the default).
    /// `--access-log` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<String>,
    /// Where the access-log records are shipped (see [`crate::shipping`]); off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_shipping: Option<crate::shipping::LogShippingSpec>,
    /// OpenTelemetry traces: where they go and how many are sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::traces::TracingSpec>,
    /// Proxies in front of the gateway (CIDR networks): behind them the client is the nearest
    /// `X-Forwarded-For` entry outside the list, for every IP-based policy, limit key and log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// The TLS listener's certificates by id (keys sealed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<String, crate::tls::CertificateSpec>,
    /// The TLS listener's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsSettingsSpec>,
    /// gRPC service descriptions by id, for transcoding routes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub protos: BTreeMap<String, crate::grpc::proto::ProtoSpec>,
}

/// One upstream service: where requests go and how they are balanced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// The servers, each `{addr: "host:port", weight}`.
    pub targets: Vec<TargetSpec>,
    /// `round_robin` (smooth weighted, the default), `least_conn`, `p2c_ewma` or
    /// `consistent_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lb: Option<String>,
    /// For `consistent_hash`: `ip` (the default) or `header:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Timeouts as durations (`"2s"`, `"500ms"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    /// The per-worker keep-alive pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSpec>,
    /// Trying a failed request again (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetriesSpec>,
    /// Taking failing targets out of rotation (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<HealthChecksSpec>,
    /// Refusing requests while the upstream fails (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// TLS to the targets (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::UpstreamTlsSpec>,
    /// What the targets speak: `http1` (the default), `h2` (over `tls`, by ALPN) or `h2c`
    /// (HTTP/2 in plaintext, with prior knowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `retries`: `{attempts: 3, on: [connect_failure, reset, timeout, 502, 503, 504], backoff:
/// "25ms", budget: {ratio: 0.2, min_per_sec: 10}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesSpec {
    /// Tries in all, the first included (default 2, at most 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// What is retried: `connect_failure`, `reset`, `timeout` and response statuses 500-599
    /// (default: `connect_failure`, `reset`, 502, 503, 504).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOnSpec>>,
    /// Wait before the first retry, doubled for each further one, with jitter (default `25ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
}

/// One condition in `retries.on`: a name or a status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RetryOnSpec {
    Status(u16),
    Name(String),
}

/// The node's retry budget: retries at most `ratio` of requests, plus `min_per_sec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_sec: Option<u32>,
}

/// `health_checks`: passive (from real traffic), active (probes), and what to do when every
/// target is out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthChecksSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<PassiveSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveSpec>,
    /// `fail_closed` (the default: answer 503 at once) or `fail_open` (send to every target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_unhealthy: Option<String>,
}

/// Probes: `{type: http, path: "/healthz", host, expect_status: [200], interval: "2s",
/// timeout: "1s", healthy_after: 2, unhealthy_after: 3}`, one per target per interval for the
/// node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveSpec {
    /// `http` (the default), `tcp` (a connection is enough) or `grpc` (the gRPC health checking
    /// protocol, `grpc.health.v1.Health/Check`, over HTTP/2: SERVING is healthy).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// For `grpc`: the service asked about (default `""`: the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The `Host` sent (default: the target's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<Vec<u16>>,
    /// Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Successes in a row that bring a target back (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_after: Option<u32>,
    /// Failures in a row that take it out (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_after: Option<u32>,
}

/// Outlier ejection: `{consecutive_failures: 5, failure_statuses: [502, 503, 504],
/// base_ejection: "30s", max_ejected_percent: 50}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveSpec {
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Default 502, 503, 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_statuses: Option<Vec<u16>>,
    /// The first ejection's length, multiplied by the number of ejections in a row (default
    /// `30s`, at most ten times as long).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<String>,
    /// Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

/// `circuit_breaker`: `{failure_ratio: 0.5, min_requests: 20, window: "10s", open_for: "15s",
/// half_open_requests: 3, consecutive_failures: 10, failure_statuses: [502, 503, 504]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    /// Requests in the window before the ratio counts (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<String>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_requests: Option<u32>,
    /// Also opens after this many failures in a row (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Default 502, 503, 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_statuses: Option<Vec<u16>>,
}

/// One upstream server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `ip:port` or `hostname:port` (resolved when the config is compiled).
    pub addr: String,
    /// Relative share of requests; 0 takes the target out of rotation. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Upstream timeouts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// Establishing the TCP connection (default `5s`): past it, 502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// From the request being sent to the response head being read (default `60s`): past it,
    /// 504.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_head: Option<String>,
    /// Longest silence while a body streams either way (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

/// Per-worker upstream keep-alive pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Idle connections kept per target on each worker (default 64; 0 disables reuse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle: Option<u32>,
    /// How long an idle connection is kept (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// One route: which requests it matches and where they go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Host names, exact (`api.example.com`) or wildcard (`*.example.com`); empty matches any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Paths: `/exact`, `/prefix/*`, `/users/{id}`. At least one.
    pub paths: Vec<String>,
    /// Methods; empty matches any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Higher wins over any specificity. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// The id of the upstream that serves this route.
    pub upstream: String,
    /// A path prefix removed before forwarding, e.g. `"/api"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<String>,
    /// Largest request body accepted, in bytes (default: no limit beyond the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Policies by name.
    #[serde(default, skip_serializing_if = "is_default_policies")]
    pub policies: PoliciesSpec,
    /// Capture requests and responses (headers redacted, bodies capped) into the access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::capture::CaptureSpec>,
    /// WebSocket upgrades: `true`, or `{idle_timeout: "5m"}` (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocketSpec>,
    /// HTTP/JSON calls turned into gRPC calls of a method of an uploaded proto (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_transcode: Option<crate::grpc::transcode::TranscodeSpec>,
}

/// A route's `websocket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WebSocketSpec {
    On(bool),
    Settings {
        /// How long a tunnel may carry nothing before it is closed (default 5 minutes).
        idle_timeout: String,
    },
}

fn is_default_policies(p: &PoliciesSpec) -> bool {
    *p == PoliciesSpec::default()
}

pub use ringway_policy::parse_duration;

/// A duration setting (`default` when absent); zero and malformed values are reported at `path`.
pub(crate) fn duration_or(
    value: Option<&String>,
    default: Duration,
    path: String,
    errors: &mut ConfigErrors,
) -> Duration {
    match value.map(|v| parse_duration(v)) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            errors.push(path, "must be greater than zero");
            default
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(path, e);
            default
        }
    }
}
