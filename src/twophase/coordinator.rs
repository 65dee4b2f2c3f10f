//! The coordinator of the transactions this node starts: PREPARE to all,
//! votes until `decide_by`, the decision recorded before anyone hears it,
//! then announced until every participant acknowledges. It also answers
//! queries about its txns from its decision log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::durable::{CoordinatorDisk, Record, Started};
use super::messages::{Answer, Message, Prepare, Vote};
use super::{
    backoff, Action, ConfigHash, Decision, DecisionLog, Event, NodeId, Outcome, Proposal, TxnId,
    TxnResult, Version,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// The participants' lock lease, plus `lease_per_participant` for each
    /// of a txn's participants; votes are collected for half of it.
    pub lease: Duration,
    /// Every participant adds work before the votes are in: the
    /// coordinator seals and sends it the whole text, and it parses,
    /// checks and fsyncs it. Where nodes share cores these add up: 500
    /// agents on 2 cores did not have their votes in within a fixed
    /// 2.5 s, and every abort and retry added more load (issue 10).
    pub lease_per_participant: Duration,
    /// First pause before re-sending a PREPARE or a decision to a silent
    /// participant; doubles up to `max_retry`.
    pub retry: Duration,
    pub max_retry: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            lease: Duration::from_secs(5),
            lease_per_participant: Duration::from_millis(10),
            retry: Duration::from_millis(200),
            max_retry: Duration::from_secs(5),
        }
    }
}

impl CoordinatorConfig {
    /// The lease of a txn with this many participants: 5.03 s for 3,
    /// 10 s for 500 (the defaults).
    pub fn lease_for(&self, participants: usize) -> Duration {
        let each = u32::try_from(participants).unwrap_or(u32::MAX);
        self.lease
            .saturating_add(self.lease_per_participant.saturating_mul(each))
    }

    /// How long votes are collected: half the lease, so that the decision
    /// is due well before any lease can end even with clocks ±10 % apart
    /// (0.5/0.9 = 0.56 of a lease against 1/1.1 = 0.91).
    pub fn vote_window(&self, participants: usize) -> Duration {
        self.lease_for(participants) / 2
    }
}

/// A new transaction, as the caller (the agent's apply) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    /// The committed version the change is based on.
    pub base: Version,
    pub text: String,
    pub hash: ConfigHash,
    /// Every node of the old and the new topology that is not dead.
    pub participants: Vec<NodeId>,
    /// The nodes of the base topology. A majority of them must take part,
    /// so that two txns on the same base always share a node (whose single
    /// lock lets only one of them through). Empty for the first apply.
    pub base_members: Vec<NodeId>,
    /// Where the decision is recorded: the replicated log when the cluster
    /// has a Raft group with a leader, else this node's data dir.
    pub log: DecisionLog,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the change has no participants")]
    NoParticipants,
    #[error(
        "only {have} of the {of} nodes of {what} can take part, at least {need} must: \
         two changes could otherwise commit version {next} apart",
        what = if base.0 == 0 { "the first version".to_string() } else { format!("version {base}") },
        next = base.next()
    )]
    NoQuorum {
        have: usize,
        need: usize,
        of: usize,
        base: Version,
    },
}

#[derive(Clone, Debug)]
enum Phase {
    Collecting {
        prepare: Prepare,
        decide_by: Instant,
        votes: BTreeMap<NodeId, Vote>,
        next: Instant,
        interval: Duration,
    },
    /// `DecisionLog::Replicated`: proposed, waiting for the log.
    Recording {
        proposed: Decision,
        result: TxnResult,
        next: Instant,
        interval: Duration,
    },
    Announcing {
        decision: Decision,
        acked: BTreeSet<NodeId>,
        next: Instant,
        interval: Duration,
    },
}

#[derive(Clone, Debug)]
struct Txn {
    version: Version,
    hash: ConfigHash,
    participants: Vec<NodeId>,
    log: DecisionLog,
    phase: Phase,
}

