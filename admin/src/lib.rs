//! The ringway control plane and composition root: command line, bootstrap configuration,
//! listeners, worker start-up, signals and drain.
//!
//! Invariant: nothing here runs on a worker's request path; `proxy` and `policy` never depend
//! on this crate.

pub mod api;
pub mod bootstrap;
pub mod cli;
pub mod http;
pub mod listen;
pub mod parse;
pub mod serve;
pub mod state;
pub mod telemetry;

use std::process::ExitCode;

use clap::Parser;

/// Runs the gateway with the process's arguments.
pub fn main() -> ExitCode {
    let args = cli::Args::parse();
    init_logging();
    match serve::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("ringway: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let env = env_logger::Env::default().filter_or("RINGWAY_LOG", "info");
    let _ = env_logger::Builder::from_env(env).format_target(false).try_init();
}
