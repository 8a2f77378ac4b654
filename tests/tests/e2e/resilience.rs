//! Resilience against real upstreams that the tests kill and break: retries that never repeat
//! what is unsafe and stay within their budget, ejection decided once for the node (every
//! worker agrees), and the circuit breaker's whole cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringway_tests::upstream::Reply;
use ringway_tests::{Client, Gateway, Upstream};

use crate::{both_drivers, single};

both_drivers!(
    killing_a_target_loses_no_idempotent_request,
    a_request_that_reached_a_target_is_retried_only_when_idempotent,
    the_retry_budget_caps_attempts,
    every_worker_skips_an_ejected_target,
    the_breaker_opens_half_opens_and_closes
);

/// One counter of the gateway's metrics, summed over the lines that match every label.
fn metric(gw: &Gateway, name: &str, labels: &[&str]) -> u64 {
    let text = gw.admin("GET", "/metrics", None).text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn killing_a_target_loses_no_idempotent_request(driver: &str) {
    let a = Upstream::echo("a");
    let mut b = Some(Upstream::echo("b"));
    let c = Upstream::echo("c");
    let dead = b.as_ref().unwrap().addr;
    let extra = "    retries: {attempts: 3, on: [connect_failure, reset], backoff: \"1ms\"}\n    \
                 health_checks: {passive: {consecutive_failures: 3, base_ejection: \"30s\"}}";
    let gw = Gateway::start_with(&single(&[a.addr, dead, c.addr], extra, ""), driver, &[]);
    let mut client = Client::connect(gw.addr);
    let mut failures = 0;
    for i in 0..300 {
        if i == 60 {
            // Killed between two requests: its pooled connections are cut, new ones refused.
            if let Some(b) = b.take() {
                b.kill();
            }
        }
        if client.get(&format!("/r{i}")).status != 200 {
            failures += 1;
        }
    }
    // Every request found a live target: a retry covers each one the dead target failed.
    assert_eq!(failures, 0, "client-visible failures");
    // The node ejected it: once decided, nothing is sent its way any more.
    std::thread::sleep(Duration::from_millis(200));
    let errors = metric(&gw, "ringway_upstream_connect_errors_total", &[&format!("target=\"{dead}\"")]);
    assert!(errors >= 3, "the dead target was tried ({errors} connect errors)");
    for i in 0..100 {
        assert_eq!(Client::connect(gw.addr).get(&format!("/after{i}")).status, 200);
    }
    let after = metric(&gw, "ringway_upstream_connect_errors_total", &[&format!("target=\"{dead}\"")]);
    assert_eq!(after, errors, "an ejected target is not tried");
}

fn a_request_that_reached_a_target_is_retried_only_when_idempotent(driver: &str) {
    // `a` reads every request, then breaks the connection without answering.
    let a = Upstream::start("a", |_| Reply::Close);
    let b = Upstream::echo("b");
    let extra = "    retries: {attempts: 3, on: [connect_failure, reset, 502], backoff: \"1ms\"}";
    let gw = Gateway::start_with(&single(&[a.addr, b.addr], extra, ""), driver, &[]);
    let mut posts = 0;
    let mut refused = 0;
    for i in 0..20 {
        let mut c = Client::connect(gw.addr);
        let r = c.request("POST", &format!("/p{i}"), &[], b"payload");
        posts += 1;
        if r.status == 502 {
            refused += 1;
        }
        let g = Client::connect(gw.addr).get(&format!("/g{i}"));
        assert_eq!(g.status, 200, "an idempotent request goes to the other target: {}", g.text());
    }
    let count = |u: &Upstream, m: &str| u.requests().iter().filter(|r| r.method == m).count();
    // Each POST reached the origins exactly once, whichever target took it.
    assert_eq!(count(&a, "POST") + count(&b, "POST"), posts, "a POST was sent twice");
    assert_eq!(refused, count(&a, "POST"), "the POSTs the broken target took were answered 502");
    assert!(count(&a, "POST") > 0 && count(&a, "GET") > 0, "the broken target took some of each");
    // Every GET that reached `a` was tried again on `b`.
    assert_eq!(count(&b, "GET"), 20);
}

fn the_retry_budget_caps_attempts(driver: &str) {
    let a = Upstream::start("a", |_| Reply::Full(503, vec![], b"down".to_vec()));
    let b = Upstream::start("b", |_| Reply::Full(503, vec![], b"down".to_vec()));
    let extra = "    retries: {attempts: 3, on: [503], backoff: \"1ms\", budget: {ratio: 0.2, min_per_sec: 10}}";
    let gw = Gateway::start_with(&single(&[a.addr, b.addr], extra, ""), driver, &[]);
    let started = Instant::now();
    let requests = 300;
    let mut c = Client::connect(gw.addr);
    for i in 0..requests {
        assert_eq!(c.get(&format!("/x{i}")).status, 503);
    }
    let secs = started.elapsed().as_secs_f64();
    let attempts = a.request_count() + b.request_count();
    // (1 + ratio) of the requests plus the floor for the time the run took, plus the floor's
    // first second (its bucket starts full).
    let bound = (requests as f64 * 1.2 + 10.0 * secs).ceil() as usize + 10;
    assert!(attempts <= bound, "{attempts} upstream attempts for {requests} requests in {secs:.2} s (bound {bound})");
    assert!(attempts > requests, "some requests were retried ({attempts})");
    assert!(metric(&gw, "ringway_upstream_retry_budget_exhausted_total", &["upstream=\"u\""]) > 0);
    let retries = metric(&gw, "ringway_upstream_retries_total", &["upstream=\"u\""]) as usize;
    assert_eq!(retries, attempts - requests, "the retries counted are the extra attempts");
}

fn every_worker_skips_an_ejected_target(driver: &str) {
    let bad = Upstream::start("bad", |_| Reply::Full(502, vec![], b"broken".to_vec()));
    let good = Upstream::echo("good");
    let extra =
        "    health_checks: {passive: {consecutive_failures: 3, base_ejection: \"30s\", max_ejected_percent: 50}}";
    let gw = Gateway::start_with(&single(&[bad.addr, good.addr], extra, ""), driver, &["--workers", "2"]);
    // Fresh connections land on either worker; failures from both count toward one decision.
    let mut failures = 0;
    while failures < 3 {
        if Client::connect(gw.addr).get("/warm").status == 502 {
            failures += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let before = bad.request_count();
    for i in 0..60 {
        let r = Client::connect(gw.addr).get(&format!("/n{i}"));
        assert_eq!(r.status, 200, "request {i} went to the ejected target");
    }
    assert_eq!(bad.request_count(), before, "no worker sends to the ejected target");
}

fn the_breaker_opens_half_opens_and_closes(driver: &str) {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let up = Upstream::start("u", move |_| {
        if h.load(Ordering::Relaxed) {
            Reply::Full(200, vec![], b"ok".to_vec())
        } else {
            Reply::Full(503, vec![], b"down".to_vec())
        }
    });
    let extra = "    circuit_breaker: {failure_ratio: 0.5, min_requests: 5, window: \"10s\", open_for: \"1s\", \
                 half_open_requests: 2, failure_statuses: [503]}";
    let gw = Gateway::start_with(&single(&[up.addr], extra, ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 503);
    }
    std::thread::sleep(Duration::from_millis(200));
    // Open: answered at once, without touching the upstream.
    let (reached, connections) = (up.request_count(), up.accepted());
    for _ in 0..10 {
        let r = c.get("/");
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "circuit_open", "{}", r.text());
        let after: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=1).contains(&after), "Retry-After {after}");
    }
    assert_eq!((up.request_count(), up.accepted()), (reached, connections), "an open breaker reached the upstream");
    // The upstream recovers; after open_for the breaker lets two trial requests through.
    healthy.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(c.get("/trial1").status, 200);
    assert_eq!(c.get("/trial2").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    // Closed again: everything goes through.
    for i in 0..20 {
        assert_eq!(c.get(&format!("/after{i}")).status, 200);
    }
}

#[test]
fn bad_resilience_settings_are_refused_with_their_paths() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&single(&[up.addr], "", ""));
    let body = format!(
        r#"{{"targets": [{{"addr": "{}"}}],
            "retries": {{"attempts": 0, "on": ["reset", 404, "sometimes"], "budget": {{"ratio": -0.5}}}},
            "health_checks": {{"passive": {{"max_ejected_percent": 150, "failure_statuses": [700]}},
                               "all_unhealthy": "maybe"}},
            "circuit_breaker": {{"failure_ratio": 2, "open_for": "0s"}}}}"#,
        up.addr
    );
    let r = gw.admin("PUT", "/admin/v1/upstreams/bad", Some(&body));
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    let paths: Vec<&str> = v["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    for want in [
        "upstreams.bad.retries.attempts",
        "upstreams.bad.retries.on[1]",
        "upstreams.bad.retries.on[2]",
        "upstreams.bad.retries.budget.ratio",
        "upstreams.bad.health_checks.passive.max_ejected_percent",
        "upstreams.bad.health_checks.passive.failure_statuses[0]",
        "upstreams.bad.health_checks.all_unhealthy",
        "upstreams.bad.circuit_breaker.failure_ratio",
        "upstreams.bad.circuit_breaker.open_for",
    ] {
        assert!(paths.contains(&want), "{want} not among {paths:?}");
    }
    // Nothing was accepted: the upstream does not exist.
    assert_eq!(gw.admin("GET", "/admin/v1/upstreams/bad", None).status, 404);
}
