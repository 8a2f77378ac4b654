//! `GET /metrics`: the node's metrics in the Prometheus text format (version 0.0.4), rendered on
//! the admin thread for the admin listener and for `--metrics-listen`.

use std::fmt::Write;
use std::sync::Arc;

use crate::telemetry::Telemetry;

/// The media type of the exposition.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin side reads metrics from; made once at start and kept by the admin thread.
#[derive(Default)]
pub struct MetricsSource {
    /// Every worker's counters (none: only the build is told).
    telemetry: Option<Arc<Telemetry>>,
}

impl MetricsSource {
    pub(crate) fn new(telemetry: Option<Arc<Telemetry>>) -> MetricsSource {
        MetricsSource { telemetry }
    }
}

/// Appends every metric, each with its `# HELP` and `# TYPE` lines, to `out`.
pub(crate) fn render(out: &mut String, src: &MetricsSource) {
    if let Some(t) = &src.telemetry {
        // Its registry tells the build too.
        t.render(out);
        return;
    }
    out.push_str("# HELP ringway_build_info The running ringway build; the value is always 1.\n");
    out.push_str("# TYPE ringway_build_info gauge\n");
    let _ = writeln!(out, "ringway_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_is_exposed_with_help_and_type() {
        let mut out = String::new();
        render(&mut out, &MetricsSource::new(None));
        let want = format!("ringway_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"));
        assert!(out.starts_with("# HELP ringway_build_info ") && out.ends_with(&want), "{out}");
        assert!(out.contains("\n# TYPE ringway_build_info gauge\n"), "{out}");
    }
}
