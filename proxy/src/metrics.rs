//! Metrics: single-writer counters each worker keeps, and their sum in Prometheus' text format
//! on a scrape.
//!
//! A worker owns its counters and is their only writer (a relaxed load and store, no
//! read-modify-write, no shared cache line with another worker). A series is made the first
//! time a worker meets it, and announced to the scraper over a channel; the scraper (the admin
//! thread) reads every worker's counters and adds them up. Label values come only from
//! configuration ids and fixed sets (methods, status codes), so no client can add series.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::record::{CacheStatus, LimitOutcome, Record, METHODS};
use crate::stats::{Cell, Dim, Tick, TickSender};

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket is `+Inf`).
pub const BUCKETS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];

/// A latency histogram with fixed buckets and one writer.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    buckets: [Counter; BUCKETS_US.len() + 1],
    sum_us: Counter,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(BUCKETS_US.len());
        self.buckets[i].add(1);
        self.sum_us.add(us);
    }

    fn merge_into(&self, into: &mut HistogramSum) {
        for (a, b) in into.buckets.iter_mut().zip(&self.buckets) {
            *a += b.get();
        }
        into.sum_us += self.sum_us.get();
    }
}

#[derive(Debug, Default, Clone)]
struct HistogramSum {
    buckets: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
}

/// Requests of one route with one method and status.
#[derive(Debug)]
pub struct StatusSeries {
    route: Arc<str>,
    method: u8,
    status: u16,
    count: Counter,
}

/// The per-route series besides request counts.
#[derive(Debug)]
pub struct RouteSeries {
    route: Arc<str>,
    duration: Histogram,
    cache_hit: Counter,
    cache_miss: Counter,
    cache_expired: Counter,
    cache_bypass: Counter,
    cache_stale: Counter,
    rate_limited: Counter,
    concurrency_limited: Counter,
}

/// The series of one upstream.
#[derive(Debug)]
pub struct UpstreamSeries {
    upstream: Arc<str>,
    /// From the first attempt to the upstream's response head.
    head_time: Histogram,
    /// Attempts after the first.
    retries: Counter,
    /// Retries the budget refused.
    budget_exhausted: Counter,
}

/// The series of one target of an upstream.
#[derive(Debug)]
pub struct TargetSeries {
    upstream: Arc<str>,
    target: SocketAddr,
    connects: Counter,
    connect_errors: Counter,
    timeouts: Counter,
    reuses: Counter,
}

/// A series a worker made, announced to the scraper.
#[derive(Debug, Clone)]
pub enum Series {
    Status(Arc<StatusSeries>),
    Route(Arc<RouteSeries>),
    Upstream(Arc<UpstreamSeries>),
    Target(Arc<TargetSeries>),
}

/// The figures of one worker that are not per series.
#[derive(Debug, Default)]
pub struct WorkerGauges {
    /// The id of the worker that took these counters (its `worker` label, as in the log).
    pub worker: Counter,
    pub open_connections: Counter,
    pub inflight: Counter,
    pub revision: Counter,
    /// Access-log records dropped because the worker's log queue was full.
    pub log_dropped: Counter,
    /// Access-log records queued.
    pub log_queued: Counter,
    /// How late the worker's once-a-second timer last woke, in microseconds (event-loop lag).
    pub loop_lag_us: Counter,
    /// Seconds of statistics dropped because the statistics thread was behind.
    pub stats_dropped: Counter,
    /// TLS handshakes completed: full, and resumed from a ticket.
    pub tls_full: Counter,
    pub tls_resumed: Counter,
    /// TLS handshakes refused, by [`crate::tls::Refused`] in the order of `Refused::ALL`.
    pub tls_refused: [Counter; 7],
    /// HTTP/2 connections closed for a flood of control frames.
    pub h2_floods: Counter,
}

/// One worker's half: the gauges, and the channel new series are announced on.
#[derive(Debug)]
pub struct WorkerMetrics {
    pub id: usize,
    pub gauges: Arc<WorkerGauges>,
    announce: crossbeam_channel::Sender<Series>,
    /// Where the per-API statistics go once a second (`None`: not kept).
    stats: Option<TickSender>,
}

/// The scraper's half of one worker.
#[derive(Debug)]
struct WorkerView {
    gauges: Arc<WorkerGauges>,
    announced: crossbeam_channel::Receiver<Series>,
    known: Vec<Series>,
}

