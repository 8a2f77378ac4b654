//! [`RocksStore`]: the durable [`ConfigStore`], on RocksDB.
//!
//! Layout of the single database (all integers big-endian):
//!
//! | key | value |
//! |---|---|
//! | `r\0{kind}\0{id}` | the resource's bytes |
//! | `m\0revision` | the current revision, `u64` |
//! | `m\0format` | the layout version, `u64` (currently 1) |
//! | `h\0{revision as u64}` | the revision's history record (see `history.rs`) |
//!
//! Every commit is one write batch, synced to disk before [`ConfigStore::commit`] returns,
//! holding the resource writes, the new revision, the new history record and the deletion of
//! records that fall out of the history window. RocksDB applies a batch entirely or not at all,
//! so a crash leaves either the old revision or the new one.

use std::fmt;
use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::history::{self, Key, RevisionRecord, DEFAULT_HISTORY_LIMIT};
use crate::{Change, ConfigStore, RevisionInfo, StoreError, StoredState};

const RESOURCE_PREFIX: &[u8] = b"r\0";
/// The first key after every resource key.
const RESOURCE_END: &[u8] = b"r\x01";
const HISTORY_PREFIX: &[u8] = b"h\0";
/// The first key after every history key.
const HISTORY_END: &[u8] = b"h\x01";
const REVISION_KEY: &[u8] = b"m\0revision";
const FORMAT_KEY: &[u8] = b"m\0format";
/// The layout version this code reads and writes.
const FORMAT: u64 = 1;

/// A [`ConfigStore`] persisted in a RocksDB database in one directory.
///
/// The database is locked by RocksDB while the store is open, so only one `RocksStore` (in any
/// process) can use a directory at a time.
pub struct RocksStore {
    db: DB,
    path: PathBuf,
    history_limit: usize,
    /// The current revision, as stored under `m\0revision`.
    revision: u64,
    /// The oldest history record served: `revision + 1` when none is.
    oldest_kept: u64,
    /// The oldest history record still on disk; records below `oldest_kept` are deleted by the
    /// next commit.
    first_stored: u64,
}

impl RocksStore {
    /// Opens the store in `path`, creating the directory and an empty store if missing, and
    /// keeps the history of the last [`DEFAULT_HISTORY_LIMIT`] revisions.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_history_limit(path, DEFAULT_HISTORY_LIMIT)
    }

    /// Opens the store in `path` like [`RocksStore::open`], keeping the history of the last
    /// `history_limit` revisions. Opening with a smaller limit than before hides the older
    /// records at once and deletes them with the next commit.
    pub fn open_with_history_limit(path: &Path, history_limit: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path)?;
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, path).map_err(backend("opening the database"))?;

        let revision = read_u64(&db, REVISION_KEY)?.unwrap_or(0);
        match read_u64(&db, FORMAT_KEY)? {
            Some(FORMAT) => {}
            Some(other) => return Err(StoreError::Corrupt(format!("unsupported store format {other}"))),
            None if revision == 0 => {
                let mut batch = WriteBatch::default();
                batch.put(FORMAT_KEY, FORMAT.to_be_bytes());
                db.write_opt(batch, &synced()).map_err(backend("writing the format marker"))?;
            }
            None => return Err(StoreError::Corrupt("the format marker is missing".to_owned())),
        }

        let first_stored = match first_history_revision(&db)? {
            None => revision.saturating_add(1),
            Some(first) if first > revision => {
                return Err(StoreError::Corrupt(format!(
                    "history record {first} is newer than the current revision {revision}"
                )))
            }
            Some(first) => {
                if db.get_pinned(history_key(revision)).map_err(backend("reading history"))?.is_none() {
                    return Err(StoreError::Corrupt(format!("history record {revision} is missing")));
                }
                first
            }
        };
        let oldest_kept = history::oldest_kept_after(revision, first_stored, history_limit);
        Ok(RocksStore { db, path: path.to_owned(), history_limit, revision, oldest_kept, first_stored })
    }

    /// The directory holding the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and decodes the history record of `revision`, which must exist.
    fn record(&self, revision: u64) -> Result<RevisionRecord, StoreError> {
        let bytes = self
            .db
            .get_pinned(history_key(revision))
            .map_err(backend("reading history"))?
            .ok_or_else(|| StoreError::Corrupt(format!("history record {revision} is missing")))?;
        let record = RevisionRecord::decode(&bytes)?;
        if record.revision != revision {
            return Err(StoreError::Corrupt(format!(
                "history record {revision} claims to be revision {}",
                record.revision
            )));
        }
        Ok(record)
    }
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("revision", &self.revision)
            .field("history_limit", &self.history_limit)
            .field("oldest_kept", &self.oldest_kept)
            .finish_non_exhaustive()
    }
}

