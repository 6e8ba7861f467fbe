//! The fault switch: a per-peer verdict on every message between nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// What happens to one message to or from a peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// Deliver it.
    Pass,
    /// Drop it silently.
    Drop,
    /// Deliver it after this delay.
    Delay(Duration),
}

/// A degraded link: a fraction of messages dropped, the rest delayed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Degradation {
    /// Fraction of messages dropped, 0.0 to 1.0.
    pub drop: f64,
    /// Delay added to each message that is not dropped.
    pub delay: Duration,
}

#[derive(Default)]
struct Faults {
    cut: BTreeSet<String>,
    degraded: BTreeMap<String, Degradation>,
    /// Gossip addresses of known peers, so UDP traffic (which knows only
    /// addresses) can be judged by node id.
    addresses: HashMap<SocketAddr, String>,
    /// State of the generator behind drop decisions (xorshift64*).
    rng: u64,
}

/// The faults this node holds against its peers. Every message between
/// nodes asks it for a verdict, by node id or by gossip address. With no
/// faults set, every verdict is `Pass`, at the cost of one uncontended read
/// lock.
pub struct Switch {
    faults: RwLock<Faults>,
}

impl Default for Switch {
    fn default() -> Self {
        Self::new()
    }
}

impl Switch {
    /// A switch with no faults.
    pub fn new() -> Self {
        Self {
            faults: RwLock::new(Faults {
                rng: 0x9E37_79B9_7F4A_7C15,
                ..Faults::default()
            }),
        }
    }

    /// Records that `peer` gossips from `addr`.
    pub fn learn_address(&self, peer: &str, addr: SocketAddr) {
        let mut f = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        if f.addresses.get(&addr).map(String::as_str) != Some(peer) {
            f.addresses.insert(addr, peer.to_string());
        }
    }

    /// Drops every message to and from `peers` until healed.
    pub fn cut(&self, peers: impl IntoIterator<Item = String>) {
        let mut f = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        for p in peers {
            f.degraded.remove(&p);
            f.cut.insert(p);
        }
    }

    /// Degrades the links to `peers` until healed.
    pub fn degrade(&self, peers: impl IntoIterator<Item = String>, how: Degradation) {
        let mut f = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        for p in peers {
            f.cut.remove(&p);
            f.degraded.insert(p, how);
        }
    }

    /// Lifts every fault.
    pub fn heal(&self) {
        let mut f = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        f.cut.clear();
        f.degraded.clear();
    }

    /// The peers cut off and the peers degraded, each sorted.
    pub fn state(&self) -> (Vec<String>, Vec<String>) {
        let f = self.faults.read().unwrap_or_else(PoisonError::into_inner);
        (
            f.cut.iter().cloned().collect(),
            f.degraded.keys().cloned().collect(),
        )
    }

    /// The verdict on one message to or from `peer` (a node id).
    pub fn verdict(&self, peer: &str) -> Verdict {
        {
            let f = self.faults.read().unwrap_or_else(PoisonError::into_inner);
            if f.cut.is_empty() && f.degraded.is_empty() {
                return Verdict::Pass;
            }
            if f.cut.contains(peer) {
                return Verdict::Drop;
            }
            if !f.degraded.contains_key(peer) {
                return Verdict::Pass;
            }
        }
        let mut f = self.faults.write().unwrap_or_else(PoisonError::into_inner);
        let Some(how) = f.degraded.get(peer).copied() else {
            return Verdict::Pass;
        };
        if next_unit(&mut f.rng) < how.drop {
            Verdict::Drop
        } else if how.delay.is_zero() {
            Verdict::Pass
        } else {
            Verdict::Delay(how.delay)
        }
    }

    /// The verdict on one gossip datagram to or from `addr`. Traffic from an
    /// address not yet tied to a node id passes: it can only be a node that
    /// has not gossiped yet, which no fault names.
    pub fn verdict_for_addr(&self, addr: SocketAddr) -> Verdict {
        let peer = {
            let f = self.faults.read().unwrap_or_else(PoisonError::into_inner);
            if f.cut.is_empty() && f.degraded.is_empty() {
                return Verdict::Pass;
            }
            match f.addresses.get(&addr) {
                Some(peer) => peer.clone(),
                None => return Verdict::Pass,
            }
        };
        self.verdict(&peer)
    }
}

/// A uniform draw in [0, 1) from a xorshift64* generator: drop decisions
/// need no cryptographic quality, only independence from the traffic.
fn next_unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_drops_by_id_and_by_address_until_healed() {
        let s = Switch::new();
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        s.learn_address("b", addr);
        assert_eq!(s.verdict("b"), Verdict::Pass);
        s.cut(["b".to_string()]);
        assert_eq!(s.verdict("b"), Verdict::Drop);
        assert_eq!(s.verdict_for_addr(addr), Verdict::Drop);
        assert_eq!(s.verdict("c"), Verdict::Pass);
        assert_eq!(s.state(), (vec!["b".to_string()], vec![]));
        s.heal();
        assert_eq!(s.verdict_for_addr(addr), Verdict::Pass);
    }

    #[test]
    fn degrade_drops_about_the_fraction_and_delays_the_rest() {
        let s = Switch::new();
        let how = Degradation {
            drop: 0.3,
            delay: Duration::from_millis(5),
        };
        s.degrade(["b".to_string()], how);
        let dropped = (0..10_000)
            .filter(|_| s.verdict("b") == Verdict::Drop)
            .count();
        assert!((2_500..3_500).contains(&dropped), "{dropped}");
        assert!(matches!(s.verdict("b"), Verdict::Drop | Verdict::Delay(_)));
        assert_eq!(s.state().1, vec!["b".to_string()]);
    }
}
