//! The ringway control plane and composition root: command line, bootstrap configuration,
//! listeners, worker start-up, the admin API, signals and drain.
//!
//! [`start`] runs a gateway inside the calling process and answers a [`Handle`] to it; the
//! `ringway` binary is [`start`] followed by [`Handle::wait`].
//!
//! Invariant: nothing here runs on a worker's request path; `proxy` and `policy` never depend
//! on this crate.

pub mod api;
pub mod bootstrap;
pub mod certs;
pub mod changes;
pub mod cli;
pub mod error;
mod gate;
pub mod http;
pub mod listen;
pub mod metrics;
mod page;
pub mod parse;
mod resources;
pub mod secret_box;
pub mod secrets;
pub mod serve;
mod server;
mod slots;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod tls_listen;

use std::process::ExitCode;

pub use cli::Args;
pub use serve::{check, start, Handle};

/// Logs to standard error at the level `RINGWAY_LOG` names (info by default); does nothing
/// when a logger is already installed.
pub fn init_logging() {
    let env = env_logger::Env::default().filter_or("RINGWAY_LOG", "info");
    let _ = env_logger::Builder::from_env(env).format_target(false).try_init();
}

/// The exit status for the end of a run: success, or the error printed and status 2.
pub fn exit_status(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("ringway: {e:#}");
            ExitCode::from(2)
        }
    }
}
