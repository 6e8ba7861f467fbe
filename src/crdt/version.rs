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
        format!("{:x}", self.node)
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
}
