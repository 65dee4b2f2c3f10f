#![cfg(feature = "sim")]
//! A seeded simulator of the Raft group for tests: N openraft nodes over
//! our durable store ([`store::open`], one directory per node) in one
//! process, on a single-threaded tokio runtime with a paused clock, talking
//! through a simulated network that delays, loses and cuts messages. Nodes
//! crash (their Raft is shut down and dropped) and restart from their
//! store directory with the same id. A [`Checker`] watches every run: one
//! leader per term, the same entry applied at each index on every node,
//! acknowledged writes never lost, fencing generations never reused,
//! voter-only nodes never standing. The scenarios are in
//! `tests/raft_sim.rs`.
//!
//! Determinism, honestly: a seed fixes the network's draws (loss, delays),
//! the client's writes, the test's fault schedule and the election
//! timeouts ([`runtime::seed`]). It does not fix everything: tokio's
//! `select!` picks among ready branches at random, and openraft's tasks
//! race on one thread, so the same seed replays the same schedule of
//! faults, not necessarily the same interleaving of messages (once two
//! runs differ in the order of two sends, the network's later draws
//! differ too). A failure that depends on one interleaving may need a few
//! replays, or `RAFT_SEEDS`, to show again; `RAFT_LOG=openraft=info`
//! prints openraft's log on the simulated clock.
//!
//! What is not modelled:
//! - power loss: stores are opened without fsync, a "crash" is a graceful
//!   [`Raft::shutdown`], and what was written before it survives in the
//!   page cache. Torn writes and lost fsyncs are the store's own tests;
//! - timer drift: on the paused clock every timer fires on the dot. Real
//!   timers do not. That once mattered here: openraft 0.9 draws a node's
//!   election timeout once per start and checks it on a tick, and two
//!   candidates with close draws split the vote in every round, forever.
//!   Our election timer ([`super::election`]) draws again in every term,
//!   which ends such a tie in a round or two; nodes still start a few
//!   milliseconds apart ([`Sim`] waits for that), and a random node now
//!   and then misses a tick of openraft's, which delays a leader's
//!   heartbeats ([`SimConfig::timer_jitter`]);
//! - message delays beyond a LAN's: openraft's deadline for AppendEntries
//!   is the heartbeat interval (T/15), so a round trip must stay well under
//!   it ([`SimConfig::delay_max`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use openraft::error::{
    ClientWriteError, InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, OptionalSend, RPCTypes, RaftMetrics, ServerState, Snapshot, SnapshotMeta,
    SnapshotPolicy,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use super::elector::{Elector, Inbound};
use super::store::{self, Applied};
use super::{
    network, runtime, ClusterState, Command, Entry, LogId, Master, NodeId, Peer, Raft, Response,
    StorageError, TypeConfig,
};
use crate::twophase::{ConfigHash, Decision, TxnId, Version};

pub use super::driver::raft_config;

/// The id of the simulator's node `i`.
pub fn node_id(i: usize) -> NodeId {
    NodeId(Uuid::from_u128(i as u128 + 1))
}

/// The simulator's node index of `id`, if it is one of [`node_id`]'s.
pub fn node_index(id: NodeId) -> Option<usize> {
    usize::try_from(id.0.as_u128().checked_sub(1)?).ok()
}

/// How node `i` is named and reached (the address is never dialled).
pub fn peer(i: usize) -> Peer {
    Peer {
        name: format!("n{i}"),
        addr: SocketAddr::from(([10, 0, 0, (i + 1) as u8], 3301)),
    }
}

/// Knobs of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Voters, all of them.
    pub nodes: usize,
    /// Voters that never stand for election (their election timer may not
    /// stand): they vote and replicate, and must never lead.
    pub voter_only: BTreeSet<usize>,
    /// `T` ([`raft_config`]): each node's election timeout is drawn from
    /// `T/5..7T/10`, heartbeats go out every `T/15`. (A follower that heard
    /// from a leader also waits out the leader's lease, `7T/10`, first.)
    pub election_timeout: Duration,
    /// One-way delay of every message, drawn uniformly; under 1 ms it
    /// arrives at once. A round trip must stay well under the heartbeat
    /// interval (openraft's AppendEntries deadline), or replication
    /// stalls on timeouts.
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Probability that one message (a request or an answer) is lost.
    pub loss: f64,
    /// Build a snapshot every this many entries (and purge the log behind
    /// it), so lagging nodes are caught up by InstallSnapshot.
    pub snapshot_every: Option<u64>,
    /// A client gives up on a write after this long.
    pub client_timeout: Duration,
    /// Now and then a random node's timer fires late (it misses one of
    /// openraft's ticks), as timers do on real machines (see the module
    /// doc).
    pub timer_jitter: bool,
}

