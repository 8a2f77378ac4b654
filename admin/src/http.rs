//! A small blocking HTTP/1.1 server for the admin API: one thread per connection parses
//! requests with the data plane's strict head checks (Content-Length bodies only, heads and
//! bodies capped), refuses foreign `Host` values, requests from web pages other than its own
//! origin, and any request but GET and HEAD that does not declare JSON or YAML, and hands each
//! request to the admin thread, which owns all state, over a channel.
//!
//! Browsers. A page elsewhere can make a browser send a request here without asking first
//! (without a CORS preflight) only with no `Content-Type` or with `text/plain`, form or
//! multipart types; requiring a JSON or YAML type on every write, body or not, forces the
//! preflight, which this server never grants. `Origin` and `Sec-Fetch-Site` refuse the rest.
//!
//! Slots. A connection holds a slot only while it is busy with a request: from the request's
//! first byte until its answer is written. Idle connections (before a first request or
//! between requests) hold none; past `max_open` open connections the longest-idle one is
//! closed to make room. A request must arrive whole, head and body, within `request_timeout`
//! of its first byte (408 past it). Busy connections are capped in all (`max_busy`) and per
//! client address (`max_busy_per_addr`). A request that finds no free slot takes one from the
//! busy connection that has been reading its request the longest (from its own address when
//! that address is at its cap): slow or stalled clients cannot keep out a request that arrives
//! whole. Only when every busy connection concerned is waiting for its answer is a request
//! refused (503).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use ringway_proxy::h1::head::{
    check_partial_head, check_raw_head, classify, host_without_port, parse_content_length, ConnectionOptions,
    HeadError, Known,
};

use crate::parse::Syntax;

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
#[derive(Debug, Clone)]
pub struct AdminLimits {
    /// Largest request body in bytes (413 past it).
    pub max_body: usize,
    /// Connections busy with a request, in all.
    pub max_busy: usize,
    /// Connections busy with a request from one client address.
    pub max_busy_per_addr: usize,
    /// Open connections, idle ones included; past it the longest-idle one is closed.
    pub max_open: usize,
    /// Time from a request's first byte until its head and body must have arrived.
    pub request_timeout: Duration,
    /// How long a connection may wait for the first byte of its next request.
    pub idle_timeout: Duration,
    /// `Host` and `Origin` values the server answers.
    pub hosts: AllowedHosts,
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Host` values the admin API answers: loopback names and addresses, the address it
/// listens on, and the names the operator adds; any port. Everything else is refused, so that
/// DNS rebinding cannot drive the API through a browser. An `Origin` must be the API's own:
/// `http`, one of those hosts and the port it listens on.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    listen: Option<IpAddr>,
    port: u16,
    names: Vec<String>,
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

impl AllowedHosts {
    /// Answers loopback, `listen`'s address (unless unspecified) and `names` (host names or
    /// addresses; a port given with one is ignored).
    pub fn new(listen: SocketAddr, names: &[String]) -> Result<AllowedHosts, String> {
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let host = host_without_port(n.trim().as_bytes())
                .map_err(|_| format!("--admin-host {n:?} is not a host name or address"))?;
            out.push(host.to_ascii_lowercase());
        }
        let ip = listen.ip();
        Ok(AllowedHosts { listen: (!ip.is_unspecified()).then_some(ip), port: listen.port(), names: out })
    }

    /// Whether a `Host` value (`host[:port]`) names this server.
    pub fn allows(&self, value: &str) -> bool {
        let Ok(host) = host_without_port(value.trim().as_bytes()) else { return false };
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        if let Some(ip) = ip_literal(host) {
            if ip.is_loopback() || Some(ip) == self.listen {
                return true;
            }
        }
        self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    /// Whether an `Origin` value (`scheme://host[:port]`) is this server's own origin: `http`,
    /// an allowed host and the listen port (80 when the value gives none). Pages on any other
    /// port of the same host, the data plane's included, are other origins.
    pub fn allows_origin(&self, value: &str) -> bool {
        const HTTP: &str = "http://";
        let v = value.trim();
        let Some(rest) = v.get(..HTTP.len()).filter(|s| s.eq_ignore_ascii_case(HTTP)).map(|_| &v[HTTP.len()..]) else {
            return false;
        };
        let Ok(host) = host_without_port(rest.as_bytes()) else { return false };
        let port = match &rest[host.len()..] {
            "" => Some(80),
            p => p.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()),
        };
        port == Some(self.port) && self.allows(host)
    }
}

