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
    a_target_that_does_not_answer_in_time_is_retried_elsewhere,
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
    let extra = format!("{extra}\n    timeouts: {{connect: \"1s\"}}");
    let gw = Gateway::start_with(&single(&[a.addr, dead, c.addr], &extra, ""), driver, &[]);
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
    wait_state(&gw, dead, "ejected", Duration::from_secs(5));
    let errors = metric(&gw, "ringway_upstream_connect_errors_total", &[&format!("target=\"{dead}\"")]);
    assert!(errors >= 3, "the dead target was tried ({errors} connect errors)");
    for i in 0..100 {
        assert_eq!(Client::connect(gw.addr).get(&format!("/after{i}")).status, 200);
    }
    let after = metric(&gw, "ringway_upstream_connect_errors_total", &[&format!("target=\"{dead}\"")]);
    assert_eq!(after, errors, "an ejected target is not tried");
}

fn a_target_that_does_not_answer_in_time_is_retried_elsewhere(driver: &str) {
    let slow = Upstream::start("slow", |_| Reply::Hang);
    let fast = Upstream::echo("fast");
    let extra = "    timeouts: {response_head: \"300ms\"}\n    \
                 retries: {attempts: 2, on: [timeout], backoff: \"1ms\"}";
    // One worker: its balancer alternates, so both targets see requests of each kind.
    let gw = Gateway::start_with(&single(&[slow.addr, fast.addr], extra, ""), driver, &["--workers", "1"]);
    for i in 0..4 {
        let r = Client::connect(gw.addr).get(&format!("/t{i}"));
        assert_eq!((r.status, r.text()), (200, format!("fast GET /t{i}")));
    }
    assert!(slow.request_count() > 0, "the slow target was tried");
    // A POST that timed out is not sent again: the client hears 504.
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(Client::connect(gw.addr).request("POST", &format!("/p{i}"), &[], b"x").status);
    }
    let posts_at_slow = slow.requests().iter().filter(|r| r.method == "POST").count();
    assert!(posts_at_slow > 0, "a POST went to the slow target");
    assert_eq!(statuses.iter().filter(|s| **s == 504).count(), posts_at_slow, "{statuses:?}");
    let posts_at_fast = fast.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts_at_slow + posts_at_fast, 4, "every POST was sent once");
}

