//! Who made a write: the identity that dots of structured values name.

use std::fmt;

/// One incarnation of one node: the author of the dots in maps and
/// counters.
///
/// The node part is the node's clock id (the `node` of its versions). The
/// incarnation is drawn afresh every time a node starts (and when it
/// renews its counter sequence table, see the `dots` module), so a node that
/// restarts with empty memory is a new actor: it can never issue a dot that
/// one of its earlier lives issued, even if its clock went backwards in
/// between. Two actors of the same node are simply two actors.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Actor {
    /// The clock id of the node.
    pub node: u64,
    /// Which life of the node.
    pub incarnation: u64,
}

impl Actor {
    /// The actor `node`, in its life `incarnation`.
    pub const fn new(node: u64, incarnation: u64) -> Self {
        Self { node, incarnation }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}#{:x}", self.node, self.incarnation)
    }
}
