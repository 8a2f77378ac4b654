//! `rate_limit` and `concurrency_limit`: node-wide limits kept in per-worker shards.
//!
//! A node-wide count needs state shared by the workers, but touching it on every request
//! would put a lock or a contended atomic on the request path. So workers lease: a worker
//! takes a batch of admissions from the shared bank and spends it locally without any
//! synchronisation; only when its lease runs out does it go back to the bank (one short
//! critical section on one shard of a concurrent map). Batches shrink as the bank empties
//! (a quarter of what is left, split across the workers), so near the limit a lease is one
//! request, and a worker told "nothing left" remembers until when and answers 429 locally.
//!
//! Bounds, sliding window: the bank grants at most `limit` admissions per fixed window, and
//! a lease never outlives the window it was granted in, so no window admits more than
//! `limit`. Admissions a worker leased but did not use are lost to its window: at most one
//! batch per worker, and batches are small when little is left, so under load every window
//! admits all but a handful of its `limit`.
//!
//! Keys: both the bank and every worker's shard track a bounded number of keys. Past the cap,
//! the least recently used go first (a key refused until later counts as used until then, and
//! goes only when the idle keys are too few; a bucket counts as used until it is full again,
//! since forgetting it is treating it as full; entries of finished windows and full buckets go
//! before anything else), so a client spraying keys displaces only keys idle longer than its
//! own, and every new key still gets its own counter (a local limit for keys past the cap would
//! instead multiply their limit by the number of workers, and still need a bounded table). The
//! bank is striped by key hash and evicts one stripe at a time, so no eviction reads more than
//! a stripe, whatever the number of cores.
//! `key: ip` counts an IPv6 client by its /64 (one host's usual allocation); IPv4
//! addresses count on their own.
//!
//! Concurrency: the bank holds the free slots; a worker takes a few, keeps up to one batch of
//! unused ones and gives the rest back when requests end. In flight node-wide never exceeds
//! `max_in_flight`; slots parked on idle workers (one batch each) may turn a request away
//! early.
//!
//! The parts: `spec` (what the configuration says and what it compiles to), `bank` (the
//! node-wide side), `worker` (a worker's shard: leases, sliding-window and token-bucket
//! decisions, concurrency slots), `evict` (eviction by age, for both) and `policies` (the
//! `Policy` impls on the request path). [`Permit`], the slot a request holds, is defined with
//! the [`Context`](crate::Context) that keeps it and re-exported here.

mod bank;
mod evict;
mod policies;
mod spec;
pub(crate) mod worker;

pub use crate::context::Permit;
pub use bank::LimitBank;
pub use policies::ip_key;
pub use spec::{consumer_key, ConcurrencyLimit, ConcurrencyLimitSpec, RateLimit, RateLimitSpec};
pub use worker::{RateDecision, WorkerLimits, DEFAULT_KEYS_PER_WORKER};
