//! Per-API call statistics, the worker's half: each worker counts its ended requests in one
//! [`Cell`] per route and per upstream (kept beside its metrics series, so a request pays no
//! extra lookup), and once a second hands the cells that saw traffic to the node's statistics
//! thread as a [`Tick`] over a bounded channel. The store of 1-second and 1-minute buckets is
//! the admin's.
//!
//! Hot path: a few counter additions and one histogram record per cell; the cell's histogram
//! grows (rarely) only when a latency is larger than any it has seen.

use std::sync::Arc;

use crate::record::{CacheStatus, End, LimitOutcome, Record};
use crate::respond::Source;

/// Latencies in microseconds; histograms from different workers and seconds add up.
pub type Latency = hdrhistogram::Histogram<u64>;

/// Two significant digits: percentiles within 1%, and a small histogram.
pub const SIGFIG: u8 = 2;

/// An empty latency histogram (it grows to the largest value recorded).
pub fn latency() -> Latency {
    Latency::new(SIGFIG).expect("2 significant digits are valid")
}

/// What a set of requests added up to, besides their latencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    /// Answers with a 4xx status.
    pub status_4xx: u64,
    /// Answers with a 5xx status.
    pub status_5xx: u64,
    /// Requests a deadline ended (client or upstream).
    pub timeouts: u64,
    /// Requests whose error the upstream caused (refused, reset, malformed, timed out).
    pub upstream_errors: u64,
    /// Requests the client gave up on before the response was complete.
    pub aborted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Answers from the response cache (fresh or stale).
    pub cache_hits: u64,
    /// Requests the cache looked up (hits, misses, expired entries).
    pub cache_lookups: u64,
    /// Requests a rate or concurrency limit refused.
    pub limited: u64,
    /// The worker's event-loop lag (largest of the merged seconds), on worker rows only.
    pub loop_lag_us: u64,
}

impl Counts {
    /// Counts one ended request.
    #[inline]
    pub fn count(&mut self, rec: &Record) {
        self.calls += 1;
        match rec.status {
            400..=499 => self.status_4xx += 1,
            500..=599 => self.status_5xx += 1,
            _ => {}
        }
        match rec.end {
            End::Timeout => self.timeouts += 1,
            End::ClientAbort => self.aborted += 1,
            _ => {}
        }
        if rec.error.is_some() && rec.error_source == Some(Source::Upstream) {
            self.upstream_errors += 1;
        }
        self.bytes_in += rec.bytes_in;
        self.bytes_out += rec.bytes_out;
        match rec.cache {
            CacheStatus::None | CacheStatus::Bypass => {}
            CacheStatus::Hit | CacheStatus::Stale => {
                self.cache_hits += 1;
                self.cache_lookups += 1;
            }
            CacheStatus::Miss | CacheStatus::Expired => self.cache_lookups += 1,
        }
        if rec.limit != LimitOutcome::Passed {
            self.limited += 1;
        }
    }

    /// Adds `o` to these counts.
    pub fn add(&mut self, o: &Counts) {
        self.calls += o.calls;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.timeouts += o.timeouts;
        self.upstream_errors += o.upstream_errors;
        self.aborted += o.aborted;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.cache_hits += o.cache_hits;
        self.cache_lookups += o.cache_lookups;
        self.limited += o.limited;
        self.loop_lag_us = self.loop_lag_us.max(o.loop_lag_us);
    }
}

/// One key's requests within one second of one worker.
#[derive(Debug, Clone)]
pub struct Cell {
    pub counts: Counts,
    pub latency: Latency,
}

impl Default for Cell {
    fn default() -> Self {
        Cell { counts: Counts::default(), latency: latency() }
    }
}

impl Cell {
    /// Counts one ended request that took `micros`.
    #[inline]
    pub fn observe(&mut self, rec: &Record, micros: u64) {
        self.counts.count(rec);
        // An auto-sized histogram refuses nothing it can grow to hold.
        let _ = self.latency.record(micros);
    }

    /// The cell's content, leaving it empty (its histogram starts small again).
    pub fn take(&mut self) -> Cell {
        std::mem::take(self)
    }
}

/// What a row of statistics is kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Route,
    Upstream,
    Consumer,
    Worker,
}

impl Dim {
    pub fn parse(s: &str) -> Option<Dim> {
        match s {
            "route" => Some(Dim::Route),
            "upstream" => Some(Dim::Upstream),
            "consumer" => Some(Dim::Consumer),
            "worker" => Some(Dim::Worker),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Route => "route",
            Dim::Upstream => "upstream",
            Dim::Consumer => "consumer",
            Dim::Worker => "worker",
        }
    }
}

/// One worker's second: the cells that saw requests, and how late its loop ran.
#[derive(Debug)]
pub struct Tick {
    pub worker: usize,
    /// The wall-clock second (Unix time) the tick closes.
    pub unix_s: u64,
    pub loop_lag_us: u64,
    pub rows: Vec<(Dim, Arc<str>, Cell)>,
}

/// Where a worker's ticks go; a full channel drops the tick (counted), never waits.
pub type TickSender = crossbeam_channel::Sender<Tick>;
