//! CPU time and memory of a process tree from `/proc`.
//!
//! Total CPU time comes from `/proc/PID/task/TID/schedstat` (nanoseconds on CPU, per thread);
//! the user/system split comes from the tick counters of `/proc/PID/stat`, which are too coarse
//! for totals but fine for a ratio. Resident memory is `VmRSS` from `/proc/PID/status`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::time::Instant;

use serde::Serialize;

/// One reading of a process tree.
#[derive(Debug, Clone)]
pub struct TreeSample {
    /// When the reading was taken.
    pub at: Instant,
    /// Nanoseconds on CPU per (pid, tid) found.
    pub task_ns: BTreeMap<(u32, u32), u64>,
    /// User-mode clock ticks summed over the processes.
    pub user_ticks: u64,
    /// Kernel-mode clock ticks summed over the processes.
    pub sys_ticks: u64,
    /// Resident set size summed over the processes, in KiB.
    pub rss_kib: u64,
    /// Processes in the tree.
    pub processes: usize,
}

/// CPU used by a process tree between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct CpuUsage {
    /// Total CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// Share of it spent in user mode (0..=1), when the tick counters moved.
    pub user_share: Option<f64>,
    /// Wall time between the samples, nanoseconds.
    pub wall_ns: u64,
}

impl CpuUsage {
    /// CPU time between `before` and `after`; threads that appeared in between count in full.
    pub fn between(before: &TreeSample, after: &TreeSample) -> Self {
        let cpu_ns = after
            .task_ns
            .iter()
            .map(|(key, ns)| ns.saturating_sub(before.task_ns.get(key).copied().unwrap_or(0)))
            .sum();
        let du = after.user_ticks.saturating_sub(before.user_ticks);
        let ds = after.sys_ticks.saturating_sub(before.sys_ticks);
        let user_share = (du + ds > 0).then(|| du as f64 / (du + ds) as f64);
        let wall_ns = after.at.duration_since(before.at).as_nanos();
        CpuUsage { cpu_ns, user_share, wall_ns: u64::try_from(wall_ns).unwrap_or(u64::MAX) }
    }

    /// Fraction of one core kept busy over the window.
    pub fn busy(&self) -> f64 {
        if self.wall_ns == 0 {
            0.0
        } else {
            self.cpu_ns as f64 / self.wall_ns as f64
        }
    }
}

/// Reads `root` and all its descendants.
pub fn sample_tree(root: u32) -> TreeSample {
    let at = Instant::now();
    let mut pids = vec![root];
    pids.extend(descendants(root));
    let mut sample = TreeSample { at, task_ns: BTreeMap::new(), user_ticks: 0, sys_ticks: 0, rss_kib: 0, processes: 0 };
    for pid in pids {
        let Some(stat) = read_stat(pid) else { continue };
        sample.processes += 1;
        sample.user_ticks += stat.utime;
        sample.sys_ticks += stat.stime;
        sample.rss_kib += rss_kib(pid).unwrap_or(0);
        let tasks = fs::read_dir(format!("/proc/{pid}/task"));
        let mut found = false;
        for entry in tasks.into_iter().flatten().flatten() {
            let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(ns) = schedstat_ns(pid, tid) {
                sample.task_ns.insert((pid, tid), ns);
                found = true;
            }
        }
        if !found {
            // No schedstat on this kernel: fall back to ticks for this process.
            let ns = (stat.utime + stat.stime) * 1_000_000_000 / clock_ticks();
            sample.task_ns.insert((pid, 0), ns);
        }
    }
    sample
}

/// All descendants of `root` (children, grandchildren...), found by scanning `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            children.entry(stat.ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut queue = vec![root];
    // Bounded: each pid is visited once since a process has one parent.
    while let Some(pid) = queue.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                if kid != root && !out.contains(&kid) {
                    out.push(kid);
                    queue.push(kid);
                }
            }
        }
    }
    out
}

/// Start time of a process (clock ticks since boot), to tell it from a reused pid.
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid).map(|s| s.start)
}

/// The fields of `/proc/PID/stat` used here.
struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
    start: u64,
}

/// Parses `/proc/PID/stat`; the command name may contain spaces and parentheses, so fields
/// are counted from the last `)`.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
        start: field(22)?,
    })
}

/// Nanoseconds a thread has spent on CPU.
fn schedstat_ns(pid: u32, tid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy (not idle, not waiting for I/O) and total clock ticks of the whole machine, from the
/// aggregate line of `/proc/stat`.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Fraction of all CPU time spent busy over `window`; `None` if `/proc/stat` cannot be read.
pub fn machine_busy(window: std::time::Duration) -> Option<f64> {
    let (b0, t0) = machine_ticks()?;
    std::thread::sleep(window);
    let (b1, t1) = machine_ticks()?;
    let total = t1.saturating_sub(t0);
    (total > 0).then(|| b1.saturating_sub(b0) as f64 / total as f64)
}

/// Clock ticks used by this process and by its children that have been waited for.
pub fn own_ticks() -> u64 {
    read_stat(std::process::id()).map_or(0, |s| s.utime + s.stime + s.cutime + s.cstime)
}

/// A reading of the whole machine, to tell how much CPU other processes took during a window.
#[derive(Debug, Clone)]
pub struct MachineSample {
    at: Instant,
    busy: u64,
    accounted: u64,
}

/// Reads machine-wide busy ticks and the ticks accounted to the harness: this process, its
/// waited-for children (the load generator) and the given process trees (origin, proxy),
/// which must have been sampled just now.
pub fn sample_machine(trees: &[&TreeSample]) -> Option<MachineSample> {
    let (busy, _) = machine_ticks()?;
    let trees: u64 = trees.iter().map(|t| t.user_ticks + t.sys_ticks).sum();
    Some(MachineSample { at: Instant::now(), busy, accounted: own_ticks() + trees })
}

/// Average number of cores kept busy by anything but the harness between two readings.
pub fn other_cores(before: &MachineSample, after: &MachineSample) -> f64 {
    let busy = after.busy.saturating_sub(before.busy);
    let ours = after.accounted.saturating_sub(before.accounted);
    let wall = after.at.duration_since(before.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    busy.saturating_sub(ours) as f64 / clock_ticks() as f64 / wall
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|&v| v > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let line = "42 (a) b (c) S 7 42 42 0 -1 4194304 0 0 0 0 150 25 0 0 20 0 3 0 9999 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 7);
        assert_eq!(s.utime, 150);
        assert_eq!(s.stime, 25);
        assert_eq!(s.start, 9999);
    }

    #[test]
    fn own_process_burns_cpu() {
        let me = std::process::id();
        let before = sample_tree(me);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = sample_tree(me);
        let used = CpuUsage::between(&before, &after);
        assert!(used.cpu_ns > 0);
        assert!(after.rss_kib > 0);
    }
}