/// Every worker's metrics, summed on a scrape. Lives on the admin side.
#[derive(Debug)]
pub struct Registry {
    workers: Vec<WorkerView>,
    version: &'static str,
}

impl Registry {
    /// A registry and the halves for `workers` workers; with `stats`, the workers keep per-API
    /// statistics and send them there.
    pub fn new(workers: usize, version: &'static str, stats: Option<TickSender>) -> (Registry, Vec<WorkerMetrics>) {
        let mut views = Vec::with_capacity(workers);
        let mut halves = Vec::with_capacity(workers);
        for id in 0..workers {
            let (tx, rx) = crossbeam_channel::unbounded();
            let gauges = Arc::new(WorkerGauges::default());
            gauges.worker.set(id as u64);
            views.push(WorkerView { gauges: gauges.clone(), announced: rx, known: Vec::new() });
            halves.push(WorkerMetrics { id, gauges, announce: tx, stats: stats.clone() });
        }
        (Registry { workers: views, version }, halves)
    }

    /// Access-log records dropped, over every worker.
    pub fn log_dropped(&self) -> u64 {
        self.workers.iter().map(|v| v.gauges.log_dropped.get()).sum()
    }

    /// Appends the exposition (text format 0.0.4).
    pub fn render(&mut self, out: &mut String) {
        for v in self.workers.iter_mut() {
            while let Ok(s) = v.announced.try_recv() {
                v.known.push(s);
            }
        }
        render(&self.workers, self.version, out);
    }
}

