//! Two-phase commit of topology changes: the coordinator and participant
//! state machines (no I/O, no clock: every input carries `now`, outputs are
//! polled), the messages between them and the records they keep durably.
//! A driver (the agent over `rpc`, or the simulator in `sim`) carries out
//! the actions in order and feeds the answers back.
//!
//! # The protocol
//!
//! Any node may coordinate a transaction ([`TxnId`] = coordinator + a
//! sequence number kept in its data dir). The coordinator persists
//! `Started`, then sends PREPARE (the whole proposal, the participant list
//! and the lease) to every participant in parallel, re-sending to those that
//! have not voted. A participant takes its single 2PC lock (another txn gets
//! "locked by txn T from node N"), checks the base version ("base version
//! mismatch: have V"), asks its driver to validate (`Action::Validate`, the
//! roles' `validate_config`), and on success persists `Staged` before it
//! sends its yes vote: a yes is a promise that survives a crash.
//!
//! The coordinator decides once every vote is in (commit if all are yes,
//! else abort with every reason) or at `decide_by = start + lease / 2`
//! (abort, naming the silent nodes). The
//! decision is recorded (`Persist(Decided)` with [`DecisionLog::Coordinator`])
//! before any participant can hear it; it is then sent to all and re-sent
//! until each acknowledges. A participant installs on commit
//! (`Persist(Committed)`) or drops the staged text on abort, which releases
//! its lock, and acknowledges.
//!
//! # Leases, and why clocks only matter for liveness
//!
//! The lock has a lease (carried in PREPARE, so every participant uses the
//! coordinator's). The coordinator decides by `lease / 2` on its clock,
//! while a participant's lease runs `lease` on its own clock from the later
//! moment it got PREPARE: with clocks ±10 % apart the decision is due by
//! 0.56·lease of real time, the earliest expiry is at 0.91·lease. So the
//! decision normally reaches participants inside their lease. No safety
//! property below depends on this: a lease only tells a participant when to
//! start asking.
//!
//! A participant that has not voted yet (still validating) when its lease
//! ends simply gives up: it votes no and records that it refuses the txn.
//!
//! # Termination: a prepared participant whose lease ran out
//!
//! It must not stay locked silently, and it must not guess. It asks the
//! coordinator and every other participant (`Query`), again and again with a
//! backoff, and reports "waiting for the decision of txn T from node N":
//!
//! * anyone answers `Committed` → commit;
//! * anyone answers `Aborted` → abort;
//! * a participant answers `NotPrepared` → abort. Before answering, that
//!   participant durably records that it refuses the txn (it will vote no if
//!   the PREPARE is still on its way), so the coordinator can never collect
//!   its yes and never decide commit;
//! * the coordinator answers from its decision log. A coordinator with no
//!   decision for a txn it is not collecting votes for (it restarted, or the
//!   txn is unknown, or `decide_by` has passed) first records Abort, then
//!   answers `Aborted`: votes live only in its memory, so after a restart it
//!   can never decide commit for that txn;
//! * `Prepared` (a participant as uncertain as we are, or a coordinator
//!   still collecting) tells nothing: keep asking.
//!
//! **Why a prepared participant never refuses a later commit.** A tempting
//! rule: a participant that answers `Prepared` after its own lease expired
//! becomes "abort-pending" and refuses a later commit, so that uncertain
//! participants can abort together. It is unsafe. Once a participant has
//! voted yes, the coordinator may have decided commit and delivered it to
//! another participant R, which installed it and then crashed (or is cut off). If
//! the coordinator is also down, every reachable participant is prepared;
//! should they refuse the commit and abort, R and they run two different
//! versions. The only participants that can safely refuse a commit are
//! those that never voted yes: that is exactly the `Refused` record above
//! (this module's "abort-pending": a node asked about a txn it has not
//! prepared, or whose validation outlived the lease). Refusing is safe
//! there because the coordinator needs every yes to decide commit. (It would
//! also be safe if *every* participant were prepared and had promised to
//! refuse, since then nobody can have installed the commit; but the
//! coordinator's node is a participant of the applies the agent starts (it
//! is in the old or the new topology), so whenever that unanimity is
//! reachable the coordinator's log is reachable too and answers directly.
//! We do not implement it.) The simulator test
//! `prepared_nodes_never_abort_while_a_silent_node_may_have_installed`
//! plays exactly this case.
//!
//! **What remains blocking.** With [`DecisionLog::Coordinator`]: a prepared
//! participant whose lease expired while the coordinator's node is down or
//! unreachable and no reachable participant knows the outcome. It keeps its
//! lock (renewed, no other apply can start on it), keeps asking, and its
//! status says "waiting for the decision of txn T from node N"; it resolves
//! as soon as the coordinator (whose decision, if any, is on its disk) or a
//! node that heard the decision answers. Aborting there could lose a commit
//! that some node already installed; committing could install a txn the
//! coordinator aborted. 2PC alone cannot do better; a consensus log can.
//!
//! **With a replicated decision log** ([`DecisionLog::Replicated`], Raft)
//! the decision of a txn is the first one the log records, whoever
//! proposed it. The coordinator proposes its decision (`Action::Propose`)
//! and announces what the log answers (`decision_recorded`); a participant
//! whose lease ran out proposes Abort and follows the answer. Nothing
//! blocks while a majority of voters is up. Which log a txn uses is fixed
//! when it starts and travels in its PREPARE ([`Prepare::log`]): a node
//! never mixes the two for one txn (a coordinator that decided commit
//! alone while a participant had the log record abort would split the
//! cluster).
//!
//! # A write that fails
//!
//! The driver carries out a `Persist` before anything queued after it. If
//! it cannot (a full disk), two records may be given up, since nothing
//! of them has left the node yet: `Staged` (`Participant::stage_failed`:
//! the queued yes becomes a no, as after a failed validation) and
//! `Started` (`Coordinator::start_failed`: the txn is dropped with its
//! queued PREPAREs). Any other record must be written before the actions
//! after it, so the driver retries it and holds them; the machines may
//! run ahead in memory meanwhile, but nothing reaches another node or the
//! caller, exactly as on a slow disk. The simulator plays this
//! (`SimConfig::disk_failure`, `Sim::set_disk_full`).
//!
//! # Safety, in one paragraph
//!
//! A node installs txn T only on a commit that originates in the decision
//! log (the coordinator's message, its answer from the log, or a peer that
//! installed it), and the log records commit only after every participant
//! persisted a yes. A node drops T only on an abort that originates in the
//! log, on a `NotPrepared` answer from a participant that has durably
//! refused T, or on an `Aborted` answer from a node where another txn
//! installed T's version: in each case no commit of T can exist. A node
//! that has not voted yes may give T up alone (its no is enough). The log
//! holds one decision per txn,
//! so no node installs T while another drops it. Two txns on the same base
//! cannot both commit: their participant sets share a node (the coordinator
//! insists on a majority of the base topology's nodes), which holds one
//! lock at a time and votes yes only on its committed version. Time only
//! decides when to ask, never what to do.

