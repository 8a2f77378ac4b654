//! Node-wide caps on client connections, in all and per client address, and which peers are
//! trusted proxies. Counted at accept and at close only (never per request), in lock-free
//! counters the workers share: each worker's own listener gets connections as the kernel
//! spreads them, so a per-worker share of a cap would refuse clients long before the cap.

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Counters of per-address connections. Addresses share a counter only when their keyed
/// hashes collide (the key is random per process, so a client cannot aim at another's).
const BUCKETS: usize = 1 << 16;

/// The connection caps of one gateway.
pub struct ConnectionCaps {
    open: AtomicUsize,
    max_open: usize,
    per_address: Box<[AtomicU32]>,
    /// 0: no per-address cap.
    max_per_address: u32,
    seed: std::hash::RandomState,
    /// Connections closed at accept because of a cap.
    pub refused: AtomicU64,
}

/// A connection counted against the caps; give it back with [`ConnectionCaps::release`].
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// The per-address counter it holds, if any.
    bucket: Option<u32>,
}

impl ConnectionCaps {
    /// `max_open` connections in all; `max_per_address` from one address (0: no such cap).
    pub fn new(max_open: usize, max_per_address: u32) -> ConnectionCaps {
        let per_address = if max_per_address == 0 { 0 } else { BUCKETS };
        ConnectionCaps {
            open: AtomicUsize::new(0),
            max_open: max_open.max(1),
            per_address: (0..per_address).map(|_| AtomicU32::new(0)).collect(),
            max_per_address,
            seed: std::hash::RandomState::new(),
            refused: AtomicU64::new(0),
        }
    }

    /// Counts a new connection from `peer`; `None` when a cap refuses it. `per_address: false`
    /// exempts it from the per-address cap (a trusted proxy carries many clients).
    pub fn admit(&self, peer: IpAddr, per_address: bool) -> Option<Admitted> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max_open {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !per_address || self.max_per_address == 0 {
            return Some(Admitted { bucket: None });
        }
        let i = (self.seed.hash_one(address_key(peer)) as usize) & (BUCKETS - 1);
        if self.per_address[i].fetch_add(1, Ordering::Relaxed) >= self.max_per_address {
            self.per_address[i].fetch_sub(1, Ordering::Relaxed);
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted { bucket: Some(i as u32) })
    }

    pub fn release(&self, a: Admitted) {
        if let Some(i) = a.bucket {
            self.per_address[i as usize].fetch_sub(1, Ordering::Relaxed);
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The address a connection counts under: IPv4 as it is (IPv4-mapped IPv6 too), IPv6 by its
/// /64 (one host usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.into(),
            None => {
                let s = v6.segments();
                Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0).into()
            }
        },
    }
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("'{s}' is not an address or a network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{s}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_and_give_back() {
        let caps = ConnectionCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = caps.admit(a, true).unwrap();
        assert!(caps.admit(a, true).is_some());
        assert!(caps.admit(a, true).is_none(), "a third from one address");
        assert!(caps.admit(a, false).is_some(), "a trusted proxy is not capped per address");
        assert!(caps.admit(b, true).is_none(), "three open in all");
        caps.release(first);
        assert!(caps.admit(b, true).is_some());
        assert_eq!(caps.open(), 3);
        assert_eq!(caps.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ipv6_counts_by_64() {
        let caps = ConnectionCaps::new(100, 2);
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"] {
            assert!(caps.admit(ip.parse().unwrap(), true).is_some());
        }
        assert!(caps.admit("2001:db8:1:2::77".parse().unwrap(), true).is_none(), "same /64");
        assert!(caps.admit("2001:db8:1:3::1".parse().unwrap(), true).is_some(), "another /64");
        assert_eq!(address_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn networks() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.3.4".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(!Network::parse("2001:db8::/32").unwrap().contains("2001:db9::1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nope").is_err());
    }
}
