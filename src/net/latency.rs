//! How long each peer takes to answer, smoothed, and how long a request
//! should wait on one peer before it also asks another (a hedge).
//!
//! A peer that is cut off or paused answers nothing until the failure
//! detector declares it dead, which takes seconds; a request at ONE that
//! waited for it that long would break ONE's promise to answer. So ONE asks
//! the next replica once the first has been silent for longer than it
//! usually takes, and a ONE write no replica acknowledged in that time is
//! answered from its queued copy (which becomes a hint if delivery fails).
//! The estimate is TCP's retransmission timer (RFC 6298): the smoothed
//! round-trip time plus four times its mean deviation.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// The shortest hedge delay: below this, jitter alone would send most
/// requests twice.
pub const MIN_HEDGE: Duration = Duration::from_millis(5);

/// The longest hedge delay, whatever the peer's history: a ONE request
/// tries the replicas of its key one after another, so three of them still
/// answer within a second when the first two are silent.
pub const MAX_HEDGE: Duration = Duration::from_millis(300);

/// The longest a read at ONE waits on its newest request before it asks
/// the next replica, or asks a silent one again. Lower than
/// [`MAX_HEDGE`], which a write's hinted acknowledgement waits: a read is
/// cheap to repeat, and on a network that loses messages a read must get
/// several requests out early in its second to be answered within it (a
/// peer whose requests are lost looks slow, its estimate grows, and
/// [`MAX_HEDGE`] would space the requests 300 ms apart).
pub const MAX_READ_HEDGE: Duration = Duration::from_millis(120);

/// How long a write at ONE waits to read the key's state from a replica
/// (where its coordinator is not one) before it builds on nothing: two
/// hedge delays, so that with the write's own wait (at most one) the
/// client is answered within a second however silent the replicas are.
pub const OBSERVE_AT_ONE: Duration = Duration::from_millis(2 * MAX_HEDGE.as_millis() as u64);

/// A peer's smoothed round-trip time and its mean deviation, in seconds.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    srtt: f64,
    rttvar: f64,
}

/// Smoothed round-trip times of the peers this node calls.
#[derive(Debug, Default)]
pub struct Latencies {
    peers: RwLock<HashMap<String, Estimate>>,
}

impl Latencies {
    /// No peer measured yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a call to `peer` took `took` (a timeout counts as the
    /// time waited, so a silent peer's estimate grows).
    pub fn record(&self, peer: &str, took: Duration) {
        let sample = took.as_secs_f64();
        let mut peers = self.peers.write().unwrap_or_else(PoisonError::into_inner);
        match peers.get_mut(peer) {
            Some(e) => {
                e.rttvar = 0.75 * e.rttvar + 0.25 * (e.srtt - sample).abs();
                e.srtt = 0.875 * e.srtt + 0.125 * sample;
            }
            None => {
                peers.insert(
                    peer.to_string(),
                    Estimate {
                        srtt: sample,
                        rttvar: sample / 2.0,
                    },
                );
            }
        }
    }

    /// The smoothed round-trip time to `peer`, when it has been measured.
    pub fn rtt(&self, peer: &str) -> Option<Duration> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .map(|e| Duration::from_secs_f64(e.srtt))
    }

    /// How long a read at ONE waits on its newest request, to `peer`,
    /// before it asks again: the hedge delay, at most [`MAX_READ_HEDGE`].
    pub fn read_hedge_after(&self, peer: &str) -> Duration {
        self.hedge_after(peer).min(MAX_READ_HEDGE)
    }

    /// How long a ONE write waits on `peers` before it is answered from its
    /// queued copies: the longest of their hedge delays (zero for none).
    pub fn longest_hedge<'a>(&self, peers: impl IntoIterator<Item = &'a str>) -> Duration {
        peers
            .into_iter()
            .map(|p| self.hedge_after(p))
            .max()
            .unwrap_or_default()
    }

    /// How long to wait on `peer` before asking another replica as well:
    /// its smoothed round-trip time plus four deviations, within
    /// [`MIN_HEDGE`] and [`MAX_HEDGE`]; [`MAX_HEDGE`] for a peer not yet
    /// measured.
    pub fn hedge_after(&self, peer: &str) -> Duration {
        let peers = self.peers.read().unwrap_or_else(PoisonError::into_inner);
        match peers.get(peer) {
            Some(e) => Duration::from_secs_f64(e.srtt + 4.0 * e.rttvar).clamp(MIN_HEDGE, MAX_HEDGE),
            None => MAX_HEDGE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_unmeasured_peer_gets_the_longest_hedge() {
        assert_eq!(Latencies::new().hedge_after("p"), MAX_HEDGE);
    }

    #[test]
    fn a_steady_peer_is_hedged_a_little_after_its_round_trip() {
        let l = Latencies::new();
        for _ in 0..50 {
            l.record("wan", 80 * MS);
        }
        let hedge = l.hedge_after("wan");
        assert!(hedge >= 80 * MS && hedge < 90 * MS, "{hedge:?}");
        let rtt = l.rtt("wan").unwrap();
        assert!(rtt > 79 * MS && rtt < 81 * MS, "{rtt:?}");
    }

    #[test]
    fn fast_peers_get_the_floor_and_silent_ones_the_ceiling() {
        let l = Latencies::new();
        for _ in 0..50 {
            l.record("lan", Duration::from_micros(200));
        }
        assert_eq!(l.hedge_after("lan"), MIN_HEDGE);
        l.record("lan", Duration::from_secs(2));
        assert_eq!(l.hedge_after("lan"), MAX_HEDGE);
    }

    #[test]
    fn a_lossy_peer_is_asked_again_by_a_read_sooner_than_a_write_waits_on_it() {
        let l = Latencies::new();
        // Answers between 10 and 200 ms, and one request in three lost (a
        // timeout counts as 500 ms waited).
        for i in 0..60u32 {
            let took = if i % 3 == 0 {
                500 * MS
            } else {
                (10 + i * 3) * MS
            };
            l.record("p", took);
        }
        assert_eq!(l.hedge_after("p"), MAX_HEDGE);
        assert_eq!(l.read_hedge_after("p"), MAX_READ_HEDGE);
        assert_eq!(Latencies::new().read_hedge_after("p"), MAX_READ_HEDGE);
        // A steady peer's read hedge is its hedge.
        for _ in 0..50 {
            l.record("q", 20 * MS);
        }
        assert_eq!(l.read_hedge_after("q"), l.hedge_after("q"));
    }

    #[test]
    fn jitter_widens_the_hedge() {
        let steady = Latencies::new();
        let jittery = Latencies::new();
        for i in 0..50 {
            steady.record("p", 20 * MS);
            jittery.record("p", if i % 2 == 0 { 5 * MS } else { 35 * MS });
        }
        assert!(jittery.hedge_after("p") > steady.hedge_after("p"));
    }
}
