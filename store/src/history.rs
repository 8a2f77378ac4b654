//! Revision records: the undo log kept for every commit, and its byte encoding.
//!
//! A record stores, for every resource a commit touched, the value before and after the
//! commit. Undoing a record restores the "before" values, so the state at revision `r` is the
//! current state with every record newer than `r` undone, newest first. Both backends share
//! this code; only [`crate::RocksStore`] uses the byte encoding.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Op, RevisionInfo, StoreError};

/// How many revisions keep their history unless a store is built with another limit.
pub const DEFAULT_HISTORY_LIMIT: usize = 1_000;

/// A resource's address: `(kind, id)`.
pub(crate) type Key = (String, String);

/// The final value of every resource a change touches; `None` means deleted.
pub(crate) type Resolved = BTreeMap<Key, Option<Vec<u8>>>;

/// The first byte of every encoded record, bumped if the layout ever changes.
const RECORD_FORMAT: u8 = 1;

/// One resource's change within a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UndoEntry {
    /// The resource's address.
    pub(crate) key: Key,
    /// The value before the commit; `None` if the resource did not exist.
    pub(crate) before: Option<Vec<u8>>,
    /// The value after the commit; `None` if the commit deleted the resource.
    pub(crate) after: Option<Vec<u8>>,
}

/// The history record of one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RevisionRecord {
    pub(crate) revision: u64,
    pub(crate) unix_ms: u64,
    pub(crate) summary: String,
    /// How many operations the change held (duplicates and no-ops included).
    pub(crate) ops: u64,
    /// One entry per resource whose value actually changed, ordered by key.
    pub(crate) entries: Vec<UndoEntry>,
}

/// Checks every op's resource name and folds the ops, in order, into the final value of each
/// touched resource, so that a later op on the same resource wins.
pub(crate) fn resolve(ops: Vec<Op>) -> Result<Resolved, StoreError> {
    let mut resolved = Resolved::new();
    for op in ops {
        let (kind, id, value) = match op {
            Op::Put { kind, id, value } => (kind, id, Some(value)),
            Op::Delete { kind, id } => (kind, id, None),
        };
        if kind.contains('\0') || id.contains('\0') {
            return Err(StoreError::InvalidName { kind, id });
        }
        resolved.insert((kind, id), value);
    }
    Ok(resolved)
}

/// Pairs each resolved resource with its current value, dropping resources the change leaves
/// as they were.
pub(crate) fn undo_entries(
    resolved: Resolved,
    mut current: impl FnMut(&Key) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Vec<UndoEntry>, StoreError> {
    let mut entries = Vec::with_capacity(resolved.len());
    for (key, after) in resolved {
        let before = current(&key)?;
        if before != after {
            entries.push(UndoEntry { key, before, after });
        }
    }
    Ok(entries)
}

/// Milliseconds since the Unix epoch; 0 if the clock is set before it.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Checks that the state at `revision` can be rebuilt, given the current revision and the
/// revision of the oldest record still kept (`current + 1` when no record is kept).
pub(crate) fn check_reachable(revision: u64, current: u64, oldest_kept: u64) -> Result<(), StoreError> {
    if revision > current {
        return Err(StoreError::UnknownRevision(revision));
    }
    // Rebuilding `revision` undoes records `revision + 1 ..= current`; all must still exist.
    let oldest = oldest_kept.saturating_sub(1);
    if revision < oldest {
        return Err(StoreError::Pruned { revision, oldest });
    }
    Ok(())
}

/// The revision of the oldest record a store keeps after committing `current`, given the
/// oldest record it kept before and its history limit.
pub(crate) fn oldest_kept_after(current: u64, previous_oldest: u64, limit: usize) -> u64 {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    previous_oldest.max(current.saturating_sub(limit).saturating_add(1))
}

impl RevisionRecord {
    /// The entry [`crate::ConfigStore::history`] reports for this record.
    pub(crate) fn info(&self) -> RevisionInfo {
        RevisionInfo {
            revision: self.revision,
            unix_ms: self.unix_ms,
            summary: self.summary.clone(),
            ops: usize::try_from(self.ops).unwrap_or(usize::MAX),
        }
    }

    /// Turns `resources` from the state right after this revision into the state right before.
    pub(crate) fn undo(&self, resources: &mut BTreeMap<Key, Vec<u8>>) {
        for entry in &self.entries {
            match &entry.before {
                Some(value) => resources.insert(entry.key.clone(), value.clone()),
                None => resources.remove(&entry.key),
            };
        }
    }

    /// The record as bytes: a format byte, then fixed-width big-endian integers and
    /// length-prefixed byte strings.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.push(RECORD_FORMAT);
        put_u64(&mut out, self.revision);
        put_u64(&mut out, self.unix_ms);
        put_u64(&mut out, self.ops);
        put_bytes(&mut out, self.summary.as_bytes());
        put_u64(&mut out, self.entries.len() as u64);
        for entry in &self.entries {
            put_bytes(&mut out, entry.key.0.as_bytes());
            put_bytes(&mut out, entry.key.1.as_bytes());
            put_optional(&mut out, entry.before.as_deref());
            put_optional(&mut out, entry.after.as_deref());
        }
        out
    }

    /// Reads a record written by [`RevisionRecord::encode`].
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut reader = Reader { rest: bytes };
        let format = reader.take(1)?[0];
        if format != RECORD_FORMAT {
            return Err(StoreError::Corrupt(format!("history record has unknown format {format}")));
        }
        let revision = reader.u64()?;
        let unix_ms = reader.u64()?;
        let ops = reader.u64()?;
        let summary = reader.string()?;
        let count = reader.u64()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let kind = reader.string()?;
            let id = reader.string()?;
            let before = reader.optional()?;
            let after = reader.optional()?;
            entries.push(UndoEntry { key: (kind, id), before, after });
        }
        if !reader.rest.is_empty() {
            return Err(StoreError::Corrupt(format!("history record {revision} has trailing bytes")));
        }
        Ok(RevisionRecord { revision, unix_ms, summary, ops, entries })
    }
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
}

