//! Log shipping to a collector the test starts: every record arrives, in order per worker,
//! gzipped when asked; a collector that refuses for a while gets what was queued once it
//! recovers; a full queue drops records and counts them exactly.

use std::io::Read;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};
use serde_json::Value;

use crate::single;

/// The records a collector received, decoded (gzip or not), in arrival order.
fn records(collector: &Upstream) -> Vec<Value> {
    let mut out = Vec::new();
    for r in collector.requests() {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let body = if r.header("content-encoding") == Some("gzip") {
            let mut text = Vec::new();
            flate2::read::GzDecoder::new(&r.body[..]).read_to_end(&mut text).expect("gzip");
            text
        } else {
            r.body.clone()
        };
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).expect("one JSON record per line"));
        }
    }
    out
}

/// Waits until the collector holds at least `n` records accepted (answered 2xx).
fn wait_records(collector: &Upstream, accepted: impl Fn(&Upstream) -> Vec<Value>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = accepted(collector);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn shipping_config(origin: std::net::SocketAddr, collector: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "{}log_shipping: {{endpoint: \"http://{collector}/ingest\", flush_every: \"50ms\", batch_max: 50{extra}}}\n",
        single(&[origin], "", "")
    )
}

#[test]
fn every_record_reaches_the_collector_in_order_per_worker() {
    let origin = Upstream::echo("o");
    let collector = Upstream::start("c", |_| Reply::Full(204, vec![], vec![]));
    let cfg = shipping_config(origin.addr, collector.addr, ", gzip: true, headers: {x-api-key: secret}");
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "2"]);
    let total = 300;
    for c in 0..3 {
        let mut client = Client::connect(gw.addr);
        for i in 0..total / 3 {
            assert_eq!(client.get(&format!("/c{c}/r{i}")).status, 200);
        }
    }
    let got = wait_records(&collector, records, total);
    assert_eq!(got.len(), total, "every record arrived, once");
    // No batch holds more than batch_max lines.
    for r in collector.requests() {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&r.body[..]).read_to_end(&mut text).expect("gzip");
        assert!(text.iter().filter(|b| **b == b'\n').count() <= 50, "a batch over batch_max");
    }
    let first = &collector.requests()[0];
    assert_eq!(first.target, "/ingest");
    assert_eq!(first.header("x-api-key"), Some("secret"));
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    // A connection's requests are served by one worker, in order: its records arrive in order.
    for c in 0..3 {
        let paths: Vec<String> = got
            .iter()
            .filter(|r| r["path"].as_str().unwrap().starts_with(&format!("/c{c}/")))
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..total / 3).map(|i| format!("/c{c}/r{i}")).collect();
        assert_eq!(paths, want, "records of one connection in order");
    }
    // The collector saw the last batch a moment before the shipper read its answer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let st = gw.admin("GET", "/admin/v1/status", None).json();
        if st["log_shipping"]["shipped"] == total as u64 || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status["log_shipping"]["shipped"], total as u64);
    assert_eq!(status["log_shipping"]["dropped"], 0);
}

#[test]
fn a_collector_that_recovers_gets_the_queue_and_a_full_queue_counts_what_it_drops() {
    let origin = Upstream::echo("o");
    // The collector answers 503 until told otherwise.
    let answer = Arc::new(AtomicU16::new(503));
    let a = answer.clone();
    let collector = Upstream::start("c", move |_| Reply::Full(a.load(Ordering::Relaxed), vec![], vec![]));
    let cfg = shipping_config(origin.addr, collector.addr, ", queue_max: 100");
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "1"]);
    let total = 400;
    let mut client = Client::connect(gw.addr);
    for i in 0..total {
        assert_eq!(client.get(&format!("/r{i}")).status, 200);
    }
    // Down: the batch in hand is tried again and again; the queue holds 100; the rest drop.
    let figures = || {
        let st = gw.admin("GET", "/admin/v1/status", None).json();
        let get = |k: &str| st["log_shipping"][k].as_u64().unwrap();
        (get("shipped"), get("dropped"), get("failed_batches"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while figures().2 == 0 || figures().1 == 0 {
        assert!(Instant::now() < deadline, "no failed batch or no drop: {:?}", figures());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(figures().0, 0, "nothing shipped while the collector refuses");
    // Up again: what was queued arrives.
    answer.store(200, Ordering::Relaxed);
    let accepted = |c: &Upstream| -> Vec<Value> {
        // Only batches answered 200 count: the last ones, after the switch. Decode all and
        // keep the distinct records (a refused batch was sent again).
        let mut seen = std::collections::BTreeSet::new();
        records(c).into_iter().filter(|r| seen.insert(r["request_id"].as_str().unwrap().to_string())).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (shipped, dropped) = loop {
        let (s, d, _) = figures();
        if (s + d) as usize >= total || Instant::now() > deadline {
            break (s, d);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(shipped + dropped, total as u64, "every record was either shipped or counted as dropped");
    assert!(dropped > 0 && shipped >= 100, "shipped {shipped}, dropped {dropped}");
    let distinct = accepted(&collector);
    assert_eq!(distinct.len() as u64, shipped, "the collector has exactly the shipped records");
    // In order: what was shipped arrived in the order it was made (the dropped records are
    // gaps, never a reordering).
    let order: Vec<usize> =
        distinct.iter().map(|r| r["path"].as_str().unwrap().trim_start_matches("/r").parse().unwrap()).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order: {order:?}");
    assert_eq!(order[0], 0, "the oldest record was kept");
    let m = gw.admin("GET", "/metrics", None).text();
    assert!(m.contains(&format!("ringway_log_shipping_dropped_total {dropped}")), "{m}");
}

#[test]
fn bad_shipping_settings_are_refused_with_their_paths() {
    let origin = Upstream::echo("o");
    let gw = Gateway::start(&single(&[origin.addr], "", ""));
    let mut doc: Value = gw.admin("GET", "/admin/v1/config", None).json();
    doc["log_shipping"] = serde_json::json!({"endpoint": "ftp://x", "format": "xml", "queue_max": 0});
    let r = gw.admin("PUT", "/admin/v1/config", Some(&doc.to_string()));
    assert_eq!(r.status, 400, "{}", r.text());
    let paths: Vec<String> =
        r.json()["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap().to_string()).collect();
    for want in ["log_shipping.endpoint", "log_shipping.format", "log_shipping.queue_max"] {
        assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
    }
}