fn a_request_that_reached_a_target_is_retried_only_when_idempotent(driver: &str) {
    // `a` reads every request, then breaks the connection without answering.
    let a = Upstream::start("a", |_| Reply::Close);
    let b = Upstream::echo("b");
    let extra = "    retries: {attempts: 3, on: [connect_failure, reset, 502], backoff: \"1ms\"}";
    let gw = Gateway::start_with(&single(&[a.addr, b.addr], extra, ""), driver, &["--workers", "1"]);
    let mut posts = 0;
    let mut gets = 0;
    let mut refused = 0;
    for i in 0..20 {
        let mut c = Client::connect(gw.addr);
        let r = c.request("POST", &format!("/p{i}"), &[], b"payload");
        posts += 1;
        if r.status == 502 {
            refused += 1;
        }
        // One GET or two, so requests of each kind meet each target in turn.
        for k in 0..1 + i % 2 {
            let g = Client::connect(gw.addr).get(&format!("/g{i}-{k}"));
            assert_eq!(g.status, 200, "an idempotent request goes to the other target: {}", g.text());
            gets += 1;
        }
    }
    let count = |u: &Upstream, m: &str| u.requests().iter().filter(|r| r.method == m).count();
    // Each POST reached the origins exactly once, whichever target took it.
    assert_eq!(count(&a, "POST") + count(&b, "POST"), posts, "a POST was sent twice");
    assert_eq!(refused, count(&a, "POST"), "the POSTs the broken target took were answered 502");
    assert!(count(&a, "POST") > 0 && count(&a, "GET") > 0, "the broken target took some of each");
    // Every GET that reached `a` was tried again on `b`.
    assert_eq!(count(&b, "GET"), gets);
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
    // A request is counted when it ends, just after its answer is written: the last one's
    // count may trail the client by a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut retries = metric(&gw, "ringway_upstream_retries_total", &["upstream=\"u\""]) as usize;
    while retries < attempts - requests && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        retries = metric(&gw, "ringway_upstream_retries_total", &["upstream=\"u\""]) as usize;
    }
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
    wait_state(&gw, bad.addr, "ejected", Duration::from_secs(5));
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
    let extra = "    circuit_breaker: {failure_ratio: 0.5, min_requests: 5, window: \"10s\", open_for: \"3s\", \
                 half_open_requests: 2, failure_statuses: [503]}";
    let gw = Gateway::start_with(&single(&[up.addr], extra, ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..5 {
        assert_eq!(c.get("/").status, 503);
    }
    let breaker = |gw: &Gateway| {
        let r = gw.admin("GET", "/admin/v1/upstreams/u/health", None).json();
        r["circuit_breaker"].as_str().unwrap_or_default().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while breaker(&gw) != "open" {
        assert!(Instant::now() < deadline, "the breaker did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Open: answered at once, without touching the upstream.
    let (reached, connections) = (up.request_count(), up.accepted());
    for _ in 0..10 {
        let r = c.get("/");
        assert_eq!(r.status, 503);
        assert_eq!(r.json()["error"], "circuit_open", "{}", r.text());
        let after: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=3).contains(&after), "Retry-After {after}");
    }
    assert_eq!((up.request_count(), up.accepted()), (reached, connections), "an open breaker reached the upstream");
    // The upstream recovers; after open_for the breaker lets two trial requests through.
    healthy.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(6);
    while breaker(&gw) != "half_open" {
        assert!(Instant::now() < deadline, "the breaker did not half-open");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.get("/trial1").status, 200);
    assert_eq!(c.get("/trial2").status, 200);
    let deadline = Instant::now() + Duration::from_secs(2);
    while breaker(&gw) != "closed" {
        assert!(Instant::now() < deadline, "the breaker did not close");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closed again: everything goes through.
    for i in 0..20 {
        assert_eq!(c.get(&format!("/after{i}")).status, 200);
    }
    assert_eq!(metric(&gw, "ringway_circuit_breaker_opened_total", &["upstream=\"u\""]), 1);
    assert_eq!(metric(&gw, "ringway_circuit_breaker_state", &["state=\"closed\""]), 1);
    let r = gw.admin("GET", "/admin/v1/upstreams/u/health", None).json();
    let history: Vec<&str> =
        r["breaker_history"].as_array().unwrap().iter().map(|d| d["what"].as_str().unwrap()).collect();
    assert_eq!(history, ["open", "half_open", "closed"]);
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

/// The health report of upstream `u`: each target's state by address.
fn states(gw: &Gateway) -> Vec<(String, String)> {
    let r = gw.admin("GET", "/admin/v1/upstreams/u/health", None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["target"].as_str().unwrap().to_string(), t["state"].as_str().unwrap().to_string()))
        .collect()
}

fn state_of(gw: &Gateway, addr: std::net::SocketAddr) -> String {
    states(gw).into_iter().find(|(a, _)| *a == addr.to_string()).map(|(_, s)| s).unwrap_or_default()
}

/// Waits up to `within` for target `addr` to be in `want`.
fn wait_state(gw: &Gateway, addr: std::net::SocketAddr, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while state_of(gw, addr) != want {
        assert!(Instant::now() < deadline, "{addr} not {want} within {within:?}: {:?}", states(gw));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How the probed upstream answers its probes: healthy, failing, or alternating.
const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const FLAPPING: u8 = 2;

fn probed_upstream(name: &str, mode: Arc<std::sync::atomic::AtomicU8>) -> Upstream {
    let flip = Arc::new(AtomicBool::new(false));
    let n = name.to_string();
    Upstream::start(name, move |r| {
        if r.target != "/healthz" {
            return Reply::Full(200, vec![], format!("{n} {}", r.target).into_bytes());
        }
        let ok = match mode.load(Ordering::Relaxed) {
            HEALTHY => true,
            FAILING => false,
            _ => !flip.fetch_xor(true, Ordering::Relaxed),
        };
        Reply::Full(if ok { 200 } else { 500 }, vec![], b"probe".to_vec())
    })
}

#[test]
fn probes_run_once_per_interval_for_the_node() {
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(HEALTHY));
    let a = probed_upstream("a", mode);
    let extra = "    health_checks: {active: {path: \"/healthz\", interval: \"200ms\", timeout: \"100ms\"}}";
    let _gw = Gateway::start_with(
        &single(&[a.addr], extra, ""),
        &ringway_tests::gateway::default_driver(),
        &["--workers", "2"],
    );
    let probes = || a.requests().iter().filter(|r| r.target == "/healthz").count();
    let (first, t0) = (probes(), Instant::now());
    std::thread::sleep(Duration::from_millis(2000));
    let (n, secs) = (probes() - first, t0.elapsed().as_secs_f64());
    // One probe per 200 ms for the node: about 5 a second (10 if each of the two workers
    // probed). Rounds of decisions that run late may skip one now and then, never add any.
    let per_interval = secs / 0.2;
    assert!(
        n as f64 <= per_interval + 2.0 && n as f64 >= per_interval * 0.6,
        "{n} probes in {secs:.2} s at one per 200 ms"
    );
    let probe = a.requests().into_iter().find(|r| r.target == "/healthz").unwrap();
    assert_eq!(probe.method, "GET");
    assert_eq!(probe.header("user-agent"), Some("ringway-health"));
}

#[test]
fn probes_take_a_target_out_and_back_with_hysteresis() {
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(HEALTHY));
    let a = probed_upstream("a", mode.clone());
    let b = Upstream::echo("b");
    let extra = "    health_checks: {active: {path: \"/healthz\", interval: \"100ms\", timeout: \"80ms\", \
                 healthy_after: 3, unhealthy_after: 2}}";
    let gw = Gateway::start_with(&single(&[a.addr, b.addr], extra, ""), &ringway_tests::gateway::default_driver(), &[]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state_of(&gw, a.addr), "healthy", "targets start healthy and stay so");
    mode.store(FAILING, Ordering::Relaxed);
    wait_state(&gw, a.addr, "unhealthy", Duration::from_secs(2));
    let served = |u: &Upstream| u.requests().iter().filter(|r| r.target != "/healthz").count();
    let before = served(&a);
    let mut c = Client::connect(gw.addr);
    for i in 0..20 {
        assert_eq!(c.get(&format!("/r{i}")).text(), format!("b GET /r{i}"));
    }
    assert_eq!(served(&a), before, "an unhealthy target gets no request");
    let up = metric(&gw, "ringway_upstream_target_up", &[&format!("target=\"{}\"", a.addr)]);
    assert_eq!(up, 0, "the metric shows it out");
    crate::metrics::promtool_accepts(&gw.admin("GET", "/metrics", None).text());
    // A target that answers every other probe never has three successes in a row: it stays out.
    mode.store(FLAPPING, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(state_of(&gw, a.addr), "unhealthy", "a flapping target does not flap the state");
    mode.store(HEALTHY, Ordering::Relaxed);
    wait_state(&gw, a.addr, "healthy", Duration::from_secs(2));
    let r = gw.admin("GET", "/admin/v1/upstreams/u/health", None).json();
    let history: Vec<&str> =
        r["targets"][0]["history"].as_array().unwrap().iter().map(|d| d["what"].as_str().unwrap()).collect();
    assert_eq!(history, ["unhealthy", "healthy"]);
    assert_eq!(gw.admin("GET", "/admin/v1/upstreams/nope/health", None).status, 404);
}

#[test]
fn with_every_target_out_the_answer_is_503_unless_fail_open() {
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(FAILING));
    let a = probed_upstream("a", mode);
    let checks =
        "    health_checks: {active: {path: \"/healthz\", interval: \"100ms\", timeout: \"80ms\", unhealthy_after: 1}";
    let gw = Gateway::start_with(
        &single(&[a.addr], &format!("{checks}}}"), ""),
        &ringway_tests::gateway::default_driver(),
        &[],
    );
    wait_state(&gw, a.addr, "unhealthy", Duration::from_secs(2));
    let served = || a.requests().iter().filter(|r| r.target != "/healthz").count();
    let r = Client::connect(gw.addr).get("/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_target", "{}", r.text());
    assert_eq!(served(), 0, "nothing was sent to the unhealthy target");
    // fail_open: sent to every target anyway.
    let body = format!(
        r#"{{"targets": [{{"addr": "{}"}}], "health_checks": {{"all_unhealthy": "fail_open",
            "active": {{"path": "/healthz", "interval": "100ms", "timeout": "80ms", "unhealthy_after": 1}}}}}}"#,
        a.addr
    );
    assert_eq!(gw.admin("PUT", "/admin/v1/upstreams/u", Some(&body)).status, 200);
    assert_eq!(state_of(&gw, a.addr), "unhealthy", "the change kept the target's state");
    assert_eq!(Client::connect(gw.addr).get("/y").text(), "a /y");
}

