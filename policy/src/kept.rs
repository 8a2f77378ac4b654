//! What a worker keeps per token for a policy (verified tokens, introspection answers): by the
//! policy's id, then the token, both looked up borrowed (a kept token costs no allocation).
//! Bounded: when full, expired entries go; if that is not enough, all of them.

use std::collections::HashMap;

use rustc_hash::FxBuildHasher;

/// An entry that stops holding at a time.
pub(crate) trait Expires {
    /// Milliseconds since the Unix epoch past which the entry says nothing.
    fn until_ms(&self) -> u64;
}

/// Tokens longer than this are not kept (checked every time).
pub(crate) const KEPT_TOKEN_MAX: usize = 2048;

type ByToken<V> = HashMap<Box<[u8]>, V, FxBuildHasher>;

#[derive(Debug)]
pub(crate) struct Kept<V> {
    by_policy: HashMap<u64, ByToken<V>, FxBuildHasher>,
    len: usize,
    max: usize,
}

impl<V: Expires> Kept<V> {
    pub(crate) fn new(max: usize) -> Self {
        Kept { by_policy: HashMap::default(), len: 0, max }
    }

    /// The entry for `token` under `policy`, while it holds.
    pub(crate) fn get(&self, policy: u64, token: &[u8], now: u64) -> Option<&V> {
        self.by_policy.get(&policy).and_then(|m| m.get(token)).filter(|v| v.until_ms() > now)
    }

    /// Keeps `v` for `token` under `policy` (a token too long to keep is not).
    pub(crate) fn put(&mut self, policy: u64, token: &[u8], v: V, now: u64) {
        if token.len() > KEPT_TOKEN_MAX {
            return;
        }
        if self.len >= self.max {
            for m in self.by_policy.values_mut() {
                m.retain(|_, e| e.until_ms() > now);
            }
            self.by_policy.retain(|_, m| !m.is_empty());
            self.len = self.by_policy.values().map(HashMap::len).sum();
            if self.len >= self.max {
                self.by_policy.clear();
                self.len = 0;
            }
        }
        if self.by_policy.entry(policy).or_default().insert(token.into(), v).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, policy: u64, token: &[u8]) {
        if self.by_policy.get_mut(&policy).and_then(|m| m.remove(token)).is_some() {
            self.len -= 1;
        }
    }
}
