//! The result of one load run: counters, throughput and latency percentiles, printed as a
//! table or as JSON (the `compare` subcommand reads the JSON form).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::client::Stats;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest response.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Everything a load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// Target URL.
    pub url: String,
    /// `closed` (next request when the previous answer is read) or `open` (fixed schedule).
    pub mode: String,
    /// Target request rate in open-loop mode.
    pub rate: Option<f64>,
    /// HTTP method.
    pub method: String,
    /// Request body size in bytes.
    pub body_size: usize,
    /// Connections (slots) used.
    pub connections: usize,
    /// Threads used.
    pub threads: usize,
    /// Whether every request used a new connection.
    pub new_connection_per_request: bool,
    /// Wall time from start until the last slot finished, in seconds.
    pub elapsed_s: f64,
    /// Completed responses (any status).
    pub requests: u64,
    /// Failed attempts (connect, I/O, protocol, early close, timeout).
    pub errors: u64,
    /// Responses with a status outside 2xx.
    pub non_2xx: u64,
    /// Non-2xx responses by status code.
    #[serde(default)]
    pub non_2xx_statuses: BTreeMap<String, u64>,
    /// Completed responses per second of elapsed time.
    pub throughput_rps: f64,
    /// Response body bytes received.
    pub body_bytes: u64,
    /// Latency percentiles of completed responses, in microseconds.
    pub latency_us: Latency,
    /// Failed attempts by kind.
    pub error_kinds: BTreeMap<String, u64>,
}

/// Run settings echoed into the report.
pub struct RunInfo {
    /// Target URL.
    pub url: String,
    /// Target rate in open-loop mode.
    pub rate: Option<f64>,
    /// HTTP method.
    pub method: String,
    /// Request body size.
    pub body_size: usize,
    /// Connections.
    pub connections: usize,
    /// Threads.
    pub threads: usize,
    /// New connection per request.
    pub new_connection: bool,
}

impl LoadReport {
    /// Builds the report from merged thread statistics.
    pub fn new(info: RunInfo, stats: &Stats, elapsed_s: f64) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        let h = &stats.hist;
        let latency = if stats.requests == 0 {
            Latency::default()
        } else {
            Latency {
                p50: us(h.value_at_quantile(0.50)),
                p90: us(h.value_at_quantile(0.90)),
                p99: us(h.value_at_quantile(0.99)),
                p999: us(h.value_at_quantile(0.999)),
                max: us(h.max()),
                mean: h.mean() / 1000.0,
            }
        };
        LoadReport {
            url: info.url,
            mode: if info.rate.is_some() { "open" } else { "closed" }.to_string(),
            rate: info.rate,
            method: info.method,
            body_size: info.body_size,
            connections: info.connections,
            threads: info.threads,
            new_connection_per_request: info.new_connection,
            elapsed_s,
            requests: stats.requests,
            errors: stats.error_count(),
            non_2xx: stats.non_2xx,
            non_2xx_statuses: stats.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            throughput_rps: if elapsed_s > 0.0 { stats.requests as f64 / elapsed_s } else { 0.0 },
            body_bytes: stats.body_bytes,
            latency_us: latency,
            error_kinds: stats.errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// A human-readable summary table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r:.0} req/s"),
            None => "closed loop".to_string(),
        };
        let conn = if self.new_connection_per_request { "new connection per request" } else { "keep-alive" };
        let _ = writeln!(out, "target      {} {}", self.method, self.url);
        let _ =
            writeln!(out, "mode        {mode}, {} connections ({conn}), {} threads", self.connections, self.threads);
        let _ = writeln!(out, "elapsed     {:.2} s", self.elapsed_s);
        let _ = writeln!(out, "requests    {}", self.requests);
        let _ = writeln!(out, "throughput  {:.0} req/s", self.throughput_rps);
        let _ = writeln!(out, "errors      {}", self.errors);
        for (kind, n) in &self.error_kinds {
            let _ = writeln!(out, "  {kind:<10}{n}");
        }
        let _ = writeln!(out, "non-2xx     {}", self.non_2xx);
        for (status, n) in &self.non_2xx_statuses {
            let _ = writeln!(out, "  {status:<10}{n}");
        }
        let l = &self.latency_us;
        let _ = writeln!(out, "latency     p50      p90      p99      p99.9    max");
        let _ = writeln!(out, "  (us)      {:<8.1} {:<8.1} {:<8.1} {:<8.1} {:.1}", l.p50, l.p90, l.p99, l.p999, l.max);
        out
    }
}