/// The syntax a `Content-Type` value announces: JSON (`application/json`, `*+json`) or YAML
/// (`application/yaml`, `application/x-yaml`, `text/yaml`, `text/x-yaml`, `*+yaml`).
pub fn syntax_of(content_type: &str) -> Option<Syntax> {
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Some(Syntax::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Some(Syntax::Yaml),
        m if m.starts_with("application/") && m.ends_with("+json") => Some(Syntax::Json),
        m if m.starts_with("application/") && m.ends_with("+yaml") => Some(Syntax::Yaml),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request's first byte: holds no slot.
    Idle,
    /// Reading a request: holds a slot, and gives it up to a newer request when slots run out.
    Reading,
    /// Waiting for the admin thread or writing the answer: holds a slot.
    Answering,
}

struct Conn {
    ip: IpAddr,
    phase: Phase,
    since: Instant,
    /// A handle to close the connection from another thread.
    stream: TcpStream,
}

/// Open connections and the slots they hold.
struct Slots {
    limits: Arc<AdminLimits>,
    conns: Mutex<(u64, HashMap<u64, Conn>)>,
}

enum Refusal {
    /// This connection's slot (or place) was taken by another.
    Closed,
    /// No slot: a 503 with this message.
    Busy(String),
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<u64, Conn>)> {
        self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the oldest connection in `phase` that `pick` accepts; false when there is none.
    fn evict(conns: &mut HashMap<u64, Conn>, phase: Phase, pick: impl Fn(&Conn) -> bool) -> bool {
        let victim = conns.iter().filter(|(_, c)| c.phase == phase && pick(c)).min_by_key(|(_, c)| c.since);
        let Some(id) = victim.map(|(id, _)| *id) else { return false };
        if let Some(c) = conns.remove(&id) {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        true
    }

    /// Registers a new connection (idle), closing the longest-idle one when too many are open.
    fn open(&self, stream: &TcpStream, ip: IpAddr) -> Option<u64> {
        let handle = stream.try_clone().ok()?;
        let mut g = self.lock();
        let (next, conns) = &mut *g;
        if conns.len() >= self.limits.max_open && !Self::evict(conns, Phase::Idle, |_| true) {
            return None;
        }
        let id = *next;
        *next += 1;
        conns.insert(id, Conn { ip, phase: Phase::Idle, since: Instant::now(), stream: handle });
        Some(id)
    }

    /// Takes a slot for a request that has begun on connection `id`.
    fn begin(&self, id: u64) -> Result<(), Refusal> {
        let mut g = self.lock();
        let conns = &mut g.1;
        let ip = conns.get(&id).ok_or(Refusal::Closed)?.ip;
        let busy = |c: &Conn| c.phase != Phase::Idle;
        let per_addr = self.limits.max_busy_per_addr;
        if conns.values().filter(|c| c.ip == ip && busy(c)).count() >= per_addr {
            if !Self::evict(conns, Phase::Reading, |c| c.ip == ip) {
                return Err(Refusal::Busy(format!("{per_addr} admin requests from {ip} are already being answered")));
            }
        } else if conns.values().filter(|c| busy(c)).count() >= self.limits.max_busy
            && !Self::evict(conns, Phase::Reading, |_| true)
        {
            return Err(Refusal::Busy(format!("{} admin requests are already being answered", self.limits.max_busy)));
        }
        let c = conns.get_mut(&id).ok_or(Refusal::Closed)?;
        c.phase = Phase::Reading;
        c.since = Instant::now();
        Ok(())
    }

    /// Moves connection `id` to `phase`; false when it was closed meanwhile.
    fn set(&self, id: u64, phase: Phase) -> bool {
        let mut g = self.lock();
        let Some(c) = g.1.get_mut(&id) else { return false };
        c.phase = phase;
        c.since = Instant::now();
        true
    }

    fn close(&self, id: u64) {
        self.lock().1.remove(&id);
    }
}

/// Accepts connections on `listener` forever, forwarding parsed requests to `jobs`.
pub fn serve(listener: TcpListener, jobs: Sender<Job>, limits: AdminLimits) {
    let slots = Arc::new(Slots { limits: Arc::new(limits), conns: Mutex::new((0, HashMap::new())) });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Some(ip) = stream.peer_addr().ok().map(|a| a.ip()) else { continue };
        let Some(id) = slots.open(&stream, ip) else {
            let _ = write_response(
                &mut &stream,
                &Response::error(503, "too_many_connections", "too many admin connections"),
                true,
            );
            continue;
        };
        let jobs = jobs.clone();
        // Should the thread not start, the slot goes back as the closure is dropped.
        let _ = spawn_connection(&slots, id, move |slots| connection(stream, id, &jobs, slots));
    }
}

/// Gives connection `id`'s place up when dropped: when its thread ends, panicking or not, or
/// when the thread never starts.
struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.close(self.id);
    }
}

