//! Runs the real binary: an origin on 127.0.0.1 port 0 and short load runs against it, in
//! closed-loop and open-loop modes, checking that the numbers are sane (not fast).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringway-perf");

/// The origin process, killed when the test ends however it ends.
struct Origin {
    child: Child,
    addr: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_origin(extra: &[&str]) -> Origin {
    let mut child = Command::new(BIN)
        .args(["origin", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("origin starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let mut origin = Origin { child, addr: String::new() };
    let line = rx.recv_timeout(Duration::from_secs(10)).expect("origin prints its address");
    origin.addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected origin output {line:?}"))
        .to_string();
    assert!(origin.addr.starts_with("127.0.0.1:"));
    assert!(!origin.addr.ends_with(":0"));
    origin
}

/// Runs `load --json` with the given extra arguments, bounded in time, and parses the report.
fn load(addr: &str, extra: &[&str]) -> serde_json::Value {
    let url = format!("http://{addr}/bench/x");
    let mut child = Command::new(BIN)
        .args(["load", "--url", &url, "--json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("load starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("load did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "load failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("load prints JSON")
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn assert_sane(report: &serde_json::Value) {
    assert!(num(report, &["requests"]) > 0.0, "{report}");
    assert_eq!(num(report, &["errors"]), 0.0, "{report}");
    assert_eq!(num(report, &["non_2xx"]), 0.0, "{report}");
    assert!(num(report, &["throughput_rps"]) > 0.0);
    let p50 = num(report, &["latency_us", "p50"]);
    let p90 = num(report, &["latency_us", "p90"]);
    let p99 = num(report, &["latency_us", "p99"]);
    let p999 = num(report, &["latency_us", "p999"]);
    let max = num(report, &["latency_us", "max"]);
    assert!(p50 > 0.0);
    assert!(p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max, "{report}");
}

#[test]
fn closed_loop_get_against_origin() {
    let origin = start_origin(&["--body-size", "1000"]);
    let report = load(&origin.addr, &["--connections", "8", "--duration", "1"]);
    assert_sane(&report);
    assert_eq!(report["mode"], "closed");
    let requests = num(&report, &["requests"]);
    assert_eq!(num(&report, &["body_bytes"]), requests * 1000.0);
}

#[test]
fn post_bodies_new_connections_and_request_cap() {
    let origin = start_origin(&["--body-size", "70000"]);
    let report = load(
        &origin.addr,
        &[
            "--connections",
            "4",
            "--duration",
            "5",
            "--requests",
            "300",
            "--method",
            "POST",
            "--body-size",
            "20000",
            "--new-connection-per-request",
        ],
    );
    assert_sane(&report);
    assert_eq!(num(&report, &["requests"]), 300.0);
    assert_eq!(num(&report, &["body_bytes"]), 300.0 * 70000.0);
}

#[test]
fn open_loop_keeps_the_schedule() {
    let origin = start_origin(&[]);
    let report = load(&origin.addr, &["--connections", "4", "--duration", "1", "--rate", "400"]);
    assert_sane(&report);
    assert_eq!(report["mode"], "open");
    // A fixed schedule of 400 req/s over 1 s holds exactly 400 slots.
    assert_eq!(num(&report, &["requests"]), 400.0);
}

#[test]
fn refuses_non_loopback_targets() {
    let out =
        Command::new(BIN).args(["load", "--url", "http://192.0.2.1:80/", "--duration", "1"]).output().expect("runs");
    assert!(!out.status.success());
}

/// A tiny blocking server that answers every request with a chunked body (split over several
/// writes) and serves until `deadline`.
fn chunked_server(deadline: Instant) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            std::thread::spawn(move || {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while Instant::now() < deadline {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    buf.drain(..end + 4);
                    let parts: [&[u8]; 3] = [
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhe",
                        b"llo\r\nA\r\n0123456789\r\n",
                        b"0\r\nTrailer: t\r\n\r\n",
                    ];
                    for part in parts {
                        if stream.write_all(part).and_then(|_| stream.flush()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn chunked_responses_are_framed() {
    let addr = chunked_server(Instant::now() + Duration::from_secs(20));
    let report = load(&addr, &["--connections", "2", "--duration", "5", "--requests", "200"]);
    assert_sane(&report);
    assert_eq!(num(&report, &["requests"]), 200.0);
    assert_eq!(num(&report, &["body_bytes"]), 200.0 * 15.0);
}
