//! Counts replica answers against a consistency level. Pure state: the
//! coordinator feeds it answers and asks whether the level is met, can no
//! longer be met, or is still open.

use std::fmt::Write;
use std::sync::Arc;

use super::Consistency;
use crate::cluster::Topology;

/// What a replica did with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// It answered.
    Ok,
    /// It did not; why, in words for the client.
    Failed(String),
}

/// Where a tally stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Enough replicas answered.
    Met,
    /// Too many failed for the level to be met.
    Failed,
    /// Waiting for more answers.
    Open,
}

/// The answers of a key's replicas to one request.
///
/// The replicas that count fall into groups, each with its own requirement,
/// and the level is met when every group meets its own: one group of all the
/// key's replicas for ONE, QUORUM and ALL; the replicas in the coordinator's
/// region for LOCAL_ONE and LOCAL_QUORUM (the others are not counted at
/// all); one group per region holding replicas for EACH_QUORUM.
pub struct Tally {
    level: Consistency,
    /// Each counted replica, its group (index into `groups`) and its answer.
    answers: Vec<(Arc<str>, usize, Option<ReplicaAnswer>)>,
    groups: Vec<Group>,
}

/// A set of replicas of which `required` must answer.
struct Group {
    /// The region the group stands for; `None` for the whole replica set.
    region: Option<String>,
    required: usize,
}

/// How many of `n` replicas a level needs (of the replicas it counts: those
/// of one region for the regional levels).
pub fn required(level: Consistency, n: usize) -> usize {
    match level {
        Consistency::One | Consistency::Local | Consistency::LocalOne => 1,
        Consistency::Quorum | Consistency::LocalQuorum | Consistency::EachQuorum => n / 2 + 1,
        Consistency::All => n.max(1),
    }
}

impl Tally {
    /// A tally for `level` over `replicas` (ids, in preference order), all
    /// counted as one group whatever the level.
    pub fn new(level: Consistency, replicas: impl IntoIterator<Item = Arc<str>>) -> Self {
        let answers: Vec<_> = replicas.into_iter().map(|r| (r, 0, None)).collect();
        Self {
            level,
            groups: vec![Group {
                region: None,
                required: required(level, answers.len()),
            }],
            answers,
        }
    }

    /// A tally for `level` over `replicas` (ids with their region labels, in
    /// preference order), coordinated in region `local`: the regional
    /// levels count only the replicas of `local` (LOCAL_ONE, LOCAL_QUORUM)
    /// or a majority of each region (EACH_QUORUM). A region with no replica
    /// of the key fails a local level at once.
    pub fn in_regions<'a>(
        level: Consistency,
        replicas: impl IntoIterator<Item = (Arc<str>, &'a str)>,
        local: &str,
    ) -> Self {
        match level {
            Consistency::LocalOne | Consistency::LocalQuorum => {
                let replicas: Vec<_> = replicas.into_iter().collect();
                let local_count = replicas.iter().filter(|(_, r)| *r == local).count();
                let answers: Vec<_> = replicas
                    .into_iter()
                    .filter(|(_, region)| *region == local || planted_any_region())
                    .map(|(r, _)| (r, 0, None))
                    .collect();
                Self {
                    level,
                    groups: vec![Group {
                        region: Some(local.to_string()),
                        required: required(level, local_count),
                    }],
                    answers,
                }
            }
            Consistency::EachQuorum => {
                let mut groups: Vec<Group> = Vec::new();
                let mut sizes: Vec<usize> = Vec::new();
                let mut answers = Vec::new();
                for (replica, region) in replicas {
                    let g = match groups
                        .iter()
                        .position(|g| g.region.as_deref() == Some(region))
                    {
                        Some(g) => g,
                        None => {
                            groups.push(Group {
                                region: Some(region.to_string()),
                                required: 0,
                            });
                            sizes.push(0);
                            groups.len() - 1
                        }
                    };
                    sizes[g] += 1;
                    answers.push((replica, g, None));
                }
                for (group, size) in groups.iter_mut().zip(sizes) {
                    group.required = required(level, size);
                }
                if groups.is_empty() {
                    groups.push(Group {
                        region: None,
                        required: 1,
                    });
                }
                Self {
                    level,
                    answers,
                    groups,
                }
            }
            _ => Self::new(level, replicas.into_iter().map(|(r, _)| r)),
        }
    }

    /// A tally of `level` over `replicas` of a key for a request coordinated
    /// by `me`, with their regions from `topology`: the regional levels
    /// group the replicas by region, with `me`'s region as the local one;
    /// the others look no region up.
    pub fn for_replicas(
        topology: &Topology,
        level: Consistency,
        replicas: &[Arc<str>],
        me: &str,
    ) -> Self {
        match level {
            Consistency::LocalOne | Consistency::LocalQuorum | Consistency::EachQuorum => {
                Tally::in_regions(
                    level,
                    replicas.iter().map(|r| (r.clone(), topology.region_of(r))),
                    topology.region_of(me),
                )
            }
            _ => Tally::new(level, replicas.iter().cloned()),
        }
    }

