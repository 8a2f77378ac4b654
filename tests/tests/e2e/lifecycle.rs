//! Start-up and shutdown: configuration errors refuse to start, SIGTERM drains.

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ringway_tests::gateway::default_driver;
use ringway_tests::{Client, Gateway, Reply, Upstream};

use crate::{both_drivers, single};

both_drivers!(sigterm_drains_in_flight_requests_then_exits_zero);

fn sigterm_drains_in_flight_requests_then_exits_zero(driver: &str) {
    let up = Upstream::start("a", |r| {
        let body = Reply::Full(200, vec![], format!("done {}", r.target).into_bytes());
        if r.target == "/slow" {
            Reply::Delay(Duration::from_millis(1500), Box::new(body))
        } else {
            body
        }
    });
    let mut gw = Gateway::start_with(&single(&[up.addr], "", ""), driver, &[]);
    let addr = gw.addr;
    // An idle keep-alive client and an in-flight slow request.
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/warm").status, 200);
    let in_flight = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        let r = c.get("/slow");
        let closed = c.is_closed(Duration::from_secs(5));
        (r, closed)
    });
    std::thread::sleep(Duration::from_millis(400));
    gw.signal(libc::SIGTERM);

    // The idle connection is closed promptly, without waiting for its keep-alive timeout.
    assert!(idle.is_closed(Duration::from_secs(3)), "idle keep-alive connection survived the drain");
    // New connections are refused once the listeners are closed.
    std::thread::sleep(Duration::from_millis(200));
    let refused = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(_) => true,
        Ok(s) => Client::from_stream(s).is_closed(Duration::from_secs(2)),
    };
    assert!(refused, "a new connection was accepted during the drain");
    // The in-flight request completes, marked as the connection's last.
    let (r, closed) = in_flight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "done /slow");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed);
    let status = gw.wait_exit(Duration::from_secs(10)).expect("gateway exits after the drain");
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
    assert!(gw.logged("draining"));
}

#[test]
fn invalid_config_is_refused_with_every_problem() {
    let cfg = r#"
upstreams:
  u:
    targets: [{addr: "nowhere"}]
    lb: fastest
    timeouts: {connect: "2 parsecs"}
routes:
  r1: {paths: ["no-slash"], upstream: u}
  r2: {paths: ["/x"], upstream: missing}
"#;
    let (status, log) = match Gateway::try_start(cfg, &default_driver(), &[]) {
        Ok(_) => panic!("an invalid config was accepted"),
        Err(e) => e,
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    for needle in [
        "upstreams.u.targets[0].addr",
        "upstreams.u.lb",
        "upstreams.u.timeouts.connect",
        "routes.r1.paths[0]",
        "routes.r2.upstream",
    ] {
        assert!(log.contains(needle), "{needle} not reported:\n{log}");
    }
    // Unknown fields are named with their path.
    let (_, log) =
        Gateway::try_start("routes:\n  r: {paths: [\"/\"], upstream: u, colour: red}\n", &default_driver(), &[])
            .err()
            .expect("unknown field accepted");
    assert!(log.contains("routes.r") && log.contains("colour"), "{log}");
}

#[test]
fn sample_config_is_valid() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../admin/ringway.yaml");
    let out =
        Command::new(env!("CARGO_BIN_EXE_ringway-under-test")).args(["--check", "--config", sample]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

#[test]
fn runs_on_the_epoll_driver_when_asked_and_says_so() {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), "epoll", &[]);
    assert!(gw.logged("driver epoll"), "{}", gw.log());
    assert_eq!(Client::connect(gw.addr).get("/").status, 200);
    let gw = Gateway::start_with(&single(&[up.addr], "", ""), "io_uring", &[]);
    assert!(gw.logged("driver io_uring"), "{}", gw.log());
}

/// Each thread of the gateway (`main` for the first): its name and the CPUs it may run on.
fn threads_cpus(gw: &Gateway) -> Vec<(String, Vec<usize>)> {
    let cpus = |status: &str| {
        let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).expect("Cpus_allowed_list");
        ringway_runtime::parse_cpu_list(list).expect("a list of CPUs")
    };
    gw.threads().into_iter().map(|(name, status)| (name, cpus(&status))).collect()
}

#[test]
fn background_threads_run_on_the_cpus_named_for_them() {
    let up = Upstream::echo("a");
    let mine = ringway_runtime::allowed_cpus();
    let last = *mine.last().unwrap();
    let cfg = single(&[up.addr], "", "");
    let gw = Gateway::start_with(&cfg, &default_driver(), &["--background-cpus", &last.to_string()]);
    assert_eq!(Client::connect(gw.addr).get("/").status, 200);
    let threads = threads_cpus(&gw);
    let on = |name: &str| threads.iter().find(|(n, _)| n == name).map(|(_, c)| c.clone());
    // The store's own threads too, started as it opened (RocksDB names them on glibc; with its
    // default of two background jobs, one flushes on `rocksdb:high`).
    for name in ["access-log", "ringway-stats", "ringway-admin", "health", "rocksdb:low", "rocksdb:high"] {
        assert_eq!(on(name), Some(vec![last]), "{name}: {threads:?}");
    }
    // The workers (not pinned here) and the main thread, which opened the store, keep the
    // process's CPUs.
    assert_eq!(on("ringway-w0"), Some(mine.clone()), "{threads:?}");
    assert_eq!(on("main"), Some(mine.clone()), "{threads:?}");
    drop(gw);
    // `any`: wherever the process may run.
    let gw = Gateway::start_with(&cfg, &default_driver(), &["--background-cpus", "any"]);
    assert_eq!(threads_cpus(&gw).iter().find(|(n, _)| n == "access-log").map(|(_, c)| c.clone()), Some(mine));
    drop(gw);
    // A CPU the machine does not have is refused before anything starts.
    let (status, log) = match Gateway::try_start(&cfg, &default_driver(), &["--background-cpus", "0,99999"]) {
        Ok(_) => panic!("a CPU that does not exist was accepted"),
        Err(e) => e,
    };
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("CPU 99999 does not exist"), "{log}");
}