impl SimConfig {
    /// `nodes` electable voters, T = 300 ms, 0–2 ms per message (a LAN),
    /// no loss.
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        let t = Duration::from_millis(300);
        SimConfig {
            seed,
            nodes,
            voter_only: BTreeSet::new(),
            election_timeout: t,
            delay_min: Duration::ZERO,
            delay_max: Duration::from_millis(2),
            loss: 0.0,
            snapshot_every: None,
            client_timeout: 4 * t,
            timer_jitter: true,
        }
    }

    fn openraft(&self) -> Result<Arc<openraft::Config>, String> {
        let mut config = raft_config(self.election_timeout);
        if let Some(every) = self.snapshot_every {
            config.snapshot_policy = SnapshotPolicy::LogsSinceLast(every);
            config.max_in_snapshot_log_to_keep = every / 2;
            config.purge_batch_size = 1;
        }
        config.validate().map(Arc::new).map_err(|e| e.to_string())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the invariants ---------------------------------------------------------

/// Watches a run and lists every invariant it saw broken. Fed by the
/// simulator (metrics, applied entries, acknowledged writes); a test can
/// feed it directly to show that it does fail.
#[derive(Debug, Default)]
pub struct Checker {
    /// Term → the node seen leading it.
    leaders: BTreeMap<u64, NodeId>,
    /// Nodes that must never lead nor stand for election.
    voter_only: BTreeSet<NodeId>,
    /// Index → the entry first applied there and its answer.
    log: BTreeMap<u64, (Entry, Response)>,
    /// Index → a write acknowledged to the client.
    acked: BTreeMap<u64, (LogId, Command, Response)>,
    /// (set, generation) → the node appointed with it.
    masters: BTreeMap<(String, u64), String>,
    /// Txn → the decision every answer about it must give.
    decisions: BTreeMap<TxnId, Decision>,
    /// Per node, the last index it applied (by entry or snapshot).
    applied_through: BTreeMap<NodeId, u64>,
    snapshots_installed: u64,
    violations: Vec<String>,
}

/// At most this many violations are kept (the first ones tell the story).
const VIOLATIONS_KEPT: usize = 20;

impl Checker {
    pub fn new() -> Checker {
        Checker::default()
    }

    /// `node` votes but must never lead.
    pub fn voter_only(&mut self, node: NodeId) {
        self.voter_only.insert(node);
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(what);
        }
    }

    /// What the invariants saw broken, the first ones first.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// How many terms had a leader.
    pub fn terms_led(&self) -> usize {
        self.leaders.len()
    }

    /// How many snapshots nodes installed from a leader.
    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed
    }

    /// `node` reports `state` in `term`, and `leader` as the leader it
    /// knows of in that term (from its metrics). A follower's leader is
    /// one a quorum voted for: two of them in one term break election
    /// safety as surely as two nodes calling themselves leader.
    pub fn observe(&mut self, node: NodeId, term: u64, state: ServerState, leader: Option<NodeId>) {
        if self.voter_only.contains(&node)
            && matches!(state, ServerState::Leader | ServerState::Candidate)
        {
            self.violation(format!(
                "voter-only node {} became {state:?} in term {term}",
                name(node)
            ));
        }
        if state == ServerState::Leader {
            self.leader(term, node);
        }
        if let Some(leader) = leader {
            self.leader(term, leader);
        }
    }

    /// `node` leads `term`.
    pub fn leader(&mut self, term: u64, node: NodeId) {
        match self.leaders.get(&term) {
            Some(&other) if other != node => self.violation(format!(
                "two leaders in term {term}: {} and {}",
                name(other),
                name(node)
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
            }
        }
    }

    /// `node` applied `entry`, and its state machine answered `response`.
    pub fn applied(&mut self, node: NodeId, entry: &Entry, response: &Response) {
        let index = entry.log_id.index;
        let through = self.applied_through.entry(node).or_default();
        *through = (*through).max(index);
        match self.log.get(&index) {
            Some((first, answer)) => {
                if first != entry {
                    let what = format!(
                        "index {index}: {} applied {} where another node applied {}",
                        name(node),
                        describe(entry),
                        describe(first)
                    );
                    self.violation(what);
                } else if answer != response {
                    let what = format!(
                        "index {index}: {} answered {response:?} where another node answered {answer:?}",
                        name(node)
                    );
                    self.violation(what);
                }
            }
            None => {
                self.log.insert(index, (entry.clone(), response.clone()));
            }
        }
        if let Some((log_id, command, answer)) = self.acked.get(&index).cloned() {
            self.check_ack(&name(node), entry, response, log_id, &command, &answer);
        }
        if let EntryPayload::Normal(command) = &entry.payload {
            self.answered(command, response);
        }
    }

    fn check_ack(
        &mut self,
        who: &str,
        entry: &Entry,
        response: &Response,
        log_id: LogId,
        command: &Command,
        answer: &Response,
    ) {
        let same = entry.log_id == log_id
            && matches!(&entry.payload, EntryPayload::Normal(c) if c == command)
            && response == answer;
        if !same {
            self.violation(format!(
                "index {}: {who} applied {} ({response:?}) but the client was told {command:?} at {log_id} ({answer:?})",
                log_id.index,
                describe(entry),
            ));
        }
    }

    /// `node` installed a snapshot that covers the log through `last`.
    pub fn snapshot_installed(&mut self, node: NodeId, last: Option<LogId>) {
        self.snapshots_installed += 1;
        if let Some(last) = last {
            let through = self.applied_through.entry(node).or_default();
            *through = (*through).max(last.index);
        }
    }

    /// The client was told `command` was committed at `log_id` with
    /// `response`.
    pub fn acked(&mut self, log_id: LogId, command: &Command, response: &Response) {
        if let Some((entry, answer)) = self.log.get(&log_id.index).cloned() {
            self.check_ack("a node", &entry, &answer, log_id, command, response);
        }
        self.acked
            .insert(log_id.index, (log_id, command.clone(), response.clone()));
        self.answered(command, response);
    }

    /// Writes acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    /// The highest index acknowledged to a client.
    pub fn last_acked(&self) -> Option<u64> {
        self.acked.keys().next_back().copied()
    }

    /// A state machine (or the client) saw `response` to `command`.
    fn answered(&mut self, command: &Command, response: &Response) {
        match (command, response) {
            (Command::AppointMaster { set, .. }, Response::Appointed(master)) => {
                self.appointed(set, master)
            }
            (Command::RecordDecision { txn, .. }, Response::Decided(decision)) => {
                match self.decisions.get(txn) {
                    Some(first) if first != decision => {
                        let what = format!("{txn}: decided {first:?}, later answered {decision:?}");
                        self.violation(what);
                    }
                    Some(_) => {}
                    None => {
                        self.decisions.insert(*txn, *decision);
                    }
                }
            }
            _ => {}
        }
    }

    /// `master` was appointed to `set`.
    pub fn appointed(&mut self, set: &str, master: &Master) {
        let key = (set.to_string(), master.generation);
        match self.masters.get(&key) {
            Some(node) if *node != master.node => {
                let what = format!(
                    "{set}: generation {} given to both {node} and {}",
                    master.generation, master.node
                );
                self.violation(what);
            }
            Some(_) => {}
            None => {
                self.masters.insert(key, master.node.clone());
            }
        }
    }

    /// Every acknowledged write is applied (by entry or snapshot) on each
    /// of `nodes`.
    pub fn check_all_applied(&mut self, nodes: &[NodeId]) {
        let Some(last) = self.last_acked() else {
            return;
        };
        for &node in nodes {
            let through = self.applied_through.get(&node).copied().unwrap_or(0);
            if through < last {
                let what = format!(
                    "{} applied through {through}, short of the acknowledged write at {last}",
                    name(node)
                );
                self.violation(what);
            }
        }
    }
}

