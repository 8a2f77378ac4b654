//! The `compare` subcommand: races direct-to-origin, ringway, nginx and HAProxy on this
//! machine, one proxy worker pinned to its own core, the origin and load generator on the
//! others, in alternating rounds so slow drift cancels out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::contender::{self, Contender};
use crate::load::Method;
use crate::process::{self, ChildGuard, TempDir};
use crate::procstat::{self, CpuUsage, MachineSample, TreeSample};
use crate::report::LoadReport;
use crate::scenarios::{self, Scenario};
use crate::summary::{self, ContenderResult, RunResult, ScenarioResult, Summary};
use crate::svg;

/// Options of the `compare` subcommand.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The ringway binary [default: target/release/ringway].
    #[arg(long)]
    pub ringway: Option<PathBuf>,
    /// Measured seconds per contender, scenario and round.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured warm-up seconds before each measured window.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Rounds; contenders run in alternating order from one round to the next.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Comma-separated scenarios to run [default: all].
    #[arg(long)]
    pub scenarios: Option<String>,
    /// Comma-separated contenders to run (direct, ringway, nginx, haproxy) [default: all found].
    #[arg(long)]
    pub contenders: Option<String>,
    /// Client connections of the load generator.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Open-loop: offer this many requests per second to every contender (latency counted
    /// from each request's intended send time) instead of as many as the connections carry.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Another ringway build to race as `ringway-baseline` (the build before a change).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Every proxy logs every request: ringway its JSON access log to a file, nginx a buffered
    /// `access_log` (the baseline build is not asked to).
    #[arg(long)]
    pub access_log: bool,
    /// Directory for compare.md, compare.json and compare.svg.
    #[arg(long, default_value = "perf/results")]
    pub out: PathBuf,
}

/// Machine-wide CPU use before the run above which the report warns of noise.
const BUSY_WARNING: f64 = 0.10;

/// Which cores run what.
#[derive(Debug, Clone, Serialize)]
pub struct CoreLayout {
    /// taskset list for the proxy (one core).
    pub proxy: String,
    /// taskset list for the origin and the load generator.
    pub others: String,
    /// Cores in `others`, which is also the origin's and the load generator's thread count.
    pub other_count: usize,
    /// Whether `taskset` is available; without it nothing is pinned.
    pub pinned: bool,
}

impl CoreLayout {
    /// The first allowed core for the proxy, the rest for everything else.
    fn detect() -> Self {
        let cpus = allowed_cpus();
        let pinned = process::taskset().is_some();
        let proxy = cpus.first().copied().unwrap_or(0);
        let rest: Vec<usize> = if cpus.len() > 1 { cpus[1..].to_vec() } else { vec![proxy] };
        let others = rest.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        CoreLayout { proxy: proxy.to_string(), others, other_count: rest.len(), pinned }
    }

    fn proxy_cpus(&self) -> Option<&str> {
        self.pinned.then_some(self.proxy.as_str())
    }

    fn other_cpus(&self) -> Option<&str> {
        self.pinned.then_some(self.others.as_str())
    }
}

/// The cores this process may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// The whole comparison as written to `compare.json`.
#[derive(Debug, Serialize)]
struct CompareReport {
    cores: CoreLayout,
    kernel: Option<String>,
    versions: BTreeMap<String, String>,
    duration_s: f64,
    warmup_s: f64,
    rounds: usize,
    connections: usize,
    rate: Option<f64>,
    notes: Vec<String>,
    scenarios: Vec<ScenarioResult>,
}

/// Everything one measured run needs besides the contender.
struct Bench<'a> {
    args: &'a CompareArgs,
    layout: &'a CoreLayout,
    dir: &'a Path,
    exe: PathBuf,
}

