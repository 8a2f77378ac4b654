//! HTTP/2 to upstreams (`protocol: h2` over TLS with ALPN, `h2c` in plaintext): a few
//! connections per worker and target, each carrying many streams at once.
//!
//! The exchange speaks HTTP/1.1 bytes to whatever stream it is given; [`H2Up`] is that stream
//! for one request on a multiplexed connection. The request's head is read from the bytes
//! written to it and sent as HEADERS, its body (sized or chunked) as DATA within the stream's
//! window; the answer is handed back as HTTP/1.1 bytes: a head, the body (chunked when its
//! length is not given), and the trailers in the last chunk. So retries, limits, the cache and
//! the relay to the client are the same code for every upstream protocol.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::AsyncReadRent;

use super::io::{Pipe, PipeIo};
use super::up::{Conn, H2Up, STREAMS_PER_CONNECTION};
use crate::respond::ProxyError;
use crate::snapshot::Upstream;
use crate::stream::Stream;
use crate::worker::Worker;

/// A stream for one request to `addr`: on a connection with room, or a new one.
pub async fn stream(worker: &Rc<Worker>, addr: SocketAddr, upstream: &Upstream) -> Result<Stream, ProxyError> {
    let key = (addr, upstream.tls.as_ref().map_or(0, |t| t.id) ^ 0x2);
    let https = upstream.tls.is_some();
    {
        let mut all = worker.h2_upstreams.borrow_mut();
        let list = all.by_key.entry(key).or_default();
        list.retain(|c| c.alive.get());
        if let Some(c) = list.iter().find(|c| c.open.get() < STREAMS_PER_CONNECTION) {
            return Ok(Stream::H2(Box::new(H2Up::new(c.send.clone(), c.open.clone(), https, upstream.idle_timeout))));
        }
    }
    let s = crate::client::connect(addr, upstream.connect_timeout, upstream.tls.as_deref()).await?;
    if let Stream::Tls(t) = &s {
        if t.connection().alpn_protocol() != Some(b"h2") {
            return Err(ProxyError::UpstreamProtocol("the upstream did not agree to HTTP/2 (ALPN)"));
        }
    }
    let pipe = Rc::new(RefCell::new(Pipe::default()));
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(1024 * 1024).initial_connection_window_size(4 * 1024 * 1024);
    // The client's handshake only writes the preface and its settings.
    let (send, connection) = match builder.handshake::<_, Bytes>(PipeIo(pipe.clone())).await {
        Ok(pair) => pair,
        Err(_) => return Err(ProxyError::UpstreamProtocol("the HTTP/2 handshake failed")),
    };
    let alive = Rc::new(Cell::new(true));
    let open = Rc::new(Cell::new(0));
    monoio::spawn(drive(s, pipe, connection, alive.clone(), worker.limits.write_timeout));
    let c = Conn { send: send.clone(), alive, open: open.clone() };
    worker.h2_upstreams.borrow_mut().by_key.entry(key).or_default().push(c);
    Ok(Stream::H2(Box::new(H2Up::new(send, open, https, upstream.idle_timeout))))
}

