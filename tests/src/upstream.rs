//! Upstream servers for tests: real HTTP/1.1 servers on 127.0.0.1 port 0, one thread per
//! connection, that record what they receive and answer as the test says.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the upstream saw it.
#[derive(Debug, Clone, Default)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The body when it is at most 1 MiB (its length and checksum are always kept).
    pub body: Vec<u8>,
    pub body_len: u64,
    pub body_sum: u64,
    /// Which accepted connection carried it (1-based).
    pub conn: usize,
    /// Whether it came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// How the upstream answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status, extra headers and a body sent with Content-Length.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Status and a body sent as these chunks.
    Chunked(u16, Vec<Vec<u8>>),
    /// A generated body of this many bytes (checksum: see [`pattern_sum`]).
    Generated(u64),
    /// These bytes, as they are, then keep the connection.
    Raw(Vec<u8>),
    /// These bytes, then close.
    RawThenClose(Vec<u8>),
    /// Wait, then answer.
    Delay(Duration, Box<Reply>),
    /// Answer, then after a pause write these bytes too (an origin that sends more than the
    /// response it framed), and keep the connection.
    ThenRaw(Box<Reply>, Duration, Vec<u8>),
    /// Never answer (until the connection closes).
    Hang,
    /// Close without answering.
    Close,
}

type Handler = dyn Fn(&SeenRequest) -> Reply + Send + Sync;

/// A running upstream server.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    /// Every connection open, by number (a handle to cut it with [`Upstream::kill`]; removed
    /// when its server thread ends, so the handle never keeps a closed connection open).
    open: Arc<Mutex<Vec<(usize, TcpStream)>>>,
}

/// The byte at offset `i` of a generated body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Running checksum over bytes (order-sensitive).
pub fn checksum(sum: u64, offset: u64, data: &[u8]) -> u64 {
    let mut s = sum;
    for (k, b) in data.iter().enumerate() {
        s = s.wrapping_add(u64::from(*b).wrapping_mul(offset + k as u64 + 1));
    }
    s
}

/// The checksum of a generated body of `len` bytes.
pub fn pattern_sum(len: u64) -> u64 {
    let mut s = 0u64;
    for i in 0..len {
        s = s.wrapping_add(u64::from(pattern_byte(i)).wrapping_mul(i + 1));
    }
    s
}

impl Upstream {
    /// Answers every request with 200 and the body `"{name} {method} {target}"`.
    pub fn echo(name: &str) -> Upstream {
        let n = name.to_string();
        Self::start(name, move |r| Reply::Full(200, vec![], format!("{n} {} {}", r.method, r.target).into_bytes()))
    }

    pub fn start(name: &str, handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_with_keepalive(name, Duration::from_secs(30), handler)
    }

    /// Like [`Upstream::start`], closing a connection that stays idle for `keepalive` between
    /// requests (as origin servers do with their own keep-alive timeouts).
    pub fn start_with_keepalive(
        name: &str,
        keepalive: Duration,
        handler: impl Fn(&SeenRequest) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        {
            let (accepted, seen, stop, open) = (accepted.clone(), seen.clone(), stop.clone(), open.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    if let Ok(handle) = stream.try_clone() {
                        open.lock().unwrap().push((conn, handle));
                    }
                    let (seen, handler, stop, open) = (seen.clone(), handler.clone(), stop.clone(), open.clone());
                    std::thread::spawn(move || {
                        serve_conn(stream, conn, &seen, &*handler, &stop, keepalive);
                        open.lock().unwrap().retain(|(c, _)| *c != conn);
                    });
                }
            });
        }
        Upstream { addr, name: name.to_string(), accepted, seen, stop, open }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Upstream {
    /// Ends the server as a crash would: new connections are refused and every open one is
    /// cut, pooled ones included.
    pub fn kill(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for (_, s) in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_conn(
    mut s: TcpStream,
    conn: usize,
    seen: &Mutex<Vec<SeenRequest>>,
    handler: &Handler,
    stop: &AtomicBool,
    keepalive: Duration,
) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(keepalive));
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let Some(req) = read_request(&mut s, &mut buf, conn) else { return };
        seen.lock().unwrap().push(req.clone());
        if !answer(&mut s, handler(&req), stop) {
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
        if req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            return;
        }
    }
}

