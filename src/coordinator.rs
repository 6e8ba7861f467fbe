//! Coordinates each client request with the replicas of its key: stamps
//! writes with the node's clock, applies them, and answers when the
//! requested consistency level is met.
//!
//! On a single node the one replica meets every level. The request path is
//! already shaped for a cluster: the coordinator is the one place that will
//! choose replicas, wait for their answers and repair stale ones.

use std::sync::Arc;

use crate::clock::Clock;
use crate::crdt::{Entry, Version};
use crate::error::Error;
use crate::store::Store;

/// How many replicas must answer before a request succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
    /// Reads only: this node's own copy.
    Local,
}

/// What a read found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value, when the key holds one that has not expired.
    pub value: Option<Box<str>>,
    /// The version of the value or tombstone; `None` when never written.
    pub version: Option<Version>,
}

/// The request coordinator of one node.
pub struct Coordinator {
    store: Arc<Store>,
    clock: Arc<Clock>,
}

impl Coordinator {
    /// A coordinator over the node's store and clock.
    pub fn new(store: Arc<Store>, clock: Arc<Clock>) -> Self {
        Self { store, clock }
    }

    /// Writes `value` at `key`, expiring after `ttl_ms` (0: never). Returns
    /// the version the write was stamped with.
    pub async fn set(
        &self,
        key: &str,
        value: &str,
        ttl_ms: u64,
        level: Consistency,
    ) -> Result<Version, Error> {
        check_write_level(level)?;
        let written = self.store.write(key, |stored| {
            let version = self.clock.stamp_after(stored.map(|e| e.version))?;
            let expires_at = expiry(version.time, ttl_ms)?;
            Ok::<_, Error>(Entry::value(version, value, expires_at))
        })?;
        Ok(written.version)
    }

    /// Deletes `key` by writing a tombstone. Returns its version.
    pub async fn delete(&self, key: &str, level: Consistency) -> Result<Version, Error> {
        check_write_level(level)?;
        let written = self.store.write(key, |stored| {
            let version = self.clock.stamp_after(stored.map(|e| e.version))?;
            Ok::<_, Error>(Entry::tombstone(version))
        })?;
        Ok(written.version)
    }

    /// Reads `key`.
    pub async fn get(&self, key: &str, _level: Consistency) -> Result<Read, Error> {
        let now = self.clock.now();
        Ok(match self.store.get(key) {
            Some(entry) => Read {
                value: entry.live_value(now).map(Box::from),
                version: Some(entry.version),
            },
            None => Read {
                value: None,
                version: None,
            },
        })
    }
}

fn check_write_level(level: Consistency) -> Result<(), Error> {
    match level {
        Consistency::Local => Err(Error::LocalWrite),
        _ => Ok(()),
    }
}

/// The expiry instant (NTP64) of a value written at `time` with `ttl_ms`,
/// or 0 for no expiry.
fn expiry(time: u64, ttl_ms: u64) -> Result<u64, Error> {
    if ttl_ms == 0 {
        return Ok(0);
    }
    let too_long = || Error::TtlTooLong {
        ttl_ms,
        limit: ntp64_to_ms(u64::MAX - time),
    };
    let ttl = ms_to_ntp64(ttl_ms).ok_or_else(too_long)?;
    time.checked_add(ttl).ok_or_else(too_long)
}

/// Milliseconds as an NTP64 span, or `None` past its 2^32 seconds.
fn ms_to_ntp64(ms: u64) -> Option<u64> {
    let secs = u32::try_from(ms / 1000).ok()?;
    let frac = ((ms % 1000) << 32) / 1000;
    Some((u64::from(secs) << 32) | frac)
}

fn ntp64_to_ms(span: u64) -> u64 {
    (span >> 32) * 1000 + (((span & 0xffff_ffff) * 1000) >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::system_time;
    use std::time::Duration;

    fn coordinator() -> Coordinator {
        let clock = Clock::new("n1", system_time, Duration::from_millis(500));
        Coordinator::new(Arc::new(Store::new()), Arc::new(clock))
    }

    #[test]
    fn ttl_conversion_round_trips_and_bounds() {
        assert_eq!(ms_to_ntp64(1500), Some((1 << 32) | (1 << 31)));
        assert_eq!(ntp64_to_ms(ms_to_ntp64(123_456).unwrap()), 123_455);
        assert_eq!(ms_to_ntp64(u64::MAX), None);
        assert_eq!(expiry(10, 0), Ok(0));
    }

    #[test]
    fn an_overflowing_ttl_names_the_limit() {
        let now = 200u64 << 32;
        let Err(Error::TtlTooLong { ttl_ms, limit }) = expiry(now, u64::MAX) else {
            panic!("expected TtlTooLong");
        };
        assert_eq!(ttl_ms, u64::MAX);
        assert!(expiry(now, limit).is_ok());
        assert!(expiry(now, limit + 1).is_err());
    }

    #[tokio::test]
    async fn writes_are_stamped_in_increasing_order_and_local_writes_refused() {
        let c = coordinator();
        let a = c.set("k", "1", 0, Consistency::One).await.unwrap();
        let b = c.delete("k", Consistency::All).await.unwrap();
        assert!(b > a);
        let read = c.get("k", Consistency::Local).await.unwrap();
        assert_eq!(
            read,
            Read {
                value: None,
                version: Some(b)
            }
        );
        assert_eq!(
            c.set("k", "1", 0, Consistency::Local).await,
            Err(Error::LocalWrite)
        );
        assert_eq!(
            c.delete("k", Consistency::Local).await,
            Err(Error::LocalWrite)
        );
    }

    #[tokio::test]
    async fn a_refused_ttl_leaves_the_stored_value() {
        let c = coordinator();
        c.set("k", "kept", 0, Consistency::One).await.unwrap();
        assert!(c.set("k", "x", u64::MAX, Consistency::One).await.is_err());
        let read = c.get("k", Consistency::One).await.unwrap();
        assert_eq!(read.value.as_deref(), Some("kept"));
    }
}
