//! A deterministic, seeded simulator for 2PC: N nodes, each a
//! `Coordinator` and a `Participant` over a durable store, on virtual time.
//! Links lose, delay, duplicate and reorder messages; a node may crash right
//! after any action it carries out (losing its memory and the actions not yet
//! carried out) and restarts from its store; a write to its store may fail
//! (a full disk), which its driver handles as the agent's does; clocks run
//! at different rates.
//! The simulator is also the oracle: it checks the invariants at every step
//! and lists what it saw broken (`violations`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

use crate::sim_queue::EventQueue;

use super::coordinator::{Coordinator, CoordinatorConfig, Start, StartError};
use super::durable::{Committed, DurableState, Record};
use super::messages::Message;
use super::participant::{LockStatus, Participant, ParticipantConfig};
use super::{
    Action, ConfigHash, Decision, DecisionLog, Event, NodeId, Proposal, TxnId, TxnResult, Version,
};

/// Knobs of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    /// Where each txn's decision is recorded (`Start::log`).
    pub log: DecisionLog,
    /// Each txn draws its log instead (as agents do when the Raft group
    /// comes and goes): the two logs side by side, never mixed in one txn.
    pub mixed_logs: bool,
    pub coordinator: CoordinatorConfig,
    pub participant: ParticipantConfig,
    /// Probability a message between two nodes is lost (a node's messages
    /// to itself are local calls and never lost).
    pub loss: f64,
    pub duplicate: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Probability a message is slow: delayed up to `slow_delay_max`
    /// instead (it overtakes retries, arrives after decisions).
    pub slow: f64,
    pub slow_delay_max: Duration,
    /// Probability a node crashes right after carrying out an action.
    pub crash_per_action: f64,
    pub downtime_min: Duration,
    pub downtime_max: Duration,
    /// Each node's clock runs at a rate drawn from 1 ± this.
    pub clock_skew: f64,
    /// Probability a validation says no (while faults are on).
    pub validation_failure: f64,
    pub validation_delay_max: Duration,
    /// `DecisionLog::Replicated`: the log answers within this (or the
    /// answer is lost with probability `loss`, and the node asks again).
    pub log_delay_max: Duration,
    /// How long past its lease a lock may be held for reasons other than
    /// the blocking case (answers lost, backoff) before it is a violation.
    /// Generous for 30 % loss with 4–5 s backoffs; a stuck lock shows up
    /// as a minute or more. Tests print the longest seen.
    pub grace: Duration,
    /// Probability a `Persist` fails (a full disk; while faults are on).
    /// The node's driver does what the agent's does (`agent::apply`): a
    /// failed `Staged` becomes a no vote, a failed `Started` drops its txn,
    /// and any other record holds back every action after it and is tried
    /// again every `disk_retry` (failing again with this probability);
    /// meanwhile PREPAREs get a no at once and no txn is started there.
    pub disk_failure: f64,
    pub disk_retry: Duration,
    /// Catch-up as the agent does it over gossip: every this often each
    /// running node with a free lock compares its committed version with a
    /// random running peer's and installs the peer's if it is newer. Off
    /// when `None`.
    pub catch_up_interval: Option<Duration>,
}

impl SimConfig {
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            log: DecisionLog::Coordinator,
            mixed_logs: false,
            coordinator: CoordinatorConfig::default(),
            participant: ParticipantConfig::default(),
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(20),
            slow: 0.0,
            slow_delay_max: Duration::from_secs(2),
            crash_per_action: 0.0,
            downtime_min: Duration::from_millis(100),
            downtime_max: Duration::from_secs(12),
            clock_skew: 0.0,
            validation_failure: 0.0,
            validation_delay_max: Duration::from_millis(50),
            log_delay_max: Duration::from_millis(30),
            grace: Duration::from_secs(20),
            disk_failure: 0.0,
            disk_retry: Duration::from_millis(200),
            catch_up_interval: None,
        }
    }
}

/// A scripted crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Right after the node's n-th action from now (0 = the next one).
    AfterActions(u64),
    /// `n` actions after the node records a decision as a coordinator
    /// (with a replicated log: proposes one); 0 = right after. With `n` > 0
    /// the decision reaches only the first participants.
    AfterDecided(u64),
    /// Right after the node persists `Staged` (before its yes is sent).
    AfterStaged,
}

/// Counters and figures of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimStats {
    pub started: u64,
    pub committed: u64,
    pub aborted: u64,
    pub crashes: u64,
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Sent to a crashed node.
    pub undeliverable: u64,
    pub persists: u64,
    /// Lock holds that outlived their lease, and the longest hold.
    pub holds: u64,
    pub holds_past_lease: u64,
    pub max_hold: Duration,
    /// The longest time past its lease a lock was held while neither its
    /// holder nor (with the coordinator's log) the coordinator was down.
    pub max_unexcused_past_lease: Duration,
    /// Status checks of a lock held past its lease (each said "waiting").
    pub waiting_checks: u64,
    /// Versions installed by catch-up.
    pub caught_up: u64,
    /// Writes that failed (`disk_failure`), retries included.
    pub write_failures: u64,
    /// PREPAREs answered no at once by a node whose write was blocked.
    pub refused_while_blocked: u64,
}

enum Input {
    Deliver {
        to: usize,
        from: usize,
        message: Message,
    },
    /// `at` is the deadline the node asked for; stale wakes are skipped.
    Wake {
        node: usize,
        at: Instant,
    },
    Validated {
        node: usize,
        life: u64,
        txn: TxnId,
        result: Result<(), String>,
    },
    Recorded {
        node: usize,
        life: u64,
        txn: TxnId,
        decision: Decision,
    },
    Restart {
        node: usize,
    },
    /// The node looks at one peer's committed version.
    CatchUp {
        node: usize,
    },
    /// The node tries its blocked write again.
    RetryWrite {
        node: usize,
        life: u64,
    },
}

