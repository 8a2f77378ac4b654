//! The request body on its way upstream: taken from the client's session (which decodes its
//! framing), framed again for the upstream, buffered whole when small, else streamed.
//!
//! Hot path.

use std::time::Duration;

use crate::stream::Stream;

use super::Plan;
use crate::h1::head::BodyKind;
use crate::h1::write::encode_chunk;
use crate::io::{write_all, write_range};
use crate::respond::ProxyError;
use crate::session::{Conn, Piece};
use crate::worker::Worker;

/// Request bodies up to this size are read in full before the upstream is asked for a
/// connection, so a slow client holds no upstream connection (and the request can be retried).
pub(super) const BUFFERED_BODY: usize = 64 * 1024;

/// Appends a piece of the request body to `out`, framed as the upstream gets it (chunked when
/// the client's body was: its length is not known in advance).
fn frame(out: &mut Vec<u8>, chunked: bool, piece: Piece<'_>) {
    match (piece, chunked) {
        (Piece::Data(d), true) => encode_chunk(out, d),
        (Piece::Data(d), false) => out.extend_from_slice(d),
        (Piece::End, true) => out.extend_from_slice(b"0\r\n\r\n"),
        (Piece::End, false) => {}
    }
}

/// Moves what the client's session holds of the request body into `out`, framed for the
/// upstream. Fails on malformed framing or a body over its cap.
pub(super) fn take_buffered_body(conn: &mut Conn, plan: &Plan<'_>, out: &mut Vec<u8>) -> Result<(), ProxyError> {
    let chunked = matches!(plan.body, BodyKind::Chunked);
    conn.down.take_body(plan.max_body, &mut |piece| frame(out, chunked, piece))
}

/// Streams the rest of the request body from the client to the upstream. `Err(Some(e))`: answer
/// the client with `e`; `Err(None)`: the client is gone.
pub(super) async fn stream_request_body(
    worker: &Worker,
    conn: &mut Conn,
    up: &mut Stream,
    plan: &Plan<'_>,
    idle: Duration,
) -> Result<(), Option<ProxyError>> {
    let mut enc = Vec::new();
    while !conn.down.body_done() {
        match conn.down.read_body(&worker.limits).await {
            Ok(0) => return Err(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(Some(ProxyError::RequestTimeout)),
            Err(_) => return Err(None),
        }
        if let Some((buf, take)) = conn.down.lend_body() {
            // A sized body goes straight from the receive buffer.
            let (r, buf) = write_range(up, buf, 0..take, idle).await;
            // Only what reached the upstream counts as taken.
            conn.down.return_body(buf, if r.is_ok() { take } else { 0 });
            r.map_err(|_| Some(ProxyError::UpstreamSend))?;
        } else {
            enc.clear();
            take_buffered_body(conn, plan, &mut enc).map_err(Some)?;
            let (r, b) = write_all(up, enc, idle).await;
            enc = b;
            r.map_err(|_| Some(ProxyError::UpstreamSend))?;
        }
    }
    Ok(())
}
