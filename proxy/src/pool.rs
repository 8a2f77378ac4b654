//! Per-worker keep-alive pools of upstream connections, keyed by target address so that they
//! survive configuration changes that keep the target.
//!
//! An idle connection is only worth reusing while the origin has said nothing on it: bytes it
//! sent after the response ended (a body after a HEAD answer or a 204, more than its
//! Content-Length) would be read as the next request's response, and an end-of-stream means
//! the origin closed it (its own keep-alive timeout) and the next request would fail. So a
//! connection is checked when it is taken (one non-blocking peek), and the worker's sweeper
//! checks every idle connection once a second and closes those the origin spoke on or closed.

use std::net::SocketAddr;
use std::time::Duration;

use crate::stream::Stream;
use monoio::time::Instant;

struct Idle {
    stream: Stream,
    expires: Instant,
}

/// Connections are pooled by target and by TLS settings (0: plaintext): a connection made
/// with one upstream's certificate rules never serves another's.
pub type PoolKey = (SocketAddr, u64);

/// The idle upstream connections of one worker.
#[derive(Default)]
pub struct Pool {
    /// Keys come from the configuration, not from clients: a fast hasher is safe here.
    idle: rustc_hash::FxHashMap<PoolKey, Vec<Idle>>,
    /// Connections opened, for tests and metrics.
    pub opened: u64,
    /// Connections taken from the pool.
    pub reused: u64,
    /// Idle connections closed because the origin sent bytes or closed them.
    pub discarded: u64,
}

impl Pool {
    /// The most recently returned unexpired quiet connection to `addr`, dropping expired ones
    /// and those the origin sent bytes on or closed.
    pub fn take(&mut self, key: PoolKey, now: Instant) -> Option<Stream> {
        let list = self.idle.get_mut(&key)?;
        while let Some(mut c) = list.pop() {
            if c.expires > now {
                if c.stream.quiet() {
                    self.reused += 1;
                    return Some(c.stream);
                }
                self.discarded += 1;
            }
        }
        None
    }

    /// Returns a connection, kept for `ttl`; the oldest is dropped when `limit` idle ones are
    /// already kept.
    pub fn put(&mut self, key: PoolKey, stream: Stream, limit: usize, ttl: Duration, now: Instant) {
        if limit == 0 {
            return;
        }
        let list = self.idle.entry(key).or_default();
        if list.len() >= limit {
            // Keep the freshest: drop the oldest.
            list.remove(0);
        }
        list.push(Idle { stream, expires: now + ttl });
    }

    /// Closes expired connections and those the origin sent bytes on or closed.
    pub fn sweep(&mut self, now: Instant) {
        let mut discarded = 0;
        self.idle.retain(|_, list| {
            list.retain_mut(|c| {
                let keep = c.expires > now && c.stream.quiet();
                discarded += u64::from(c.expires > now && !keep);
                keep
            });
            !list.is_empty()
        });
        self.discarded += discarded;
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}
