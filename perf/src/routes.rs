//! `ringway-perf routes`: route-matching cost as the route count grows (10 to 10,000 routes),
//! on the compiled router the gateway itself uses. The figure of merit is the ratio between the
//! largest and the smallest table: a linear scan would grow 1,000-fold.

use std::hint::black_box;
use std::time::Instant;

use ringway_proxy::config::{ConfigSpec, RouteSpec, TargetSpec, UpstreamSpec};
use ringway_proxy::Snapshot;

/// A document with `n` routes of mixed shapes: exact paths, parameters, prefixes, exact and
/// wildcard hosts.
pub fn document(n: usize) -> ConfigSpec {
    let mut spec = ConfigSpec::default();
    spec.upstreams.insert(
        "u".into(),
        UpstreamSpec { targets: vec![TargetSpec { addr: "127.0.0.1:9".into(), weight: 1 }], ..Default::default() },
    );
    for i in 0..n {
        let (hosts, paths) = match i % 5 {
            0 => (vec![], vec![format!("/svc{i}/items")]),
            1 => (vec![], vec![format!("/svc{i}/users/{{id}}")]),
            2 => (vec![], vec![format!("/svc{i}/static/*")]),
            3 => (vec![format!("h{i}.example.com")], vec!["/*".to_string()]),
            _ => (vec![format!("*.w{i}.example.com")], vec![format!("/api{i}/*")]),
        };
        spec.routes.insert(
            format!("r{i:05}"),
            RouteSpec {
                hosts,
                paths,
                upstream: "u".into(),
                methods: if i % 7 == 0 { vec!["GET".into()] } else { vec![] },
                ..Default::default()
            },
        );
    }
    spec
}

/// Requests that hit routes spread over the whole table, and some misses.
fn requests(n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in 0..1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x as usize) % n;
        let req = match (i % 5, k % 8) {
            (_, 7) => ("nowhere.test".to_string(), format!("/missing/{i}/x")),
            (0, _) => ("api.test".to_string(), format!("/svc{i}/items")),
            (1, _) => ("api.test".to_string(), format!("/svc{i}/users/42")),
            (2, _) => ("api.test".to_string(), format!("/svc{i}/static/css/site.css")),
            (3, _) => (format!("h{i}.example.com"), "/any/path".to_string()),
            _ => (format!("a.w{i}.example.com"), format!("/api{i}/v1/orders")),
        };
        out.push(req);
    }
    out
}

/// Nanoseconds per lookup over `rounds` passes of the request set.
pub fn measure(n: usize, rounds: usize) -> (f64, usize) {
    let spec = document(n);
    let snap = Snapshot::compile(&spec, 1).expect("benchmark document compiles");
    let reqs = requests(n);
    let mut hits = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for (host, path) in &reqs {
            let r = snap.router.find(black_box(host), black_box(path), |r| r.admits("GET", |_| None));
            hits += usize::from(r.is_some());
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (rounds * reqs.len()) as f64;
    (ns, hits / rounds)
}

/// Runs the benchmark and prints a table.
pub fn run(rounds: usize) {
    println!("| routes | ns per lookup | hits of 1024 | vs 10 routes |");
    println!("|---:|---:|---:|---:|");
    let mut base = None;
    for n in [10, 100, 1_000, 10_000] {
        let (ns, hits) = measure(n, rounds);
        let b = *base.get_or_insert(ns);
        println!("| {n} | {ns:.1} | {hits} | {:.2}x |", ns / b);
    }
}
