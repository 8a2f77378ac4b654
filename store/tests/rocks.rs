//! Properties only a durable store has: reopening, and surviving a killed writer.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::TempDir;
use ringway_store::{Change, ConfigStore, MemoryStore, Op, RevisionInfo, RocksStore, StoreError};

/// Set in the environment of the child process that `killed_writer_leaves_a_whole_revision`
/// spawns; holds the store directory the child writes to.
const CRASH_CHILD_ENV: &str = "RINGWAY_STORE_CRASH_CHILD_DIR";

/// A deterministic change for step `n`: replaces, creates and deletes resources of several
/// kinds, sometimes deleting what does not exist, sometimes nothing at all.
fn scripted_change(n: u64) -> Change {
    let mut ops = Vec::new();
    if !n.is_multiple_of(7) {
        ops.push(Op::put("routes", format!("r{}", n % 13), format!("{{\"step\":{n}}}")));
        ops.push(Op::put("upstreams", format!("u{}", n % 5), n.to_be_bytes().to_vec()));
    }
    if n.is_multiple_of(3) {
        ops.push(Op::delete("routes", format!("r{}", (n / 3) % 13)));
    }
    if n.is_multiple_of(11) {
        ops.push(Op::delete("consumers", "never-created"));
    }
    Change::new(format!("step {n}"), ops)
}

/// History entries without their commit times, which differ between two stores.
fn without_times(history: Vec<RevisionInfo>) -> Vec<(u64, String, usize)> {
    history.into_iter().map(|info| (info.revision, info.summary, info.ops)).collect()
}

#[test]
fn reopen_after_drop_returns_the_same_state_revision_and_history() {
    let dir = TempDir::new("reopen");
    let (load, history, past) = {
        let mut store = RocksStore::open(dir.path()).unwrap();
        let mut past = vec![store.load().unwrap()];
        for n in 1..=20 {
            store.commit(scripted_change(n)).unwrap();
            past.push(store.load().unwrap());
        }
        (store.load().unwrap(), store.history(usize::MAX).unwrap(), past)
    };

    let mut store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.revision().unwrap(), 20);
    assert_eq!(store.load().unwrap(), load);
    assert_eq!(store.history(usize::MAX).unwrap(), history);
    for (rev, expected) in past.iter().enumerate() {
        assert_eq!(&store.state_at(rev as u64).unwrap(), expected, "state at revision {rev}");
    }

    assert_eq!(store.commit(scripted_change(21)).unwrap(), 21);
    drop(store);
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.revision().unwrap(), 21);
    assert_eq!(store.state_at(20).unwrap(), load);
}

#[test]
fn many_commits_then_reopen_serve_exactly_the_last_revision() {
    let dir = TempDir::new("many");
    let mut model = MemoryStore::with_history_limit(50);
    {
        let mut store = RocksStore::open_with_history_limit(dir.path(), 50).unwrap();
        for n in 1..=300 {
            let change = scripted_change(n);
            assert_eq!(store.commit(change.clone()).unwrap(), model.commit(change).unwrap());
        }
    }

    let store = RocksStore::open_with_history_limit(dir.path(), 50).unwrap();
    assert_eq!(store.revision().unwrap(), 300);
    assert_eq!(store.load().unwrap(), model.load().unwrap());
    assert_eq!(without_times(store.history(usize::MAX).unwrap()), without_times(model.history(usize::MAX).unwrap()));
    for rev in [250, 251, 275, 299, 300] {
        assert_eq!(store.state_at(rev).unwrap(), model.state_at(rev).unwrap(), "state at revision {rev}");
    }
    assert!(matches!(store.state_at(249), Err(StoreError::Pruned { revision: 249, oldest: 250 })));
}

