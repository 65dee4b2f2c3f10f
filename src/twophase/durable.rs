//! What survives a crash: the records the state machines ask to persist
//! (`Action::Persist`) and the state they build, which is all a restarted
//! node has. The driver keeps `DurableState` on disk (committed and staged
//! texts as files written atomically, the rest as a small log) and applies
//! each record with `DurableState::apply` before it carries out the next
//! action.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::messages::Prepare;
use super::{ConfigHash, Decision, DecisionLog, NodeId, TxnId, Version};

/// How many past versions a participant remembers the txn of, and how many
/// finished decisions a coordinator keeps answering for.
pub const HISTORY: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    // ---- participant
    /// The lock and the yes vote that follows: the proposal is staged.
    Staged(Prepare),
    /// Install the staged proposal as the committed config; frees the lock.
    Committed { txn: TxnId },
    /// Drop the staged proposal (if it is this txn); frees the lock; never
    /// vote yes for this txn again.
    Aborted { txn: TxnId, version: Version },
    /// Never vote yes for this txn (answered `NotPrepared` to a peer, or
    /// validation outlived the lease).
    Refused { txn: TxnId, version: Version },
    /// Catch-up: a newer committed version, learnt from a peer that
    /// installed it (this node missed the txns up to it). Taken only with
    /// the lock free.
    CaughtUp(Committed),
    // ---- coordinator
    /// A txn this node coordinates is about to send PREPAREs.
    Started { txn: TxnId, started: Started },
    /// The decision of a txn this node coordinates: the decision itself
    /// with `DecisionLog::Coordinator`, a copy of the log's with
    /// `DecisionLog::Replicated`.
    Decided { txn: TxnId, decision: Decision },
    /// Every participant acknowledged the decision.
    Finished { txn: TxnId },
}

/// The config a participant runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub version: Version,
    pub hash: ConfigHash,
    pub text: String,
    /// The txn that installed it (none for the initial config).
    pub txn: Option<TxnId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settled {
    Aborted,
    Refused,
}

/// A participant's durable state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantDisk {
    pub committed: Committed,
    /// The held lock, if prepared.
    pub staged: Option<Prepare>,
    /// Which txn installed each recent version.
    pub history: BTreeMap<Version, TxnId>,
    /// Txns above the committed version that this node will never vote yes
    /// for. Below it a PREPARE fails the base check anyway, so they go.
    pub settled: BTreeMap<TxnId, (Version, Settled)>,
}

/// A txn a coordinator started and has not finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub version: Version,
    pub hash: ConfigHash,
    pub participants: Vec<NodeId>,
    /// Where its decision is recorded (see `Prepare::log`).
    pub log: DecisionLog,
}

/// A coordinator's durable state: its decision log (with
/// `DecisionLog::Coordinator`) and its unfinished txns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorDisk {
    /// The next txn sequence number: above every one used or decided.
    pub next_seq: u64,
    pub started: BTreeMap<TxnId, Started>,
    pub decisions: BTreeMap<TxnId, Decision>,
    /// Decisions of txns with a lower sequence number were pruned (finished
    /// long ago): queries about them get no answer rather than a guess.
    pub forgotten_below: u64,
}

/// Everything 2PC keeps on one node's disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableState {
    pub participant: ParticipantDisk,
    pub coordinator: CoordinatorDisk,
}

impl DurableState {
    /// A node whose committed config is `committed` and that has no txn.
    pub fn new(committed: Committed) -> DurableState {
        DurableState {
            participant: ParticipantDisk {
                committed,
                ..ParticipantDisk::default()
            },
            coordinator: CoordinatorDisk::default(),
        }
    }

    pub fn apply(&mut self, record: &Record) {
        self.participant.apply(record);
        self.coordinator.apply(record);
    }
}

