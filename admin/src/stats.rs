//! Per-API call statistics, the node's half: the `ringway-stats` thread takes every worker's
//! once-a-second [`Tick`] and adds it into two rings of buckets, 300 of one second (the last 5
//! minutes) and 1,440 of one minute (the last 24 hours); `GET /admin/v1/stats` reads them.
//!
//! Memory is bounded whatever the traffic: the rings have a fixed number of buckets, a bucket
//! holds at most [`MAX_KEYS`] keys per dimension (more fold into [`OTHER`]), and a bucket's
//! latency histograms are kept packed (hdrhistogram's V2 encoding, a few dozen bytes for
//! typical traffic) once its time has passed; only the current second and minute are live.

use std::sync::{Arc, Mutex};

use rustc_hash::FxHashMap;
use serde_json::{json, Value};

use ringway_proxy::stats::{latency, Counts, Dim, Latency, Tick};

/// Buckets of one second: the last 5 minutes.
pub const SECONDS: u64 = 300;
/// Buckets of one minute: the last 24 hours.
pub const MINUTES: u64 = 1440;
/// Keys per dimension a bucket keeps; the rest add up under [`OTHER`].
pub const MAX_KEYS: usize = 4096;
/// The key of rows past [`MAX_KEYS`].
pub const OTHER: &str = "(other)";
/// The key requests that matched no route are counted under.
pub const UNROUTED: &str = "(unrouted)";

/// A latency histogram, live while its bucket is current, packed after.
#[derive(Debug)]
enum Hist {
    Live(Latency),
    Packed(Vec<u8>),
}

impl Hist {
    fn live(&mut self) -> &mut Latency {
        if let Hist::Packed(bytes) = self {
            *self = Hist::Live(unpack(bytes));
        }
        match self {
            Hist::Live(h) => h,
            Hist::Packed(_) => unreachable!("just unpacked"),
        }
    }

    fn pack(&mut self) {
        if let Hist::Live(h) = self {
            let mut out = Vec::new();
            use hdrhistogram::serialization::Serializer;
            if hdrhistogram::serialization::V2Serializer::new().serialize(h, &mut out).is_ok() {
                out.shrink_to_fit();
                *self = Hist::Packed(out);
            }
        }
    }

    fn add_to(&self, into: &mut Latency) {
        let _ = match self {
            Hist::Live(h) => into.add(h),
            Hist::Packed(b) => into.add(unpack(b)),
        };
    }
}

fn unpack(bytes: &[u8]) -> Latency {
    let mut h: Latency =
        hdrhistogram::serialization::Deserializer::new().deserialize(&mut &bytes[..]).unwrap_or_else(|_| latency());
    // A deserialized histogram does not grow by itself; a late tick may bring a larger value.
    h.auto(true);
    h
}

#[derive(Debug)]
struct Agg {
    counts: Counts,
    hist: Hist,
}

/// One bucket: its start (a Unix second, or a Unix minute) and its rows.
#[derive(Debug, Default)]
struct Bucket {
    t: Option<u64>,
    rows: FxHashMap<(Dim, Arc<str>), Agg>,
    keys: [usize; 4],
}

impl Bucket {
    fn add(&mut self, dim: Dim, key: &Arc<str>, counts: &Counts, hist: &Latency) {
        let full = self.keys[dim as usize] >= MAX_KEYS;
        let k = if full && !self.rows.contains_key(&(dim, key.clone())) { Arc::from(OTHER) } else { key.clone() };
        let keys = &mut self.keys[dim as usize];
        let agg = self.rows.entry((dim, k)).or_insert_with(|| {
            *keys += 1;
            Agg { counts: Counts::default(), hist: Hist::Live(latency()) }
        });
        agg.counts.add(counts);
        let _ = agg.hist.live().add(hist);
    }

    fn reset(&mut self, t: u64) {
        self.t = Some(t);
        self.rows.clear();
        self.rows.shrink_to(64);
        self.keys = [0; 4];
    }

    fn pack(&mut self) {
        for a in self.rows.values_mut() {
            a.hist.pack();
        }
    }
}

/// A ring of buckets of `width` seconds.
#[derive(Debug)]
struct Ring {
    width: u64,
    buckets: Vec<Bucket>,
    /// The newest bucket's start; older ones are packed.
    newest: Option<u64>,
}

