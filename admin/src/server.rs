//! The admin HTTP server: hyper (HTTP/1.1) on a tokio current-thread runtime in a thread of
//! its own, `ringway-admin-http`. tokio never runs on a worker.
//!
//! Each connection is a task: its socket goes through a [`Gate`] (strict heads, clocks, slots)
//! to hyper, whose handler checks the request ([`check_request`]), reads the body within the
//! request's deadline, and hands the request to the admin thread, which owns all state, as a
//! [`Job`]; the answer comes back over a oneshot channel, awaited without blocking the thread.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use crossbeam_channel::Sender;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper_util::rt::TokioIo;
use ringway_proxy::h1::head::parse_content_length;
use tokio::net::{TcpListener, TcpStream};

use crate::gate::{ConnInfo, Gate};
use crate::http::{check_request, raw_response, AdminLimits, Endpoint, Job, Request, Response};
use crate::slots::{SlotGuard, Slots};

/// The running server; [`HttpServer::stop`] ends it.
pub struct HttpServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Starts serving the admin API on `admin` and, when given, `/metrics` on `metrics`.
    pub fn start(
        admin: std::net::TcpListener,
        metrics: Option<std::net::TcpListener>,
        jobs: Sender<Job>,
        limits: AdminLimits,
    ) -> anyhow::Result<HttpServer> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .context("cannot start the admin API's runtime")?;
        let listeners = {
            let _in_runtime = rt.enter();
            let mut all = vec![(Endpoint::Api, admin)];
            all.extend(metrics.map(|m| (Endpoint::Metrics, m)));
            all.into_iter()
                .map(|(endpoint, l)| {
                    l.set_nonblocking(true)?;
                    Ok((endpoint, TcpListener::from_std(l)?))
                })
                .collect::<std::io::Result<Vec<_>>>()
                .context("cannot serve the admin listeners")?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let limits = Arc::new(limits);
        let thread = ringway_runtime::spawn_background("ringway-admin-http", move || {
            rt.block_on(async move {
                for (endpoint, listener) in listeners {
                    tokio::spawn(accept(listener, endpoint, jobs.clone(), limits.clone()));
                }
                // Until stopped, or until the handle is dropped.
                let _ = stop_rx.await;
            });
            // Dropping the runtime ends every connection task.
        })
        .context("cannot start the admin API's thread")?;
        Ok(HttpServer { stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Closes the listeners and every connection, and waits for the thread to end.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the admin API's thread panicked");
            }
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shut();
    }
}

async fn accept(listener: TcpListener, endpoint: Endpoint, jobs: Sender<Job>, limits: Arc<AdminLimits>) {
    let slots = Arc::new(Slots::new(limits.max_busy, limits.max_busy_per_addr, limits.max_open));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                log::warn!("admin API: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, kill)) = slots.open(peer.ip()) else {
            tokio::spawn(refuse(stream, limits.clone()));
            continue;
        };
        let conn = Arc::new(ConnInfo::new(id, peer, slots.clone()));
        let (jobs, limits) = (jobs.clone(), limits.clone());
        tokio::spawn(async move {
            let _place = SlotGuard { slots: conn.slots.clone(), id };
            tokio::select! {
                () = connection(stream, conn, endpoint, jobs, limits) => {}
                () = kill.notified() => {}
            }
        });
    }
}

