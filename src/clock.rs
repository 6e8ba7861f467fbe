//! The node's hybrid logical clock: issues the version of every write.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use uhlc::{HLCBuilder, Timestamp, HLC, ID, NTP64};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::crdt::Version;

/// Seed of the hash that turns a node id into a clock id. Fixed forever:
/// changing it would give every node a new clock id.
const CLOCK_ID_SEED: u64 = 0x6b76_636c_6f63_6b31;

/// A source of physical time in NTP64, such as [`system_time`]. A plain
/// function (uhlc's interface), so tests and the simulator can substitute
/// their own time.
pub type PhysicalClock = fn() -> NTP64;

/// The system's wall clock.
pub fn system_time() -> NTP64 {
    uhlc::system_time_clock()
}

/// A duration in NTP64 units (2^32 per second), saturating at 2^32 seconds.
pub fn ntp64(d: Duration) -> u64 {
    let secs = d.as_secs().min(u64::from(u32::MAX));
    (secs << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// Why a version could not be issued.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClockError {
    /// The key's stored version is at the very end of the 64-bit time range,
    /// so no greater version exists.
    #[error(
        "the stored version {0} is at the end of the clock's range; no newer version can be issued"
    )]
    Exhausted(Version),
}

/// One node's hybrid logical clock (uhlc), identified by a clock id derived
/// from the node id so that a restarted node keeps it.
pub struct Clock {
    hlc: HLC,
    id: u64,
    physical: PhysicalClock,
    drift_events: AtomicU64,
    /// The time of the last version `stamp_after` issued. The HLC alone
    /// does not remember a stamp above a floor beyond the drift bound (it
    /// refuses to move that far), so two writes over the same far-future
    /// floor would get the same version; this keeps every version this
    /// clock issues distinct.
    last_issued: AtomicU64,
}

impl Clock {
    /// A clock for `node_id` reading physical time from `physical`. Remote
    /// stamps further ahead than `max_drift` will not move it.
    pub fn new(node_id: &str, physical: PhysicalClock, max_drift: Duration) -> Self {
        let id = clock_id(node_id);
        let hlc = HLCBuilder::new()
            .with_id(remote_id(id))
            .with_clock(physical)
            .with_max_delta(max_drift)
            .build();
        Self {
            hlc,
            id,
            physical,
            drift_events: AtomicU64::new(0),
            last_issued: AtomicU64::new(0),
        }
    }

    /// The id this clock stamps into versions.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Physical time now (NTP64), for expiry decisions. Not a version: it
    /// does not advance the logical clock.
    pub fn now(&self) -> u64 {
        (self.physical)().0
    }

    /// A fresh version greater than every version this clock issued or
    /// observed, and greater than `floor` (the key's stored version): the
    /// rule `max(hlc.now(), stored + 1)`, so that this node's write wins
    /// over a value stamped in the future by a fast clock elsewhere.
    pub fn stamp_after(&self, floor: Option<Version>) -> Result<Version, ClockError> {
        let now = self.hlc.new_timestamp().get_time().0;
        let wanted = match floor {
            Some(floor) if Version::new(now, self.id) <= floor => {
                let time = floor
                    .time
                    .checked_add(1)
                    .ok_or(ClockError::Exhausted(floor))?;
                // Keep later stamps above this one. When the floor is beyond
                // the drift bound the clock refuses to move, which is the
                // point of the bound; the write still wins its key.
                let _ = self
                    .hlc
                    .update_with_timestamp(&Timestamp::new(NTP64(time), *self.hlc.get_id()));
                time
            }
            _ => now,
        };
        let mut last = self.last_issued.load(Ordering::Relaxed);
        loop {
            let time = if wanted > last {
                wanted
            } else {
                last.checked_add(1)
                    .ok_or(ClockError::Exhausted(Version::new(last, self.id)))?
            };
            match self.last_issued.compare_exchange_weak(
                last,
                time,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(Version::new(time, self.id)),
                Err(seen) => last = seen,
            }
        }
    }
}

