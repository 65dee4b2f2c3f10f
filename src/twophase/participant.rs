//! A node's side of every transaction it takes part in: the single 2PC
//! lock, the vote, installing or dropping the staged config, and asking
//! for the decision when the lease runs out (see the module doc of
//! `twophase` for the rules and why they are safe).

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::durable::{ParticipantDisk, Record, Settled};
use super::messages::{Answer, Message, Prepare, Vote};
use super::{backoff, Action, ConfigHash, Decision, DecisionLog, Event, NodeId, TxnId, Version};

const ASKED_WHILE_VALIDATING: &str =
    "a peer asked for the decision before this node finished validating";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantConfig {
    /// First pause between two rounds of queries (or proposals) once the
    /// lease ran out; doubles up to `max_query_interval`.
    pub query_interval: Duration,
    pub max_query_interval: Duration,
}

impl Default for ParticipantConfig {
    fn default() -> Self {
        ParticipantConfig {
            query_interval: Duration::from_millis(500),
            max_query_interval: Duration::from_secs(4),
        }
    }
}

#[derive(Clone, Debug)]
enum Lock {
    Free,
    /// Locked, validation running, no vote sent: may still give up alone.
    Validating {
        prepare: Prepare,
        until: Instant,
    },
    /// Voted yes (the proposal is staged on disk); inside the lease.
    Prepared {
        txn: TxnId,
        until: Instant,
    },
    /// Voted yes, lease over, no decision: asking, lock kept.
    Waiting {
        txn: TxnId,
        since: Instant,
        next: Instant,
        interval: Duration,
        rounds: u32,
    },
}

/// The lock as the status API shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockStatus {
    Free,
    Validating {
        txn: TxnId,
        until: Instant,
    },
    Prepared {
        txn: TxnId,
        until: Instant,
    },
    /// The lease ran out without a decision (or the node restarted
    /// prepared): the lock is kept and the decision asked for.
    Waiting {
        txn: TxnId,
        since: Instant,
        rounds: u32,
    },
}

impl LockStatus {
    pub fn txn(&self) -> Option<TxnId> {
        match *self {
            LockStatus::Free => None,
            LockStatus::Validating { txn, .. }
            | LockStatus::Prepared { txn, .. }
            | LockStatus::Waiting { txn, .. } => Some(txn),
        }
    }
}

impl fmt::Display for LockStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockStatus::Free => f.write_str("no apply in progress"),
            LockStatus::Validating { txn, .. } => write!(f, "validating {txn}"),
            LockStatus::Prepared { txn, .. } => write!(f, "prepared for {txn}"),
            LockStatus::Waiting { txn, .. } => write!(f, "waiting for the decision of {txn}"),
        }
    }
}

/// Why `Participant::catch_up` did not install a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CatchUpRefused {
    #[error("version {have} is committed here already")]
    NotNewer { have: Version },
    #[error("the 2PC lock is held by {0}")]
    Locked(TxnId),
    #[error("a version without the txn that installed it")]
    NoTxn,
}

/// Counters for the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParticipantStats {
    pub prepared: u64,
    pub committed: u64,
    pub aborted: u64,
    pub refused: u64,
    /// Query rounds sent after a lease ran out.
    pub query_rounds: u64,
    /// Versions installed by catch-up.
    pub caught_up: u64,
    pub anomalies: u64,
    /// Yes votes withdrawn because `Staged` could not be written.
    pub stage_failures: u64,
}

/// One node's participant. See the module doc.
pub struct Participant {
    me: NodeId,
    config: ParticipantConfig,
    disk: ParticipantDisk,
    lock: Lock,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: ParticipantStats,
}

impl Participant {
    /// Builds the participant from its durable state (a fresh node, or a
    /// restart). A node that restarts prepared does not know how long it
    /// was away: it keeps the lock and asks for the decision at once.
    pub fn new(
        now: Instant,
        me: NodeId,
        config: ParticipantConfig,
        disk: &ParticipantDisk,
    ) -> Participant {
        let mut participant = Participant {
            me,
            config,
            disk: disk.clone(),
            lock: Lock::Free,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: ParticipantStats::default(),
        };
        if let Some(txn) = participant.disk.staged.as_ref().map(|s| s.proposal.txn) {
            participant.start_waiting(now, txn);
        }
        participant
    }

