//! Addresses in the configuration (`host:port`), resolved when a document is compiled.

use std::net::{SocketAddr, ToSocketAddrs};

/// An address `host:port` (an IP address, or a name resolved now): the first it gives.
pub(crate) fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(format!("{addr:?} needs a port, as in \"host:port\""));
    }
    match addr.to_socket_addrs() {
        Ok(mut it) => it.next().ok_or_else(|| format!("{addr:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {addr:?}: {e}")),
    }
}
