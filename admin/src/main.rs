//! The `ringway` binary: the library's gateway, run until a signal.

use std::process::ExitCode;

use ringway_admin::{exit_status, Args, Handle};

fn main() -> ExitCode {
    let args = Args::from_env();
    ringway_admin::init_logging();
    if args.check {
        return exit_status(ringway_admin::check(&args));
    }
    exit_status(ringway_admin::start(args).and_then(Handle::wait))
}
