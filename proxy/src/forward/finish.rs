//! The one end of every request: the record is completed and handed to the metrics and the
//! access log.
//!
//! Hot path: a clock read, one lookup of the route's counters, and (when the log is on) one
//! record copied into the worker's block of records (the log thread formats its line).

use monoio::time::Instant;

use crate::access_log::Entry;
use crate::respond::ProxyError;
use crate::session::Conn;
use crate::snapshot::{Route, Upstream};
use crate::worker::Worker;

/// Ends a request: `route` when one matched, `target` when an upstream target was picked,
/// `consumer` when one was authenticated.
pub(super) fn finish(
    worker: &Worker,
    conn: &mut Conn,
    route: Option<&Route>,
    target: Option<(&Upstream, usize)>,
    consumer: Option<&str>,
) {
    let now = Instant::now();
    let rec = &mut conn.rec;
    let total = now.saturating_duration_since(rec.started);
    if rec.upstream_head.is_some() {
        rec.upstream_last = rec.upstream_started.map(|s| now.saturating_duration_since(s));
    }
    let rec = &conn.rec;
    // An upstream and target are named only when one was tried.
    let target = target.filter(|_| rec.attempts > 0).map(|(u, i)| (u.id.as_str(), u.targets[i]));
    let route_id = route.map(|r| r.id.as_str());
    let series = &mut worker.series.borrow_mut();
    worker.metrics.observe(series, rec, total, (route_id.unwrap_or(""), consumer), target);
    if super::spans::sampled(conn) {
        let upstream = target.map(|t| t.0);
        super::spans::export(worker, conn, route_id, upstream, now);
    }
    let rec = &conn.rec;
    if let Some(log) = worker.log.as_ref().filter(|l| l.enabled()) {
        let entry = Entry {
            rec,
            unix_ms: worker.clock.unix_ms_at(worker.wall.get(), now).saturating_sub(total.as_millis() as u64),
            total,
            worker: worker.ctx.id,
            route: route_id,
            consumer,
            upstream: target.map(|t| t.0),
            target: target.map(|t| t.1),
            text: conn.text.parts(),
            capture: conn.captured.as_deref(),
        };
        log.push(&entry, &worker.metrics.gauges);
    }
    conn.captured = None;
}

/// Ends a request whose head was refused before it could be read in full (too large, too slow,
/// malformed): it is answered with `e`, and recorded without route.
pub fn finish_unparsed(worker: &Worker, conn: &mut Conn, e: ProxyError, request_id: [u8; 32], sent: bool) {
    conn.rec = crate::record::Record::new(conn.first_byte.take().unwrap_or_else(Instant::now));
    conn.rec.request_id = crate::record::RequestId::generated(request_id);
    conn.rec.client_ip = conn.peer.ip();
    conn.rec.failed(&crate::respond::Failure::new(e, crate::respond::Phase::Head));
    if sent {
        conn.rec.bytes_out = e.reply().body.len() as u64;
    } else {
        conn.rec.unsent();
    }
    conn.text.clear();
    finish(worker, conn, None, None, None);
}