/// Label values escaped as the text format asks (backslash, double quote, line feed).
/// A Prometheus label value, escaped.
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl std::fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => std::fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSum) {
    use std::fmt::Write;
    let mut cumulative = 0;
    for (i, n) in h.buckets.iter().enumerate() {
        cumulative += n;
        match BUCKETS_US.get(i) {
            Some(b) => {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}", *b as f64 / 1e6);
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

fn render(views: &[WorkerView], version: &str, out: &mut String) {
    use std::collections::BTreeMap;
    use std::fmt::Write;

    // Sum every worker's series by their labels.
    let mut requests: BTreeMap<(&str, u8, u16), u64> = BTreeMap::new();
    let mut routes: BTreeMap<&str, (HistogramSum, [u64; 7])> = BTreeMap::new();
    let mut upstreams: BTreeMap<&str, (HistogramSum, [u64; 2])> = BTreeMap::new();
    let mut targets: BTreeMap<(&str, SocketAddr), [u64; 4]> = BTreeMap::new();
    for s in views.iter().flat_map(|v| &v.known) {
        match s {
            Series::Status(s) => *requests.entry((&s.route, s.method, s.status)).or_default() += s.count.get(),
            Series::Route(r) => {
                let e = routes.entry(&r.route).or_default();
                r.duration.merge_into(&mut e.0);
                let c = [
                    &r.cache_hit,
                    &r.cache_miss,
                    &r.cache_expired,
                    &r.cache_bypass,
                    &r.cache_stale,
                    &r.rate_limited,
                    &r.concurrency_limited,
                ];
                for (a, b) in e.1.iter_mut().zip(c) {
                    *a += b.get();
                }
            }
            Series::Upstream(u) => {
                let e = upstreams.entry(&u.upstream).or_default();
                u.head_time.merge_into(&mut e.0);
                e.1[0] += u.retries.get();
                e.1[1] += u.budget_exhausted.get();
            }
            Series::Target(t) => {
                let e = targets.entry((&t.upstream, t.target)).or_default();
                for (a, b) in e.iter_mut().zip([&t.connects, &t.connect_errors, &t.timeouts, &t.reuses]) {
                    *a += b.get();
                }
            }
        }
    }

    header(out, "ringway_build_info", "gauge", "The running build; the value is always 1.");
    let _ = writeln!(out, "ringway_build_info{{version=\"{}\"}} 1", Esc(version));

    header(out, "ringway_requests_total", "counter", "Requests ended, by route (\"\": no route), method and status.");
    for ((route, method, status), n) in &requests {
        let m = METHODS[*method as usize];
        let _ =
            writeln!(out, "ringway_requests_total{{route=\"{}\",method=\"{m}\",status=\"{status}\"}} {n}", Esc(route));
    }

    header(
        out,
        "ringway_request_duration_seconds",
        "histogram",
        "Time from a request's first byte to its end, by route.",
    );
    for (route, (h, _)) in &routes {
        histogram(out, "ringway_request_duration_seconds", &format!("route=\"{}\"", Esc(route)), h);
    }
    header(
        out,
        "ringway_upstream_response_seconds",
        "histogram",
        "Time from the first attempt to the upstream's response head, by upstream.",
    );
    for (upstream, (h, _)) in &upstreams {
        histogram(out, "ringway_upstream_response_seconds", &format!("upstream=\"{}\"", Esc(upstream)), h);
    }
    let per_upstream = [
        ("ringway_upstream_retries_total", "Attempts after a request's first, by upstream.", 0),
        ("ringway_upstream_retry_budget_exhausted_total", "Retries the retry budget refused, by upstream.", 1),
    ];
    for (name, help, i) in per_upstream {
        header(out, name, "counter", help);
        for (upstream, (_, c)) in &upstreams {
            let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", Esc(upstream), c[i]);
        }
    }

    let cache = [("hit", 0), ("miss", 1), ("expired", 2), ("bypass", 3), ("stale", 4)];
    header(out, "ringway_cache_requests_total", "counter", "Requests on cached routes, by route and cache outcome.");
    for (route, (_, c)) in &routes {
        for (name, i) in cache {
            if c[i] > 0 {
                let _ =
                    writeln!(out, "ringway_cache_requests_total{{route=\"{}\",cache=\"{name}\"}} {}", Esc(route), c[i]);
            }
        }
    }
    header(out, "ringway_limit_refusals_total", "counter", "Requests refused by a limit, by route and limit.");
    for (route, (_, c)) in &routes {
        for (name, i) in [("rate_limit", 5), ("concurrency_limit", 6)] {
            if c[i] > 0 {
                let _ =
                    writeln!(out, "ringway_limit_refusals_total{{route=\"{}\",limit=\"{name}\"}} {}", Esc(route), c[i]);
            }
        }
    }

    let per_target = [
        ("ringway_upstream_connects_total", "New connections made to an upstream target.", 0),
        ("ringway_upstream_connect_errors_total", "Failed connection attempts to an upstream target.", 1),
        ("ringway_upstream_timeouts_total", "Connects and responses that ran out of time, by upstream target.", 2),
        ("ringway_upstream_pool_reuses_total", "Requests sent on a pooled connection, by upstream target.", 3),
    ];
    for (name, help, i) in per_target {
        header(out, name, "counter", help);
        for ((upstream, target), c) in &targets {
            let _ = writeln!(out, "{name}{{upstream=\"{}\",target=\"{target}\"}} {}", Esc(upstream), c[i]);
        }
    }

    type Gauge = fn(&WorkerGauges) -> f64;
    let per_worker: [(&str, &str, &str, Gauge); 6] = [
        ("ringway_open_connections", "gauge", "Client connections open, by worker.", |g| {
            g.open_connections.get() as f64
        }),
        ("ringway_inflight_requests", "gauge", "Requests in progress, by worker.", |g| g.inflight.get() as f64),
        ("ringway_config_revision", "gauge", "The configuration revision each worker serves.", |g| {
            g.revision.get() as f64
        }),
        (
            "ringway_access_log_dropped_total",
            "counter",
            "Access-log records dropped because a worker's log queue was full.",
            |g| g.log_dropped.get() as f64,
        ),
        ("ringway_event_loop_lag_seconds", "gauge", "How late the worker's once-a-second timer last woke.", |g| {
            g.loop_lag_us.get() as f64 / 1e6
        }),
        (
            "ringway_stats_dropped_total",
            "counter",
            "Seconds of per-API statistics a worker dropped because the statistics thread was behind.",
            |g| g.stats_dropped.get() as f64,
        ),
    ];
    for (name, kind, help, get) in per_worker {
        header(out, name, kind, help);
        for v in views {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", v.gauges.worker.get(), get(&v.gauges));
        }
    }
    let sum = |get: &dyn Fn(&WorkerGauges) -> u64| views.iter().map(|v| get(&v.gauges)).sum::<u64>();
    header(out, "ringway_tls_handshakes_total", "counter", "TLS handshakes completed, full or resumed.");
    let _ = writeln!(out, "ringway_tls_handshakes_total{{kind=\"full\"}} {}", sum(&|g| g.tls_full.get()));
    let _ = writeln!(out, "ringway_tls_handshakes_total{{kind=\"resumed\"}} {}", sum(&|g| g.tls_resumed.get()));
    header(out, "ringway_http2_floods_total", "counter", "HTTP/2 connections closed for a flood of control frames.");
    let _ = writeln!(out, "ringway_http2_floods_total {}", sum(&|g| g.h2_floods.get()));
    header(out, "ringway_tls_handshake_failures_total", "counter", "TLS handshakes refused, by reason.");
    for (i, r) in crate::tls::Refused::ALL.iter().enumerate() {
        let n = sum(&|g| g.tls_refused[i].get());
        let _ = writeln!(out, "ringway_tls_handshake_failures_total{{reason=\"{}\"}} {n}", r.reason());
    }
}

/// A worker's own index of its series, so a request finds its counters with one lookup.
#[derive(Debug, Default)]
pub struct LocalSeries {
    routes: FxHashMap<Box<str>, LocalRoute>,
    upstreams: FxHashMap<Box<str>, LocalUpstream>,
    /// This second's statistics by consumer: only those that called since the last flush
    /// (however many consumers the node has).
    consumers: FxHashMap<Arc<str>, Cell>,
}

#[derive(Debug)]
struct LocalRoute {
    route: Arc<RouteSeries>,
    statuses: Vec<Arc<StatusSeries>>,
    /// This second's statistics.
    stats: Cell,
}

#[derive(Debug)]
struct LocalUpstream {
    upstream: Arc<UpstreamSeries>,
    targets: Vec<Arc<TargetSeries>>,
    stats: Cell,
}

impl WorkerMetrics {
    /// Counters nobody reads (a worker made without a registry).
    pub fn detached(id: usize) -> WorkerMetrics {
        WorkerMetrics { id, gauges: Arc::default(), announce: crossbeam_channel::unbounded().0, stats: None }
    }

    /// Counts one ended request.
    pub fn observe(
        &self,
        local: &mut LocalSeries,
        rec: &Record,
        total: std::time::Duration,
        (route, consumer): (&str, Option<&str>),
        upstream: Option<(&str, SocketAddr)>,
    ) {
        let r = match local.routes.get_mut(route) {
            Some(r) => r,
            None => {
                let name: Arc<str> = Arc::from(route);
                let series = Arc::new(RouteSeries {
                    route: name,
                    duration: Histogram::default(),
                    cache_hit: Counter::default(),
                    cache_miss: Counter::default(),
                    cache_expired: Counter::default(),
                    cache_bypass: Counter::default(),
                    cache_stale: Counter::default(),
                    rate_limited: Counter::default(),
                    concurrency_limited: Counter::default(),
                });
                let _ = self.announce.send(Series::Route(series.clone()));
                local.routes.entry(Box::from(route)).or_insert(LocalRoute {
                    route: series,
                    statuses: Vec::new(),
                    stats: Cell::default(),
                })
            }
        };
        match r.statuses.iter().find(|s| s.status == rec.status && s.method == rec.method) {
            Some(s) => s.count.add(1),
            None => {
                let s = Arc::new(StatusSeries {
                    route: r.route.route.clone(),
                    method: rec.method,
                    status: rec.status,
                    count: Counter::default(),
                });
                s.count.add(1);
                let _ = self.announce.send(Series::Status(s.clone()));
                r.statuses.push(s);
            }
        }
        let keep = self.stats.is_some();
        if keep {
            let micros = total.as_micros().min(u128::from(u64::MAX)) as u64;
            r.stats.observe(rec, micros);
            if let Some(c) = consumer {
                let cell = match local.consumers.get_mut(c) {
                    Some(cell) => cell,
                    None => local.consumers.entry(Arc::from(c)).or_default(),
                };
                cell.observe(rec, micros);
            }
        }
        let rs = &r.route;
        rs.duration.observe(total);
        match rec.cache {
            CacheStatus::None => {}
            CacheStatus::Hit => rs.cache_hit.add(1),
            CacheStatus::Miss => rs.cache_miss.add(1),
            CacheStatus::Expired => rs.cache_expired.add(1),
            CacheStatus::Bypass => rs.cache_bypass.add(1),
            CacheStatus::Stale => rs.cache_stale.add(1),
        }
        match rec.limit {
            LimitOutcome::Passed => {}
            LimitOutcome::RateLimited => rs.rate_limited.add(1),
            LimitOutcome::ConcurrencyLimited => rs.concurrency_limited.add(1),
        }
        let Some((upstream, target)) = upstream else { return };
        if rec.attempts == 0 {
            return;
        }
        let u = match local.upstreams.get_mut(upstream) {
            Some(u) => u,
            None => {
                let series = Self::new_upstream_series(&self.announce, upstream);
                local.upstreams.entry(Box::from(upstream)).or_insert(LocalUpstream {
                    upstream: series,
                    targets: Vec::new(),
                    stats: Cell::default(),
                })
            }
        };
        if let Some(d) = rec.upstream_head {
            u.upstream.head_time.observe(d);
        }
        if keep {
            let took = rec.upstream_last.or(rec.upstream_head).unwrap_or(total);
            u.stats.observe(rec, took.as_micros().min(u128::from(u64::MAX)) as u64);
        }
        if rec.attempts > 1 {
            u.upstream.retries.add(u64::from(rec.attempts - 1));
        }
        if rec.budget_exhausted {
            u.upstream.budget_exhausted.add(1);
        }
        self.count_target_in(u, target, rec);
    }

    /// Hands this second's statistics to the statistics thread (once a second, from the
    /// worker's sweeper): the cells that saw requests, emptied. A full channel drops them
    /// (counted) rather than wait.
    pub fn flush_stats(&self, local: &mut LocalSeries, unix_s: u64, loop_lag_us: u64) {
        self.gauges.loop_lag_us.set(loop_lag_us);
        let Some(tx) = &self.stats else { return };
        let mut rows = Vec::new();
        for r in local.routes.values_mut().filter(|r| r.stats.counts.calls > 0) {
            rows.push((Dim::Route, r.route.route.clone(), r.stats.take()));
        }
        for u in local.upstreams.values_mut().filter(|u| u.stats.counts.calls > 0) {
            rows.push((Dim::Upstream, u.upstream.upstream.clone(), u.stats.take()));
        }
        for (id, cell) in local.consumers.drain() {
            rows.push((Dim::Consumer, id, cell));
        }
        let tick = Tick { worker: self.id, unix_s, loop_lag_us, rows };
        if tx.try_send(tick).is_err() {
            self.gauges.stats_dropped.add(1);
        }
    }

    /// Counts what the record says of the connections to `target` (new, failed, timed out,
    /// pooled): at the end of a request, and after each attempt that is tried again elsewhere.
    pub fn count_target(&self, local: &mut LocalSeries, upstream: &str, target: SocketAddr, rec: &Record) {
        let u = Self::upstream_series(&self.announce, local, upstream);
        self.count_target_in(u, target, rec);
    }

    fn count_target_in(&self, u: &mut LocalUpstream, target: SocketAddr, rec: &Record) {
        let t = match u.targets.iter().position(|t| t.target == target) {
            Some(i) => &u.targets[i],
            None => {
                let t = Arc::new(TargetSeries {
                    upstream: u.upstream.upstream.clone(),
                    target,
                    connects: Counter::default(),
                    connect_errors: Counter::default(),
                    timeouts: Counter::default(),
                    reuses: Counter::default(),
                });
                let _ = self.announce.send(Series::Target(t.clone()));
                u.targets.push(t);
                u.targets.last().expect("just pushed")
            }
        };
        t.connects.add(u64::from(rec.connects));
        t.connect_errors.add(u64::from(rec.connect_errors));
        t.timeouts.add(u64::from(rec.timeouts));
        t.reuses.add(u64::from(rec.reuses));
    }

    fn upstream_series<'l>(
        announce: &crossbeam_channel::Sender<Series>,
        local: &'l mut LocalSeries,
        upstream: &str,
    ) -> &'l mut LocalUpstream {
        if !local.upstreams.contains_key(upstream) {
            let series = Self::new_upstream_series(announce, upstream);
            local.upstreams.insert(
                Box::from(upstream),
                LocalUpstream { upstream: series, targets: Vec::new(), stats: Cell::default() },
            );
        }
        local.upstreams.get_mut(upstream).expect("just inserted")
    }

    fn new_upstream_series(announce: &crossbeam_channel::Sender<Series>, upstream: &str) -> Arc<UpstreamSeries> {
        let series = Arc::new(UpstreamSeries {
            upstream: Arc::from(upstream),
            head_time: Histogram::default(),
            retries: Counter::default(),
            budget_exhausted: Counter::default(),
        });
        let _ = announce.send(Series::Upstream(series.clone()));
        series
    }
}