/// Runs the comparison and writes its reports.
pub fn run(args: &CompareArgs) -> Result<()> {
    let duration_ok = args.duration > 0.0 && args.duration <= 600.0;
    if !duration_ok || !(0.0..=60.0).contains(&args.warmup) {
        bail!("--duration must be in (0, 600] and --warmup in [0, 60] seconds");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    if args.rounds == 0 || args.rounds > 100 {
        bail!("--rounds must be between 1 and 100");
    }
    let scenarios = scenarios::select(args.scenarios.as_deref())?;
    let ringway = args.ringway.clone().unwrap_or_else(contender::default_ringway);
    // Proxies start in a scratch directory: a relative path would no longer resolve there.
    let ringway = std::fs::canonicalize(&ringway).unwrap_or(ringway);
    let (mut contenders, mut notes) = contender::discover(&ringway, args.baseline.as_deref(), args.access_log);
    if let Some(list) = &args.contenders {
        let wanted: Vec<&str> = list.split(',').map(str::trim).collect();
        contenders.retain(|c| wanted.contains(&c.kind.name()));
        notes.retain(|n| wanted.iter().any(|w| n.starts_with(w)));
    } else {
        contenders.retain(|c| !c.kind.on_request_only());
    }
    if contenders.is_empty() {
        bail!("no contender selected");
    }
    let layout = CoreLayout::detect();
    if !layout.pinned {
        notes.push("taskset not found: processes are not pinned".to_string());
    }
    if layout.proxy == layout.others {
        notes.push("only one core: proxy, origin and load share it".to_string());
    }
    if let Some(busy) = procstat::machine_busy(Duration::from_secs(1)).filter(|b| *b > BUSY_WARNING) {
        notes.push(format!(
            "the machine was {:.0}% busy before the run started: other processes compete for the \
             cores and the numbers are noisy",
            busy * 100.0
        ));
    }
    for note in &notes {
        eprintln!("note: {note}");
    }
    let tmp = TempDir::new("ringway-perf")?;
    let versions = contenders
        .iter()
        .filter_map(|c| contender::version(c, tmp.path()).map(|v| (c.kind.name().to_string(), v)))
        .collect();
    let bench = Bench {
        args,
        layout: &layout,
        dir: tmp.path(),
        exe: std::env::current_exe().context("locating this executable")?,
    };
    eprintln!(
        "proxy on core {}, origin and load on {}; {} round(s) x {} s per contender",
        layout.proxy, layout.others, args.rounds, args.duration
    );
    let mut results = Vec::with_capacity(scenarios.len());
    for scenario in &scenarios {
        results.push(run_scenario(&bench, scenario, &contenders)?);
    }
    let report = CompareReport {
        cores: layout.clone(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        versions,
        duration_s: args.duration,
        warmup_s: args.warmup,
        rounds: args.rounds,
        connections: args.connections,
        rate: args.rate,
        notes,
        scenarios: results,
    };
    write_outputs(&report, &contenders, &args.out)
}

/// Runs every round of one scenario against one origin.
fn run_scenario(bench: &Bench<'_>, scenario: &Scenario, contenders: &[Contender]) -> Result<ScenarioResult> {
    let mut origin = start_origin(bench, scenario)?;
    let mut results: Vec<ContenderResult> = contenders
        .iter()
        .map(|c| ContenderResult { name: c.kind.name().to_string(), skipped: None, runs: Vec::new(), summary: None })
        .collect();
    for round in 1..=bench.args.rounds {
        let mut order: Vec<usize> = (0..contenders.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            if results[i].skipped.is_some() {
                continue;
            }
            let name = contenders[i].kind.name();
            match measure(bench, &contenders[i], scenario, &origin, round) {
                Ok(run) => {
                    eprintln!("[{} {round}/{}] {}", scenario.name, bench.args.rounds, brief(name, &run));
                    results[i].runs.push(run);
                }
                Err(e) => {
                    eprintln!("[{} {round}/{}] {name} skipped: {e:#}", scenario.name, bench.args.rounds);
                    results[i].skipped = Some(format!("{e:#}"));
                }
            }
            if let Some(status) = origin.child.exited() {
                bail!("the origin exited during {} ({status})", scenario.name);
            }
        }
    }
    origin.child.stop();
    for r in &mut results {
        r.summary = Summary::of(&r.runs);
    }
    Ok(ScenarioResult {
        name: scenario.name.to_string(),
        description: scenario.description.to_string(),
        contenders: results,
    })
}

/// One progress line.
fn brief(name: &str, run: &RunResult) -> String {
    let l = &run.load;
    let mut s = format!(
        "{name}: {:.0} req/s, p50 {:.1} us, p99 {:.1} us, {} errors",
        l.throughput_rps, l.latency_us.p50, l.latency_us.p99, l.errors
    );
    if let Some(others) = run.other_cores.filter(|c| *c > BUSY_WARNING) {
        s.push_str(&format!(", other processes {:.0}% of a core", others * 100.0));
    }
    if let Some(cpu) = run.proxy_cpu.filter(|_| l.requests > 0) {
        s.push_str(&format!(
            ", proxy {:.2} us/req ({:.0}% busy)",
            cpu.cpu_ns as f64 / 1000.0 / l.requests as f64,
            cpu.busy() * 100.0
        ));
    }
    s
}

/// The origin server of one scenario.
struct Origin {
    child: ChildGuard,
    addr: SocketAddr,
}

/// Starts this binary's origin on the non-proxy cores.
fn start_origin(bench: &Bench<'_>, scenario: &Scenario) -> Result<Origin> {
    let mut cmd = process::pinned(bench.layout.other_cpus(), &bench.exe);
    cmd.arg("origin")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--body-size")
        .arg(scenario.response_body.to_string())
        .arg("--threads")
        .arg(bench.layout.other_count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = ChildGuard::spawn("origin", cmd)?;
    let line = process::first_line(&mut child, Duration::from_secs(10))?;
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("unexpected origin output: {line:?}"))?;
    Ok(Origin { child, addr })
}

/// Starts the contender, warms it up, and measures one window.
fn measure(
    bench: &Bench<'_>,
    contender: &Contender,
    scenario: &Scenario,
    origin: &Origin,
    round: usize,
) -> Result<RunResult> {
    let mut running = contender.start(scenario, origin.addr, bench.layout.proxy_cpus(), bench.dir)?;
    let measured = measure_running(bench, scenario, running.as_ref(), origin);
    if let Some(r) = running.as_mut() {
        r.child.stop();
    }
    match (measured, &running) {
        (Ok(m), _) => Ok(RunResult { round, ..m }),
        (Err(e), Some(r)) => Err(anyhow!("{e:#}; log: {}", process::log_summary(&r.log))),
        (Err(e), None) => Err(e),
    }
}

/// Warms up and measures a contender that is already serving (`None` for direct).
fn measure_running(
    bench: &Bench<'_>,
    scenario: &Scenario,
    running: Option<&contender::Running>,
    origin: &Origin,
) -> Result<RunResult> {
    let addr = running.map_or(origin.addr, |r| r.addr);
    let url = format!("http://{addr}{}", scenario.path);
    if bench.args.warmup > 0.0 {
        let warm = run_load(bench, scenario, &url, bench.args.warmup)?;
        if warm.requests == 0 {
            bail!("no response during warm-up ({})", error_kinds(&warm));
        }
    }
    let pid = running.map(|r| r.child.pid());
    let (before, machine_before) = sample_window(origin, pid);
    let load = run_load(bench, scenario, &url, bench.args.duration)?;
    let (after, machine_after) = sample_window(origin, pid);
    if load.requests == 0 {
        bail!("no successful response ({})", error_kinds(&load));
    }
    if load.non_2xx * 100 > load.requests {
        // Timing error responses would compare nothing.
        let statuses: Vec<String> = load.non_2xx_statuses.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        bail!("{} of {} responses were not 2xx ({})", load.non_2xx, load.requests, statuses.join(", "));
    }
    let proxy_cpu = before.as_ref().zip(after.as_ref()).map(|(b, a)| CpuUsage::between(b, a));
    let other_cores = machine_before.zip(machine_after).map(|(b, a)| procstat::other_cores(&b, &a));
    Ok(RunResult { round: 0, load, proxy_cpu, proxy_rss_kib: after.map(|a| a.rss_kib), other_cores })
}

/// Reads the proxy's process tree (if any) and the machine at one edge of the measured window.
fn sample_window(origin: &Origin, proxy: Option<u32>) -> (Option<TreeSample>, Option<MachineSample>) {
    let proxy = proxy.map(procstat::sample_tree);
    let origin = procstat::sample_tree(origin.child.pid());
    let mut trees = vec![&origin];
    trees.extend(proxy.as_ref());
    let machine = procstat::sample_machine(&trees);
    (proxy, machine)
}

/// "N errors: kind n, kind n", for a skip reason.
fn error_kinds(report: &LoadReport) -> String {
    let kinds: Vec<String> = report.error_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("{} errors: {}", report.errors, kinds.join(", "))
}

/// Runs this binary's load generator on the non-proxy cores and parses its JSON report.
fn run_load(bench: &Bench<'_>, scenario: &Scenario, url: &str, seconds: f64) -> Result<LoadReport> {
    let mut cmd = process::pinned(bench.layout.other_cpus(), &bench.exe);
    cmd.arg("load")
        .arg("--url")
        .arg(url)
        .arg("--connections")
        .arg(bench.args.connections.to_string())
        .arg("--threads")
        .arg(bench.layout.other_count.to_string())
        .arg("--duration")
        .arg(seconds.to_string())
        .arg("--json");
    if scenario.method == Method::Post {
        cmd.arg("--method").arg("POST").arg("--body-size").arg(scenario.request_body.to_string());
    }
    if scenario.new_connection {
        cmd.arg("--new-connection-per-request");
    }
    for h in scenario.headers {
        cmd.arg("--header").arg(h);
    }
    if let Some(rate) = bench.args.rate {
        cmd.arg("--rate").arg(rate.to_string());
    }
    let limit = Duration::from_secs_f64(seconds) + Duration::from_secs(30);
    let out = process::run_capture("load", cmd, limit, bench.dir)?;
    serde_json::from_str(&out).context("parsing the load report")
}

/// Writes `compare.md`, `compare.json` and `compare.svg`, and prints the tables.
fn write_outputs(report: &CompareReport, contenders: &[Contender], out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tables = summary::markdown(&report.scenarios);
    let mut md = String::from("## ringway-perf compare\n\n");
    md.push_str(&format!(
        "Proxy pinned to core {}, origin and load generator to core(s) {}; kernel {}; {} round(s) \
         of {} s after {} s warm-up, {} connections, {}. Medians over rounds.\n\n",
        report.cores.proxy,
        report.cores.others,
        report.kernel.as_deref().unwrap_or("?"),
        report.rounds,
        report.duration_s,
        report.warmup_s,
        report.connections,
        match report.rate {
            Some(r) => format!("open loop at {r} requests/s (latency from each intended send time)"),
            None => "closed loop".to_string(),
        }
    ));
    for (name, version) in &report.versions {
        md.push_str(&format!("- {name}: {version}\n"));
    }
    for note in &report.notes {
        md.push_str(&format!("- note: {note}\n"));
    }
    let noisiest = report
        .scenarios
        .iter()
        .flat_map(|sc| &sc.contenders)
        .flat_map(|c| &c.runs)
        .filter_map(|r| r.other_cores)
        .fold(0.0f64, f64::max);
    if noisiest > BUSY_WARNING {
        md.push_str(&format!(
            "- note: processes outside the harness used up to {:.0}% of a core during a measured window \
             (column `other load`); rows with a high value are noisy\n",
            noisiest * 100.0
        ));
    }
    md.push('\n');
    md.push_str(&tables);
    std::fs::write(out.join("compare.md"), &md)?;
    std::fs::write(out.join("compare.json"), serde_json::to_string_pretty(report)? + "\n")?;
    let names: Vec<String> = contenders.iter().map(|c| c.kind.name().to_string()).collect();
    let panel = |title: &str, decimals: usize, f: &dyn Fn(&Summary) -> Option<f64>| svg::Panel {
        title: title.to_string(),
        decimals,
        groups: report
            .scenarios
            .iter()
            .map(|sc| svg::Group {
                label: sc.name.clone(),
                values: names.iter().map(|n| sc.summary_of(n).and_then(f)).collect(),
            })
            .collect(),
    };
    let panels = [
        panel("Throughput, req/s (higher is better)", 0, &|s| Some(s.throughput_rps)),
        panel("Proxy CPU time per request, us (lower is better)", 1, &|s| s.cpu_us_per_req),
        panel("p99 latency, us (lower is better)", 0, &|s| Some(s.latency_us.p99)),
    ];
    let chart = svg::chart("ringway-perf compare", &names, &panels);
    std::fs::write(out.join("compare.svg"), chart)?;
    println!("{tables}");
    eprintln!("wrote {0}/compare.md, {0}/compare.json, {0}/compare.svg", out.display());
    Ok(())
}
