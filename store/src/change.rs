//! The values that go into and come out of a store: operations, changes, states and history
//! entries.

use std::collections::BTreeMap;

/// One write operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates or replaces the resource `(kind, id)` with `value`.
    Put {
        /// The resource kind, e.g. `"routes"`.
        kind: String,
        /// The resource id within its kind.
        id: String,
        /// The resource's opaque content.
        value: Vec<u8>,
    },
    /// Removes the resource `(kind, id)`; removing a missing resource is not an error.
    Delete {
        /// The resource kind.
        kind: String,
        /// The resource id within its kind.
        id: String,
    },
}

impl Op {
    /// A [`Op::Put`] of `value` at `(kind, id)`.
    pub fn put(kind: impl Into<String>, id: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put { kind: kind.into(), id: id.into(), value: value.into() }
    }

    /// A [`Op::Delete`] of `(kind, id)`.
    pub fn delete(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Op::Delete { kind: kind.into(), id: id.into() }
    }

    /// The resource this operation targets.
    pub fn target(&self) -> (&str, &str) {
        match self {
            Op::Put { kind, id, .. } | Op::Delete { kind, id } => (kind, id),
        }
    }
}

/// One atomic change: every op applies, or none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// The operations, applied in order.
    pub ops: Vec<Op>,
    /// A human-readable description kept in the history.
    pub summary: String,
}

impl Change {
    /// A change made of `ops`, described by `summary`.
    pub fn new(summary: impl Into<String>, ops: Vec<Op>) -> Self {
        Change { ops, summary: summary.into() }
    }
}

/// The whole stored configuration at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredState {
    /// The revision this state belongs to.
    pub revision: u64,
    /// Every resource, keyed by `(kind, id)`.
    pub resources: BTreeMap<(String, String), Vec<u8>>,
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RevisionInfo {
    /// The revision the commit produced.
    pub revision: u64,
    /// When the commit happened, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The summary given with the change.
    pub summary: String,
    /// How many operations the change held.
    pub ops: usize,
}
