//! The behaviour every [`ConfigStore`] must show, written once and run against every backend.
//!
//! Each property is a public function taking a factory that builds a fresh, empty store with
//! the given history limit; [`run_all`] runs them all. The functions panic (like any test) when
//! a store breaks a rule, so they are meant to be called from tests, e.g.:
//!
//! ```
//! use ringway_store::{conformance, MemoryStore};
//! conformance::run_all(&mut MemoryStore::with_history_limit);
//! ```

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Change, ConfigStore, Op, StoreError, StoredState, DEFAULT_HISTORY_LIMIT};

/// Builds a fresh, empty store keeping the history of the given number of revisions.
pub type Factory<'a, S> = &'a mut dyn FnMut(usize) -> S;

/// Runs every property of the suite, each on fresh stores from `make`.
pub fn run_all<S: ConfigStore>(make: Factory<'_, S>) {
    empty_store_is_revision_zero(make);
    commit_increments_revision_and_load_reflects_ops(make);
    multi_op_change_is_atomic_and_one_revision(make);
    later_op_on_the_same_resource_wins(make);
    invalid_name_rejects_the_whole_change(make);
    history_is_newest_first_with_summaries_and_op_counts(make);
    state_at_matches_every_past_load(make);
    state_at_above_current_is_unknown(make);
    history_is_pruned_past_the_limit(make);
    zero_history_limit_keeps_only_the_current_state(make);
    deleting_a_missing_resource_is_fine(make);
    resources_are_opaque_and_addressed_by_kind_and_id(make);
}

/// A never-written store is at revision 0, empty, without history, and its state at 0 is empty.
pub fn empty_store_is_revision_zero<S: ConfigStore>(make: Factory<'_, S>) {
    let store = make(DEFAULT_HISTORY_LIMIT);
    assert_eq!(store.revision().unwrap(), 0);
    assert_eq!(store.load().unwrap(), StoredState::default());
    assert!(store.history(10).unwrap().is_empty());
    assert_eq!(store.state_at(0).unwrap(), StoredState::default());
}

/// Each commit adds 1 to the revision, even an empty one, and `load` shows puts, replacements
/// and deletes.
pub fn commit_increments_revision_and_load_reflects_ops<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    let rev = store.commit(Change::new("create", vec![Op::put("routes", "a", "1"), Op::put("routes", "b", "2")]));
    assert_eq!(rev.unwrap(), 1);
    assert_eq!(store.revision().unwrap(), 1);
    assert_eq!(store.load().unwrap(), state(1, &[("routes", "a", "1"), ("routes", "b", "2")]));

    let rev = store.commit(Change::new("edit", vec![Op::put("routes", "a", "1b"), Op::delete("routes", "b")]));
    assert_eq!(rev.unwrap(), 2);
    assert_eq!(store.load().unwrap(), state(2, &[("routes", "a", "1b")]));

    assert_eq!(store.commit(Change::new("nothing", vec![])).unwrap(), 3);
    assert_eq!(store.revision().unwrap(), 3);
    assert_eq!(store.load().unwrap(), state(3, &[("routes", "a", "1b")]));
}

/// A change of many ops becomes exactly one revision holding all of them.
pub fn multi_op_change_is_atomic_and_one_revision<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    store.commit(Change::new("seed", vec![Op::put("upstreams", "u", "old")])).unwrap();
    let ops = vec![
        Op::put("upstreams", "u", "new"),
        Op::put("routes", "r1", "x"),
        Op::put("routes", "r2", "y"),
        Op::delete("consumers", "nobody"),
    ];
    assert_eq!(store.commit(Change::new("batch", ops)).unwrap(), 2);
    assert_eq!(
        store.load().unwrap(),
        state(2, &[("routes", "r1", "x"), ("routes", "r2", "y"), ("upstreams", "u", "new")])
    );
    let history = store.history(10).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!((history[0].revision, history[0].ops, history[0].summary.as_str()), (2, 4, "batch"));
    assert_eq!(store.state_at(1).unwrap(), state(1, &[("upstreams", "u", "old")]));
}

/// When a change touches one resource several times, the last op wins.
pub fn later_op_on_the_same_resource_wins<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    store.commit(Change::new("seed", vec![Op::put("k", "b", "0"), Op::put("k", "c", "0")])).unwrap();
    let ops = vec![
        Op::put("k", "a", "1"),
        Op::put("k", "a", "2"),
        Op::delete("k", "b"),
        Op::put("k", "b", "3"),
        Op::put("k", "c", "4"),
        Op::delete("k", "c"),
        Op::put("k", "d", "5"),
        Op::delete("k", "d"),
    ];
    store.commit(Change::new("churn", ops)).unwrap();
    assert_eq!(store.load().unwrap(), state(2, &[("k", "a", "2"), ("k", "b", "3")]));
    assert_eq!(store.history(1).unwrap()[0].ops, 8);
    assert_eq!(store.state_at(1).unwrap(), state(1, &[("k", "b", "0"), ("k", "c", "0")]));
}

