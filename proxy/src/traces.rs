//! OpenTelemetry traces: `tracing` in the document, the sampling decision a worker makes per
//! request, the spans a sampled request leaves (a server span, and a client span per upstream
//! attempt), and the `trace-exporter` thread that sends them as OTLP/HTTP protobuf.
//!
//! Sampling is parent-based: a request that carries a `traceparent` is sampled when its
//! sampled flag is set; a request that starts a trace is sampled with the configured ratio.
//! The trace context goes upstream either way. A worker only decides and, for a sampled
//! request, hands a [`Finished`] to the exporter over a bounded channel (a full channel drops
//! it, counted); encoding and sending run on the exporter thread, which keeps retrying a
//! collector that is down while new spans past the channel's room are dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use ringway_policy::ConfigErrors;

use crate::collector::Sent;
use crate::otlp;
use crate::shipping::{LogShippingSpec, Shipping};

/// `tracing` in the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// `http://host:port/v1/traces`.
    pub otlp_endpoint: String,
    /// The share of new traces recorded, 0 to 1 (default 0.01); a request that carries a trace
    /// follows its parent's sampled flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans (default `ringway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Spans per export at most (default 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<u32>,
    /// An export leaves at least this often when spans wait (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_every: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<bool>,
    /// Header fields sent with every export.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// TLS settings of an `https://` endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::collector::TlsSpec>,
}

/// Checked tracing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Where and how exports go (the shipping settings' fields; `queue_max` unused).
    pub post: Shipping,
    /// A new trace is sampled when a random u64 falls below this.
    pub threshold: u64,
    pub ratio: f64,
    pub service_name: String,
}

impl Tracing {
    /// Checks `spec` (paths under `tracing`).
    pub fn compile(spec: &TracingSpec, errors: &mut ConfigErrors) -> Option<Tracing> {
        let before = errors.0.len();
        let ratio = spec.sample_ratio.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&ratio) {
            errors.push("tracing.sample_ratio", format!("{ratio} is out of range: 0 to 1"));
        }
        let service_name = spec.service_name.clone().unwrap_or_else(|| "ringway".into());
        if service_name.is_empty() || service_name.len() > 256 {
            errors.push("tracing.service_name", "must be 1 to 256 characters");
        }
        // The endpoint and batching rules are the log shipper's: checked the same way, with
        // their problems named under `tracing`.
        let as_shipping = LogShippingSpec {
            endpoint: spec.otlp_endpoint.clone(),
            format: None,
            service_name: None,
            tls: spec.tls.clone(),
            batch_max: Some(spec.batch_max.unwrap_or(512)),
            flush_every: spec.flush_every.clone(),
            gzip: spec.gzip,
            queue_max: None,
            headers: spec.headers.clone(),
        };
        let mut inner = ConfigErrors::default();
        let post = Shipping::compile(&as_shipping, &mut inner);
        for mut p in inner.0 {
            p.path = p.path.replacen("log_shipping.endpoint", "tracing.otlp_endpoint", 1).replacen(
                "log_shipping",
                "tracing",
                1,
            );
            errors.0.push(p);
        }
        let mut post = post?;
        // An endpoint without a path posts where OTLP/HTTP collectors take traces.
        if post.path == "/" {
            post.path = "/v1/traces".into();
        }
        let threshold = if ratio >= 1.0 { u64::MAX } else { (ratio * u64::MAX as f64) as u64 };
        (errors.0.len() == before).then_some(Tracing { post, threshold, ratio, service_name })
    }
}

/// One upstream attempt of a sampled request: its client span.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    pub span_id: [u8; 8],
    pub target: SocketAddr,
    pub started: monoio::time::Instant,
    pub ended: Option<monoio::time::Instant>,
    /// The upstream's status (0: none).
    pub status: u16,
    pub error: Option<&'static str>,
}

