//! The entries a write builds over the key's stored entry, one function per
//! operation: the coordinator's write path and the simulator's node both
//! call these, so that what a write stores is decided in one place.

use crate::clock::Clock;
use crate::crdt::{ops, Entry};
use crate::dots::Dots;
use crate::error::Error;

/// The entry a Set of `key` writes over `stored`: `value` stamped by
/// `clock` after the stored version, expiring `ttl_ms` after the clock's
/// physical now (0: never). The expiry counts from physical time, not from
/// the version, which a far-future stored version may have raised: the
/// value lives as long as asked, and every replica reads the same instant.
/// Refused when `stored` holds a map or a counter.
pub fn value_entry(
    clock: &Clock,
    key: &str,
    stored: Option<&Entry>,
    value: Box<str>,
    ttl_ms: u64,
) -> Result<Entry, Error> {
    let now = clock.now();
    ops::check_string_write(stored, now)?;
    let expires_at = expiry(now, ttl_ms)?;
    let version = clock.stamp_after(key, stored.map(|e| e.version))?;
    Ok(Entry::value(version, value, expires_at))
}

/// The tombstone a Delete of `key` writes over `stored`, stamped by `clock`
/// after the stored version.
pub fn tombstone_entry(clock: &Clock, key: &str, stored: Option<&Entry>) -> Result<Entry, Error> {
    Ok(Entry::tombstone(
        clock.stamp_after(key, stored.map(|e| e.version))?,
    ))
}

/// The entry a MapSet of `fields` at `key` writes over `stored`: a map
/// delta stamped by `clock` after the stored version, its dots authored by
/// this life of the node (`dots`' incarnation); the map may not grow past
/// `limit` bytes. Refused when `stored` holds a string or a counter.
pub fn map_set_entry(
    clock: &Clock,
    dots: &Dots,
    key: &str,
    stored: Option<&Entry>,
    fields: &[(&str, &str)],
    limit: usize,
) -> Result<Entry, Error> {
    let version = clock.stamp_after(key, stored.map(|e| e.version))?;
    let incarnation = dots.incarnation();
    let now = clock.now();
    Ok(ops::map_set(
        stored,
        now,
        fields,
        version,
        incarnation,
        limit,
    )?)
}

/// The entry a MapRemove of `names` at `key` writes over `stored`, stamped
/// by `clock` after the stored version: it removes the values `stored`
/// holds. Refused when `stored` holds a string or a counter.
pub fn map_remove_entry(
    clock: &Clock,
    key: &str,
    stored: Option<&Entry>,
    names: &[&str],
) -> Result<Entry, Error> {
    let version = clock.stamp_after(key, stored.map(|e| e.version))?;
    Ok(ops::map_remove(stored, clock.now(), names, version)?)
}

/// The entry an Increment of `delta` at `key` writes over `stored` (a
/// counter delta stamped by `clock` after the stored version, its sequence
/// number taken from `dots`), and the counter's value after it. Refused
/// when `stored` holds a string or a map, or when the value would leave the
/// signed 64-bit range.
pub fn increment_entry(
    clock: &Clock,
    dots: &Dots,
    key: &str,
    stored: Option<&Entry>,
    delta: i64,
) -> Result<(Entry, i64), Error> {
    let version = clock.stamp_after(key, stored.map(|e| e.version))?;
    let now = clock.now();
    Ok(ops::increment(stored, now, delta, version, |g, c| {
        dots.next_increment(key, g, c, now)
    })?)
}

/// The expiry instant (NTP64) of a value written at physical time `time`
/// with `ttl_ms`, or 0 for no expiry.
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
}