/// Where a txn stands, for the status API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnPhase {
    Collecting {
        votes: usize,
        of: usize,
    },
    Recording,
    Announcing {
        decision: Decision,
        acked: usize,
        of: usize,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoordinatorStats {
    pub started: u64,
    pub committed: u64,
    pub aborted: u64,
    /// Txns found started but undecided at a restart (aborted).
    pub aborted_at_restart: u64,
    pub prepare_resends: u64,
    pub decision_resends: u64,
    /// Queries answered with Abort because no decision existed.
    pub aborted_on_query: u64,
}

/// The coordinator of one node. See the module doc.
pub struct Coordinator {
    me: NodeId,
    config: CoordinatorConfig,
    disk: CoordinatorDisk,
    txns: BTreeMap<TxnId, Txn>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: CoordinatorStats,
}

impl Coordinator {
    /// Builds the coordinator from its durable state. Txns it started and
    /// did not finish are taken up again: a recorded decision is announced
    /// again (a commit it never got to send is sent now); a txn without
    /// one is aborted (its votes were in memory only), recorded first.
    pub fn new(
        now: Instant,
        me: NodeId,
        config: CoordinatorConfig,
        disk: &CoordinatorDisk,
    ) -> Coordinator {
        let mut coordinator = Coordinator {
            me,
            config,
            disk: disk.clone(),
            txns: BTreeMap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: CoordinatorStats::default(),
        };
        let started: Vec<_> = coordinator
            .disk
            .started
            .iter()
            .map(|(txn, s)| (*txn, s.clone()))
            .collect();
        for (txn, started) in started {
            let decided = coordinator.disk.decisions.get(&txn).copied();
            let mut reasons = BTreeMap::new();
            reasons.insert(me, "the coordinator restarted before deciding".to_string());
            let result = TxnResult {
                txn,
                version: started.version,
                outcome: Outcome::Aborted { reasons },
                silent: Vec::new(),
            };
            coordinator.txns.insert(
                txn,
                Txn {
                    version: started.version,
                    hash: started.hash,
                    participants: started.participants,
                    log: started.log,
                    // Replaced at once below.
                    phase: Phase::Announcing {
                        decision: Decision::Abort,
                        acked: BTreeSet::new(),
                        next: now,
                        interval: config.retry,
                    },
                },
            );
            match decided {
                Some(decision) => coordinator.announce(now, txn, decision, None),
                None => {
                    coordinator.stats.aborted_at_restart += 1;
                    coordinator.decide(now, txn, Decision::Abort, result);
                }
            }
        }
        coordinator
    }

    // ---- commands -------------------------------------------------------

    /// Starts a txn: `Started` is persisted, then PREPARE goes to every
    /// participant. The answer comes as `Event::Decided`.
    pub fn start(&mut self, now: Instant, start: Start) -> Result<TxnId, StartError> {
        let mut participants = start.participants;
        participants.sort();
        participants.dedup();
        if participants.is_empty() {
            return Err(StartError::NoParticipants);
        }
        let mut base_members = start.base_members;
        base_members.sort();
        base_members.dedup();
        if !base_members.is_empty() {
            let have = base_members
                .iter()
                .filter(|m| participants.binary_search(m).is_ok())
                .count();
            let need = base_members.len() / 2 + 1;
            if have < need {
                return Err(StartError::NoQuorum {
                    have,
                    need,
                    of: base_members.len(),
                    base: start.base,
                });
            }
        }
        let txn = TxnId {
            coordinator: self.me,
            seq: self.disk.next_seq,
        };
        let version = start.base.next();
        self.persist(Record::Started {
            txn,
            started: Started {
                version,
                hash: start.hash,
                participants: participants.clone(),
                log: start.log,
            },
        });
        self.stats.started += 1;
        let prepare = Prepare {
            proposal: Proposal {
                txn,
                base: start.base,
                version,
                text: start.text,
                hash: start.hash,
            },
            participants: participants.clone(),
            lease: self.config.lease_for(participants.len()),
            log: start.log,
        };
        for &to in &participants {
            self.send(to, Message::Prepare(prepare.clone()));
        }
        let decide_by = now + self.config.vote_window(participants.len());
        self.txns.insert(
            txn,
            Txn {
                version,
                hash: start.hash,
                participants,
                log: start.log,
                phase: Phase::Collecting {
                    prepare,
                    decide_by,
                    votes: BTreeMap::new(),
                    next: now + self.config.retry,
                    interval: self.config.retry,
                },
            },
        );
        Ok(txn)
    }

    /// The driver could not carry out `Persist(Started)` for `txn` (a full
    /// or read-only disk) and has carried out nothing after it: the txn is
    /// dropped with the PREPAREs queued behind it, as if never started
    /// (nobody heard of it; its number is not used again by this run).
    /// Returns whether it was dropped: false unless `txn` is collecting
    /// and none of its PREPAREs has been taken yet.
    pub fn start_failed(&mut self, txn: TxnId) -> bool {
        let is_prepare = |a: &Action| matches!(a, Action::Send { message: Message::Prepare(p), .. } if p.proposal.txn == txn);
        let Some(t) = self.txns.get(&txn) else {
            return false;
        };
        let queued = self.actions.iter().filter(|a| is_prepare(a)).count();
        let unheard = matches!(&t.phase, Phase::Collecting { votes, .. } if votes.is_empty());
        if !unheard || queued < t.participants.len() {
            return false;
        }
        self.actions.retain(|a| !is_prepare(a));
        self.txns.remove(&txn);
        self.disk.started.remove(&txn);
        self.stats.started = self.stats.started.saturating_sub(1);
        true
    }

    // ---- inputs ---------------------------------------------------------

    pub fn handle_message(&mut self, now: Instant, from: NodeId, message: Message) {
        match message {
            Message::Vote { txn, vote } => self.on_vote(now, from, txn, vote),
            Message::Ack { txn } => self.on_ack(from, txn),
            Message::Query { txn, .. } => self.on_query(now, from, txn),
            Message::Prepare(_) | Message::Decision { .. } | Message::Answer { .. } => {}
        }
    }

    /// `DecisionLog::Replicated`: the log holds `decision` for `txn`.
    pub fn decision_recorded(&mut self, now: Instant, txn: TxnId, decision: Decision) {
        let Some(Phase::Recording {
            proposed, result, ..
        }) = self.txns.get(&txn).map(|t| t.phase.clone())
        else {
            return;
        };
        // A local copy of what the log holds, so that a restart announces
        // it again rather than asking anew.
        self.persist(Record::Decided { txn, decision });
        let mut result = result;
        if decision != proposed {
            result.outcome = match decision {
                Decision::Commit => Outcome::Committed(result.version),
                Decision::Abort => {
                    let mut reasons = BTreeMap::new();
                    reasons.insert(
                        self.me,
                        "the decision log already held abort: a participant's lease ran out first"
                            .to_string(),
                    );
                    Outcome::Aborted { reasons }
                }
            };
        }
        self.announce(now, txn, decision, Some(result));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TxnId> = self
            .txns
            .iter()
            .filter(|(_, t)| Self::deadline(t) <= now)
            .map(|(txn, _)| *txn)
            .collect();
        for txn in due {
            let Some(t) = self.txns.get_mut(&txn) else {
                continue;
            };
            let max = self.config.max_retry;
            match &mut t.phase {
                Phase::Collecting { decide_by, .. } if now >= *decide_by => {
                    self.decide_from_votes(now, txn);
                }
                Phase::Collecting {
                    prepare,
                    votes,
                    next,
                    interval,
                    ..
                } => {
                    *interval = backoff(*interval, max);
                    *next = now + *interval;
                    let prepare = prepare.clone();
                    let silent: Vec<NodeId> = t
                        .participants
                        .iter()
                        .filter(|p| !votes.contains_key(p))
                        .copied()
                        .collect();
                    for to in silent {
                        self.stats.prepare_resends += 1;
                        self.send(to, Message::Prepare(prepare.clone()));
                    }
                }
                Phase::Recording {
                    proposed,
                    next,
                    interval,
                    ..
                } => {
                    *interval = backoff(*interval, max);
                    *next = now + *interval;
                    let propose = proposal(txn, *proposed, t.version, t.hash);
                    self.actions.push_back(propose);
                }
                Phase::Announcing {
                    decision,
                    acked,
                    next,
                    interval,
                } => {
                    *interval = backoff(*interval, max);
                    *next = now + *interval;
                    let decision = *decision;
                    let version = t.version;
                    let silent: Vec<NodeId> = t
                        .participants
                        .iter()
                        .filter(|p| !acked.contains(p))
                        .copied()
                        .collect();
                    for to in silent {
                        self.stats.decision_resends += 1;
                        self.send(
                            to,
                            Message::Decision {
                                txn,
                                version,
                                decision,
                            },
                        );
                    }
                }
            }
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
        self.txns.values().map(Self::deadline).min()
    }

    // ---- queries --------------------------------------------------------

    /// The txns this node coordinates that are not finished.
    pub fn txns(&self) -> impl Iterator<Item = (TxnId, TxnPhase)> + '_ {
        self.txns.iter().map(|(txn, t)| {
            let of = t.participants.len();
            let phase = match &t.phase {
                Phase::Collecting { votes, .. } => TxnPhase::Collecting {
                    votes: votes.len(),
                    of,
                },
                Phase::Recording { .. } => TxnPhase::Recording,
                Phase::Announcing {
                    decision, acked, ..
                } => TxnPhase::Announcing {
                    decision: *decision,
                    acked: acked.len(),
                    of,
                },
            };
            (*txn, phase)
        })
    }

    pub fn is_idle(&self) -> bool {
        self.txns.is_empty()
    }

    /// The recorded decision of one of this node's txns.
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        self.disk.decisions.get(&txn).copied()
    }

    pub fn stats(&self) -> CoordinatorStats {
        self.stats
    }

    // ---- handlers -------------------------------------------------------

    fn on_vote(&mut self, now: Instant, from: NodeId, txn: TxnId, vote: Vote) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        if !t.participants.contains(&from) {
            return;
        }
        let Phase::Collecting { votes, .. } = &mut t.phase else {
            return;
        };
        // The first vote counts: a participant that said no and later
        // (after a restart) yes has already been heard.
        votes.entry(from).or_insert(vote);
        // Decided once every vote is in (or at `decide_by`), not at the
        // first no: the caller hears every node's reason, and a node is
        // called silent only if it really said nothing. Validations run in
        // parallel, so this waits for the slowest of them at most.
        if t.participants.len() == votes.len() {
            self.decide_from_votes(now, txn);
        }
    }

    fn on_ack(&mut self, from: NodeId, txn: TxnId) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        let Phase::Announcing { acked, .. } = &mut t.phase else {
            return;
        };
        if t.participants.contains(&from) {
            acked.insert(from);
        }
        if acked.len() == t.participants.len() {
            self.txns.remove(&txn);
            self.persist(Record::Finished { txn });
            self.events.push_back(Event::Finished { txn });
        }
    }

    fn on_query(&mut self, now: Instant, from: NodeId, txn: TxnId) {
        // Only the replicated log answers for its txns (their participants
        // propose rather than ask; a stray query gets nothing).
        let replicated = |t: &Txn| t.log == DecisionLog::Replicated;
        if txn.coordinator != self.me || self.txns.get(&txn).is_some_and(replicated) {
            return;
        }
        if let Some(Phase::Collecting { decide_by, .. }) = self.txns.get(&txn).map(|t| &t.phase) {
            if now < *decide_by {
                return self.send(
                    from,
                    Message::Answer {
                        txn,
                        answer: Answer::Prepared,
                    },
                );
            }
            // The deadline passed and its timer has not run yet.
            self.decide_from_votes(now, txn);
        }
        let decision = match self.disk.decisions.get(&txn) {
            Some(decision) => *decision,
            None if txn.seq < self.disk.forgotten_below => return,
            None => {
                // No decision and no vote collection in memory: this node
                // can never decide commit for it. Record that first.
                self.stats.aborted_on_query += 1;
                self.persist(Record::Decided {
                    txn,
                    decision: Decision::Abort,
                });
                Decision::Abort
            }
        };
        let answer = match decision {
            Decision::Commit => Answer::Committed,
            Decision::Abort => Answer::Aborted,
        };
        self.send(from, Message::Answer { txn, answer });
    }

    // ---- deciding -------------------------------------------------------

    /// Decides a collecting txn from its votes (and the deadline).
    fn decide_from_votes(&mut self, now: Instant, txn: TxnId) {
        let Some(t) = self.txns.get(&txn) else {
            return;
        };
        let Phase::Collecting { votes, .. } = &t.phase else {
            return;
        };
        let all_yes =
            t.participants.len() == votes.len() && votes.values().all(|v| matches!(v, Vote::Yes));
        let silent: Vec<NodeId> = t
            .participants
            .iter()
            .filter(|p| !votes.contains_key(p))
            .copied()
            .collect();
        let (decision, outcome) = if all_yes {
            (Decision::Commit, Outcome::Committed(t.version))
        } else {
            let reasons = votes
                .iter()
                .filter_map(|(node, vote)| match vote {
                    Vote::No(why) => Some((*node, why.clone())),
                    Vote::Yes => None,
                })
                .collect();
            (Decision::Abort, Outcome::Aborted { reasons })
        };
        let result = TxnResult {
            txn,
            version: t.version,
            outcome,
            silent,
        };
        self.decide(now, txn, decision, result);
    }

    /// Records the decision (or proposes it to the replicated log) before
    /// anyone can hear it.
    fn decide(&mut self, now: Instant, txn: TxnId, decision: Decision, result: TxnResult) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        match t.log {
            DecisionLog::Coordinator => {
                self.persist(Record::Decided { txn, decision });
                self.announce(now, txn, decision, Some(result));
            }
            DecisionLog::Replicated => {
                let propose = proposal(txn, decision, t.version, t.hash);
                t.phase = Phase::Recording {
                    proposed: decision,
                    result,
                    next: now + self.config.retry,
                    interval: self.config.retry,
                };
                self.actions.push_back(propose);
            }
        }
    }

    /// The decision is durable: tell the caller, then every participant.
    fn announce(
        &mut self,
        now: Instant,
        txn: TxnId,
        decision: Decision,
        result: Option<TxnResult>,
    ) {
        let Some(t) = self.txns.get_mut(&txn) else {
            return;
        };
        t.phase = Phase::Announcing {
            decision,
            acked: BTreeSet::new(),
            next: now + self.config.retry,
            interval: self.config.retry,
        };
        let (version, participants) = (t.version, t.participants.clone());
        if let Some(result) = result {
            match decision {
                Decision::Commit => self.stats.committed += 1,
                Decision::Abort => self.stats.aborted += 1,
            }
            self.events.push_back(Event::Decided(result));
        }
        for to in participants {
            self.send(
                to,
                Message::Decision {
                    txn,
                    version,
                    decision,
                },
            );
        }
    }

    // ---- helpers --------------------------------------------------------

    fn deadline(t: &Txn) -> Instant {
        match &t.phase {
            Phase::Collecting {
                decide_by, next, ..
            } => (*decide_by).min(*next),
            Phase::Recording { next, .. } | Phase::Announcing { next, .. } => *next,
        }
    }

    fn persist(&mut self, record: Record) {
        self.disk.apply(&record);
        self.actions.push_back(Action::Persist(record));
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.actions.push_back(Action::Send { to, message });
    }
}