impl ConfigStore for RocksStore {
    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.revision)
    }

    fn load(&self) -> Result<StoredState, StoreError> {
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_upper_bound(RESOURCE_END);
        let mut resources = std::collections::BTreeMap::new();
        for item in self.db.iterator_opt(IteratorMode::From(RESOURCE_PREFIX, Direction::Forward), read_options) {
            let (key, value) = item.map_err(backend("reading resources"))?;
            resources.insert(parse_resource_key(&key)?, value.into_vec());
        }
        Ok(StoredState { revision: self.revision, resources })
    }

    fn commit(&mut self, change: Change) -> Result<u64, StoreError> {
        let ops = change.ops.len() as u64;
        let resolved = history::resolve(change.ops)?;
        let entries = history::undo_entries(resolved, |key| {
            self.db.get(resource_key(key)).map_err(backend("reading a resource"))
        })?;
        let revision =
            self.revision.checked_add(1).ok_or_else(|| StoreError::Corrupt("revision counter overflow".to_owned()))?;

        let mut batch = WriteBatch::default();
        for entry in &entries {
            match &entry.after {
                Some(value) => batch.put(resource_key(&entry.key), value),
                None => batch.delete(resource_key(&entry.key)),
            }
        }
        batch.put(REVISION_KEY, revision.to_be_bytes());
        let oldest_kept = history::oldest_kept_after(revision, self.oldest_kept, self.history_limit);
        if oldest_kept <= revision {
            let record =
                RevisionRecord { revision, unix_ms: history::now_unix_ms(), summary: change.summary, ops, entries };
            batch.put(history_key(revision), record.encode());
        }
        // Records on disk are `first_stored ..= self.revision`; drop those leaving the window.
        for pruned in self.first_stored..oldest_kept.min(revision) {
            batch.delete(history_key(pruned));
        }
        self.db.write_opt(batch, &synced()).map_err(backend("committing a change"))?;

        self.revision = revision;
        self.oldest_kept = oldest_kept;
        self.first_stored = oldest_kept;
        Ok(revision)
    }

    fn history(&self, limit: usize) -> Result<Vec<RevisionInfo>, StoreError> {
        (self.oldest_kept..=self.revision).rev().take(limit).map(|revision| Ok(self.record(revision)?.info())).collect()
    }

    fn state_at(&self, revision: u64) -> Result<StoredState, StoreError> {
        history::check_reachable(revision, self.revision, self.oldest_kept)?;
        let mut state = self.load()?;
        for newer in (revision..self.revision).rev().map(|older| older + 1) {
            self.record(newer)?.undo(&mut state.resources);
        }
        state.revision = revision;
        Ok(state)
    }
}

/// Write options for every write: synced to disk before the write returns.
fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

/// Wraps a RocksDB error into [`StoreError::Backend`], naming what was being done.
fn backend(doing: &'static str) -> impl Fn(rocksdb::Error) -> StoreError {
    move |err| StoreError::Backend(format!("{doing}: {err}"))
}

fn read_u64(db: &DB, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let Some(bytes) = db.get_pinned(key).map_err(backend("reading metadata"))? else {
        return Ok(None);
    };
    let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
        StoreError::Corrupt(format!("{} holds {} bytes, not 8", String::from_utf8_lossy(key), bytes.len()))
    })?;
    Ok(Some(u64::from_be_bytes(array)))
}

/// The revision of the oldest history record on disk, if any.
fn first_history_revision(db: &DB) -> Result<Option<u64>, StoreError> {
    let mut read_options = ReadOptions::default();
    read_options.set_iterate_upper_bound(HISTORY_END);
    let mut iter = db.iterator_opt(IteratorMode::From(HISTORY_PREFIX, Direction::Forward), read_options);
    let Some(item) = iter.next() else {
        return Ok(None);
    };
    let (key, _) = item.map_err(backend("reading history"))?;
    let array: [u8; 8] = key[HISTORY_PREFIX.len()..]
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("malformed history key {key:?}")))?;
    Ok(Some(u64::from_be_bytes(array)))
}

