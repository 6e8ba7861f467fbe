//! Bugs the simulator's own tests plant in the replication logic, to show
//! that the checker catches them: the seam through which they enter the
//! code they break. Test builds only: the switch does not exist in any
//! other build. Per thread, so tests running side by side do not see each
//! other's bugs.

use std::cell::Cell;

/// A bug that can be planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Merge keeps the entry with the smaller version.
    SmallerVersionWins,
    /// Settled entries are collected without waiting for every replica to
    /// confirm that it holds them.
    CollectUnacknowledged,
    /// A counter increment delivered again (a duplicate, a retry, a
    /// repair) is counted again.
    DuplicateCountedTwice,
    /// LOCAL_ONE and LOCAL_QUORUM count the replicas of every region, as
    /// many as the local region would need.
    LocalLevelsCountAnyRegion,
}

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` on this thread until the guard is dropped.
pub fn plant(bug: Bug) -> Planted {
    PLANTED.with(|p| p.set(Some(bug)));
    Planted(())
}

/// Whether `bug` is planted on this thread.
pub fn is(bug: Bug) -> bool {
    PLANTED.with(|p| p.get()) == Some(bug)
}

/// Removes the planted bug when dropped.
pub struct Planted(());

impl Drop for Planted {
    fn drop(&mut self) {
        PLANTED.with(|p| p.set(None));
    }
}