impl Ring {
    fn new(width: u64, len: u64) -> Ring {
        Ring { width, buckets: (0..len).map(|_| Bucket::default()).collect(), newest: None }
    }

    /// The bucket for second `unix_s` and whether it is the newest (a late tick's older
    /// bucket is packed again once added to), or `None` when it is older than the ring.
    fn bucket(&mut self, unix_s: u64) -> Option<(&mut Bucket, bool)> {
        let t = unix_s / self.width * self.width;
        let len = self.buckets.len() as u64;
        if let Some(n) = self.newest {
            if t + self.width * len <= n {
                return None;
            }
            if t > n {
                let i = (n / self.width % len) as usize;
                self.buckets[i].pack();
                self.newest = Some(t);
            }
        } else {
            self.newest = Some(t);
        }
        let newest = self.newest == Some(t);
        let b = &mut self.buckets[(t / self.width % len) as usize];
        if b.t != Some(t) {
            b.reset(t);
        }
        Some((b, newest))
    }
}

/// The node's statistics.
#[derive(Debug)]
pub struct StatsStore {
    seconds: Ring,
    minutes: Ring,
}

impl Default for StatsStore {
    fn default() -> Self {
        StatsStore { seconds: Ring::new(1, SECONDS), minutes: Ring::new(60, MINUTES) }
    }
}

impl StatsStore {
    /// Adds one worker's second.
    pub fn add(&mut self, tick: &Tick) {
        let mut worker = Counts { loop_lag_us: tick.loop_lag_us, ..Counts::default() };
        let mut worker_hist = latency();
        for (dim, _, cell) in &tick.rows {
            if *dim == Dim::Route {
                // Cells carry no lag: the worker's stays (lags merge by their maximum).
                worker.add(&cell.counts);
                let _ = worker_hist.add(&cell.latency);
            }
        }
        let worker_key: Arc<str> = Arc::from(tick.worker.to_string());
        for ring in [&mut self.seconds, &mut self.minutes] {
            let Some((b, newest)) = ring.bucket(tick.unix_s) else { continue };
            for (dim, key, cell) in &tick.rows {
                let key = if key.is_empty() { &Arc::from(UNROUTED) } else { key };
                b.add(*dim, key, &cell.counts, &cell.latency);
            }
            b.add(Dim::Worker, &worker_key, &worker, &worker_hist);
            if !newest {
                b.pack();
            }
        }
    }

    /// The statistics of `window` seconds by `dim`, as the API answers them: totals, a
    /// summary per key, and a series per key (one point per bucket).
    pub fn query(&self, dim: Dim, window: u64, series: bool) -> Value {
        let ring = if window <= SECONDS { &self.seconds } else { &self.minutes };
        let Some(newest) = ring.newest else {
            return json!({"by": dim.as_str(), "resolution_s": ring.width, "from": null, "to": null,
                "total": summary(&Counts::default(), &latency(), window), "items": []});
        };
        let from = (newest + ring.width).saturating_sub(window);
        let mut buckets: Vec<&Bucket> =
            ring.buckets.iter().filter(|b| b.t.is_some_and(|t| t >= from && t <= newest)).collect();
        buckets.sort_by_key(|b| b.t);
        let mut keys: FxHashMap<&str, KeyStats> = FxHashMap::default();
        let mut total = (Counts::default(), latency());
        let mut total_points = Vec::new();
        for b in &buckets {
            let t = b.t.unwrap_or(0);
            let mut bucket = (Counts::default(), latency());
            let mut seen = false;
            for ((_, k), agg) in b.rows.iter().filter(|((d, _), _)| *d == dim) {
                let e = keys.entry(k).or_insert_with(|| (Counts::default(), latency(), Vec::new()));
                e.0.add(&agg.counts);
                let mut h = latency();
                agg.hist.add_to(&mut h);
                let _ = e.1.add(&h);
                if series {
                    e.2.push(point(t, &agg.counts, &h));
                    seen = true;
                    bucket.0.add(&agg.counts);
                    let _ = bucket.1.add(&h);
                }
                total.0.add(&agg.counts);
                let _ = total.1.add(&h);
            }
            if series && seen {
                total_points.push(point(t, &bucket.0, &bucket.1));
            }
        }
        let mut items: Vec<(&str, KeyStats)> = keys.into_iter().collect();
        items.sort_by(|a, b| b.1 .0.calls.cmp(&a.1 .0.calls).then(a.0.cmp(b.0)));
        let items: Vec<Value> = items
            .into_iter()
            .map(|(k, (c, h, points))| {
                let mut v = summary(&c, &h, window);
                v["key"] = json!(k);
                if series {
                    v["series"] = Value::Array(points);
                }
                v
            })
            .collect();
        let mut out = json!({
            "by": dim.as_str(),
            "resolution_s": ring.width,
            "from": from,
            "to": newest + ring.width,
            "total": summary(&total.0, &total.1, window),
            "items": items,
        });
        if series {
            out["total"]["series"] = Value::Array(total_points);
            out["columns"] = json!([
                "t",
                "calls",
                "status_4xx",
                "status_5xx",
                "p50_ms",
                "p99_ms",
                "bytes_out",
                "cache_hits",
                "cache_lookups",
                "limited",
                "loop_lag_ms"
            ]);
        }
        out
    }
}