/// A sampled request, ended: what its spans say.
#[derive(Debug)]
pub struct Finished {
    pub trace_id: [u8; 16],
    pub server_id: [u8; 8],
    /// The client's span, when the trace came in with the request.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub method: &'static str,
    pub host: Box<str>,
    /// Path and query as received.
    pub target: Box<str>,
    pub http10: bool,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub client: IpAddr,
    /// Client spans, with their times as Unix nanoseconds.
    pub attempts: Vec<(AttemptSpan, u64, u64)>,
}

/// The figures of the exporter, for the metrics and the status.
#[derive(Debug, Default)]
pub struct TraceCounts {
    pub exported: AtomicU64,
    /// Spans dropped on a full queue or a refused export.
    pub dropped: AtomicU64,
    pub failed_exports: AtomicU64,
}

/// What a worker is given: where finished sampled requests go.
#[derive(Debug, Clone)]
pub struct SpanSender {
    tx: Sender<Finished>,
    counts: Arc<TraceCounts>,
}

impl SpanSender {
    /// Hands a finished request over; never waits (a full queue drops it, counted).
    pub fn send(&self, f: Finished) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(f) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Requests waiting for the exporter at most; past it, spans are dropped and counted.
pub const QUEUE: usize = 16_384;

/// The admin's handle on the exporter thread.
#[derive(Debug)]
pub struct Exporter {
    settings: Sender<Option<Tracing>>,
    pub counts: Arc<TraceCounts>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts the `trace-exporter` thread (idle until settings arrive) and makes the sender
    /// the workers share.
    pub fn start() -> std::io::Result<(Exporter, SpanSender)> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let (settings, settings_rx) = crossbeam_channel::unbounded();
        let counts = Arc::new(TraceCounts::default());
        let c = counts.clone();
        let node = otlp::node_name();
        let thread = ringway_runtime::spawn_background("trace-exporter", move || {
            ringway_runtime::background_thread();
            export(rx, settings_rx, &c, &node)
        })?;
        Ok((Exporter { settings, counts: counts.clone(), thread: Some(thread) }, SpanSender { tx, counts }))
    }

    /// Exports to where `to` says from now on (`None`: nothing is exported; the workers then
    /// sample nothing either, their snapshot having no tracing).
    pub fn configure(&self, to: Option<&Tracing>) {
        let _ = self.settings.send(to.cloned());
    }