fn name(id: NodeId) -> String {
    match node_index(id) {
        Some(i) if i < 1000 => format!("n{i}"),
        _ => id.to_string(),
    }
}

fn describe(entry: &Entry) -> String {
    match &entry.payload {
        EntryPayload::Blank => format!("blank at {}", entry.log_id),
        EntryPayload::Normal(c) => format!("{c:?} at {}", entry.log_id),
        EntryPayload::Membership(m) => format!("membership {m:?} at {}", entry.log_id),
    }
}

// ---- the simulated network ------------------------------------------------

/// Messages the network carried, lost and refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Requests sent.
    pub sent: u64,
    /// Requests or answers lost (the caller times out).
    pub lost: u64,
    /// Requests refused on a cut link (the caller gets Unreachable).
    pub cut: u64,
    /// Requests to a crashed node (Unreachable).
    pub down: u64,
}

struct Net {
    rng: SmallRng,
    loss: f64,
    delay: (Duration, Duration),
    /// Directed links that carry nothing.
    cut: BTreeSet<(usize, usize)>,
    /// The running instance of each node.
    up: Vec<Option<Inbound>>,
    stats: NetStats,
}

/// One message's fate, drawn when it is sent.
struct Plan {
    there: Duration,
    back: Duration,
    lost_there: bool,
    lost_back: bool,
}

impl Net {
    fn delay(&mut self) -> Duration {
        let (min, max) = self.delay;
        if max <= min {
            min
        } else {
            self.rng.random_range(min..=max)
        }
    }

    fn lost(&mut self) -> bool {
        self.loss > 0.0 && self.rng.random_bool(self.loss.min(1.0))
    }

    fn plan(&mut self) -> Plan {
        self.stats.sent += 1;
        let plan = Plan {
            there: self.delay(),
            back: self.delay(),
            lost_there: self.lost(),
            lost_back: self.lost(),
        };
        // Counted here: the caller's own deadline usually ends the call
        // before ours does.
        self.stats.lost +=
            u64::from(plan.lost_there) + u64::from(plan.lost_back && !plan.lost_there);
        plan
    }

    /// Node `i`'s instance, while it runs.
    fn raft(&self, i: usize) -> Option<Raft> {
        self.up.get(i)?.as_ref().map(|n| n.raft().clone())
    }

