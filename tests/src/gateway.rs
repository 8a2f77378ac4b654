//! The gateway process. It tells its bound addresses in a JSON file whose path the harness
//! passes in `RINGWAY_TEST_ADDRESSES` (see `src/bin/gateway.rs`); its log is kept for the
//! tests to read.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh scratch directory for one test.
pub fn scratch_dir() -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringway-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The gateway binary cargo built for these tests: `RINGWAY_BIN`, or `ringway-under-test`
/// beside the test executable's `deps/` folder.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGWAY_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target directory");
    let bin = dir.join("ringway-under-test");
    assert!(bin.exists(), "{} not found: run the tests with cargo", bin.display());
    bin
}

/// A running gateway.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The metrics-only listener, when started with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// The TLS listener, when started with `--tls-listen`.
    pub tls: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    pub dir: PathBuf,
    /// Keep `dir` when dropped (for a restart on the same data).
    pub keep_dir: bool,
}

/// The driver tests run under: `RINGWAY_TEST_DRIVER` or `auto`.
pub fn default_driver() -> String {
    std::env::var("RINGWAY_TEST_DRIVER").unwrap_or_else(|_| "auto".into())
}

impl Gateway {
    /// Starts with 2 workers under the default driver.
    pub fn start(config: &str) -> Gateway {
        Self::start_with(config, &default_driver(), &[])
    }

    /// Starts with `config` (YAML), `driver` and extra flags.
    pub fn start_with(config: &str, driver: &str, extra: &[&str]) -> Gateway {
        Self::try_start(config, driver, extra)
            .unwrap_or_else(|(status, log)| panic!("gateway did not start ({status:?}):\n{log}"))
    }

    /// Starts, or returns the exit status and log when the process ends before listening.
    pub fn try_start(config: &str, driver: &str, extra: &[&str]) -> Result<Gateway, (Option<ExitStatus>, String)> {
        Self::start_in(scratch_dir(), Some(config), driver, extra)
    }

    /// Starts with its data in `dir` (`dir/data`), seeding from `config` when given; without
    /// one, a new store is asked for with `--init` (an existing one is reopened).
    pub fn start_in(
        dir: PathBuf,
        config: Option<&str>,
        driver: &str,
        extra: &[&str],
    ) -> Result<Gateway, (Option<ExitStatus>, String)> {
        let mut args: Vec<String> = Vec::new();
        if let Some(config) = config {
            let cfg = dir.join("ringway.yaml");
            std::fs::write(&cfg, config).expect("write config");
            args.extend(["--config".into(), cfg.display().to_string()]);
        }
        if config.is_none() && !dir.join("data").join("CURRENT").exists() && !extra.contains(&"--init") {
            args.push("--init".into());
        }
        if !extra.contains(&"--admin-listen") {
            args.extend(["--admin-listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(["--data-dir".into(), dir.join("data").display().to_string()]);
        args.extend(["--listen".into(), "127.0.0.1:0".into(), "--driver".into(), driver.into(), "--no-pin".into()]);
        if !extra.contains(&"--workers") {
            args.extend(["--workers".into(), "2".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let addresses = dir.join("addresses.json");
        let _ = std::fs::remove_file(&addresses);
        let mut child = Command::new(binary())
            .args(&args)
            .env("RINGWAY_LOG", "info")
            .env("RINGWAY_TEST_ADDRESSES", &addresses)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for pipe in [
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((addr, admin, metrics, tls)) = read_addresses(&addresses) {
                return Ok(Gateway { child, addr, admin, metrics, tls, log, dir, keep_dir: false });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // The whole log: the pipes close when the process ends.
                for r in readers {
                    let _ = r.join();
                }
                return Err((Some(status), log.lock().unwrap().join("\n")));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err((None, log.lock().unwrap().join("\n")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGKILL and waits for the process to end.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A request to the admin API (`Host` is its address); `body` is sent as JSON. Every
    /// method but GET and HEAD says `Content-Type: application/json`, body or not, as the API
    /// requires.
    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> crate::Response {
        let mut c = crate::Client::connect(self.admin);
        let host = self.admin.to_string();
        let mut headers = vec![("Host", host.as_str())];
        if body.is_some() || !matches!(method, "GET" | "HEAD") {
            headers.push(("Content-Type", "application/json"));
        }
        c.request(method, path, &headers, body.unwrap_or("").as_bytes())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Each thread of the gateway: its name (`main` for the process's first thread) and its
    /// `/proc/PID/task/TID/status`.
    pub fn threads(&self) -> Vec<(String, String)> {
        let pid = self.pid().to_string();
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the gateway's tasks").flatten() {
            let (Ok(comm), Ok(status)) = (
                std::fs::read_to_string(task.path().join("comm")),
                std::fs::read_to_string(task.path().join("status")),
            ) else {
                // A thread that ended meanwhile.
                continue;
            };
            let main = task.file_name().to_str() == Some(pid.as_str());
            out.push((if main { "main".to_string() } else { comm.trim().to_string() }, status));
        }
        out
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether the log comes to hold `needle` within five seconds (its lines are read from the
    /// process's pipes by threads of their own, so a line written just now may not be there yet).
    pub fn logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether any file of the configuration store (its directory, recursively) holds `needle`.
    pub fn store_holds(&self, needle: &[u8]) -> bool {
        let mut dirs = vec![self.dir.join("data")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("the store's directory").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if std::fs::read(&p).is_ok_and(|f| f.windows(needle.len()).any(|w| w == needle)) {
                    return true;
                }
            }
        }
        false
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// The addresses a started gateway wrote: (data plane, admin API, metrics listener).
type Addresses = (SocketAddr, SocketAddr, Option<SocketAddr>, Option<SocketAddr>);

fn read_addresses(path: &Path) -> Option<Addresses> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).expect("the address file is JSON");
    let addr = |k: &str| v[k].as_str().map(|a| a.parse::<SocketAddr>().expect("an address"));
    Some((addr("data")?, addr("admin")?, addr("metrics"), addr("tls")))
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