struct Running {
    coordinator: Coordinator,
    participant: Participant,
}

/// A lock held by a participant, as the oracle sees it (virtual time).
#[derive(Clone, Copy, Debug)]
struct Hold {
    txn: TxnId,
    acquired: Duration,
    lease_end: Duration,
}

struct SimNode {
    id: NodeId,
    disk: DurableState,
    running: Option<Running>,
    /// Bumped at each restart: answers meant for an earlier life are lost.
    life: u64,
    clock_rate: f64,
    wake: Option<Instant>,
    actions_done: u64,
    crash_at: Option<(CrashPoint, Option<Duration>)>,
    /// Down intervals (virtual), the last one open while down.
    downs: Vec<(Duration, Option<Duration>)>,
    hold: Option<Hold>,
    /// A write that failed and that every later action waits for (lost
    /// with the node's memory in a crash).
    blocked: Option<Record>,
    /// Its retry is due: the next action carried out.
    retry: Option<Record>,
}

/// The simulated cluster. Node indexes are stable across restarts.
pub struct Sim {
    config: SimConfig,
    base: Instant,
    now: Instant,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    index: BTreeMap<NodeId, usize>,
    queue: EventQueue<Input>,
    chaos: bool,
    /// Directed links that lose everything.
    cut: BTreeSet<(usize, usize)>,
    /// Nodes every write of which fails (`set_disk_full`).
    disk_full: BTreeSet<usize>,
    /// The replicated log (`DecisionLog::Replicated`): first decision wins.
    register: BTreeMap<TxnId, Decision>,
    /// The log each txn was started with.
    logs: BTreeMap<TxnId, DecisionLog>,
    /// The lease each txn's PREPARE carries (it grows with the
    /// participants).
    leases: BTreeMap<TxnId, Duration>,
    // ---- the oracle
    decisions: BTreeMap<TxnId, Decision>,
    versions: BTreeMap<Version, (TxnId, String)>,
    installed_by: BTreeMap<TxnId, BTreeSet<usize>>,
    dropped_by: BTreeMap<TxnId, BTreeSet<usize>>,
    violations: Vec<String>,
    results: Vec<(Duration, usize, TxnResult)>,
    stats: SimStats,
    trace: u64,
    texts: u64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: independent streams from one seed.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stand-in for SHA-256 (the simulator only needs equal texts to hash
/// equal and different ones not to).
pub fn fake_hash(text: &str) -> ConfigHash {
    let mut out = [0u8; 32];
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(h ^ i as u64).to_le_bytes());
    }
    ConfigHash(out)
}

/// Total length of the union of intervals, clipped to `[from, to]`.
fn covered(mut intervals: Vec<(Duration, Duration)>, from: Duration, to: Duration) -> Duration {
    intervals.sort();
    let mut total = Duration::ZERO;
    let mut reach = from;
    for (start, end) in intervals {
        let start = start.max(reach);
        let end = end.min(to);
        if end > start {
            total += end - start;
            reach = end;
        }
    }
    total
}

impl Sim {
    /// `config.nodes` nodes, all running, all at version 0.
    pub fn new(config: SimConfig) -> Sim {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(mix(config.seed));
        let mut nodes = Vec::new();
        let mut index = BTreeMap::new();
        for i in 0..config.nodes {
            let id = NodeId(Uuid::from_u128(i as u128 + 1));
            index.insert(id, i);
            let skew = config.clock_skew;
            let clock_rate = if skew > 0.0 {
                rng.random_range(1.0 - skew..=1.0 + skew)
            } else {
                1.0
            };
            nodes.push(SimNode {
                id,
                disk: DurableState::new(Committed::default()),
                running: None,
                life: 0,
                clock_rate,
                wake: None,
                actions_done: 0,
                crash_at: None,
                downs: Vec::new(),
                hold: None,
                blocked: None,
                retry: None,
            });
        }
        let mut sim = Sim {
            config,
            base: now,
            now,
            rng,
            nodes,
            index,
            queue: EventQueue::default(),
            chaos: true,
            cut: BTreeSet::new(),
            disk_full: BTreeSet::new(),
            register: BTreeMap::new(),
            logs: BTreeMap::new(),
            leases: BTreeMap::new(),
            decisions: BTreeMap::new(),
            versions: BTreeMap::new(),
            installed_by: BTreeMap::new(),
            dropped_by: BTreeMap::new(),
            violations: Vec::new(),
            results: Vec::new(),
            stats: SimStats::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            texts: 0,
        };
        for i in 0..sim.nodes.len() {
            sim.boot(i);
            if let Some(every) = sim.config.catch_up_interval {
                let at = sim.now + every.mul_f64(sim.rng.random_range(0.0..1.0));
                sim.schedule(at, Input::CatchUp { node: i });
            }
        }
        sim
    }

    // ---- commands -------------------------------------------------------

    /// Node `node` coordinates a change based on its committed version,
    /// with every node as a participant (as the agent does when nobody is
    /// dead). Refused if the node is down.
    pub fn start_txn(&mut self, node: usize) -> Result<TxnId, String> {
        self.start_txn_on(node, None)
    }

