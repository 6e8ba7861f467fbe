//! The peer service of a node: what it answers to a peer call, as the
//! production peer service (`crate::server`) does.

use crate::anti_entropy::{merge_repairs, respond, Limits};
use crate::coordinator::relay::region_mates;
use crate::crdt::Entry;
use crate::replication::apply_deltas;
use crate::store::Key;

use super::{Req, Resp, SimNode};

impl SimNode {
    /// The peer service: what this node answers to a peer call from `from`.
    pub(super) fn serve(&mut self, from: &str, req: Req) -> Resp {
        match req {
            Req::Apply(deltas) => {
                apply_deltas(&self.store, &self.clock, deltas, self.grace());
                Resp::Applied
            }
            Req::Relay(deltas) => {
                self.hand_on(from, &deltas);
                apply_deltas(&self.store, &self.clock, deltas, self.grace());
                Resp::Applied
            }
            // As the production peer service: a node still refilling
            // answers no reads (the asker's view of it may lag).
            Req::Read(_) if !self.ready => Resp::NotReady,
            Req::Read(key) => Resp::Read(self.store.get(&key)),
            Req::Clock => Resp::Clock(self.clock.latest().time),
            Req::Holding(partitions) => Resp::Holding(
                partitions
                    .into_iter()
                    .filter(|&p| self.store.partition_len(p) > 0)
                    .collect(),
            ),
            Req::Sync(request) => Resp::Sync(
                respond(&self.store, request, Limits::default())
                    .map(|answer| {
                        let grace = self.grace();
                        let changed = merge_repairs(
                            &self.store,
                            &self.clock,
                            answer.merge,
                            grace,
                            answer.handoff,
                        );
                        self.sync_merged(changed);
                        answer.reply
                    })
                    .map_err(|e| e.to_string()),
            ),
        }
    }

    /// Queues each relayed entry, which `from` sent, for the key's other
    /// replicas in this node's region (held as a hint for one this node's
    /// view holds down), as production's `Relay` for the coordinator does.
    fn hand_on(&mut self, from: &str, deltas: &[(Key, Entry)]) {
        let (topology, me) = (self.topology.clone(), self.id.clone());
        for (key, entry) in deltas {
            for mate in region_mates(&topology, key, &me, from) {
                if topology.is_alive(mate) {
                    self.push(mate, key.clone(), entry.clone(), None);
                } else {
                    self.hint(mate, key.clone(), entry.clone());
                }
            }
        }
    }
}
