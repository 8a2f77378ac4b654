//! The connection to a collector (log shipping, trace export): plain TCP, or TLS on rustls
//! for `https://` endpoints, with the server verified against the system's roots or a CA the
//! configuration gives, and an optional client certificate. Blocking: used only on the
//! shipper and exporter threads, never on a worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};

use ringway_policy::ConfigErrors;

use crate::shipping::Shipping;

/// `tls` beside a collector's endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificates the collector's chain must lead to (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name the collector's certificate must carry (default: the endpoint's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A PEM certificate chain and its key, for collectors that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// A checked TLS client setting.
#[derive(Clone)]
pub struct TlsClient {
    spec: TlsSpec,
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec && self.name == other.name
    }
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("name", &self.name).field("ca", &self.spec.ca.is_some()).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsClient {
    /// Checks `spec` for an endpoint whose host is `host` (problems under `path`).
    pub fn compile(spec: &TlsSpec, host: &str, path: &str, errors: &mut ConfigErrors) -> Option<TlsClient> {
        let before = errors.0.len();
        let mut roots = rustls::RootCertStore::empty();
        match &spec.ca {
            Some(pem) => {
                let certs: Result<Vec<CertificateDer<'static>>, _> =
                    CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
                let certs = certs.unwrap_or_else(|e| {
                    errors.push(format!("{path}.ca"), format!("malformed PEM: {e}"));
                    Vec::new()
                });
                if certs.is_empty() {
                    errors.push(format!("{path}.ca"), "no PEM certificate found");
                }
                for c in certs {
                    if let Err(e) = roots.add(c) {
                        errors.push(format!("{path}.ca"), format!("not a usable CA certificate: {e}"));
                    }
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    errors.push(format!("{path}.ca"), "this system has no CA certificates: give the collector's CA");
                }
            }
        }
        let name_text = spec.server_name.clone().unwrap_or_else(|| host.to_string());
        let name = ServerName::try_from(name_text.clone())
            .map_err(|_| {
                errors.push(format!("{path}.server_name"), format!("{name_text:?} is not a DNS name or IP address"))
            })
            .ok();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_root_certificates(roots);
        let config = match (&spec.client_cert, &spec.client_key) {
            (None, None) => Some(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    match CertificateDer::pem_slice_iter(cert.as_bytes()).collect() {
                        Ok(c) => c,
                        Err(e) => {
                            errors.push(format!("{path}.client_cert"), format!("malformed PEM: {e}"));
                            Vec::new()
                        }
                    };
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes());
                match (chain.is_empty(), key) {
                    (false, Ok(key)) => builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| {
                            errors.push(format!("{path}.client_key"), format!("does not fit the certificate: {e}"))
                        })
                        .ok(),
                    (true, _) => {
                        errors.push(format!("{path}.client_cert"), "no PEM certificate found");
                        None
                    }
                    (_, Err(_)) => {
                        errors.push(format!("{path}.client_key"), "no PEM private key found");
                        None
                    }
                }
            }
            _ => {
                errors.push(path.to_string(), "client_cert and client_key go together");
                None
            }
        };
        if errors.0.len() != before {
            return None;
        }
        Some(TlsClient { spec: spec.clone(), config: Arc::new(config?), name: name? })
    }
}

/// A connection to a collector.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    /// Wraps a connected socket: as it is, or in TLS (the handshake happens on first use).
    pub fn new(sock: TcpStream, tls: Option<&TlsClient>) -> std::io::Result<Conn> {
        Ok(match tls {
            None => Conn::Plain(sock),
            Some(t) => {
                let c =
                    rustls::ClientConnection::new(t.config.clone(), t.name.clone()).map_err(std::io::Error::other)?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(c, sock)))
            }
        })
    }

    /// The socket under the connection (for its timeouts).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write_vectored(bufs),
            Conn::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Why a batch did not go.
pub(crate) enum Sent {
    /// Not delivered (no connection, a 5xx, 408 or 429, no answer in time): send it again.
    Failed(std::io::Error),
    /// The collector refused it for good (another 4xx).
    Refused(u16),
}

impl From<std::io::Error> for Sent {
    fn from(e: std::io::Error) -> Self {
        Sent::Failed(e)
    }
}

/// The longest a batch takes to send and be answered.
const SEND_DEADLINE: Duration = Duration::from_secs(5);

/// POSTs one batch of `content_type`, the concatenation of `parts`, and reads the answer; a 2xx
/// is success.
pub(crate) fn send(s: &Shipping, conn: &mut Option<Conn>, parts: &[&[u8]], content_type: &str) -> Result<(), Sent> {
    let deadline = post(s, conn, parts, content_type)?;
    answer(conn, deadline)
}