    /// Records `replica`'s answer; the first answer of a replica counts, and
    /// a replica the level does not count is ignored.
    pub fn record(&mut self, replica: &str, answer: ReplicaAnswer) -> Decision {
        if let Some((_, _, slot)) = self.answers.iter_mut().find(|(r, _, _)| **r == *replica) {
            slot.get_or_insert(answer);
        }
        self.decision()
    }

    /// Whether the level counts `replica`'s answer (LOCAL_ONE and
    /// LOCAL_QUORUM count only the coordinator's region).
    pub fn counts(&self, replica: &str) -> bool {
        self.answers.iter().any(|(r, _, _)| **r == *replica)
    }

    /// Where the tally stands.
    pub fn decision(&self) -> Decision {
        let mut met = true;
        for (g, group) in self.groups.iter().enumerate() {
            let (size, ok, failed) = self.group_counts(g);
            if ok < group.required {
                met = false;
                if size - failed < group.required {
                    return Decision::Failed;
                }
            }
        }
        if met {
            Decision::Met
        } else {
            Decision::Open
        }
    }

    /// Replicas that answered.
    pub fn answered(&self) -> usize {
        self.count(|a| matches!(a, Some(ReplicaAnswer::Ok)))
    }

    /// The replicas that have not answered yet.
    pub fn waiting(&self) -> impl Iterator<Item = &str> {
        self.answers
            .iter()
            .filter(|(_, _, a)| a.is_none())
            .map(|(r, _, _)| &**r)
    }

    /// Why the level was not met, naming what each group needed and each
    /// replica's fate; `waiting` describes the ones that never answered
    /// (e.g. "no answer within 2s").
    pub fn report(&self, waiting: &str) -> String {
        let mut s = format!("consistency {} needs ", self.level.name());
        for (g, group) in self.groups.iter().enumerate() {
            let (size, ok, _) = self.group_counts(g);
            if g > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{} of {} replicas", group.required, size);
            if let Some(region) = &group.region {
                let _ = write!(s, " in region {region:?}");
            }
            if self.groups.len() > 1 {
                let _ = write!(s, " ({ok} answered)");
            }
        }
        let _ = write!(s, "; {} answered", self.answered());
        for (replica, _, answer) in &self.answers {
            let fate = match answer {
                Some(ReplicaAnswer::Ok) => "ok",
                Some(ReplicaAnswer::Failed(why)) => why,
                None => waiting,
            };
            let _ = write!(s, "; {replica}: {fate}");
        }
        s
    }

    /// A group's size, answers and failures.
    fn group_counts(&self, g: usize) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for (_, group, answer) in &self.answers {
            if *group == g {
                counts.0 += 1;
                match answer {
                    Some(ReplicaAnswer::Ok) => counts.1 += 1,
                    Some(ReplicaAnswer::Failed(_)) => counts.2 += 1,
                    None => {}
                }
            }
        }
        counts
    }

    fn count(&self, f: impl Fn(&Option<ReplicaAnswer>) -> bool) -> usize {
        self.answers.iter().filter(|(_, _, a)| f(a)).count()
    }
}

/// The simulator's planted bug: the local levels count any region.
#[cfg(test)]
fn planted_any_region() -> bool {
    crate::planted::is(crate::planted::Bug::LocalLevelsCountAnyRegion)
}

