//! The [`ConfigStore`] trait: the contract every backend fulfils.

use crate::{Change, RevisionInfo, StoreError, StoredState};

/// Durable, revisioned storage of opaque configuration resources.
///
/// Every implementation must pass the suite in [`crate::conformance`].
pub trait ConfigStore: Send {
    /// Current revision; 0 for an empty, never-written store.
    fn revision(&self) -> Result<u64, StoreError>;

    /// Everything at the current revision.
    fn load(&self) -> Result<StoredState, StoreError>;

    /// Applies `change` atomically as revision `current + 1` (even with no ops), durably before
    /// returning, and records it in the history; returns the new revision.
    ///
    /// Operations apply in order, so a later op on the same resource wins. Deleting a missing
    /// resource is not an error. A kind or id containing a NUL byte fails the whole change with
    /// [`StoreError::InvalidName`] and leaves the store untouched.
    fn commit(&mut self, change: Change) -> Result<u64, StoreError>;

    /// The history, newest first, at most `limit` entries.
    fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError>;

    /// The state as it was right after `revision` was committed (revision 0 is the empty state).
    ///
    /// Fails with [`StoreError::UnknownRevision`] for a revision above the current one and with
    /// [`StoreError::Pruned`] when the history no longer reaches back that far.
    fn state_at(&self, revision: u64) -> Result<StoredState, StoreError>;
}