    /// Ends the thread once the workers' senders are gone (after the workers stopped).
    pub fn stop(&mut self) {
        let (dead, _) = crossbeam_channel::unbounded();
        drop(std::mem::replace(&mut self.settings, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The exporter thread: gathers spans, encodes, sends, retries with backoff.
fn export(rx: Receiver<Finished>, settings: Receiver<Option<Tracing>>, counts: &TraceCounts, node: &str) {
    let mut current: Option<Tracing> = None;
    let mut batch: Vec<Finished> = Vec::new();
    let mut conn = None;
    let mut body = Vec::with_capacity(64 * 1024);
    let mut scratch = String::with_capacity(256);
    let mut backoff = Duration::from_millis(100);
    let mut retry_at: Option<Instant> = None;
    loop {
        loop {
            match settings.try_recv() {
                Ok(s) => {
                    if s.as_ref().map(|t| &t.post) != current.as_ref().map(|t| &t.post) {
                        conn = None;
                    }
                    current = s;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                // The admin is gone: what is left is dropped.
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        }
        let Some(t) = current.as_ref() else {
            // Not exporting: sleep until settings or spans come (no timer: an idle exporter
            // costs a busy core nothing). A span that arrives is kept when settings came first
            // (both may be waiting), else dropped and counted.
            counts.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
            crossbeam_channel::select! {
                recv(settings) -> s => match s {
                    Ok(s) => current = s,
                    Err(_) => return,
                },
                recv(rx) -> f => match f {
                    Ok(f) => {
                        while let Ok(s) = settings.try_recv() {
                            current = s;
                        }
                        if current.is_some() {
                            batch.push(f);
                        } else {
                            counts.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => return,
                },
            }
            continue;
        };
        // Gather: up to batch_max, or until flush_every after the first span.
        let wait_until = retry_at.unwrap_or_else(|| Instant::now() + Duration::from_millis(200));
        if batch.is_empty() {
            match rx.recv_deadline(wait_until) {
                Ok(f) => batch.push(f),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let until = Instant::now() + t.post.flush_every;
            while batch.len() < t.post.batch_max {
                match rx.recv_deadline(until) {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
        } else if let Some(at) = retry_at {
            // A failed export waits out its backoff; spans arriving meanwhile wait in the
            // channel (or are dropped once it is full).
            let now = Instant::now();
            if now < at {
                std::thread::sleep((at - now).min(Duration::from_millis(50)));
                continue;
            }
        }
        body.clear();
        encode(&batch, t, node, &mut body, &mut scratch);
        match crate::collector::send(&t.post, &mut conn, &[&body[..]], "application/x-protobuf") {
            Ok(()) => {
                counts.exported.fetch_add(spans_in(&batch), Ordering::Relaxed);
                batch.clear();
                backoff = Duration::from_millis(100);
                retry_at = None;
            }
            Err(Sent::Refused(status)) => {
                log::error!(
                    "trace export to {}: refused ({status}); {} span(s) dropped",
                    t.post.addr,
                    spans_in(&batch)
                );
                counts.failed_exports.fetch_add(1, Ordering::Relaxed);
                counts.dropped.fetch_add(spans_in(&batch), Ordering::Relaxed);
                batch.clear();
                conn = None;
                retry_at = None;
            }
            Err(Sent::Failed(e)) => {
                counts.failed_exports.fetch_add(1, Ordering::Relaxed);
                log::warn!("trace export to {}: {e}; trying again in {backoff:?}", t.post.addr);
                conn = None;
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn spans_in(batch: &[Finished]) -> u64 {
    batch.iter().map(|f| 1 + f.attempts.len() as u64).sum()
}

/// Writes the export request for `batch` into `out`: one resource (the service on this node),
/// one scope. Written field by field (OTLP's `ExportTraceServiceRequest` wire format), with
/// no allocation per span but the scratch text it reuses.
pub fn encode(batch: &[Finished], t: &Tracing, node: &str, out: &mut Vec<u8>, scratch: &mut String) {
    use crate::otlp::pb;
    // ExportTraceServiceRequest.resource_spans = 1
    pb::nested(out, 1, |o| {
        // ResourceSpans.resource = 1
        pb::nested(o, 1, |o| {
            pb::attr_str(o, 1, "service.name", &t.service_name);
            pb::attr_str(o, 1, "host.name", node);
            pb::attr_str(o, 1, "service.instance.id", node);
        });
        // ResourceSpans.scope_spans = 2
        pb::nested(o, 2, |o| {
            pb::nested(o, 1, |o| {
                pb::string(o, 1, "ringway");
                pb::string(o, 2, env!("CARGO_PKG_VERSION"));
            });
            for f in batch {
                spans(f, o, scratch);
            }
        });
    });
}

/// The server span of `f` and its client spans (`ScopeSpans.spans = 2`), per the HTTP
/// semantic conventions.
fn spans(f: &Finished, o: &mut Vec<u8>, scratch: &mut String) {
    use crate::otlp::pb;
    use std::fmt::Write;
    let path = f.target.split_once('?').map_or(&*f.target, |(p, _)| p);
    let version = if f.http10 { "1.0" } else { "1.1" };
    // Server spans: only a 5xx (or no answer at all) is an error.
    let failed = f.status >= 500 || (f.status == 0 && f.error.is_some());
    let flags =
        u32::from(f.flags) | otlp::FLAG_PARENT_KNOWN | if f.parent_id.is_some() { otlp::FLAG_PARENT_REMOTE } else { 0 };
    pb::nested(o, 2, |o| {
        pb::bytes(o, 1, &f.trace_id);
        pb::bytes(o, 2, &f.server_id);
        if let Some(p) = &f.parent_id {
            pb::bytes(o, 4, p);
        }
        pb::string(o, 5, f.method);
        pb::int(o, 6, i64::from(otlp::SPAN_KIND_SERVER));
        pb::fixed64(o, 7, f.start_unix_ns);
        pb::fixed64(o, 8, f.end_unix_ns);
        pb::attr_str(o, 9, "http.request.method", f.method);
        pb::attr_str(o, 9, "url.path", path);
        pb::attr_str(o, 9, "url.scheme", "http");
        pb::attr_str(o, 9, "network.protocol.version", version);
        scratch.clear();
        let _ = write!(scratch, "{}", f.client);
        pb::attr_str(o, 9, "client.address", scratch);
        if !f.host.is_empty() {
            let (host, port) = crate::addr::split_host(&f.host);
            pb::attr_str(o, 9, "server.address", host);
            if let Some(p) = port {
                pb::attr_int(o, 9, "server.port", i64::from(p));
            }
        }
        if f.status != 0 {
            pb::attr_int(o, 9, "http.response.status_code", i64::from(f.status));
        }
        if let Some(r) = &f.route {
            pb::attr_str(o, 9, "ringway.route", r);
        }
        if let Some(u) = &f.upstream {
            pb::attr_str(o, 9, "ringway.upstream", u);
        }
        if failed {
            error_type(o, f.error, f.status, scratch);
            pb::status_error(o, f.error.unwrap_or(""));
        }
        pb::fixed32(o, 16, flags);
    });
    for (i, (a, start, end)) in f.attempts.iter().enumerate() {
        // Client spans: a 4xx or 5xx, or no answer, is an error.
        let failed = a.status >= 400 || (a.status == 0 && a.error.is_some());
        pb::nested(o, 2, |o| {
            pb::bytes(o, 1, &f.trace_id);
            pb::bytes(o, 2, &a.span_id);
            pb::bytes(o, 4, &f.server_id);
            pb::string(o, 5, f.method);
            pb::int(o, 6, i64::from(otlp::SPAN_KIND_CLIENT));
            pb::fixed64(o, 7, *start);
            pb::fixed64(o, 8, *end);
            pb::attr_str(o, 9, "http.request.method", f.method);
            scratch.clear();
            let _ = write!(scratch, "{}", a.target.ip());
            pb::attr_str(o, 9, "server.address", scratch);
            pb::attr_int(o, 9, "server.port", i64::from(a.target.port()));
            scratch.clear();
            let _ = write!(scratch, "http://{}{}", a.target, f.target);
            pb::attr_str(o, 9, "url.full", scratch);
            pb::attr_str(o, 9, "network.protocol.version", "1.1");
            if i > 0 {
                pb::attr_int(o, 9, "http.request.resend_count", i as i64);
            }
            if a.status != 0 {
                pb::attr_int(o, 9, "http.response.status_code", i64::from(a.status));
            }
            if failed {
                error_type(o, a.error, a.status, scratch);
                pb::status_error(o, a.error.unwrap_or(""));
            }
            pb::fixed32(o, 16, u32::from(f.flags) | otlp::FLAG_PARENT_KNOWN);
        });
    }
}

/// `error.type`: the gateway's error code, else the status code.
fn error_type(o: &mut Vec<u8>, error: Option<&str>, status: u16, scratch: &mut String) {
    use std::fmt::Write;
    let v = match error {
        Some(e) => e,
        None => {
            scratch.clear();
            let _ = write!(scratch, "{status}");
            scratch.as_str()
        }
    };
    crate::otlp::pb::attr_str(o, 9, "error.type", v);
}