    /// The same on a given base (`None`: the node's committed version): a
    /// coordinator with a stale (or a future) view.
    pub fn start_txn_on(&mut self, node: usize, base: Option<Version>) -> Result<TxnId, String> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.start_txn_among(node, base, &all)
    }

    /// The same with only `participants` taking part (the agent leaves out
    /// nodes membership sees dead); every node still counts for the
    /// majority of the base.
    pub fn start_txn_among(
        &mut self,
        node: usize,
        base: Option<Version>,
        participants: &[usize],
    ) -> Result<TxnId, String> {
        let now = self.node_now(node);
        let members: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        let participants: Vec<NodeId> = participants.iter().map(|&i| self.nodes[i].id).collect();
        let log = match self.config.mixed_logs {
            true if self.rng.random_bool(0.5) => DecisionLog::Replicated,
            true => DecisionLog::Coordinator,
            false => self.config.log,
        };
        self.texts += 1;
        if self.nodes.get(node).is_some_and(|n| n.blocked.is_some()) {
            return Err(format!("node {node} cannot write its 2PC state"));
        }
        let Some(running) = self.nodes.get_mut(node).and_then(|n| n.running.as_mut()) else {
            return Err(format!("node {node} is down"));
        };
        let base = base.unwrap_or_else(|| running.participant.committed().0);
        let text = format!(
            "cluster: sim\n# version {} proposed by node {node} (change {})\n",
            base.next(),
            self.texts
        );
        let start_participants = participants.len();
        let start = Start {
            base,
            hash: fake_hash(&text),
            text,
            participants,
            base_members: members,
            log,
        };
        let txn = running
            .coordinator
            .start(now, start)
            .map_err(|e: StartError| e.to_string())?;
        self.logs.insert(txn, log);
        let lease = self.config.coordinator.lease_for(start_participants);
        self.leases.insert(txn, lease);
        self.stats.started += 1;
        self.after_input(node);
        Ok(txn)
    }

    /// Crashes a node now; it stays down until `restart` or `heal`.
    pub fn crash(&mut self, node: usize) {
        self.crash_now(node, None);
    }

    pub fn restart(&mut self, node: usize) {
        self.boot(node);
    }

    /// Crash `node` at `point`, and restart it `downtime` later (never if
    /// `None`).
    pub fn crash_at(&mut self, node: usize, point: CrashPoint, downtime: Option<Duration>) {
        let point = match point {
            CrashPoint::AfterActions(n) => {
                CrashPoint::AfterActions(self.nodes[node].actions_done + n)
            }
            other => other,
        };
        self.nodes[node].crash_at = Some((point, downtime));
    }

    /// Turns loss, duplication, random crashes and failing validations
    /// off (or back on).
    pub fn set_chaos(&mut self, on: bool) {
        self.chaos = on;
    }

    /// Cuts (or restores) the link from `from` to `to`: everything sent
    /// on it is lost.
    pub fn set_cut(&mut self, from: usize, to: usize, cut: bool) {
        if cut {
            self.cut.insert((from, to));
        } else {
            self.cut.remove(&(from, to));
        }
    }

    /// Makes every write of `node` fail (or work again), whatever the
    /// chaos setting.
    pub fn set_disk_full(&mut self, node: usize, full: bool) {
        if full {
            self.disk_full.insert(node);
        } else {
            self.disk_full.remove(&node);
        }
    }

    /// Whether `node` holds back its actions behind a failed write.
    pub fn is_blocked(&self, node: usize) -> bool {
        self.nodes.get(node).is_some_and(|n| n.blocked.is_some())
    }

    /// No more faults, and every crashed node restarts now.
    pub fn heal(&mut self) {
        self.chaos = false;
        self.cut.clear();
        self.disk_full.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].crash_at = None;
            if self.nodes[i].running.is_none() {
                self.boot(i);
            }
        }
    }

    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        self.run_until(end);
    }

    pub fn run_until(&mut self, end: Instant) {
        while let Some((at, input)) = self.queue.pop_due(end) {
            self.now = self.now.max(at);
            self.process(input);
        }
        self.now = self.now.max(end);
    }

    /// Runs until `done` holds (checked after every step) or `limit`
    /// passes; returns how long it took.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        done: impl Fn(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        if done(self) {
            return Some(Duration::ZERO);
        }
        while let Some((at, input)) = self.queue.pop_due(end) {
            self.now = self.now.max(at);
            self.process(input);
            if done(self) {
                return Some(self.now - start);
            }
        }
        self.now = self.now.max(end);
        done(self).then(|| self.now - start)
    }

    // ---- queries --------------------------------------------------------

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn id(&self, node: usize) -> NodeId {
        self.nodes[node].id
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].running.is_some()
    }

    /// The committed config on the node's disk (running or not).
    pub fn committed(&self, node: usize) -> &Committed {
        &self.nodes[node].disk.participant.committed
    }

    pub fn lock_status(&self, node: usize) -> Option<LockStatus> {
        self.nodes[node]
            .running
            .as_ref()
            .map(|r| r.participant.status())
    }

    /// Every caller's answer: when, which coordinator, what.
    pub fn results(&self) -> &[(Duration, usize, TxnResult)] {
        &self.results
    }

    /// The decision recorded for a txn (coordinator's log or replicated).
    pub fn decision(&self, txn: TxnId) -> Option<Decision> {
        self.decisions.get(&txn).copied()
    }

    /// Nodes that installed this txn.
    pub fn installed_by(&self, txn: TxnId) -> usize {
        self.installed_by.get(&txn).map_or(0, BTreeSet::len)
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// A digest of everything that happened: equal for equal seeds.
    pub fn trace(&self) -> u64 {
        self.trace
    }

    /// Every node up, no lock held, no txn unfinished, one committed config.
    pub fn settled(&self) -> bool {
        let first = &self.nodes[0].disk.participant.committed;
        self.nodes.iter().all(|n| {
            n.running.as_ref().is_some_and(|r| {
                r.participant.status() == LockStatus::Free && r.coordinator.is_idle()
            }) && n.blocked.is_none()
                && n.disk.participant.committed == *first
        })
    }

    /// The end-of-run checks, once `settled`: every decided commit is
    /// installed on every node (none was lost), and no violation was seen.
    pub fn final_check(&self) -> Result<(), String> {
        if let Some(first) = self.violations.first() {
            return Err(format!(
                "{} violation(s), the first: {first}",
                self.violations.len()
            ));
        }
        if !self.settled() {
            return Err(self.describe_unsettled());
        }
        for (txn, decision) in &self.decisions {
            if *decision == Decision::Commit && self.installed_by(*txn) != self.nodes.len() {
                return Err(format!(
                    "{txn} was decided commit but only {} of {} nodes installed it",
                    self.installed_by(*txn),
                    self.nodes.len()
                ));
            }
        }
        Ok(())
    }

    /// Why the cluster is not settled, node by node (and the first
    /// violation seen, often the cause).
    pub fn describe_unsettled(&self) -> String {
        let mut out = match self.violations.first() {
            Some(v) => format!("{} violation(s), the first: {v}; ", self.violations.len()),
            None => String::new(),
        };
        out.push_str("not settled:");
        for (i, n) in self.nodes.iter().enumerate() {
            let c = &n.disk.participant.committed;
            match &n.running {
                None => out.push_str(&format!(" [{i}: down, version {}]", c.version)),
                Some(r) => out.push_str(&format!(
                    " [{i}: version {}, {}, {} txn(s) unfinished]",
                    c.version,
                    r.participant.status(),
                    r.coordinator.txns().count()
                )),
            }
        }
        out
    }

    // ---- the engine -----------------------------------------------------

    fn node_now(&self, node: usize) -> Instant {
        let rate = self.nodes.get(node).map_or(1.0, |n| n.clock_rate);
        self.base + (self.now - self.base).mul_f64(rate)
    }

    fn schedule(&mut self, at: Instant, input: Input) {
        self.queue.push(at, input);
    }

    fn note(&mut self, what: u64) {
        let t = (self.now - self.base).as_nanos() as u64;
        for x in [t, what] {
            self.trace = (self.trace ^ x).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn violation(&mut self, what: String) {
        let at = (self.now - self.base).as_secs_f64();
        self.violations.push(format!("at {at:.3} s: {what}"));
    }

    fn process(&mut self, input: Input) {
        match input {
            Input::Deliver { to, from, message } => {
                self.note(1 + to as u64);
                let now = self.node_now(to);
                let from_id = self.nodes[from].id;
                let me = self.nodes[to].id;
                if self.nodes[to].running.is_none() {
                    self.stats.undeliverable += 1;
                    return;
                }
                if let Message::Prepare(prepare) = &message {
                    let txn = prepare.proposal.txn;
                    if self.nodes[to].blocked.is_some() && to != from && from_id == txn.coordinator
                    {
                        // As the agent's driver: a no needs nothing on disk.
                        self.stats.refused_while_blocked += 1;
                        let vote = super::Vote::No("this node cannot write its 2PC state".into());
                        let message = Message::Vote { txn, vote };
                        self.execute(
                            to,
                            Action::Send {
                                to: from_id,
                                message,
                            },
                        );
                        return;
                    }
                }
                let Some(running) = self.nodes[to].running.as_mut() else {
                    return;
                };
                match message.role(me) {
                    super::Role::Coordinator => {
                        running.coordinator.handle_message(now, from_id, message);
                    }
                    super::Role::Participant => {
                        running.participant.handle_message(now, from_id, message);
                    }
                }
                self.after_input(to);
            }
            Input::Wake { node, at } => {
                if self.nodes[node].wake != Some(at) {
                    return;
                }
                self.note(1000 + node as u64);
                self.nodes[node].wake = None;
                let now = self.node_now(node);
                if let Some(running) = self.nodes[node].running.as_mut() {
                    running.coordinator.handle_timeout(now);
                    running.participant.handle_timeout(now);
                    self.after_input(node);
                }
            }
            Input::Validated {
                node,
                life,
                txn,
                result,
            } => {
                let now = self.node_now(node);
                let n = &mut self.nodes[node];
                if n.life != life {
                    return;
                }
                if let Some(running) = n.running.as_mut() {
                    running.participant.validated(now, txn, result);
                    self.note(2000 + node as u64);
                    self.after_input(node);
                }
            }
            Input::Recorded {
                node,
                life,
                txn,
                decision,
            } => {
                let now = self.node_now(node);
                let n = &mut self.nodes[node];
                if n.life != life {
                    return;
                }
                if let Some(running) = n.running.as_mut() {
                    running.coordinator.decision_recorded(now, txn, decision);
                    running.participant.decision_recorded(txn, decision);
                    self.note(3000 + node as u64);
                    self.after_input(node);
                }
            }
            Input::Restart { node } => self.boot(node),
            Input::CatchUp { node } => self.catch_up(node),
            Input::RetryWrite { node, life } => {
                let n = &mut self.nodes[node];
                if n.life != life || n.running.is_none() {
                    return;
                }
                let Some(record) = n.blocked.take() else {
                    return;
                };
                n.retry = Some(record);
                self.note(7000 + node as u64);
                self.after_input(node);
            }
        }
    }

    fn catch_up(&mut self, node: usize) {
        if let Some(every) = self.config.catch_up_interval {
            self.schedule(self.now + every, Input::CatchUp { node });
        }
        if self.nodes[node].running.is_none() {
            return;
        }
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != node && self.nodes[i].running.is_some())
            .collect();
        if up.is_empty() {
            return;
        }
        let peer = up[self.rng.random_range(0..up.len())];
        let newer = self.nodes[peer].disk.participant.committed.clone();
        if newer.version <= self.nodes[node].disk.participant.committed.version {
            return;
        }
        self.note(6000 + node as u64);
        let Some(running) = self.nodes[node].running.as_mut() else {
            return;
        };
        if running.participant.catch_up(newer).is_ok() {
            self.stats.caught_up += 1;
        }
        self.after_input(node);
    }

    fn boot(&mut self, node: usize) {
        if self.nodes[node].running.is_some() {
            return;
        }
        self.note(4000 + node as u64);
        let now = self.node_now(node);
        let elapsed = self.elapsed();
        let n = &mut self.nodes[node];
        if let Some((_, end)) = n.downs.last_mut() {
            if end.is_none() {
                *end = Some(elapsed);
            }
        }
        n.life += 1;
        n.running = Some(Running {
            coordinator: Coordinator::new(now, n.id, self.config.coordinator, &n.disk.coordinator),
            participant: Participant::new(now, n.id, self.config.participant, &n.disk.participant),
        });
        self.after_input(node);
    }

    fn crash_now(&mut self, node: usize, downtime: Option<Duration>) {
        if self.nodes[node].running.is_none() {
            return;
        }
        self.note(5000 + node as u64);
        self.stats.crashes += 1;
        let elapsed = self.elapsed();
        let n = &mut self.nodes[node];
        n.running = None;
        n.wake = None;
        n.blocked = None;
        n.retry = None;
        n.downs.push((elapsed, None));
        // A lock that is not staged dies with the process.
        if n.disk.participant.staged.is_none() {
            self.end_hold(node);
        }
        if let Some(downtime) = downtime {
            self.schedule(self.now + downtime, Input::Restart { node });
        }
    }

    /// Carries out the node's actions in order (a crash may cut them
    /// short), then takes its events, tracks its lock and its next wake.
    fn after_input(&mut self, node: usize) {
        loop {
            if self.nodes[node].blocked.is_some() {
                // Events wait for the write too: nothing not on disk is told.
                self.track_lock(node);
                self.schedule_wake(node);
                return;
            }
            let n = &mut self.nodes[node];
            let action = match n.running.as_mut() {
                None => return,
                Some(r) => n.retry.take().map(Action::Persist).or_else(|| {
                    r.coordinator
                        .poll_action()
                        .or_else(|| r.participant.poll_action())
                }),
            };
            let Some(action) = action else { break };
            if let Action::Persist(record) = &action {
                let fails = self.disk_full.contains(&node)
                    || (self.chaos
                        && self.config.disk_failure > 0.0
                        && self.rng.random_bool(self.config.disk_failure.min(1.0)));
                if fails {
                    self.write_failed(node, record.clone());
                    continue;
                }
            }
            let scripted = self.execute(node, action);
            let n = &mut self.nodes[node];
            n.actions_done += 1;
            let crash = match n.crash_at {
                Some((CrashPoint::AfterActions(at), downtime)) if n.actions_done > at => {
                    Some(downtime)
                }
                Some((CrashPoint::AfterDecided(later), downtime)) if scripted && later > 0 => {
                    let at = n.actions_done + later - 1;
                    n.crash_at = Some((CrashPoint::AfterActions(at), downtime));
                    None
                }
                Some((_, downtime)) if scripted => Some(downtime),
                _ => None,
            };
            if let Some(downtime) = crash {
                n.crash_at = None;
                self.crash_now(node, downtime);
                return;
            }
            if self.chaos
                && self.config.crash_per_action > 0.0
                && self.rng.random_bool(self.config.crash_per_action.min(1.0))
            {
                let downtime = self
                    .rng
                    .random_range(self.config.downtime_min..=self.config.downtime_max);
                self.crash_now(node, Some(downtime));
                return;
            }
        }
        // Events last: a driver tells the caller only what is on disk.
        loop {
            let event = match self.nodes[node].running.as_mut() {
                None => return,
                Some(r) => r
                    .coordinator
                    .poll_event()
                    .or_else(|| r.participant.poll_event()),
            };
            let Some(event) = event else { break };
            match event {
                Event::Decided(result) => {
                    let at = self.elapsed();
                    self.results.push((at, node, result));
                }
                Event::Anomaly { txn, what } => {
                    self.violation(format!("node {node} saw an anomaly in {txn}: {what}"));
                }
                Event::Finished { .. } | Event::Installed { .. } | Event::Released { .. } => {}
            }
        }
        self.track_lock(node);
        self.schedule_wake(node);
    }

    /// A `Persist` could not be written: what the agent's driver does.
    fn write_failed(&mut self, node: usize, record: Record) {
        self.stats.write_failures += 1;
        self.note(8000 + node as u64);
        let n = &mut self.nodes[node];
        let Some(running) = n.running.as_mut() else {
            return;
        };
        // Given up (nothing of it left the node), or held until written.
        let given_up = match &record {
            Record::Staged(prepare) => running.participant.stage_failed(
                prepare.proposal.txn,
                "this node cannot stage the change: disk full".into(),
            ),
            Record::Started { txn, .. } => running.coordinator.start_failed(*txn),
            _ => false,
        };
        if given_up {
            return;
        }
        n.blocked = Some(record);
        let life = n.life;
        self.schedule(
            self.now + self.config.disk_retry,
            Input::RetryWrite { node, life },
        );
    }

    fn schedule_wake(&mut self, node: usize) {
        let Some(running) = self.nodes[node].running.as_ref() else {
            return;
        };
        let deadline = match (
            running.coordinator.poll_timeout(),
            running.participant.poll_timeout(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(deadline) = deadline else {
            self.nodes[node].wake = None;
            return;
        };
        // Back to virtual time, a microsecond late so that the node's clock
        // has surely reached its deadline.
        let rate = self.nodes[node].clock_rate;
        let at = self.base
            + deadline.saturating_duration_since(self.base).div_f64(rate)
            + Duration::from_micros(1);
        let at = at.max(self.now);
        if self.nodes[node].wake != Some(at) {
            self.nodes[node].wake = Some(at);
            self.schedule(at, Input::Wake { node, at });
        }
    }

    /// Carries out one action. Returns whether it is the scripted crash
    /// point of the node.
    fn execute(&mut self, node: usize, action: Action) -> bool {
        match action {
            Action::Persist(record) => {
                self.stats.persists += 1;
                let trigger = matches!(
                    (&record, self.nodes[node].crash_at),
                    (
                        Record::Decided { .. },
                        Some((CrashPoint::AfterDecided(_), _))
                    ) | (Record::Staged(_), Some((CrashPoint::AfterStaged, _)))
                );
                self.check_record(node, &record);
                let mut h = 0u64;
                for b in format!("{record:?}").bytes() {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
                self.note(h);
                self.nodes[node].disk.apply(&record);
                trigger
            }
            Action::Send { to, message } => {
                let Some(&to) = self.index.get(&to) else {
                    return false;
                };
                self.stats.messages += 1;
                if to == node {
                    self.schedule(
                        self.now,
                        Input::Deliver {
                            to,
                            from: node,
                            message,
                        },
                    );
                    return false;
                }
                let lost = self.cut.contains(&(node, to))
                    || (self.chaos
                        && self.config.loss > 0.0
                        && self.rng.random_bool(self.config.loss));
                if lost {
                    self.stats.lost += 1;
                    return false;
                }
                let copies = if self.chaos
                    && self.config.duplicate > 0.0
                    && self.rng.random_bool(self.config.duplicate)
                {
                    self.stats.duplicated += 1;
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let slow = self.chaos
                        && self.config.slow > 0.0
                        && self.rng.random_bool(self.config.slow);
                    let max = if slow {
                        self.config.slow_delay_max.max(self.config.delay_max)
                    } else {
                        self.config.delay_max
                    };
                    let delay = self.rng.random_range(self.config.delay_min..=max);
                    self.schedule(
                        self.now + delay,
                        Input::Deliver {
                            to,
                            from: node,
                            message: message.clone(),
                        },
                    );
                }
                false
            }
            Action::Validate(proposal) => {
                let Proposal { txn, .. } = proposal;
                let fails = self.chaos
                    && self.config.validation_failure > 0.0
                    && self.rng.random_bool(self.config.validation_failure);
                let result = if fails {
                    Err("roles.http.listen: port 8080 is in use on this host".to_string())
                } else {
                    Ok(())
                };
                let delay = self
                    .rng
                    .random_range(Duration::ZERO..=self.config.validation_delay_max);
                let life = self.nodes[node].life;
                self.schedule(
                    self.now + delay,
                    Input::Validated {
                        node,
                        life,
                        txn,
                        result,
                    },
                );
                false
            }
            Action::Propose { txn, decision, .. } => {
                let trigger = txn.coordinator == self.nodes[node].id
                    && matches!(
                        self.nodes[node].crash_at,
                        Some((CrashPoint::AfterDecided(_), _))
                    );
                let recorded = match self.register.get(&txn) {
                    Some(d) => *d,
                    None => {
                        self.register.insert(txn, decision);
                        self.check_decision(txn, decision);
                        decision
                    }
                };
                if self.chaos && self.config.loss > 0.0 && self.rng.random_bool(self.config.loss) {
                    self.stats.lost += 1;
                    return trigger;
                }
                let delay = self
                    .rng
                    .random_range(Duration::ZERO..=self.config.log_delay_max);
                let life = self.nodes[node].life;
                self.schedule(
                    self.now + delay,
                    Input::Recorded {
                        node,
                        life,
                        txn,
                        decision: recorded,
                    },
                );
                trigger
            }
        }
    }

    // ---- the oracle -----------------------------------------------------

    fn check_record(&mut self, node: usize, record: &Record) {
        match record {
            Record::Committed { txn } => {
                let Some(staged) = self.nodes[node]
                    .disk
                    .participant
                    .staged
                    .clone()
                    .filter(|s| s.proposal.txn == *txn)
                else {
                    return self.violation(format!("node {node} installs {txn}, not staged"));
                };
                let p = staged.proposal;
                match self.versions.get(&p.version) {
                    Some((other, text)) if *other != p.txn || *text != p.text => {
                        let other = *other;
                        self.violation(format!(
                            "two texts for version {}: {other} and {} (node {node})",
                            p.version, p.txn
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.versions.insert(p.version, (p.txn, p.text.clone()));
                    }
                }
                match self.decisions.get(txn) {
                    Some(Decision::Commit) => {}
                    other => self.violation(format!(
                        "node {node} installs {txn} whose decision is {other:?}"
                    )),
                }
                if let Some(dropped) = self.dropped_by.get(txn) {
                    let dropped = dropped.clone();
                    self.violation(format!(
                        "node {node} installs {txn}, which nodes {dropped:?} dropped"
                    ));
                }
                self.installed_by.entry(*txn).or_default().insert(node);
            }
            Record::Aborted { txn, .. } | Record::Refused { txn, .. } => {
                if let Some(installed) = self.installed_by.get(txn) {
                    let installed = installed.clone();
                    self.violation(format!(
                        "node {node} drops {txn}, which nodes {installed:?} installed"
                    ));
                }
                if self.decisions.get(txn) == Some(&Decision::Commit) {
                    self.violation(format!("node {node} drops {txn}, decided commit"));
                }
                self.dropped_by.entry(*txn).or_default().insert(node);
            }
            Record::Decided { txn, decision } => {
                if txn.coordinator != self.nodes[node].id {
                    self.violation(format!("node {node} records a decision for {txn}"));
                }
                self.check_decision(*txn, *decision);
            }
            Record::CaughtUp(committed) => {
                let Some(txn) = committed.txn else {
                    return self
                        .violation(format!("node {node} catches up to a version without txn"));
                };
                match self.versions.get(&committed.version) {
                    Some((t, text)) if *t == txn && *text == committed.text => {}
                    other => {
                        let other = other.map(|(t, _)| *t);
                        return self.violation(format!(
                            "node {node} catches up to version {} of {txn}, installed as {other:?}",
                            committed.version
                        ));
                    }
                }
                if self.decisions.get(&txn) != Some(&Decision::Commit) {
                    self.violation(format!(
                        "node {node} catches up to {txn}, not decided commit"
                    ));
                }
                // The versions it skipped are behind it: they count as
                // installed here (the final check asks every node).
                let from = self.nodes[node].disk.participant.committed.version;
                let skipped: Vec<TxnId> = self
                    .versions
                    .range(from.next()..=committed.version)
                    .map(|(_, (t, _))| *t)
                    .collect();
                for t in skipped {
                    self.installed_by.entry(t).or_default().insert(node);
                }
            }
            Record::Staged(_) | Record::Started { .. } | Record::Finished { .. } => {}
        }
    }

    fn check_decision(&mut self, txn: TxnId, decision: Decision) {
        match self.decisions.get(&txn) {
            Some(d) if *d != decision => {
                let d = *d;
                self.violation(format!("{txn} decided {d}, then {decision}"));
            }
            Some(_) => {}
            None => {
                self.decisions.insert(txn, decision);
                match decision {
                    Decision::Commit => self.stats.committed += 1,
                    Decision::Abort => self.stats.aborted += 1,
                }
            }
        }
        match decision {
            Decision::Commit => {
                if let Some(dropped) = self.dropped_by.get(&txn) {
                    let dropped = dropped.clone();
                    self.violation(format!(
                        "{txn} decided commit, but nodes {dropped:?} dropped it"
                    ));
                }
            }
            Decision::Abort => {
                if let Some(installed) = self.installed_by.get(&txn) {
                    let installed = installed.clone();
                    self.violation(format!(
                        "{txn} decided abort, but nodes {installed:?} installed it"
                    ));
                }
            }
        }
    }

    /// Follows the node's lock: a lock held past its lease must say why.
    fn track_lock(&mut self, node: usize) {
        let Some(status) = self.lock_status(node) else {
            return;
        };
        let elapsed = self.elapsed();
        match (self.nodes[node].hold, status.txn()) {
            (Some(hold), Some(txn)) if hold.txn == txn => {
                if elapsed > hold.lease_end + Duration::from_millis(1) {
                    self.stats.waiting_checks += 1;
                    let expected = format!(
                        "waiting for the decision of txn {} from node {}",
                        txn.seq, txn.coordinator
                    );
                    if !matches!(status, LockStatus::Waiting { .. })
                        || status.to_string() != expected
                    {
                        self.violation(format!(
                            "node {node} holds the lock of {txn} past its lease and says \"{status}\""
                        ));
                    }
                }
            }
            (Some(_), now_held) => {
                self.end_hold(node);
                if let Some(txn) = now_held {
                    self.begin_hold(node, txn);
                }
            }
            (None, Some(txn)) => self.begin_hold(node, txn),
            (None, None) => {}
        }
    }

    fn begin_hold(&mut self, node: usize, txn: TxnId) {
        let elapsed = self.elapsed();
        let rate = self.nodes[node].clock_rate;
        let lease = self
            .leases
            .get(&txn)
            .copied()
            .unwrap_or(self.config.coordinator.lease)
            .div_f64(rate);
        self.nodes[node].hold = Some(Hold {
            txn,
            acquired: elapsed,
            lease_end: elapsed + lease,
        });
    }

    fn end_hold(&mut self, node: usize) {
        let Some(hold) = self.nodes[node].hold.take() else {
            return;
        };
        let end = self.elapsed();
        self.stats.holds += 1;
        self.stats.max_hold = self.stats.max_hold.max(end - hold.acquired);
        if end <= hold.lease_end {
            return;
        }
        self.stats.holds_past_lease += 1;
        // Time past the lease while the holder, or (when only it can
        // decide) the coordinator, was down: the documented blocking case.
        let mut downs = Vec::new();
        let mut who = vec![node];
        if self.logs.get(&hold.txn) != Some(&DecisionLog::Replicated) {
            if let Some(&c) = self.index.get(&hold.txn.coordinator) {
                who.push(c);
            }
        }
        for w in who {
            for (from, to) in &self.nodes[w].downs {
                downs.push((*from, to.unwrap_or(end)));
            }
        }
        let past = end - hold.lease_end;
        let excused = covered(downs, hold.lease_end, end);
        let unexcused = past.saturating_sub(excused);
        self.stats.max_unexcused_past_lease = self.stats.max_unexcused_past_lease.max(unexcused);
        if unexcused > self.config.grace {
            self.violation(format!(
                "node {node} held the lock of {} for {:.1} s past its lease, {:.1} s of it with the holder and the coordinator up",
                hold.txn,
                past.as_secs_f64(),
                unexcused.as_secs_f64()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twophase::Outcome;

    const WAIT: Duration = Duration::from_secs(60);

    /// The reason `node` gave in the abort of `txn`, if it gave one.
    fn reason(sim: &Sim, txn: TxnId, node: usize) -> Option<String> {
        let (_, _, result) = sim.results().iter().find(|(_, _, r)| r.txn == txn)?;
        assert!(result.silent.is_empty(), "nobody is silent: {result}");
        match &result.outcome {
            Outcome::Aborted { reasons } => reasons.get(&sim.id(node)).cloned(),
            Outcome::Committed(_) => None,
        }
    }

    fn decided(sim: &mut Sim, txn: TxnId) {
        sim.run_until_true(WAIT, |s| s.decision(txn).is_some())
            .unwrap_or_else(|| panic!("{txn} undecided: {}", sim.describe_unsettled()));
    }

    /// A node whose every write fails votes no on the change it cannot
    /// stage (named, not silent), holds back what follows a write it
    /// cannot skip (the abort it must record), and meanwhile refuses
    /// PREPAREs at once; once its disk works it writes what it held back
    /// by itself and the next change commits everywhere.
    #[test]
    fn a_full_disk_votes_no_and_a_freed_one_takes_part_again() {
        let mut sim = Sim::new(SimConfig::new(1, 3));
        sim.set_chaos(false);
        sim.set_disk_full(2, true);
        let first = sim.start_txn(0).unwrap();
        decided(&mut sim, first);
        let why = reason(&sim, first, 2).expect("node 2 says why");
        assert!(why.contains("cannot stage the change"), "{why}");
        sim.run_until_true(WAIT, |s| s.is_blocked(2))
            .expect("node 2 cannot record the abort");
        let second = sim.start_txn(1).unwrap();
        decided(&mut sim, second);
        let why = reason(&sim, second, 2).expect("node 2 says why");
        assert!(why.contains("cannot write its 2PC state"), "{why}");
        assert!(sim.start_txn(2).is_err(), "a blocked node starts nothing");
        assert!(!sim.settled());

        sim.set_disk_full(2, false);
        sim.run_until_true(WAIT, Sim::settled)
            .unwrap_or_else(|| panic!("{}", sim.describe_unsettled()));
        let third = sim.start_txn(2).unwrap();
        sim.run_until_true(WAIT, Sim::settled)
            .unwrap_or_else(|| panic!("{}", sim.describe_unsettled()));
        assert_eq!(sim.decision(third), Some(Decision::Commit));
        sim.final_check().unwrap();
        assert!(sim.stats().write_failures > 0);
        assert_eq!(sim.stats().refused_while_blocked, 1);
    }

    /// Random applies for a minute while 5 % of writes fail (a failed
    /// write fails again as often), with loss, crashes and failed
    /// validations; then the faults end: the invariants hold throughout,
    /// the cluster settles, and the next change commits.
    fn chaos_with_failing_writes(seed: u64) -> Result<(), String> {
        let mut config = SimConfig::new(seed, 3 + (seed % 5) as usize);
        config.loss = 0.1;
        config.duplicate = 0.05;
        config.delay_max = Duration::from_millis(150);
        config.crash_per_action = 0.005;
        config.downtime_max = Duration::from_secs(15);
        config.clock_skew = 0.1;
        config.validation_failure = 0.05;
        config.disk_failure = 0.05;
        config.mixed_logs = seed % 2 == 1;
        config.catch_up_interval = Some(Duration::from_secs(1));
        let n = config.nodes;
        let mut sim = Sim::new(config);
        let mut rng = SmallRng::seed_from_u64(mix(seed ^ 0xd15c));
        while sim.elapsed() < Duration::from_secs(60) {
            sim.run_for(rng.random_range(Duration::from_millis(300)..=Duration::from_secs(3)));
            let _ = sim.start_txn(rng.random_range(0..n));
        }
        sim.heal();
        sim.run_until_true(Duration::from_secs(120), Sim::settled)
            .ok_or_else(|| sim.describe_unsettled())?;
        sim.final_check()?;
        if std::env::var_os("TWOPC_DISK_VERBOSE").is_some() {
            eprintln!("seed {seed}: {:?}", sim.stats());
        }
        if sim.stats().write_failures == 0 {
            return Err("no write failed: the scenario tests nothing".into());
        }
        let next = sim.start_txn(rng.random_range(0..n))?;
        sim.run_until_true(Duration::from_secs(30), Sim::settled)
            .ok_or_else(|| sim.describe_unsettled())?;
        sim.final_check()?;
        match sim.decision(next) {
            Some(Decision::Commit) => Ok(()),
            other => Err(format!("the apply after the heal: {other:?}")),
        }
    }

    #[test]
    fn chaos_with_failing_writes_over_seeds() {
        let seeds: u64 = std::env::var("TWOPC_DISK_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        for seed in 0..seeds {
            if let Err(e) = chaos_with_failing_writes(seed) {
                panic!("seed {seed}: {e}");
            }
        }
    }
}
