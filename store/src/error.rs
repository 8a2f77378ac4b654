//! The error type shared by every store implementation.

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused an operation, e.g. creating the store's directory.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The storage engine reported an error; the message names the operation that failed.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// Data read back from the store does not have the shape this crate writes.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The requested revision is newer than the current one.
    #[error("unknown revision {0}: it is newer than the current revision")]
    UnknownRevision(u64),
    /// The requested revision is older than the history still kept.
    #[error("revision {revision} is no longer in the history; the oldest reachable revision is {oldest}")]
    Pruned {
        /// The revision that was asked for.
        revision: u64,
        /// The oldest revision whose state can still be rebuilt.
        oldest: u64,
    },
    /// A resource kind or id contains a NUL byte, which no backend accepts.
    #[error("invalid resource name ({kind:?}, {id:?}): kinds and ids must not contain NUL bytes")]
    InvalidName {
        /// The kind of the refused resource.
        kind: String,
        /// The id of the refused resource.
        id: String,
    },
}
