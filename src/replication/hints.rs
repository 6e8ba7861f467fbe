//! Hinted handoff: writes held for replicas that could not take them, to be
//! handed on when they are back. Bounded in count, bytes and age; whatever
//! is dropped is counted, never silently lost. Anti-entropy repairs a
//! dropped hint only where some replica holds its write: a ONE write that
//! no replica took lived only in hints, and is gone with them.
//! Pure state; the shell decides when to replay, and logs drops.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::crdt::Entry;
use crate::store::Key;

/// One write held for a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The key written.
    pub key: Key,
    /// The entry to hand on.
    pub entry: Entry,
    /// When the hint was taken.
    pub at: Instant,
}

impl Hint {
    /// The bytes this hint counts against the bound.
    pub fn size(&self) -> usize {
        entry_size(&self.key, &self.entry)
    }
}

/// The bytes an entry for `key` takes on the wire and in bounds: the key,
/// the value (a string, or a map or counter delta's elements) and the fixed
/// parts.
pub fn entry_size(key: &str, entry: &Entry) -> usize {
    key.len() + entry.payload_size() + 32
}

/// Limits on what hints may hold.
#[derive(Clone, Copy, Debug)]
pub struct HintLimits {
    /// The most hints, over all replicas.
    pub max_hints: usize,
    /// The most bytes, over all replicas.
    pub max_bytes: usize,
    /// How long a hint is kept.
    pub max_age: Duration,
}

/// Why hints were dropped unsent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Older than `--max-hint-age`.
    Age,
    /// Over `--max-hints` or `--max-hint-bytes` (the oldest go first).
    Bound,
    /// Undeliverable when the node shut down.
    Shutdown,
}

impl DropReason {
    /// Every reason, in the order [`Hints::dropped_by`] counts them.
    pub const ALL: [DropReason; 3] = [DropReason::Age, DropReason::Bound, DropReason::Shutdown];

    /// The reason as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Age => "age",
            DropReason::Bound => "bound",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// The hints held, per replica, oldest first.
pub struct Hints {
    by_peer: BTreeMap<String, VecDeque<Hint>>,
    count: usize,
    bytes: usize,
    /// Dropped since start, by [`DropReason`] (as its index).
    dropped: [u64; 3],
    limits: HintLimits,
}

impl Hints {
    /// No hints, under `limits`.
    pub fn new(limits: HintLimits) -> Self {
        Self {
            by_peer: BTreeMap::new(),
            count: 0,
            bytes: 0,
            dropped: [0; 3],
            limits,
        }
    }

    /// Holds `entry` for `peer`. When a bound is exceeded, the oldest hints
    /// (of any replica) are dropped and counted; returns how many.
    pub fn add(&mut self, peer: &str, key: Key, entry: Entry, now: Instant) -> usize {
        let hint = Hint {
            key,
            entry,
            at: now,
        };
        self.count += 1;
        self.bytes += hint.size();
        self.by_peer
            .entry(peer.to_string())
            .or_default()
            .push_back(hint);
        self.enforce_bounds()
    }

    /// Drops hints older than the age limit at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let max_age = self.limits.max_age;
        let mut expired = 0;
        for queue in self.by_peer.values_mut() {
            while queue
                .front()
                .is_some_and(|h| now.duration_since(h.at) > max_age)
            {
                if let Some(h) = queue.pop_front() {
                    self.count -= 1;
                    self.bytes -= h.size();
                    expired += 1;
                }
            }
        }
        self.by_peer.retain(|_, q| !q.is_empty());
        self.dropped[DropReason::Age as usize] += expired as u64;
        expired
    }

    /// Takes up to `max_bytes` of the oldest hints for `peer`, to replay.
    /// Hand them back with [`Hints::restore`] if the replay fails.
    pub fn take(&mut self, peer: &str, max_bytes: usize) -> Vec<Hint> {
        let Some(queue) = self.by_peer.get_mut(peer) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let mut bytes = 0;
        while let Some(h) = queue.front() {
            if !taken.is_empty() && bytes + h.size() > max_bytes {
                break;
            }
            let Some(h) = queue.pop_front() else { break };
            bytes += h.size();
            taken.push(h);
        }
        if queue.is_empty() {
            self.by_peer.remove(peer);
        }
        self.count -= taken.len();
        self.bytes -= bytes;
        taken
    }

    /// The hints held for `peer`, oldest first.
    pub fn held_for(&self, peer: &str) -> impl Iterator<Item = &Hint> {
        self.by_peer.get(peer).into_iter().flatten()
    }

    /// Puts back hints whose replay failed, ahead of newer ones; returns
    /// how many hints the bounds then dropped.
    pub fn restore(&mut self, peer: &str, hints: Vec<Hint>) -> usize {
        let queue = self.by_peer.entry(peer.to_string()).or_default();
        for h in hints.into_iter().rev() {
            self.count += 1;
            self.bytes += h.size();
            queue.push_front(h);
        }
        self.enforce_bounds()
    }

    /// Counts `n` hints taken out (with [`Hints::take`]) that will never be
    /// delivered, e.g. at shutdown with no live replica to hand them to.
    pub fn count_dropped(&mut self, n: usize) {
        self.dropped[DropReason::Shutdown as usize] += n as u64;
    }

    /// Drops every hint held, counted; returns how many (at shutdown, for
    /// what could not be delivered).
    pub fn drop_all(&mut self) -> usize {
        let n = self.count;
        self.by_peer.clear();
        self.count = 0;
        self.bytes = 0;
        self.dropped[DropReason::Shutdown as usize] += n as u64;
        n
    }

