//! Results of `compare`: per-round measurements, their medians, and the markdown tables with
//! ratios against nginx and against direct-to-origin.

use std::fmt::Write as _;

use serde::Serialize;

use crate::procstat::CpuUsage;
use crate::report::{Latency, LoadReport};

/// One measured window of one contender.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Round number, from 1.
    pub round: usize,
    /// What the load generator saw.
    pub load: LoadReport,
    /// CPU used by the proxy's process tree during the window (none for direct).
    pub proxy_cpu: Option<CpuUsage>,
    /// Resident memory of the proxy's process tree right after the window, KiB.
    pub proxy_rss_kib: Option<u64>,
    /// Average cores used by processes outside the harness during the window (noise).
    pub other_cores: Option<f64>,
}

/// Medians over the rounds of one contender in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Rounds measured.
    pub rounds: usize,
    /// Completed responses, all rounds.
    pub requests: u64,
    /// Failed attempts, all rounds.
    pub errors: u64,
    /// Non-2xx responses, all rounds.
    pub non_2xx: u64,
    /// Median throughput.
    pub throughput_rps: f64,
    /// Median of each percentile, microseconds.
    pub latency_us: Latency,
    /// Median proxy CPU time per request, microseconds.
    pub cpu_us_per_req: Option<f64>,
    /// User-mode part of `cpu_us_per_req`.
    pub user_us_per_req: Option<f64>,
    /// Kernel-mode part of `cpu_us_per_req`.
    pub sys_us_per_req: Option<f64>,
    /// Median fraction of its core the proxy kept busy.
    pub proxy_core_busy: Option<f64>,
    /// Median resident memory of the proxy, MiB.
    pub rss_mib: Option<f64>,
    /// Highest average number of cores other processes used during a round (noise).
    pub other_cores: Option<f64>,
}

/// One contender in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ContenderResult {
    /// Contender name.
    pub name: String,
    /// Why it was not measured, if it was not.
    pub skipped: Option<String>,
    /// Every measured round.
    pub runs: Vec<RunResult>,
    /// Medians over `runs`.
    pub summary: Option<Summary>,
}

/// One scenario with all contenders.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// Scenario name.
    pub name: String,
    /// What it measures.
    pub description: String,
    /// Contenders in the order they were listed.
    pub contenders: Vec<ContenderResult>,
}

/// Median of some values; `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

/// Median of a per-run value that only some runs have.
fn median_of(runs: &[RunResult], f: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    median(runs.iter().filter_map(f).collect())
}

/// CPU microseconds per completed request of one run.
fn cpu_per_req(run: &RunResult) -> Option<f64> {
    let cpu = run.proxy_cpu?;
    (run.load.requests > 0).then(|| cpu.cpu_ns as f64 / 1000.0 / run.load.requests as f64)
}

impl Summary {
    /// Summarises the rounds of one contender; `None` without any round.
    pub fn of(runs: &[RunResult]) -> Option<Summary> {
        if runs.is_empty() {
            return None;
        }
        let lat = |f: fn(&Latency) -> f64| median_of(runs, |r| Some(f(&r.load.latency_us)));
        let cpu = median_of(runs, cpu_per_req);
        let user_share = median_of(runs, |r| r.proxy_cpu.and_then(|c| c.user_share));
        Some(Summary {
            rounds: runs.len(),
            requests: runs.iter().map(|r| r.load.requests).sum(),
            errors: runs.iter().map(|r| r.load.errors).sum(),
            non_2xx: runs.iter().map(|r| r.load.non_2xx).sum(),
            throughput_rps: median_of(runs, |r| Some(r.load.throughput_rps)).unwrap_or(0.0),
            latency_us: Latency {
                p50: lat(|l| l.p50).unwrap_or(0.0),
                p90: lat(|l| l.p90).unwrap_or(0.0),
                p99: lat(|l| l.p99).unwrap_or(0.0),
                p999: lat(|l| l.p999).unwrap_or(0.0),
                max: lat(|l| l.max).unwrap_or(0.0),
                mean: lat(|l| l.mean).unwrap_or(0.0),
            },
            cpu_us_per_req: cpu,
            user_us_per_req: cpu.zip(user_share).map(|(c, u)| c * u),
            sys_us_per_req: cpu.zip(user_share).map(|(c, u)| c * (1.0 - u)),
            proxy_core_busy: median_of(runs, |r| r.proxy_cpu.map(|c| c.busy())),
            rss_mib: median_of(runs, |r| r.proxy_rss_kib.map(|k| k as f64 / 1024.0)),
            other_cores: runs.iter().filter_map(|r| r.other_cores).reduce(f64::max),
        })
    }
}

