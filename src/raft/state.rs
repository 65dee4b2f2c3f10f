//! The replicated state machine: what every member of the group agrees on,
//! changed only by committed [`Command`]s applied in log order. No I/O and
//! no clock: the same commands give the same state on every node, which is
//! all Raft needs of it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::twophase::{ConfigHash, Decision, TxnId, Version};

/// How many 2PC decisions are kept. A txn is decided within its lease and
/// forgotten long after; a decision older than this many later ones is only
/// asked for by a node that has been down meanwhile, and that node catches
/// up to the committed version anyway (see [`Response::Forgotten`]).
pub const DECISIONS_KEPT: usize = 4096;

/// A write to the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Make `node` the master of `set` if the set's fencing generation is
    /// still `expect` (compare-and-set: an appointment computed from a view
    /// that another appointment has since changed is refused, never applied
    /// twice). `expect` 0 means "the set has no master yet".
    AppointMaster {
        set: String,
        node: String,
        expect: u64,
        /// Why, for the log and `cohort status` ("s1-a is dead", "operator").
        reason: String,
    },
    /// The leader of `term` announces itself (its first write), so the
    /// leader is part of what the group agrees on.
    Leader { term: u64, node: NodeId },
    /// Forget the masters of replica sets that left the topology.
    ForgetSets { sets: Vec<String> },
    /// Record the decision of a 2PC transaction unless one is recorded:
    /// the first recorded wins, whoever proposed it. A commit names the
    /// version it installs, which becomes the committed topology.
    RecordDecision {
        txn: TxnId,
        decision: Decision,
        installs: Option<(Version, ConfigHash)>,
    },
}

/// The answer to one command, computed by the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to answer (a blank or membership entry, `ForgetSets`).
    #[default]
    Done,
    /// The set's master is now `master`.
    Appointed(Master),
    /// The appointment was refused: the set's master is `current` (or it
    /// has none), whose generation was not the one expected.
    Stale { current: Option<Master> },
    /// The decision recorded for the txn: the one proposed, or an earlier.
    Decided(Decision),
    /// The txn is older than every decision kept for its coordinator.
    Forgotten,
}

/// The master of a replica set and its fencing generation: every
/// appointment in a set takes the next generation, so no two masters of one
/// set ever share one. A role can stamp its writes with it and refuse
/// writes stamped with an older one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Master {
    pub node: String,
    pub generation: u64,
    pub reason: String,
}

impl fmt::Display for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (generation {})", self.node, self.generation)
    }
}

/// Everything the group agrees on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The leader of the latest term, as it announced itself.
    pub leader: Option<(u64, NodeId)>,
    /// Master of each replica set that has one.
    pub masters: BTreeMap<String, Master>,
    /// The last topology version committed through a recorded decision.
    pub topology: Option<(Version, ConfigHash)>,
    /// The last generation of each set whose master was forgotten.
    retired: BTreeMap<String, u64>,
    /// Recent 2PC decisions, the oldest first in `decided_order`.
    pub decisions: BTreeMap<TxnId, Decision>,
    decided_order: VecDeque<TxnId>,
    /// Per coordinator, the highest txn sequence whose decision was
    /// dropped to keep [`DECISIONS_KEPT`]: asking about it, or proposing
    /// for it, gets [`Response::Forgotten`] (never a fresh first decision,
    /// which could contradict the forgotten one).
    forgotten_below: BTreeMap<NodeId, u64>,
}

impl ClusterState {
    /// What a view of the group shows: everything but the 2PC decisions,
    /// which only the leader's write path reads (a view is built every
    /// round and sent to every node outside the group at each change).
    pub fn summary(&self) -> ClusterState {
        ClusterState {
            leader: self.leader,
            masters: self.masters.clone(),
            topology: self.topology,
            retired: self.retired.clone(),
            ..ClusterState::default()
        }
    }

    /// Applies one committed command.
    pub fn apply(&mut self, command: &Command) -> Response {
        match command {
            Command::AppointMaster {
                set,
                node,
                expect,
                reason,
            } => {
                let current = self.masters.get(set);
                let generation = current.map_or(0, |m| m.generation);
                if generation != *expect {
                    return Response::Stale {
                        current: current.cloned(),
                    };
                }
                // A set that was forgotten and comes back continues its
                // generations: a fencing token is never handed out twice.
                let before = self.retired.get(set).copied().unwrap_or(0);
                let master = Master {
                    node: node.clone(),
                    generation: generation.max(before) + 1,
                    reason: reason.clone(),
                };
                self.masters.insert(set.clone(), master.clone());
                Response::Appointed(master)
            }
            Command::Leader { term, node } => {
                self.leader_elected(*term, *node);
                Response::Done
            }
            Command::ForgetSets { sets } => {
                for set in sets {
                    if let Some(master) = self.masters.remove(set) {
                        self.retired.insert(set.clone(), master.generation);
                    }
                }
                Response::Done
            }
            Command::RecordDecision {
                txn,
                decision,
                installs,
            } => {
                if let Some(recorded) = self.decision(txn) {
                    return recorded;
                }
                self.decisions.insert(*txn, *decision);
                self.decided_order.push_back(*txn);
                if *decision == Decision::Commit {
                    if let Some((version, hash)) = installs {
                        if self.topology.is_none_or(|(v, _)| v < *version) {
                            self.topology = Some((*version, *hash));
                        }
                    }
                }
                while self.decided_order.len() > DECISIONS_KEPT {
                    let old = self.decided_order.pop_front().expect("not empty");
                    self.decisions.remove(&old);
                    let floor = self.forgotten_below.entry(old.coordinator).or_default();
                    *floor = (*floor).max(old.seq);
                }
                Response::Decided(*decision)
            }
        }
    }

