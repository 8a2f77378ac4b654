//! Durable configuration storage for the ringway gateway.
//!
//! The store keeps the gateway's configuration as opaque resources: each resource is a byte
//! string (in practice a JSON document) addressed by a `(kind, id)` pair such as
//! `("routes", "users-api")`. The store knows nothing of HTTP or of what a resource means;
//! validation and interpretation belong to the admin crate.
//!
//! # Key types
//!
//! - [`ConfigStore`]: the trait every backend implements: read the current revision, load the
//!   whole configuration, commit a [`Change`], list the history and rebuild the state as it was
//!   at a past revision.
//! - [`Change`] and [`Op`]: one atomic write, made of puts and deletes, with a summary for the
//!   history.
//! - [`StoredState`]: the whole configuration at one revision.
//! - [`RevisionInfo`]: one entry of the history.
//! - [`MemoryStore`]: a volatile implementation, for tests and for running without a disk.
//! - [`RocksStore`]: the durable implementation, on RocksDB.
//! - [`conformance`]: the behaviour every implementation must show, written once and run
//!   against both backends.
//!
//! # Invariants
//!
//! - Revisions start at 0 (the empty, never-written store) and every commit, even one without
//!   operations, adds exactly 1.
//! - A commit is atomic: after a crash the store holds either the revision before it or the
//!   revision after it, never a mix. [`RocksStore`] writes one synced write batch per commit.
//! - Every revision record holds an undo log (the value of each touched resource before and
//!   after the commit), so a past state is rebuilt by undoing newer revisions; a commit never
//!   rewrites the whole configuration.
//! - Only the most recent revisions keep their history (1,000 by default); older records are
//!   pruned in the same write as the commit that pushes them out.
//! - Kinds and ids must not contain NUL bytes; every backend refuses them the same way.
//! - RocksDB appears only behind [`RocksStore`]: no RocksDB type crosses this crate's public API.

mod change;
pub mod conformance;
mod error;
mod history;
mod memory;
mod rocks;
mod store;

pub use change::{Change, Op, RevisionInfo, StoredState};
pub use error::StoreError;
pub use history::DEFAULT_HISTORY_LIMIT;
pub use memory::MemoryStore;
pub use rocks::RocksStore;
pub use store::ConfigStore;