/// Runs `work` for connection `id` on a thread of its own, then gives the connection's place up.
fn spawn_connection(
    slots: &Arc<Slots>,
    id: u64,
    work: impl FnOnce(&Slots) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let guard = SlotGuard { slots: slots.clone(), id };
    std::thread::Builder::new().name("ringway-admin-conn".into()).stack_size(256 * 1024).spawn(move || {
        work(&guard.slots);
        // Also dropped (and the place given up) when `work` panics.
        drop(guard);
    })
}

fn connection(stream: TcpStream, id: u64, jobs: &Sender<Job>, slots: &Slots) {
    let limits = &*slots.limits;
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let peer = stream.peer_addr().ok();
    let mut s = &stream;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        if buf.is_empty() && fill(&mut s, &mut buf, limits.idle_timeout).is_err() {
            return;
        }
        match slots.begin(id) {
            Ok(()) => {}
            Err(Refusal::Closed) => return,
            Err(Refusal::Busy(m)) => {
                let _ = write_response(&mut s, &Response::error(503, "admin_busy", m), true);
                return;
            }
        }
        let deadline = Instant::now() + limits.request_timeout;
        let (mut req, close) = match read_request(&mut s, &mut buf, limits, deadline) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(resp) => {
                if write_response(&mut s, &resp, true).is_ok() {
                    close_gently(&stream);
                }
                return;
            }
        };
        if !slots.set(id, Phase::Answering) {
            return;
        }
        req.peer = peer;
        let (tx, rx) = bounded(1);
        if jobs.send((req, tx)).is_err() {
            let _ =
                write_response(&mut s, &Response::error(503, "shutting_down", "the gateway is shutting down"), true);
            return;
        }
        let resp = rx.recv().unwrap_or_else(|_| Response::error(503, "shutting_down", "the gateway is shutting down"));
        if write_response(&mut s, &resp, close).is_err() || close || !slots.set(id, Phase::Idle) {
            return;
        }
    }
}

/// How long [`close_gently`] reads what a refused client still sends, at most.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Closes after a refusal without resetting the connection: unread request bytes at close would
/// make the kernel send a reset, which can destroy the answer before the client reads it.
/// Reads and discards up to 256 KiB, for at most [`DRAIN_LIMIT`] in all (200 ms without a byte
/// ends it sooner), so a client that trickles cannot hold the thread.
fn close_gently(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut tmp = [0u8; 16 * 1024];
    let mut left: usize = 256 * 1024;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match (&*stream).read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

#[derive(Debug, PartialEq)]
enum ReadEnd {
    Closed,
    TimedOut,
}

/// Reads at least one byte within `wait`.
fn fill(s: &mut &TcpStream, buf: &mut Vec<u8>, wait: Duration) -> Result<(), ReadEnd> {
    if wait.is_zero() {
        return Err(ReadEnd::TimedOut);
    }
    let _ = s.set_read_timeout(Some(wait));
    let mut tmp = [0u8; 16 * 1024];
    match s.read(&mut tmp) {
        Ok(0) => Err(ReadEnd::Closed),
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(())
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Err(ReadEnd::TimedOut)
        }
        Err(_) => Err(ReadEnd::Closed),
    }
}

