//! One client connection: wait for each request head (with deadlines), hand the request to
//! [`crate::forward`], keep the connection alive or close it.
//!
//! Hot path: no locks, no info-level logging; buffers live as long as the connection.

use std::net::SocketAddr;
use std::rc::Rc;

use monoio::time::Instant;

use crate::record::{Record, RequestText};
use crate::session::h1::H1Session;
pub use crate::session::Conn;
use crate::session::{HeadRead, Session};
use crate::stream::Stream;
use crate::worker::Worker;

/// Serves one client connection to its end.
/// `trusted`: the peer is a trusted proxy (see [`crate::worker::ServerLimits::trusts`]).
/// `tls`: what the TLS handshake established, on the TLS listener.
pub async fn serve(
    worker: &Rc<Worker>,
    stream: Stream,
    peer: SocketAddr,
    trusted: bool,
    tls: Option<Rc<crate::tls::TlsInfo>>,
) {
    let mut conn = Conn {
        down: Session::H1(H1Session::new(stream)),
        peer,
        peer_ip: peer.ip().to_string(),
        trusted,
        first_byte: None,
        rec: Record::new(Instant::now()),
        text: RequestText::default(),
        upstream_buf: Vec::new(),
        spans: Vec::new(),
        captured: None,
        tls,
    };
    let mut first = true;
    loop {
        let head_len = match conn.down.read_head(worker, first, &mut conn.first_byte).await {
            HeadRead::Ready(n) => n,
            HeadRead::Closed => return,
            HeadRead::Fail(e) => {
                let id = worker.next_request_id();
                conn.down.write_reply(&e.reply(), &id, true, None, None, &worker.spares);
                let sent = conn.down.flush(worker).await.is_ok();
                if sent {
                    conn.down.close().await;
                }
                crate::forward::finish_unparsed(worker, &mut conn, e, id, sent);
                return;
            }
        };
        if first && conn.down.head_bytes().starts_with(&crate::h2::PREFACE[..18]) {
            // HTTP/2 with prior knowledge: the preface's first part reads as a head.
            let Session::H1(h1) = conn.down else { return };
            let addr = (conn.peer, conn.trusted);
            return Box::pin(crate::h2::serve(worker, h1.stream, addr, conn.tls, h1.rbuf)).await;
        }
        first = false;
        if !crate::forward::handle(worker, &mut conn, head_len).await {
            return;
        }
        if worker.draining.get() {
            return;
        }
        conn.down.between_requests();
    }
}