/// One gRPC health check (`grpc.health.v1.Health/Check` of `service`) on a connection of its
/// own, made by the health thread's probe: healthy when the call succeeds and the answer is
/// SERVING.
pub async fn health_check(s: Stream, addr: SocketAddr, https: bool, service: &str) -> Result<(), String> {
    if let Stream::Tls(t) = &s {
        if t.connection().alpn_protocol() != Some(b"h2") {
            return Err("the target did not agree to HTTP/2 (ALPN)".into());
        }
    }
    let pipe = Rc::new(RefCell::new(Pipe::default()));
    let (mut send, connection) =
        h2::client::handshake(PipeIo(pipe.clone())).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    monoio::spawn(drive(s, pipe, connection, Rc::new(Cell::new(true)), Duration::from_secs(5)));
    let scheme = if https { "https" } else { "http" };
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{scheme}://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "ringway-health")
        .body(())
        .map_err(|e| e.to_string())?;
    // HealthCheckRequest { string service = 1; }, framed.
    let mut message = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        message.push(0x0a);
        prost::encoding::encode_varint(service.len() as u64, &mut message);
        message.extend_from_slice(service.as_bytes());
    }
    let mut body = Vec::with_capacity(message.len() + 5);
    crate::grpc::frame(&mut body, &message, 0);
    std::future::poll_fn(|cx| send.poll_ready(cx)).await.map_err(|e| e.to_string())?;
    let (response, mut stream) = send.send_request(request, false).map_err(|e| e.to_string())?;
    stream.send_data(Bytes::from(body), true).map_err(|e| e.to_string())?;
    let (parts, mut recv) = response.await.map_err(|e| format!("the call failed: {e}"))?.into_parts();
    let mut data = Vec::new();
    while let Some(d) = recv.data().await {
        let d = d.map_err(|e| format!("the call failed: {e}"))?;
        let _ = recv.flow_control().release_capacity(d.len());
        data.extend_from_slice(&d);
    }
    let trailers = recv.trailers().await.map_err(|e| e.to_string())?.unwrap_or(parts.headers);
    let status = trailers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("");
    if status != "0" {
        let message =
            trailers.get("grpc-message").map(|m| crate::grpc::decode_message(m.as_bytes())).unwrap_or_default();
        return Err(format!("grpc-status {status} {message}").trim_end().to_string());
    }
    // HealthCheckResponse { ServingStatus status = 1; }: 1 is SERVING.
    let mut pos = 0;
    let answer = crate::grpc::next_frame(&data, &mut pos, 1024).ok().flatten().map(|(_, m)| m.to_vec());
    match answer.as_deref() {
        Some([0x08, 1]) => Ok(()),
        Some([0x08, n]) => Err(format!("the service is not serving (status {n})")),
        _ => Err("the service is not serving (status 0, UNKNOWN)".into()),
    }
}

/// Moves the connection's bytes between the socket and h2 until either ends.
async fn drive(
    mut stream: Stream,
    pipe: Rc<RefCell<Pipe>>,
    mut connection: h2::client::Connection<PipeIo, Bytes>,
    alive: Rc<Cell<bool>>,
    write_timeout: Duration,
) {
    let mut out = Vec::new();
    let mut rbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        pipe.borrow_mut().take_outbound(&mut out);
        if !out.is_empty() {
            let (r, mut b) = crate::io::write_all(&mut stream, std::mem::take(&mut out), write_timeout).await;
            b.clear();
            out = b;
            if r.is_err() {
                break;
            }
        }
        let readable = monoio::select! {
            done = std::future::poll_fn(|cx| {
                use std::future::Future;
                match std::pin::Pin::new(&mut connection).poll(cx) {
                    std::task::Poll::Ready(_) => std::task::Poll::Ready(true),
                    std::task::Poll::Pending => {
                        let mut p = pipe.borrow_mut();
                        if p.outbound.is_empty() {
                            p.sender = Some(cx.waker().clone());
                            std::task::Poll::Pending
                        } else {
                            std::task::Poll::Ready(false)
                        }
                    }
                }
            }) => if done { break } else { None },
            r = stream.readable() => Some(r.is_ok()),
        };
        match readable {
            // h2 has bytes to send: they go first.
            None => continue,
            Some(false) => break,
            Some(true) => {}
        }
        let (r, b) = stream.read(std::mem::take(&mut rbuf)).await;
        rbuf = b;
        match r {
            Ok(n) if n > 0 => pipe.borrow_mut().received(&rbuf[..n]),
            _ => {
                pipe.borrow_mut().closed();
                // h2 sees the end and finishes its streams with errors.
                let _ = std::future::poll_fn(|cx| {
                    use std::future::Future;
                    std::pin::Pin::new(&mut connection).poll(cx).map(|_| ())
                })
                .await;
                break;
            }
        }
        rbuf.clear();
    }
    alive.set(false);
}