/// A NUL byte in any kind or id fails the whole change: nothing applies, no revision is added.
pub fn invalid_name_rejects_the_whole_change<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    store.commit(Change::new("seed", vec![Op::put("k", "a", "1")])).unwrap();
    for bad in [Op::put("k\0x", "b", "2"), Op::put("k", "b\0", "2"), Op::delete("\0", "a")] {
        let ops = vec![Op::put("k", "a", "changed"), bad, Op::put("k", "c", "3")];
        let err = store.commit(Change::new("bad", ops)).unwrap_err();
        assert!(matches!(err, StoreError::InvalidName { .. }), "unexpected error: {err}");
    }
    assert_eq!(store.revision().unwrap(), 1);
    assert_eq!(store.load().unwrap(), state(1, &[("k", "a", "1")]));
    assert_eq!(store.history(10).unwrap().len(), 1);
    assert_eq!(store.commit(Change::new("good", vec![Op::put("k", "b", "2")])).unwrap(), 2);
}

/// The history lists revisions newest first, with their summaries, op counts and commit times,
/// and honours its `limit` argument.
pub fn history_is_newest_first_with_summaries_and_op_counts<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    let started = now_ms();
    for rev in 1..=5_u64 {
        let ops = (0..rev).map(|i| Op::put("k", format!("{i}"), format!("{rev}"))).collect();
        assert_eq!(store.commit(Change::new(format!("change {rev}"), ops)).unwrap(), rev);
    }
    let finished = now_ms();

    let history = store.history(100).unwrap();
    assert_eq!(history.iter().map(|info| info.revision).collect::<Vec<_>>(), [5, 4, 3, 2, 1]);
    for info in &history {
        assert_eq!(info.summary, format!("change {}", info.revision));
        assert_eq!(info.ops as u64, info.revision);
        assert!((started..=finished).contains(&info.unix_ms), "commit time {} outside the test", info.unix_ms);
    }
    assert_eq!(store.history(2).unwrap(), history[..2]);
    assert!(store.history(0).unwrap().is_empty());
}

/// For every past revision, including 0, `state_at` returns exactly what `load` returned right
/// after that revision was committed, and asking for it changes nothing.
pub fn state_at_matches_every_past_load<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    let script: Vec<Vec<Op>> = vec![
        vec![Op::put("routes", "a", "a1")],
        vec![Op::put("routes", "b", "b1"), Op::put("upstreams", "u", "u1")],
        vec![Op::put("routes", "a", "a2")],
        vec![],
        vec![Op::delete("routes", "b")],
        vec![Op::delete("routes", "b"), Op::delete("routes", "never")],
        vec![Op::put("routes", "b", "b2"), Op::delete("upstreams", "u")],
        vec![Op::put("routes", "a", "a2")],
        vec![Op::put("consumers", "c", ""), Op::put("routes", "a", "a3"), Op::delete("routes", "a")],
        vec![Op::put("upstreams", "u", "u1")],
        vec![Op::put("upstreams", "u", "u2"), Op::put("upstreams", "u", "u1")],
    ];
    let mut loads = vec![store.load().unwrap()];
    for (i, ops) in script.into_iter().enumerate() {
        store.commit(Change::new(format!("step {i}"), ops)).unwrap();
        loads.push(store.load().unwrap());
    }
    let current = loads.last().cloned().unwrap();
    for (rev, expected) in loads.iter().enumerate() {
        assert_eq!(&store.state_at(rev as u64).unwrap(), expected, "state at revision {rev}");
    }
    assert_eq!(store.load().unwrap(), current);
    assert_eq!(store.revision().unwrap(), current.revision);
}

/// A revision above the current one is unknown.
pub fn state_at_above_current_is_unknown<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    assert!(matches!(store.state_at(1), Err(StoreError::UnknownRevision(1))));
    store.commit(Change::new("one", vec![Op::put("k", "a", "1")])).unwrap();
    store.commit(Change::new("two", vec![])).unwrap();
    assert!(matches!(store.state_at(3), Err(StoreError::UnknownRevision(3))));
    assert!(matches!(store.state_at(u64::MAX), Err(StoreError::UnknownRevision(u64::MAX))));
    assert_eq!(store.state_at(2).unwrap(), state(2, &[("k", "a", "1")]));
}

