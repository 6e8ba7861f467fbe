//! The node's hybrid logical clock: issues the version of every write.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use thiserror::Error;
use uhlc::{HLCBuilder, Timestamp, HLC, ID, NTP64};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::crdt::{Entry, Payload, Version};

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

/// The greatest version time any node admits or issues: 2^60 NTP64 units
/// (about 8.5 years) short of the end of the 64-bit range, that is, in
/// August 2097. Fixed and the same on every node, so that replicas never
/// disagree about which entries exist. A clock that reads past it, or a
/// forged or corrupted version such as 2^64 - 1, is refused where it enters
/// ([`Clock::admit`]) instead of ending its key's life: a key is written by
/// stamping past its stored version, which needs room above that version.
pub const MAX_VERSION_TIME: u64 = u64::MAX - (1 << 60);

/// How far ahead of this node's physical clock an entry from elsewhere may
/// be stamped (NTP64): seven days, far past any clock a node still serves
/// with (a node further than `--max-clock-drift` from its peers refuses to
/// coordinate writes). With it no admitted version is anywhere near the
/// ceiling, so every key can always be written over; a version refused
/// for it is admitted once the clocks have caught up with it.
pub const MAX_AHEAD: u64 = (7 * 24 * 3600) << 32;

/// How many keys may at once hold a stamp this clock issued above its own
/// logical time (see [`Clock::stamp_after`]); past it, the stamps the HLC has
/// overtaken go first, then the oldest.
const FAR_STAMPS: usize = 1 << 16;

/// Up to this many keys holding stamps above the HLC, every stamp that
/// consults them also drops the ones the HLC has overtaken, so that the
/// table empties (and stamping skips its lock again) once the clock has
/// caught up; above it, they go when the table is full.
const FAR_SWEEP: usize = 64;

/// Why a version could not be issued.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClockError {
    /// The key's stored version is at the ceiling of version times, so no
    /// greater version may be issued. No entry from elsewhere gets there
    /// (none more than [`MAX_AHEAD`] ahead is admitted): only this node's
    /// own clock reading past 2097 would.
    #[error(
        "the stored version {0} is at the ceiling of version times ({MAX_VERSION_TIME:#x}); no newer version can be issued"
    )]
    Exhausted(Version),
    /// This node's clock is further than the drift bound from the clocks of
    /// most of the peers it measured, so the versions and expiry instants
    /// it would issue are wrong by as much: it coordinates no writes until
    /// its clock agrees again.
    #[error(
        "this node's clock is about {offset_ms} ms {direction} {off} of the {measured} peers it measured, past --max-clock-drift ({max_drift_ms} ms); it coordinates no writes until its clock is corrected"
    )]
    Offset {
        /// The median offset of the disagreeing peers, in milliseconds.
        offset_ms: u64,
        /// "ahead of" or "behind".
        direction: &'static str,
        /// Peers whose clocks are provably further away than the bound.
        off: usize,
        /// Peers measured recently.
        measured: usize,
        /// The bound.
        max_drift_ms: u64,
    },
}

/// Why an entry from elsewhere was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VersionError {
    /// A time past [`MAX_VERSION_TIME`].
    #[error("{what} time {time:#x} is past the ceiling of version times ({MAX_VERSION_TIME:#x})")]
    PastCeiling {
        /// Which time: the version, or a time inside a map.
        what: &'static str,
        /// The time refused.
        time: u64,
    },
    /// A version further than [`MAX_AHEAD`] ahead of this node's clock.
    #[error("version time {time:#x} is {ahead_s} s ahead of this node's clock; the limit is {limit_s} s")]
    FarAhead {
        /// The time refused.
        time: u64,
        /// How far ahead of this node's clock, in seconds.
        ahead_s: u64,
        /// [`MAX_AHEAD`] in seconds.
        limit_s: u64,
    },
    /// A map or counter created over a state newer than its own version,
    /// which no write produces (a write's version is stamped after the state
    /// it builds on); such a state would outrank every later delete.
    #[error("generation {generation} is newer than the version {version}")]
    GenerationAhead {
        /// The generation carried.
        generation: Version,
        /// The entry's version.
        version: Version,
    },
}