/// Answers a connection for which no place is free.
async fn refuse(stream: TcpStream, limits: Arc<AdminLimits>) {
    let r = Response::error(503, "too_many_connections", "too many admin connections");
    let mut stream = stream;
    let _ = tokio::time::timeout(limits.write_timeout, async {
        use tokio::io::AsyncWriteExt;
        let _ = stream.write_all(&raw_response(&r)).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn connection(
    stream: TcpStream,
    conn: Arc<ConnInfo>,
    endpoint: Endpoint,
    jobs: Sender<Job>,
    limits: Arc<AdminLimits>,
) {
    let _ = stream.set_nodelay(true);
    let gate = Gate::new(stream, conn.clone(), &limits);
    let service = hyper::service::service_fn(move |req| {
        // Read when hyper has the head, before the gate may move on to a pipelined request.
        let deadline = conn.deadline();
        let (conn, jobs, limits) = (conn.clone(), jobs.clone(), limits.clone());
        async move { Ok::<_, Infallible>(answer(req, deadline, &conn, endpoint, &jobs, &limits).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        // A client that shuts its side down once its request is sent still gets the answer.
        .half_close(true)
        .serve_connection(TokioIo::new(gate), service)
        .without_shutdown()
        .await;
    if let Ok(parts) = served {
        parts.io.into_inner().finish().await;
    }
}

/// Handles one request hyper parsed (and the gate framed).
async fn answer(
    req: hyper::Request<Incoming>,
    deadline: Instant,
    conn: &ConnInfo,
    endpoint: Endpoint,
    jobs: &Sender<Job>,
    limits: &AdminLimits,
) -> hyper::Response<Answer> {
    let (parts, body) = req.into_parts();
    let length = parts.headers.get(CONTENT_LENGTH).and_then(|v| parse_content_length(v.as_bytes())).unwrap_or(0);
    let mut request = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: Vec::new(),
        peer: Some(conn.peer),
    };
    let checked = match endpoint {
        Endpoint::Api => check_request(&request, length, limits),
        Endpoint::Metrics => check_metrics_request(&request, length),
    };
    if let Err(r) = checked {
        return reply(r, true, conn);
    }
    match read_body(body, length, deadline, limits).await {
        Ok(b) => request.body = b,
        Err(r) => return reply(r, true, conn),
    }
    conn.slots.answering(conn.id);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shutting_down = || Response::error(503, "shutting_down", "the gateway is shutting down");
    if jobs.send(Job { endpoint, request, reply: tx }).is_err() {
        return reply(shutting_down(), true, conn);
    }
    match rx.await {
        Ok(r) => reply(r, false, conn),
        Err(_) => reply(shutting_down(), true, conn),
    }
}

/// The metrics listener serves `GET /metrics` (and `HEAD`), nothing else.
fn check_metrics_request(req: &Request, length: u64) -> Result<(), Response> {
    if req.path != "/metrics" {
        return Err(Response::error(404, "not_found", format!("this listener serves only /metrics, not {}", req.path)));
    }
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Err(Response::error(405, "method_not_allowed", format!("{} is not allowed on /metrics", req.method)));
    }
    if length > 0 {
        return Err(Response::error(400, "bad_request", "a /metrics request takes no body"));
    }
    Ok(())
}

/// Reads a body of `length` bytes that must be whole by `deadline`.
async fn read_body(
    mut body: Incoming,
    length: u64,
    deadline: Instant,
    limits: &AdminLimits,
) -> Result<Vec<u8>, Response> {
    let mut out = Vec::with_capacity(usize::try_from(length).unwrap_or(0).min(limits.max_body));
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout_at(deadline.into(), frame).await {
            Err(_) => {
                return Err(Response::error(
                    408,
                    "request_timeout",
                    format!(
                        "the request head and body must arrive within {:?} of its first byte",
                        limits.request_timeout
                    ),
                ))
            }
            Ok(None) => return Ok(out),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
                if out.len() > limits.max_body {
                    return Err(Response::error(413, "body_too_large", "the body is longer than it said"));
                }
            }
            Ok(Some(Err(e))) => return Err(Response::error(400, "bad_request", format!("cannot read the body: {e}"))),
        }
    }
}

/// Turns an answer into hyper's, marking the connection idle once hyper has taken it.
fn reply(r: Response, close: bool, conn: &ConnInfo) -> hyper::Response<Answer> {
    let mut out = hyper::Response::new(Answer {
        data: Some(Bytes::from(r.body)),
        _answered: Answered { slots: conn.slots.clone(), id: conn.id },
    });
    *out.status_mut() = hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = out.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if r.content_type.starts_with("text/html") {
        // The status page: its own scripts only, never framed.
        h.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        );
        h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

/// Marks the connection's answer handed over when dropped.
struct Answered {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.slots.answered(self.id);
    }
}

/// An answer's body: one buffer.
pub(crate) struct Answer {
    data: Option<Bytes>,
    _answered: Answered,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
