//! A small blocking HTTP/1.1 server for the admin API: one thread per connection parses
//! requests (Content-Length bodies only, heads and bodies capped) and hands each to the admin
//! thread, which owns all state, over a channel.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

/// One admin request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// One admin response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
        body.push(b'\n');
        Response { status, content_type: "application/json", body }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Self::json(status, &serde_json::json!({"error": code, "message": message.into(), "status": status}))
    }
}

/// A request waiting for the admin thread's answer.
pub type Job = (Request, Sender<Response>);

/// Limits of the admin server.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    pub max_body: usize,
    pub max_connections: usize,
}

const MAX_HEAD: usize = 64 * 1024;

/// Accepts connections on `listener` forever, forwarding parsed requests to `jobs`.
pub fn serve(listener: TcpListener, jobs: Sender<Job>, limits: AdminLimits) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            let _ = write_response(
                &mut &stream,
                &Response::error(503, "too_many_connections", "too many admin connections"),
                true,
            );
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (jobs, open) = (jobs.clone(), open.clone());
        let _ = std::thread::Builder::new().name("ringway-admin-conn".into()).spawn(move || {
            connection(stream, &jobs, limits);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn connection(stream: TcpStream, jobs: &Sender<Job>, limits: AdminLimits) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let peer = stream.peer_addr().ok();
    let mut s = &stream;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let (mut req, close) = match read_request(&mut s, &mut buf, limits.max_body) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(resp) => {
                let _ = write_response(&mut s, &resp, true);
                return;
            }
        };
        req.peer = peer;
        let (tx, rx) = bounded(1);
        if jobs.send((req, tx)).is_err() {
            let _ =
                write_response(&mut s, &Response::error(503, "shutting_down", "the gateway is shutting down"), true);
            return;
        }
        let resp = rx.recv().unwrap_or_else(|_| Response::error(503, "shutting_down", "the gateway is shutting down"));
        if write_response(&mut s, &resp, close).is_err() || close {
            return;
        }
    }
}

fn fill(s: &mut &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut tmp = [0u8; 16 * 1024];
    let n = s.read(&mut tmp)?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

/// Reads one request; `Ok(None)` when the connection ends cleanly between requests.
fn read_request(s: &mut &TcpStream, buf: &mut Vec<u8>, max_body: usize) -> Result<Option<(Request, bool)>, Response> {
    let bad = |m: &str| Response::error(400, "bad_request", m);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut req = Request {
                    method: r.method.unwrap_or("").to_string(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                    ..Default::default()
                };
                let target = r.path.unwrap_or("/");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                req.path = path.to_string();
                req.query = query.to_string();
                let http10 = r.version == Some(0);
                if req.header("transfer-encoding").is_some() {
                    return Err(Response::error(411, "length_required", "send the body with Content-Length"));
                }
                let len: usize = match req.header("content-length") {
                    Some(v) => v.trim().parse().map_err(|_| bad("invalid Content-Length"))?,
                    None => 0,
                };
                if len > max_body {
                    return Err(Response::error(
                        413,
                        "body_too_large",
                        format!("admin request bodies are limited to {max_body} bytes"),
                    ));
                }
                buf.drain(..head_len);
                while buf.len() < len {
                    match fill(s, buf) {
                        Ok(0) | Err(_) => return Ok(None),
                        Ok(_) => {}
                    }
                }
                req.body = buf.drain(..len).collect();
                let close = http10 || req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                return Ok(Some((req, close)));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(Response::error(431, "head_too_large", "request head too large"));
                }
                match fill(s, buf) {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                }
            }
            Err(e) => return Err(bad(&format!("malformed request: {e}"))),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(s: &mut &TcpStream, r: &Response, close: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&r.body);
    s.write_all(&out)
}
