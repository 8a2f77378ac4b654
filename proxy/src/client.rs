//! The gateway's own HTTP/1 client over a [`Stream`]: connect within a deadline, write a
//! request head, read a response head. The exchange's attempts are made of these steps; the
//! health thread's probes ([`probe`]) use them too.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::time::Instant;
use ringway_policy::{HeaderList, RequestHead, Version};

use crate::h1::head::BodyKind;
use crate::io::write_all;
use crate::resilience::policy::Active;
use crate::respond::ProxyError;
use crate::stream::Stream;
use crate::tls::UpstreamTls;
use crate::upstream::{encode_request, read_response};

/// A new connection to `addr` within `timeout`, its TLS handshake included when `tls` is
/// given.
pub async fn connect(addr: SocketAddr, timeout: Duration, tls: Option<&UpstreamTls>) -> Result<Stream, ProxyError> {
    let made = async {
        let s = Stream::connect(addr).await.map_err(|_| ProxyError::UpstreamConnect)?;
        match (s, tls) {
            (Stream::Tcp(tcp), Some(t)) => match crate::tls::client::connect(tcp, t, addr).await {
                Ok(s) => Ok(Stream::Tls(Box::new(s))),
                Err(e) => {
                    log::debug!("TLS to {addr} failed: {e}");
                    Err(ProxyError::UpstreamTls)
                }
            },
            (s, _) => Ok(s),
        }
    };
    match monoio::time::timeout(timeout, made).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::UpstreamConnectTimeout),
    }
}

/// The status code of a response head (`HTTP/1.1 503 ...`), 0 if it has none.
pub fn status_of(head: &[u8]) -> u16 {
    match head.get(9..12) {
        Some(&[a, b, c]) if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => 0,
    }
}

/// One health probe of `addr`, all of it within `a.timeout`: a connection (`tcp`), or a
/// `GET` of the probe's path answered with an expected status. `Err`: why it failed.
pub async fn probe(addr: SocketAddr, a: &Active) -> Result<(), String> {
    match monoio::time::timeout(a.timeout, probe_once(addr, a)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", a.timeout.as_millis())),
    }
}

async fn probe_once(addr: SocketAddr, a: &Active) -> Result<(), String> {
    let mut s = connect(addr, a.timeout, a.tls.as_deref()).await.map_err(|e| e.to_string())?;
    if a.tcp {
        return Ok(());
    }
    if let Some(service) = &a.grpc {
        return crate::h2::client::health_check(s, addr, a.tls.is_some(), service).await;
    }
    let host = a.host.clone().unwrap_or_else(|| addr.to_string());
    let head = RequestHead {
        method: "GET",
        authority: Some(host.as_bytes()),
        host: &host,
        path: &a.path,
        query: None,
        version: Version::Http11,
        fields: &[],
    };
    let mut list = HeaderList::with_capacity(3);
    list.push("host", host.as_bytes());
    list.push("user-agent", &b"ringway-health"[..]);
    list.push("connection", &b"close"[..]);
    let mut out = Vec::with_capacity(128);
    encode_request(&mut out, &head, &list, BodyKind::None);
    let (r, _) = write_all(&mut s, out, a.timeout).await;
    r.map_err(|e| format!("sending the probe: {e}"))?;
    let deadline = Instant::now() + a.timeout;
    let (head_len, buf) =
        read_response(&mut s, Vec::with_capacity(4096), deadline, false).await.map_err(|(e, _, _)| e.to_string())?;
    let status = status_of(&buf[..head_len]);
    if a.expect_status.contains(status) {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}
