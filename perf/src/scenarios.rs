//! The scenarios `compare` runs. Adding one is adding an entry to [`SCENARIOS`].

use anyhow::{bail, Result};

use crate::load::Method;

/// One workload shape, run against every contender.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Short name used on the command line and in reports.
    pub name: &'static str,
    /// One line saying what is measured.
    pub description: &'static str,
    /// Request method.
    pub method: Method,
    /// Request body size in bytes (POST only).
    pub request_body: usize,
    /// Response body size the origin serves.
    pub response_body: usize,
    /// Path the load generator requests.
    pub path: &'static str,
    /// Open a new client connection per request.
    pub new_connection: bool,
    /// Routes loaded into ringway besides the one that matches (nginx and HAProxy always run
    /// their plain configuration).
    pub extra_routes: usize,
    /// Policies of ringway's route, as YAML flow (nginx and HAProxy run their plain config).
    pub ringway_policies: &'static str,
    /// More settings of ringway's upstream, as YAML lines indented by four spaces.
    pub ringway_upstream: &'static str,
    /// Ringway ships its access-log records: to the origin (which accepts any POST), or to a
    /// port where nothing listens (the collector down for the whole run).
    pub ringway_shipping: Shipping,
    /// More of ringway's document, as YAML lines (`{origin}` stands for the origin's address).
    pub ringway_document: &'static str,
    /// More flags for ringway.
    pub ringway_args: &'static [&'static str],
    /// Consumers in ringway's document (see `config_files::consumers`).
    pub consumers: usize,
    /// Header lines every request carries (to every contender).
    pub headers: &'static [&'static str],
}

/// The API key of the first generated consumer, as the load sends it.
const BENCH_KEY: &str = "apikey: bench-key-00000000-0123456789abcdef";
/// `bench:bench password`.
const BENCH_BASIC: &str = "Authorization: Basic YmVuY2g6YmVuY2ggcGFzc3dvcmQ=";

/// Where ringway ships its records in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipping {
    Off,
    ToOrigin,
    Down,
}

/// A small GET over keep-alive, the baseline all others are read against.
const BASE: Scenario = Scenario {
    name: "small_get",
    description: "GET, 13-byte response, keep-alive",
    method: Method::Get,
    request_body: 0,
    response_body: 13,
    path: "/bench/x",
    new_connection: false,
    extra_routes: 0,
    ringway_policies: "",
    ringway_upstream: "",
    ringway_shipping: Shipping::Off,
    ringway_document: "",
    ringway_args: &[],
    consumers: 0,
    headers: &[],
};