#[test]
fn a_config_change_keeps_the_state_of_the_targets_it_keeps() {
    let bad = Upstream::start("bad", |_| Reply::Full(502, vec![], b"broken".to_vec()));
    let good = Upstream::echo("good");
    let other = Upstream::echo("other");
    let passive = r#""health_checks": {"passive": {"consecutive_failures": 2, "base_ejection": "30s"}}"#;
    let extra = "    health_checks: {passive: {consecutive_failures: 2, base_ejection: \"30s\"}}";
    let gw = Gateway::start_with(
        &single(&[bad.addr, good.addr], extra, ""),
        &ringway_tests::gateway::default_driver(),
        &["--workers", "1"],
    );
    let mut c = Client::connect(gw.addr);
    for _ in 0..4 {
        c.get("/warm");
    }
    wait_state(&gw, bad.addr, "ejected", Duration::from_secs(2));
    // A change that keeps `bad` (a target added): still ejected.
    let put = |targets: &[std::net::SocketAddr]| {
        let t: Vec<String> = targets.iter().map(|a| format!(r#"{{"addr": "{a}"}}"#)).collect();
        let body = format!(r#"{{"targets": [{}], {passive}}}"#, t.join(","));
        let r = gw.admin("PUT", "/admin/v1/upstreams/u", Some(&body));
        assert_eq!(r.status, 200, "{}", r.text());
    };
    put(&[bad.addr, good.addr, other.addr]);
    assert_eq!(state_of(&gw, bad.addr), "ejected");
    let before = bad.request_count();
    for i in 0..12 {
        assert_eq!(c.get(&format!("/k{i}")).status, 200);
    }
    assert_eq!(bad.request_count(), before, "the kept ejection holds");
    // Removed, then added again: its state was retired, it starts healthy.
    put(&[good.addr, other.addr]);
    assert!(states(&gw).iter().all(|(a, _)| *a != bad.addr.to_string()));
    put(&[bad.addr, good.addr, other.addr]);
    assert_eq!(state_of(&gw, bad.addr), "healthy");
}

/// A target that sends a good head and then breaks its body off fails as surely as one that
/// answers 502: the attempt is settled once the answer was relayed.
#[test]
fn a_body_broken_off_counts_against_the_target() {
    let bad = Upstream::start("bad", |_| {
        Reply::RawThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec())
    });
    let good = Upstream::echo("good");
    let extra = "    health_checks: {passive: {consecutive_failures: 2, base_ejection: \"30s\"}}";
    let gw = Gateway::start_with(
        &single(&[bad.addr, good.addr], extra, ""),
        &ringway_tests::gateway::default_driver(),
        &["--workers", "1"],
    );
    let mut broken = 0;
    while broken < 2 {
        let mut c = Client::connect(gw.addr);
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        if c.try_read_response(false).is_none() {
            broken += 1;
        }
    }
    wait_state(&gw, bad.addr, "ejected", Duration::from_secs(5));
}
