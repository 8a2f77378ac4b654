//! `ringway-perf churn`: the control plane under load. With 10,000 routes loaded it measures
//! the time from an admin write to every worker serving it, each worker's CPU time per
//! snapshot swap, and p99 request latency at a fixed open-loop rate with and without
//! continuous configuration churn.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Arguments of `churn`.
#[derive(Debug, clap::Args)]
pub struct ChurnArgs {
    /// The ringway binary.
    #[arg(long, default_value = "target/release/ringway")]
    pub ringway: PathBuf,
    /// Routes loaded.
    #[arg(long, default_value_t = 10_000)]
    pub routes: usize,
    /// Admin writes timed one after another.
    #[arg(long, default_value_t = 100)]
    pub writes: usize,
    /// Open-loop request rate for the latency phases.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds per latency phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Gateway workers.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a process and waits for a stdout/stderr line containing `marker`; returns the word
/// after it for every marker found, in order.
fn spawn_until(cmd: &mut Command, markers: &[&str]) -> Result<(Proc, Vec<String>)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawn")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let proc = Proc(child);
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.len() < markers.len() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| anyhow!("process did not print {:?}", markers[found.len()]))?;
        if let Some(rest) = line.split(markers[found.len()]).nth(1) {
            found.push(rest.split_whitespace().next().unwrap_or("").to_string());
        }
    }
    Ok((proc, found))
}

fn admin_put(admin: SocketAddr, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "PUT {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// Nanoseconds the gateway's worker threads have run (`/proc/PID/task/TID/schedstat`).
fn worker_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut total = 0;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("ringway-w") {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

fn route_body(v: u64) -> String {
    format!(
        r#"{{"paths": ["/bench/*"], "upstream": "origin", "policies": {{"headers": {{"response": {{"set": {{"x-config": "{v}"}}}}}}}}}}"#
    )
}

fn load_p99(me: &std::path::Path, url: &str, rate: u64, secs: u64) -> Result<(f64, u64)> {
    // The gateway's one worker pins itself to the first core; the load runs on the others.
    let cpus = crate::compare::allowed_cpus();
    let others =
        if cpus.len() > 1 { Some(cpus[1..].iter().map(usize::to_string).collect::<Vec<_>>().join(",")) } else { None };
    let out = crate::process::pinned(others.as_deref(), me)
        .args([
            "load",
            "--url",
            url,
            "--rate",
            &rate.to_string(),
            "--duration",
            &secs.to_string(),
            "--connections",
            "32",
            "--threads",
            "1",
            "--json",
        ])
        .output()?;
    if !out.status.success() {
        bail!("load failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let p99 = v.pointer("/latency_us/p99").and_then(|x| x.as_f64()).ok_or_else(|| anyhow!("no p99 in {v}"))?;
    let errors =
        v.get("errors").and_then(|x| x.as_u64()).unwrap_or(0) + v.get("non_2xx").and_then(|x| x.as_u64()).unwrap_or(0);
    Ok((p99, errors))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the benchmark and prints a markdown table.
pub fn run(args: &ChurnArgs) -> Result<()> {
    if !args.ringway.exists() {
        bail!("no ringway binary at {} (cargo build --release -p ringway-admin)", args.ringway.display());
    }
    let me = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("ringway-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_origin, o) = spawn_until(Command::new(&me).args(["origin", "--listen", "127.0.0.1:0"]), &["listening on "])?;
    let mut cfg = format!("upstreams:\n  origin:\n    targets: [{{addr: \"{}\"}}]\nroutes:\n", o[0]);
    for i in 1..args.routes {
        cfg.push_str(&format!("  r{i:05}: {{paths: [\"/svc{i}/*\"], upstream: origin}}\n"));
    }
    cfg.push_str("  hit: {paths: [\"/bench/*\"], upstream: origin}\n");
    let cfg_path = dir.join("ringway.yaml");
    std::fs::write(&cfg_path, cfg)?;
    let data = dir.join("data");
    let (gw, a) = spawn_until(
        Command::new(&args.ringway).args([
            "--config",
            cfg_path.to_str().unwrap_or(""),
            "--data-dir",
            data.to_str().unwrap_or(""),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--workers",
            &args.workers.to_string(),
            "--max-connections-per-ip",
            "0",
        ]),
        &["listening on ", "admin listening on "],
    )?;
    let addr: SocketAddr = a[0].parse()?;
    let admin: SocketAddr = a[1].parse()?;
    let pid = gw.0.id();

    // Write -> every worker serving it.
    let cpu_before = worker_cpu_ns(pid);
    let mut lat = Vec::with_capacity(args.writes);
    for v in 1..=args.writes as u64 {
        let t = Instant::now();
        let (status, body) = admin_put(admin, "/admin/v1/routes/hit", &route_body(v))?;
        if status != 200 {
            bail!("admin write answered {status}: {body}");
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_ns = worker_cpu_ns(pid) - cpu_before;
    let per_swap_ms = cpu_ns as f64 / 1e6 / args.writes as f64 / args.workers as f64;
    lat.sort_by(f64::total_cmp);

    // p99 without, then with, continuous churn.
    let url = format!("http://{addr}/bench/x");
    let (calm, calm_err) = load_p99(&me, &url, args.rate, args.duration)?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let churner = {
        let (stop, writes) = (stop.clone(), writes.clone());
        std::thread::spawn(move || {
            let mut v = 1_000_000u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                if admin_put(admin, "/admin/v1/routes/hit", &route_body(v)).is_ok() {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let (churn, churn_err) = load_p99(&me, &url, args.rate, args.duration)?;
    stop.store(true, Ordering::Relaxed);
    let _ = churner.join();
    let _ = std::fs::remove_dir_all(&dir);

    println!("## ringway-perf churn: {} routes, {} worker(s)\n", args.routes, args.workers);
    println!("| measure | value |\n|---|--:|");
    println!("| admin write to every worker serving it, p50 | {:.2} ms |", percentile(&lat, 0.5));
    println!("| same, p90 | {:.2} ms |", percentile(&lat, 0.9));
    println!("| same, max | {:.2} ms |", percentile(&lat, 1.0));
    println!(
        "| worker CPU per swap (per worker, schedstat over {} swaps, no load) | {per_swap_ms:.3} ms |",
        args.writes
    );
    println!("| p99 at {} req/s, no churn | {calm:.0} us |", args.rate);
    println!(
        "| p99 at {} req/s, {} config writes during the run | {churn:.0} us |",
        args.rate,
        writes.load(Ordering::Relaxed)
    );
    println!("| p99 ratio churn / no churn | {:.2}x |", churn / calm.max(1.0));
    println!("| failed or non-2xx requests (no churn / churn) | {calm_err} / {churn_err} |");
    Ok(())
}