/// Reads one request whose first byte is in `buf`; `Ok(None)` when the client goes away.
fn read_request(
    s: &mut &TcpStream,
    buf: &mut Vec<u8>,
    limits: &AdminLimits,
    deadline: Instant,
) -> Result<Option<(Request, bool)>, Response> {
    let late = || {
        Response::error(
            408,
            "request_timeout",
            format!("the request head and body must arrive within {:?} of its first byte", limits.request_timeout),
        )
    };
    let more = |s: &mut &TcpStream, buf: &mut Vec<u8>| match fill(
        s,
        buf,
        deadline.saturating_duration_since(Instant::now()),
    ) {
        Ok(()) => Ok(true),
        Err(ReadEnd::Closed) => Ok(false),
        Err(ReadEnd::TimedOut) => Err(late()),
    };
    // Bytes of `buf` already checked; a head is parsed only once its end may have arrived, so
    // a head sent a byte at a time costs time linear in its size.
    let mut checked: usize = 0;
    let (req, head_len, close, expect_continue) = loop {
        let new = &buf[checked.saturating_sub(2)..];
        let ended = new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
        if !ended {
            // A CR just before the new bytes may pair with an LF among them.
            let from = if checked > 0 && buf[checked - 1] == b'\r' { checked - 1 } else { checked };
            check_partial_head(&buf[from..]).map_err(head_error)?;
            checked = buf.len();
            if buf.len() > MAX_HEAD {
                return Err(head_error(HeadError::TooLarge));
            }
            if !more(s, buf)? {
                return Ok(None);
            }
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                if head_len > MAX_HEAD {
                    return Err(head_error(HeadError::TooLarge));
                }
                check_raw_head(&buf[..head_len]).map_err(head_error)?;
                let target = r.path.unwrap_or("");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let req = Request {
                    method: r.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query: query.to_string(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                    ..Default::default()
                };
                let (close, expect_continue) = check_head(&req, r.version == Some(0), limits)?;
                break (req, head_len, close, expect_continue);
            }
            Ok(httparse::Status::Partial) => {
                check_partial_head(buf).map_err(head_error)?;
                checked = buf.len();
                if buf.len() > MAX_HEAD {
                    return Err(head_error(HeadError::TooLarge));
                }
                if !more(s, buf)? {
                    return Ok(None);
                }
            }
            Err(httparse::Error::TooManyHeaders) => return Err(head_error(HeadError::TooManyHeaders)),
            Err(e) => return Err(Response::error(400, "bad_request", format!("malformed request: {e}"))),
        }
    };
    let mut req = req;
    let len = req.header("content-length").and_then(|v| parse_content_length(v.as_bytes())).unwrap_or(0) as usize;
    buf.drain(..head_len);
    if expect_continue && buf.len() < len {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|_| late())?;
    }
    while buf.len() < len {
        if !more(s, buf)? {
            return Ok(None);
        }
    }
    req.body = buf.drain(..len).collect();
    Ok(Some((req, close)))
}

fn head_error(e: HeadError) -> Response {
    Response::error(e.status(), e.code(), e.to_string())
}