/// Writes the POST of one batch (connecting first when there is no connection); gives the
/// deadline for its answer, which [`answer`] reads.
pub(crate) fn post(
    s: &Shipping,
    conn: &mut Option<Conn>,
    parts: &[&[u8]],
    content_type: &str,
) -> Result<Instant, Sent> {
    let deadline = Instant::now() + SEND_DEADLINE;
    let size: usize = parts.iter().map(|p| p.len()).sum();
    let zipped: [Vec<u8>; 1];
    let zipped_part: [&[u8]; 1];
    let body: &[&[u8]] = if s.gzip {
        let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(size / 4), flate2::Compression::fast());
        for p in parts {
            z.write_all(p)?;
        }
        zipped = [z.finish()?];
        zipped_part = [&zipped[0][..]];
        &zipped_part
    } else {
        parts
    };
    let body_len: usize = body.iter().map(|p| p.len()).sum();
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nuser-agent: ringway/{}\r\n",
        s.path,
        s.host,
        body_len,
        env!("CARGO_PKG_VERSION")
    );
    if s.gzip {
        head.push_str("content-encoding: gzip\r\n");
    }
    for (n, v) in &s.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if conn.is_none() {
        let c = TcpStream::connect_timeout(&s.addr, Duration::from_secs(3))?;
        c.set_write_timeout(Some(SEND_DEADLINE))?;
        let _ = c.set_nodelay(true);
        // The TLS handshake waits for the same deadline as the answer.
        c.set_read_timeout(Some(SEND_DEADLINE))?;
        *conn = Some(Conn::new(c, s.tls.as_ref())?);
    }
    let c = conn.as_mut().expect("connected above");
    write_all_parts(c, head.as_bytes(), body)?;
    c.flush()?;
    Ok(deadline)
}

/// Writes `head` and `body` in as few calls as the socket takes (one `writev` for a whole batch
/// when its buffer has room): each write on a socket without delay is sent at once, and wakes
/// the collector if it sleeps.
fn write_all_parts(c: &mut Conn, head: &[u8], body: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        std::iter::once(head).chain(body.iter().copied()).map(std::io::IoSlice::new).collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        match c.write_vectored(left) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the answer to the POST on `conn` (by `deadline`); a 2xx is success. The connection is
/// dropped when the collector closes it or the answer cannot be read whole.
pub(crate) fn answer(conn: &mut Option<Conn>, deadline: Instant) -> Result<(), Sent> {
    let Some(c) = conn.as_mut() else {
        return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "no connection to read the answer on").into());
    };
    // Every read waits at most what is left of the deadline.
    let left = |c: &Conn| -> std::io::Result<()> {
        let l = deadline.saturating_duration_since(Instant::now());
        if l.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"));
        }
        c.socket().set_read_timeout(Some(l))
    };
    // The answer: its head, then its body (Content-Length), so the connection can carry the
    // next batch.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (status, head_len, length, close) = loop {
        // What the buffer holds so far: an interim answer to skip, the final head, or not
        // enough yet.
        let parsed = {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut fields);
            match r.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = r.code.unwrap_or(0);
                    let field =
                        |name: &str| r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
                    let length = match status {
                        204 | 304 => Some(0),
                        _ => field("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()),
                    };
                    let close = field("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                    Some((status, len, length, close))
                }
                Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => None,
                _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed answer").into()),
            }
        };
        match parsed {
            // An interim answer: the final one follows (perhaps already here).
            Some((status, len, _, _)) if (100..200).contains(&status) => {
                buf.drain(..len);
                continue;
            }
            Some(done) => break done,
            None => {}
        }
        left(c)?;
        let n = c.read(&mut chunk)?;
        if n == 0 {
            return Err(
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the collector closed the connection").into()
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    match length {
        Some(n) => {
            let mut have = buf.len() - head_len;
            while have < n {
                left(c)?;
                let k = c.read(&mut chunk)?;
                if k == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "answer cut short").into());
                }
                have += k;
            }
        }
        // No length: the body runs to the close; the connection is not kept.
        None => *conn = None,
    }
    if close {
        *conn = None;
    }
    match status {
        200..=299 => Ok(()),
        400..=499 if status != 408 && status != 429 => Err(Sent::Refused(status)),
        _ => Err(Sent::Failed(std::io::Error::other(format!("the collector answered {status}")))),
    }
}