impl ScenarioResult {
    /// The summary of a named contender, if measured.
    pub fn summary_of(&self, name: &str) -> Option<&Summary> {
        self.contenders.iter().find(|c| c.name == name).and_then(|c| c.summary.as_ref())
    }
}

/// `a / b` formatted as a ratio, or a dash.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    }
}

/// A number with `digits` decimals, or a dash.
fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// Text made safe for one table cell: one line, no pipes, at most 160 characters.
fn cell(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c == '|' || c.is_control() { ' ' } else { c }).collect();
    let mut short: String = flat.chars().take(160).collect();
    if flat.chars().count() > 160 {
        short.push_str("...");
    }
    short
}

/// The two markdown tables: throughput and latency, then proxy cost.
pub fn markdown(scenarios: &[ScenarioResult]) -> String {
    let mut out = String::new();
    out.push_str("### Throughput and latency\n\n");
    out.push_str(
        "| scenario | contender | req/s | req/s vs nginx | req/s vs direct | p50 us | p90 us \
         | p99 us | p99.9 us | max us | p99 vs nginx | p99 vs direct | errors | non-2xx | other load |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for sc in scenarios {
        let nginx = sc.summary_of("nginx");
        let direct = sc.summary_of("direct");
        for c in &sc.contenders {
            let Some(s) = &c.summary else {
                let why = cell(c.skipped.as_deref().unwrap_or("not measured"));
                let pad = " |".repeat(12);
                let _ = writeln!(out, "| {} | {} | skipped: {why} |{pad}", sc.name, c.name);
                continue;
            };
            let l = &s.latency_us;
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                sc.name,
                c.name,
                s.throughput_rps,
                ratio(Some(s.throughput_rps), nginx.map(|n| n.throughput_rps)),
                ratio(Some(s.throughput_rps), direct.map(|d| d.throughput_rps)),
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                ratio(Some(l.p99), nginx.map(|n| n.latency_us.p99)),
                ratio(Some(l.p99), direct.map(|d| d.latency_us.p99)),
                s.errors,
                s.non_2xx,
                s.other_cores.map_or_else(|| "-".to_string(), |c| format!("{:.0}%", c * 100.0)),
            );
        }
    }
    out.push_str("\n### Proxy cost (one worker on its own core)\n\n");
    out.push_str(
        "| scenario | contender | CPU us/req | CPU vs nginx | user us/req | sys us/req \
         | core busy | RSS MiB | RSS vs nginx |\n",
    );
    out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
    for sc in scenarios {
        let nginx = sc.summary_of("nginx");
        for c in &sc.contenders {
            let Some(s) = &c.summary else { continue };
            if s.cpu_us_per_req.is_none() {
                continue;
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                sc.name,
                c.name,
                num(s.cpu_us_per_req, 2),
                ratio(s.cpu_us_per_req, nginx.and_then(|n| n.cpu_us_per_req)),
                num(s.user_us_per_req, 2),
                num(s.sys_us_per_req, 2),
                s.proxy_core_busy.map_or_else(|| "-".to_string(), |b| format!("{:.0}%", b * 100.0)),
                num(s.rss_mib, 1),
                ratio(s.rss_mib, nginx.and_then(|n| n.rss_mib)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50x");
        assert_eq!(ratio(Some(3.0), None), "-");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "-");
    }
}
