//! The `load` subcommand: spreads connection slots over threads (one monoio runtime each),
//! runs them for a bounded time and request count, and merges their statistics.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::client::{connect, run_slot, Budget, Plan, SlotClock, Stats};
use crate::report::{LoadReport, RunInfo};

/// HTTP methods the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// `GET` without a body.
    #[value(name = "GET", alias = "get")]
    Get,
    /// `POST` with a body of `--body-size` bytes.
    #[value(name = "POST", alias = "post")]
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Options of the `load` subcommand.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Target, `http://HOST:PORT/PATH`; HOST must be a loopback address or `localhost`.
    #[arg(long)]
    pub url: String,
    /// Concurrent connections (slots) in total.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Threads, each running its own runtime and share of the connections.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Length of the run in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests in total.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open-loop mode: total requests per second on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// HTTP method.
    #[arg(long, value_enum, default_value = "GET")]
    pub method: Method,
    /// Request body size in bytes (POST only).
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Open a new connection for every request (and ask the server to close it).
    #[arg(long)]
    pub new_connection_per_request: bool,
    /// A header line sent with every request (`Name: value`); repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Longest wait for one response, in milliseconds; slower ones count as errors.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Longest time spent opening the initial keep-alive connections.
const PRECONNECT_BUDGET: Duration = Duration::from_secs(2);

/// Longest run accepted, so a typo cannot start a run of days.
const MAX_DURATION_S: f64 = 3600.0;

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Resolved loopback address.
    pub addr: SocketAddr,
    /// `Host` header value (the authority as written).
    pub authority: String,
    /// Request target, starting with `/`.
    pub path: String,
}

/// Parses `http://HOST:PORT/PATH`, refusing anything that does not resolve to loopback.
pub fn parse_url(url: &str) -> Result<Target> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("missing host in {url}");
    }
    let has_port = authority.rfind(':').is_some_and(|i| !authority[i..].contains(']'));
    let with_port = if has_port { authority.to_string() } else { format!("{authority}:80") };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| anyhow!("{authority} is not a loopback address; load stays on this host"))?;
    Ok(Target { addr, authority: authority.to_string(), path: path.to_string() })
}

/// Builds the request bytes sent for every request of the run.
pub fn build_request(target: &Target, args: &LoadArgs) -> Vec<u8> {
    let body_size = if args.method == Method::Post { args.body_size } else { 0 };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ringway-perf\r\nAccept: */*\r\n",
        args.method.as_str(),
        target.path,
        target.authority
    );
    if args.method == Method::Post {
        head.push_str("Content-Type: application/octet-stream\r\n");
        head.push_str(&format!("Content-Length: {body_size}\r\n"));
    }
    if args.new_connection_per_request {
        head.push_str("Connection: close\r\n");
    }
    for h in &args.headers {
        head.push_str(h.trim());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend((0..body_size).map(|i| b'A' + (i % 26) as u8));
    out
}

/// Runs the load as configured and returns the merged report.
pub fn run(args: &LoadArgs) -> Result<LoadReport> {
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION_S) {
        bail!("--duration must be in (0, {MAX_DURATION_S}] seconds");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let target = parse_url(&args.url)?;
    let connections = args.connections.max(1);
    let threads = args.threads.clamp(1, connections);
    let request = build_request(&target, args);
    let budget = Arc::new(Budget { max: args.requests, issued: AtomicU64::new(0) });
    let barrier = Arc::new(Barrier::new(threads));
    let duration = Duration::from_secs_f64(args.duration);
    let mut handles = Vec::with_capacity(threads);
    let mut first_index = 0;
    for t in 0..threads {
        let share = connections / threads + usize::from(t < connections % threads);
        let job = ThreadJob {
            addr: target.addr,
            request: request.clone(),
            new_connection: args.new_connection_per_request,
            timeout: Duration::from_millis(args.timeout_ms.max(1)),
            rate: args.rate,
            total_connections: connections,
            first_index,
            slots: share,
            duration,
        };
        first_index += share;
        let budget = budget.clone();
        let barrier = barrier.clone();
        let handle = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || run_thread(job, budget, barrier))
            .context("spawning a load thread")?;
        handles.push(handle);
    }
    let mut total = Stats::new()?;
    let mut elapsed = Duration::ZERO;
    for handle in handles {
        let (stats, took) = handle.join().map_err(|_| anyhow!("a load thread panicked"))??;
        total.merge(&stats)?;
        elapsed = elapsed.max(took);
    }
    let info = RunInfo {
        url: args.url.clone(),
        rate: args.rate,
        method: args.method.as_str().to_string(),
        body_size: if args.method == Method::Post { args.body_size } else { 0 },
        connections,
        threads,
        new_connection: args.new_connection_per_request,
    };
    Ok(LoadReport::new(info, &total, elapsed.as_secs_f64()))
}

/// What one thread runs.
struct ThreadJob {
    addr: SocketAddr,
    request: Vec<u8>,
    new_connection: bool,
    timeout: Duration,
    rate: Option<f64>,
    total_connections: usize,
    first_index: usize,
    slots: usize,
    duration: Duration,
}

/// Opens the thread's keep-alive connections, waits for every thread, then runs its slots.
/// Returns the thread's statistics and how long its slots ran.
fn run_thread(job: ThreadJob, budget: Arc<Budget>, barrier: Arc<Barrier>) -> Result<(Stats, Duration)> {
    let built = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build();
    let mut rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            // Still meet the others at the barrier so no thread waits forever.
            barrier.wait();
            return Err(e.into());
        }
    };
    rt.block_on(async move {
        let mut initial = Vec::with_capacity(job.slots);
        if !job.new_connection {
            let limit = Instant::now() + PRECONNECT_BUDGET;
            for _ in 0..job.slots {
                initial.push(connect(job.addr, limit).await.ok());
            }
        }
        initial.resize_with(job.slots, || None);
        barrier.wait();
        let stats = Rc::new(RefCell::new(Stats::new()?));
        let plan = Rc::new(Plan {
            addr: job.addr,
            request: Rc::new(job.request),
            new_connection: job.new_connection,
            timeout: job.timeout,
            rate: job.rate,
            total_connections: job.total_connections,
        });
        let start = Instant::now();
        let end = start + job.duration;
        let mut tasks = Vec::with_capacity(job.slots);
        for (i, conn) in initial.into_iter().enumerate() {
            let clock = SlotClock { start, end, index: job.first_index + i };
            let task = run_slot(plan.clone(), clock, budget.clone(), stats.clone(), conn);
            tasks.push(monoio::spawn(task));
        }
        for task in tasks {
            task.await;
        }
        let took = start.elapsed();
        let stats = Rc::try_unwrap(stats).map_err(|_| anyhow!("slot statistics still shared"))?.into_inner();
        Ok((stats, took))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let t = parse_url("http://127.0.0.1:8080/a/b?c=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/a/b?c=1");
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_url("http://127.0.0.1").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        let t = parse_url("http://[::1]:81/").unwrap();
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
        assert!(parse_url("https://127.0.0.1/").is_err());
        assert!(parse_url("http://10.1.2.3:80/").is_err());
    }
}
