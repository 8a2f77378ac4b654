//! Prometheus metrics: the scraped counts match the requests sent, exactly; the exposition is
//! well formed; labels come only from configuration and fixed sets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ringway_tests::upstream::{refused_addr, Reply};
use ringway_tests::{Client, Gateway, Upstream};

/// A parsed exposition: samples by their full series name (`name{labels}`), and the families
/// with their type.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or_else(|| panic!("no series {series}"))
    }

    /// The sum over every series of `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let (n, rest) = k.split_once('{').unwrap_or((k, ""));
                n == name && labels.iter().all(|l| rest.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Parses the text exposition strictly: every sample belongs to a family announced by `# HELP`
/// and `# TYPE` before it; names and label syntax are valid; histogram buckets are cumulative
/// and end with `+Inf`, equal to `_count`.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut helped = Vec::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.starts_with("ringway_")
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name), "bad name in {line}");
            helped.push(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.last().is_some_and(|h| h == name), "TYPE without HELP: {line}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "family twice: {name}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(!v.trim_end_matches('"').contains('\n'));
                }
            }
        }
        assert!(samples.insert(series.to_string(), value).is_none(), "series twice: {series}");
    }
    // Histograms: cumulative buckets, +Inf equal to the count.
    for (family, _) in types.iter().filter(|(_, t)| *t == "histogram") {
        let counts: Vec<(&String, &f64)> =
            samples.iter().filter(|(k, _)| k.starts_with(&format!("{family}_count{{"))).collect();
        for (count_key, count) in counts {
            let labels = &count_key[family.len() + "_count{".len()..count_key.len() - 1];
            let mut buckets: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|(k, v)| {
                    let le = k.strip_prefix(&format!("{family}_bucket{{{labels},le=\""))?.strip_suffix("\"}")?;
                    Some((if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() }, *v))
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}{{{labels}}}: buckets not cumulative");
            let inf = buckets.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
            assert_eq!(inf, Some(*count), "{family}{{{labels}}}: +Inf bucket and count differ");
        }
    }
    Scrape { samples, types }
}

