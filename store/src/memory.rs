//! [`MemoryStore`]: a volatile [`ConfigStore`], for tests and for running without a disk.

use std::collections::{BTreeMap, VecDeque};

use crate::history::{self, Key, RevisionRecord, DEFAULT_HISTORY_LIMIT};
use crate::{Change, ConfigStore, RevisionInfo, StoreError, StoredState};

/// A [`ConfigStore`] held entirely in memory; everything is lost when it is dropped.
///
/// It follows the same rules as [`crate::RocksStore`], including the undo-log history and its
/// pruning, so that it can stand in for it in tests.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    revision: u64,
    resources: BTreeMap<Key, Vec<u8>>,
    /// Oldest record first; at most `history_limit` records.
    history: VecDeque<RevisionRecord>,
    history_limit: usize,
}

impl MemoryStore {
    /// An empty store keeping the history of the last [`DEFAULT_HISTORY_LIMIT`] revisions.
    pub fn new() -> Self {
        Self::with_history_limit(DEFAULT_HISTORY_LIMIT)
    }

    /// An empty store keeping the history of the last `history_limit` revisions.
    pub fn with_history_limit(history_limit: usize) -> Self {
        MemoryStore { revision: 0, resources: BTreeMap::new(), history: VecDeque::new(), history_limit }
    }

    /// The revision of the oldest record kept, or `revision + 1` when none is.
    fn oldest_kept(&self) -> u64 {
        self.history.front().map_or(self.revision.saturating_add(1), |record| record.revision)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigStore for MemoryStore {
    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.revision)
    }

    fn load(&self) -> Result<StoredState, StoreError> {
        Ok(StoredState { revision: self.revision, resources: self.resources.clone() })
    }

    fn commit(&mut self, change: Change) -> Result<u64, StoreError> {
        let ops = change.ops.len() as u64;
        let resolved = history::resolve(change.ops)?;
        let entries = history::undo_entries(resolved, |key| Ok(self.resources.get(key).cloned()))?;
        let revision =
            self.revision.checked_add(1).ok_or_else(|| StoreError::Corrupt("revision counter overflow".to_owned()))?;

        for entry in &entries {
            match &entry.after {
                Some(value) => self.resources.insert(entry.key.clone(), value.clone()),
                None => self.resources.remove(&entry.key),
            };
        }
        self.revision = revision;
        self.history.push_back(RevisionRecord {
            revision,
            unix_ms: history::now_unix_ms(),
            summary: change.summary,
            ops,
            entries,
        });
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        Ok(revision)
    }

    fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        Ok(self.history.iter().rev().take(limit).map(RevisionRecord::info).collect())
    }

    fn state_at(&self, revision: u64) -> Result<StoredState, StoreError> {
        history::check_reachable(revision, self.revision, self.oldest_kept())?;
        let mut resources = self.resources.clone();
        for record in self.history.iter().rev().take_while(|record| record.revision > revision) {
            record.undo(&mut resources);
        }
        Ok(StoredState { revision, resources })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    #[test]
    fn keeps_the_default_number_of_revisions() {
        let mut store = MemoryStore::new();
        let total = DEFAULT_HISTORY_LIMIT as u64 + 5;
        for rev in 1..=total {
            store.commit(Change::new(format!("change {rev}"), vec![Op::put("k", "n", rev.to_string())])).unwrap();
        }
        let history = store.history(usize::MAX).unwrap();
        assert_eq!(history.len(), DEFAULT_HISTORY_LIMIT);
        assert_eq!(history.last().map(|info| info.revision), Some(6));
        assert_eq!(store.state_at(5).unwrap().resources.get(&("k".into(), "n".into())), Some(&b"5".to_vec()));
        assert!(matches!(store.state_at(4), Err(StoreError::Pruned { revision: 4, oldest: 5 })));
    }
}