impl Clock {
    /// Observes a version that came from another node, so that this node's
    /// next stamps order after it. A version further ahead of the local
    /// physical clock than the drift bound does not move the clock (a
    /// runaway clock elsewhere must not drag every node into the future);
    /// the caller still merges its entry, since refusing it would leave
    /// replicas divergent. Returns whether the version was within the bound.
    pub fn observe(&self, remote: Version) -> bool {
        let stamp = Timestamp::new(NTP64(remote.time), remote_id(remote.node));
        match self.hlc.update_with_timestamp(&stamp) {
            Ok(()) => true,
            Err(_) => {
                self.drift_events.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    version = %remote,
                    ahead_ms = ((u128::from(remote.time.saturating_sub(self.now())) * 1000) >> 32) as u64,
                    "remote version beyond --max-clock-drift; merged without moving the clock"
                );
                false
            }
        }
    }

    /// A fresh stamp of this clock, for telling peers how far it has got.
    pub fn latest(&self) -> Version {
        let now = self.hlc.new_timestamp();
        Version::new(now.get_time().0, self.id)
    }

    /// Remote versions seen further ahead than the drift bound.
    pub fn drift_events(&self) -> u64 {
        self.drift_events.load(Ordering::Relaxed)
    }
}

/// A clock id as uhlc holds it (zero, never issued, maps to 1).
fn remote_id(node: u64) -> ID {
    ID::from(NonZeroU64::new(node).unwrap_or(NonZeroU64::MIN))
}

/// The clock id of a node: a stable 64-bit hash of its id, never zero.
pub fn clock_id(node_id: &str) -> u64 {
    xxh3_64_with_seed(node_id.as_bytes(), CLOCK_ID_SEED).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock::new("node-a", system_time, Duration::from_millis(500))
    }

    #[test]
    fn versions_increase_and_carry_the_clock_id() {
        let c = clock();
        let a = c.stamp_after(None).unwrap();
        let b = c.stamp_after(None).unwrap();
        assert!(b > a);
        assert_eq!(a.node, clock_id("node-a"));
    }

    #[test]
    fn a_write_wins_over_a_stored_version_from_the_future() {
        let c = clock();
        let future = Version::new(c.now() + (3600u64 << 32), u64::MAX);
        let v = c.stamp_after(Some(future)).unwrap();
        assert!(v > future);
        assert!(c.stamp_after(Some(v)).unwrap() > v);
    }

    /// Found by the simulator: two map writes over the same far-future
    /// floor got one version (so one dot) between them.
    #[test]
    fn stamps_over_the_same_far_floor_stay_distinct() {
        let c = clock();
        let future = Version::new(c.now() + (3600u64 << 32), u64::MAX);
        let a = c.stamp_after(Some(future)).unwrap();
        let b = c.stamp_after(Some(future)).unwrap();
        assert!(a > future && b > a);
        assert!(c.stamp_after(None).unwrap() > b);
    }

    #[test]
    fn the_end_of_time_is_an_error_not_a_lost_write() {
        let end = Version::new(u64::MAX, 1);
        assert_eq!(
            clock().stamp_after(Some(end)),
            Err(ClockError::Exhausted(end))
        );
    }

    #[test]
    fn observed_versions_within_the_bound_move_the_clock_and_others_do_not() {
        let c = clock();
        let near = Version::new(c.now() + (1u64 << 30), 7); // ~250 ms ahead
        assert!(c.observe(near));
        assert!(c.stamp_after(None).unwrap() > near);
        let far = Version::new(c.now() + (60u64 << 32), 7); // a minute ahead
        assert!(!c.observe(far));
        assert_eq!(c.drift_events(), 1);
        assert!(
            c.stamp_after(None).unwrap() < far,
            "the clock was not dragged"
        );
    }

    #[test]
    fn clock_ids_are_stable_and_distinct() {
        assert_eq!(clock_id("a"), clock_id("a"));
        assert_ne!(clock_id("a"), clock_id("b"));
    }
}