/// `Action::Propose` of `decision` for `txn` (a commit names what it
/// installs).
fn proposal(txn: TxnId, decision: Decision, version: Version, hash: ConfigHash) -> Action {
    Action::Propose {
        txn,
        decision,
        installs: (decision == Decision::Commit).then_some((version, hash)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn node(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    fn coordinator(now: Instant) -> Coordinator {
        let config = CoordinatorConfig::default();
        Coordinator::new(now, node(1), config, &CoordinatorDisk::default())
    }

    fn start() -> Start {
        Start {
            base: Version(0),
            text: "cluster: t\n".into(),
            hash: ConfigHash([7; 32]),
            participants: vec![node(3), node(1), node(2), node(2)],
            base_members: vec![node(1), node(2), node(3)],
            log: DecisionLog::Coordinator,
        }
    }

    fn replicated() -> Start {
        Start {
            log: DecisionLog::Replicated,
            ..start()
        }
    }

    fn drain(c: &mut Coordinator) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    fn sent_to(actions: &[Action], what: fn(&Message) -> bool) -> Vec<NodeId> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { to, message } if what(message) => Some(*to),
                _ => None,
            })
            .collect()
    }

    fn is_decision(m: &Message) -> bool {
        matches!(m, Message::Decision { .. })
    }

    fn result(c: &mut Coordinator) -> Option<TxnResult> {
        std::iter::from_fn(|| c.poll_event()).find_map(|e| match e {
            Event::Decided(r) => Some(r),
            _ => None,
        })
    }

    /// The log holds `decision` for `txn`: it is copied to disk first;
    /// the actions after that.
    fn recorded(c: &mut Coordinator, now: Instant, txn: TxnId, decision: Decision) -> Vec<Action> {
        c.decision_recorded(now, txn, decision);
        let actions = drain(c);
        assert_eq!(
            actions[0],
            Action::Persist(Record::Decided { txn, decision })
        );
        actions
    }

    fn vote(c: &mut Coordinator, now: Instant, from: u128, txn: TxnId, vote: Vote) {
        c.handle_message(now, node(from), Message::Vote { txn, vote });
    }

    #[test]
    fn a_start_that_cannot_be_written_is_dropped_before_any_prepare() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            c.poll_action(),
            Some(Action::Persist(Record::Started { .. }))
        ));
        assert!(c.start_failed(txn));
        assert!(drain(&mut c).is_empty(), "no PREPARE goes out");
        assert!(c.is_idle());
        assert_eq!(c.poll_timeout(), None);
        // The next start works as usual, under a new number.
        let next = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(next, txn);
        let actions = drain(&mut c);
        assert_eq!(
            sent_to(&actions, |m| matches!(m, Message::Prepare(_))).len(),
            3
        );
        // Once a PREPARE is out the txn exists for others: not dropped.
        assert!(!c.start_failed(next));
        assert!(!c.is_idle());
    }

    #[test]
    fn started_is_persisted_before_any_prepare() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            txn,
            TxnId {
                coordinator: node(1),
                seq: 0
            }
        );
        let actions = drain(&mut c);
        assert!(matches!(
            actions[0],
            Action::Persist(Record::Started { .. })
        ));
        let prepared = sent_to(&actions[1..], |m| matches!(m, Message::Prepare(_)));
        assert_eq!(prepared, vec![node(1), node(2), node(3)]);
        // The next txn gets the next number.
        let next = c.start(now, start()).map(|t| t.seq);
        assert_eq!(next, Ok(1));
    }

    #[test]
    fn all_yes_commits_and_records_it_before_telling_anyone() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        drain(&mut c);
        for n in 1..=3 {
            vote(&mut c, now, n, txn, Vote::Yes);
        }
        let actions = drain(&mut c);
        assert_eq!(
            actions[0],
            Action::Persist(Record::Decided {
                txn,
                decision: Decision::Commit
            })
        );
        assert_eq!(sent_to(&actions[1..], is_decision).len(), 3);
        let r = result(&mut c);
        assert_eq!(r.map(|r| r.outcome), Some(Outcome::Committed(Version(1))));
        assert_eq!(c.decision(txn), Some(Decision::Commit));
    }

    #[test]
    fn a_no_aborts_once_every_vote_is_in_with_every_reason() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        drain(&mut c);
        vote(&mut c, now, 1, txn, Vote::Yes);
        vote(
            &mut c,
            now,
            2,
            txn,
            Vote::No("locked by txn 4 from node x".into()),
        );
        // One vote is still out: nothing is decided yet.
        assert!(drain(&mut c).is_empty());
        assert!(result(&mut c).is_none());
        vote(
            &mut c,
            now,
            3,
            txn,
            Vote::No("role `http`: port 80 busy".into()),
        );
        let actions = drain(&mut c);
        assert!(matches!(
            actions[0],
            Action::Persist(Record::Decided {
                decision: Decision::Abort,
                ..
            })
        ));
        let r = result(&mut c).unwrap_or_else(|| panic!("no result"));
        let Outcome::Aborted { reasons } = &r.outcome else {
            panic!("{r}")
        };
        assert_eq!(
            reasons.get(&node(2)).map(String::as_str),
            Some("locked by txn 4 from node x")
        );
        assert_eq!(
            reasons.get(&node(3)).map(String::as_str),
            Some("role `http`: port 80 busy")
        );
        assert!(r.silent.is_empty(), "{r}");
    }

    #[test]
    fn a_missing_vote_at_decide_by_aborts_naming_the_silent() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        drain(&mut c);
        vote(&mut c, now, 1, txn, Vote::Yes);
        vote(&mut c, now, 2, txn, Vote::Yes);
        // Re-sends go to the silent node only, until the deadline.
        let first = c.poll_timeout().unwrap_or(now);
        c.handle_timeout(first);
        let resent = sent_to(&drain(&mut c), |m| matches!(m, Message::Prepare(_)));
        assert_eq!(resent, vec![node(3)]);
        let decide_by = now + CoordinatorConfig::default().vote_window(3);
        c.handle_timeout(decide_by);
        let r = result(&mut c).unwrap_or_else(|| panic!("no result"));
        assert!(matches!(r.outcome, Outcome::Aborted { .. }));
        assert_eq!(r.silent, vec![node(3)]);
    }

    #[test]
    fn the_decision_is_resent_until_every_ack_then_the_txn_is_finished() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        for n in 1..=3 {
            vote(&mut c, now, n, txn, Vote::Yes);
        }
        drain(&mut c);
        c.handle_message(now, node(1), Message::Ack { txn });
        c.handle_message(now, node(3), Message::Ack { txn });
        let at = c.poll_timeout().unwrap_or(now);
        c.handle_timeout(at);
        assert_eq!(sent_to(&drain(&mut c), is_decision), vec![node(2)]);
        c.handle_message(now, node(2), Message::Ack { txn });
        assert_eq!(
            drain(&mut c),
            vec![Action::Persist(Record::Finished { txn })]
        );
        assert!(c.is_idle());
        assert_eq!(c.poll_timeout(), None);
    }

    fn answer(actions: &[Action]) -> Option<Answer> {
        actions.iter().find_map(|a| match a {
            Action::Send {
                message: Message::Answer { answer, .. },
                ..
            } => Some(*answer),
            _ => None,
        })
    }

    #[test]
    fn queries_are_answered_from_the_log() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        drain(&mut c);
        let query = Message::Query {
            txn,
            version: Version(1),
        };
        // Still collecting: no information.
        c.handle_message(now, node(2), query.clone());
        assert_eq!(answer(&drain(&mut c)), Some(Answer::Prepared));
        for n in 1..=3 {
            vote(&mut c, now, n, txn, Vote::Yes);
        }
        drain(&mut c);
        c.handle_message(now, node(2), query);
        assert_eq!(answer(&drain(&mut c)), Some(Answer::Committed));
    }

    #[test]
    fn a_query_past_decide_by_decides_abort_if_the_timer_is_late() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, start()).unwrap_or_else(|e| panic!("{e}"));
        drain(&mut c);
        let late = now + CoordinatorConfig::default().lease_for(3);
        c.handle_message(
            late,
            node(2),
            Message::Query {
                txn,
                version: Version(1),
            },
        );
        let actions = drain(&mut c);
        assert!(matches!(
            actions[0],
            Action::Persist(Record::Decided {
                decision: Decision::Abort,
                ..
            })
        ));
        assert_eq!(answer(&actions), Some(Answer::Aborted));
    }

    #[test]
    fn a_query_about_an_unknown_txn_records_abort_before_answering() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = TxnId {
            coordinator: node(1),
            seq: 9,
        };
        c.handle_message(
            now,
            node(2),
            Message::Query {
                txn,
                version: Version(1),
            },
        );
        let actions = drain(&mut c);
        assert_eq!(
            actions[0],
            Action::Persist(Record::Decided {
                txn,
                decision: Decision::Abort
            })
        );
        assert_eq!(answer(&actions), Some(Answer::Aborted));
        // That number is never used for a new txn.
        assert_eq!(c.start(now, start()).map(|t| t.seq), Ok(10));
    }

    /// The coordinator's durable state after `records`.
    fn disk(records: &[Record]) -> CoordinatorDisk {
        let mut disk = CoordinatorDisk::default();
        for r in records {
            disk.apply(r);
        }
        disk
    }

    fn started(txn: TxnId) -> Record {
        started_with(txn, DecisionLog::Coordinator)
    }

    fn started_with(txn: TxnId, log: DecisionLog) -> Record {
        Record::Started {
            txn,
            started: Started {
                version: Version(1),
                hash: ConfigHash([7; 32]),
                participants: vec![node(1), node(2), node(3)],
                log,
            },
        }
    }

    #[test]
    fn a_restart_resends_a_recorded_commit_it_never_sent() {
        let now = Instant::now();
        let txn = TxnId {
            coordinator: node(1),
            seq: 0,
        };
        let disk = disk(&[
            started(txn),
            Record::Decided {
                txn,
                decision: Decision::Commit,
            },
        ]);
        let mut c = Coordinator::new(now, node(1), CoordinatorConfig::default(), &disk);
        let actions = drain(&mut c);
        assert_eq!(sent_to(&actions, is_decision).len(), 3);
        assert!(actions.iter().all(|a| matches!(
            a,
            Action::Send {
                message: Message::Decision {
                    decision: Decision::Commit,
                    ..
                },
                ..
            }
        )));
    }

    #[test]
    fn a_restart_aborts_a_txn_it_had_not_decided_recording_it_first() {
        let now = Instant::now();
        let txn = TxnId {
            coordinator: node(1),
            seq: 0,
        };
        let mut c = Coordinator::new(
            now,
            node(1),
            CoordinatorConfig::default(),
            &disk(&[started(txn)]),
        );
        let actions = drain(&mut c);
        assert_eq!(
            actions[0],
            Action::Persist(Record::Decided {
                txn,
                decision: Decision::Abort
            })
        );
        assert_eq!(sent_to(&actions[1..], is_decision).len(), 3);
        assert_eq!(c.stats().aborted_at_restart, 1);
    }

    #[test]
    fn too_few_participants_of_the_base_topology_is_refused() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let mut s = start();
        s.participants = vec![node(1), node(9)];
        s.base_members = vec![node(1), node(2), node(3), node(4)];
        assert_eq!(
            c.start(now, s),
            Err(StartError::NoQuorum {
                have: 1,
                need: 3,
                of: 4,
                base: Version(0)
            })
        );
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn the_lease_and_the_vote_window_grow_with_the_participants() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let many: Vec<NodeId> = (1..=500).map(node).collect();
        let start = Start {
            participants: many.clone(),
            base_members: many,
            ..start()
        };
        let txn = c.start(now, start).unwrap_or_else(|e| panic!("{e}"));
        let lease = drain(&mut c).iter().find_map(|a| match a {
            Action::Send {
                message: Message::Prepare(p),
                ..
            } => Some(p.lease),
            _ => None,
        });
        assert_eq!(lease, Some(Duration::from_secs(10)));
        for from in 1..=499 {
            vote(&mut c, now, from, txn, Vote::Yes);
        }
        // A fixed 5 s lease would have ended the vote at 2.5 s.
        c.handle_timeout(now + Duration::from_millis(4900));
        assert!(result(&mut c).is_none(), "decided before the window ended");
        c.handle_timeout(now + Duration::from_secs(5));
        let r = result(&mut c).unwrap_or_else(|| panic!("no decision at 5 s"));
        assert_eq!(r.silent, vec![node(500)]);
    }

    #[test]
    fn the_vote_window_ends_before_any_lease_with_clocks_ten_percent_apart() {
        let config = CoordinatorConfig::default();
        // The coordinator's clock slow (its window lasts longer in real
        // time), a participant's fast (its lease shorter), PREPARE instant.
        for participants in [1, 3, 500, 5000] {
            let decided_by = config.vote_window(participants).as_secs_f64() / 0.9;
            let earliest_expiry = config.lease_for(participants).as_secs_f64() / 1.1;
            assert!(
                decided_by < earliest_expiry,
                "{participants}: {decided_by} >= {earliest_expiry}"
            );
        }
    }

    #[test]
    fn with_a_replicated_log_the_log_has_the_last_word() {
        let now = Instant::now();
        let mut c = coordinator(now);
        let txn = c.start(now, replicated()).unwrap_or_else(|e| panic!("{e}"));
        let prepares = drain(&mut c);
        assert!(prepares.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::Prepare(Prepare {
                    log: DecisionLog::Replicated,
                    ..
                }),
                ..
            }
        )));
        for n in 1..=3 {
            vote(&mut c, now, n, txn, Vote::Yes);
        }
        let actions = drain(&mut c);
        assert_eq!(
            actions.last(),
            Some(&Action::Propose {
                txn,
                decision: Decision::Commit,
                installs: Some((Version(1), ConfigHash([7; 32]))),
            })
        );
        assert!(sent_to(&actions, is_decision).is_empty());
        // A participant's abort got there first.
        let actions = recorded(&mut c, now, txn, Decision::Abort);
        assert!(actions[1..].iter().all(|a| matches!(
            a,
            Action::Send {
                message: Message::Decision {
                    decision: Decision::Abort,
                    ..
                },
                ..
            }
        )));
        let r = result(&mut c).unwrap_or_else(|| panic!("no result"));
        assert!(matches!(r.outcome, Outcome::Aborted { .. }), "{r}");
    }

    #[test]
    fn a_replicated_txn_is_never_decided_alone() {
        let now = Instant::now();
        let txn = TxnId {
            coordinator: node(1),
            seq: 0,
        };
        // Restarted undecided: the abort goes to the log, not to the disk.
        let disk = disk(&[started_with(txn, DecisionLog::Replicated)]);
        let mut c = Coordinator::new(now, node(1), CoordinatorConfig::default(), &disk);
        assert_eq!(
            drain(&mut c),
            [Action::Propose {
                txn,
                decision: Decision::Abort,
                installs: None,
            }]
        );
        assert_eq!(c.decision(txn), None);
        // A query (from a confused peer) gets no answer and decides nothing.
        let query = Message::Query {
            txn,
            version: Version(1),
        };
        c.handle_message(now, node(2), query);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.decision(txn), None);
        // What the log holds is what is announced.
        let actions = recorded(&mut c, now, txn, Decision::Commit);
        assert_eq!(sent_to(&actions, is_decision).len(), 3);
    }
}
