//! Deterministic simulation of a cluster (placeholder while it is built).

#[cfg(test)]
pub mod planted;