fn scrape(gw: &Gateway) -> Scrape {
    let r = gw.admin("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), "content type {ct}");
    parse(&r.text())
}

/// `promtool check metrics` (Prometheus' own linter; `.ci/run` provides it) accepts `text`.
pub(crate) fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (from Debian's prometheus package) must be on PATH: bash .ci/run provides it");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");
}

#[test]
fn scraped_counts_match_the_requests_sent_exactly() {
    let up = Upstream::start("u", |r| match r.target.as_str() {
        "/cached" => Reply::Full(200, vec![("cache-control".into(), "max-age=60".into())], b"c".to_vec()),
        _ => Reply::Full(200, vec![], b"ok".to_vec()),
    });
    let (refused, _hold) = refused_addr();
    let cfg = format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{}\"\n  d:\n    targets:\n      - addr: \"{refused}\"\n\
         routes:\n  api:\n    paths: [\"/api/*\"]\n    upstream: u\n\
         \x20 limited:\n    paths: [\"/limited\"]\n    upstream: u\n    policies:\n      rate_limit: {{limit: 1, window: 1m, key: route}}\n\
         \x20 down:\n    paths: [\"/down\"]\n    upstream: d\n\
         \x20 cached:\n    paths: [\"/cached\"]\n    upstream: u\n    policies:\n      cache: {{ttl: 60s}}\n",
        up.addr
    );
    let gw = Gateway::start(&cfg);
    let before = scrape(&gw);
    assert_eq!(before.sum("ringway_requests_total", &[]), 0.0);
    assert_eq!(before.get("ringway_build_info{version=\"0.1.0\"}"), 1.0);

    // Several connections, so both workers count.
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(gw.addr)).collect();
    for i in 0..20 {
        assert_eq!(clients[i % 4].get("/api/x").status, 200);
    }
    for i in 0..6 {
        assert_eq!(clients[i % 4].request("POST", "/api/y", &[], b"body").status, 200);
    }
    for i in 0..3 {
        assert_eq!(clients[i % 4].request("PATCH", "/nope", &[], b"").status, 404);
    }
    // A method outside the fixed set counts as OTHER.
    assert_eq!(clients[0].request("PURGE", "/api/x", &[], b"").status, 200);
    assert_eq!(clients[1].get("/limited").status, 200);
    assert_eq!(clients[1].get("/limited").status, 429);
    assert_eq!(clients[1].get("/limited").status, 429);
    for _ in 0..2 {
        assert_eq!(Client::connect(gw.addr).get("/down").status, 502);
    }
    assert_eq!(clients[2].get("/cached").status, 200);
    assert_eq!(clients[2].get("/cached").status, 200);
    assert_eq!(clients[2].get("/cached").status, 200);

    // A request is counted when it ends, just after its response was written: a client may read
    // the last response a moment before it is counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = scrape(&gw);
        if s.sum("ringway_requests_total", &[]) >= 38.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let req = |route: &str, method: &str, status: u16| {
        s.get(&format!("ringway_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"))
    };
    assert_eq!(req("api", "GET", 200), 20.0);
    assert_eq!(req("api", "POST", 200), 6.0);
    assert_eq!(req("api", "OTHER", 200), 1.0);
    assert_eq!(req("", "PATCH", 404), 3.0, "no route: route=\"\"");
    assert_eq!(req("limited", "GET", 200), 1.0);
    assert_eq!(req("limited", "GET", 429), 2.0);
    assert_eq!(req("down", "GET", 502), 2.0);
    assert_eq!(req("cached", "GET", 200), 3.0);
    assert_eq!(s.sum("ringway_requests_total", &[]), 38.0, "nothing else counted");

    assert_eq!(s.get("ringway_request_duration_seconds_count{route=\"api\"}"), 27.0);
    assert_eq!(s.get("ringway_request_duration_seconds_count{route=\"\"}"), 3.0);
    assert!(s.get("ringway_request_duration_seconds_sum{route=\"api\"}") > 0.0);
    // The upstream answered 27 + 1 + 1 (cache miss) requests.
    assert_eq!(s.get("ringway_upstream_response_seconds_count{upstream=\"u\"}"), 29.0);

    assert_eq!(s.get("ringway_limit_refusals_total{route=\"limited\",limit=\"rate_limit\"}"), 2.0);
    assert_eq!(s.get("ringway_cache_requests_total{route=\"cached\",cache=\"miss\"}"), 1.0);
    assert_eq!(s.get("ringway_cache_requests_total{route=\"cached\",cache=\"hit\"}"), 2.0);

    let target = format!("upstream=\"u\",target=\"{}\"", up.addr);
    let connects = s.get(&format!("ringway_upstream_connects_total{{{target}}}"));
    let reuses = s.get(&format!("ringway_upstream_pool_reuses_total{{{target}}}"));
    assert_eq!(connects + reuses, 29.0, "every attempt on u used a new or a pooled connection");
    assert!((1.0..=4.0).contains(&connects), "pooled connections were reused: {connects} connects");
    assert_eq!(connects, up.accepted() as f64, "what the origin accepted");
    let down = format!("upstream=\"d\",target=\"{refused}\"");
    assert_eq!(s.get(&format!("ringway_upstream_connect_errors_total{{{down}}}")), 2.0);
    assert_eq!(s.get(&format!("ringway_upstream_connects_total{{{down}}}")), 0.0);

    // Per worker: the revision each serves, requests in flight, open connections.
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    let revision = status["revision"].as_f64().unwrap();
    for w in 0..2 {
        assert_eq!(s.get(&format!("ringway_config_revision{{worker=\"{w}\"}}")), revision);
        assert_eq!(s.get(&format!("ringway_access_log_dropped_total{{worker=\"{w}\"}}")), 0.0);
        assert_eq!(s.get(&format!("ringway_stats_dropped_total{{worker=\"{w}\"}}")), 0.0);
        let lag = s.get(&format!("ringway_event_loop_lag_seconds{{worker=\"{w}\"}}"));
        assert!((0.0..1.0).contains(&lag), "loop lag {lag}");
    }
    assert_eq!(s.sum("ringway_inflight_requests", &[]), 0.0);
    drop(clients);
    let three: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(gw.addr);
            assert_eq!(c.get("/api/open").status, 200);
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let open = scrape(&gw).sum("ringway_open_connections", &[]);
        if open == 3.0 {
            break;
        }
        assert!(Instant::now() < deadline, "open connections {open}, expected 3");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(three);
    promtool_accepts(&gw.admin("GET", "/metrics", None).text());
    assert_eq!(s.types["ringway_requests_total"], "counter");
    assert_eq!(s.types["ringway_request_duration_seconds"], "histogram");
    assert_eq!(s.types["ringway_open_connections"], "gauge");
}

#[test]
fn clients_cannot_add_series() {
    let up = Upstream::echo("u");
    let gw = Gateway::start(&crate::single(&[up.addr], "", ""));
    let series = |gw: &Gateway| scrape(gw).samples.len();
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/warm").status, 200);
    // The first request made the route's and the upstream's series once it was counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(&gw).sum("ringway_requests_total", &[]) < 1.0 {
        assert!(Instant::now() < deadline, "the first request was never counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let warm = series(&gw);
    for i in 0..200 {
        let path = format!("/p{i}?q={i}");
        let host = format!("h{i}.example");
        let id = format!("id-{i}");
        let r = c.request("GET", &path, &[("Host", host.as_str()), ("X-Request-Id", id.as_str())], b"");
        assert_eq!(r.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(&gw).sum("ringway_requests_total", &[]) < 201.0 {
        assert!(Instant::now() < deadline, "not every request was counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(series(&gw), warm, "paths, hosts and header values never become labels");
}
