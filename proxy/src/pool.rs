//! Per-worker keep-alive pools of upstream connections, keyed by target address so that they
//! survive configuration changes that keep the target.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;

struct Idle {
    stream: TcpStream,
    expires: Instant,
}

/// The idle upstream connections of one worker.
#[derive(Default)]
pub struct Pool {
    /// Keys come from the configuration, not from clients: a fast hasher is safe here.
    idle: rustc_hash::FxHashMap<SocketAddr, Vec<Idle>>,
    /// Connections opened, for tests and metrics.
    pub opened: u64,
    /// Connections taken from the pool.
    pub reused: u64,
}

impl Pool {
    /// The most recently returned unexpired connection to `addr`, dropping expired ones.
    pub fn take(&mut self, addr: SocketAddr, now: Instant) -> Option<TcpStream> {
        let list = self.idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if c.expires > now {
                self.reused += 1;
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection, kept for `ttl`; the oldest is dropped when `limit` idle ones are
    /// already kept.
    pub fn put(&mut self, addr: SocketAddr, stream: TcpStream, limit: usize, ttl: Duration, now: Instant) {
        if limit == 0 {
            return;
        }
        let list = self.idle.entry(addr).or_default();
        if list.len() >= limit {
            // Keep the freshest: drop the oldest.
            list.remove(0);
        }
        list.push(Idle { stream, expires: now + ttl });
    }

    /// Closes expired connections.
    pub fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, list| {
            list.retain(|c| c.expires > now);
            !list.is_empty()
        });
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}