/// A bounds-checked cursor over an encoded record.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < len {
            return Err(StoreError::Corrupt("history record is truncated".to_owned()));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let bytes = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(array))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .map_err(|_| StoreError::Corrupt(format!("history record declares a {len}-byte field")))?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| StoreError::Corrupt("history record holds a name that is not UTF-8".to_owned()))
    }

    fn optional(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?.to_vec())),
            tag => Err(StoreError::Corrupt(format!("history record holds an unknown value tag {tag}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RevisionRecord {
        RevisionRecord {
            revision: 7,
            unix_ms: 1_700_000_000_000,
            summary: "add route".to_owned(),
            ops: 3,
            entries: vec![
                UndoEntry { key: ("routes".into(), "a".into()), before: None, after: Some(b"{}".to_vec()) },
                UndoEntry { key: ("routes".into(), "b".into()), before: Some(b"[1]".to_vec()), after: None },
                UndoEntry { key: ("upstreams".into(), "u".into()), before: Some(vec![]), after: Some(vec![0, 255]) },
            ],
        }
    }

    #[test]
    fn encoding_round_trips() {
        let record = sample();
        assert_eq!(RevisionRecord::decode(&record.encode()).unwrap(), record);
    }

    #[test]
    fn every_truncation_is_reported_as_corrupt() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            let err = RevisionRecord::decode(&bytes[..len]).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "length {len}: {err}");
        }
    }

    #[test]
    fn trailing_bytes_and_unknown_format_are_corrupt() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert!(matches!(RevisionRecord::decode(&bytes), Err(StoreError::Corrupt(_))));
        let mut bytes = sample().encode();
        bytes[0] = 9;
        assert!(matches!(RevisionRecord::decode(&bytes), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn huge_declared_length_is_corrupt_not_a_panic() {
        let mut bytes = vec![RECORD_FORMAT];
        bytes.extend_from_slice(&[0; 24]);
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(RevisionRecord::decode(&bytes), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn resolve_keeps_the_last_op_per_resource() {
        let resolved = resolve(vec![Op::put("k", "a", "1"), Op::delete("k", "a"), Op::put("k", "b", "2")]).unwrap();
        assert_eq!(resolved.get(&("k".into(), "a".into())), Some(&None));
        assert_eq!(resolved.get(&("k".into(), "b".into())), Some(&Some(b"2".to_vec())));
    }

    #[test]
    fn reachability_window() {
        assert!(matches!(check_reachable(6, 5, 1), Err(StoreError::UnknownRevision(6))));
        assert!(check_reachable(0, 5, 1).is_ok());
        assert!(check_reachable(5, 5, 6).is_ok());
        assert!(matches!(check_reachable(3, 5, 5), Err(StoreError::Pruned { revision: 3, oldest: 4 })));
        assert_eq!(oldest_kept_after(10, 1, 3), 8);
        assert_eq!(oldest_kept_after(2, 1, 3), 1);
        assert_eq!(oldest_kept_after(5, 1, 0), 6);
    }
}
