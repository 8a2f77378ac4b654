//! The gateway under test: what the `ringway` binary runs. Once it listens (and catches
//! signals), it writes its addresses as JSON (`{"data": ..., "tls": ..., "admin": ..., "metrics": ...}`)
//! to the file `RINGWAY_TEST_ADDRESSES` names, when set: written beside it, then renamed, so
//! a reader never sees half of it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ringway_admin::{exit_status, Args, Handle};

fn write_addresses(path: &Path, h: &Handle) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "data": h.data_addr().to_string(),
        "tls": h.tls_addr().map(|a| a.to_string()),
        "admin": h.admin_addr().to_string(),
        "metrics": h.metrics_addr().map(|a| a.to_string()),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

fn main() -> ExitCode {
    let args = Args::from_env();
    ringway_admin::init_logging();
    if args.check {
        return exit_status(ringway_admin::check(&args));
    }
    let file = std::env::var_os("RINGWAY_TEST_ADDRESSES");
    exit_status(ringway_admin::start(args).and_then(|h| {
        h.wait_ready(|h| match &file {
            Some(path) => write_addresses(Path::new(path), h),
            None => Ok(()),
        })
    }))
}