/// Every scenario, in report order.
pub const SCENARIOS: &[Scenario] = &[
    BASE,
    Scenario { name: "body_64k", description: "GET, 64 KiB response, keep-alive", response_body: 64 * 1024, ..BASE },
    Scenario {
        name: "post_16k",
        description: "POST with a 16 KiB body, small response, keep-alive",
        method: Method::Post,
        request_body: 16 * 1024,
        ..BASE
    },
    Scenario {
        name: "new_conn",
        description: "GET, a new client connection per request",
        new_connection: true,
        ..BASE
    },
    Scenario {
        name: "routes_1000",
        description: "GET with 1,000 routes loaded in ringway (plain config elsewhere)",
        extra_routes: 999,
        ..BASE
    },
    Scenario {
        name: "rate_limited",
        description: "GET through a node-wide rate limit far above the offered load (ringway only)",
        ringway_policies: "{rate_limit: {limit: 1000000000, window: 1s, key: ip}}",
        ..BASE
    },
    Scenario {
        name: "resilient",
        description: "GET to an upstream with retries, outlier ejection, a circuit breaker and probes (ringway only)",
        ringway_upstream:
            "    retries: {attempts: 3, on: [connect_failure, reset, timeout, 502, 503, 504], backoff: 25ms, \
                           budget: {ratio: 0.2, min_per_sec: 10}}\n    \
                           health_checks: {passive: {consecutive_failures: 5, base_ejection: 30s, \
                           max_ejected_percent: 50}, active: {path: /, interval: 2s, timeout: 1s}}\n    \
                           circuit_breaker: {failure_ratio: 0.5, min_requests: 20, window: 10s, open_for: 15s, \
                           half_open_requests: 3}\n",
        ..BASE
    },
    Scenario {
        name: "shipped",
        description: "GET with every record shipped to a collector (the origin; ringway only)",
        ringway_shipping: Shipping::ToOrigin,
        ..BASE
    },
    Scenario {
        name: "shipped_down",
        description: "GET with log shipping on and the collector down the whole run (ringway only)",
        ringway_shipping: Shipping::Down,
        ..BASE
    },
    Scenario {
        name: "monitor_off",
        description: "GET with per-API statistics off (--no-stats): the base of the monitoring costs (ringway only)",
        ringway_args: &["--no-stats"],
        ..BASE
    },
    Scenario {
        name: "traced",
        description:
            "GET with OpenTelemetry traces sampled at 1% and exported to a collector (the origin; ringway only)",
        ringway_document: "tracing: {otlp_endpoint: \"http://{origin}/v1/traces\", sample_ratio: 0.01}\n",
        ..BASE
    },
    Scenario {
        name: "traced_down",
        description: "GET with traces sampled at 1% and the collector down the whole run (ringway only)",
        ringway_document: "tracing: {otlp_endpoint: \"http://127.0.0.1:1/v1/traces\", sample_ratio: 0.01}\n",
        ..BASE
    },
    Scenario {
        name: "keyed_open",
        description:
            "GET carrying an API key, 10 consumers, no authentication: the base of the identity costs (ringway only)",
        consumers: 10,
        headers: &[BENCH_KEY],
        ..BASE
    },
    Scenario {
        name: "key_auth",
        description: "GET authenticated by key-auth, 10 consumers (ringway only)",
        ringway_policies: "{key_auth: {}}",
        consumers: 10,
        headers: &[BENCH_KEY],
        ..BASE
    },
    Scenario {
        name: "key_auth_100k",
        description: "GET authenticated by key-auth among 100,000 consumers (ringway only)",
        ringway_policies: "{key_auth: {}}",
        consumers: 100_000,
        headers: &[BENCH_KEY],
        ..BASE
    },
    Scenario {
        name: "basic_auth",
        description: "GET authenticated by basic auth, the worker's cache of checked passwords warm (ringway only)",
        ringway_policies: "{basic_auth: {}}",
        consumers: 10,
        headers: &[BENCH_BASIC],
        ..BASE
    },
    Scenario {
        name: "jwt_rs256",
        description: "GET with an RS256 token, the worker's verified-token cache warm (ringway only)",
        ringway_policies: "{jwt_auth: {}}",
        ringway_document: crate::jwt_fixtures::RS256_CONSUMER,
        headers: &[crate::jwt_fixtures::RS256_BEARER],
        ..BASE
    },
    Scenario {
        name: "jwt_es256",
        description: "GET with an ES256 token, the worker's verified-token cache warm (ringway only)",
        ringway_policies: "{jwt_auth: {}}",
        ringway_document: crate::jwt_fixtures::ES256_CONSUMER,
        headers: &[crate::jwt_fixtures::ES256_BEARER],
        ..BASE
    },
    Scenario {
        name: "bearer_open",
        description:
            "GET carrying an ES256 bearer token, no authentication: the base of the token costs (ringway only)",
        headers: &[crate::jwt_fixtures::ES256_BEARER],
        ..BASE
    },
    Scenario {
        name: "introspected",
        description: "GET with an opaque token, the worker's introspection cache warm (ringway only)",
        ringway_policies:
            "{oauth2_introspection: {endpoint: \"http://{origin}/introspect\", client_id: bench, client_secret: bench}}",
        consumers: 10,
        headers: &["Authorization: Bearer opaque-bench-token-0123456789"],
        ..BASE
    },
    Scenario {
        name: "cache_hit",
        description: "GET answered from ringway's response cache (nginx and HAProxy proxy it)",
        ringway_policies: "{cache: {ttl: 3600s}}",
        ..BASE
    },
];

/// The scenarios named in a comma-separated list, in the order given; all when `None`.
pub fn select(list: Option<&str>) -> Result<Vec<Scenario>> {
    let Some(list) = list else {
        return Ok(SCENARIOS.to_vec());
    };
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match SCENARIOS.iter().find(|s| s.name == name) {
            Some(s) => out.push(*s),
            None => {
                let known: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                bail!("unknown scenario {name:?}; known: {}", known.join(", "));
            }
        }
    }
    if out.is_empty() {
        bail!("no scenario selected");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selectable() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(SCENARIOS[i + 1..].iter().all(|o| o.name != s.name));
        }
        let picked = select(Some("body_64k, small_get")).unwrap();
        assert_eq!(picked[0].name, "body_64k");
        assert_eq!(picked[1].name, "small_get");
        assert!(select(Some("nope")).is_err());
        assert_eq!(select(None).unwrap().len(), SCENARIOS.len());
    }
}
