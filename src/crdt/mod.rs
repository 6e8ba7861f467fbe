//! Conflict-free replicated values and their merge laws.
//!
//! Everything a replica stores is one of these types, and merging two copies
//! is the only way a stored value changes. Because merge is commutative,
//! associative and idempotent, replicas that saw the same writes in any order,
//! any number of times, hold the same state. This module knows nothing of the
//! store, the network or gRPC.

mod register;
mod version;

pub use register::{Entry, Payload};
pub use version::Version;
