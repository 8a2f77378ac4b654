//! One blocking HTTP/1.1 exchange with a service of the platform (a JWKS endpoint, a token
//! introspection endpoint): plain or TLS (verified against the system's roots), one request per
//! connection, bounded in time and size. Used only on the identity threads, never on a worker.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::collector::{Conn, TlsClient, TlsSpec};

/// What came back.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A parsed `http://` or `https://` URL.
struct Url<'u> {
    tls: bool,
    host: &'u str,
    port: u16,
    path: &'u str,
}

fn parse(url: &str) -> Result<Url<'_>, String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (false, r),
        (_, Some(r)) => (true, r),
        _ => return Err(format!("{url}: not an http:// or https:// URL")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = crate::addr::split_host(authority);
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok(Url { tls, host, port: port.unwrap_or(if tls { 443 } else { 80 }), path })
}

/// Sends `method` to `url` with `headers` and `body`; the whole exchange within `timeout`, the
/// response body at most `max_body` bytes.
pub fn request(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, String> {
    let u = parse(url)?;
    let deadline = Instant::now() + timeout;
    let addr = (u.host.trim_start_matches('[').trim_end_matches(']'), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", u.host))?
        .next()
        .ok_or_else(|| format!("{}: no address", u.host))?;
    let sock = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    sock.set_read_timeout(Some(left())).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(left())).map_err(|e| e.to_string())?;
    let _ = sock.set_nodelay(true);
    let tls = if u.tls {
        // One client per host and thread: the system's roots are read once, not per call.
        thread_local! {
            static CLIENTS: std::cell::RefCell<std::collections::HashMap<String, TlsClient>> = Default::default();
        }
        let made = CLIENTS.with(|c| c.borrow().get(u.host).cloned());
        Some(match made {
            Some(t) => t,
            None => {
                let mut errors = ringway_policy::ConfigErrors::default();
                let t = TlsClient::compile(&TlsSpec::default(), u.host, "tls", &mut errors).ok_or("no TLS roots")?;
                CLIENTS.with(|c| c.borrow_mut().insert(u.host.to_string(), t.clone()));
                t
            }
        })
    } else {
        None
    };
    let mut conn = Conn::new(sock, tls.as_ref()).map_err(|e| e.to_string())?;
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", u.path, u.host);
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    conn.write_all(&out).and_then(|()| conn.flush()).map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        // A whole response ends the exchange, whether or not the server closes.
        if let Some(done) = complete(&got)? {
            return if done.body.len() > max_body { Err("response too large".into()) } else { Ok(done) };
        }
        if Instant::now() >= deadline {
            return Err("timed out".into());
        }
        let _ = conn.socket().set_read_timeout(Some(left()));
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > max_body + 64 * 1024 {
                    return Err("response too large".into());
                }
            }
            // A TLS peer that closes without close_notify: what came is what there is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    // Closed: a response delimited by the close, or cut short.
    let (status, head_len, length, chunked) = response_head(&got)?.ok_or("malformed response head")?;
    if chunked || length.is_some_and(|n| got.len() - head_len < n) {
        return Err("response body cut short".into());
    }
    let body = got[head_len..].to_vec();
    if body.len() > max_body {
        return Err("response too large".into());
    }
    Ok(Fetched { status, body })
}

/// What a response head says: its status, its length, `Content-Length`, and whether the body
/// is chunked.
type Head = (u16, usize, Option<usize>, bool);

/// The response head, once it is whole.
fn response_head(got: &[u8]) -> Result<Option<Head>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut fields);
    let head_len = match resp.parse(got) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head".into()),
    };
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.to_ascii_lowercase().ends_with(b"chunked")
    });
    let length = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    Ok(Some((resp.code.unwrap_or(0), head_len, length, chunked)))
}

/// The response, when what came holds all of it (by its length, or its last chunk).
fn complete(got: &[u8]) -> Result<Option<Fetched>, String> {
    let Some((status, head_len, length, chunked)) = response_head(got)? else { return Ok(None) };
    let rest = &got[head_len..];
    if chunked {
        return Ok(dechunk(rest).ok().map(|body| Fetched { status, body }));
    }
    match length {
        Some(n) if rest.len() >= n => Ok(Some(Fetched { status, body: rest[..n].to_vec() })),
        _ => Ok(None),
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or("malformed chunk")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "malformed chunk")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "malformed chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        // Compared without adding: a size near the top of the range cannot wrap.
        if rest.len() < 2 || rest.len() - 2 < size {
            return Err("response body cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_whole_cut_short_and_hostile() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"3\r\nab").is_err(), "cut short");
        assert!(dechunk(b"ffffffffffffffff\r\nab\r\n").is_err(), "a size that would wrap");
        assert!(dechunk(b"zz\r\n").is_err());
        // A length the body has not reached is not complete; one it has is.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(complete(&[&head[..], b"abc"].concat()).unwrap().is_none());
        assert_eq!(complete(&[&head[..], b"abcde"].concat()).unwrap().unwrap().body, b"abcde");
    }
}
