//! The `idle` subcommand: what an idle client keep-alive connection costs each proxy in
//! memory. Every connection sends one request, reads its answer and then stays open; the
//! proxy's RSS is read before and after.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;

use crate::contender::{self, Kind};
use crate::process::{self, ChildGuard, TempDir};
use crate::procstat;
use crate::scenarios::SCENARIOS;

/// Options of the `idle` subcommand.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// The ringway binary [default: target/release/ringway].
    #[arg(long)]
    pub ringway: Option<PathBuf>,
    /// Idle connections held open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Comma-separated contenders (ringway, nginx, haproxy) [default: ringway,nginx].
    #[arg(long, default_value = "ringway,nginx")]
    pub contenders: String,
}

/// One GET and its whole answer over `s`; the origin answers with a short fixed body.
fn one_request(s: &mut TcpStream) -> Result<()> {
    s.write_all(b"GET /bench/x HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed before the answer ended");
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("answer was not 200: {}", head.lines().next().unwrap_or(""));
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| anyhow!("no content-length in the answer"))?;
            if got.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

/// Raises this process's open-file limit to its hard limit.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// Runs the measurement and prints a markdown table.
pub fn run(args: &IdleArgs) -> Result<()> {
    let limit = raise_nofile();
    if (limit as usize) < args.connections + 100 {
        bail!("the open-file limit is {limit}: too low for {} connections (raise `ulimit -Hn`)", args.connections);
    }
    let ringway = args.ringway.clone().unwrap_or_else(contender::default_ringway);
    let ringway = std::fs::canonicalize(&ringway).unwrap_or(ringway);
    let wanted: Vec<&str> = args.contenders.split(',').map(str::trim).collect();
    let (contenders, notes) = contender::discover(&ringway, None, false);
    for n in notes.iter().filter(|n| wanted.iter().any(|w| n.starts_with(w))) {
        eprintln!("note: {n}");
    }
    let tmp = TempDir::new("ringway-idle")?;
    let exe = std::env::current_exe()?;
    let mut cmd = process::pinned(None, &exe);
    cmd.args(["origin", "--listen", "127.0.0.1:0", "--threads", "1"]).stdin(Stdio::null()).stdout(Stdio::piped());
    let mut origin = ChildGuard::spawn("origin", cmd)?;
    let line = process::first_line(&mut origin, Duration::from_secs(10))?;
    let origin_addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("unexpected origin output: {line:?}"))?;
    println!("## ringway-perf idle: {} idle keep-alive connections, one proxy worker\n", args.connections);
    println!("| proxy | RSS before | RSS with the connections open | per connection |\n|---|--:|--:|--:|");
    for c in contenders.iter().filter(|c| c.kind != Kind::Direct && wanted.contains(&c.kind.name())) {
        let Some(mut running) = c.start(&SCENARIOS[0], origin_addr, None, tmp.path())? else { continue };
        let measured = (|| -> Result<(u64, u64)> {
            let pid = running.child.pid();
            // Warm up: one connection, many requests, so pools and buffers exist before.
            let mut warm = TcpStream::connect(running.addr)?;
            for _ in 0..100 {
                one_request(&mut warm)?;
            }
            drop(warm);
            std::thread::sleep(Duration::from_millis(300));
            let before = procstat::sample_tree(pid).rss_kib;
            let mut held = Vec::with_capacity(args.connections);
            for i in 0..args.connections {
                let mut s = TcpStream::connect(running.addr).with_context(|| format!("connection {i}"))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                one_request(&mut s).with_context(|| format!("request on connection {i}"))?;
                held.push(s);
            }
            std::thread::sleep(Duration::from_secs(1));
            let after = procstat::sample_tree(pid).rss_kib;
            // Every connection must still be open: a proxy that closed them saved nothing.
            for s in held.iter_mut().step_by(97) {
                one_request(s).context("an idle connection was closed")?;
            }
            Ok((before, after))
        })();
        running.child.stop();
        let (before, after) = measured.with_context(|| c.kind.name())?;
        let per = (after.saturating_sub(before)) as f64 / args.connections as f64;
        println!("| {} | {before} KiB | {after} KiB | {per:.2} KiB |", c.kind.name());
    }
    origin.stop();
    Ok(())
}
