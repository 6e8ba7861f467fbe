//! Counts replica answers against a consistency level. Pure state: the
//! coordinator feeds it answers and asks whether the level is met, can no
//! longer be met, or is still open.

use std::fmt::Write;
use std::sync::Arc;

use super::Consistency;

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
pub struct Tally {
    level: Consistency,
    required: usize,
    answers: Vec<(Arc<str>, Option<ReplicaAnswer>)>,
}

/// How many of `n` replicas a level needs.
pub fn required(level: Consistency, n: usize) -> usize {
    match level {
        Consistency::One | Consistency::Local => 1,
        Consistency::Quorum => n / 2 + 1,
        Consistency::All => n.max(1),
    }
}

impl Tally {
    /// A tally for `level` over `replicas` (ids, in preference order).
    pub fn new(level: Consistency, replicas: impl IntoIterator<Item = Arc<str>>) -> Self {
        let answers: Vec<_> = replicas.into_iter().map(|r| (r, None)).collect();
        Self {
            level,
            required: required(level, answers.len()),
            answers,
        }
    }

    /// Records `replica`'s answer; the first answer of a replica counts.
    pub fn record(&mut self, replica: &str, answer: ReplicaAnswer) -> Decision {
        if let Some((_, slot)) = self.answers.iter_mut().find(|(r, _)| **r == *replica) {
            slot.get_or_insert(answer);
        }
        self.decision()
    }

    /// Where the tally stands.
    pub fn decision(&self) -> Decision {
        let ok = self.count(|a| matches!(a, Some(ReplicaAnswer::Ok)));
        let failed = self.count(|a| matches!(a, Some(ReplicaAnswer::Failed(_))));
        if ok >= self.required {
            Decision::Met
        } else if self.answers.len() - failed < self.required {
            Decision::Failed
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
            .filter(|(_, a)| a.is_none())
            .map(|(r, _)| &**r)
    }

    /// Why the level was not met, naming each replica's fate; `waiting`
    /// describes the ones that never answered (e.g. "no answer within 2s").
    pub fn report(&self, waiting: &str) -> String {
        let mut s = format!(
            "consistency {} needs {} of {} replicas; {} answered",
            self.level.name(),
            self.required,
            self.answers.len(),
            self.answered()
        );
        for (replica, answer) in &self.answers {
            let fate = match answer {
                Some(ReplicaAnswer::Ok) => "ok",
                Some(ReplicaAnswer::Failed(why)) => why,
                None => waiting,
            };
            let _ = write!(s, "; {replica}: {fate}");
        }
        s
    }

    fn count(&self, f: impl Fn(&Option<ReplicaAnswer>) -> bool) -> usize {
        self.answers.iter().filter(|(_, a)| f(a)).count()
    }
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
}
