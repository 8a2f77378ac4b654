//! Child processes for `compare`: CPU pinning with `taskset`, readiness checks, bounded waits,
//! and a guard that always stops the child and everything it forked.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::procstat;

/// How long a stopped child gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// Polling interval of bounded waits.
const POLL: Duration = Duration::from_millis(20);

/// The `taskset` binary, if installed.
pub fn taskset() -> Option<PathBuf> {
    ["/usr/bin/taskset", "/bin/taskset"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// A command that runs `program` pinned to `cpus` (a taskset list such as `0` or `1-3`) when
/// `taskset` is available.
pub fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match (cpus, taskset()) {
        (Some(cpus), Some(taskset)) => {
            let mut cmd = Command::new(taskset);
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

/// A running child, stopped (with all its descendants) when dropped.
pub struct ChildGuard {
    child: Child,
    name: String,
    stopped: bool,
}

impl ChildGuard {
    /// Starts `cmd`; the child also gets SIGTERM if this thread dies without cleaning up.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(ChildGuard { child, name: name.to_string(), stopped: false })
    }

    /// Process id of the child (after `taskset`'s exec, the program itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's exit status if it has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The child's stdout pipe, if it was piped and not yet taken.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits at most `limit` for the child to exit by itself.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                self.stopped = true;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not finish within {limit:?}", self.name);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops the child: SIGTERM, a grace period, then SIGKILL for it and any descendant left.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let family: Vec<(u32, u64)> = procstat::descendants(self.pid())
            .into_iter()
            .filter_map(|pid| procstat::start_time(pid).map(|t| (pid, t)))
            .collect();
        if self.exited().is_none() {
            signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + TERM_GRACE;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // A forked worker whose parent is gone could survive; kill it if it is still the
        // same process (same start time).
        for (pid, started) in family {
            if procstat::start_time(pid) == Some(started) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a signal to one process.
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) with a positive pid only signals that process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts connections, failing early if the child exits.
pub fn wait_for_port(child: &mut ChildGuard, addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.exited() {
            bail!("{} exited during start-up ({status})", child.name);
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{} did not accept connections on {addr} within {limit:?}", child.name);
        }
        std::thread::sleep(POLL);
    }
}

/// Reads the first line the child prints on stdout, waiting at most `limit`.
pub fn first_line(child: &mut ChildGuard, limit: Duration) -> Result<String> {
    let stdout = child.take_stdout().ok_or_else(|| anyhow!("{}: stdout is not piped", child.name))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let res = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(res);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(line)) if !line.is_empty() => Ok(line.trim_end().to_string()),
        Ok(Ok(_)) => bail!("{} closed stdout without printing", child.name),
        Ok(Err(e)) => Err(e).context("reading child stdout"),
        Err(_) => bail!("{} printed nothing within {limit:?}", child.name),
    }
}

/// Runs a command to completion within `limit`, returning its stdout; stderr is kept in a file
/// whose tail is shown on failure.
pub fn run_capture(name: &str, mut cmd: Command, limit: Duration, dir: &Path) -> Result<String> {
    let err_path = dir.join(format!("{name}.stderr"));
    cmd.stdout(Stdio::piped()).stderr(File::create(&err_path)?).stdin(Stdio::null());
    let mut child = ChildGuard::spawn(name, cmd)?;
    let mut stdout = child.take_stdout().ok_or_else(|| anyhow!("{name}: stdout is not piped"))?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let status = child.wait_timeout(limit)?;
    let out = reader.join().map_err(|_| anyhow!("stdout reader panicked"))??;
    if !status.success() {
        bail!("{name} failed ({status}): {}", log_tail(&err_path, 800));
    }
    Ok(out)
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).trim().to_string()
        }
        Err(_) => String::new(),
    }
}

/// The telling part of a log: a panic message if there is one, else the last three lines,
/// joined on one line.
pub fn log_summary(path: &Path) -> String {
    let text = log_tail(path, 64 * 1024);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let picked: Vec<&str> = match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => lines[i..].iter().take(2).copied().collect(),
        None => lines[lines.len().saturating_sub(3)..].to_vec(),
    };
    picked.join(" / ")
}

/// A scratch directory removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory under the system temp dir.
    pub fn new(prefix: &str) -> Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
