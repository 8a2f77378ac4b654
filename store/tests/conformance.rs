//! Runs every property of `ringway_store::conformance` against both implementations, one test
//! per property and backend.

mod common;

use common::TempDir;
use ringway_store::{conformance, MemoryStore, RocksStore};

/// Runs `property` on fresh RocksDB stores, each in its own temporary directory; the
/// directories are removed once the property has run and its stores are dropped.
fn on_rocks(property: fn(conformance::Factory<'_, RocksStore>)) {
    let mut dirs = Vec::new();
    property(&mut |history_limit| {
        let dir = TempDir::new("conformance");
        let store = RocksStore::open_with_history_limit(dir.path(), history_limit).expect("open a fresh store");
        dirs.push(dir);
        store
    });
}

macro_rules! properties {
    ($($property:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[test]
                fn $property() {
                    conformance::$property(&mut MemoryStore::with_history_limit);
                }
            )*
        }

        mod rocks {
            use super::*;
            $(
                #[test]
                fn $property() {
                    on_rocks(conformance::$property);
                }
            )*
        }
    };
}

properties!(
    empty_store_is_revision_zero,
    commit_increments_revision_and_load_reflects_ops,
    multi_op_change_is_atomic_and_one_revision,
    later_op_on_the_same_resource_wins,
    invalid_name_rejects_the_whole_change,
    history_is_newest_first_with_summaries_and_op_counts,
    state_at_matches_every_past_load,
    state_at_above_current_is_unknown,
    history_is_pruned_past_the_limit,
    zero_history_limit_keeps_only_the_current_state,
    deleting_a_missing_resource_is_fine,
    resources_are_opaque_and_addressed_by_kind_and_id,
);

#[test]
fn run_all_covers_both_backends() {
    conformance::run_all(&mut MemoryStore::with_history_limit);
    on_rocks(conformance::run_all);
}