#[test]
fn reopening_with_another_history_limit_moves_the_window() {
    let dir = TempDir::new("limit");
    let mut model = MemoryStore::new();
    {
        let mut store = RocksStore::open_with_history_limit(dir.path(), 10).unwrap();
        for n in 1..=20 {
            store.commit(scripted_change(n)).unwrap();
            model.commit(scripted_change(n)).unwrap();
        }
    }
    {
        let mut store = RocksStore::open_with_history_limit(dir.path(), 3).unwrap();
        assert_eq!(store.history(usize::MAX).unwrap().len(), 3);
        assert!(matches!(store.state_at(16), Err(StoreError::Pruned { revision: 16, oldest: 17 })));
        assert_eq!(store.state_at(17).unwrap(), model.state_at(17).unwrap());
        store.commit(scripted_change(21)).unwrap();
        model.commit(scripted_change(21)).unwrap();
    }
    let store = RocksStore::open_with_history_limit(dir.path(), 10).unwrap();
    let revisions: Vec<u64> = store.history(usize::MAX).unwrap().iter().map(|info| info.revision).collect();
    assert_eq!(revisions, [21, 20, 19]);
    assert_eq!(store.state_at(18).unwrap(), model.state_at(18).unwrap());
    assert!(matches!(store.state_at(17), Err(StoreError::Pruned { revision: 17, oldest: 18 })));
}

#[test]
fn default_history_limit_is_one_thousand_revisions() {
    let dir = TempDir::new("default-limit");
    let mut store = RocksStore::open(dir.path()).unwrap();
    for n in 1..=1_003 {
        store.commit(Change::new(format!("step {n}"), vec![Op::put("k", "n", n.to_string())])).unwrap();
    }
    let history = store.history(usize::MAX).unwrap();
    assert_eq!(history.len(), ringway_store::DEFAULT_HISTORY_LIMIT);
    assert_eq!(history.last().map(|info| info.revision), Some(4));
    assert_eq!(store.state_at(3).unwrap().resources.get(&("k".into(), "n".into())), Some(&b"3".to_vec()));
    assert!(matches!(store.state_at(2), Err(StoreError::Pruned { revision: 2, oldest: 3 })));
}

/// The writer half of `killed_writer_leaves_a_whole_revision`: does nothing unless started by
/// it. Commits changes forever, each rewriting five resources and moving a marker, and reports
/// each committed revision on stdout.
#[test]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let mut store = RocksStore::open(std::path::Path::new(&dir)).unwrap();
    loop {
        let next = store.revision().unwrap() + 1;
        let mut ops: Vec<Op> = ["a", "b", "c", "d", "e"].iter().map(|id| Op::put("k", *id, next.to_string())).collect();
        ops.push(Op::delete("marker", (next - 1).to_string()));
        ops.push(Op::put("marker", next.to_string(), vec![b'x'; 4096]));
        let committed = store.commit(Change::new(format!("step {next}"), ops)).unwrap();
        println!("committed {committed}");
    }
}

/// Kills (SIGKILL) a process in the middle of a stream of commits, several times, and checks
/// that each reopened store holds exactly one whole revision.
#[test]
fn killed_writer_leaves_a_whole_revision() {
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut previous = 0;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args(["crash_child_writer", "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let target = previous + 30;
        let reached = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| {
            line.strip_prefix("committed ").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= target)
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(reached, "round {round}: the writer stopped before revision {target}");

        let store = RocksStore::open(dir.path()).unwrap();
        let revision = store.revision().unwrap();
        assert!(revision >= target, "round {round}: revision {revision} is below the reported {target}");
        let state = store.load().unwrap();
        assert_eq!(state.revision, revision);
        let expected = revision.to_string().into_bytes();
        for id in ["a", "b", "c", "d", "e"] {
            assert_eq!(state.resources.get(&("k".into(), id.into())), Some(&expected), "resource {id}");
        }
        let markers: Vec<&String> =
            state.resources.keys().filter(|(kind, _)| kind == "marker").map(|(_, id)| id).collect();
        assert_eq!(markers, [&revision.to_string()]);
        assert_eq!(store.history(1).unwrap()[0].revision, revision);
        let before = store.state_at(revision - 1).unwrap();
        assert_eq!(before.resources.get(&("k".into(), "a".into())), Some(&(revision - 1).to_string().into_bytes()));
        previous = revision;
    }
}
