//! Load balancing and upstream keep-alive pools.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ringway_tests::{Client, Gateway, Reply, Upstream};

use crate::both_drivers;

both_drivers!(sequential_requests_reuse_one_upstream_connection, consistent_hash_is_stable_per_key);

fn weighted(targets: &[(SocketAddr, u32)], lb: &str) -> String {
    let mut t = String::new();
    for (a, w) in targets {
        t.push_str(&format!("      - {{addr: \"{a}\", weight: {w}}}\n"));
    }
    format!("upstreams:\n  u:\n    targets:\n{t}{lb}\nroutes:\n  all:\n    paths: [\"/*\"]\n    upstream: u\n")
}

/// Which upstream served each request, by the echo body's first word.
fn tally(
    gw: &Gateway,
    requests: usize,
    connections: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> HashMap<String, usize> {
    let mut clients: Vec<Client> = (0..connections).map(|_| Client::connect(gw.addr)).collect();
    let mut counts = HashMap::new();
    for i in 0..requests {
        let h = headers(i);
        let hs: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let r = clients[i % connections].request("GET", "/", &hs, b"");
        assert_eq!(r.status, 200);
        *counts.entry(r.text().split(' ').next().unwrap().to_string()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn weighted_round_robin_within_two_percent() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::echo(n)).collect();
    let weights = [1u32, 3, 6];
    let targets: Vec<_> = ups.iter().zip(weights).map(|(u, w)| (u.addr, w)).collect();
    let gw = Gateway::start(&weighted(&targets, ""));
    let n = 10_000;
    let counts = tally(&gw, n, 8, |_| vec![]);
    for (u, w) in ups.iter().zip(weights) {
        let share = counts.get(&u.name).copied().unwrap_or(0) as f64 / n as f64;
        let want = f64::from(w) / 10.0;
        assert!(
            (share - want).abs() <= 0.02 * want.max(0.1),
            "{}: share {share:.4}, weight share {want:.4} ({counts:?})",
            u.name
        );
    }
}

fn sequential_requests_reuse_one_upstream_connection(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&weighted(&[(up.addr, 1)], ""), driver, &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    for i in 0..50 {
        assert_eq!(c.get(&format!("/{i}")).status, 200);
    }
    // A second client on the same worker reuses the pooled connection too.
    let mut c2 = Client::connect(gw.addr);
    assert_eq!(c2.get("/other").status, 200);
    assert_eq!(up.accepted(), 1, "every request should reuse the one pooled upstream connection");
    assert!(up.requests().iter().all(|r| r.conn == 1));
}

#[test]
fn stale_pooled_connection_is_retried() {
    // The upstream closes every connection after answering, without saying so.
    let up = Upstream::start("a", |_| Reply::RawThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()));
    let gw = Gateway::start_with(&weighted(&[(up.addr, 1)], ""), "auto", &["--workers", "1"]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..5 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.request_count(), 5);
}

fn consistent_hash_is_stable_per_key(driver: &str) {
    let ups: Vec<Upstream> = ["a", "b", "c", "d"].iter().map(|n| Upstream::echo(n)).collect();
    let targets: Vec<_> = ups.iter().map(|u| (u.addr, 1)).collect();
    let lb = "    lb: consistent_hash\n    hash_on: \"header:X-User\"";
    let gw = Gateway::start_with(&weighted(&targets, lb), driver, &[]);
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.addr)).collect();
    for round in 0..3 {
        for k in 0..100 {
            let key = format!("user-{k}");
            let r = clients[(k + round) % 4].request("GET", "/", &[("X-User", &key)], b"");
            let who = r.text().split(' ').next().unwrap().to_string();
            let prev = seen.entry(key.clone()).or_insert_with(|| who.clone());
            assert_eq!(*prev, who, "{key} moved between requests");
        }
    }
    let used: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(used.len(), 4, "keys should spread over every target");
}