pub mod coordinator;
pub mod durable;
pub mod messages;
pub mod participant;
pub mod sim;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::membership::NodeId;
pub use coordinator::{Coordinator, CoordinatorConfig, Start, StartError};
pub use durable::{Committed, CoordinatorDisk, DurableState, Record, Settled, Started};
pub use messages::{Answer, Message, Prepare, Role, Vote};
pub use participant::{CatchUpRefused, LockStatus, Participant, ParticipantConfig};

/// One transaction: the coordinator that started it and its sequence
/// number there (unique for the life of the coordinator's data dir).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    pub coordinator: NodeId,
    pub seq: u64,
}

impl fmt::Display for TxnId {
    /// `txn 7 from node <uuid>`, the form every message uses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "txn {} from node {}", self.seq, self.coordinator)
    }
}

/// A committed topology version. 0 is the empty cluster before any apply.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version(pub u64);

impl Version {
    pub fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The hash of a topology text (SHA-256 in the agent). Opaque here: the
/// caller computes it, the protocol only carries and compares it.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigHash(pub [u8; 32]);

impl ConfigHash {
    /// The full hash in lowercase hex (the API's form). One allocation:
    /// each node renders every peer's hash (a `format!` per byte was 33
    /// allocations a hash, counted from the code).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(64);
        for b in self.0 {
            text.push(char::from(DIGITS[usize::from(b >> 4)]));
            text.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        text
    }

    /// A hash from its full hex (either case); None for anything else.
    pub fn from_hex(text: &str) -> Option<ConfigHash> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let digit = |c: u8| {
            char::from(c)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let mut hash = [0u8; 32];
        for (byte, pair) in hash.iter_mut().zip(text.chunks_exact(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(ConfigHash(hash))
    }
}

impl fmt::Debug for ConfigHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigHash({self})")
    }
}

impl fmt::Display for ConfigHash {
    /// The first 6 bytes in hex, enough to tell versions apart in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What a transaction would install: `version = base + 1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub txn: TxnId,
    pub base: Version,
    pub version: Version,
    pub text: String,
    pub hash: ConfigHash,
}

/// The outcome of a transaction, once recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Decision {
    Commit,
    Abort,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Commit => "commit",
            Decision::Abort => "abort",
        })
    }
}