/// Only the last `limit` revisions keep their history; older states report `Pruned`.
pub fn history_is_pruned_past_the_limit<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(3);
    let mut loads = vec![store.load().unwrap()];
    for rev in 1..=10_u64 {
        let ops = vec![Op::put("k", "counter", rev.to_string()), Op::put("k", format!("only-{rev}"), "x")];
        store.commit(Change::new(format!("change {rev}"), ops)).unwrap();
        loads.push(store.load().unwrap());
        if rev >= 4 {
            assert!(matches!(store.state_at(rev - 4), Err(StoreError::Pruned { .. })), "after revision {rev}");
        }
    }
    let history = store.history(100).unwrap();
    assert_eq!(history.iter().map(|info| info.revision).collect::<Vec<_>>(), [10, 9, 8]);
    for rev in 7..=10 {
        assert_eq!(store.state_at(rev).unwrap(), loads[rev as usize], "state at revision {rev}");
    }
    for rev in [0, 3, 6] {
        match store.state_at(rev) {
            Err(StoreError::Pruned { revision, oldest }) => assert_eq!((revision, oldest), (rev, 7)),
            other => panic!("state at revision {rev}: expected Pruned, got {other:?}"),
        }
    }
}

/// With a history limit of 0 nothing is recorded; only the current state is reachable.
pub fn zero_history_limit_keeps_only_the_current_state<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(0);
    assert_eq!(store.state_at(0).unwrap(), StoredState::default());
    store.commit(Change::new("one", vec![Op::put("k", "a", "1")])).unwrap();
    store.commit(Change::new("two", vec![Op::put("k", "b", "2")])).unwrap();
    assert!(store.history(10).unwrap().is_empty());
    assert_eq!(store.state_at(2).unwrap(), store.load().unwrap());
    assert!(matches!(store.state_at(1), Err(StoreError::Pruned { revision: 1, oldest: 2 })));
}

/// Deleting a resource that does not exist commits normally and changes nothing else.
pub fn deleting_a_missing_resource_is_fine<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    assert_eq!(store.commit(Change::new("delete", vec![Op::delete("routes", "ghost")])).unwrap(), 1);
    assert_eq!(store.load().unwrap(), state(1, &[]));
    assert_eq!(store.history(1).unwrap()[0].ops, 1);
    store.commit(Change::new("put", vec![Op::put("routes", "real", "1")])).unwrap();
    store.commit(Change::new("delete again", vec![Op::delete("routes", "ghost")])).unwrap();
    assert_eq!(store.load().unwrap(), state(3, &[("routes", "real", "1")]));
    assert_eq!(store.state_at(0).unwrap(), StoredState::default());
    assert_eq!(store.state_at(1).unwrap(), state(1, &[]));
}

/// Values are stored byte for byte (empty, binary, non-UTF-8), and kinds and ids that share a
/// prefix or hold separators stay distinct.
pub fn resources_are_opaque_and_addressed_by_kind_and_id<S: ConfigStore>(make: Factory<'_, S>) {
    let mut store = make(DEFAULT_HISTORY_LIMIT);
    let binary: Vec<u8> = (0..=255).collect();
    let ops = vec![
        Op::put("route", "s", "singular"),
        Op::put("routes", "", "empty id"),
        Op::put("", "empty kind", "x"),
        Op::put("routes", "a/b", vec![0xff, 0xfe, 0x00]),
        Op::put("routes", "a", Vec::new()),
        Op::put("routes", "ünïcødé 🚀", binary.clone()),
        Op::put("routesa", "", "longer kind"),
    ];
    store.commit(Change::new("odd names", ops)).unwrap();
    let loaded = store.load().unwrap();
    let mut expected = BTreeMap::new();
    expected.insert(key("route", "s"), b"singular".to_vec());
    expected.insert(key("routes", ""), b"empty id".to_vec());
    expected.insert(key("", "empty kind"), b"x".to_vec());
    expected.insert(key("routes", "a/b"), vec![0xff, 0xfe, 0x00]);
    expected.insert(key("routes", "a"), Vec::new());
    expected.insert(key("routes", "ünïcødé 🚀"), binary);
    expected.insert(key("routesa", ""), b"longer kind".to_vec());
    assert_eq!(loaded.resources, expected);

    store.commit(Change::new("delete empty", vec![Op::delete("routes", "a"), Op::delete("routes", "")])).unwrap();
    expected.remove(&key("routes", "a"));
    expected.remove(&key("routes", ""));
    assert_eq!(store.load().unwrap().resources, expected);
    assert_eq!(store.state_at(1).unwrap(), loaded);
}

fn key(kind: &str, id: &str) -> (String, String) {
    (kind.to_owned(), id.to_owned())
}

fn state(revision: u64, resources: &[(&str, &str, &str)]) -> StoredState {
    let resources = resources.iter().map(|(kind, id, value)| (key(kind, id), value.as_bytes().to_vec())).collect();
    StoredState { revision, resources }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}
