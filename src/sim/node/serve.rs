//! The peer service of a node: what it answers to a peer call, as the
//! production peer service (`crate::server`) does.

use crate::anti_entropy::{merge_repairs, respond, Limits};
use crate::replication::apply_deltas;

use super::{Req, Resp, SimNode};

impl SimNode {
    /// The peer service: what this node answers to a peer call.
    pub(super) fn serve(&mut self, req: Req) -> Resp {
        match req {
            Req::Apply(deltas) => {
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
}