/// One bucket's point of a series, in the order of the answer's `columns`.
fn point(t: u64, c: &Counts, h: &Latency) -> Value {
    json!([
        t,
        c.calls,
        c.status_4xx,
        c.status_5xx,
        ms(h.value_at_quantile(0.5), h),
        ms(h.value_at_quantile(0.99), h),
        c.bytes_out,
        c.cache_hits,
        c.cache_lookups,
        c.limited,
        c.loop_lag_us as f64 / 1e3,
    ])
}

/// One key's counts, latencies and series points over a window.
type KeyStats = (Counts, Latency, Vec<Value>);

fn ms(us: u64, h: &Latency) -> Value {
    if h.is_empty() {
        Value::Null
    } else {
        json!(us as f64 / 1e3)
    }
}

fn ratio(a: u64, b: u64) -> Value {
    if b == 0 {
        Value::Null
    } else {
        json!(a as f64 / b as f64)
    }
}

fn summary(c: &Counts, h: &Latency, window: u64) -> Value {
    json!({
        "calls": c.calls,
        "rps": c.calls as f64 / window.max(1) as f64,
        "errors": {
            "4xx": c.status_4xx,
            "5xx": c.status_5xx,
            "timeout": c.timeouts,
            "upstream": c.upstream_errors,
            "aborted": c.aborted,
        },
        "error_rate": ratio(c.status_5xx, c.calls),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.5), h),
            "p90": ms(h.value_at_quantile(0.9), h),
            "p99": ms(h.value_at_quantile(0.99), h),
            "max": ms(h.max(), h),
            "mean": if h.is_empty() { Value::Null } else { json!(h.mean() / 1e3) },
        },
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "cache": {"hits": c.cache_hits, "lookups": c.cache_lookups, "hit_ratio": ratio(c.cache_hits, c.cache_lookups)},
        "limited": c.limited,
        "loop_lag_ms_max": c.loop_lag_us as f64 / 1e3,
    })
}

/// A window as the API names it: `30s`, `5m`, `1h`, `24h`... up to 24 hours.
pub fn parse_window(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (secs <= MINUTES * 60).then_some(secs)
}

/// The statistics thread's handle: its store, and how to end it.
pub struct StatsThread {
    pub store: Arc<Mutex<StatsStore>>,
    /// Dropped to stop the thread.
    stop: Option<crossbeam_channel::Sender<()>>,
    join: Option<std::thread::JoinHandle<()>>,
}

