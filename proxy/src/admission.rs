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

pub use ringway_policy::Network;

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
}
