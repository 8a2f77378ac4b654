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

/// `host[:port]` (or `[v6]:port`) into its parts.
pub fn split_host(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((ip, tail)) = rest.split_once(']') {
            return (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

/// The client address behind `trusted` proxies: the `trusted`th entry from the right of the
/// inbound `X-Forwarded-For` list (the one the farthest trusted proxy appended). A shorter
/// list, or an entry that is not an address (with or without a port), gives the peer.
pub(crate) fn client_address(xff: &[u8], peer: std::net::IpAddr, trusted: u32) -> std::net::IpAddr {
    if trusted == 0 {
        return peer;
    }
    let Ok(list) = std::str::from_utf8(xff) else { return peer };
    let Some(entry) = list.rsplit(',').nth(trusted as usize - 1) else { return peer };
    let entry = entry.trim();
    entry
        .parse::<std::net::IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| entry.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>())
        .unwrap_or(peer)
}

/// The client behind proxies in `trusted`: walking the inbound `X-Forwarded-For` list from the
/// right (from the peer, itself trusted), the first address outside `trusted`. An entry that is
/// not an address stops the walk at the last trusted hop; a list of trusted hops only gives its
/// leftmost.
pub(crate) fn client_behind(
    xff: &[u8],
    peer: std::net::IpAddr,
    trusted: &[ringway_policy::Network],
) -> std::net::IpAddr {
    let Ok(list) = std::str::from_utf8(xff) else { return peer };
    let mut hop = peer;
    for entry in list.rsplit(',') {
        let entry = entry.trim();
        let parsed = entry
            .parse::<std::net::IpAddr>()
            .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
            .or_else(|_| entry.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>());
        let Ok(ip) = parsed else { return hop };
        if !trusted.iter().any(|n| n.contains(ip)) {
            return ip;
        }
        hop = ip;
    }
    hop
}
