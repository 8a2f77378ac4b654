//! The library entry point: a gateway started inside the test process, used, and stopped.

use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use ringway_admin::Args;
use ringway_tests::gateway::{default_driver, scratch_dir};
use ringway_tests::{Client, Upstream};

#[test]
fn the_library_runs_a_gateway_in_process_and_stops_it() {
    let up = Upstream::echo("a");
    let dir = scratch_dir();
    let cfg = dir.join("ringway.yaml");
    std::fs::write(&cfg, crate::single(&[up.addr], "", "")).unwrap();
    let data = dir.join("data");
    let driver = default_driver();
    let args = Args::try_parse_from([
        "ringway",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--no-pin",
        "--driver",
        &driver,
        "--drain-timeout",
        "5s",
    ])
    .unwrap();
    let gw = ringway_admin::start(args).expect("the gateway starts");
    let (data_addr, admin_addr) = (gw.data_addr(), gw.admin_addr());
    let metrics_addr = gw.metrics_addr().expect("a metrics listener");

    // Through the data plane to the upstream, and the admin API and metrics beside it.
    assert_eq!(Client::connect(data_addr).get("/lib").text(), "a GET /lib");
    let host = admin_addr.to_string();
    let r = Client::connect(admin_addr).request("GET", "/admin/v1/status", &[("Host", &host)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revision"], 1);
    let r = Client::connect(metrics_addr).request("GET", "/metrics", &[("Host", "scraper")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("ringway_build_info{"), "{}", r.text());

    // Idle keep-alive connections on every listener do not hold the stop up.
    let mut idle = Client::connect(data_addr);
    assert_eq!(idle.get("/warm").status, 200);
    let mut idle_admin = Client::connect(admin_addr);
    assert_eq!(idle_admin.request("GET", "/admin/v1/status", &[("Host", &host)], b"").status, 200);

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = gw.stop();
        let _ = tx.send((r.map_err(|e| e.to_string()), t.elapsed()));
    });
    let (stopped, took) = rx.recv_timeout(Duration::from_secs(30)).expect("stop did not return within 30 s");
    assert_eq!(stopped, Ok(()));
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    for addr in [data_addr, admin_addr, metrics_addr] {
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "{addr} still accepts");
    }
    assert!(idle.is_closed(Duration::from_secs(2)) && idle_admin.is_closed(Duration::from_secs(2)));
    let _ = std::fs::remove_dir_all(&dir);
}
