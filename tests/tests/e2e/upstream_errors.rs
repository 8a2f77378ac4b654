//! Upstream failures: unreachable (502), slow (504), malformed answers (502) — each with a JSON
//! body, and the worker goes on serving everything else meanwhile.

use std::time::{Duration, Instant};

use ringway_tests::{Client, Gateway, Reply, Upstream};

use crate::both_drivers;

both_drivers!(unreachable_slow_and_broken_upstreams);

fn unreachable_slow_and_broken_upstreams(driver: &str) {
    // A port with nothing listening.
    // Bound and never listening: refused, and no other socket (the admin API!) can take it.
    let (dead, _dead_guard) = ringway_tests::upstream::refused_addr();
    let slow = Upstream::start("slow", |_| Reply::Hang);
    let broken = Upstream::start("broken", |r| match r.target.as_str() {
        "/both" => Reply::RawThenClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\nok".to_vec(),
        ),
        _ => Reply::RawThenClose(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
    });
    let ok = Upstream::echo("ok");
    let cfg = format!(
        r#"upstreams:
  dead: {{targets: [{{addr: "{dead}"}}], timeouts: {{connect: "1s"}}}}
  slow: {{targets: [{{addr: "{}"}}], timeouts: {{response_head: "300ms"}}}}
  broken: {{targets: [{{addr: "{}"}}]}}
  ok: {{targets: [{{addr: "{}"}}]}}
routes:
  dead: {{paths: ["/dead"], upstream: dead}}
  slow: {{paths: ["/slow"], upstream: slow}}
  broken: {{paths: ["/broken", "/both"], upstream: broken}}
  ok: {{paths: ["/ok"], upstream: ok}}
"#,
        slow.addr, broken.addr, ok.addr
    );
    let gw = Gateway::start_with(&cfg, driver, &["--workers", "1"]);
    let check = |path: &str, status: u16, code: &str| {
        let mut c = Client::connect(gw.addr);
        let r = c.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["error"], code, "{path}");
        assert!(r.header("x-request-id").is_some());
    };
    check("/dead", 502, "upstream_unreachable");
    let t = Instant::now();
    check("/slow", 504, "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
    check("/broken", 502, "bad_upstream_response");
    check("/both", 502, "bad_upstream_response");

    // While a slow request waits on the one worker, others are served.
    let addr = gw.addr;
    let waiting = std::thread::spawn(move || Client::connect(addr).get("/slow").status);
    let mut c = Client::connect(gw.addr);
    for _ in 0..20 {
        assert_eq!(c.get("/ok").status, 200);
    }
    assert_eq!(waiting.join().unwrap(), 504);
}

/// A client that pipelines requests and never reads the answers: once the gateway's write to it
/// stalls for `--write-timeout`, the connection is closed, and everyone else is still served.
#[test]
fn a_client_that_never_reads_is_cut_off_after_the_write_timeout() {
    use std::io::Write;
    let up = Upstream::echo("a");
    let gw =
        Gateway::start_with(&crate::single(&[up.addr], "", ""), &crate::default_driver(), &["--write-timeout", "1s"]);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n".repeat(256);
    let t = Instant::now();
    let err = loop {
        if let Err(e) = s.write_all(&req) {
            break e;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the gateway never closed the connection");
    };
    assert!(
        !matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "the client's writes stalled instead of the gateway closing: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "closed only after {:?}", t.elapsed());
    assert_eq!(Client::connect(gw.addr).get("/still").status, 200);
}
