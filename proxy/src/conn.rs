//! One client connection: read request heads (with deadlines), hand each request to
//! [`crate::forward`], keep the connection alive or close it.
//!
//! Hot path: no locks, no info-level logging; buffers live as long as the connection.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use crate::stream::Stream;
use monoio::time::Instant;

use crate::h1::head::{check_partial_head, HeadError};
use crate::io::{linger, read_more, write_all};
use crate::record::{Record, RequestText};
use crate::respond::{encode_reply, ProxyError};
pub use crate::session::Conn;
use crate::worker::Worker;

const INITIAL_BUF: usize = 4096;

enum HeadRead {
    /// A complete head of this many bytes is at the start of `rbuf`.
    Ready(usize),
    /// The connection ended (or is idle while draining): close quietly.
    Closed,
    /// Answer with this error and close.
    Fail(ProxyError),
}

/// Serves one client connection to its end.
/// `trusted`: the peer is a trusted proxy (see [`crate::worker::ServerLimits::trusts`]).
pub async fn serve(worker: &Rc<Worker>, stream: Stream, peer: SocketAddr, trusted: bool) {
    let mut conn = Conn {
        stream,
        peer,
        rbuf: Vec::with_capacity(INITIAL_BUF),
        out: Vec::new(),
        peer_ip: peer.ip().to_string(),
        trusted,
        first_byte: None,
        rec: Record::new(Instant::now()),
        text: RequestText::default(),
    };
    let mut first = true;
    loop {
        let head_len = match read_head(worker, &mut conn, first).await {
            HeadRead::Ready(n) => n,
            HeadRead::Closed => return,
            HeadRead::Fail(e) => {
                let id = worker.next_request_id();
                let mut out = std::mem::take(&mut conn.out);
                out.clear();
                encode_reply(&mut out, &e.reply(), &id, true, false, None, None);
                let (r, _) = write_all(&mut conn.stream, out, worker.limits.write_timeout).await;
                if r.is_ok() {
                    linger(&mut conn.stream).await;
                }
                crate::forward::finish_unparsed(worker, &mut conn, e, id, r.is_ok());
                return;
            }
        };
        first = false;
        if !crate::forward::handle(worker, &mut conn, head_len).await {
            return;
        }
        if worker.draining.get() {
            return;
        }
        // Give back memory a large head needed.
        if conn.rbuf.capacity() > 4 * INITIAL_BUF && conn.rbuf.len() <= INITIAL_BUF {
            conn.rbuf.shrink_to(INITIAL_BUF);
        }
        if conn.out.capacity() > 4 * INITIAL_BUF {
            conn.out = Vec::new();
        }
    }
}

async fn read_head(worker: &Rc<Worker>, conn: &mut Conn, first: bool) -> HeadRead {
    let limits = &worker.limits;
    let mut deadline = None;
    let mut scanned: usize = 0;
    loop {
        if !conn.rbuf.is_empty() {
            let from = scanned.saturating_sub(3);
            if let Some(i) = memchr::memmem::find(&conn.rbuf[from..], b"\r\n\r\n") {
                return HeadRead::Ready(from + i + 4);
            }
            // Refuse a head with bare LFs now rather than after a timeout; the last byte may be
            // a CR whose LF has not arrived yet.
            if let Err(e) = check_partial_head(&conn.rbuf) {
                return HeadRead::Fail(ProxyError::Head(e));
            }
            scanned = conn.rbuf.len();
            if conn.rbuf.len() >= limits.max_head_bytes {
                return HeadRead::Fail(ProxyError::Head(HeadError::TooLarge));
            }
        }
        let idle = conn.rbuf.is_empty();
        if idle && worker.draining.get() {
            return HeadRead::Closed;
        }
        let d = match deadline {
            Some(d) => d,
            None if idle && !first => Instant::now() + limits.keepalive_timeout,
            None => {
                let now = Instant::now();
                let d = now + limits.head_timeout;
                if !idle {
                    deadline = Some(d);
                    conn.first_byte = Some(now);
                }
                d
            }
        };
        let slot = idle.then(|| worker.idle_enter(conn.stream.as_raw_fd()));
        let want = (limits.max_head_bytes - conn.rbuf.len()).min(INITIAL_BUF);
        let buf = std::mem::take(&mut conn.rbuf);
        let (r, buf) = read_more(&mut conn.stream, buf, want, d).await;
        conn.rbuf = buf;
        if let Some(s) = slot {
            worker.idle_leave(s);
        }
        match r {
            Ok(0) => return HeadRead::Closed,
            Ok(_) => {
                if deadline.is_none() {
                    let now = Instant::now();
                    deadline = Some(now + limits.head_timeout);
                    conn.first_byte = Some(now);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && !idle => {
                return HeadRead::Fail(ProxyError::RequestTimeout);
            }
            Err(_) => return HeadRead::Closed,
        }
    }
}