    /// A leader announced itself (never moves back to an older term).
    pub fn leader_elected(&mut self, term: u64, leader: NodeId) {
        if self.leader.is_none_or(|(t, _)| t <= term) {
            self.leader = Some((term, leader));
        }
    }

    /// What is known of `txn`: its recorded decision, `Forgotten`, or
    /// None (nothing recorded yet).
    pub fn decision(&self, txn: &TxnId) -> Option<Response> {
        if let Some(decision) = self.decisions.get(txn) {
            return Some(Response::Decided(*decision));
        }
        let forgotten = self
            .forgotten_below
            .get(&txn.coordinator)
            .is_some_and(|floor| txn.seq <= *floor);
        forgotten.then_some(Response::Forgotten)
    }

    /// The master of `set`, if it has one.
    pub fn master(&self, set: &str) -> Option<&Master> {
        self.masters.get(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn appoint(set: &str, node: &str, expect: u64) -> Command {
        Command::AppointMaster {
            set: set.into(),
            node: node.into(),
            expect,
            reason: "test".into(),
        }
    }

    fn txn(seq: u64) -> TxnId {
        TxnId {
            coordinator: NodeId(Uuid::from_u128(1)),
            seq,
        }
    }

    fn decide(seq: u64, decision: Decision, version: u64) -> Command {
        Command::RecordDecision {
            txn: txn(seq),
            decision,
            installs: Some((Version(version), ConfigHash([version as u8; 32]))),
        }
    }

    #[test]
    fn appointments_take_the_next_generation_and_refuse_a_stale_view() {
        let mut s = ClusterState::default();
        let Response::Appointed(a) = s.apply(&appoint("s1", "a", 0)) else {
            panic!("the first appointment is taken");
        };
        assert_eq!((a.node.as_str(), a.generation), ("a", 1));
        // Two leaders' views of generation 1: only the first write counts.
        assert!(matches!(
            s.apply(&appoint("s1", "b", 1)),
            Response::Appointed(Master { generation: 2, .. })
        ));
        assert_eq!(
            s.apply(&appoint("s1", "c", 1)),
            Response::Stale {
                current: s.master("s1").cloned()
            }
        );
        assert_eq!(s.master("s1").unwrap().node, "b");
        s.apply(&Command::ForgetSets {
            sets: vec!["s1".into()],
        });
        assert_eq!(s.master("s1"), None);
        // The set comes back: its generations go on, never repeat.
        assert!(matches!(
            s.apply(&appoint("s1", "a", 0)),
            Response::Appointed(Master { generation: 3, .. })
        ));
    }

    #[test]
    fn the_first_recorded_decision_wins_and_sets_the_committed_version() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(&decide(1, Decision::Commit, 2)),
            Response::Decided(Decision::Commit)
        );
        assert_eq!(
            s.apply(&decide(1, Decision::Abort, 2)),
            Response::Decided(Decision::Commit)
        );
        assert_eq!(s.topology.map(|(v, _)| v), Some(Version(2)));
        // An abort never moves the committed version; an older commit
        // recorded late does not move it back.
        s.apply(&decide(2, Decision::Abort, 3));
        s.apply(&decide(3, Decision::Commit, 1));
        assert_eq!(s.topology.map(|(v, _)| v), Some(Version(2)));
    }

    #[test]
    fn old_decisions_are_forgotten_never_decided_afresh() {
        let mut s = ClusterState::default();
        for seq in 1..=(DECISIONS_KEPT as u64 + 10) {
            s.apply(&decide(seq, Decision::Commit, seq));
        }
        assert_eq!(s.decisions.len(), DECISIONS_KEPT);
        assert_eq!(s.apply(&decide(5, Decision::Abort, 5)), Response::Forgotten);
        assert_eq!(s.decision(&txn(10)), Some(Response::Forgotten));
        assert_eq!(
            s.decision(&txn(11)),
            Some(Response::Decided(Decision::Commit))
        );
        assert_eq!(s.decision(&txn(DECISIONS_KEPT as u64 + 11)), None);
    }
}
