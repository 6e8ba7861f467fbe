//! Conflict-free replicated values and their merge laws.
//!
//! Everything a replica stores is an [`Entry`]: a string or tombstone (a
//! last-writer-wins register), an observed-remove map ([`OrMap`]) or a
//! PN-counter ([`PnCounter`]). Merging two copies is the only way a stored
//! value changes. Because merge is commutative, associative and idempotent,
//! replicas that saw the same writes in any order, any number of times,
//! hold the same state. [`ops`] builds the delta each client operation
//! writes. This module knows nothing of the store, the network or gRPC.

mod actor;
mod counter;
mod entry;
mod map;
pub mod ops;
mod version;

pub use actor::Actor;
pub use counter::{ActorCount, PnCounter, COUNTER_SEED};
pub use entry::{Entry, Held, Kind, Payload};
pub use map::{add_hash, Add, Field, OrMap, FIELD_OVERHEAD, MAP_ADD_SEED};
pub use version::Version;

/// The merge laws every value here obeys, checked the same way for each.
#[cfg(test)]
pub(crate) mod laws {
    use std::fmt::Debug;

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    /// Fails unless `join` is commutative, associative and idempotent on
    /// `a`, `b` and `c`.
    pub fn check<T: Clone + PartialEq + Debug>(
        a: &T,
        b: &T,
        c: &T,
        join: impl Fn(T, T) -> T,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            join(a.clone(), b.clone()),
            join(b.clone(), a.clone()),
            "commutative"
        );
        prop_assert_eq!(
            join(join(a.clone(), b.clone()), c.clone()),
            join(a.clone(), join(b.clone(), c.clone())),
            "associative"
        );
        let once = join(a.clone(), b.clone());
        prop_assert_eq!(join(once.clone(), b.clone()), once.clone(), "idempotent");
        prop_assert_eq!(join(once.clone(), once.clone()), once, "idempotent");
        Ok(())
    }
}