    // ---- inputs ---------------------------------------------------------

    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        match message {
            Message::Prepare(prepare) => self.on_prepare(now, from, prepare),
            Message::Decision {
                txn,
                version,
                decision,
            } if from == txn.coordinator => self.on_decision(txn, version, decision),
            Message::Query { txn, version } => self.on_query(from, txn, version),
            Message::Answer { txn, answer } => self.on_answer(txn, answer),
            // Not for a participant (see `Message::role`), or a decision
            // from a node that does not coordinate the txn.
            Message::Decision { .. } | Message::Vote { .. } | Message::Ack { .. } => {}
        }
    }

    /// The driver finished `Action::Validate` for `txn`. Ignored unless the
    /// lock is still validating that txn.
    pub fn validated(&mut self, now: Instant, txn: TxnId, result: Result<(), String>) {
        let Lock::Validating { prepare, until } = &self.lock else {
            return;
        };
        if prepare.proposal.txn != txn {
            return;
        }
        let (prepare, until) = (prepare.clone(), *until);
        match result {
            Ok(()) if now < until => {
                // Staged before the vote: a yes must survive a crash.
                self.persist(Record::Staged(prepare));
                self.lock = Lock::Prepared { txn, until };
                self.stats.prepared += 1;
                self.send(
                    txn.coordinator,
                    Message::Vote {
                        txn,
                        vote: Vote::Yes,
                    },
                );
            }
            Ok(()) => self.refuse(txn, "validation did not finish within the lease".into()),
            Err(reason) => {
                self.lock = Lock::Free;
                self.send(
                    txn.coordinator,
                    Message::Vote {
                        txn,
                        vote: Vote::No(reason),
                    },
                );
            }
        }
    }

    /// The driver could not carry out `Persist(Staged)` for `txn` (a full
    /// or read-only disk) and has carried out nothing after it: the yes
    /// queued behind it is withdrawn, the lock freed, and the coordinator
    /// hears no with `why`. Nothing was promised, so this is the refusal of
    /// a failed validation. (Should a half-done write have left the staged
    /// txn on disk after all, a restart finds this node prepared for a txn
    /// it voted no for: it asks, and hears the abort that no vote forced.)
    /// Returns whether it did: not unless this node is prepared for `txn`
    /// and its yes is still queued (else the driver must write `Staged`
    /// after all: the promise may be out).
    pub fn stage_failed(&mut self, txn: TxnId, why: String) -> bool {
        if !matches!(self.lock, Lock::Prepared { txn: t, .. } if t == txn) {
            return false;
        }
        let yes = Message::Vote {
            txn,
            vote: Vote::Yes,
        };
        let before = self.actions.len();
        self.actions.retain(|a| {
            !matches!(a, Action::Send { to, message } if *to == txn.coordinator && *message == yes)
        });
        if self.actions.len() == before {
            return false;
        }
        self.disk.staged.take_if(|s| s.proposal.txn == txn);
        self.lock = Lock::Free;
        self.stats.prepared = self.stats.prepared.saturating_sub(1);
        self.stats.stage_failures += 1;
        self.vote_no(txn, why);
        true
    }

    /// Catch-up: installs `committed`, a newer version that a peer
    /// installed (so its txn was decided commit: a node installs only
    /// that). Refused while the lock is held: a prepared node learns the
    /// fate of its txn by asking, and a validating one by its lease; the
    /// driver tries again once the lock is free.
    pub fn catch_up(&mut self, committed: super::Committed) -> Result<(), CatchUpRefused> {
        let have = self.disk.committed.version;
        if committed.version <= have {
            return Err(CatchUpRefused::NotNewer { have });
        }
        if let Some(txn) = self.lock_txn() {
            return Err(CatchUpRefused::Locked(txn));
        }
        let Some(txn) = committed.txn else {
            return Err(CatchUpRefused::NoTxn);
        };
        let (version, hash) = (committed.version, committed.hash);
        self.persist(Record::CaughtUp(committed));
        self.stats.caught_up += 1;
        self.events
            .push_back(Event::Installed { txn, version, hash });
        Ok(())
    }

    /// `DecisionLog::Replicated`: the log holds `decision` for `txn`.
    pub fn decision_recorded(&mut self, txn: TxnId, decision: Decision) {
        if self.staged_txn() == Some(txn) {
            self.finish(txn, decision);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self.lock.clone() {
            Lock::Validating { prepare, until } if now >= until => {
                self.refuse(
                    prepare.proposal.txn,
                    "validation did not finish within the lease".into(),
                );
            }
            Lock::Prepared { txn, until } if now >= until => self.start_waiting(now, txn),
            Lock::Waiting {
                txn,
                since,
                next,
                interval,
                rounds,
            } if now >= next => {
                let interval = backoff(interval, self.config.max_query_interval);
                self.lock = Lock::Waiting {
                    txn,
                    since,
                    next: now + interval,
                    interval,
                    rounds: rounds + 1,
                };
                self.ask(txn);
            }
            _ => {}
        }
    }

    // ---- outputs --------------------------------------------------------

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.lock {
            Lock::Free => None,
            Lock::Validating { until, .. } | Lock::Prepared { until, .. } => Some(until),
            Lock::Waiting { next, .. } => Some(next),
        }
    }

    // ---- queries --------------------------------------------------------

    pub fn status(&self) -> LockStatus {
        match self.lock {
            Lock::Free => LockStatus::Free,
            Lock::Validating { ref prepare, until } => LockStatus::Validating {
                txn: prepare.proposal.txn,
                until,
            },
            Lock::Prepared { txn, until } => LockStatus::Prepared { txn, until },
            Lock::Waiting {
                txn, since, rounds, ..
            } => LockStatus::Waiting { txn, since, rounds },
        }
    }

    /// The committed version and hash (what gossip advertises).
    pub fn committed(&self) -> (Version, ConfigHash) {
        let c = &self.disk.committed;
        (c.version, c.hash)
    }

    pub fn stats(&self) -> ParticipantStats {
        self.stats
    }

    // ---- handlers -------------------------------------------------------

    fn on_prepare(&mut self, now: Instant, from: NodeId, prepare: Prepare) {
        let proposal = &prepare.proposal;
        let txn = proposal.txn;
        if from != txn.coordinator {
            return;
        }
        match self.lock_txn() {
            Some(held) if held == txn => {
                // A re-sent PREPARE: our vote was lost (or is on its way).
                if !matches!(self.lock, Lock::Validating { .. }) {
                    self.send(
                        from,
                        Message::Vote {
                            txn,
                            vote: Vote::Yes,
                        },
                    );
                }
                return;
            }
            Some(held) => return self.vote_no(txn, format!("locked by {held}")),
            None => {}
        }
        if let Some((_, how)) = self.disk.settled.get(&txn) {
            let why = match how {
                Settled::Aborted => "this txn was aborted here already",
                Settled::Refused => {
                    "refused: a peer asked for its decision before the PREPARE arrived"
                }
            };
            return self.vote_no(txn, why.into());
        }
        if self.disk.history.get(&proposal.version) == Some(&txn) {
            // Committed here already: the coordinator decided long ago.
            return;
        }
        let have = self.disk.committed.version;
        if proposal.base != have {
            return self.vote_no(
                txn,
                format!(
                    "base version mismatch: have {have}, the change is based on {}",
                    proposal.base
                ),
            );
        }
        if proposal.version != proposal.base.next() {
            return self.vote_no(txn, "the new version is not base + 1".into());
        }
        if !prepare.participants.contains(&self.me) {
            return self.vote_no(txn, "this node is not a participant of the txn".into());
        }
        let until = now + prepare.lease;
        self.actions
            .push_back(Action::Validate(prepare.proposal.clone()));
        self.lock = Lock::Validating { prepare, until };
    }

    fn on_decision(&mut self, txn: TxnId, version: Version, decision: Decision) {
        if self.staged_txn() == Some(txn) {
            return self.finish(txn, decision);
        }
        let validating =
            matches!(&self.lock, Lock::Validating { prepare, .. } if prepare.proposal.txn == txn);
        match decision {
            Decision::Abort => {
                if self.disk.history.get(&version) == Some(&txn) {
                    return self.anomaly(txn, "an abort for a txn installed here");
                }
                if validating {
                    self.lock = Lock::Free;
                }
                // Remembered, so that a late PREPARE of it gets a no.
                if version > self.disk.committed.version && !self.disk.settled.contains_key(&txn) {
                    self.persist(Record::Aborted { txn, version });
                }
                self.send(txn.coordinator, Message::Ack { txn });
            }
            Decision::Commit => match self.disk.history.get(&version) {
                Some(installed) if *installed == txn => {
                    self.send(txn.coordinator, Message::Ack { txn });
                }
                Some(_) => self.anomaly(txn, "a commit for a version another txn installed here"),
                // Past it, and its record pruned: nothing left to do.
                None if self.disk.committed.version > version => {
                    self.send(txn.coordinator, Message::Ack { txn });
                }
                None => self.anomaly(txn, "a commit for a txn this node never voted yes for"),
            },
        }
    }

    fn on_query(&mut self, from: NodeId, txn: TxnId, version: Version) {
        let answer = if self.staged_txn() == Some(txn) {
            Answer::Prepared
        } else if let Some((_, how)) = self.disk.settled.get(&txn) {
            match how {
                Settled::Aborted => Answer::Aborted,
                Settled::Refused => Answer::NotPrepared,
            }
        } else if let Some(installed) = self.disk.history.get(&version) {
            // Another txn installed that version here: this one can never
            // commit anywhere (one text per version).
            if *installed == txn {
                Answer::Committed
            } else {
                Answer::Aborted
            }
        } else if self.disk.committed.version >= version {
            // Older than our history: we cannot tell, so say nothing.
            return;
        } else {
            // Not prepared (maybe validating, maybe the PREPARE is still on
            // its way): refuse it for good before saying so, which is what
            // makes "not prepared" a safe reason to abort.
            if let Lock::Validating { prepare, .. } = &self.lock {
                if prepare.proposal.txn == txn {
                    self.lock = Lock::Free;
                    self.send(
                        txn.coordinator,
                        Message::Vote {
                            txn,
                            vote: Vote::No(ASKED_WHILE_VALIDATING.into()),
                        },
                    );
                }
            }
            self.persist(Record::Refused { txn, version });
            self.stats.refused += 1;
            Answer::NotPrepared
        };
        self.send(from, Message::Answer { txn, answer });
    }

    fn on_answer(&mut self, txn: TxnId, answer: Answer) {
        if !matches!(self.lock, Lock::Waiting { txn: t, .. } if t == txn) {
            return;
        }
        if self.staged_log() == Some(DecisionLog::Replicated) {
            // Only the replicated log decides; peers' words are not needed.
            return;
        }
        match answer {
            Answer::Committed => self.finish(txn, Decision::Commit),
            Answer::Aborted | Answer::NotPrepared => self.finish(txn, Decision::Abort),
            Answer::Prepared => {}
        }
    }

    // ---- helpers --------------------------------------------------------

    fn lock_txn(&self) -> Option<TxnId> {
        self.status().txn()
    }

    fn staged_txn(&self) -> Option<TxnId> {
        match self.lock {
            Lock::Prepared { txn, .. } | Lock::Waiting { txn, .. } => Some(txn),
            Lock::Free | Lock::Validating { .. } => None,
        }
    }

    fn staged_log(&self) -> Option<DecisionLog> {
        self.disk.staged.as_ref().map(|s| s.log)
    }

    fn start_waiting(&mut self, now: Instant, txn: TxnId) {
        let interval = self.config.query_interval;
        self.lock = Lock::Waiting {
            txn,
            since: now,
            next: now + interval,
            interval,
            rounds: 1,
        };
        self.ask(txn);
    }

    /// One round: ask the coordinator and every other participant, or (with
    /// a replicated log) propose Abort: the log answers with the decision
    /// it holds, whoever recorded it first.
    fn ask(&mut self, txn: TxnId) {
        self.stats.query_rounds += 1;
        let Some(staged) = &self.disk.staged else {
            return;
        };
        if staged.log == DecisionLog::Replicated {
            self.actions.push_back(Action::Propose {
                txn,
                decision: Decision::Abort,
                installs: None,
            });
            return;
        }
        let version = staged.proposal.version;
        let mut targets: Vec<NodeId> = staged.participants.clone();
        targets.push(txn.coordinator);
        targets.sort();
        targets.dedup();
        // Our own node only when it coordinates: its log answers.
        let me = self.me;
        targets.retain(|n| *n != me || *n == txn.coordinator);
        for to in targets {
            self.send(to, Message::Query { txn, version });
        }
    }

    fn finish(&mut self, txn: TxnId, decision: Decision) {
        let Some(staged) = &self.disk.staged else {
            return;
        };
        let (version, hash) = (staged.proposal.version, staged.proposal.hash);
        match decision {
            Decision::Commit => {
                self.persist(Record::Committed { txn });
                self.stats.committed += 1;
                self.events
                    .push_back(Event::Installed { txn, version, hash });
            }
            Decision::Abort => {
                self.persist(Record::Aborted { txn, version });
                self.stats.aborted += 1;
            }
        }
        self.lock = Lock::Free;
        self.events.push_back(Event::Released { txn, decision });
        self.send(txn.coordinator, Message::Ack { txn });
    }

    /// Gives up a txn this node has not voted yes for, for good.
    fn refuse(&mut self, txn: TxnId, why: String) {
        let version = match &self.lock {
            Lock::Validating { prepare, .. } => prepare.proposal.version,
            _ => return,
        };
        self.lock = Lock::Free;
        self.persist(Record::Refused { txn, version });
        self.stats.refused += 1;
        self.vote_no(txn, why);
    }

    fn vote_no(&mut self, txn: TxnId, why: String) {
        self.send(
            txn.coordinator,
            Message::Vote {
                txn,
                vote: Vote::No(why),
            },
        );
    }

    fn anomaly(&mut self, txn: TxnId, what: &str) {
        self.stats.anomalies += 1;
        self.events.push_back(Event::Anomaly {
            txn,
            what: what.into(),
        });
    }

    fn persist(&mut self, record: Record) {
        self.disk.apply(&record);
        self.actions.push_back(Action::Persist(record));
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.actions.push_back(Action::Send { to, message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twophase::{Proposal, Version};
    use uuid::Uuid;

    const LEASE: Duration = Duration::from_secs(5);

    fn node(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    /// Coordinator a, this node b, and c.
    fn abc() -> (NodeId, NodeId, NodeId) {
        (node(1), node(2), node(3))
    }

    fn txn(seq: u64) -> TxnId {
        TxnId {
            coordinator: node(1),
            seq,
        }
    }

    fn prepare(seq: u64, base: u64) -> Message {
        prepare_with(seq, base, DecisionLog::Coordinator)
    }

    fn prepare_with(seq: u64, base: u64, log: DecisionLog) -> Message {
        let (a, b, c) = abc();
        Message::Prepare(Prepare {
            proposal: Proposal {
                txn: txn(seq),
                base: Version(base),
                version: Version(base + 1),
                text: format!("text {seq}"),
                hash: ConfigHash([seq as u8; 32]),
            },
            participants: vec![a, b, c],
            lease: LEASE,
            log,
        })
    }

    fn decision(txn: TxnId, version: Version, decision: Decision) -> Message {
        Message::Decision {
            txn,
            version,
            decision,
        }
    }

    fn query(txn: TxnId, version: Version) -> Message {
        Message::Query { txn, version }
    }

    fn participant(now: Instant) -> Participant {
        Participant::new(
            now,
            node(2),
            ParticipantConfig::default(),
            &ParticipantDisk::default(),
        )
    }

    fn drain(p: &mut Participant) -> Vec<Action> {
        std::iter::from_fn(|| p.poll_action()).collect()
    }

    fn votes(actions: &[Action]) -> Vec<Vote> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    message: Message::Vote { vote, .. },
                    ..
                } => Some(vote.clone()),
                _ => None,
            })
            .collect()
    }

    /// A participant prepared (yes sent) for txn 1 on base 0.
    fn prepared(now: Instant) -> Participant {
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        p.validated(now, txn(1), Ok(()));
        drain(&mut p);
        p
    }

    #[test]
    fn staged_is_persisted_before_the_yes_is_sent() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        assert!(matches!(drain(&mut p)[..], [Action::Validate(_)]));
        p.validated(now, txn(1), Ok(()));
        let actions = drain(&mut p);
        assert!(matches!(actions[0], Action::Persist(Record::Staged(_))));
        assert_eq!(votes(&actions), vec![Vote::Yes]);
        assert_eq!(actions.len(), 2);
        assert!(matches!(p.status(), LockStatus::Prepared { .. }));
    }

    #[test]
    fn a_stage_that_cannot_be_written_becomes_a_no_and_frees_the_lock() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        drain(&mut p);
        p.validated(now, txn(1), Ok(()));
        // The driver takes the persist, fails to write it, and says so
        // before taking anything else.
        assert!(matches!(
            p.poll_action(),
            Some(Action::Persist(Record::Staged(_)))
        ));
        assert!(p.stage_failed(txn(1), "disk full".into()));
        assert_eq!(votes(&drain(&mut p)), vec![Vote::No("disk full".into())]);
        assert_eq!(p.status(), LockStatus::Free);
        assert_eq!(p.stats().stage_failures, 1);
        // The next PREPARE is taken as on any free node (the disk works
        // again, say): validated, staged, yes.
        p.handle_message(now, node(1), prepare(2, 0));
        p.validated(now, txn(2), Ok(()));
        let actions = drain(&mut p);
        assert!(matches!(actions[1], Action::Persist(Record::Staged(_))));
        assert_eq!(votes(&actions), vec![Vote::Yes]);
    }

    #[test]
    fn a_stage_failure_after_the_yes_went_out_changes_nothing() {
        let now = Instant::now();
        let mut p = prepared(now);
        assert!(!p.stage_failed(txn(1), "disk full".into()));
        assert!(drain(&mut p).is_empty());
        assert!(matches!(p.status(), LockStatus::Prepared { .. }));
    }

    #[test]
    fn a_second_txn_is_told_who_holds_the_lock() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        drain(&mut p);
        p.handle_message(now, node(1), prepare(2, 0));
        let expected = format!("locked by txn 1 from node {}", node(1));
        assert_eq!(votes(&drain(&mut p)), vec![Vote::No(expected)]);
    }

    #[test]
    fn a_wrong_base_is_refused_with_the_version_held() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 3));
        let vote = votes(&drain(&mut p));
        assert!(
            matches!(&vote[..], [Vote::No(why)] if why.starts_with("base version mismatch: have 0")),
            "{vote:?}"
        );
        assert_eq!(p.status(), LockStatus::Free);
    }

    #[test]
    fn a_failed_validation_votes_no_and_frees_the_lock() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        p.validated(now, txn(1), Err("port 8080 in use".into()));
        assert_eq!(
            votes(&drain(&mut p)),
            vec![Vote::No("port 8080 in use".into())]
        );
        assert_eq!(p.status(), LockStatus::Free);
    }

    #[test]
    fn commit_installs_releases_then_acknowledges() {
        let now = Instant::now();
        let mut p = prepared(now);
        p.handle_message(now, node(1), decision(txn(1), Version(1), Decision::Commit));
        let actions = drain(&mut p);
        assert_eq!(
            actions[0],
            Action::Persist(Record::Committed { txn: txn(1) })
        );
        assert!(matches!(
            actions[1],
            Action::Send {
                message: Message::Ack { .. },
                ..
            }
        ));
        assert_eq!(p.status(), LockStatus::Free);
        assert_eq!(p.committed().0, Version(1));
        assert!(std::iter::from_fn(|| p.poll_event()).any(|e| matches!(
            e,
            Event::Installed {
                version: Version(1),
                ..
            }
        )));
    }

    #[test]
    fn abort_releases_and_a_late_prepare_of_it_gets_no() {
        let now = Instant::now();
        let mut p = prepared(now);
        let abort = decision(txn(1), Version(1), Decision::Abort);
        p.handle_message(now, node(1), abort);
        let actions = drain(&mut p);
        assert!(matches!(
            actions[0],
            Action::Persist(Record::Aborted { .. })
        ));
        assert_eq!(p.status(), LockStatus::Free);
        p.handle_message(now, node(1), prepare(1, 0));
        assert!(matches!(&votes(&drain(&mut p))[..], [Vote::No(_)]));
        assert_eq!(p.status(), LockStatus::Free);
    }

    #[test]
    fn a_decision_from_another_node_is_ignored() {
        let now = Instant::now();
        let mut p = prepared(now);
        let commit = decision(txn(1), Version(1), Decision::Commit);
        p.handle_message(now, node(3), commit);
        assert!(drain(&mut p).is_empty());
        assert!(matches!(p.status(), LockStatus::Prepared { .. }));
    }

    fn queries(actions: &[Action]) -> Vec<NodeId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    to,
                    message: Message::Query { .. },
                } => Some(*to),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn at_lease_end_it_keeps_the_lock_asks_everyone_and_says_why() {
        let now = Instant::now();
        let mut p = prepared(now);
        assert_eq!(p.poll_timeout(), Some(now + LEASE));
        p.handle_timeout(now + LEASE);
        let (a, _, c) = abc();
        assert_eq!(queries(&drain(&mut p)), vec![a, c]);
        assert_eq!(
            p.status().to_string(),
            format!("waiting for the decision of txn 1 from node {a}")
        );
        // "Prepared" tells nothing, however often: keep asking, with a
        // growing pause.
        for _ in 0..5 {
            p.handle_message(
                now,
                c,
                Message::Answer {
                    txn: txn(1),
                    answer: Answer::Prepared,
                },
            );
        }
        assert!(drain(&mut p).is_empty());
        let first = p.poll_timeout().unwrap_or(now);
        p.handle_timeout(first);
        assert_eq!(queries(&drain(&mut p)), vec![a, c]);
        let second = p.poll_timeout().unwrap_or(now);
        assert!(second - first > first - (now + LEASE));
        assert!(matches!(p.status(), LockStatus::Waiting { rounds: 2, .. }));
    }

    fn waiting(now: Instant) -> Participant {
        let mut p = prepared(now);
        p.handle_timeout(now + LEASE);
        drain(&mut p);
        p
    }

    #[test]
    fn answers_that_decide() {
        let now = Instant::now();
        for (answer, decision) in [
            (Answer::Committed, Decision::Commit),
            (Answer::Aborted, Decision::Abort),
            (Answer::NotPrepared, Decision::Abort),
        ] {
            let mut p = waiting(now);
            p.handle_message(
                now,
                node(3),
                Message::Answer {
                    txn: txn(1),
                    answer,
                },
            );
            let released = std::iter::from_fn(|| p.poll_event()).find_map(|e| match e {
                Event::Released { decision, .. } => Some(decision),
                _ => None,
            });
            assert_eq!(released, Some(decision), "{answer:?}");
            assert_eq!(p.status(), LockStatus::Free);
        }
    }

    #[test]
    fn a_prepared_node_still_accepts_the_commit_long_after_its_lease() {
        let now = Instant::now();
        let mut p = waiting(now);
        let later = now + LEASE * 100;
        p.handle_timeout(later);
        p.handle_message(
            later,
            node(1),
            decision(txn(1), Version(1), Decision::Commit),
        );
        assert_eq!(p.committed().0, Version(1));
        assert_eq!(p.stats().anomalies, 0);
    }

    #[test]
    fn a_query_about_an_unprepared_txn_refuses_it_durably_first() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(3), query(txn(1), Version(1)));
        let actions = drain(&mut p);
        assert!(matches!(
            actions[0],
            Action::Persist(Record::Refused { .. })
        ));
        assert!(matches!(
            actions[1],
            Action::Send {
                message: Message::Answer {
                    answer: Answer::NotPrepared,
                    ..
                },
                ..
            }
        ));
        // The PREPARE that was still on its way: no.
        p.handle_message(now, node(1), prepare(1, 0));
        assert!(matches!(&votes(&drain(&mut p))[..], [Vote::No(_)]));
        // And a commit for it would be an anomaly, never installed.
        p.handle_message(now, node(1), decision(txn(1), Version(1), Decision::Commit));
        assert_eq!(p.committed().0, Version(0));
        assert_eq!(p.stats().anomalies, 1);
    }

    #[test]
    fn a_query_while_validating_gives_the_vote_up() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        drain(&mut p);
        p.handle_message(now, node(3), query(txn(1), Version(1)));
        assert_eq!(p.status(), LockStatus::Free);
        // The validation's late answer changes nothing.
        drain(&mut p);
        p.validated(now, txn(1), Ok(()));
        assert!(drain(&mut p).is_empty());
    }

    #[test]
    fn a_prepared_node_answers_prepared() {
        let now = Instant::now();
        let mut p = prepared(now);
        p.handle_message(now, node(3), query(txn(1), Version(1)));
        assert!(matches!(
            drain(&mut p)[..],
            [Action::Send {
                message: Message::Answer {
                    answer: Answer::Prepared,
                    ..
                },
                ..
            }]
        ));
    }

    #[test]
    fn validation_that_outlives_the_lease_gives_up_alone() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare(1, 0));
        drain(&mut p);
        p.handle_timeout(now + LEASE);
        let actions = drain(&mut p);
        assert!(matches!(
            actions[0],
            Action::Persist(Record::Refused { .. })
        ));
        assert!(matches!(&votes(&actions)[..], [Vote::No(_)]));
        assert_eq!(p.status(), LockStatus::Free);
    }

    #[test]
    fn a_resent_prepare_gets_the_yes_again_without_a_second_persist() {
        let now = Instant::now();
        let mut p = prepared(now);
        p.handle_message(now, node(1), prepare(1, 0));
        let actions = drain(&mut p);
        assert_eq!(votes(&actions), vec![Vote::Yes]);
        assert_eq!(actions.len(), 1);
    }

    #[test]
    fn a_node_that_restarts_prepared_asks_at_once() {
        let now = Instant::now();
        let mut disk = ParticipantDisk::default();
        let Message::Prepare(staged) = prepare(1, 0) else {
            unreachable!()
        };
        disk.apply(&Record::Staged(staged));
        let mut p = Participant::new(now, node(2), ParticipantConfig::default(), &disk);
        assert_eq!(queries(&drain(&mut p)), vec![node(1), node(3)]);
        assert!(matches!(p.status(), LockStatus::Waiting { .. }));
    }

    #[test]
    fn with_a_replicated_log_the_lease_end_proposes_abort_and_follows_the_log() {
        let now = Instant::now();
        let mut p = participant(now);
        p.handle_message(now, node(1), prepare_with(1, 0, DecisionLog::Replicated));
        p.validated(now, txn(1), Ok(()));
        drain(&mut p);
        p.handle_timeout(now + LEASE);
        assert_eq!(
            drain(&mut p),
            vec![Action::Propose {
                txn: txn(1),
                decision: Decision::Abort,
                installs: None,
            }]
        );
        // Peers' answers do not decide a replicated txn.
        p.handle_message(
            now + LEASE,
            node(3),
            Message::Answer {
                txn: txn(1),
                answer: Answer::Aborted,
            },
        );
        assert!(matches!(p.status(), LockStatus::Waiting { .. }));
        // The coordinator's commit was recorded first: it wins.
        p.decision_recorded(txn(1), Decision::Commit);
        assert_eq!(p.committed().0, Version(1));
    }
}