/// Checks that `entry` is one that writes could have produced: its version
/// is not past [`MAX_VERSION_TIME`], and nothing inside it (a map's or
/// counter's generation, a map's dots and removals) is newer than its
/// version. An entry that passes leaves its key writable: the next stamp,
/// `version + 1`, is within the ceiling unless the version sits exactly on
/// it.
pub fn check_entry(entry: &Entry) -> Result<(), VersionError> {
    let version = entry.version;
    if version.time > MAX_VERSION_TIME {
        return Err(VersionError::PastCeiling {
            what: "version",
            time: version.time,
        });
    }
    if let Some(generation) = entry.generation() {
        if generation > version {
            return Err(VersionError::GenerationAhead {
                generation,
                version,
            });
        }
    }
    if let Payload::Map(map) = &entry.payload {
        for (_, field) in map.fields() {
            let times = field
                .adds()
                .iter()
                .map(|a| a.time)
                .chain(field.context().iter().map(|&(_, t)| t))
                .chain([field.removed_at()]);
            for time in times {
                if time > version.time {
                    return Err(VersionError::PastCeiling {
                        what: "a map dot's",
                        time,
                    });
                }
            }
        }
    }
    Ok(())
}

/// One node's hybrid logical clock (uhlc), identified by a clock id derived
/// from the node id so that a restarted node keeps it.
pub struct Clock {
    hlc: HLC,
    /// The greatest time the HLC has issued or taken from elsewhere (its
    /// own logical time, give or take the one tick that follows a remote
    /// stamp), so that [`Clock::check_offset`] can judge how far the HLC
    /// is ahead of the wall clock without ticking it.
    hlc_high: AtomicU64,
    id: u64,
    physical: PhysicalClock,
    monotonic: MonotonicClock,
    drift_events: AtomicU64,
    /// The largest lead over this clock (NTP64) of a remote version seen
    /// beyond the drift bound.
    max_lead: AtomicU64,
    refused: AtomicU64,
    /// Per key (by hash), the last version time issued above the HLC, for
    /// keys whose stored version was ahead of it. The HLC does not take a
    /// stamp beyond the drift bound (which is the point of the bound), so it
    /// would not keep two such stamps of one key apart by itself: a
    /// coordinator that is not a replica builds on the version a replica
    /// reported, and two of its writes can build on the same one. Kept per
    /// key so that one far-future version raises no other key's stamps.
    far: Mutex<BTreeMap<u64, u64>>,
    /// How many keys `far` holds, read without its lock.
    far_keys: AtomicUsize,
    /// The drift bound, NTP64.
    max_drift: u64,
    /// Per peer, the last measurement of its clock against this one.
    offsets: RwLock<HashMap<Box<str>, Offset>>,
    /// Whether `offsets` holds any peer, read without its lock.
    measured_any: AtomicBool,
}

/// One measurement of a peer's clock: the peer's clock minus this one lay
/// within `[low, high]` (NTP64 units) at `at`.
#[derive(Clone, Copy, Debug)]
struct Offset {
    low: i128,
    high: i128,
    at: RoundTrip,
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
            hlc_high: AtomicU64::new(0),
            id,
            physical,
            monotonic: process_monotonic,
            drift_events: AtomicU64::new(0),
            max_lead: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            far: Mutex::new(BTreeMap::new()),
            far_keys: AtomicUsize::new(0),
            max_drift: ntp64(max_drift),
            offsets: RwLock::new(HashMap::new()),
            measured_any: AtomicBool::new(false),
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

