//! The framing every record on disk has, in the log and in snapshots:
//! a 4-byte little-endian payload length, the payload's CRC-32 (4 bytes,
//! little-endian), then the payload. A reader can tell a record cut short
//! or damaged from a good one, and where.

/// Bytes of a frame before its payload.
pub const HEADER: usize = 8;

/// The largest payload a frame may carry: far above any record (an entry
/// is bounded by the peer message limit), so a larger length read back is
/// damage, not data.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Appends one frame to `out` whose payload `write` appends.
pub fn append(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    write(out);
    let len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// Why the bytes at an offset are not a good frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// The frame runs past the end of the bytes (a write cut short).
    Short,
    /// The length is 0 or past [`MAX_PAYLOAD`].
    Length(usize),
    /// The payload does not match its checksum.
    Checksum,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Short => write!(f, "record cut short"),
            Bad::Length(n) => write!(f, "record length {n} out of range 1 to {MAX_PAYLOAD}"),
            Bad::Checksum => write!(f, "record checksum mismatch"),
        }
    }
}

/// The frame at `at` in `bytes`: its payload and the offset after it;
/// `Ok(None)` at the end of the bytes.
pub fn next(bytes: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Bad> {
    if at == bytes.len() {
        return Ok(None);
    }
    let Some(header) = bytes.get(at..at + HEADER) else {
        return Err(Bad::Short);
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Err(Bad::Length(len));
    }
    let end = at + HEADER + len;
    let Some(payload) = bytes.get(at + HEADER..end) else {
        return Err(Bad::Short);
    };
    if crc32fast::hash(payload) != crc {
        return Err(Bad::Checksum);
    }
    Ok(Some((payload, end)))
}

/// Whether a bad frame at `at` is a torn tail, the mark a crash leaves
/// while the last write was under way: the frame runs to the end of the
/// bytes, or only zeros follow its start (a file extended but not
/// written). Anything else is damage in the middle.
pub fn is_torn_tail(bytes: &[u8], at: usize, bad: Bad) -> bool {
    if bad == Bad::Short || bytes[at..].iter().all(|&b| b == 0) {
        return true;
    }
    // A checksum or length failure on the very last frame.
    let len = bytes
        .get(at..at + 4)
        .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
    len.is_some_and(|len| at + HEADER + len == bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_found() {
        let mut bytes = Vec::new();
        append(&mut bytes, |b| b.extend_from_slice(b"hello"));
        append(&mut bytes, |b| b.extend_from_slice(b"world!"));
        let (first, at) = next(&bytes, 0).unwrap().unwrap();
        assert_eq!(first, b"hello");
        let (second, end) = next(&bytes, at).unwrap().unwrap();
        assert_eq!(second, b"world!");
        assert_eq!(next(&bytes, end), Ok(None));

        // Cut short: torn.
        let cut = &bytes[..bytes.len() - 2];
        assert_eq!(next(cut, at), Err(Bad::Short));
        assert!(is_torn_tail(cut, at, Bad::Short));
        // A flipped byte in the last frame: torn; in the first: damage.
        let mut flipped = bytes.clone();
        flipped[at + HEADER] ^= 1;
        assert_eq!(next(&flipped, at), Err(Bad::Checksum));
        assert!(is_torn_tail(&flipped, at, Bad::Checksum));
        let mut flipped = bytes.clone();
        flipped[HEADER] ^= 1;
        assert_eq!(next(&flipped, 0), Err(Bad::Checksum));
        assert!(!is_torn_tail(&flipped, 0, Bad::Checksum));
        // Zeros after the last good frame: torn.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 100]);
        assert_eq!(next(&zeros, end), Err(Bad::Length(0)));
        assert!(is_torn_tail(&zeros, end, Bad::Length(0)));
    }
}