    /// The replicas that have hints waiting.
    pub fn peers(&self) -> Vec<String> {
        self.by_peer.keys().cloned().collect()
    }

    /// Every hint held, for inspection (the simulator's checker looks for
    /// surviving copies of a write).
    pub fn held(&self) -> impl Iterator<Item = &Hint> {
        self.by_peer.values().flatten()
    }

    /// Hints waiting, over all replicas.
    pub fn pending(&self) -> usize {
        self.count
    }

    /// Hints dropped unsent since start (too old or over a bound).
    pub fn dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Hints dropped unsent since start, by reason.
    pub fn dropped_by(&self) -> [(DropReason, u64); 3] {
        DropReason::ALL.map(|r| (r, self.dropped[r as usize]))
    }

    /// Per replica with hints waiting: how many, and when the oldest was
    /// taken.
    pub fn oldest(&self) -> impl Iterator<Item = (&str, usize, Instant)> {
        self.by_peer
            .iter()
            .filter_map(|(p, q)| q.front().map(|h| (p.as_str(), q.len(), h.at)))
    }

    /// Drops the oldest hints while a bound is exceeded; returns how many.
    fn enforce_bounds(&mut self) -> usize {
        let mut dropped = 0;
        while self.count > self.limits.max_hints || self.bytes > self.limits.max_bytes {
            if !self.drop_oldest() {
                break;
            }
            dropped += 1;
        }
        dropped
    }

    fn drop_oldest(&mut self) -> bool {
        let oldest = self
            .by_peer
            .iter()
            .filter_map(|(p, q)| q.front().map(|h| (h.at, p.clone())))
            .min();
        let Some((_, peer)) = oldest else {
            return false;
        };
        if let Some(queue) = self.by_peer.get_mut(&peer) {
            if let Some(h) = queue.pop_front() {
                self.count -= 1;
                self.bytes -= h.size();
                self.dropped[DropReason::Bound as usize] += 1;
            }
            if queue.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::Version;

    fn limits(max_hints: usize, max_bytes: usize) -> HintLimits {
        HintLimits {
            max_hints,
            max_bytes,
            max_age: Duration::from_secs(10),
        }
    }

    fn e(t: u64) -> Entry {
        Entry::value(Version::new(t, 1), "v", 0)
    }

    #[test]
    fn take_restore_and_count() {
        let t0 = Instant::now();
        let mut h = Hints::new(limits(100, 1 << 20));
        h.add("b", "k1".into(), e(1), t0);
        h.add("b", "k2".into(), e(2), t0);
        h.add("c", "k3".into(), e(3), t0);
        assert_eq!(h.pending(), 3);
        assert_eq!(h.peers(), vec!["b".to_string(), "c".to_string()]);
        let taken = h.take("b", 1);
        assert_eq!(taken.len(), 1, "at least one, then within the byte budget");
        assert_eq!(h.pending(), 2);
        h.restore("b", taken);
        let all = h.take("b", usize::MAX);
        assert_eq!(
            all.iter().map(|x| &*x.key).collect::<Vec<_>>(),
            vec!["k1", "k2"]
        );
        assert_eq!(h.pending(), 1);
        assert_eq!(h.dropped(), 0);
    }

    #[test]
    fn bounds_drop_the_oldest_and_count_them() {
        let t0 = Instant::now();
        let mut h = Hints::new(limits(2, 1 << 20));
        h.add("b", "old".into(), e(1), t0);
        h.add("c", "mid".into(), e(2), t0 + Duration::from_secs(1));
        h.add("b", "new".into(), e(3), t0 + Duration::from_secs(2));
        assert_eq!((h.pending(), h.dropped()), (2, 1));
        assert_eq!(&*h.take("b", usize::MAX)[0].key, "new");

        let one = entry_size("k", &e(1));
        let mut h = Hints::new(limits(100, one * 2));
        for i in 0..5 {
            h.add("b", "k".into(), e(i), t0);
        }
        assert_eq!((h.pending(), h.dropped()), (2, 3));
    }

    #[test]
    fn old_hints_expire_and_are_counted() {
        let t0 = Instant::now();
        let mut h = Hints::new(limits(100, 1 << 20));
        h.add("b", "k1".into(), e(1), t0);
        h.add("b", "k2".into(), e(2), t0 + Duration::from_secs(5));
        assert_eq!(h.expire(t0 + Duration::from_secs(11)), 1);
        assert_eq!((h.pending(), h.dropped()), (1, 1));
        assert_eq!(h.expire(t0 + Duration::from_secs(16)), 1);
        assert!(h.peers().is_empty());
    }

    #[test]
    fn drops_are_counted_by_reason_and_the_oldest_hint_is_known() {
        let t0 = Instant::now();
        let mut h = Hints::new(limits(2, 1 << 20));
        h.add("b", "k1".into(), e(1), t0);
        h.add("c", "k2".into(), e(2), t0 + Duration::from_secs(1));
        h.add("c", "k3".into(), e(3), t0 + Duration::from_secs(2));
        assert_eq!(
            h.oldest().collect::<Vec<_>>(),
            vec![("c", 2, t0 + Duration::from_secs(1))]
        );
        h.expire(t0 + Duration::from_secs(12));
        let taken = h.take("c", usize::MAX);
        h.count_dropped(taken.len());
        assert_eq!(
            h.dropped_by(),
            [
                (DropReason::Age, 1),
                (DropReason::Bound, 1),
                (DropReason::Shutdown, 1)
            ]
        );
        assert_eq!(h.dropped(), 3);
    }
}
