//! The request body: read from the client (under the idle timeout and the minimum rate), framed
//! again for the upstream, buffered whole when small.
//!
//! Hot path.

use std::time::Duration;

use crate::stream::Stream;
use monoio::time::Instant;

use super::Plan;
use crate::h1::chunked::{Chunk, ChunkedDecoder};
use crate::h1::write::encode_chunk;
use crate::io::{read_more, write_all, write_range};
use crate::respond::ProxyError;
use crate::session::Conn;
use crate::worker::Worker;

/// How far the request body has come.
pub(super) struct BodyProgress {
    pub(super) decoder: Option<ChunkedDecoder>,
    /// Bytes still to read (Content-Length bodies).
    pub(super) remaining: u64,
    /// Body bytes seen so far (for the size cap).
    pub(super) seen: u64,
    pub(super) done: bool,
    /// Body bytes received, and time spent waiting for them (for the minimum rate: only the
    /// client's own time counts, not the upstream's).
    pub(super) received: u64,
    pub(super) waited: Duration,
}

impl BodyProgress {
    /// The deadline of the next read of the body, starting `now`: the idle timeout, or sooner
    /// when waiting any longer would take the body's average rate, once the grace period is
    /// spent, below the minimum.
    fn deadline(&self, limits: &crate::worker::ServerLimits, now: Instant) -> Instant {
        if limits.body_min_rate == 0 {
            return now + limits.body_timeout;
        }
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / limits.body_min_rate);
        let left = earned.max(limits.body_grace).saturating_sub(self.waited);
        // A few milliseconds at least, so bytes already waiting in the socket are still read.
        now + left.clamp(Duration::from_millis(10), limits.body_timeout)
    }

    /// Reads more of the body from the client into `conn.rbuf` under [`Self::deadline`].
    pub(super) async fn read(
        &mut self,
        conn: &mut Conn,
        limits: &crate::worker::ServerLimits,
    ) -> std::io::Result<usize> {
        let now = Instant::now();
        let buf = std::mem::take(&mut conn.rbuf);
        let (r, buf) = read_more(&mut conn.stream, buf, 16 * 1024, self.deadline(limits, now)).await;
        conn.rbuf = buf;
        if limits.body_min_rate > 0 {
            self.waited += now.elapsed();
        }
        if let Ok(n) = r {
            self.received += n as u64;
        }
        r
    }
}

/// Request bodies up to this size are read in full before the upstream is asked for a
/// connection, so a slow client holds no upstream connection (and the request can be retried).
pub(super) const BUFFERED_BODY: usize = 64 * 1024;

/// Moves what `conn.rbuf` holds of the request body into `out` (encoded for the upstream),
/// consuming it. Fails on malformed framing or a body over its cap.
pub(super) fn take_buffered_body(
    conn: &mut Conn,
    p: &mut BodyProgress,
    out: &mut Vec<u8>,
    max: Option<u64>,
) -> Result<(), ProxyError> {
    if p.done {
        return Ok(());
    }
    match &mut p.decoder {
        None => {
            let take = (conn.rbuf.len() as u64).min(p.remaining) as usize;
            out.extend_from_slice(&conn.rbuf[..take]);
            conn.consume(take);
            p.remaining -= take as u64;
            p.done = p.remaining == 0;
        }
        Some(d) => {
            let mut pos = 0;
            loop {
                match d.decode(&conn.rbuf, &mut pos).map_err(ProxyError::BadRequestBody)? {
                    Chunk::Data(r) => {
                        p.seen += r.len() as u64;
                        if let Some(limit) = max.filter(|l| p.seen > *l) {
                            return Err(ProxyError::BodyTooLarge { limit });
                        }
                        encode_chunk(out, &conn.rbuf[r]);
                    }
                    Chunk::NeedMore => break,
                    Chunk::Done => {
                        out.extend_from_slice(b"0\r\n\r\n");
                        p.done = true;
                        break;
                    }
                }
            }
            conn.consume(pos);
        }
    }
    Ok(())
}

/// Streams the rest of the request body from the client to the upstream. `Err(Some(e))`: answer
/// the client with `e`; `Err(None)`: the client is gone.
pub(super) async fn stream_request_body(
    worker: &Worker,
    conn: &mut Conn,
    up: &mut Stream,
    p: &mut BodyProgress,
    plan: &Plan<'_>,
    idle: Duration,
) -> Result<(), Option<ProxyError>> {
    let mut enc = Vec::new();
    while !p.done {
        match p.read(conn, &worker.limits).await {
            Ok(0) => return Err(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Some(ProxyError::RequestTimeout)),
            Err(_) => return Err(None),
        }
        if p.decoder.is_none() {
            // Content-Length: forward straight from the receive buffer.
            let take = (conn.rbuf.len() as u64).min(p.remaining) as usize;
            let buf = std::mem::take(&mut conn.rbuf);
            let (r, buf) = write_range(up, buf, 0..take, idle).await;
            conn.rbuf = buf;
            r.map_err(|_| Some(ProxyError::UpstreamSend))?;
            conn.consume(take);
            p.remaining -= take as u64;
            p.done = p.remaining == 0;
        } else {
            enc.clear();
            take_buffered_body(conn, p, &mut enc, plan.max_body).map_err(Some)?;
            let (r, b) = write_all(up, enc, idle).await;
            enc = b;
            r.map_err(|_| Some(ProxyError::UpstreamSend))?;
        }
    }
    Ok(())
}
