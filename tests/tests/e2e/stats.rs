//! Per-API call statistics (`GET /admin/v1/stats`) agree with the requests the test sent: calls,
//! errors by class, bytes and latencies, by route, upstream and worker.

use std::time::{Duration, Instant};

use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};
use serde_json::Value;

/// The item of `key` in a stats answer.
fn item<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v["items"].as_array()?.iter().find(|i| i["key"] == key)
}

/// Polls `path` until `done` holds (ticks arrive once a second per worker).
fn wait_stats(gw: &Gateway, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.admin("GET", path, None);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if done(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stats_agree_with_the_requests_sent() {
    let fast = Upstream::start("fast", |_| Reply::Full(200, vec![], vec![b'x'; 100]));
    let slow = Upstream::start("slow", |r| {
        let status = if r.target.ends_with("/missing") { 404 } else { 503 };
        Reply::Delay(Duration::from_millis(30), Box::new(Reply::Full(status, vec![], b"no".to_vec())))
    });
    let cfg = format!(
        "upstreams:\n  f:\n    targets: [{{addr: \"{}\"}}]\n  s:\n    targets: [{{addr: \"{}\"}}]\n\
         routes:\n  fast:\n    paths: [\"/fast/*\"]\n    upstream: f\n  slow:\n    paths: [\"/slow/*\"]\n    upstream: s\n",
        fast.addr, slow.addr
    );
    let gw = Gateway::start_with(&cfg, &ringway_tests::gateway::default_driver(), &["--workers", "2"]);
    let mut c = Client::connect(gw.addr);
    for i in 0..40 {
        assert_eq!(c.get(&format!("/fast/{i}")).status, 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get("/slow/missing").status, 404);
    }
    for _ in 0..5 {
        assert_eq!(c.get("/slow/broken").status, 503);
    }
    // A request that matches no route.
    assert_eq!(c.get("/nowhere").status, 404);
    let body = [b'p'; 1000];
    assert_eq!(c.request("POST", "/fast/up", &[], &body).status, 200);

    let v = wait_stats(&gw, "/admin/v1/stats?by=route&window=5m", |v| v["total"]["calls"] == 50);
    assert_eq!(v["by"], "route");
    assert_eq!(v["window"], "5m");
    assert_eq!(v["resolution_s"], 1);
    assert_eq!(v["total"]["calls"], 50, "{v:#}");
    let f = item(&v, "fast").expect("the fast route");
    assert_eq!(f["calls"], 41);
    assert_eq!(f["errors"]["4xx"], 0);
    assert_eq!(f["errors"]["5xx"], 0);
    assert_eq!(f["bytes_out"], 41 * 100);
    assert_eq!(f["bytes_in"], 1000);
    let s = item(&v, "slow").expect("the slow route");
    assert_eq!(s["calls"], 8);
    assert_eq!(s["errors"]["4xx"], 3);
    assert_eq!(s["errors"]["5xx"], 5);
    assert_eq!(s["error_rate"].as_f64(), Some(5.0 / 8.0));
    // The slow origin waits 30 ms: the route's median says so, the fast one's does not.
    let slow_p50 = s["latency_ms"]["p50"].as_f64().expect("a median");
    assert!(slow_p50 >= 29.0, "slow p50 {slow_p50}");
    let fast_p50 = f["latency_ms"]["p50"].as_f64().expect("a median");
    assert!(fast_p50 < slow_p50, "fast p50 {fast_p50}");
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() >= slow_p50);
    let unrouted = item(&v, "(unrouted)").expect("requests without a route");
    assert_eq!(unrouted["calls"], 1);
    assert_eq!(unrouted["errors"]["4xx"], 1);
    // The series of every key adds up to its calls, one point per second.
    let calls_col = v["columns"].as_array().unwrap().iter().position(|c| c == "calls").unwrap();
    let summed: u64 = f["series"].as_array().unwrap().iter().map(|p| p[calls_col].as_u64().unwrap()).sum();
    assert_eq!(summed, 41);

    let u = wait_stats(&gw, "/admin/v1/stats?by=upstream&window=1m&series=false", |v| v["total"]["calls"] == 49);
    assert_eq!(item(&u, "f").expect("upstream f")["calls"], 41);
    assert_eq!(item(&u, "s").expect("upstream s")["calls"], 8);
    assert!(item(&u, "s").unwrap().get("series").is_none());

    // By worker: every request counted once, whichever worker took it.
    let w = wait_stats(&gw, "/admin/v1/stats?by=worker&window=5m", |v| v["total"]["calls"] == 50);
    assert_eq!(w["total"]["calls"], 50);
    assert!(w["columns"].as_array().unwrap().iter().any(|c| c == "loop_lag_ms"));

    // The day's view (minutes) holds the same requests.
    let day = gw.admin("GET", "/admin/v1/stats?by=route&window=24h&series=false", None).json();
    assert_eq!(day["resolution_s"], 60);
    assert_eq!(day["total"]["calls"], 50);

    // Bad parameters: 400 naming the parameter.
    for (q, name) in
        [("by=host", "by="), ("window=5x", "window="), ("window=48h", "window="), ("series=yes", "series=")]
    {
        let r = gw.admin("GET", &format!("/admin/v1/stats?{q}"), None);
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json()["error"], "invalid_parameter");
        assert!(r.json()["message"].as_str().unwrap().starts_with(name), "{q}: {}", r.text());
    }
    assert_eq!(gw.admin("POST", "/admin/v1/stats", Some("{}")).status, 405);
}

#[test]
fn no_stats_flag_turns_them_off() {
    let origin = Upstream::echo("o");
    let gw = Gateway::start_with(
        &crate::single(&[origin.addr], "", ""),
        &ringway_tests::gateway::default_driver(),
        &["--no-stats"],
    );
    assert_eq!(Client::connect(gw.addr).get("/x").status, 200);
    let r = gw.admin("GET", "/admin/v1/stats", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "stats_off");
}