/// Where a txn's decision is recorded, and so who may make one. The
/// coordinator chooses it for each txn (`Start::log`) and the PREPARE
/// carries it, so every node of a txn agrees on it, whatever each one
/// thinks of the cluster's Raft group meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionLog {
    /// In the coordinator's data dir (a cluster without Raft voters): only
    /// the coordinator decides; others learn the decision by asking it (or
    /// a peer that heard it). Blocking case: see the module doc.
    #[default]
    Coordinator,
    /// A replicated log (Raft): anyone may propose a decision for a txn and
    /// the first one recorded wins. The driver carries out
    /// `Action::Propose` and calls `decision_recorded` with the decision
    /// the log holds.
    Replicated,
}

/// What the driver must do, in order: each action is finished (a
/// `Persist` is on disk, fsynced) before the next one starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make this record durable; see `DurableState::apply` for its meaning.
    Persist(Record),
    Send {
        to: NodeId,
        message: Message,
    },
    /// Validate the proposal (the whole text and this node's roles'
    /// `validate_config`), then call `Participant::validated`.
    Validate(Proposal),
    /// `DecisionLog::Replicated` only: propose this decision for the txn,
    /// then call `decision_recorded` with the one the log holds (maybe not
    /// the one proposed). Proposing again is harmless.
    Propose {
        txn: TxnId,
        decision: Decision,
        /// With a commit: the version it installs and its hash, which the
        /// log keeps as the committed topology.
        installs: Option<(Version, ConfigHash)>,
    },
}

/// What happened, for the application (the agent, the API, the logs).
/// Take events only after carrying out every pending action: the caller
/// must never hear of a decision that is not on disk yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The coordinator decided: the caller's answer.
    Decided(TxnResult),
    /// Every participant acknowledged the decision; the coordinator forgets
    /// the txn.
    Finished { txn: TxnId },
    /// The participant installed a new committed version: run the roles'
    /// `apply_config`.
    Installed {
        txn: TxnId,
        version: Version,
        hash: ConfigHash,
    },
    /// The participant's lock is free again.
    Released { txn: TxnId, decision: Decision },
    /// A message that contradicts the protocol (a commit for a txn this node
    /// refused or never prepared). Ignored; logged loudly by the driver.
    Anomaly { txn: TxnId, what: String },
}

/// The caller's answer for one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    pub txn: TxnId,
    pub version: Version,
    pub outcome: Outcome,
    /// Participants whose vote never arrived before the decision.
    pub silent: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed(Version),
    /// Every reason given, by node. Silent nodes are in `TxnResult::silent`.
    Aborted {
        reasons: std::collections::BTreeMap<NodeId, String>,
    },
}

impl fmt::Display for TxnResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Committed(version) => write!(f, "committed version {version}")?,
            Outcome::Aborted { reasons } => {
                write!(f, "aborted {}", self.txn)?;
                for (node, why) in reasons {
                    write!(f, "; {node}: {why}")?;
                }
            }
        }
        if !self.silent.is_empty() {
            write!(f, "; no answer from")?;
            for node in &self.silent {
                write!(f, " {node}")?;
            }
        }
        Ok(())
    }
}

/// Doubles `interval`, at most `max`.
fn backoff(interval: Duration, max: Duration) -> Duration {
    interval.saturating_mul(2).min(max)
}

#[cfg(test)]
mod tests {
    use super::ConfigHash;

    #[test]
    fn a_hash_in_hex_reads_back_and_nothing_else_does() {
        let hash = ConfigHash(std::array::from_fn(|i| (i * 37) as u8));
        let text = hash.to_hex();
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("00254a6f94b9"), "{text}");
        assert!(text.starts_with(&hash.to_string()), "Display is its prefix");
        assert_eq!(ConfigHash::from_hex(&text), Some(hash));
        assert_eq!(ConfigHash::from_hex(&text.to_uppercase()), Some(hash));
        assert_eq!(ConfigHash::from_hex(&text[..62]), None);
        assert_eq!(ConfigHash::from_hex(&format!("{}zz", &text[..62])), None);
        assert_eq!(ConfigHash::from_hex(""), None);
    }
}
