//! What a log record or snapshot record says, and its bytes: a kind byte,
//! then for a merge or a removal the entry as the peer protocol encodes it
//! (`proto/cluster.proto`'s `Entry`, checked on the way back in as an entry
//! from a peer is), for a dropped partition its number.

use prost::Message;

use crate::crdt::{Entry, Version};
use crate::net::wire::{from_wire, to_wire};
use crate::proto::cluster as wire;
use crate::store::Key;

const MERGED: u8 = 1;
const REMOVED: u8 = 2;
const DROPPED: u8 = 3;
const HINTED: u8 = 4;

/// One change of the store, as replay applies it.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// Merge the entry at the key.
    Merged(Key, Entry),
    /// Remove the entry at the key if it has the version.
    Removed(Key, Version),
    /// Drop every entry of the partition.
    Dropped(u32),
    /// A hint held for a peer: the peer, the unix milliseconds it was
    /// taken, the key and the entry.
    Hinted(String, u64, Key, Entry),
}

/// Appends a merge of `entry` at `key`.
pub fn merged(out: &mut Vec<u8>, key: &str, entry: &Entry) {
    out.push(MERGED);
    // Encoding into a Vec cannot fail: it grows as needed.
    let _ = to_wire(key, entry).encode(out);
}

/// Appends the removal of `key` at `version`.
pub fn removed(out: &mut Vec<u8>, key: &str, version: Version) {
    out.push(REMOVED);
    let _ = wire::Entry {
        key: key.into(),
        time: version.time,
        node: version.node,
        ..Default::default()
    }
    .encode(out);
}

/// Appends the drop of partition `p`.
pub fn dropped(out: &mut Vec<u8>, p: u32) {
    out.push(DROPPED);
    out.extend_from_slice(&p.to_le_bytes());
}

/// Appends a hint of `entry` at `key` held for `peer`, taken at unix
/// milliseconds `taken_ms`.
pub fn hinted(out: &mut Vec<u8>, peer: &str, taken_ms: u64, key: &str, entry: &Entry) {
    out.push(HINTED);
    let name = &peer.as_bytes()[..peer.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&taken_ms.to_le_bytes());
    let _ = to_wire(key, entry).encode(out);
}

/// The record a payload holds, or why it holds none.
pub fn decode(payload: &[u8]) -> Result<Record, String> {
    let (&kind, body) = payload.split_first().ok_or("empty record")?;
    match kind {
        MERGED => {
            let e = wire::Entry::decode(body).map_err(|e| e.to_string())?;
            let (key, entry) = from_wire(e).map_err(|e| e.to_string())?;
            Ok(Record::Merged(key, entry))
        }
        REMOVED => {
            let e = wire::Entry::decode(body).map_err(|e| e.to_string())?;
            if e.key.is_empty() {
                return Err("a removal without a key".into());
            }
            Ok(Record::Removed(
                e.key.into_boxed_str(),
                Version::new(e.time, e.node),
            ))
        }
        DROPPED => {
            let p: [u8; 4] = body
                .try_into()
                .map_err(|_| format!("a partition drop of {} bytes", body.len()))?;
            Ok(Record::Dropped(u32::from_le_bytes(p)))
        }
        HINTED => {
            let (len, rest) = body.split_at_checked(2).ok_or("a hint cut short")?;
            let len = u16::from_le_bytes([len[0], len[1]]) as usize;
            let (peer, rest) = rest.split_at_checked(len).ok_or("a hint cut short")?;
            let (taken, rest) = rest.split_at_checked(8).ok_or("a hint cut short")?;
            let peer = std::str::from_utf8(peer).map_err(|e| e.to_string())?;
            let taken = u64::from_le_bytes(taken.try_into().map_err(|_| "a hint cut short")?);
            let e = wire::Entry::decode(rest).map_err(|e| e.to_string())?;
            let (key, entry) = from_wire(e).map_err(|e| e.to_string())?;
            Ok(Record::Hinted(peer.into(), taken, key, entry))
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let e = Entry::value(Version::new(5, 9), "v", 77);
        let mut b = Vec::new();
        merged(&mut b, "k", &e);
        assert_eq!(decode(&b), Ok(Record::Merged("k".into(), e)));
        b.clear();
        removed(&mut b, "k", Version::new(3, 4));
        assert_eq!(
            decode(&b),
            Ok(Record::Removed("k".into(), Version::new(3, 4)))
        );
        b.clear();
        dropped(&mut b, 17);
        assert_eq!(decode(&b), Ok(Record::Dropped(17)));
        b.clear();
        let e = Entry::value(Version::new(5, 9), "v", 0);
        hinted(&mut b, "n2", 1234, "k", &e);
        assert_eq!(
            decode(&b),
            Ok(Record::Hinted("n2".into(), 1234, "k".into(), e))
        );
        assert!(decode(&b[..5]).is_err());
        assert!(decode(&[9]).is_err());
        assert!(decode(&[]).is_err());
    }
}