#[test]
fn consistent_hash_moves_about_one_nth_when_a_target_is_added() {
    let ups: Vec<Upstream> = ["a", "b", "c", "d", "e"].iter().map(|n| Upstream::echo(n)).collect();
    let lb = "    lb: consistent_hash\n    hash_on: \"header:X-User\"";
    let keys = 1000;
    let map = |n: usize| -> Vec<String> {
        let targets: Vec<_> = ups[..n].iter().map(|u| (u.addr, 1)).collect();
        let gw = Gateway::start(&weighted(&targets, lb));
        let mut c = Client::connect(gw.addr);
        (0..keys)
            .map(|k| {
                c.request("GET", "/", &[("X-User", &format!("u{k}"))], b"")
                    .text()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let before = map(4);
    let after = map(5);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert!(after.iter().zip(&before).all(|(a, b)| a == b || a == "e"), "keys may only move to the new target");
    let frac = moved as f64 / keys as f64;
    assert!((0.12..=0.28).contains(&frac), "moved {frac:.3} of keys; about 1/5 expected");
}

#[test]
fn least_conn_prefers_the_idle_target() {
    let handler = |name: &'static str| {
        move |r: &ringway_tests::SeenRequest| {
            let body = Reply::Full(200, vec![], name.as_bytes().to_vec());
            if r.target == "/slow" {
                Reply::Delay(Duration::from_millis(1500), Box::new(body))
            } else {
                body
            }
        }
    };
    let a = Upstream::start("a", handler("a"));
    let b = Upstream::start("b", handler("b"));
    let gw =
        Gateway::start_with(&weighted(&[(a.addr, 1), (b.addr, 1)], "    lb: least_conn"), "auto", &["--workers", "1"]);
    // Occupy one target with a slow request; every quick request then goes to the other.
    let addr = gw.addr;
    let busy = std::thread::spawn(move || Client::connect(addr).get("/slow").text());
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Client::connect(gw.addr);
    let quick: Vec<String> = (0..6).map(|_| c.get("/").text()).collect();
    let busy_target = busy.join().unwrap();
    assert!(quick.iter().all(|t| *t != busy_target), "quick requests went to the busy target {busy_target}: {quick:?}");
}

#[test]
fn p2c_ewma_avoids_the_slow_target() {
    // Far slower than the fast target is, even when the machine is busy with other tests and
    // the fast target's answers are late too.
    let slow = Upstream::start("slow", |_| {
        Reply::Delay(Duration::from_millis(100), Box::new(Reply::Full(200, vec![], b"slow".to_vec())))
    });
    let fast = Upstream::echo("fast");
    let gw = Gateway::start_with(
        &weighted(&[(slow.addr, 1), (fast.addr, 1)], "    lb: p2c_ewma"),
        "auto",
        &["--workers", "1"],
    );
    let counts = tally(&gw, 200, 1, |_| vec![]);
    let fast_n = counts.get("fast").copied().unwrap_or(0);
    assert!(fast_n >= 170, "fast target served {fast_n} of 200 ({counts:?})");
}

#[test]
fn consistent_hash_with_large_weights_stays_small_and_proportional() {
    let ups: Vec<Upstream> = ["a", "b"].iter().map(|n| Upstream::echo(n)).collect();
    let lb = "    lb: consistent_hash\n    hash_on: \"header:X-User\"";
    let gw = Gateway::start(&weighted(&[(ups[0].addr, 1), (ups[1].addr, 1)], lb));
    assert_eq!(Client::connect(gw.addr).get("/").status, 200);
    let before = gw.rss_kib();
    let put = |weights: [u32; 2]| {
        let body = format!(
            r#"{{"targets": [{{"addr": "{}", "weight": {}}}, {{"addr": "{}", "weight": {}}}], "lb": "consistent_hash", "hash_on": "header:X-User"}}"#,
            ups[0].addr, weights[0], ups[1].addr, weights[1]
        );
        gw.admin("PUT", "/admin/v1/upstreams/u", Some(&body))
    };
    let bad = put([5_000, 20_000]);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("upstreams.u.targets[1].weight"), "{}", bad.text());
    let r = put([5_000, 10_000]);
    assert_eq!(r.status, 200, "{}", r.text());
    let grown = gw.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the ring grew the gateway by {grown} KiB");
    let n = 3000;
    let counts = tally(&gw, n, 4, |i| vec![("X-User".into(), format!("user-{i}"))]);
    let share = counts.get("b").copied().unwrap_or(0) as f64 / n as f64;
    assert!((share - 2.0 / 3.0).abs() < 0.05, "share of the target with twice the weight: {share:.3} ({counts:?})");
}
