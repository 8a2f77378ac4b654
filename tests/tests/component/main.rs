//! Component tests: one proxy worker run in this process (no admin, no store) under both
//! drivers, in front of the harness's upstreams. The worker's clock is movable, so expiry and
//! windows are tested by moving time instead of sleeping; its counters are read directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringway_proxy::clock::{Clock, ClockHand};
use ringway_proxy::metrics::Registry;
use ringway_proxy::{run_worker, Ack, ConfigSpec, Control, Snapshot, WorkerSetup};
use ringway_runtime::{mailbox, spawn_workers, MailboxSender, WorkerOptions, Workers};
use ringway_tests::upstream::Reply;
use ringway_tests::{both_drivers, Client, Upstream};

/// One worker serving `config` (JSON) on a port of its own.
struct Worker {
    addr: SocketAddr,
    control: MailboxSender<Control>,
    workers: Option<Workers>,
    clock: ClockHand,
    registry: Registry,
}

impl Worker {
    fn start(driver: &str, config: &str) -> Worker {
        let spec: ConfigSpec = serde_json::from_str(config).expect("config");
        let snapshot = Arc::new(Snapshot::compile(&spec, 1).expect("config compiles"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // The epoll driver expects a non-blocking listener.
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (control, rx) = mailbox();
        let (acks, ack_rx) = crossbeam_channel::unbounded::<Ack>();
        let (invalidations, _) = crossbeam_channel::unbounded();
        let (registry, mut halves) = Registry::new(1, "test", None);
        let (clock, hand) = Clock::movable();
        let setup = std::sync::Mutex::new(Some(WorkerSetup {
            tls_listener: None,
            listener,
            mailbox: rx,
            snapshot,
            limits: Default::default(),
            acks,
            seed: 7,
            workers: 1,
            cache_bytes: 1 << 20,
            limit_keys: 1000,
            limit_bank: Arc::new(ringway_proxy::LimitBank::new(1 << 16)),
            invalidations,
            caps: Arc::new(ringway_proxy::ConnectionCaps::new(1000, 0)),
            metrics: halves.pop().unwrap(),
            log: None,
            traces: None,
            identity: None,
            keys: Default::default(),
            clock,
        }));
        let opts = WorkerOptions { count: 1, driver: driver.parse().unwrap(), pin: false, defer_taskrun: false };
        let workers = spawn_workers(opts, move |ctx| {
            let setup = setup.lock().unwrap().take();
            async move {
                if let Some(setup) = setup {
                    run_worker(ctx, setup).await;
                }
            }
        })
        .expect("worker starts");
        ack_rx.recv_timeout(Duration::from_secs(10)).expect("the worker acknowledges its snapshot");
        Worker { addr, control, workers: Some(workers), clock: hand, registry }
    }

    /// The exposition once it shows every line of `want` (a request is counted when it ends,
    /// just after its response was written, so a client may read it a moment before).
    fn metrics_with(&mut self, want: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut out = String::new();
            self.registry.render(&mut out);
            if want.iter().all(|w| out.contains(w)) || std::time::Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Drain(Duration::from_secs(1)));
        if let Some(w) = self.workers.take() {
            w.join();
        }
    }
}

fn one_route(up: SocketAddr, policies: &str) -> String {
    format!(
        r#"{{"upstreams": {{"u": {{"targets": [{{"addr": "{up}"}}]}}}},
            "routes": {{"r": {{"paths": ["/*"], "upstream": "u", "policies": {{{policies}}}}}}}}}"#
    )
}

fn proxies_and_counts_every_request(driver: &str) {
    let up = Upstream::echo("a");
    let mut w = Worker::start(driver, &one_route(up.addr, ""));
    let mut c = Client::connect(w.addr);
    for _ in 0..5 {
        let r = c.get("/x");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "a GET /x");
    }
    assert_eq!(c.request("POST", "/x", &[], b"abc").status, 200);
    let want = [
        "ringway_requests_total{route=\"r\",method=\"GET\",status=\"200\"} 5\n",
        "ringway_requests_total{route=\"r\",method=\"POST\",status=\"200\"} 1\n",
        "ringway_request_duration_seconds_count{route=\"r\"} 6\n",
    ];
    let m = w.metrics_with(&want);
    for line in want {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
}

fn a_stored_response_expires_when_time_moves(driver: &str) {
    let up = Upstream::start("u", |_| Reply::Full(200, vec![], b"fresh".to_vec()));
    let mut w = Worker::start(driver, &one_route(up.addr, r#""cache": {"ttl": "60s"}"#));
    let mut c = Client::connect(w.addr);
    assert_eq!(c.get("/doc").header("x-cache-status"), Some("MISS"));
    assert_eq!(c.get("/doc").header("x-cache-status"), Some("HIT"));
    assert_eq!(up.request_count(), 1);
    // A minute later, without waiting one.
    w.clock.advance(61_000);
    assert_eq!(c.get("/doc").header("x-cache-status"), Some("EXPIRED"));
    assert_eq!(up.request_count(), 2);
    assert_eq!(c.get("/doc").header("x-cache-status"), Some("HIT"));
    let want = [
        "ringway_cache_requests_total{route=\"r\",cache=\"hit\"} 2\n",
        "ringway_cache_requests_total{route=\"r\",cache=\"expired\"} 1\n",
    ];
    let m = w.metrics_with(&want);
    for line in want {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
}

fn a_rate_limit_window_passes_when_time_moves(driver: &str) {
    let up = Upstream::echo("a");
    // Limits are counted node-wide, and this process is one node: each test has its own route.
    let route = format!("r-{driver}");
    let config = one_route(up.addr, r#""rate_limit": {"limit": 2, "window": "1h", "key": "route"}"#)
        .replace("\"r\":", &format!("\"{route}\":"));
    let mut w = Worker::start(driver, &config);
    let mut c = Client::connect(w.addr);
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 429);
    // Two hours later: the window has passed, without waiting for it.
    w.clock.advance(2 * 3_600_000);
    assert_eq!(c.get("/").status, 200);
    let line = format!("ringway_limit_refusals_total{{route=\"{route}\",limit=\"rate_limit\"}} 1\n");
    let m = w.metrics_with(&[&line]);
    assert!(m.contains(&line), "{m}");
}

both_drivers!(
    proxies_and_counts_every_request,
    a_stored_response_expires_when_time_moves,
    a_rate_limit_window_passes_when_time_moves
);
