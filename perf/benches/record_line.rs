//! What one access-log record costs: a small GET's record formatted as a JSON line
//! (`Entry::write`, with what the formatter keeps between lines: the log thread's share), and
//! copied into a worker's block of records and queued (`LogQueue::push`: the worker's share; the
//! log thread drains the queue and formats the lines meanwhile).
//!
//!     cargo bench -p ringway-perf --bench record_line
//!
//! Prints nanoseconds per record, the best of five rounds (this machine is shared: the best
//! round is the one least disturbed). Compare builds in one sitting, never across days.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ringway_proxy::access_log::{AccessLog, Entry};
use ringway_proxy::log_line::LineCache;
use ringway_proxy::metrics::WorkerGauges;
use ringway_proxy::record::{Record, RequestId};

const ROUNDS: usize = 5;
const PER_ROUND: usize = 400_000;

fn record() -> Record {
    let mut r = Record::new(monoio::time::Instant::now());
    r.request_id = RequestId::generated(*b"4bf92f3577b34da6a3ce929d0e0e4736");
    r.trace.trace_id = *b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36";
    r.client_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    r.status = 200;
    r.bytes_out = 13;
    r.upstream_head = Some(Duration::from_micros(81));
    r.upstream_last = Some(Duration::from_micros(83));
    r.attempts = 1;
    r
}

fn best(mut round: impl FnMut() -> Duration) -> f64 {
    (0..ROUNDS).map(|_| round().as_nanos() as f64 / PER_ROUND as f64).fold(f64::INFINITY, f64::min)
}

fn main() {
    let rec = record();
    let target: SocketAddr = "127.0.0.1:18081".parse().expect("an address");
    let entry = |unix_ms: u64| Entry {
        rec: &rec,
        unix_ms,
        total: Duration::from_micros(142),
        worker: 0,
        route: Some("bench"),
        consumer: None,
        upstream: Some("bench"),
        target: Some(target),
        text: Some((b"GET", b"127.0.0.1:18090", b"/bench/x")),
        capture: None,
    };
    let start_ms = 1_796_000_000_000u64;

    let mut line = Vec::with_capacity(1024);
    entry(start_ms).write_json(&mut line);
    println!("a line is {} bytes: {}", line.len(), String::from_utf8_lossy(&line).trim_end());

    let mut cache = LineCache::default();
    let format = best(|| {
        let t = Instant::now();
        for i in 0..PER_ROUND {
            line.clear();
            // A new millisecond every few records, a new second every few thousand.
            black_box(entry(start_ms + (i as u64 >> 2))).write(&mut line, &mut cache);
            black_box(&line);
        }
        t.elapsed()
    });
    println!("format: {format:.1} ns per record");

    // The log on, writing to /dev/null: the worker's side is what is timed (the log thread
    // drains the queue and formats the lines on the other core meanwhile).
    let (mut log, queues) = AccessLog::start(1, 1 << 22).expect("the log thread starts");
    log.set(ringway_proxy::access_log::Destination::parse("/dev/null").expect("a destination")).expect("opens");
    let gauges = WorkerGauges::default();
    let queue = &queues[0];
    let push = best(|| {
        let t = Instant::now();
        for i in 0..PER_ROUND {
            queue.push(black_box(&entry(start_ms + (i as u64 >> 2))), &gauges);
        }
        t.elapsed()
    });
    println!("queue: {push:.1} ns per record");
    log.stop();
}
