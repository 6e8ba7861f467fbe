//! The version every write is stamped with.

use std::fmt;

/// A hybrid-logical-clock stamp: 64 bits of NTP64 time and the id of the
/// clock that issued it.
///
/// Versions order by time, then by clock id read as an unsigned number, as
/// the public contract states. Two writes never share a version: each clock
/// issues strictly increasing times, and clock ids differ between nodes. The
/// clock id is 64 bits (not uhlc's 128) so that a version takes 16 bytes in
/// every stored entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// NTP64: upper 32 bits seconds since the UNIX epoch, lower 32 bits the
    /// fraction of a second.
    pub time: u64,
    /// The id of the issuing clock.
    pub node: u64,
}

impl Version {
    /// The version issued at `time` by the clock `node`.
    pub const fn new(time: u64, node: u64) -> Self {
        Self { time, node }
    }

    /// The clock id as the contract spells it: lowercase hexadecimal without
    /// leading zeros.
    pub fn node_hex(&self) -> String {
        // By hand rather than `format!("{:x}")`: every response carries a
        // version, and the formatting machinery cost more than twice this.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 16];
        for (i, digit) in buf.iter_mut().enumerate() {
            *digit = DIGITS[((self.node >> (60 - 4 * i)) & 0xf) as usize];
        }
        // Leading zeros are dropped; zero itself keeps its one digit.
        let start = ((self.node.leading_zeros() / 4) as usize).min(15);
        // ASCII digits, always valid UTF-8: checked and copied in one go
        // (collecting chars encoded each one on its own).
        std::str::from_utf8(&buf[start..])
            .unwrap_or_default()
            .to_owned()
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:x}", self.time, self.node)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_then_numeric_node() {
        assert!(Version::new(1, 9) < Version::new(2, 1));
        // The contract reads the node as a number: 0x100 > 0x2.
        assert!(Version::new(5, 0x2) < Version::new(5, 0x100));
        assert_eq!(Version::new(5, 0x100).node_hex(), "100");
    }

    #[test]
    fn node_hex_is_lowercase_without_leading_zeros() {
        for node in [
            0,
            1,
            0xf,
            0x10,
            0xabc,
            0x9f3c_5a7e_21b4_d680,
            u64::MAX,
            1 << 63,
        ] {
            assert_eq!(Version::new(0, node).node_hex(), format!("{node:x}"));
        }
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(
                Version::new(0, x >> (x % 64)).node_hex(),
                format!("{:x}", x >> (x % 64))
            );
        }
    }
}
