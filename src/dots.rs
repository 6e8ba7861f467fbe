//! The identity of this node's map and counter writes: its current actor,
//! and the sequence numbers of its counter increments.
//!
//! A map write is named by `(actor, time)`, where the time is the write's
//! version time, which the clock already makes unique. A counter increment
//! is named by `(actor, seq)`, where `seq` counts this actor's increments of
//! one counter (one key, one generation) from 1 without gaps, so that every
//! replica can fold an actor's increments into one sum and still recognise
//! a replayed one (see [`crate::crdt::PnCounter`]). The node must therefore
//! remember the last sequence number it issued for each counter, whether or
//! not it is a replica of it: its store may lack its own recent increments
//! (still in a hint, or coordinated while it was not a replica).
//!
//! That table lives in memory only. A node that restarts forgets it, and
//! takes a new incarnation, so it is a new actor whose sequences start
//! afresh and never collide with its earlier life's. To bound the table, a
//! node that has issued increments for [`Dots::capacity`] counters also
//! takes a new incarnation and clears the table: each counter it increments
//! afterwards gains one more actor (a few dozen bytes), which is the price
//! of the bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::crdt::{Actor, PnCounter, Version};
use crate::store::Key;

/// How many counters one incarnation issues increments for before it
/// renews itself: about 100 bytes of table each, plus the key.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// The last incarnation drawn in this process: incarnations are drawn from
/// the physical clock, and this keeps two drawn in the same instant (or by
/// a clock that stepped back) apart.
static LAST_INCARNATION: AtomicU64 = AtomicU64::new(0);

/// A fresh incarnation: `now` (NTP64), or just after the last one drawn in
/// this process when that is later. Across restarts, uniqueness rests on
/// the physical clock moving forward between two starts.
fn fresh_incarnation(now: u64) -> u64 {
    let previous = LAST_INCARNATION
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    now.max(previous.saturating_add(1))
}

struct Table {
    incarnation: u64,
    /// The last sequence number issued, per counter (key and generation).
    last: HashMap<(Key, Version), u64>,
}

/// Issues this node's actor and counter sequence numbers.
pub struct Dots {
    node: u64,
    capacity: usize,
    table: Mutex<Table>,
}

impl Dots {
    /// The dots of node `node` (its clock id), starting a new incarnation
    /// at `now` (NTP64), renewing it every [`DEFAULT_CAPACITY`] counters.
    pub fn new(node: u64, now: u64) -> Self {
        Self::with_capacity(node, now, DEFAULT_CAPACITY)
    }

    /// [`Dots::new`] with the table bounded at `capacity` counters.
    pub fn with_capacity(node: u64, now: u64, capacity: usize) -> Self {
        Self {
            node,
            capacity: capacity.max(1),
            table: Mutex::new(Table {
                incarnation: fresh_incarnation(now),
                last: HashMap::new(),
            }),
        }
    }

    /// The dots of node `node` as incarnation `incarnation`, drawn by the
    /// caller: for a shell that must draw incarnations deterministically
    /// (the simulator) instead of from this process's physical clock.
    pub fn with_incarnation(node: u64, incarnation: u64, capacity: usize) -> Self {
        Self {
            node,
            capacity: capacity.max(1),
            table: Mutex::new(Table {
                incarnation,
                last: HashMap::new(),
            }),
        }
    }

    /// How many counters an incarnation issues increments for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The current incarnation: the actor of this node's map writes is
    /// `(clock id, incarnation)`.
    pub fn incarnation(&self) -> u64 {
        self.table().incarnation
    }

    /// The dot of a new increment of the counter at `key` of generation
    /// `generation`: this node's actor and the next sequence number, never
    /// below what `observed` (the counter as the coordinator sees it)
    /// already holds of that actor. `now` (NTP64) seeds a new incarnation
    /// when the table is full.
    pub fn next_increment(
        &self,
        key: &str,
        generation: Version,
        observed: Option<&PnCounter>,
        now: u64,
    ) -> (Actor, u64) {
        let mut table = self.table();
        let slot = (Key::from(key), generation);
        if !table.last.contains_key(&slot) && table.last.len() >= self.capacity {
            table.incarnation = fresh_incarnation(now);
            table.last.clear();
            tracing::info!(
                counters = self.capacity,
                "counter sequence table full; this node continues as a new actor"
            );
        }
        let actor = Actor::new(self.node, table.incarnation);
        let floor = observed.map_or(1, |c| c.next_seq(actor));
        let last = table.last.entry(slot).or_insert(0);
        *last = last.saturating_add(1).max(floor);
        (actor, *last)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_per_counter_without_gaps() {
        let dots = Dots::new(7, 100);
        let g = Version::default();
        let (a, s1) = dots.next_increment("x", g, None, 100);
        let (_, s2) = dots.next_increment("x", g, None, 100);
        let (_, other) = dots.next_increment("y", g, None, 100);
        let (_, new_generation) = dots.next_increment("x", Version::new(5, 1), None, 100);
        assert_eq!((s1, s2, other, new_generation), (1, 2, 1, 1));
        assert_eq!(a, Actor::new(7, dots.incarnation()));
    }

    #[test]
    fn never_below_what_the_counter_holds_of_this_actor() {
        let dots = Dots::new(7, 100);
        let g = Version::default();
        let actor = Actor::new(7, dots.incarnation());
        let held = PnCounter::increment(g, actor, 5, 1);
        assert_eq!(dots.next_increment("x", g, Some(&held), 100).1, 6);
        assert_eq!(dots.next_increment("x", g, None, 100).1, 7);
    }

    #[test]
    fn incarnations_are_unique_and_a_full_table_renews_the_actor() {
        let a = Dots::new(1, 50);
        let b = Dots::new(1, 50);
        assert_ne!(a.incarnation(), b.incarnation(), "two lives in one instant");
        let dots = Dots::with_capacity(1, 10, 2);
        let g = Version::default();
        let (first, _) = dots.next_increment("a", g, None, 10);
        dots.next_increment("b", g, None, 10);
        assert_eq!(dots.next_increment("a", g, None, 10), (first, 2));
        let (renewed, seq) = dots.next_increment("c", g, None, 10);
        assert_ne!(renewed, first);
        assert_eq!(seq, 1);
        assert_eq!(dots.next_increment("a", g, None, 10), (renewed, 1));
    }
}