    /// A fresh version for a write to `key` whose stored (or observed)
    /// version is `floor`: the rule `max(hlc.now(), floor + 1)`, so that
    /// this node's write wins over a value stamped in the future by a fast
    /// clock elsewhere. Only `key`'s stamp is raised: a floor beyond the
    /// drift bound does not move the HLC, so the node's writes to other keys
    /// keep following its own clock. Every version issued for one key is
    /// distinct and greater than the ones before it from this clock.
    pub fn stamp_after(&self, key: &str, floor: Option<Version>) -> Result<Version, ClockError> {
        let now = self.tick();
        let ahead = |f: &Version| Version::new(now, self.id) <= *f;
        if !floor.as_ref().is_some_and(ahead) && self.far_keys.load(Ordering::Relaxed) == 0 {
            // The common case: no floor ahead of the clock, and no key
            // holding a stamp above it.
            return Ok(Version::new(now, self.id));
        }
        let slot = xxh3_64_with_seed(key.as_bytes(), CLOCK_ID_SEED);
        let mut far = self.far.lock().unwrap_or_else(PoisonError::into_inner);
        if far.len() <= FAR_SWEEP {
            // Stamps the HLC has overtaken no longer matter: its next ones
            // are greater.
            far.retain(|_, &mut t| t > now);
            self.far_keys.store(far.len(), Ordering::Relaxed);
        }
        let issued = far.get(&slot).map(|&time| Version::new(time, self.id));
        let floor = floor.max(issued);
        let Some(floor) = floor.filter(ahead) else {
            return Ok(Version::new(now, self.id));
        };
        let time = floor
            .time
            .checked_add(1)
            .filter(|&t| t <= MAX_VERSION_TIME)
            .ok_or(ClockError::Exhausted(floor))?;
        // Within the drift bound the HLC moves past the stamp and keeps
        // every later one above it; beyond, it refuses, and the key's own
        // record does.
        let moved = self.follow(&Timestamp::new(NTP64(time), *self.hlc.get_id()));
        if moved {
            far.remove(&slot);
        } else {
            if far.len() >= FAR_STAMPS && !far.contains_key(&slot) {
                far.retain(|_, &mut t| t > now);
                if far.len() >= FAR_STAMPS {
                    let oldest = far.iter().min_by_key(|&(_, &t)| t).map(|(&k, _)| k);
                    if let Some(k) = oldest {
                        far.remove(&k);
                    }
                }
            }
            far.insert(slot, time);
        }
        self.far_keys.store(far.len(), Ordering::Relaxed);
        Ok(Version::new(time, self.id))
    }

    /// Whether `entry`, arriving for `key` from another node (a delta, a
    /// hint, a read repair, an anti-entropy repair), may be merged: see
    /// [`check_entry`], and its version no further than [`MAX_AHEAD`] ahead
    /// of this node's clock. A refused entry is counted and logged with the
    /// reason. Every node refuses the same malformed entries; only a version
    /// days ahead, which no clock in service issues, may be refused by some
    /// nodes and not yet by others, until their clocks catch up.
    pub fn admit(&self, key: &str, entry: &Entry) -> bool {
        let now = self.now();
        let ahead = check_entry(entry).and_then(|()| match entry.version.time.checked_sub(now) {
            Some(ahead) if ahead > MAX_AHEAD => Err(VersionError::FarAhead {
                time: entry.version.time,
                ahead_s: ahead >> 32,
                limit_s: MAX_AHEAD >> 32,
            }),
            _ => Ok(()),
        });
        match ahead {
            Ok(()) => true,
            Err(reason) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key, version = %entry.version, %reason, "refused an entry from a peer");
                false
            }
        }
    }

    /// Entries from other nodes refused by [`Clock::admit`].
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// How long a measurement of a peer's clock counts (NTP64, by the
/// monotonic clock): an hour. It is carried across this node's own clock
/// jumps by the monotonic clock, so a node cut off alone still knows, from
/// its last measurements, when its wall clock moves away from its peers'.
/// Beyond an hour a peer not measured since has most likely left, or
/// corrected its own clock.
const OFFSET_LIFE: u64 = 3600 << 32;

/// How much a carried measurement widens per unit of its age (a right
/// shift: 1/1024, about 1000 ppm): a wall clock slewed by NTP runs at most
/// 500 ppm apart from the monotonic clock, so an old measurement bounds the
/// offset a little less tightly than a fresh one, and never proves a clock
/// off that merely slewed.
const OFFSET_WIDENING_SHIFT: u32 = 10;

