//! Bodies both ways: large streamed bodies with bounded memory, chunked re-framing,
//! close-delimited responses, 100-continue, and answers that carry no body.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringway_tests::upstream::{checksum, pattern_byte};
use ringway_tests::{Client, Gateway, Reply, Upstream};

use crate::{both_drivers, default_driver, single};

both_drivers!(chunked_bodies_both_ways, close_delimited_response, expect_100_continue, bodiless_answers_keep_framing);

const GIB: u64 = 1 << 30;

/// Samples the gateway's RSS until stopped; returns the largest value seen (KiB).
fn rss_sampler(gw: &Gateway) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let pid = gw.pid();
    let (s, m) = (stop.clone(), max.clone());
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                m.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (stop, max, h)
}

#[test]
fn one_gib_upload_and_download_with_bounded_memory() {
    let up = Upstream::start("big", |r| {
        if r.method == "GET" {
            Reply::Generated(GIB)
        } else {
            Reply::Full(200, vec![], format!("{} {}", r.body_len, r.body_sum).into_bytes())
        }
    });
    // No body cap for this gateway (the default is 1 MiB).
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), &default_driver(), &["--max-body-bytes", "0"]);
    let baseline = gw.rss_kib();
    let (stop, max, sampler) = rss_sampler(&gw);

    // Upload: 1 GiB with Content-Length, written while the gateway streams it on.
    let mut c = Client::connect(gw.addr);
    c.send(format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n").as_bytes());
    let block: Vec<u8> = (0..251u64 * 1024).map(pattern_byte).collect();
    let mut sent = 0u64;
    let mut sum = 0u64;
    while sent < GIB {
        let n = (GIB - sent).min(block.len() as u64) as usize;
        c.stream.write_all(&block[..n]).expect("upload");
        sum = checksum(sum, sent, &block[..n]);
        sent += n as u64;
    }
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("{GIB} {sum}"), "the upstream received exactly the bytes sent");

    // Download: 1 GiB on the same connection.
    c.send(b"GET /download HTTP/1.1\r\nHost: a\r\n\r\n");
    let head = c.read_head().expect("response head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(GIB.to_string().as_str()));
    let mut got = 0u64;
    let mut sum = 0u64;
    c.stream_body(GIB, |d| {
        sum = checksum(sum, got, d);
        got += d.len() as u64;
    });
    let mut expected = 0u64;
    let mut off = 0u64;
    while off < GIB {
        let n = (GIB - off).min(block.len() as u64) as usize;
        expected = checksum(expected, off, &block[..n]);
        off += n as u64;
    }
    assert_eq!(sum, expected, "the client received exactly the bytes the upstream sent");

    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = max.load(Ordering::Relaxed);
    assert!(peak < baseline + 32 * 1024, "RSS grew from {baseline} KiB to {peak} KiB while streaming 1 GiB each way");
}

fn chunked_bodies_both_ways(driver: &str) {
    let up = Upstream::start("a", |r| Reply::Chunked(200, vec![b"echo:".to_vec(), r.body.clone(), b":end".to_vec()]));
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    c.send(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"1\r\n \r\n");
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "echo:hello world:end");
    let seen = &up.requests()[0];
    assert!(seen.chunked, "a chunked request stays chunked upstream");
    assert_eq!(seen.body, b"hello world");
    // The connection stays usable after chunked bodies both ways.
    c.send(b"POST /c2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
    assert_eq!(c.read_response(false).text(), "echo:ok:end");
    assert_eq!(up.accepted(), 1);
}

fn close_delimited_response(driver: &str) {
    let up = Upstream::start("a", |_| Reply::RawThenClose(b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nuntil the end".to_vec()));
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    // HTTP/1.1 clients get it chunked and keep their connection.
    let mut c = Client::connect(gw.addr);
    let r = c.get("/");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "until the end");
    assert_eq!(c.get("/again").text(), "until the end");
    // HTTP/1.0 clients get it delimited by the close.
    let mut c = Client::connect(gw.addr);
    c.send(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.text(), "until the end");
}

fn expect_100_continue(driver: &str) {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    c.send(b"PUT /doc HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    let interim = c.read_head().expect("interim response");
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    let seen = &up.requests()[0];
    assert_eq!(seen.body, b"hello");
    // The origin was asked, and its own 100 reached the client.
    assert_eq!(seen.header("expect"), Some("100-continue"));
}

fn bodiless_answers_keep_framing(driver: &str) {
    let up = Upstream::start("a", |r| match r.target.as_str() {
        "/head" => Reply::Raw(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n".to_vec()),
        "/204" => Reply::Raw(b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_vec()),
        "/304" => Reply::Raw(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec()),
        _ => Reply::Full(200, vec![], b"after".to_vec()),
    });
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let mut c = Client::connect(gw.addr);
    let r = c.request("HEAD", "/head", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"), "HEAD keeps the resource's length");
    let r = c.get("/204");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    let r = c.get("/304");
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    // Had any of those carried stray body bytes, this would be misread.
    assert_eq!(c.get("/next").text(), "after");
    assert_eq!(up.accepted(), 1);
}
