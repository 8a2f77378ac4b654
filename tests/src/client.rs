//! A small HTTP/1.1 client over a raw TCP stream, strict enough to notice framing mistakes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response as the client read it.
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// One client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to gateway");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, buf: Vec::new() }
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("send");
    }

    /// Sends a request (adding `Host: test.local` unless given) and reads the response.
    pub fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut raw = format!("{method} {target} HTTP/1.1\r\n");
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            raw.push_str("Host: test.local\r\n");
        }
        for (n, v) in headers {
            raw.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read_response(method == "HEAD")
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 64 * 1024];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Reads one final response (interim 1xx answers are skipped).
    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.try_read_response(head_request).expect("a complete response")
    }

    /// Reads one response head only (for interim answers).
    pub fn read_head(&mut self) -> Option<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let resp = Response {
                        status: r.code.unwrap_or(0),
                        headers: r
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                            .collect(),
                        body: Vec::new(),
                    };
                    self.buf.drain(..n);
                    return Some(resp);
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill() {
                        return None;
                    }
                }
                Err(e) => panic!("malformed response head from gateway: {e}: {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    /// Reads one final response, or `None` when the connection ends first.
    pub fn try_read_response(&mut self, head_request: bool) -> Option<Response> {
        let mut resp = loop {
            let r = self.read_head()?;
            if !(100..200).contains(&r.status) {
                break r;
            }
        };
        if head_request || resp.status == 204 || resp.status == 304 {
            return Some(resp);
        }
        if resp.header("transfer-encoding").is_some() {
            assert!(resp.header("content-length").is_none(), "both framings in a response");
            loop {
                let end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !self.fill() {
                        return None;
                    }
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..end]).ok()?, 16).ok()?;
                self.buf.drain(..end + 2);
                if size == 0 {
                    // The trailer section: fields, then an empty line. Kept as headers named
                    // `trailer:NAME`.
                    loop {
                        let end = loop {
                            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                                break i;
                            }
                            if !self.fill() {
                                return None;
                            }
                        };
                        let line = String::from_utf8_lossy(&self.buf[..end]).to_string();
                        self.buf.drain(..end + 2);
                        if line.is_empty() {
                            return Some(resp);
                        }
                        let (n, v) = line.split_once(':')?;
                        resp.headers.push((format!("trailer:{}", n.trim().to_ascii_lowercase()), v.trim().to_string()));
                    }
                }
                while self.buf.len() < size + 2 {
                    if !self.fill() {
                        return None;
                    }
                }
                resp.body.extend_from_slice(&self.buf[..size]);
                assert_eq!(&self.buf[size..size + 2], b"\r\n", "chunk data must end with CRLF");
                self.buf.drain(..size + 2);
                if size == 0 {
                    return Some(resp);
                }
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.parse().expect("numeric content-length");
            while self.buf.len() < n {
                if !self.fill() {
                    return None;
                }
            }
            resp.body = self.buf.drain(..n).collect();
        } else {
            while self.fill() {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// Reads `len` body bytes (after [`Client::read_head`]) and hands them to `f` piece by piece.
    pub fn stream_body(&mut self, len: u64, mut f: impl FnMut(&[u8])) {
        let mut left = len;
        while left > 0 {
            if self.buf.is_empty() && !self.fill() {
                panic!("connection ended with {left} body bytes missing");
            }
            let n = (self.buf.len() as u64).min(left) as usize;
            f(&self.buf[..n]);
            self.buf.drain(..n);
            left -= n as u64;
        }
    }

    /// Whether the gateway closed the connection (reads end-of-stream within `wait`).
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut tmp = [0u8; 1024];
        let closed = loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => break true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        closed
    }
}