/// A source of monotonic time in NTP64 units from an arbitrary origin, such
/// as [`process_monotonic`]: it never jumps, so the difference between how
/// far it and the wall clock moved is how far the wall clock jumped.
pub type MonotonicClock = fn() -> u64;

/// Monotonic time since this process first asked (std's `Instant`).
pub fn process_monotonic() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    ntp64(START.get_or_init(Instant::now).elapsed())
}

/// Where a round trip to a peer began, by both of this node's clocks.
#[derive(Clone, Copy, Debug)]
pub struct RoundTrip {
    wall: u64,
    mono: u64,
}

impl Clock {
    /// Uses `monotonic` instead of [`process_monotonic`] (the simulator's
    /// virtual time).
    pub fn with_monotonic(mut self, monotonic: MonotonicClock) -> Self {
        self.monotonic = monotonic;
        self
    }

    /// Marks the start of a round trip to a peer, for
    /// [`Clock::record_round_trip`].
    pub fn round_trip(&self) -> RoundTrip {
        RoundTrip {
            wall: self.now(),
            mono: (self.monotonic)(),
        }
    }

    /// Records a round trip to `peer` that began at `start` and is answered
    /// now, with the peer's physical time `remote` in the answer: the
    /// peer's clock minus this one lay within `[remote - received, remote -
    /// sent]`. A round trip during which this node's wall clock jumped
    /// (moved more than the drift bound apart from the monotonic clock)
    /// proves nothing and is dropped.
    pub fn record_round_trip(&self, peer: &str, start: RoundTrip, remote: u64) {
        let end = self.round_trip();
        let (Some(wall), Some(mono)) = (
            end.wall.checked_sub(start.wall),
            end.mono.checked_sub(start.mono),
        ) else {
            return;
        };
        if wall.abs_diff(mono) > self.max_drift {
            return;
        }
        let sample = Offset {
            low: i128::from(remote) - i128::from(end.wall),
            high: i128::from(remote) - i128::from(start.wall),
            at: end,
        };
        let mut offsets = self.offsets.write().unwrap_or_else(PoisonError::into_inner);
        match offsets.get_mut(peer) {
            Some(o) => *o = sample,
            None => {
                offsets.insert(peer.into(), sample);
                self.measured_any.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Whether this node may coordinate writes: refused when its clock is
    /// provably further than the drift bound from the clocks of more than
    /// half the cluster it measured in the last hour, itself counted as
    /// agreeing (so with two nodes, neither is judged by the other alone).
    /// A clock that is that far off would stamp versions and expiry instants
    /// off by as much, and the `stored + 1` rule would carry its versions
    /// into other nodes' writes of the same keys. A measurement is carried
    /// across jumps of this node's own wall clock (by how far the wall clock
    /// moved beyond the monotonic one since), so a clock that jumps is
    /// judged at once, before it issues a single version from its new time,
    /// even on a node cut off from every peer.
    ///
    /// Both clocks a write reads are judged: the wall clock (expiry
    /// instants, and the HLC's next stamps) and, when it is further ahead of
    /// the wall clock than the drift bound, the HLC itself. Only this
    /// node's own wall clock gets it there (the HLC follows no peer beyond
    /// the bound), and it never goes back: after a jump ahead and back, the
    /// wall clock agrees again while every version would still be stamped
    /// as far ahead, so the node refuses writes until its wall clock has
    /// caught up with its HLC (or a restart rebuilds the HLC).
    pub fn check_offset(&self) -> Result<(), ClockError> {
        if !self.measured_any.load(Ordering::Relaxed) {
            // No peer measured (a node alone, or before its first round
            // trip): nothing to judge against, as `judge` would find.
            return Ok(());
        }
        let now = self.round_trip();
        self.judge(now, 0)?;
        // The HLC's time as it stands, from its high-water mark: ticking it
        // would cost a lock and a clock read (the write ticks it anyway),
        // and would move it up to a wall clock that may be judged off.
        let lead = self
            .hlc_high
            .load(Ordering::Relaxed)
            .saturating_sub(now.wall);
        if lead > self.max_drift {
            self.judge(now, lead)?;
        }
        Ok(())
    }

    /// Whether this node's wall clock, the one that settles tombstones and
    /// expired values, agrees with most of the peers it measured (as
    /// [`Clock::check_offset`], without the HLC). A node whose wall clock is
    /// off collects nothing: it would find entries settled early (ahead) or
    /// keep them too long (behind), and taking an early one away lets a
    /// write stamped older than it through.
    pub fn check_wall_offset(&self) -> Result<(), ClockError> {
        self.judge(self.round_trip(), 0)
    }

    /// Judges this node's clock, read at `now` plus `lead` (NTP64), against
    /// the measurements of its peers, each carried to `now`.
    fn judge(&self, now: RoundTrip, lead: u64) -> Result<(), ClockError> {
        let bound = i128::from(self.max_drift);
        let lead = i128::from(lead);
        let offsets = self.offsets.read().unwrap_or_else(PoisonError::into_inner);
        let mut measured = 0;
        let mut off = Vec::new();
        for o in offsets.values() {
            let Some(age) = now.mono.checked_sub(o.at.mono) else {
                continue;
            };
            if age > OFFSET_LIFE {
                continue;
            }
            let jump = i128::from(now.wall) - i128::from(o.at.wall) - i128::from(age);
            let widen = i128::from(age >> OFFSET_WIDENING_SHIFT);
            let (low, high) = (o.low - jump - lead - widen, o.high - jump - lead + widen);
            measured += 1;
            if low > bound {
                off.push(low);
            } else if high < -bound {
                off.push(high);
            }
        }
        if off.len() * 2 <= measured + 1 {
            return Ok(());
        }
        off.sort_unstable();
        // The peers' clocks minus this one: negative when this one is ahead.
        let median = off[off.len() / 2];
        Err(ClockError::Offset {
            offset_ms: ((median.unsigned_abs() * 1000) >> 32) as u64,
            direction: if median < 0 { "ahead of" } else { "behind" },
            off: off.len(),
            measured,
            max_drift_ms: ((u128::from(self.max_drift) * 1000) >> 32) as u64,
        })
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
        if self.follow(&stamp) {
            return true;
        }
        self.drift_events.fetch_add(1, Ordering::Relaxed);
        let lead = remote.time.saturating_sub(self.now());
        self.max_lead.fetch_max(lead, Ordering::Relaxed);
        tracing::warn!(
            version = %remote,
            ahead_ms = ((u128::from(lead) * 1000) >> 32) as u64,
            "remote version beyond --max-clock-drift; merged without moving the clock"
        );
        false
    }

    /// A fresh stamp of this clock, for telling peers how far it has got.
    pub fn latest(&self) -> Version {
        Version::new(self.tick(), self.id)
    }

    /// The HLC's next time, recorded in the high-water mark.
    fn tick(&self) -> u64 {
        let time = self.hlc.new_timestamp().get_time().0;
        self.hlc_high.fetch_max(time, Ordering::Relaxed);
        time
    }

    /// Moves the HLC past `stamp` unless it is further ahead than the drift
    /// bound; returns whether it did, the high-water mark recording it.
    /// The HLC moves at least to the physical clock as it reads it, so the
    /// mark takes that too: a wall clock running ahead leaves the HLC as
    /// far ahead after any remote stamp it follows.
    fn follow(&self, stamp: &Timestamp) -> bool {
        let moved = self.hlc.update_with_timestamp(stamp).is_ok();
        if moved {
            let time = stamp.get_time().0.saturating_add(1);
            self.hlc_high
                .fetch_max(time.max((self.physical)().0), Ordering::Relaxed);
        }
        moved
    }

    /// Remote versions seen further ahead than the drift bound.
    pub fn drift_events(&self) -> u64 {
        self.drift_events.load(Ordering::Relaxed)
    }

    /// The largest lead over this clock of a remote version seen beyond the
    /// drift bound, in seconds; 0 when none was.
    pub fn max_remote_lead_secs(&self) -> f64 {
        self.max_lead.load(Ordering::Relaxed) as f64 / 2f64.powi(32)
    }

    /// Each peer's clock minus this one, in seconds, as last measured over
    /// a round trip (the middle of the measured interval).
    pub fn peer_offsets(&self) -> Vec<(String, f64)> {
        self.offsets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(peer, o)| {
                (
                    peer.to_string(),
                    (o.low + o.high) as f64 / 2.0 / 2f64.powi(32),
                )
            })
            .collect()
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
        let a = c.stamp_after("k", None).unwrap();
        let b = c.stamp_after("k", None).unwrap();
        assert!(b > a);
        assert_eq!(a.node, clock_id("node-a"));
    }

    #[test]
    fn a_write_wins_over_a_stored_version_from_the_future() {
        let c = clock();
        let future = Version::new(c.now() + (3600u64 << 32), u64::MAX);
        let v = c.stamp_after("k", Some(future)).unwrap();
        assert!(v > future);
        assert!(c.stamp_after("k", Some(v)).unwrap() > v);
    }

    /// Found by the simulator: two map writes over the same far-future
    /// floor got one version (so one dot) between them.
    #[test]
    fn stamps_over_the_same_far_floor_stay_distinct() {
        let c = clock();
        let future = Version::new(c.now() + (3600u64 << 32), u64::MAX);
        let a = c.stamp_after("k", Some(future)).unwrap();
        let b = c.stamp_after("k", Some(future)).unwrap();
        assert!(a > future && b > a);
        assert!(c.stamp_after("k", None).unwrap() > b);
    }

    /// A far-future floor raises its own key's stamps, not the node's.
    #[test]
    fn a_far_floor_raises_only_its_own_key() {
        let c = clock();
        let future = Version::new(c.now() + (3600u64 << 32), u64::MAX);
        assert!(c.stamp_after("far", Some(future)).unwrap() > future);
        let other = c.stamp_after("other", None).unwrap();
        assert!(other.time < c.now() + (1u64 << 31), "other key not raised");
        assert!(c.stamp_after("far", None).unwrap() > future, "kept per key");
    }

    #[test]
    fn only_a_version_at_the_ceiling_has_no_successor() {
        let c = clock();
        let below = Version::new(MAX_VERSION_TIME - 1, 1);
        let next = c.stamp_after("k", Some(below)).unwrap();
        assert_eq!(next.time, MAX_VERSION_TIME);
        let top = Version::new(MAX_VERSION_TIME, u64::MAX);
        assert_eq!(
            c.stamp_after("j", Some(top)),
            Err(ClockError::Exhausted(top))
        );
    }

    #[test]
    fn entries_past_the_ceiling_or_with_inner_times_ahead_are_refused() {
        use crate::crdt::ops;
        let c = clock();
        let end = Entry::value(Version::new(u64::MAX, 1), "x", 0);
        assert!(!c.admit("k", &end));
        assert_eq!(
            check_entry(&end).unwrap_err().to_string(),
            format!(
                "version time {:#x} is past the ceiling of version times ({MAX_VERSION_TIME:#x})",
                u64::MAX
            )
        );
        // A forged version just under the ceiling is refused too: admitted
        // versions stay within days of the clocks, far from the ceiling.
        assert!(!c.admit("k", &Entry::tombstone(Version::new(MAX_VERSION_TIME, 1))));
        let days = |d: u64| c.now() + ((d * 24 * 3600) << 32);
        assert!(c.admit("k", &Entry::tombstone(Version::new(days(6), 1))));
        let far = Entry::tombstone(Version::new(days(8), 1));
        assert!(!c.admit("k", &far));
        assert!(c
            .stamp_after("k", Some(Version::new(days(6), u64::MAX)))
            .is_ok());
        let v = Version::new(100, 1);
        let ahead = Entry::tombstone(Version::new(200, 1));
        let map = ops::map_set(Some(&ahead), 0, &[("f", "x")], v, 1, 100).unwrap();
        assert!(matches!(
            check_entry(&map),
            Err(VersionError::GenerationAhead { .. })
        ));
        let mut map = ops::map_set(None, 0, &[("f", "x")], Version::new(300, 1), 1, 100).unwrap();
        map.version = v;
        assert!(matches!(
            check_entry(&map),
            Err(VersionError::PastCeiling { time: 300, .. })
        ));
        assert_eq!(c.refused(), 3);
    }

    #[test]
    fn observed_versions_within_the_bound_move_the_clock_and_others_do_not() {
        let c = clock();
        let near = Version::new(c.now() + (1u64 << 30), 7); // ~250 ms ahead
        assert!(c.observe(near));
        assert!(c.stamp_after("k", None).unwrap() > near);
        let far = Version::new(c.now() + (60u64 << 32), 7); // a minute ahead
        assert!(!c.observe(far));
        assert_eq!(c.drift_events(), 1);
        assert!(
            c.stamp_after("k", None).unwrap() < far,
            "the clock was not dragged"
        );
    }

    static WALL: AtomicU64 = AtomicU64::new(0);
    static MONO: AtomicU64 = AtomicU64::new(0);

    fn wall() -> NTP64 {
        NTP64(WALL.load(Ordering::Relaxed))
    }

    fn mono() -> u64 {
        MONO.load(Ordering::Relaxed)
    }

    #[test]
    fn a_clock_off_from_most_measured_peers_refuses_and_says_by_how_much() {
        let second = 1u64 << 32;
        let t = 1_800_000_000 * second;
        WALL.store(t, Ordering::Relaxed);
        MONO.store(t, Ordering::Relaxed);
        let step = |by: u64| {
            WALL.fetch_add(by, Ordering::Relaxed);
            MONO.fetch_add(by, Ordering::Relaxed);
        };
        let c = Clock::new("node-a", wall, Duration::from_millis(500)).with_monotonic(mono);
        let measure = |peer: &str, behind: u64| {
            let start = c.round_trip();
            step(1000);
            c.record_round_trip(peer, start, c.now() - behind);
        };
        assert_eq!(c.check_offset(), Ok(()), "nothing measured");
        // One peer 20 s behind out of two: it may be the one that is wrong.
        measure("p1", 20 * second);
        measure("p2", 0);
        assert_eq!(c.check_offset(), Ok(()));
        // Two of three, itself on the other side: a tie judges no one.
        measure("p3", 20 * second);
        assert_eq!(c.check_offset(), Ok(()));
        // Three of three: this clock is the odd one out.
        measure("p2", 19 * second);
        let err = c.check_offset().unwrap_err();
        assert!(matches!(
            err,
            ClockError::Offset {
                off: 3,
                measured: 3,
                direction: "ahead of",
                ..
            }
        ));
        assert!(
            err.to_string()
                .starts_with("this node's clock is about 19999 ms ahead of 3 of the 3 peers"),
            "{err}"
        );
        assert!(
            err.to_string().contains("--max-clock-drift (500 ms)"),
            "{err}"
        );
        // A slow round trip proves nothing: the offset may be its delay.
        for p in ["p1", "p2", "p3"] {
            let start = c.round_trip();
            step(30 * second);
            c.record_round_trip(p, start, c.now() - 20 * second);
        }
        assert_eq!(c.check_offset(), Ok(()));

        // Measured in agreement, then this clock jumps 20 s ahead: it is
        // judged at once, without a new round trip; back, it agrees again.
        for p in ["p1", "p2", "p3"] {
            measure(p, 0);
        }
        assert_eq!(c.check_offset(), Ok(()));
        WALL.fetch_add(20 * second, Ordering::Relaxed);
        assert!(matches!(
            c.check_offset(),
            Err(ClockError::Offset {
                direction: "ahead of",
                off: 3,
                ..
            })
        ));
        WALL.fetch_sub(20 * second, Ordering::Relaxed);
        assert_eq!(c.check_offset(), Ok(()));
        // A round trip across a jump is dropped; old measurements expire.
        let start = c.round_trip();
        WALL.fetch_sub(20 * second, Ordering::Relaxed);
        c.record_round_trip("p1", start, t);
        WALL.fetch_add(20 * second, Ordering::Relaxed);
        assert_eq!(c.check_offset(), Ok(()));
        WALL.fetch_add(20 * second, Ordering::Relaxed);
        step(OFFSET_LIFE + 1);
        assert_eq!(c.check_offset(), Ok(()), "expired");
    }

    static WALL_B: AtomicU64 = AtomicU64::new(0);
    static MONO_B: AtomicU64 = AtomicU64::new(0);

    fn wall_b() -> NTP64 {
        NTP64(WALL_B.load(Ordering::Relaxed))
    }

    fn mono_b() -> u64 {
        MONO_B.load(Ordering::Relaxed)
    }

    /// Found by the simulator (seeds 3116676354, 1595647629, 543506234): a
    /// node cut off alone, its clock jumping long after its last round
    /// trip, and an HLC left far ahead by a jump that is over, whether it
    /// stamped during the jump or only followed a peer's stamp.
    #[test]
    fn judgement_survives_isolation_and_covers_an_hlc_left_ahead() {
        let second = 1u64 << 32;
        let t = 1_800_000_000 * second;
        WALL_B.store(t, Ordering::Relaxed);
        MONO_B.store(t, Ordering::Relaxed);
        let step = |by: u64| {
            WALL_B.fetch_add(by, Ordering::Relaxed);
            MONO_B.fetch_add(by, Ordering::Relaxed);
        };
        let measured_by_three = |c: &Clock| {
            for p in ["p1", "p2", "p3"] {
                let start = c.round_trip();
                step(1000);
                c.record_round_trip(p, start, c.now());
            }
        };
        let c = Clock::new("node-a", wall_b, Duration::from_millis(500)).with_monotonic(mono_b);
        measured_by_three(&c);
        // Cut off for a minute, then the clock jumps 5 s behind: the last
        // measurements, carried by the monotonic clock, still judge it.
        step(60 * second);
        assert_eq!(c.check_offset(), Ok(()));
        WALL_B.fetch_sub(5 * second, Ordering::Relaxed);
        assert!(matches!(
            c.check_offset(),
            Err(ClockError::Offset {
                direction: "behind",
                off: 3,
                ..
            })
        ));
        assert!(c.check_wall_offset().is_err(), "collects nothing either");
        WALL_B.fetch_add(5 * second, Ordering::Relaxed);
        assert_eq!(c.check_offset(), Ok(()));
        // An hour ahead, long enough to answer a peer, and back: the wall
        // clock agrees again, but the HLC stamps an hour ahead.
        WALL_B.fetch_add(3600 * second, Ordering::Relaxed);
        assert!(c.check_wall_offset().is_err());
        let ahead = c.latest();
        WALL_B.fetch_sub(3600 * second, Ordering::Relaxed);
        assert_eq!(c.check_wall_offset(), Ok(()));
        let err = c.check_offset().unwrap_err();
        assert!(
            matches!(
                err,
                ClockError::Offset {
                    direction: "ahead of",
                    off: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(ahead.time > c.now() + 3599 * second);
        // Within the bound, following a peer, is no lead to judge.
        let near = Clock::new("node-b", wall_b, Duration::from_millis(500)).with_monotonic(mono_b);
        let start = near.round_trip();
        near.record_round_trip("p1", start, near.now());
        assert!(near.observe(Version::new(near.now() + (second >> 2), 7)));
        assert_eq!(near.check_offset(), Ok(()));
        // The HLC goes as far ahead as the wall clock whenever it follows a
        // peer's stamp, not only when it stamps: once the wall clock is
        // back, the HLC is still found ahead.
        let follower =
            Clock::new("node-c", wall_b, Duration::from_millis(500)).with_monotonic(mono_b);
        measured_by_three(&follower);
        WALL_B.fetch_add(3 * second, Ordering::Relaxed);
        assert!(follower.observe(Version::new(follower.now() - 4 * second, 7)));
        WALL_B.fetch_sub(3 * second, Ordering::Relaxed);
        assert!(matches!(
            follower.check_offset(),
            Err(ClockError::Offset {
                direction: "ahead of",
                ..
            })
        ));
    }

    #[test]
    fn clock_ids_are_stable_and_distinct() {
        assert_eq!(clock_id("a"), clock_id("a"));
        assert_ne!(clock_id("a"), clock_id("b"));
    }
}
