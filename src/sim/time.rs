//! Virtual time, and each simulated node's physical clock read from it.
//!
//! The node's hybrid logical clock takes its physical time from a plain
//! function ([`crate::clock::PhysicalClock`]); [`physical`] is that
//! function here. It reads the simulation's current instant plus the offset
//! of the node whose code is running, both kept in a thread-local: the
//! simulator runs on one thread and sets the running node before it calls
//! into a node's state.

use std::cell::RefCell;

use uhlc::NTP64;

/// Where virtual time starts on every node's wall clock: 2026-01-01
/// (seconds since the UNIX epoch), so versions look like real ones.
const EPOCH_SECS: u64 = 1_767_225_600;

struct Clocks {
    now_us: u64,
    offsets_us: Vec<i64>,
    running: usize,
}

thread_local! {
    static CLOCKS: RefCell<Clocks> = const {
        RefCell::new(Clocks { now_us: 0, offsets_us: Vec::new(), running: 0 })
    };
}

/// Resets the clocks for a run of `nodes` nodes at virtual time 0.
pub fn reset(nodes: usize) {
    CLOCKS.with(|c| {
        *c.borrow_mut() = Clocks {
            now_us: 0,
            offsets_us: vec![0; nodes],
            running: 0,
        }
    });
}

/// Moves virtual time to `now_us` microseconds.
pub fn advance_to(now_us: u64) {
    CLOCKS.with(|c| c.borrow_mut().now_us = now_us);
}

/// Makes `node` the one whose code runs (whose clock [`physical`] reads).
pub fn run_as(node: usize) {
    CLOCKS.with(|c| c.borrow_mut().running = node);
}

/// Sets how far `node`'s wall clock is from true (virtual) time.
pub fn set_offset(node: usize, offset_us: i64) {
    CLOCKS.with(|c| {
        let mut c = c.borrow_mut();
        if c.offsets_us.len() <= node {
            c.offsets_us.resize(node + 1, 0);
        }
        c.offsets_us[node] = offset_us;
    });
}

/// `node`'s wall clock offset.
pub fn offset(node: usize) -> i64 {
    CLOCKS.with(|c| c.borrow().offsets_us.get(node).copied().unwrap_or(0))
}

/// True time (no offset) in NTP64 at virtual `now_us`.
pub fn true_ntp64(now_us: u64) -> u64 {
    to_ntp64(EPOCH_SECS as i128 * 1_000_000 + i128::from(now_us))
}

/// The running node's wall clock: virtual time plus its offset, in NTP64.
pub fn physical() -> NTP64 {
    CLOCKS.with(|c| {
        let c = c.borrow();
        let offset = c.offsets_us.get(c.running).copied().unwrap_or(0);
        NTP64(to_ntp64(
            EPOCH_SECS as i128 * 1_000_000 + i128::from(c.now_us) + i128::from(offset),
        ))
    })
}

/// Virtual time (NTP64 from the start of the run), as every node's
/// monotonic clock reads it: it never jumps.
pub fn monotonic() -> u64 {
    CLOCKS.with(|c| to_ntp64(i128::from(c.borrow().now_us)))
}

/// `node`'s wall clock now, in NTP64: what [`physical`] reads while it runs.
pub fn wall(node: usize) -> u64 {
    CLOCKS.with(|c| {
        let c = c.borrow();
        let offset = c.offsets_us.get(node).copied().unwrap_or(0);
        to_ntp64(EPOCH_SECS as i128 * 1_000_000 + i128::from(c.now_us) + i128::from(offset))
    })
}

fn to_ntp64(us: i128) -> u64 {
    let us = us.max(0) as u128;
    let secs = us / 1_000_000;
    let frac = ((us % 1_000_000) << 32) / 1_000_000;
    ((secs << 32) | frac) as u64
}
