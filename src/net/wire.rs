//! Entries as the peer protocol carries them, checked on the way in: a peer
//! that sends garbage gets an error, never a crash or a corrupt store.

use thiserror::Error;

use crate::config::MAX_KEY_BYTES;
use crate::crdt::{Entry, Payload, Version};
use crate::proto::cluster as wire;
use crate::store::Key;

/// Why an entry from a peer was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The key is empty or longer than the limit.
    #[error("peer sent a key of {size} bytes; keys have 1 to {limit}")]
    BadKey {
        /// The key's length.
        size: usize,
        /// The longest key.
        limit: usize,
    },
    /// A tombstone that carries a value or an expiry.
    #[error("peer sent a tombstone for {key:?} with a value or an expiry")]
    BadTombstone {
        /// The key.
        key: String,
    },
}

/// An entry for the wire.
pub fn to_wire(key: &str, entry: &Entry) -> wire::Entry {
    let (tombstone, value) = match &entry.payload {
        Payload::Tombstone => (true, String::new()),
        Payload::Value(v) => (false, v.to_string()),
    };
    wire::Entry {
        key: key.to_string(),
        time: entry.version.time,
        node: entry.version.node,
        expires_at: entry.expires_at,
        tombstone,
        value,
    }
}

/// An entry from the wire, checked.
pub fn from_wire(e: wire::Entry) -> Result<(Key, Entry), WireError> {
    if e.key.is_empty() || e.key.len() > MAX_KEY_BYTES {
        return Err(WireError::BadKey {
            size: e.key.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    let version = Version::new(e.time, e.node);
    let entry = if e.tombstone {
        if !e.value.is_empty() || e.expires_at != 0 {
            return Err(WireError::BadTombstone { key: e.key });
        }
        Entry::tombstone(version)
    } else {
        Entry::value(version, e.value, e.expires_at)
    };
    Ok((e.key.into_boxed_str(), entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let e = Entry::value(Version::new(5, 9), "v", 77);
        assert_eq!(from_wire(to_wire("k", &e)), Ok(("k".into(), e)));
        let t = Entry::tombstone(Version::new(6, 9));
        assert_eq!(from_wire(to_wire("k", &t)), Ok(("k".into(), t)));
        assert!(from_wire(wire::Entry::default()).is_err());
        let bad = wire::Entry {
            key: "k".into(),
            tombstone: true,
            value: "x".into(),
            ..Default::default()
        };
        assert!(matches!(
            from_wire(bad),
            Err(WireError::BadTombstone { .. })
        ));
    }
}
