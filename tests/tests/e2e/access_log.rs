//! JSON access logs: one line per request with its route, upstream, target, sizes, times and
//! how it ended; W3C trace context; reopening on SIGHUP; the configuration's `access_log`; and
//! a stalled log that drops lines instead of slowing requests.

use std::path::Path;
use std::time::{Duration, Instant};

use ringway_tests::upstream::{refused_addr, Reply};
use ringway_tests::{Client, Gateway, Upstream};
use serde_json::Value;

use crate::both_drivers;

/// The fields every line has (the others are left out where they do not apply), and none is
/// ever written as null.
const FIELDS: [&str; 8] = ["ts", "request_id", "worker", "bytes_in", "bytes_out", "duration_ms", "attempts", "end"];

/// Waits until `path` holds at least `n` lines; returns them parsed.
fn lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut text = std::fs::read_to_string(path).unwrap_or_default();
        // A line the log thread is still writing is not read yet.
        text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
        let all: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
        if all.len() >= n || Instant::now() > deadline {
            assert_eq!(all.len(), n, "lines in {}:\n{text}", path.display());
            for l in &all {
                for f in FIELDS {
                    assert!(l.get(f).is_some(), "field {f} missing: {l}");
                }
                assert!(l.as_object().unwrap().values().all(|v| !v.is_null()), "a null field: {l}");
            }
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a gateway logging to `access.log` in its scratch directory.
fn start_logged(cfg: &str, driver: &str, extra: &[&str]) -> (Gateway, std::path::PathBuf) {
    let dir = ringway_tests::gateway::scratch_dir();
    let log = dir.join("access.log");
    let path = log.display().to_string();
    let mut flags = vec!["--access-log", path.as_str()];
    flags.extend_from_slice(extra);
    let gw = Gateway::start_in(dir, Some(cfg), driver, &flags).unwrap_or_else(|(s, l)| panic!("{s:?}: {l}"));
    (gw, log)
}

fn config(up: &str, extra_route: &str) -> String {
    format!(
        "upstreams:\n  u:\n    targets:\n      - addr: \"{up}\"\n    timeouts: {{response_head: 300ms}}\n\
         routes:\n  api:\n    paths: [\"/api/*\"]\n    upstream: u\n{extra_route}"
    )
}

fn a_line_per_request_with_route_target_sizes_times_and_trace(driver: &str) {
    let up = Upstream::echo("a");
    let (gw, log) = start_logged(&config(&up.addr.to_string(), ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    let inbound = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c.request("POST", "/api/x?secret=1", &[("traceparent", inbound)], b"hello");
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    let r2 = c.get("/elsewhere");
    assert_eq!(r2.status, 404);
    // Upper-case hex is not a valid trace context: a new trace starts.
    let r3 =
        c.request("GET", "/api/y", &[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01")], b"");
    assert_eq!(r3.status, 200);

    let l = lines(&log, 3);
    let p = &l[0];
    assert_eq!(p["request_id"], id.as_str());
    assert_eq!(p["route"], "api");
    assert_eq!(p["upstream"], "u");
    assert_eq!(p["target"], up.addr.to_string().as_str());
    assert_eq!(p["method"], "POST");
    assert_eq!(p["host"], "test.local");
    assert_eq!(p["path"], "/api/x", "the query is left out unless asked for");
    assert_eq!(p["status"], 200);
    assert_eq!(p["bytes_in"], 5);
    assert_eq!(p["bytes_out"], r.body.len() as u64);
    assert_eq!(p["attempts"], 1);
    assert_eq!(p["end"], "completed");
    // Fields that do not apply are left out, not written as null.
    for absent in ["error", "error_source", "error_phase", "cache", "limit", "consumer"] {
        assert!(p.get(absent).is_none(), "{absent} in {p}");
    }
    assert_eq!(p["client_ip"], "127.0.0.1");
    assert!(p["worker"].as_u64().is_some());
    assert!(p["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(p["upstream_connect_ms"].as_f64().is_some(), "{p}");
    let head = p["upstream_head_ms"].as_f64().unwrap();
    assert!(head <= p["duration_ms"].as_f64().unwrap());
    let ts = p["ts"].as_str().unwrap();
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "RFC 3339 with milliseconds: {ts}");
    // The trace goes on upstream with the gateway's own span as the parent.
    assert_eq!(p["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let seen = up.requests();
    let sent = seen[0].header("traceparent").unwrap();
    assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && sent.ends_with("-01"), "{sent}");
    assert_ne!(&sent[36..52], "00f067aa0ba902b7", "the gateway's span is the parent");
    assert_eq!(seen[0].header_all("traceparent").len(), 1);

    let n = &l[1];
    for absent in ["route", "upstream", "target", "upstream_head_ms", "upstream_last_ms"] {
        assert!(n.get(absent).is_none(), "{absent} in {n}");
    }
    assert_eq!(n["status"], 404);
    assert_eq!(n["end"], "error");
    assert_eq!(n["error"], "no_route");
    assert_eq!((n["error_source"].as_str(), n["error_phase"].as_str()), (Some("gateway"), Some("route")));
    assert_eq!(n["attempts"], 0);
    assert_eq!(n["bytes_out"], r2.body.len() as u64);
    assert_eq!(n["path"], "/elsewhere");

    let t = &l[2];
    let trace = t["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(t.get("upstream_connect_ms").is_none(), "the pooled connection was reused: {t}");
    let sent = seen[1].header("traceparent").unwrap();
    assert_eq!(&sent[3..35], trace, "the new trace goes upstream");
}

fn every_way_a_request_ends_is_told_apart(driver: &str) {
    let slow = Upstream::start("slow", |r| match r.target.as_str() {
        "/api/hang" => Reply::Hang,
        "/api/cut" => Reply::RawThenClose(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b".to_vec()),
        "/api/big" => Reply::Generated(64 << 20),
        _ => Reply::Full(200, vec![], b"ok".to_vec()),
    });
    let (refused, _hold) = refused_addr();
    let cfg = format!(
        "{}  limited:\n    paths: [\"/limited\"]\n    upstream: u\n    policies:\n      rate_limit: {{limit: 1, window: 1m, key: route}}\n  \
         down:\n    paths: [\"/down\"]\n    upstream: d\n",
        config(&slow.addr.to_string(), "")
    )
    .replace("routes:", &format!("  d:\n    targets:\n      - addr: \"{refused}\"\nroutes:"));
    let (gw, log) = start_logged(&cfg, driver, &[]);
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/limited").status, 200);
    assert_eq!(c.get("/limited").status, 429);
    assert_eq!(Client::connect(gw.addr).get("/down").status, 502);
    assert_eq!(Client::connect(gw.addr).get("/api/hang").status, 504);
    // The origin closes after 10 of 1000 bytes: the client gets a cut response.
    let mut c2 = Client::connect(gw.addr);
    c2.send(b"GET /api/cut HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert!(c2.is_closed(Duration::from_secs(5)));
    // The client reads the head of a large response and goes away.
    let mut c3 = Client::connect(gw.addr);
    c3.send(b"GET /api/big HTTP/1.1\r\nHost: test.local\r\n\r\n");
    let head = c3.read_head().expect("a response head");
    assert_eq!(head.status, 200);
    drop(c3);

    let l = lines(&log, 6);
    let find = |path: &str, status: Option<u64>| {
        l.iter()
            .find(|v| v["path"] == path && status.is_none_or(|s| v["status"] == s))
            .unwrap_or_else(|| panic!("no line for {path}: {l:?}"))
            .clone()
    };
    let ok = find("/limited", Some(200));
    assert_eq!((ok["end"].as_str(), ok["limit"].as_str()), (Some("completed"), None));
    let refused_line = find("/limited", Some(429));
    assert_eq!(refused_line["end"], "policy");
    assert_eq!(refused_line["limit"], "rate_limit");
    assert_eq!(refused_line["upstream"], Value::Null);
    let down = find("/down", None);
    assert_eq!((down["status"].as_u64(), down["end"].as_str()), (Some(502), Some("error")));
    assert_eq!(down["error"], "upstream_unreachable");
    assert_eq!((down["error_source"].as_str(), down["error_phase"].as_str()), (Some("upstream"), Some("connect")));
    assert_eq!(down["target"], refused.to_string().as_str());
    assert_eq!(down["attempts"], 1);
    let hang = find("/api/hang", None);
    assert_eq!((hang["status"].as_u64(), hang["end"].as_str()), (Some(504), Some("timeout")));
    assert_eq!(hang["error"], "upstream_timeout");
    assert_eq!(hang["error_phase"], "response_head");
    let cut = find("/api/cut", None);
    assert_eq!((cut["status"].as_u64(), cut["end"].as_str()), (Some(200), Some("upstream_reset")));
    assert_eq!((cut["error_source"].as_str(), cut["error_phase"].as_str()), (Some("upstream"), Some("response_body")));
    assert_eq!(cut["bytes_out"], 10);
    let big = find("/api/big", None);
    assert_eq!((big["status"].as_u64(), big["end"].as_str()), (Some(200), Some("client_abort")));
    assert!(big["bytes_out"].as_u64().unwrap() < 64 << 20);
}

both_drivers!(a_line_per_request_with_route_target_sizes_times_and_trace, every_way_a_request_ends_is_told_apart);

#[test]
fn the_query_is_logged_only_when_asked_and_no_line_is_lost() {
    let up = Upstream::echo("a");
    let (gw, log) = start_logged(&config(&up.addr.to_string(), ""), &crate::default_driver(), &["--access-log-query"]);
    // Several connections, so both workers log.
    let n = 600;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..n / 4 {
                    assert_eq!(c.get(&format!("/api/q?t={t}&i={i}")).status, 200);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let l = lines(&log, n);
    let mut paths: Vec<&str> = l.iter().map(|v| v["path"].as_str().unwrap()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), n, "every request has its own line");
    assert!(paths.iter().all(|p| p.starts_with("/api/q?t=")));
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(status["access_log"]["dropped"], 0);
}

#[test]
fn sighup_reopens_the_file_after_rotation() {
    let up = Upstream::echo("a");
    let (gw, log) = start_logged(&config(&up.addr.to_string(), ""), &crate::default_driver(), &[]);
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/api/before").status, 200);
    lines(&log, 1);
    let rotated = gw.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    // Lines written before the signal still go to the moved file.
    assert_eq!(c.get("/api/moved").status, 200);
    lines(&rotated, 2);
    gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.get("/api/after").status, 200);
    let after = lines(&log, 1);
    assert_eq!(after[0]["path"], "/api/after");
    assert_eq!(lines(&rotated, 2)[1]["path"], "/api/moved");
}

#[test]
fn the_configuration_turns_the_log_on_and_off_and_refuses_a_file_it_cannot_open() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&config(&up.addr.to_string(), ""));
    let log = gw.dir.join("from-config.log");
    let mut c = Client::connect(gw.addr);
    assert_eq!(c.get("/api/unlogged").status, 200);
    let doc = |access_log: &str| {
        format!(
            r#"{{"access_log": {access_log}, "upstreams": {{"u": {{"targets": [{{"addr": "{}"}}], "timeouts": {{"response_head": "300ms"}}}}}},
                "routes": {{"api": {{"paths": ["/api/*"], "upstream": "u"}}}}}}"#,
            up.addr
        )
    };
    let bad = gw.admin("PUT", "/admin/v1/config", Some(&doc("\"/nonexistent-dir/x.log\"")));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json()["problems"][0]["path"], "access_log", "{}", bad.text());
    let r = gw.admin("PUT", "/admin/v1/config", Some(&doc(&format!("\"{}\"", log.display()))));
    assert_eq!(r.status, 200, "{}", r.text());
    let cfg = gw.admin("GET", "/admin/v1/config", None).json();
    assert_eq!(cfg["access_log"], log.display().to_string().as_str());
    assert_eq!(c.get("/api/logged").status, 200);
    assert_eq!(lines(&log, 1)[0]["path"], "/api/logged");
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    assert_eq!(status["access_log"]["destination"], log.display().to_string().as_str());
    let r = gw.admin("PUT", "/admin/v1/config", Some(&doc("\"off\"")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get("/api/off-again").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(lines(&log, 1).len(), 1);
}

#[test]
fn a_stalled_log_drops_and_counts_lines_and_never_holds_requests() {
    use std::os::unix::fs::OpenOptionsExt;
    let up = Upstream::echo("a");
    let dir = ringway_tests::gateway::scratch_dir();
    let fifo = dir.join("stalled.fifo");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path this test owns.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    // A reader that never reads: the writer's opens succeed, its writes stall once the pipe is
    // full, as on a disk that stopped answering.
    let _reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let gw = Gateway::start_in(
        dir,
        Some(&config(&up.addr.to_string(), "")),
        &crate::default_driver(),
        &["--access-log", fifo.to_str().unwrap(), "--access-log-buffer", "4096"],
    )
    .unwrap();
    let mut c = Client::connect(gw.addr);
    let started = Instant::now();
    for i in 0..2000 {
        assert_eq!(c.get(&format!("/api/{i}")).status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(30), "requests were held: {:?}", started.elapsed());
    let status = gw.admin("GET", "/admin/v1/status", None).json();
    let dropped = status["access_log"]["dropped"].as_u64().unwrap();
    assert!(dropped > 1000, "dropped {dropped}");
}

#[test]
fn refused_heads_are_logged_with_their_sender_and_tracestate_goes_only_with_its_trace() {
    let up = Upstream::echo("a");
    let (gw, log) = start_logged(&config(&up.addr.to_string(), ""), &crate::default_driver(), &[]);
    // `_` in a header name: refused by the codec before anything else is read.
    let mut bad = Client::connect(gw.addr);
    bad.send(b"GET /api/x HTTP/1.1\r\nHost: test.local\r\nX_Y: 1\r\n\r\n");
    assert_eq!(bad.read_response(false).status, 400);
    let mut c = Client::connect(gw.addr);
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c.request("GET", "/api/t1", &[("traceparent", valid), ("tracestate", "vendor=1")], b"");
    assert_eq!(r.status, 200);
    let r = c.request("GET", "/api/t2", &[("traceparent", "00-zz-00-01"), ("tracestate", "vendor=2")], b"");
    assert_eq!(r.status, 200);
    let l = lines(&log, 3);
    let refused = l.iter().find(|v| v["status"] == 400).expect("a line for the refused head");
    assert_eq!(refused["client_ip"], "127.0.0.1");
    assert_eq!((refused["end"].as_str(), refused["error_phase"].as_str()), (Some("error"), Some("head")));
    assert_eq!(refused["upstream"], Value::Null);
    let seen = up.requests();
    assert_eq!(seen[0].header("tracestate"), Some("vendor=1"), "the state of a continued trace goes on");
    assert_eq!(seen[1].header("tracestate"), None, "the state of a replaced trace does not");
}

#[test]
fn a_capturing_route_logs_headers_redacted_and_bodies_capped() {
    let up = Upstream::start("u", |r| {
        let body = if r.target.ends_with("/big") { vec![b'z'; 5000] } else { b"pong".to_vec() };
        Reply::Full(
            200,
            vec![("set-cookie".into(), "sid=secret-session".into()), ("x-kind".into(), "demo".into())],
            body,
        )
    });
    let extra =
        "  plain:\n    paths: [\"/plain/*\"]\n    upstream: u\n  cap:\n    paths: [\"/cap/*\"]\n    upstream: u\n    \
                 capture: {max_bytes: 16, redact_headers: [x-private]}\n";
    let (gw, log) = start_logged(&config(&up.addr.to_string(), extra), &crate::default_driver(), &[]);
    let mut c = Client::connect(gw.addr);
    let headers = [
        ("Authorization", "Bearer top-secret-token"),
        ("Cookie", "sid=client-cookie"),
        ("apikey", "key-123"),
        ("X-Private", "hidden"),
        ("X-Visible", "shown"),
    ];
    assert_eq!(c.request("POST", "/cap/a", &headers, b"hello capture body that is long").status, 200);
    assert_eq!(c.request("GET", "/cap/big", &[], b"").status, 200);
    assert_eq!(c.request("GET", "/plain/x", &headers, b"").status, 200);
    let all = lines(&log, 3);
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["top-secret-token", "client-cookie", "key-123", "hidden", "secret-session"] {
        assert!(!text.contains(secret), "{secret} reached the log:\n{text}");
    }
    let cap = &all[0]["capture"];
    let has =
        |list: &Value, name: &str, value: &str| list.as_array().unwrap().iter().any(|p| p[0] == name && p[1] == value);
    assert!(has(&cap["request_headers"], "authorization", "[redacted]"), "{cap}");
    assert!(has(&cap["request_headers"], "cookie", "[redacted]"));
    assert!(has(&cap["request_headers"], "apikey", "[redacted]"));
    assert!(has(&cap["request_headers"], "x-private", "[redacted]"));
    assert!(has(&cap["request_headers"], "x-visible", "shown"));
    assert_eq!(cap["request_body"], "hello capture bo");
    assert_eq!(cap["request_body_truncated"], true);
    assert!(has(&cap["response_headers"], "set-cookie", "[redacted]"));
    assert!(has(&cap["response_headers"], "x-kind", "demo"));
    assert_eq!(cap["response_body"], "pong");
    assert_eq!(cap["response_body_truncated"], false);
    let big = &all[1]["capture"];
    assert_eq!(big["response_body"], "z".repeat(16));
    assert_eq!(big["response_body_truncated"], true);
    assert!(all[2].get("capture").is_none(), "a route without capture logs none");
    // A bad rule is refused with its path.
    let r = gw.admin(
        "PUT",
        "/admin/v1/routes/bad",
        Some(r#"{"paths": ["/b"], "upstream": "u", "capture": {"max_bytes": 0}}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("routes.bad.capture.max_bytes"), "{}", r.text());
}