fn resource_key((kind, id): &Key) -> Vec<u8> {
    let mut key = Vec::with_capacity(RESOURCE_PREFIX.len() + kind.len() + 1 + id.len());
    key.extend_from_slice(RESOURCE_PREFIX);
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn parse_resource_key(key: &[u8]) -> Result<Key, StoreError> {
    let malformed = || StoreError::Corrupt(format!("malformed resource key {:?}", String::from_utf8_lossy(key)));
    let rest = key.strip_prefix(RESOURCE_PREFIX).ok_or_else(malformed)?;
    let split = rest.iter().position(|&byte| byte == 0).ok_or_else(malformed)?;
    let kind = std::str::from_utf8(&rest[..split]).map_err(|_| malformed())?;
    let id = std::str::from_utf8(&rest[split + 1..]).map_err(|_| malformed())?;
    Ok((kind.to_owned(), id.to_owned()))
}

fn history_key(revision: u64) -> [u8; 10] {
    let mut key = [0; 10];
    key[..2].copy_from_slice(HISTORY_PREFIX);
    key[2..].copy_from_slice(&revision.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    /// A directory under the system temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos());
            let path = std::env::temp_dir().join(format!("ringway-store-unit-{name}-{}-{nanos}", std::process::id()));
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes raw keys into the database in `dir`, bypassing the store.
    fn tamper(dir: &Path, edit: impl FnOnce(&mut WriteBatch)) {
        let db = DB::open_default(dir).unwrap();
        let mut batch = WriteBatch::default();
        edit(&mut batch);
        db.write(batch).unwrap();
    }

    fn seeded(dir: &Path) {
        let mut store = RocksStore::open(dir).unwrap();
        store.commit(Change::new("one", vec![Op::put("routes", "a", "1")])).unwrap();
        store.commit(Change::new("two", vec![Op::put("routes", "a", "2")])).unwrap();
    }

    #[test]
    fn keys_round_trip_and_sort_by_revision() {
        let key = ("routes".to_owned(), "a\u{1}b".to_owned());
        assert_eq!(parse_resource_key(&resource_key(&key)).unwrap(), key);
        assert!(history_key(255) < history_key(256));
        assert!(matches!(parse_resource_key(b"r\0no-separator"), Err(StoreError::Corrupt(_))));
        assert!(matches!(parse_resource_key(b"r\0\xff\0id"), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn malformed_revision_is_corrupt() {
        let dir = TempDir::new("bad-revision");
        seeded(&dir.0);
        tamper(&dir.0, |batch| batch.put(REVISION_KEY, b"seven"));
        let err = RocksStore::open(&dir.0).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn unknown_format_is_corrupt() {
        let dir = TempDir::new("bad-format");
        seeded(&dir.0);
        tamper(&dir.0, |batch| batch.put(FORMAT_KEY, 99_u64.to_be_bytes()));
        let err = RocksStore::open(&dir.0).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn damaged_history_record_is_corrupt() {
        let dir = TempDir::new("bad-record");
        seeded(&dir.0);
        tamper(&dir.0, |batch| batch.put(history_key(2), b"\x01garbage"));
        let store = RocksStore::open(&dir.0).unwrap();
        assert_eq!(store.load().unwrap().resources.get(&("routes".into(), "a".into())), Some(&b"2".to_vec()));
        assert!(matches!(store.history(10), Err(StoreError::Corrupt(_))));
        assert!(matches!(store.state_at(1), Err(StoreError::Corrupt(_))));
        assert_eq!(store.state_at(2).unwrap(), store.load().unwrap());
    }

    #[test]
    fn missing_latest_record_is_corrupt() {
        let dir = TempDir::new("missing-record");
        seeded(&dir.0);
        tamper(&dir.0, |batch| batch.delete(history_key(2)));
        assert!(matches!(RocksStore::open(&dir.0), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn creates_missing_parent_directories() {
        let dir = TempDir::new("nested");
        let nested = dir.0.join("a").join("b");
        let store = RocksStore::open(&nested).unwrap();
        assert_eq!(store.path(), nested);
        assert_eq!(store.revision().unwrap(), 0);
    }
}
