//! Log shipping: the access-log lines (one JSON record per request) sent in batches to a
//! collector over HTTP, from a `log-shipper` thread, never from a worker.
//!
//! The log thread, which drains the workers' queues, gathers their blocks of lines into
//! batches of `batch_max` ([`crate::shipper::Shipper::offer`]) and hands each over when it is
//! full or its first line has waited `flush_every` ([`crate::shipper::Shipper::hand_over`]) to
//! the shipper's queue, bounded in lines: past `queue_max`, the newest lines are dropped and
//! counted. The shipper POSTs each batch as NDJSON (gzipped when asked) or OTLP and, when the
//! collector is down or answers an error, tries the same batch again with a growing backoff, on
//! a new connection. So lines go out in the order each worker wrote them, a batch is sent again
//! only after a failure and never twice on one connection, and memory is bounded by the queue
//! while the collector is away.

use std::net::SocketAddr;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use ringway_policy::{is_valid_header_name, is_valid_header_value, parse_duration, ConfigErrors};

/// `log_shipping` in the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogShippingSpec {
    /// `http://host:port/path` or `https://host:port/path`.
    pub endpoint: String,
    /// TLS settings of an `https://` endpoint (default: verified against the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::collector::TlsSpec>,
    /// `ndjson` (the default: the log's JSON lines) or `otlp` (OTLP/HTTP protobuf logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// `service.name` of OTLP log records (default `ringway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Lines per batch at most (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<u32>,
    /// A batch leaves at least this often when lines wait (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_every: Option<String>,
    /// Gzip the batches (`Content-Encoding: gzip`; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
    /// Lines waiting at most (default 100000); past it, lines are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_max: Option<u32>,
    /// Header fields sent with every batch (an API key for the collector, say).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Checked shipping settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Shipping {
    /// The collector's address, its `Host` and the path posted to.
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub batch_max: usize,
    pub flush_every: Duration,
    pub gzip: bool,
    pub queue_max: usize,
    pub headers: Vec<(String, String)>,
    /// TLS to the collector (`https://` endpoints).
    pub tls: Option<crate::collector::TlsClient>,
    /// `Some(service name)`: batches go as OTLP logs; `None`: as JSON lines.
    pub otlp: Option<String>,
}

impl Shipping {
    /// Checks `spec` (paths under `log_shipping`).
    pub fn compile(spec: &LogShippingSpec, errors: &mut ConfigErrors) -> Option<Shipping> {
        let before = errors.0.len();
        let p = "log_shipping";
        let otlp = match spec.format.as_deref() {
            None | Some("ndjson") => false,
            Some("otlp") => true,
            Some(other) => {
                errors.push(format!("{p}.format"), format!("{other:?}: expected \"ndjson\" or \"otlp\""));
                false
            }
        };
        let service = spec.service_name.clone().unwrap_or_else(|| "ringway".into());
        if service.is_empty() || service.len() > 256 {
            errors.push(format!("{p}.service_name"), "must be 1 to 256 characters");
        }
        let endpoint = parse_endpoint(&spec.endpoint).map_err(|e| errors.push(format!("{p}.endpoint"), e)).ok();
        let count = |v: Option<u32>, default: u32, max: u32, name: &str, errors: &mut ConfigErrors| {
            let v = v.unwrap_or(default);
            if v == 0 || v > max {
                errors.push(format!("{p}.{name}"), format!("{v} is out of range: 1 to {max}"));
            }
            v as usize
        };
        let batch_max = count(spec.batch_max, 1000, 100_000, "batch_max", errors);
        let queue_max = count(spec.queue_max, 100_000, 10_000_000, "queue_max", errors);
        let flush_every = match spec.flush_every.as_deref().map(parse_duration) {
            None => Duration::from_secs(1),
            Some(Ok(d)) if !d.is_zero() && d <= Duration::from_secs(60) => d,
            Some(Ok(_)) => {
                errors.push(format!("{p}.flush_every"), "must be between 1ms and 60s");
                Duration::from_secs(1)
            }
            Some(Err(e)) => {
                errors.push(format!("{p}.flush_every"), e);
                Duration::from_secs(1)
            }
        };
        for (n, v) in &spec.headers {
            let own = ["content-length", "host", "transfer-encoding", "content-type", "content-encoding", "connection"];
            if !is_valid_header_name(n) || own.contains(&n.to_ascii_lowercase().as_str()) {
                errors.push(format!("{p}.headers.{n}"), "not a header field that can be set here");
            } else if !is_valid_header_value(v.as_bytes()) {
                errors.push(format!("{p}.headers.{n}"), "invalid header value");
            }
        }
        let (addr, host, mut path, https) = endpoint?;
        // OTLP without a path posts where OTLP/HTTP collectors take logs.
        if otlp && path == "/" {
            path = "/v1/logs".into();
        }
        let tls = match (https, &spec.tls) {
            (true, t) => {
                let name = crate::addr::split_host(&host).0;
                crate::collector::TlsClient::compile(&t.clone().unwrap_or_default(), name, &format!("{p}.tls"), errors)
            }
            (false, Some(_)) => {
                errors.push(format!("{p}.tls"), "TLS settings need an https:// endpoint");
                None
            }
            (false, None) => None,
        };
        (errors.0.len() == before).then(|| Shipping {
            addr,
            host,
            path,
            batch_max,
            flush_every,
            gzip: spec.gzip.unwrap_or(false),
            queue_max,
            headers: spec.headers.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
            otlp: otlp.then_some(service),
            tls,
        })
    }
}

/// `http[s]://host:port/path` into its address, `Host`, path and whether it is `https`.
pub(crate) fn parse_endpoint(url: &str) -> Result<(SocketAddr, String, String, bool), String> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(format!("{url:?}: expected http://host:port/path or https://host:port/path")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{url:?}: expected http://host:port/path"));
    }
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let addr = crate::addr::resolve(&with_port)?;
    Ok((addr, authority.to_string(), path.to_string(), https))
}

/// Figures of the shipper, for the metrics and the status.
#[derive(Debug, Default)]
pub struct ShippingCounts {
    /// Lines sent and acknowledged by the collector.
    pub shipped: AtomicU64,
    /// Lines dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Batches that failed (each is tried again).
    pub failed_batches: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_with_their_paths() {
        let mut errors = ConfigErrors::default();
        let spec = LogShippingSpec {
            endpoint: "ftp://x/".into(),
            format: Some("xml".into()),
            batch_max: Some(0),
            flush_every: Some("2m".into()),
            headers: [("bad name".to_string(), "v".to_string())].into(),
            ..LogShippingSpec::default()
        };
        assert!(Shipping::compile(&spec, &mut errors).is_none());
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "log_shipping.format",
            "log_shipping.endpoint",
            "log_shipping.batch_max",
            "log_shipping.flush_every",
            "log_shipping.headers.bad name",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        let mut errors = ConfigErrors::default();
        let ok = LogShippingSpec { endpoint: "http://127.0.0.1:4318/v1/logs".into(), ..LogShippingSpec::default() };
        let s = Shipping::compile(&ok, &mut errors).expect("valid");
        assert_eq!((s.addr.port(), s.host.as_str(), s.path.as_str()), (4318, "127.0.0.1:4318", "/v1/logs"));
        assert_eq!((s.batch_max, s.queue_max, s.flush_every), (1000, 100_000, Duration::from_secs(1)));
    }
}
