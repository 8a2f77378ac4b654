//! End-to-end tests: the gateway process against upstream servers started here, through real
//! sockets. Socket-level tests run under both drivers (`io_uring` and `epoll`).

mod access_log;
mod admin;
mod admin_edge;
mod admin_http;
mod admin_lib;
mod admin_metrics;
mod auth;
mod bodies;
mod cache;
mod consumers;
mod framing;
mod grpc;
mod hardening;
mod headers;
mod http2;
mod http2_upstream;
mod identity;
mod introspection;
mod jwt;
mod lb;
mod lifecycle;
mod limits;
mod metrics;
mod paths;
mod resilience;
mod routing;
mod shipping;
mod stats;
mod status_page;
pub(crate) mod tls;
mod tracing;
mod upstream_errors;
mod websocket;

use std::net::SocketAddr;

pub use ringway_tests::gateway::default_driver;

/// A config with one upstream `u` of the given targets and one catch-all route to it, plus
/// `extra` YAML appended under `routes:`.
pub fn single(targets: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let mut t = String::new();
    for a in targets {
        t.push_str(&format!("      - addr: \"{a}\"\n"));
    }
    format!(
        "upstreams:\n  u:\n    targets:\n{t}{upstream_extra}\nroutes:\n  all:\n    paths: [\"/*\"]\n    upstream: u\n{route_extra}\n"
    )
}

pub(crate) use ringway_tests::both_drivers;