#[cfg(not(test))]
fn planted_any_region() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Arc<str>> {
        (1..=n).map(|i| Arc::from(format!("n{i}"))).collect()
    }

    #[test]
    fn levels_need_one_majority_or_all() {
        assert_eq!(required(Consistency::One, 3), 1);
        assert_eq!(required(Consistency::Quorum, 3), 2);
        assert_eq!(required(Consistency::Quorum, 4), 3);
        assert_eq!(required(Consistency::All, 3), 3);
        assert_eq!(required(Consistency::Quorum, 1), 1);
    }

    #[test]
    fn quorum_is_met_by_a_majority_and_failed_by_a_lost_majority() {
        let mut t = Tally::new(Consistency::Quorum, ids(3));
        assert_eq!(t.record("n1", ReplicaAnswer::Ok), Decision::Open);
        assert_eq!(
            t.record("n2", ReplicaAnswer::Failed("cut".into())),
            Decision::Open
        );
        assert_eq!(t.record("n3", ReplicaAnswer::Ok), Decision::Met);

        let mut t = Tally::new(Consistency::Quorum, ids(3));
        t.record("n1", ReplicaAnswer::Failed("down".into()));
        assert_eq!(
            t.record("n2", ReplicaAnswer::Failed("timeout".into())),
            Decision::Failed
        );
    }

    #[test]
    fn the_report_names_every_replica() {
        let mut t = Tally::new(Consistency::All, ids(3));
        t.record("n1", ReplicaAnswer::Ok);
        t.record(
            "n2",
            ReplicaAnswer::Failed("unreachable: connection refused".into()),
        );
        t.record("n2", ReplicaAnswer::Ok); // a second answer does not count
        assert_eq!(t.decision(), Decision::Failed);
        assert_eq!(
            t.report("no answer within 2s"),
            "consistency ALL needs 3 of 3 replicas; 1 answered; n1: ok; \
             n2: unreachable: connection refused; n3: no answer within 2s"
        );
        assert_eq!(t.waiting().collect::<Vec<_>>(), vec!["n3"]);
    }

    fn in_regions(level: Consistency) -> Tally {
        let replicas = crate::cluster::SIX_IN_THREE_REGIONS;
        Tally::in_regions(
            level,
            replicas.iter().map(|(id, r)| (Arc::from(*id), *r)),
            "r1",
        )
    }

    #[test]
    fn local_levels_count_only_the_coordinators_region() {
        let mut t = in_regions(Consistency::LocalQuorum);
        assert!(!t.counts("b1"), "another region's replica is not counted");
        // Every remote replica answering does not meet LOCAL_QUORUM.
        for r in ["b1", "b2", "c1", "c2"] {
            assert_eq!(t.record(r, ReplicaAnswer::Ok), Decision::Open);
        }
        assert_eq!(t.record("a1", ReplicaAnswer::Ok), Decision::Open);
        assert_eq!(t.record("a2", ReplicaAnswer::Ok), Decision::Met);

        let mut t = in_regions(Consistency::LocalQuorum);
        t.record("a1", ReplicaAnswer::Ok);
        assert_eq!(
            t.record("a2", ReplicaAnswer::Failed("cut".into())),
            Decision::Failed
        );
        assert_eq!(
            t.report("-"),
            "consistency LOCAL_QUORUM needs 2 of 2 replicas in region \"r1\"; 1 answered; \
             a1: ok; a2: cut"
        );

        let mut t = in_regions(Consistency::LocalOne);
        assert_eq!(t.record("b1", ReplicaAnswer::Ok), Decision::Open);
        assert_eq!(
            t.record("a1", ReplicaAnswer::Failed("down".into())),
            Decision::Open
        );
        assert_eq!(t.record("a2", ReplicaAnswer::Ok), Decision::Met);
    }

    #[test]
    fn a_local_level_fails_at_once_in_a_region_without_replicas() {
        let t = Tally::in_regions(
            Consistency::LocalOne,
            [(Arc::from("b1"), "r2"), (Arc::from("c1"), "r3")],
            "r1",
        );
        assert_eq!(t.decision(), Decision::Failed);
        assert_eq!(
            t.report("-"),
            "consistency LOCAL_ONE needs 1 of 0 replicas in region \"r1\"; 0 answered"
        );
    }

    #[test]
    fn each_quorum_needs_a_majority_in_every_region() {
        let mut t = in_regions(Consistency::EachQuorum);
        for r in ["a1", "a2", "b1", "b2"] {
            assert_eq!(t.record(r, ReplicaAnswer::Ok), Decision::Open);
        }
        assert_eq!(t.record("c1", ReplicaAnswer::Ok), Decision::Open);
        assert_eq!(t.record("c2", ReplicaAnswer::Ok), Decision::Met);

        // One region lost fails it, naming that region's count.
        let mut t = in_regions(Consistency::EachQuorum);
        for r in ["a1", "a2", "b1", "b2", "c1"] {
            t.record(r, ReplicaAnswer::Ok);
        }
        assert_eq!(
            t.record("c2", ReplicaAnswer::Failed("cut".into())),
            Decision::Failed
        );
        let report = t.report("-");
        assert!(
            report.starts_with(
                "consistency EACH_QUORUM needs 2 of 2 replicas in region \"r1\" (2 answered), \
                 2 of 2 replicas in region \"r2\" (2 answered), \
                 2 of 2 replicas in region \"r3\" (1 answered); 5 answered"
            ),
            "{report}"
        );

        // Three replicas in a region need two of them.
        let mut t = Tally::in_regions(
            Consistency::EachQuorum,
            [("a1", "r1"), ("a2", "r1"), ("a3", "r1"), ("b1", "r2")]
                .iter()
                .map(|(id, r)| (Arc::from(*id), *r)),
            "r1",
        );
        t.record("a1", ReplicaAnswer::Ok);
        t.record("b1", ReplicaAnswer::Ok);
        assert_eq!(t.decision(), Decision::Open);
        assert_eq!(t.record("a3", ReplicaAnswer::Ok), Decision::Met);
    }

    #[test]
    fn the_global_levels_ignore_regions() {
        let mut t = in_regions(Consistency::Quorum);
        for r in ["b1", "b2", "c1"] {
            t.record(r, ReplicaAnswer::Ok);
        }
        assert_eq!(t.record("c2", ReplicaAnswer::Ok), Decision::Met);
    }
}