    /// The target's instance if `from → to` carries messages now.
    fn reach(&mut self, from: usize, to: usize) -> Result<Inbound, String> {
        if self.cut.contains(&(from, to)) {
            self.stats.cut += 1;
            return Err(format!("n{from} → n{to} is cut"));
        }
        match self.up.get(to).and_then(Option::clone) {
            Some(raft) => Ok(raft),
            None => {
                self.stats.down += 1;
                Err(format!("n{to} is down"))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SimFault(String);

/// A message's trip. tokio's timers count whole milliseconds: a delay
/// under one is a message that arrives at once (a LAN's sub-millisecond
/// trip), not one that waits for the next millisecond.
async fn pass(delay: Duration) {
    if delay >= Duration::from_millis(1) {
        tokio::time::sleep(delay).await;
    } else {
        tokio::task::yield_now().await;
    }
}

/// Node `from`'s side of the simulated network.
struct SimNetwork {
    from: usize,
    net: Arc<Mutex<Net>>,
    max_backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimLink;

    async fn new_client(&mut self, target: NodeId, _node: &Peer) -> SimLink {
        SimLink {
            from: self.from,
            to: node_index(target).unwrap_or(usize::MAX),
            net: self.net.clone(),
            max_backoff: self.max_backoff,
        }
    }
}

struct SimLink {
    from: usize,
    to: usize,
    net: Arc<Mutex<Net>>,
    max_backoff: Duration,
}

impl SimLink {
    /// Carries one request and its answer: delayed, maybe lost (the caller
    /// waits out its deadline), refused on a cut link or by a node that is
    /// down (Unreachable, after the delay).
    async fn exchange<T, E, F>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        deliver: impl FnOnce(Inbound) -> F,
    ) -> Result<T, RPCError<NodeId, Peer, RaftError<NodeId, E>>>
    where
        F: std::future::Future<Output = Result<T, RaftError<NodeId, E>>>,
        E: std::error::Error,
    {
        let plan = lock(&self.net).plan();
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: node_id(self.from),
                target: node_id(self.to),
                timeout: option.hard_ttl(),
            })
        };
        pass(plan.there).await;
        if plan.lost_there {
            tokio::time::sleep(option.hard_ttl()).await;
            return Err(timeout());
        }
        let target = lock(&self.net)
            .reach(self.from, self.to)
            .map_err(|why| RPCError::Unreachable(Unreachable::new(&SimFault(why))))?;
        let answer = deliver(target).await;
        pass(plan.back).await;
        let cut_back = lock(&self.net).cut.contains(&(self.to, self.from));
        if plan.lost_back || cut_back {
            tokio::time::sleep(option.hard_ttl()).await;
            return Err(timeout());
        }
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                node_id(self.to),
                peer(self.to),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for SimLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.exchange(RPCTypes::AppendEntries, &option, |node| async move {
            node.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Peer, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.exchange(RPCTypes::InstallSnapshot, &option, |node| async move {
            node.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Peer, RaftError<NodeId>>> {
        self.exchange(RPCTypes::Vote, &option, |node| async move {
            node.vote(rpc).await
        })
        .await
    }

    fn backoff(&self) -> Backoff {
        network::backoff(self.max_backoff)
    }
}

// ---- a state machine that reports what it applies --------------------------

/// Our state machine store, reporting every applied entry to the checker.
struct Recorder<S> {
    inner: S,
    node: NodeId,
    checker: Arc<Mutex<Checker>>,
}

impl<S: RaftStateMachine<TypeConfig>> RaftStateMachine<TypeConfig> for Recorder<S> {
    type SnapshotBuilder = S::SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, super::Membership), StorageError> {
        self.inner.applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let responses = self.inner.apply(entries.clone()).await?;
        let mut checker = lock(&self.checker);
        for (entry, response) in entries.iter().zip(&responses) {
            checker.applied(self.node, entry, response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.inner.get_snapshot_builder().await
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError> {
        self.inner.begin_receiving_snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.inner.install_snapshot(meta, snapshot).await?;
        lock(&self.checker).snapshot_installed(self.node, meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.inner.get_current_snapshot().await
    }
}

// ---- the client -------------------------------------------------------------

/// What the clients' writes came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Writes committed and acknowledged.
    pub acked: u64,
    /// Of those, appointments refused as stale (expected an old generation).
    pub stale: u64,
    /// Answers "ask the leader, it is …".
    pub forwarded: u64,
    /// No answer within the client's timeout, or an error.
    pub failed: u64,
}

/// The replica sets the workload appoints masters of.
const SETS: [&str; 3] = ["s1", "s2", "s3"];
/// The coordinator the workload's 2PC decisions are recorded for.
const COORDINATOR: u128 = 0xc0;

/// Writes to whichever node it believes leads, following "forward to
/// leader", until stopped: appointments expecting the generation it last
/// saw, sets forgotten now and then, and decisions (a tenth of them
/// racing an earlier txn's).
async fn client(
    seed: u64,
    net: Arc<Mutex<Net>>,
    checker: Arc<Mutex<Checker>>,
    stats: Arc<Mutex<ClientStats>>,
    timeout: Duration,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x00c1_1e47);
    let mut believed: Option<usize> = None;
    let mut generation: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let pause = rng.random_range(Duration::from_millis(2)..=Duration::from_millis(40));
        tokio::time::sleep(pause).await;
        let up: Vec<usize> = {
            let net = lock(&net);
            (0..net.up.len()).filter(|&i| net.up[i].is_some()).collect()
        };
        if up.is_empty() {
            continue;
        }
        let target = match believed.filter(|i| up.contains(i)) {
            Some(i) => i,
            None => up[rng.random_range(0..up.len())],
        };
        let Some(raft) = lock(&net).raft(target) else {
            continue;
        };
        let command = if rng.random_bool(0.05) {
            // A set leaves the topology; when it comes back its
            // generations must go on, never repeat.
            let set = SETS[rng.random_range(0..SETS.len())];
            generation.insert(set, 0);
            Command::ForgetSets {
                sets: vec![set.into()],
            }
        } else if rng.random_bool(0.6) {
            let set = SETS[rng.random_range(0..SETS.len())];
            Command::AppointMaster {
                set: set.into(),
                node: format!("{set}-{}", rng.random_range(0..4)),
                expect: generation.get(set).copied().unwrap_or(0),
                reason: "sim".into(),
            }
        } else {
            let txn = if seq > 0 && rng.random_bool(0.1) {
                rng.random_range(1..=seq)
            } else {
                seq += 1;
                seq
            };
            let decision = if rng.random_bool(0.7) {
                Decision::Commit
            } else {
                Decision::Abort
            };
            Command::RecordDecision {
                txn: TxnId {
                    coordinator: NodeId(Uuid::from_u128(COORDINATOR)),
                    seq: txn,
                },
                decision,
                installs: Some((Version(txn), ConfigHash([txn as u8; 32]))),
            }
        };
        let written = tokio::time::timeout(timeout, raft.client_write(command.clone())).await;
        drop(raft);
        let mut stats = lock(&stats);
        match written {
            Ok(Ok(reply)) => {
                stats.acked += 1;
                lock(&checker).acked(reply.log_id, &command, &reply.data);
                if let Command::AppointMaster { set, .. } = &command {
                    let set = SETS.iter().find(|s| *s == set).copied().unwrap_or("s1");
                    match &reply.data {
                        Response::Appointed(m) => {
                            generation.insert(set, m.generation);
                        }
                        Response::Stale { current } => {
                            stats.stale += 1;
                            generation.insert(set, current.as_ref().map_or(0, |m| m.generation));
                        }
                        _ => {}
                    }
                }
                believed = Some(target);
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(to)))) => {
                stats.forwarded += 1;
                believed = to.leader_id.and_then(node_index);
            }
            _ => {
                stats.failed += 1;
                believed = None;
            }
        }
    }
}

/// Every 50–500 ms a random running node misses one tick of its timer.
async fn jitter(seed: u64, net: Arc<Mutex<Net>>, tick: Duration) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x717e_4000);
    loop {
        tokio::time::sleep(
            rng.random_range(Duration::from_millis(50)..=Duration::from_millis(500)),
        )
        .await;
        let up: Vec<Raft> = lock(&net)
            .up
            .iter()
            .flatten()
            .map(|n| n.raft().clone())
            .collect();
        if up.is_empty() {
            continue;
        }
        let raft = up[rng.random_range(0..up.len())].clone();
        drop(up);
        raft.runtime_config().tick(false);
        tokio::time::sleep(tick).await;
        raft.runtime_config().tick(true);
    }
}

// ---- the simulator ----------------------------------------------------------

/// Everything the simulation counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub net: NetStats,
    pub client: ClientStats,
    /// The highest term any node reached.
    pub max_term: u64,
    /// Terms in which a leader was seen.
    pub terms_led: usize,
    pub crashes: u64,
    /// Snapshots installed by lagging nodes.
    pub snapshots_installed: u64,
}