/// The checks on a complete head besides the raw bytes: framing (as strict as the data
/// plane's), `Host`, `Origin`, `Sec-Fetch-Site`, the content type (of every request but GET
/// and HEAD, and of any body) and the body's size. Answers whether the connection closes after
/// this request and whether the client waits for `100 Continue`.
fn check_head(req: &Request, http10: bool, limits: &AdminLimits) -> Result<(bool, bool), Response> {
    let bad = |m: &str| Response::error(400, "bad_request", m);
    let (mut hosts, mut lengths, mut te, mut origins) = (0, 0, false, 0);
    let mut length = 0u64;
    let mut expect_continue = false;
    let mut opts = ConnectionOptions::default();
    for (name, value) in &req.headers {
        if name.contains('_') {
            return Err(bad("'_' in a header name"));
        }
        match classify(name) {
            Known::Host => hosts += 1,
            Known::ContentLength => {
                lengths += 1;
                length = parse_content_length(value.as_bytes()).ok_or_else(|| bad("invalid Content-Length"))?;
            }
            Known::TransferEncoding => te = true,
            Known::Connection => opts.add(value.as_bytes()).map_err(head_error)?,
            Known::Expect if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            Known::Expect => return Err(head_error(HeadError::Expectation)),
            _ if name.eq_ignore_ascii_case("origin") => origins += 1,
            _ => {}
        }
    }
    if lengths > 1 {
        return Err(bad("more than one Content-Length"));
    }
    if te {
        if lengths > 0 {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        return Err(Response::error(411, "length_required", "send the body with Content-Length"));
    }
    if hosts != 1 {
        return Err(bad("a request needs exactly one Host header"));
    }
    if !req.path.starts_with('/') || req.path.contains('#') {
        return Err(bad("the request target must be a path starting with '/'"));
    }
    let host = req.header("host").unwrap_or("");
    if !limits.hosts.allows(host) {
        return Err(Response::error(
            403,
            "forbidden_host",
            format!("Host {host:?} is not this admin API: use localhost, a loopback address, the address it listens on or a name given with --admin-host"),
        ));
    }
    if origins > 1 {
        return Err(bad("more than one Origin header"));
    }
    if let Some(origin) = req.header("origin") {
        if !limits.hosts.allows_origin(origin) {
            return Err(Response::error(
                403,
                "forbidden_origin",
                format!(
                    "requests from web pages at {origin:?} are not accepted: only the admin API's own origin is (http://HOST:{})",
                    limits.hosts.port
                ),
            ));
        }
    }
    if let Some(site) = req.header("sec-fetch-site") {
        let site = site.trim();
        if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
            return Err(Response::error(
                403,
                "forbidden_origin",
                format!("requests with Sec-Fetch-Site: {site:?} are not accepted: only same-origin ones and those a user makes directly (none)"),
            ));
        }
    }
    let content_type = req.header("content-type");
    let write = !matches!(req.method.as_str(), "GET" | "HEAD");
    if (write || length > 0 || content_type.is_some()) && content_type.and_then(syntax_of).is_none() {
        let got = content_type.map_or_else(|| "no Content-Type".to_string(), |c| format!("Content-Type {c:?}"));
        let what = if write {
            format!("every {} request, with a body or without", req.method)
        } else {
            "a request body".into()
        };
        return Err(Response::error(
            415,
            "unsupported_media_type",
            format!("send Content-Type: application/json (or application/yaml for a YAML body) with {what}, not {got}"),
        ));
    }
    if length > limits.max_body as u64 {
        return Err(Response::error(
            413,
            "body_too_large",
            format!("admin request bodies are limited to {} bytes (--admin-max-body)", limits.max_body),
        ));
    }
    let close = if http10 { opts.close || !opts.keep_alive } else { opts.close };
    Ok((close, expect_continue && length > 0))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(s: &mut &TcpStream, r: &Response, close: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts() {
        let listen: SocketAddr = "10.1.2.3:9180".parse().unwrap();
        let h = AllowedHosts::new(listen, &["Admin.Example:8443".to_string(), "[fd00::1]".to_string()]).unwrap();
        for ok in ["localhost", "LocalHost:1", "127.0.0.1", "127.9.9.9:80", "[::1]", "[::1]:9180", "10.1.2.3:1"] {
            assert!(h.allows(ok), "{ok}");
        }
        for ok in ["admin.example", "ADMIN.example:1", "[fd00::1]:5"] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in ["", "evil.example", "localhost.evil.example", "10.1.2.4", "[::2]", "admin.example.", "a b", "x:y"] {
            assert!(!h.allows(bad), "{bad}");
        }
        // Origins: this server only, scheme, host and port.
        for ok in ["http://localhost:9180", "HTTP://LocalHost:9180", "http://127.0.0.1:9180", "http://[::1]:9180"] {
            assert!(h.allows_origin(ok), "{ok}");
        }
        for ok in ["http://10.1.2.3:9180", "http://admin.example:9180", "http://[fd00::1]:9180"] {
            assert!(h.allows_origin(ok), "{ok}");
        }
        for bad in [
            "null",
            "http://evil.example",
            "localhost",
            "ftp://localhost",
            "http://localhost/x",
            "http://",
            "http://localhost:9180/",
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://localhost",
            "https://localhost:9180",
            "https://admin.example",
            "http://admin.example:8443",
            "http://evil.example:9180",
            "http://localhost:9180:9180",
        ] {
            assert!(!h.allows_origin(bad), "{bad}");
        }
        // On port 80 an origin may leave the port out.
        let on_80 = AllowedHosts::new("127.0.0.1:80".parse().unwrap(), &[]).unwrap();
        assert!(on_80.allows_origin("http://localhost") && on_80.allows_origin("http://127.0.0.1:80"));
        assert!(!on_80.allows_origin("http://localhost:8080"));
        let any: SocketAddr = "0.0.0.0:9180".parse().unwrap();
        assert!(!AllowedHosts::new(any, &[]).unwrap().allows("0.0.0.0"), "an unspecified address names nothing");
        assert!(AllowedHosts::new(listen, &["bad name".to_string()]).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(syntax_of("application/json"), Some(Syntax::Json));
        assert_eq!(syntax_of("Application/JSON; charset=utf-8"), Some(Syntax::Json));
        assert_eq!(syntax_of("application/merge-patch+json"), Some(Syntax::Json));
        assert_eq!(syntax_of("application/yaml"), Some(Syntax::Yaml));
        assert_eq!(syntax_of("text/x-yaml"), Some(Syntax::Yaml));
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "json", "text/json+x"]
        {
            assert_eq!(syntax_of(bad), None, "{bad}");
        }
    }

    fn limits() -> AdminLimits {
        AdminLimits {
            max_body: 1 << 20,
            max_busy: 4,
            max_busy_per_addr: 2,
            max_open: 16,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            hosts: AllowedHosts::new("127.0.0.1:9180".parse().unwrap(), &[]).unwrap(),
        }
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request {
        let mut all = vec![("Host".to_string(), "127.0.0.1:9180".to_string())];
        all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Request {
            method: method.into(),
            path: "/admin/v1/revisions/1/rollback".into(),
            headers: all,
            ..Default::default()
        }
    }

    fn refusal(method: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
        check_head(&request(method, headers), false, &limits()).err().map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (r.status, v["message"].as_str().unwrap_or("").to_string())
        })
    }

    #[test]
    fn writes_need_a_json_or_yaml_content_type_even_without_a_body() {
        let json = ("Content-Type", "application/json");
        for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let (status, message) = refusal(method, &[]).expect(method);
            assert_eq!(status, 415, "{method}");
            assert!(message.contains("Content-Type: application/json"), "{message}");
            assert_eq!(refusal(method, &[("Content-Type", "text/plain")]).map(|r| r.0), Some(415), "{method}");
            assert_eq!(refusal(method, &[json]), None, "{method}");
            assert_eq!(refusal(method, &[("Content-Type", "application/yaml")]), None, "{method}");
        }
        for method in ["GET", "HEAD"] {
            assert_eq!(refusal(method, &[]), None, "{method}");
        }
    }

    #[test]
    fn only_same_origin_or_direct_fetches_are_accepted() {
        let json = ("Content-Type", "application/json");
        for site in ["same-origin", "none", "Same-Origin"] {
            assert_eq!(refusal("POST", &[json, ("Sec-Fetch-Site", site)]), None, "{site}");
        }
        for site in ["same-site", "cross-site", "", "other"] {
            assert_eq!(refusal("POST", &[json, ("Sec-Fetch-Site", site)]).map(|r| r.0), Some(403), "{site:?}");
            assert_eq!(refusal("GET", &[("Sec-Fetch-Site", site)]).map(|r| r.0), Some(403), "{site:?}");
        }
        // A page on another port of the same host (the data plane, say) is another origin.
        let (status, _) = refusal("POST", &[json, ("Origin", "http://127.0.0.1:8080")]).unwrap();
        assert_eq!(status, 403);
        assert_eq!(refusal("POST", &[json, ("Origin", "http://127.0.0.1:9180")]), None);
    }

    /// A connected pair of sockets: (client, server).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (c, l.accept().unwrap().0)
    }

    #[test]
    fn close_gently_gives_a_trickling_client_about_a_second() {
        let (mut client, server) = pair();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let trickle = std::thread::spawn(move || {
            let t = Instant::now();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) && t.elapsed() < Duration::from_secs(8) {
                if client.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t = Instant::now();
        close_gently(&server);
        let took = t.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        trickle.join().unwrap();
        assert!(took < Duration::from_millis(2500), "close_gently took {took:?}");
        assert!(took >= Duration::from_millis(500), "close_gently gave up after {took:?}");
    }

    #[test]
    fn a_connection_thread_that_panics_gives_its_slot_back() {
        let (_client, server) = pair();
        let slots = Arc::new(Slots { limits: Arc::new(limits()), conns: Mutex::new((0, HashMap::new())) });
        let id = slots.open(&server, server.peer_addr().unwrap().ip()).unwrap();
        let handle = spawn_connection(&slots, id, move |_| panic!("connection thread failure")).unwrap();
        assert!(handle.join().is_err());
        assert!(slots.lock().1.is_empty(), "the slot of a panicked connection is still taken");
    }
}
