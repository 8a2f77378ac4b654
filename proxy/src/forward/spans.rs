//! The spans of a sampled request: the sampling decision, a client span per upstream attempt
//! (each attempt after the first names its own span in the `traceparent` it sends), and the
//! hand-over of the ended request to the trace exporter. Unsampled requests pay one branch.

use std::time::{SystemTime, UNIX_EPOCH};

use monoio::time::Instant;

use crate::record::{Record, Trace, METHODS};
use crate::session::Conn;
use crate::traces::{AttemptSpan, Finished};
use crate::worker::Worker;

/// Decides whether the request is recorded: a trace that came with the request follows its
/// sampled flag, a new one is sampled below `threshold`. A sampled request gets a server span.
#[inline]
pub(super) fn sample(worker: &Worker, rec: &mut Record, threshold: u64) -> bool {
    if worker.traces.is_none() {
        return false;
    }
    let sampled = if rec.trace_inbound { rec.trace.flags & 1 == 1 } else { worker.random() < threshold };
    if sampled {
        rec.trace.flags |= 1;
        rec.trace.server_id = worker.random().to_be_bytes();
    }
    sampled
}

/// Whether the request's spans are recorded.
#[inline]
pub(super) fn sampled(conn: &Conn) -> bool {
    conn.rec.trace.server_id != [0; 8]
}

/// An attempt on `target` begins at `at`. The first uses the span id the request was built
/// with; a later one gets its own, written into the `traceparent` of the request in `out`.
pub(super) fn attempt_started(
    worker: &Worker,
    conn: &mut Conn,
    out: &mut [u8],
    target: std::net::SocketAddr,
    at: Instant,
) {
    let span_id = if conn.spans.is_empty() {
        conn.rec.trace.span_id
    } else {
        let id = worker.random().to_be_bytes();
        rewrite_traceparent(out, &Trace { span_id: id, ..conn.rec.trace });
        id
    };
    conn.spans.push(AttemptSpan { span_id, target, started: at, ended: None, status: 0, error: None });
}

/// The current attempt ended with the upstream's `status` (0: none) or an error.
#[inline]
pub(super) fn attempt_ended(conn: &mut Conn, status: u16, error: Option<&'static str>) {
    if let Some(a) = conn.spans.last_mut().filter(|a| a.ended.is_none()) {
        a.ended = Some(Instant::now());
        a.status = status;
        a.error = error;
    }
}

/// Writes `trace` over the value of the `traceparent` field in the request head in `out`
/// (only a value of the shape the gateway writes: same length, nothing else moves).
fn rewrite_traceparent(out: &mut [u8], trace: &Trace) {
    const NAME: &[u8] = b"\r\ntraceparent: ";
    let Some(at) = memchr::memmem::find(out, NAME) else { return };
    let value = at + NAME.len();
    if let Some(v) = out.get_mut(value..value + 55).filter(|v| v.starts_with(b"00-") && v[35] == b'-' && v[52] == b'-')
    {
        v.copy_from_slice(&trace.traceparent());
    }
}

/// Hands the ended request to the exporter (sampled requests only).
pub(super) fn export(worker: &Worker, conn: &mut Conn, route: Option<&str>, upstream: Option<&str>, now: Instant) {
    let Some(tx) = worker.traces.as_ref() else { return };
    let rec = &conn.rec;
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let now_ns = since_epoch.saturating_add_signed(worker.clock.skew_ms().saturating_mul(1_000_000));
    let unix = |t: Instant| now_ns.saturating_sub(now.saturating_duration_since(t).as_nanos() as u64);
    let (host, target) = match conn.text.parts() {
        Some((_, h, p)) => (h, p),
        None => (&b""[..], &b""[..]),
    };
    // Methods outside the known set are `_OTHER` (HTTP semantic conventions).
    let method = match METHODS.get(usize::from(rec.method)) {
        Some(&"OTHER") | None => "_OTHER",
        Some(m) => m,
    };
    let attempts = conn
        .spans
        .drain(..)
        .map(|a| {
            let (s, e) = (unix(a.started), unix(a.ended.unwrap_or(now)));
            (a, s, e)
        })
        .collect();
    let f = Finished {
        trace_id: rec.trace.trace_id,
        server_id: rec.trace.server_id,
        parent_id: rec.trace_inbound.then_some(rec.trace.parent_id),
        flags: rec.trace.flags,
        start_unix_ns: unix(rec.started),
        end_unix_ns: now_ns,
        method,
        host: String::from_utf8_lossy(host).into(),
        target: String::from_utf8_lossy(target).into(),
        http10: rec.http10,
        route: route.map(Into::into),
        upstream: upstream.map(Into::into),
        status: rec.status,
        error: rec.error,
        client: rec.client_ip,
        attempts,
    };
    tx.send(f);
}
