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
