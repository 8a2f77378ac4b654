//! The admin side of metrics and access logs: the registry the scrapes sum, and the control of
//! the access-log thread.

use std::sync::{Arc, Mutex};

use ringway_proxy::access_log::{AccessLog, Destination, LogQueue};
use ringway_proxy::metrics::{Registry, WorkerMetrics};
use ringway_proxy::traces::{Exporter, SpanSender, TraceCounts, Tracing};

/// Shared by the admin thread, the admin API and the signal thread.
pub struct Telemetry {
    registry: Mutex<Registry>,
    log: Mutex<Option<AccessLog>>,
    /// The destination from `--access-log` (it wins over the configuration's `access_log`).
    flag: Option<Option<Destination>>,
    /// The per-API statistics (`None` with `--no-stats`).
    pub stats: Option<Arc<Mutex<crate::stats::StatsStore>>>,
    stats_thread: Mutex<Option<crate::stats::StatsThread>>,
    /// The trace exporter and the settings it was last given.
    traces: Mutex<(Exporter, Option<Tracing>)>,
    pub trace_counts: Arc<TraceCounts>,
}

/// What each worker is given.
pub struct WorkerTelemetry {
    pub metrics: WorkerMetrics,
    pub log: Option<LogQueue>,
    /// Where sampled requests' spans go.
    pub traces: SpanSender,
}

impl Telemetry {
    /// Starts the log thread with `ring_bytes` per worker, and with `stats` the statistics
    /// thread; `flag` is `--access-log` when given.
    pub fn start(
        workers: usize,
        ring_bytes: usize,
        flag: Option<&str>,
        stats: bool,
    ) -> anyhow::Result<(Arc<Telemetry>, Vec<WorkerTelemetry>)> {
        let flag = flag.map(Destination::parse).transpose().map_err(anyhow::Error::msg)?;
        // A few seconds of every worker's ticks may wait for the statistics thread.
        let (tick_tx, tick_rx) = crossbeam_channel::bounded(workers.max(1) * 8);
        let stats_thread = if stats { Some(crate::stats::start(tick_rx)?) } else { None };
        let store = stats_thread.as_ref().map(|t| t.store.clone());
        let (registry, halves) = Registry::new(workers, env!("CARGO_PKG_VERSION"), stats.then_some(tick_tx));
        let (log, queues) = AccessLog::start(workers, ring_bytes)?;
        let (exporter, spans) = Exporter::start()?;
        let each = halves.into_iter().zip(queues).map(|(metrics, log)| WorkerTelemetry {
            metrics,
            log: Some(log),
            traces: spans.clone(),
        });
        let t = Telemetry {
            registry: Mutex::new(registry),
            log: Mutex::new(Some(log)),
            flag,
            stats: store,
            stats_thread: Mutex::new(stats_thread),
            trace_counts: exporter.counts.clone(),
            traces: Mutex::new((exporter, None)),
        };
        Ok((Arc::new(t), each.collect()))
    }

    /// Sends the access log where the flag says, else where the configuration says.
    pub fn configure(&self, from_config: Option<&Destination>) -> std::io::Result<()> {
        let to = match &self.flag {
            Some(d) => d.clone(),
            None => from_config.cloned(),
        };
        match self.log.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(log) => log.set(to),
            None => Ok(()),
        }
    }

    /// Ships the records as the configuration says (`None`: stop shipping).
    pub fn ship(&self, to: Option<&ringway_proxy::shipping::Shipping>) {
        if let Some(log) = self.log.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            log.ship(to.cloned());
        }
    }

    /// Exports spans as the configuration says (`None`: not tracing); a no-op when unchanged.
    pub fn trace(&self, to: Option<&Tracing>) {
        if let Ok(mut t) = self.traces.lock() {
            if t.1.as_ref() != to {
                t.0.configure(to);
                t.1 = to.cloned();
            }
        }
    }

    /// Where spans go, when tracing.
    pub fn tracing(&self) -> Option<Tracing> {
        self.traces.lock().ok()?.1.clone()
    }

    /// The shipper's figures: where to, lines shipped, dropped, failed batches.
    pub fn shipping(&self) -> Option<(String, u64, u64, u64)> {
        let log = self.log.lock().ok()?;
        let log = log.as_ref()?;
        let c = &log.shipped;
        let to = log
            .shipping()
            .map(|s| format!("{}://{}{}", if s.tls.is_some() { "https" } else { "http" }, s.host, s.path))?;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        Some((to, get(&c.shipped), get(&c.dropped), get(&c.failed_batches)))
    }

    /// Whether `--access-log` decides where the log goes.
    pub fn flag_set(&self) -> bool {
        self.flag.is_some()
    }

    /// Reopens the access-log file (SIGHUP).
    pub fn reopen(&self) {
        if let Some(log) = self.log.lock().ok().as_deref().and_then(Option::as_ref) {
            log.reopen();
        }
    }

    /// Where lines go now, as text (`None`: off).
    pub fn destination(&self) -> Option<String> {
        let log = self.log.lock().ok()?;
        match log.as_ref()?.destination()? {
            Destination::Stdout => Some("stdout".into()),
            Destination::File(p) => Some(p.display().to_string()),
        }
    }

    /// Access-log records dropped on full queues, over every worker.
    pub fn log_dropped(&self) -> u64 {
        let lost = self.log.lock().ok().and_then(|l| l.as_ref().map(AccessLog::lost)).unwrap_or(0);
        self.registry.lock().map(|r| r.log_dropped()).unwrap_or(0) + lost
    }

    /// The Prometheus exposition of every worker's counters.
    pub fn render(&self, out: &mut String) {
        if let Ok(mut r) = self.registry.lock() {
            r.render(out);
        }
        let counts = self.log.lock().ok().and_then(|l| l.as_ref().map(|l| l.shipped.clone()));
        if let Some(c) = counts {
            use std::fmt::Write;
            use std::sync::atomic::Ordering::Relaxed;
            for (name, help, v) in [
                ("ringway_log_shipping_shipped_total", "Access-log records the collector accepted.", &c.shipped),
                (
                    "ringway_log_shipping_dropped_total",
                    "Access-log records dropped on the shipper's full queue.",
                    &c.dropped,
                ),
                (
                    "ringway_log_shipping_failed_batches_total",
                    "Batches the collector refused or did not take (each is sent again).",
                    &c.failed_batches,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
            }
        }
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.trace_counts;
        for (name, help, v) in [
            ("ringway_trace_spans_exported_total", "Spans the trace collector accepted.", &c.exported),
            ("ringway_trace_spans_dropped_total", "Spans dropped on a full queue or a refused export.", &c.dropped),
            (
                "ringway_trace_failed_exports_total",
                "Trace exports that failed (each is tried again).",
                &c.failed_exports,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        }
    }

    /// Writes what is queued and stops the log thread; waits for the statistics thread, which
    /// ends with the workers' senders (after the workers stopped).
    pub fn stop(&self) {
        if let Some(log) = self.log.lock().ok().and_then(|mut l| l.take()) {
            log.stop();
        }
        if let Some(mut t) = self.stats_thread.lock().ok().and_then(|mut j| j.take()) {
            t.stop();
        }
        if let Ok(mut t) = self.traces.lock() {
            t.0.stop();
        }
    }
}
