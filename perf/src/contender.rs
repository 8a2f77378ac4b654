//! The contenders of `compare`: direct to origin, ringway, nginx and HAProxy. Each proxy gets
//! its config file, one worker, its own core, and a log file for start-up failures.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config_files;
use crate::process::{self, ChildGuard};
use crate::scenarios::Scenario;

/// Longest wait for a proxy to accept connections.
const START_LIMIT: Duration = Duration::from_secs(15);

/// Which server sits between the load generator and the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No proxy: the load generator talks to the origin.
    Direct,
    /// ringway with one worker.
    Ringway,
    /// ringway on io_uring without `DEFER_TASKRUN` (run only when named).
    RingwayUringPlain,
    /// ringway on epoll (run only when named).
    RingwayEpoll,
    /// Another ringway build (`--baseline PATH`), started as `ringway` is but never asked to
    /// log: the build a change is measured against.
    RingwayBaseline,
    /// nginx with one worker process.
    Nginx,
    /// HAProxy with one thread.
    Haproxy,
}

impl Kind {
    /// Name used in reports.
    /// Variants measured only when asked for by name.
    pub fn on_request_only(self) -> bool {
        matches!(self, Kind::RingwayUringPlain | Kind::RingwayEpoll)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ringway => "ringway",
            Kind::RingwayUringPlain => "ringway-uring-plain",
            Kind::RingwayEpoll => "ringway-epoll",
            Kind::RingwayBaseline => "ringway-baseline",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// A contender and the binary it runs (none for direct).
#[derive(Debug, Clone)]
pub struct Contender {
    /// Which one.
    pub kind: Kind,
    /// Its executable.
    pub binary: Option<PathBuf>,
    /// Log every request (ringway: its JSON access log; nginx: a buffered `access_log`).
    pub access_log: bool,
}

/// A proxy process serving on its port.
pub struct Running {
    /// The proxy process (the root of its process tree).
    pub child: ChildGuard,
    /// Where the load generator connects.
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

/// Finds the contenders to race, with a note for each one skipped.
pub fn discover(ringway: &Path, baseline: Option<&Path>, access_log: bool) -> (Vec<Contender>, Vec<String>) {
    let mut found = vec![Contender { kind: Kind::Direct, binary: None, access_log: false }];
    let mut skipped = Vec::new();
    if ringway.is_file() {
        for kind in [Kind::Ringway, Kind::RingwayUringPlain, Kind::RingwayEpoll] {
            found.push(Contender { kind, binary: Some(ringway.to_path_buf()), access_log });
        }
    } else {
        skipped.push(format!(
            "ringway skipped: no binary at {} (build it with `cargo build --release`, or pass \
             --ringway PATH)",
            ringway.display()
        ));
    }
    for (kind, path) in [(Kind::Nginx, "/usr/sbin/nginx"), (Kind::Haproxy, "/usr/sbin/haproxy")] {
        let path = PathBuf::from(path);
        if path.is_file() {
            found.push(Contender { kind, binary: Some(path), access_log });
        } else {
            skipped.push(format!("{} skipped: {} not installed", kind.name(), path.display()));
        }
    }
    match baseline {
        Some(b) if b.is_file() => {
            found.push(Contender { kind: Kind::RingwayBaseline, binary: Some(b.to_path_buf()), access_log: false })
        }
        Some(b) => skipped.push(format!("ringway-baseline skipped: no binary at {}", b.display())),
        None => {}
    }
    (found, skipped)
}

/// The default ringway binary: `target/release/ringway` from the current directory, else the
/// `ringway` next to this executable.
pub fn default_ringway() -> PathBuf {
    let local = PathBuf::from("target/release/ringway");
    if local.is_file() {
        return local;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("ringway")))
        .filter(|p| p.is_file())
        .unwrap_or(local)
}

impl Contender {
    /// Starts the proxy for `scenario` pinned to `cpus`, in front of `origin`, and waits until
    /// it accepts connections. Direct has no process and returns `None`.
    pub fn start(
        &self,
        scenario: &Scenario,
        origin: SocketAddr,
        cpus: Option<&str>,
        dir: &Path,
    ) -> Result<Option<Running>> {
        let Some(binary) = &self.binary else {
            return Ok(None);
        };
        let port = process::free_port()?;
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let name = self.kind.name();
        let mut cmd = process::pinned(cpus, binary);
        match self.kind {
            Kind::Direct => return Ok(None),
            Kind::Ringway | Kind::RingwayUringPlain | Kind::RingwayEpoll | Kind::RingwayBaseline => {
                match self.kind {
                    Kind::RingwayUringPlain => {
                        cmd.arg("--driver").arg("io_uring").arg("--no-defer-taskrun");
                    }
                    Kind::RingwayEpoll => {
                        cmd.arg("--driver").arg("epoll");
                    }
                    _ => {}
                }
                let file = dir.join(format!("ringway-{}.yaml", scenario.name));
                let mut yaml = config_files::ringway(
                    origin,
                    scenario.extra_routes,
                    &scenario.ringway_policies.replace("{origin}", &origin.to_string()),
                    scenario.ringway_upstream,
                );
                yaml.push_str(&config_files::shipping(origin, scenario.ringway_shipping));
                yaml.push_str(&config_files::consumers(scenario.consumers));
                yaml.push_str(&scenario.ringway_document.replace("{origin}", &origin.to_string()));
                cmd.args(scenario.ringway_args);
                std::fs::write(&file, yaml)?;
                cmd.arg("--config").arg(&file).arg("--listen").arg(listen.to_string()).arg("--workers").arg("1");
                // A fresh store per start, so no configuration survives from an earlier run.
                cmd.arg("--data-dir").arg(dir.join(format!("ringway-data-{port}")));
                cmd.arg("--admin-listen").arg(format!("127.0.0.1:{}", process::free_port()?));
                // Every load connection comes from loopback: no per-address cap, as for the
                // other contenders.
                cmd.arg("--max-connections-per-ip").arg("0");
                if self.access_log {
                    cmd.arg("--access-log").arg(dir.join(format!("ringway-access-{port}.log")));
                }
            }
            Kind::Nginx => {
                let file = dir.join("nginx.conf");
                std::fs::write(&file, config_files::nginx(origin, listen, dir, self.access_log))?;
                cmd.arg("-g")
                    .arg("daemon off;")
                    .arg("-e")
                    .arg(dir.join("nginx-error.log"))
                    .arg("-c")
                    .arg(&file)
                    .arg("-p")
                    .arg(dir);
            }
            Kind::Haproxy => {
                let file = dir.join("haproxy.cfg");
                std::fs::write(&file, config_files::haproxy(origin, listen))?;
                cmd.arg("-f").arg(&file).arg("-db");
            }
        }
        let log = dir.join(format!("{name}.log"));
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // Anything a proxy writes to relative paths stays in the scratch directory.
        cmd.current_dir(dir).stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
        let mut child = ChildGuard::spawn(name, cmd)?;
        if let Err(e) = process::wait_for_port(&mut child, listen, START_LIMIT) {
            child.stop();
            return Err(anyhow!("{e:#}; log: {}", process::log_summary(&log)));
        }
        Ok(Some(Running { child, addr: listen, log }))
    }
}

/// Runs `binary args` to completion within a few seconds (a binary that does not know the
/// flag and starts serving instead is stopped), returning whether it succeeded and its output.
fn bounded_output(name: &str, binary: &Path, args: &[&str], dir: &Path) -> Option<(bool, String)> {
    let out_path = dir.join(format!("{name}-probe.txt"));
    let out = File::create(&out_path).ok()?;
    let mut cmd = Command::new(binary);
    cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(out.try_clone().ok()?).stderr(out);
    let mut child = ChildGuard::spawn(name, cmd).ok()?;
    let status = child.wait_timeout(Duration::from_secs(5)).ok()?;
    drop(child);
    Some((status.success(), std::fs::read_to_string(&out_path).ok()?))
}

/// Version line of an installed proxy, for the report.
pub fn version(contender: &Contender, dir: &Path) -> Option<String> {
    let binary = contender.binary.as_ref()?;
    let flag = match contender.kind {
        Kind::Direct => return None,
        Kind::Ringway | Kind::RingwayUringPlain | Kind::RingwayEpoll | Kind::RingwayBaseline => "--version",
        Kind::Nginx | Kind::Haproxy => "-v",
    };
    let (ok, text) = bounded_output(contender.kind.name(), binary, &[flag], dir)?;
    let line = text.lines().next()?.trim().to_string();
    (ok && !line.is_empty()).then_some(line)
}
