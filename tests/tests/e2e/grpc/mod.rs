//! gRPC through the gateway: calls of every kind relayed between HTTP/2 clients and an HTTP/2
//! (h2c) upstream, and the gateway's own answers to a call given as gRPC statuses. The origin
//! and the client are grpcio (`tests/grpc/server.py`, `client.py`); what the gateway says by
//! itself is read frame by frame (`raw.py`), with no client library enforcing deadlines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ringway_tests::Gateway;
use serde_json::Value;

mod transcode;
mod web;

pub(crate) struct Origin {
    child: Child,
    pub port: u16,
    /// The service's descriptor set (compiled by the origin at start).
    pub descriptors: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.descriptors);
    }
}

pub(crate) fn script(name: &str) -> String {
    format!("{}/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn origin() -> Origin {
    let mut child = Command::new("python3")
        .arg(script("server.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut descriptors, mut port) = (String::new(), 0);
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        match line.trim().split_once(' ') {
            Some(("descriptors", p)) => descriptors = p.to_string(),
            Some(("listening", p)) => port = p.parse().unwrap(),
            _ => panic!("the gRPC origin said {line:?}"),
        }
    }
    Origin { child, port, descriptors }
}

/// One scenario of `client.py` against `addr`, as the JSON it printed.
pub(crate) fn call(addr: std::net::SocketAddr, o: &Origin, scenario: &str, arg: &str) -> Value {
    let out = Command::new("python3")
        .args([&script("client.py"), &addr.to_string(), &o.descriptors, scenario, arg])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{scenario}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// One request written frame by frame: the answer's head, body (hex) and trailers.
pub(crate) fn raw(addr: std::net::SocketAddr, path: &str, body_hex: &str, fields: &[&str]) -> Value {
    let out = Command::new("python3")
        .args([&script("raw.py"), &addr.to_string(), path, body_hex])
        .args(fields)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text} {}", String::from_utf8_lossy(&out.stderr)))
}

pub(crate) fn upstream(name: &str, port: u16) -> String {
    format!("  {name}:\n    protocol: h2c\n    targets:\n      - addr: \"127.0.0.1:{port}\"\n")
}

#[test]
fn calls_of_every_kind_pass_through_with_their_metadata_trailers_and_statuses() {
    let o = origin();
    let cfg = format!(
        "upstreams:\n{}routes:\n  echo:\n    paths: [\"/demo.v1.Echo/*\"]\n    methods: [POST]\n    upstream: g\n",
        upstream("g", o.port)
    );
    let gw = Gateway::start(&cfg);

    let direct = |scenario: &str, arg: &str| call(format!("127.0.0.1:{}", o.port).parse().unwrap(), &o, scenario, arg);
    let unary = call(gw.addr, &o, "unary", "");
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["item"], direct("unary", "")["item"], "the same message as straight from the origin");
    assert_eq!(unary["initial"]["x-echo-color"], "blue", "request metadata reached the origin: {unary}");
    assert_eq!(unary["initial"]["x-served-by"], "echo", "response metadata came back");
    assert_eq!(unary["trailing"]["x-trailer"], "done", "trailers came back");

    let many = call(gw.addr, &o, "server_stream", "300");
    let ids: Vec<String> = (0..300).map(|i| format!("s-{i}")).collect();
    assert_eq!(many["ids"], serde_json::json!(ids), "server streaming, every message in order");

    let collected = call(gw.addr, &o, "client_stream", "50");
    assert_eq!((collected["count"].as_i64(), collected["copies"].as_i64()), (Some(50), Some(1225)), "{collected}");

    // Each message goes only after the answer to the one before came back: both directions of
    // the call move at once through the gateway.
    let chat = call(gw.addr, &o, "bidi", "20");
    let replies: Vec<String> = (0..20).map(|i| format!("re:{i}")).collect();
    assert_eq!(chat["got"], serde_json::json!(replies), "{chat}");

    // A trailers-only failure, with its details, exactly as the origin wrote them.
    let failed = call(gw.addr, &o, "fail", "9");
    assert_eq!(failed["code"], "FAILED_PRECONDITION");
    assert_eq!(failed["details"], "failed on purpose: é");
    assert_eq!(failed["status_bin"], direct("fail", "9")["status_bin"], "grpc-status-details-bin unchanged");
    assert!(failed["status_bin"].as_str().unwrap().len() > 40);
    assert_eq!(failed["x-trailer"], "failed");
}

#[test]
fn the_gateways_own_answers_to_a_call_are_grpc_statuses() {
    let o = origin();
    let (dead, _hold) = ringway_tests::upstream::refused_addr();
    let cfg = format!(
        "upstreams:\n{}{}  dead:\n    protocol: h2c\n    targets:\n      - addr: \"{dead}\"\nroutes:\n  open:\n    paths: [\"/demo.v1.Echo/Slow\", \"/demo.v1.Echo/Chat\"]\n    upstream: g\n  keyed:\n    paths: [\"/demo.v1.Echo/Get\"]\n    upstream: g\n    policies:\n      key_auth: {{}}\n      acl: {{allow_groups: [gold]}}\n  limited:\n    paths: [\"/demo.v1.Echo/List\"]\n    upstream: g2\n    policies:\n      rate_limit: {{limit: 1, window: 1m, key: route}}\n  gone:\n    paths: [\"/demo.v1.Echo/Ping\"]\n    upstream: dead\nconsumers:\n  alice:\n    groups: [gold]\n    credentials:\n      key_auth:\n        - key: alice-key-0123456789abcdef\n  bob:\n    groups: [bronze]\n    credentials:\n      key_auth:\n        - key: bob-key-0123456789abcdef01\n",
        upstream("g", o.port),
        upstream("g2", o.port),
    );
    let gw = Gateway::start(&cfg);

    let no_route = raw(gw.addr, "/other.Service/Method", "0000000000", &[]);
    assert_eq!(no_route["head"][":status"], "200", "{no_route}");
    assert_eq!(no_route["head"]["grpc-status"], "12", "UNIMPLEMENTED: {no_route}");
    assert_eq!(no_route["head"]["content-type"], "application/grpc");
    assert!(no_route["head"]["grpc-message"].as_str().unwrap().contains("no route"), "{no_route}");
    assert!(no_route["head"]["x-request-id"].is_string());

    assert_eq!(call(gw.addr, &o, "unary", "")["code"], "UNAUTHENTICATED");
    assert_eq!(call(gw.addr, &o, "unary", "apikey=bob-key-0123456789abcdef01")["code"], "PERMISSION_DENIED");
    let alice = call(gw.addr, &o, "unary", "apikey=alice-key-0123456789abcdef");
    assert_eq!(alice["code"], "OK", "{alice}");

    assert_eq!(call(gw.addr, &o, "server_stream", "2")["code"], "OK");
    let limited = raw(gw.addr, "/demo.v1.Echo/List", "0000000000", &[]);
    assert_eq!(limited["head"]["grpc-status"], "8", "RESOURCE_EXHAUSTED: {limited}");
    assert!(limited["head"]["retry-after"].is_string(), "the limit's fields come along: {limited}");

    let gone = raw(gw.addr, "/demo.v1.Echo/Ping", "0000000000", &[]);
    assert_eq!(gone["head"]["grpc-status"], "14", "UNAVAILABLE: {gone}");

    // The deadline is the gateway's to keep: it answers DEADLINE_EXCEEDED by itself and
    // cancels the upstream's call (the origin sees the cancellation).
    let started = std::time::Instant::now();
    let slow = raw(gw.addr, "/demo.v1.Echo/Slow", "000000000308b817", &["grpc-timeout=300m"]);
    assert_eq!(slow["head"]["grpc-status"], "4", "DEADLINE_EXCEEDED: {slow}");
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(2500), "answered at the deadline, not after the call: {took:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let seen = call(gw.addr, &o, "cancelled", "");
    assert_eq!(seen["id"], "cancelled:1", "the origin's call was cancelled: {seen}");
    let fine = raw(gw.addr, "/demo.v1.Echo/Slow", "00000000020864", &["grpc-timeout=5S"]);
    assert_eq!(fine["trailers"]["grpc-status"], "0", "within its deadline: {fine}");
}

/// Upstream `u`'s targets and their states, from its health report.
fn target_state(gw: &Gateway) -> (String, Value) {
    let r = gw.admin("GET", "/admin/v1/upstreams/u/health", None).json();
    let t = &r["targets"][0];
    (t["state"].as_str().unwrap_or("").to_string(), r.clone())
}

#[test]
fn the_grpc_health_checking_protocol_takes_a_target_out_and_back() {
    let o = origin();
    let cfg = format!(
        "upstreams:\n  u:\n    protocol: h2c\n    targets:\n      - addr: \"127.0.0.1:{}\"\n    health_checks: {{active: {{type: grpc, service: demo.v1.Echo, interval: 100ms, timeout: 80ms, healthy_after: 1, unhealthy_after: 2}}}}\nroutes:\n  echo:\n    paths: [\"/demo.v1.Echo/*\"]\n    upstream: u\n",
        o.port
    );
    let gw = Gateway::start(&cfg);
    let wait = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (state, report) = target_state(&gw);
            if state == want {
                return report;
            }
            assert!(std::time::Instant::now() < deadline, "not {want}: {report}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(400));
    wait("healthy");
    let origin_addr: std::net::SocketAddr = format!("127.0.0.1:{}", o.port).parse().unwrap();
    // The origin answers NOT_SERVING (2) from now on.
    raw(origin_addr, "/test.Control/SetHealth", "00000000020802", &[]);
    let report = wait("unhealthy");
    assert!(report.to_string().contains("not serving (status 2)"), "the reason is kept: {report}");
    let refused = raw(gw.addr, "/demo.v1.Echo/Ping", "0000000000", &[]);
    assert_eq!(refused["head"]["grpc-status"], "14", "no healthy target: UNAVAILABLE: {refused}");
    raw(origin_addr, "/test.Control/SetHealth", "00000000020801", &[]);
    wait("healthy");
    assert_eq!(call(gw.addr, &o, "unary", "")["code"], "OK");

    // `service` belongs to grpc checks only.
    let bad = gw.admin(
        "PUT",
        "/admin/v1/upstreams/x",
        Some(
            r#"{"targets": [{"addr": "127.0.0.1:1"}], "health_checks": {"active": {"type": "http", "service": "a"}}}"#,
        ),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("upstreams.x.health_checks.active.service"), "{}", bad.text());
}