struct Node {
    dir: PathBuf,
    /// When the running instance started, in ms mod its tick interval.
    tick_phase: Option<u64>,
    /// The state machine's published state, while the node runs.
    applied: Option<watch::Receiver<Applied>>,
    /// Its election timer, while the node runs.
    elector: Option<Elector>,
}

/// The simulated group. Every method runs the simulation (on its own
/// single-threaded runtime, paused clock) only as long as it needs.
pub struct Sim {
    config: SimConfig,
    rt: Runtime,
    net: Arc<Mutex<Net>>,
    checker: Arc<Mutex<Checker>>,
    client: Arc<Mutex<ClientStats>>,
    workload: Option<JoinHandle<()>>,
    nodes: Vec<Node>,
    started: Instant,
    crashes: u64,
    max_term: u64,
}

impl Sim {
    /// Starts `config.nodes` voters with stores under `dir` (one
    /// directory per node) and forms the group from the first electable
    /// node with all of them.
    pub fn new(config: SimConfig, dir: &Path) -> Result<Sim, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| format!("cannot build the runtime: {e}"))?;
        runtime::seed(config.seed);
        let started = rt.block_on(async { Instant::now() });
        let net = Net {
            rng: SmallRng::seed_from_u64(config.seed ^ 0x05ee_d4e7),
            loss: config.loss,
            delay: (config.delay_min, config.delay_max),
            cut: BTreeSet::new(),
            up: vec![None; config.nodes],
            stats: NetStats::default(),
        };
        let mut checker = Checker::new();
        for &i in &config.voter_only {
            checker.voter_only(node_id(i));
        }
        let nodes = (0..config.nodes)
            .map(|i| Node {
                dir: dir.join(format!("n{i}")),
                tick_phase: None,
                applied: None,
                elector: None,
            })
            .collect();
        let mut sim = Sim {
            config,
            rt,
            net: Arc::new(Mutex::new(net)),
            checker: Arc::new(Mutex::new(checker)),
            client: Arc::new(Mutex::new(ClientStats::default())),
            workload: None,
            nodes,
            started,
            crashes: 0,
            max_term: 0,
        };
        // Real nodes never start in the same instant, nor keep their
        // timers in step (see "timer drift" in the module doc).
        let mut rng = SmallRng::seed_from_u64(sim.config.seed ^ 0x57a6_6e12);
        let spread = (sim.config.election_timeout / 5).as_millis().max(1) as u64;
        for i in 0..sim.config.nodes {
            sim.run_for(Duration::from_millis(rng.random_range(0..spread)));
            sim.start(i)?;
        }
        let first = (0..sim.config.nodes)
            .find(|i| !sim.config.voter_only.contains(i))
            .ok_or("no node may lead")?;
        let members: BTreeMap<NodeId, Peer> = (0..sim.config.nodes)
            .map(|i| (node_id(i), peer(i)))
            .collect();
        if sim.config.timer_jitter {
            let tick = Duration::from_millis(
                raft_config(sim.config.election_timeout).heartbeat_interval * 3 / 2,
            );
            sim.rt.spawn(jitter(sim.config.seed, sim.net.clone(), tick));
        }
        let raft = sim.raft(first).ok_or("the first node is not running")?;
        sim.rt
            .block_on(raft.initialize(members))
            .map_err(|e| format!("cannot form the group: {e}"))?;
        Ok(sim)
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.rt.block_on(async { self.started.elapsed() })
    }

    /// Lets the simulation run for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        self.rt.block_on(async move { tokio::time::sleep(d).await });
        self.note_terms();
    }

    fn note_terms(&mut self) {
        for i in 0..self.config.nodes {
            if let Some(m) = self.metrics(i) {
                self.max_term = self.max_term.max(m.current_term);
            }
        }
    }

    fn raft(&self, i: usize) -> Option<Raft> {
        lock(&self.net).raft(i)
    }

    /// Opens node `i`'s store and starts its Raft.
    fn start(&mut self, i: usize) -> Result<(), String> {
        let phase = self.separate_ticks(i);
        let node = &self.nodes[i];
        let (log, sm) = store::open(&node.dir, false)
            .map_err(|e| format!("n{i}: cannot open the store: {e}"))?;
        let applied = sm.subscribe();
        let sm = Recorder {
            inner: sm,
            node: node_id(i),
            checker: self.checker.clone(),
        };
        let network = SimNetwork {
            from: i,
            net: self.net.clone(),
            max_backoff: (self.config.election_timeout / 2).min(network::DEFAULT_MAX_BACKOFF),
        };
        let config = self.config.openraft()?;
        let raft = self
            .rt
            .block_on(Raft::new(node_id(i), config.clone(), network, log, sm))
            .map_err(|e| format!("n{i}: cannot start raft: {e}"))?;
        let mut metrics = raft.metrics();
        let checker = self.checker.clone();
        self.rt.spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    lock(&checker).observe(m.id, m.current_term, m.state, m.current_leader);
                }
                if metrics.changed().await.is_err() {
                    break;
                }
            }
        });
        let (elector, inbound) = {
            let _runtime = self.rt.enter();
            Elector::spawn(&raft, &config, !self.config.voter_only.contains(&i))
        };
        lock(&self.net).up[i] = Some(inbound);
        self.nodes[i].elector = Some(elector);
        self.nodes[i].applied = Some(applied);
        self.nodes[i].tick_phase = Some(phase);
        Ok(())
    }

    /// Waits (less than one tick) until node `i` can start with its ticks
    /// more than the longest message delay (and a millisecond of rounding)
    /// away from every running node's, and returns its phase. Real
    /// machines' timers are never aligned to within a message delay for
    /// long; on the paused clock they would be, and openraft 0.9 then
    /// splits votes forever (see the module doc).
    fn separate_ticks(&mut self, i: usize) -> u64 {
        let tick = (raft_config(self.config.election_timeout).heartbeat_interval * 3 / 2).max(1);
        let gap = self.config.delay_max.as_millis() as u64 + 2;
        let taken: Vec<u64> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .filter_map(|j| self.nodes[j].tick_phase)
            .collect();
        let now = self.elapsed().as_millis() as u64;
        let apart = |phase: u64| {
            taken.iter().all(|&t| {
                let d = phase.abs_diff(t);
                d.min(tick - d.min(tick)) >= gap
            })
        };
        let wait = (0..tick).find(|w| apart((now + w) % tick)).unwrap_or(0);
        if wait > 0 {
            self.run_for(Duration::from_millis(wait));
        }
        (now + wait) % tick
    }

    /// Whether node `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        lock(&self.net).up.get(i).is_some_and(Option::is_some)
    }

    /// The nodes that run.
    pub fn up(&self) -> Vec<usize> {
        (0..self.config.nodes).filter(|&i| self.is_up(i)).collect()
    }

    /// Crashes node `i`: its Raft is shut down and dropped, its messages
    /// in flight are refused. Its store directory stays.
    pub fn crash(&mut self, i: usize) {
        let Some(raft) = lock(&self.net).up[i].take().map(|n| n.raft().clone()) else {
            return;
        };
        self.nodes[i].elector = None;
        self.crashes += 1;
        self.nodes[i].applied = None;
        self.nodes[i].tick_phase = None;
        self.rt.block_on(async move {
            let _ = raft.shutdown().await;
            drop(raft);
            // Let the instance's other tasks see it gone and end.
            for _ in 0..16 {
                tokio::task::yield_now().await;
            }
        });
    }

    /// Restarts node `i` from its store directory, with the same id.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.is_up(i) {
            return Ok(());
        }
        self.start(i)
    }

    /// Every node crashes at once, then all restart.
    pub fn power_cut(&mut self) -> Result<(), String> {
        for i in 0..self.config.nodes {
            self.crash(i);
        }
        self.run_for(Duration::from_millis(1));
        for i in 0..self.config.nodes {
            self.restart(i)?;
        }
        Ok(())
    }

    /// Restarts every crashed node.
    pub fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.config.nodes {
            self.restart(i)?;
        }
        Ok(())
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&mut self, a: usize, b: usize) {
        let mut net = lock(&self.net);
        net.cut.insert((a, b));
        net.cut.insert((b, a));
    }

    /// Cuts node `i` off from every other node.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.config.nodes {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Splits the nodes into `groups` (a node in no group is isolated):
    /// messages pass only within a group.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for a in 0..self.config.nodes {
            for b in 0..self.config.nodes {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    lock(&self.net).cut.insert((a, b));
                }
            }
        }
    }

    /// Every link carries messages again.
    pub fn heal(&mut self) {
        lock(&self.net).cut.clear();
    }

    /// Sets the probability of losing each message.
    pub fn set_loss(&mut self, loss: f64) {
        lock(&self.net).loss = loss;
    }

    /// Node `i`'s metrics, if it runs.
    pub fn metrics(&self, i: usize) -> Option<RaftMetrics<NodeId, Peer>> {
        self.raft(i).map(|raft| raft.metrics().borrow().clone())
    }

    /// The running node that is leader in the highest term, if any.
    pub fn leader(&self) -> Option<usize> {
        self.up()
            .into_iter()
            .filter_map(|i| self.metrics(i).map(|m| (i, m)))
            .filter(|(_, m)| m.state == ServerState::Leader)
            .max_by_key(|(_, m)| m.current_term)
            .map(|(i, _)| i)
    }

    /// The leader every running node agrees on: it is leader, and every
    /// running node names it in the same term.
    pub fn agreed_leader(&self) -> Option<usize> {
        let leader = self.leader()?;
        let term = self.metrics(leader)?.current_term;
        let agreed = self.up().into_iter().all(|i| {
            self.metrics(i).is_some_and(|m| {
                m.current_term == term && m.current_leader == Some(node_id(leader))
            })
        });
        agreed.then_some(leader)
    }

    /// Runs until every running node agrees on a leader; the simulated
    /// time that took, or an error after `within`.
    pub fn await_leader(&mut self, within: Duration) -> Result<Duration, String> {
        let step = Duration::from_millis(5);
        let since = self.elapsed();
        loop {
            if self.agreed_leader().is_some() {
                return Ok(self.elapsed() - since);
            }
            if self.elapsed() - since >= within {
                return Err(format!(
                    "no leader agreed on within {within:?}: {}",
                    self.describe_nodes()
                ));
            }
            self.run_for(step);
        }
    }

    /// One line per node: role, term, leader, last applied.
    pub fn describe_nodes(&self) -> String {
        (0..self.config.nodes)
            .map(|i| match self.metrics(i) {
                None => format!("n{i} down"),
                Some(m) => format!(
                    "n{i} {:?} term {} leader {} applied {}",
                    m.state,
                    m.current_term,
                    m.current_leader.map_or("-".into(), name),
                    m.last_applied.map_or(0, |l| l.index)
                ),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Starts the client workload (a no-op if it runs).
    pub fn start_workload(&mut self) {
        if self.workload.is_some() {
            return;
        }
        let task = client(
            self.config.seed,
            self.net.clone(),
            self.checker.clone(),
            self.client.clone(),
            self.config.client_timeout,
        );
        self.workload = Some(self.rt.spawn(task));
    }

    /// Stops the client workload (a write in flight is abandoned).
    pub fn stop_workload(&mut self) {
        if let Some(task) = self.workload.take() {
            task.abort();
            let _ = self.rt.block_on(task);
        }
    }

    /// Writes `command` through the leader, retrying until `within`.
    pub fn write(
        &mut self,
        command: Command,
        within: Duration,
    ) -> Result<(LogId, Response), String> {
        let since = self.elapsed();
        let timeout = self.config.client_timeout;
        loop {
            if let Some(raft) = self.leader().and_then(|i| self.raft(i)) {
                let write = raft.client_write(command.clone());
                let written = self
                    .rt
                    .block_on(async move { tokio::time::timeout(timeout, write).await });
                if let Ok(Ok(reply)) = written {
                    lock(&self.checker).acked(reply.log_id, &command, &reply.data);
                    return Ok((reply.log_id, reply.data));
                }
            }
            if self.elapsed() - since >= within {
                return Err(format!(
                    "{command:?} not committed within {within:?}: {}",
                    self.describe_nodes()
                ));
            }
            self.run_for(self.config.election_timeout / 4);
        }
    }

    /// After the faults: stops the workload, commits one more write and
    /// runs until every running node has applied it; then checks that they
    /// all hold the same state and applied every acknowledged write.
    /// Returns the simulated time it took.
    pub fn converge(&mut self, within: Duration) -> Result<Duration, String> {
        self.stop_workload();
        let since = self.elapsed();
        let mark = Command::ForgetSets {
            sets: vec!["converged".into()],
        };
        let (log_id, _) = self.write(mark, within)?;
        loop {
            let states: Vec<(usize, Option<LogId>, Arc<ClusterState>)> = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.applied.as_ref().map(|a| (i, a.borrow().clone())))
                .map(|(i, a)| (i, a.last_applied, a.state))
                .collect();
            let done = states
                .iter()
                .all(|(_, last, _)| last.is_some_and(|l| l.index >= log_id.index));
            let same_index = states.windows(2).all(|w| w[0].1 == w[1].1);
            if done && same_index {
                for (i, _, state) in &states[1..] {
                    if state != &states[0].2 {
                        return Err(format!(
                            "n{i} and n{} applied through the same index hold different states: {state:?} vs {:?}",
                            states[0].0, states[0].2
                        ));
                    }
                }
                let up: Vec<NodeId> = self.up().into_iter().map(node_id).collect();
                lock(&self.checker).check_all_applied(&up);
                return Ok(self.elapsed() - since);
            }
            if self.elapsed() - since >= within {
                return Err(format!(
                    "the nodes did not all apply index {} within {within:?}: {}",
                    log_id.index,
                    self.describe_nodes()
                ));
            }
            self.run_for(Duration::from_millis(10));
        }
    }

    /// The invariants broken so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.checker).violations().to_vec()
    }

    /// Ok, or every violation on its own line.
    pub fn check(&self) -> Result<(), String> {
        let violations = self.violations();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations.join("\n  "))
        }
    }

    pub fn stats(&self) -> SimStats {
        let (terms_led, snapshots_installed) = {
            let checker = lock(&self.checker);
            (checker.terms_led(), checker.snapshots_installed())
        };
        SimStats {
            net: lock(&self.net).stats,
            client: *lock(&self.client),
            max_term: self.max_term,
            terms_led,
            snapshots_installed,
            crashes: self.crashes,
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Shut every instance down before the runtime goes, so no store is
        // left half-way through a write when the directory is removed.
        self.stop_workload();
        for i in 0..self.config.nodes {
            self.crash(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_sees_two_leaders_in_one_term() {
        let mut checker = Checker::new();
        checker.observe(node_id(0), 3, ServerState::Leader, None);
        checker.observe(node_id(1), 3, ServerState::Follower, None);
        checker.observe(node_id(1), 4, ServerState::Leader, None);
        assert!(checker.violations().is_empty());
        checker.observe(node_id(2), 4, ServerState::Leader, None);
        assert_eq!(checker.violations().len(), 1, "{:?}", checker.violations());
        assert!(checker.violations()[0].contains("two leaders in term 4"));
    }

    #[test]
    fn ids_and_indexes_round_trip() {
        for i in [0, 1, 7, 999] {
            assert_eq!(node_index(node_id(i)), Some(i));
        }
    }
}