impl StatsThread {
    /// Ends the thread and waits for it.
    pub fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// Starts the `ringway-stats` thread; it ends when stopped or when every worker's sender is
/// gone. It sleeps until a tick comes or it is stopped, with no timed wakeup: on a busy core
/// every wakeup of a background thread costs the workers (five timed wakeups a second cost as
/// much as the statistics themselves, `perf/results/monitoring/`).
pub fn start(ticks: crossbeam_channel::Receiver<Tick>) -> std::io::Result<StatsThread> {
    let store = Arc::new(Mutex::new(StatsStore::default()));
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let s = store.clone();
    let join = ringway_runtime::spawn_background("ringway-stats", move || {
        ringway_runtime::background_thread();
        loop {
            crossbeam_channel::select! {
                recv(ticks) -> tick => match tick {
                    Ok(tick) => {
                        if let Ok(mut store) = s.lock() {
                            store.add(&tick);
                        }
                    }
                    Err(_) => return,
                },
                recv(stopped) -> _ => return,
            }
        }
    })?;
    Ok(StatsThread { store, stop: Some(stop), join: Some(join) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringway_proxy::stats::Cell;

    fn tick(worker: usize, unix_s: u64, route: &str, calls: u64, us: u64) -> Tick {
        let mut cell = Cell::default();
        cell.counts.calls = calls;
        cell.counts.status_5xx = 1;
        for _ in 0..calls {
            cell.latency.record(us).unwrap();
        }
        Tick { worker, unix_s, loop_lag_us: 7, rows: vec![(Dim::Route, Arc::from(route), cell)] }
    }

    #[test]
    fn buckets_add_up_and_age_out() {
        const T: u64 = 1_000_000;
        let mut st = StatsStore::default();
        st.add(&tick(0, T, "a", 3, 1000));
        st.add(&tick(1, T, "a", 2, 3000));
        st.add(&tick(0, T + 1, "b", 5, 500));
        let v = st.query(Dim::Route, 300, true);
        assert_eq!(v["total"]["calls"], 10);
        // Equal calls: by key.
        assert_eq!(v["items"][0]["key"], "a");
        assert_eq!(v["items"][0]["calls"], 5);
        assert_eq!(v["items"][0]["series"][0][1], 5);
        assert_eq!(v["items"][1]["series"][0][0], T + 1);
        let p99 = v["items"][0]["latency_ms"]["p99"].as_f64().unwrap();
        assert!((2.9..3.1).contains(&p99), "{p99}");
        let w = st.query(Dim::Worker, 300, false);
        assert_eq!(w["items"].as_array().unwrap().len(), 2);
        // Five minutes later the seconds are gone; the minutes still hold them.
        st.add(&tick(0, T + 400, "c", 1, 100));
        assert_eq!(st.query(Dim::Route, 300, false)["total"]["calls"], 1);
        assert_eq!(st.query(Dim::Route, 3600, false)["total"]["calls"], 11);
        // A tick older than the ring is ignored.
        st.add(&tick(0, T - 90_000, "old", 1, 100));
        assert_eq!(st.query(Dim::Route, 86_400, false)["total"]["calls"], 11);
    }

    #[test]
    fn a_late_tick_with_a_larger_latency_is_kept_and_its_bucket_packed_again() {
        let mut st = StatsStore::default();
        st.add(&tick(0, 7_000, "a", 1, 100));
        st.add(&tick(0, 7_001, "a", 1, 100));
        // The first second is packed now; a late worker's tick brings a far larger latency.
        st.add(&tick(1, 7_000, "a", 1, 9_000_000));
        let v = st.query(Dim::Route, 60, false);
        assert_eq!(v["total"]["calls"], 3);
        let max = v["items"][0]["latency_ms"]["max"].as_f64().unwrap();
        assert!(max > 8_900.0, "{max}");
        let old = st.seconds.buckets.iter().find(|b| b.t == Some(7_000)).unwrap();
        assert!(old.rows.values().all(|a| matches!(a.hist, Hist::Packed(_))), "packed again");
    }

    #[test]
    fn keys_are_bounded() {
        let mut st = StatsStore::default();
        for i in 0..(MAX_KEYS + 10) {
            st.add(&tick(0, 5000, &format!("r{i}"), 1, 10));
        }
        let v = st.query(Dim::Route, 60, false);
        assert_eq!(v["items"].as_array().unwrap().len(), MAX_KEYS + 1);
        assert_eq!(v["total"]["calls"], (MAX_KEYS + 10) as u64);
    }

    #[test]
    fn windows() {
        assert_eq!(parse_window("5m"), Some(300));
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("25h"), None);
        assert_eq!(parse_window("0s"), None);
        assert_eq!(parse_window("m"), None);
    }
}