impl ParticipantDisk {
    /// Applies a participant record; coordinator records are ignored.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Staged(prepare) => self.staged = Some(prepare.clone()),
            Record::Committed { txn } => {
                let Some(staged) = self.staged.take_if(|s| s.proposal.txn == *txn) else {
                    return;
                };
                let proposal = staged.proposal;
                self.history.insert(proposal.version, proposal.txn);
                while self.history.len() > HISTORY {
                    self.history.pop_first();
                }
                self.committed = Committed {
                    version: proposal.version,
                    hash: proposal.hash,
                    text: proposal.text,
                    txn: Some(proposal.txn),
                };
                let version = self.committed.version;
                self.settled.retain(|_, (v, _)| *v > version);
            }
            Record::Aborted { txn, version } => {
                self.staged.take_if(|s| s.proposal.txn == *txn);
                self.settle(*txn, *version, Settled::Aborted);
            }
            Record::Refused { txn, version } => self.settle(*txn, *version, Settled::Refused),
            Record::CaughtUp(committed) => {
                if committed.version <= self.committed.version {
                    return;
                }
                if let Some(txn) = committed.txn {
                    self.history.insert(committed.version, txn);
                    while self.history.len() > HISTORY {
                        self.history.pop_first();
                    }
                }
                self.committed = committed.clone();
                let version = self.committed.version;
                self.settled.retain(|_, (v, _)| *v > version);
            }
            Record::Started { .. } | Record::Decided { .. } | Record::Finished { .. } => {}
        }
    }

    fn settle(&mut self, txn: TxnId, version: Version, how: Settled) {
        if version > self.committed.version {
            self.settled.entry(txn).or_insert((version, how));
        }
    }
}

impl CoordinatorDisk {
    /// Applies a coordinator record; participant records are ignored. A
    /// decision, once recorded, never changes.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Started { txn, started } => {
                self.next_seq = self.next_seq.max(txn.seq.saturating_add(1));
                self.started.insert(*txn, started.clone());
            }
            Record::Decided { txn, decision } => {
                self.next_seq = self.next_seq.max(txn.seq.saturating_add(1));
                self.decisions.entry(*txn).or_insert(*decision);
            }
            Record::Finished { txn } => {
                self.started.remove(txn);
                while self.decisions.len() > HISTORY {
                    let Some(oldest) = self
                        .decisions
                        .keys()
                        .find(|t| !self.started.contains_key(t))
                        .copied()
                    else {
                        break;
                    };
                    self.decisions.remove(&oldest);
                    self.forgotten_below = self.forgotten_below.max(oldest.seq.saturating_add(1));
                }
            }
            Record::Staged(_)
            | Record::Committed { .. }
            | Record::Aborted { .. }
            | Record::Refused { .. }
            | Record::CaughtUp(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twophase::Proposal;
    use uuid::Uuid;

    fn txn(seq: u64) -> TxnId {
        TxnId {
            coordinator: NodeId(Uuid::from_u128(1)),
            seq,
        }
    }

    fn staged(seq: u64) -> Record {
        Record::Staged(Prepare {
            proposal: Proposal {
                txn: txn(seq),
                base: Version(0),
                version: Version(1),
                text: "cluster: t\n".into(),
                hash: ConfigHash([1; 32]),
            },
            participants: Vec::new(),
            lease: std::time::Duration::from_secs(5),
            log: DecisionLog::Coordinator,
        })
    }

    #[test]
    fn committing_installs_the_staged_text_and_forgets_settled_txns_below_it() {
        let mut disk = DurableState::default();
        disk.apply(&Record::Refused {
            txn: txn(7),
            version: Version(1),
        });
        disk.apply(&staged(1));
        disk.apply(&Record::Committed { txn: txn(2) });
        assert_eq!(disk.participant.committed.version, Version(0), "not staged");
        disk.apply(&Record::Committed { txn: txn(1) });
        let p = &disk.participant;
        assert_eq!(p.committed.version, Version(1));
        assert_eq!(p.committed.text, "cluster: t\n");
        assert_eq!(p.staged, None);
        assert_eq!(p.history.get(&Version(1)), Some(&txn(1)));
        assert!(p.settled.is_empty());
    }

    #[test]
    fn a_decision_never_changes_and_numbers_are_never_reused() {
        let mut disk = CoordinatorDisk::default();
        disk.apply(&Record::Decided {
            txn: txn(4),
            decision: Decision::Abort,
        });
        disk.apply(&Record::Decided {
            txn: txn(4),
            decision: Decision::Commit,
        });
        assert_eq!(disk.decisions.get(&txn(4)), Some(&Decision::Abort));
        assert_eq!(disk.next_seq, 5);
    }
}