fn answer(s: &mut TcpStream, reply: Reply, stop: &AtomicBool) -> bool {
    match reply {
        Reply::Full(status, headers, body) => {
            let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
            for (n, v) in headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut out = head.into_bytes();
            out.extend_from_slice(&body);
            s.write_all(&out).is_ok()
        }
        Reply::Chunked(status, chunks) => {
            let mut out = format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
            for c in chunks {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(&c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            s.write_all(&out).is_ok()
        }
        Reply::Generated(len) => {
            if s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").as_bytes()).is_err() {
                return false;
            }
            let block: Vec<u8> = (0..251u64 * 1024).map(pattern_byte).collect();
            let mut sent = 0u64;
            while sent < len {
                let n = (len - sent).min(block.len() as u64) as usize;
                // Offsets are multiples of 251, so the block lines up with the pattern.
                if s.write_all(&block[..n]).is_err() {
                    return false;
                }
                sent += n as u64;
            }
            true
        }
        Reply::Raw(bytes) => s.write_all(&bytes).is_ok(),
        Reply::RawThenClose(bytes) => {
            let _ = s.write_all(&bytes);
            false
        }
        Reply::Delay(d, r) => {
            std::thread::sleep(d);
            answer(s, *r, stop)
        }
        Reply::ThenRaw(r, d, extra) => {
            if !answer(s, *r, stop) {
                return false;
            }
            std::thread::sleep(d);
            s.write_all(&extra).is_ok()
        }
        Reply::Hang => {
            let mut b = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            for _ in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match s.read(&mut b) {
                    Ok(0) => break,
                    _ => continue,
                }
            }
            false
        }
        Reply::Close => false,
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 64 * 1024];
    match s.read(&mut tmp) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<SeenRequest> {
    let (mut req, head_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let req = SeenRequest {
                    method: r.method.unwrap_or("").to_string(),
                    target: r.path.unwrap_or("").to_string(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                    conn,
                    ..Default::default()
                };
                break (req, n);
            }
            Ok(httparse::Status::Partial) => {
                if !fill(s, buf) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    };
    buf.drain(..head_len);
    // As servers do: a client that waits for permission to send its body gets it.
    if req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) && buf.is_empty() {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
    }
    let take = |req: &mut SeenRequest, data: &[u8]| {
        req.body_sum = checksum(req.body_sum, req.body_len, data);
        req.body_len += data.len() as u64;
        if req.body.len() + data.len() <= 1 << 20 {
            req.body.extend_from_slice(data);
        }
    };
    if let Some(cl) = req.header("content-length").and_then(|v| v.parse::<u64>().ok()) {
        let mut left = cl;
        while left > 0 {
            if buf.is_empty() && !fill(s, buf) {
                return None;
            }
            let n = (buf.len() as u64).min(left) as usize;
            let data: Vec<u8> = buf.drain(..n).collect();
            take(&mut req, &data);
            left -= n as u64;
        }
    } else if req.header("transfer-encoding").is_some() {
        req.chunked = true;
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if !fill(s, buf) {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
            buf.drain(..line_end + 2);
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).ok()?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        if !fill(s, buf) {
                            return None;
                        }
                    };
                    buf.drain(..end + 2);
                    if end == 0 {
                        return Some(req);
                    }
                }
            }
            let mut left = size + 2;
            while left > 0 {
                if buf.is_empty() && !fill(s, buf) {
                    return None;
                }
                let n = (buf.len() as u64).min(left) as usize;
                let data: Vec<u8> = buf.drain(..n).collect();
                let body_part = &data[..n.min((left.saturating_sub(2)) as usize)];
                take(&mut req, body_part);
                left -= n as u64;
            }
        }
    }
    Some(req)
}

/// An address where nothing listens and nothing else can start listening while the returned
/// socket lives: bound, never listening, so connections to it are refused.
pub fn refused_addr() -> (SocketAddr, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr structs are
    // zero-initialised and sized as the calls expect.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len), 0, "bind");
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut got_len = len;
        assert_eq!(libc::getsockname(fd, (&mut got as *mut libc::sockaddr_in).cast(), &mut got_len), 0);
        (SocketAddr::from(([127, 0, 0, 1], u16::from_be(got.sin_port))), owned)
    }
}
