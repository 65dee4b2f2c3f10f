//! The tokio side of Raft in the agent: starts this node's openraft
//! instance when the committed topology puts it in the group, forms the
//! group once, keeps the group's voters in step with the topology, and,
//! on the leader, appoints replica-set masters. Every decision is computed
//! by [`failover`] (no I/O); this file only carries it out.
//!
//! One task owns the instance and wakes on a tick (a fraction of the
//! election timeout), on a new committed topology, and on commands from the
//! API (promote, transfer leadership, consistent reads).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::elector::Elector;
use super::failover::{self, MemberView, MembershipStep};
use super::network::{self, RaftEndpoint};
use super::store::{self, Applied};
use super::{ClusterState, Command, Master, NodeId, Peer, Raft, Response};
use crate::agent::apply::PeerDirectory;
use crate::config::{FailoverMode, Topology};
use crate::rpc::{CallError, RpcClient, RpcError};
use crate::twophase::Decision;

/// The rpc method that answers a node's view of the group ([`GroupView`]).
pub const VIEW_METHOD: &str = "raft.view";
/// The rpc method a leader calls on the node it hands leadership to.
pub const ELECT_METHOD: &str = "raft.elect";
/// The rpc method a node calls on the leader to promote a master
/// (postcard `(set, node)`, answered with `Result<Master, String>`).
pub const PROMOTE_METHOD: &str = "raft.promote";
/// The rpc method a node calls on the leader to hand leadership to a node
/// (postcard name, answered with `Result<(), String>`).
pub const TRANSFER_METHOD: &str = "raft.transfer";
/// The rpc method a node outside the group long-polls a member with: the
/// body is the [`ViewStamp`] the caller has; the member answers its
/// [`GroupView`] once that is news to the caller (more applied, a later
/// term, the term's leader found), or empty after [`WATCH_HOLD`].
pub const WATCH_METHOD: &str = "raft.watch";
/// The rpc method that answers the replicated state after a linearizable
/// check on the leader (`--consistent` reads).
pub const READ_METHOD: &str = "raft.read";
/// The rpc method a node calls on the leader to record a 2PC decision
/// (postcard [`Command::RecordDecision`], answered with `Result<Decision,
/// String>`: the decision the log holds).
pub const DECIDE_METHOD: &str = "raft.decide";

/// How many entries a learner may lag and still be made a voter.
const LEARNER_LAG: u64 = 16;
/// A leader appoints no master while some topology node is unknown to its
/// gossip and the agent is younger than this: a table still filling up
/// would make a live master look gone.
const GOSSIP_SETTLE: Duration = Duration::from_secs(10);

/// Every rpc method [`ControlEndpoint`] answers.
pub const CONTROL_METHODS: [&str; 7] = [
    VIEW_METHOD,
    WATCH_METHOD,
    ELECT_METHOD,
    READ_METHOD,
    PROMOTE_METHOD,
    TRANSFER_METHOD,
    DECIDE_METHOD,
];

/// A round outside the group when nothing woke it: only a safety net
/// (the watcher task is started again should it have ended).
const OUTSIDE_ROUND: Duration = Duration::from_secs(5);

/// How long a member holds a [`WATCH_METHOD`] call that brings no news.
const WATCH_HOLD: Duration = Duration::from_secs(2);

/// The longest any single rpc of the driver waits.
const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// A master that keeps answering while gossip declares it dead is logged
/// again after this long.
const ANSWER_LOGGED: Duration = Duration::from_secs(60);

/// openraft's settings for an election timeout `t`. A follower that heard
/// from a leader refuses votes for the leader's lease (openraft sets it to
/// `election_timeout_max`, 0.7t here); our timer ([`super::election`],
/// openraft's own is off) then waits a draw from `[min, max)` = 0.2t–0.7t,
/// new in every term: a follower stands 0.9t–1.4t after the last
/// heartbeat. etcd counts its [t, 2t) in ticks (t/10) from the one after
/// the heartbeat, so its followers stand 0.9t–1.9t after it: the same
/// floor, a narrower window here (a spread of t/2 is plenty against split
/// votes on a LAN). Heartbeats go every t/15 (openraft's tick, 1.5 of
/// them, is then t/10 as etcd's); the lease outlasts ten lost heartbeats.
pub fn raft_config(election_timeout: Duration) -> openraft::Config {
    let t = election_timeout.as_millis().max(10) as u64;
    openraft::Config {
        cluster_name: "cohort".into(),
        election_timeout_min: (t / 5).max(3),
        election_timeout_max: (t * 7 / 10).max(6),
        heartbeat_interval: (t / 15).max(1),
        install_snapshot_timeout: (2 * t).max(500),
        // Ours stands instead, with a new draw every term (super::election).
        enable_elect: false,
        ..Default::default()
    }
}

/// What one node knows of the group, for `cohort status`, `GET
/// /v1/leaders` and for other nodes (rpc [`VIEW_METHOD`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// This node runs a Raft instance (it is, or was, in the group).
    pub running: bool,
    /// The group has been formed (this node has a log or a vote).
    pub initialized: bool,
    /// "leader", "follower", "candidate", "learner", or "off".
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// How long ago a quorum last acknowledged this node as leader (on the
    /// leader only).
    pub quorum_ack_ms: Option<u64>,
    pub voters: Vec<(NodeId, Peer)>,
    pub learners: Vec<(NodeId, Peer)>,
    pub last_log_index: Option<u64>,
    /// The last log index this node knows committed (saved by openraft).
    pub commit_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// The replicated state this node has applied (fetched from the group
    /// on nodes outside it), without its 2PC decisions
    /// ([`ClusterState::summary`]).
    pub state: ClusterState,
    /// How many 2PC decisions the state keeps.
    pub decisions: usize,
    /// The committed topology's failover mode.
    pub mode: Option<FailoverMode>,
    /// Each replica set's master as this node runs it: from the replicated
    /// state in mode `raft`, else from the topology and gossip (generation
    /// 0: no fencing outside Raft).
    pub masters: BTreeMap<String, Master>,
    /// Why the group is not (yet) what it should be, for people.
    pub note: Option<String>,
}

/// Requests from the API, answered by the driver task.
pub enum RaftCommand {
    /// `cohort failover promote SET NODE`.
    Promote {
        set: String,
        node: String,
        reply: oneshot::Sender<Result<Master, String>>,
    },
    /// `cohort raft transfer-leader NODE`.
    TransferLeader {
        node: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Record a 2PC decision (a [`Command::RecordDecision`]) through the
    /// leader; answers the decision the log holds for the txn.
    RecordDecision {
        command: Command,
        reply: oneshot::Sender<Result<Decision, String>>,
    },
    /// A linearizable read of the replicated state, through the leader.
    ConsistentRead {
        reply: oneshot::Sender<Result<GroupView, String>>,
    },
    /// Shut the instance down (the agent stops).
    Stop {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Talks to the running driver.
#[derive(Clone)]
pub struct RaftHandle {
    view: watch::Receiver<GroupView>,
    commands: mpsc::Sender<RaftCommand>,
}

impl RaftHandle {
    /// This node's current view (local, possibly stale).
    pub fn view(&self) -> GroupView {
        self.view.borrow().clone()
    }

    /// The group is formed and this node knows its leader (a write sent
    /// now has somewhere to go).
    pub fn leader_known(&self) -> bool {
        let view = self.view.borrow();
        view.initialized && view.leader.is_some()
    }

    pub fn watch(&self) -> watch::Receiver<GroupView> {
        self.view.clone()
    }

    /// Shuts the instance down and ends the driver.
    pub async fn stop(&self) {
        let _ = self.ask(|reply| RaftCommand::Stop { reply }).await;
    }

    /// Records `decision` for `txn` in the replicated log unless it holds
    /// one (a commit names the version it installs); answers the decision
    /// the log holds.
    pub async fn record_decision(
        &self,
        txn: crate::twophase::TxnId,
        decision: Decision,
        installs: Option<(crate::twophase::Version, crate::twophase::ConfigHash)>,
    ) -> Result<Decision, String> {
        let command = Command::RecordDecision {
            txn,
            decision,
            installs,
        };
        self.ask(|reply| RaftCommand::RecordDecision { command, reply })
            .await
    }

    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> RaftCommand,
    ) -> Result<T, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| "the raft driver is not running".to_string())?;
        answer
            .await
            .map_err(|_| "the raft driver stopped before answering".to_string())?
    }
}

/// Where this node's Raft lives and how it is reached.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub me: NodeId,
    pub name: String,
    /// `data_dir/raft`.
    pub dir: PathBuf,
    /// Where peers reach this node's rpc.
    pub advertise: SocketAddr,
}

/// The rpc endpoints of Raft, made before the rpc server starts (the router
/// is built first), handed to [`spawn`] afterwards.
pub struct RaftPorts {
    pub endpoint: RaftEndpoint,
    pub control: ControlEndpoint,
    control_inbox: mpsc::Receiver<ControlCall>,
}

/// Makes the endpoints for the router.
pub fn ports() -> RaftPorts {
    let (tx, control_inbox) = mpsc::channel(64);
    RaftPorts {
        endpoint: RaftEndpoint::new(),
        control: ControlEndpoint { inbox: tx },
        control_inbox,
    }
}

/// The rpc side of [`VIEW_METHOD`], [`ELECT_METHOD`] and [`READ_METHOD`].
#[derive(Clone)]
pub struct ControlEndpoint {
    inbox: mpsc::Sender<ControlCall>,
}

struct ControlCall {
    method: String,
    body: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, RpcError>>,
}

impl crate::rpc::RpcHandler for ControlEndpoint {
    fn handle<'a>(
        &'a self,
        _from: SocketAddr,
        method: &'a str,
        body: Vec<u8>,
    ) -> crate::rpc::HandlerFuture<'a> {
        Box::pin(async move {
            let unavailable = || RpcError::new("unavailable", "the raft driver is not running");
            let (reply, answer) = oneshot::channel();
            self.inbox
                .send(ControlCall {
                    method: method.to_string(),
                    body,
                    reply,
                })
                .await
                .map_err(|_| unavailable())?;
            answer.await.map_err(|_| unavailable())?
        })
    }
}

/// Starts the driver. `topology` follows the committed topology;
/// `masters` is told whether this node is its replica set's master.
pub fn spawn(
    settings: RaftSettings,
    ports: RaftPorts,
    topology: watch::Receiver<Option<Arc<Topology>>>,
    directory: Arc<dyn PeerDirectory>,
    rpc: RpcClient,
    masters: watch::Sender<BTreeMap<String, String>>,
) -> RaftHandle {
    let (view_tx, view) = watch::channel(GroupView {
        role: "off".into(),
        ..GroupView::default()
    });
    let (commands_tx, commands) = mpsc::channel(16);
    let (fetched_tx, fetched) = watch::channel(None);
    let driver = Driver {
        settings,
        endpoint: ports.endpoint,
        topology,
        directory,
        rpc,
        masters,
        view: view_tx,
        running: None,
        fetched,
        fetched_tx: Arc::new(fetched_tx),
        watcher: None,
        started: tokio::time::Instant::now(),
        answered: Default::default(),
    };
    tokio::spawn(driver.run(commands, ports.control_inbox));
    RaftHandle {
        view,
        commands: commands_tx,
    }
}

/// This node's openraft instance and what it was started with.
struct Running {
    raft: Raft,
    /// Its election timer; stands while this node may lead.
    elector: Elector,
    /// When this instance started.
    since: tokio::time::Instant,
    applied: watch::Receiver<Applied>,
    commit_index: store::CommitIndex,
    election_timeout: Duration,
}

struct Driver {
    settings: RaftSettings,
    endpoint: RaftEndpoint,
    topology: watch::Receiver<Option<Arc<Topology>>>,
    directory: Arc<dyn PeerDirectory>,
    rpc: RpcClient,
    masters: watch::Sender<BTreeMap<String, String>>,
    view: watch::Sender<GroupView>,
    running: Option<Running>,
    /// Outside the group: the newest view a member gave [`watch_group`],
    /// the task that asks (while this node is outside).
    fetched: watch::Receiver<Option<GroupView>>,
    fetched_tx: Arc<watch::Sender<Option<GroupView>>>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    started: tokio::time::Instant,
    /// Masters declared dead that answered this leader directly, and when
    /// they last did ([`Driver::answers_directly`]).
    answered: std::sync::Mutex<BTreeMap<NodeId, Answered>>,
}

/// A master declared dead that answered the leader directly.
#[derive(Clone, Copy)]
struct Answered {
    /// The last answer.
    at: tokio::time::Instant,
    /// When it was last logged.
    logged: tokio::time::Instant,
}

/// Resolves when the instance's leader or term differs from what it was at
/// the call; never without an instance. Other metrics (replication
/// progress, every heartbeat on a leader) do not wake the driver.
async fn leader_or_term_changed(
    metrics: Option<watch::Receiver<openraft::RaftMetrics<NodeId, Peer>>>,
) {
    let Some(mut metrics) = metrics else {
        return std::future::pending().await;
    };
    let seen = {
        let m = metrics.borrow_and_update();
        (m.current_term, m.current_leader)
    };
    while metrics.changed().await.is_ok() {
        let m = metrics.borrow_and_update();
        if (m.current_term, m.current_leader) != seen {
            return;
        }
    }
    std::future::pending().await
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<RaftCommand>,
        mut control: mpsc::Receiver<ControlCall>,
    ) {
        // When the next round is due if nothing wakes the loop first.
        let mut next_round = tokio::time::Instant::now();
        // Whatever woke the loop (a read of the view does not) asks for a
        // round now.
        let mut round_now = true;
        loop {
            let topology = self.topology.borrow_and_update().clone();
            let mut tick = topology
                .as_ref()
                .map_or(Duration::from_secs(1), |t| tick_of(t.election_timeout()));
            // Outside the group a round has news only when the topology or
            // the fetched view changes, and both wake this loop; not in
            // mode `eventual`, whose masters follow gossip. (495 `off`
            // nodes of 500 cloning and comparing the group's view 5 times
            // a second was a share of a 500-node start's CPU.)
            let outside = topology.as_ref().is_some_and(|t| {
                !failover::in_group(t, &self.settings.name)
                    && t.failover.mode.value != FailoverMode::Eventual
            });
            if outside && self.running.is_none() {
                tick = OUTSIDE_ROUND;
            }
            if round_now || tokio::time::Instant::now() >= next_round {
                if let Some(topology) = &topology {
                    self.step(topology).await;
                }
                next_round = tokio::time::Instant::now() + tick;
            }
            round_now = true;
            let metrics = self.running.as_ref().map(|r| r.raft.metrics());
            tokio::select! {
                changed = self.topology.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                command = commands.recv() => match command {
                    Some(RaftCommand::Stop { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    Some(command) => self.command(command, topology.as_deref()).await,
                    None => break,
                },
                // Reads of the view (every node outside the group
                // long-polls a member: about 50 calls a second on each of
                // 5 voters at 500 nodes, 495 callers each once per hold, an
                // estimate) are not news; a round for each was.
                Some(call) = control.recv() => {
                    round_now = !matches!(call.method.as_str(), VIEW_METHOD | WATCH_METHOD);
                    self.control(call).await;
                }
                // News from the group, seen from outside: shown at once.
                Ok(()) = self.fetched.changed() => {}
                // A new leader or term here: published at once, not at the
                // next round, so that nodes outside the group long-polling
                // this one hear of it without waiting for the round.
                () = leader_or_term_changed(metrics) => {}
                () = tokio::time::sleep_until(next_round) => {}
            }
        }
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.abort();
        }
        if let Some(running) = self.running.take() {
            if let Err(e) = running.raft.shutdown().await {
                warn!("raft did not shut down cleanly: {e}");
            }
        }
    }

    /// One round: start or restart the instance, form the group, lead.
    async fn step(&mut self, topology: &Topology) {
        // The member table is copied only where a round reads it (the
        // leader, a node forming the group, mode `eventual`): every node
        // runs 5 rounds an election timeout, and 500 nodes copying 500
        // rows each round was a share of a 500-node start's allocations.
        let mut members = None;
        let in_group = failover::in_group(topology, &self.settings.name);
        let mut note = None;

        // Out of the group by the topology: stop taking part (the leader
        // removes this node from the voters; as a voter that is down meanwhile
        // it costs nothing but a vote) and watch the group from outside.
        // The log stays: if the node is put back, it is added again.
        if !in_group && self.running.is_some() {
            info!("this node is not a voter in the committed topology: leaving the raft group");
            self.shutdown().await;
        }
        // A storage error (a full disk) ends openraft's core for good, and
        // the node would keep showing its last view while taking no part.
        // The instance is started again below from what the disk holds, as
        // after a crash (a write that failed was never acknowledged); while
        // the disk still refuses writes, the start fails and is retried.
        let fatal = self.running.as_ref().and_then(|r| {
            let state = r.raft.metrics().borrow().running_state.clone();
            state.err()
        });
        if let Some(fatal) = fatal {
            warn!("raft stopped ({fatal}): starting it again from the data dir");
            self.endpoint.clear();
            self.shutdown().await;
        }
        if self.running.is_none() && in_group {
            if let Some(watcher) = self.watcher.take() {
                watcher.abort();
            }
            if let Err(e) = self.start(topology).await {
                warn!("cannot start raft: {e}");
                note = Some(format!("cannot start raft: {e}"));
            }
        }
        if let Some(running) = &self.running {
            if running.election_timeout != topology.election_timeout() {
                info!(
                    from = ?running.election_timeout,
                    to = ?topology.election_timeout(),
                    "the election timeout changed: restarting raft"
                );
                let running = self.running.take().expect("running");
                let _ = running.raft.shutdown().await;
                if let Err(e) = self.start(topology).await {
                    note = Some(format!("cannot restart raft: {e}"));
                }
            }
        }
        if let Some(running) = &self.running {
            let raft = running.raft.clone();
            running
                .elector
                .set_may_stand(failover::may_lead(topology, &self.settings.name));
            if !raft.is_initialized().await.unwrap_or(true) {
                note = self.maybe_form_group(&raft, topology).await;
            } else if let Some(silent) = lost_quorum(&raft, topology.election_timeout()) {
                warn!(
                    silent_ms = silent,
                    "no quorum has answered for longer than the election timeout: stepping down"
                );
                if let Err(e) = self.step_down(topology).await {
                    warn!("cannot step down: {e}");
                    note = Some(format!("cannot step down: {e}"));
                }
            } else if self.is_effective_leader(&raft, topology) {
                let views = self.member_views().await;
                self.lead(&raft, topology, &views).await;
                members = Some(views);
            }
        } else {
            self.watch_from_outside();
        }
        let members = match members {
            Some(views) => views,
            None if topology.failover.mode.value == FailoverMode::Eventual => {
                self.member_views().await
            }
            None => Vec::new(),
        };
        self.publish(topology, &members, note);
    }

    /// Every member gossip knows, as failover reads them.
    async fn member_views(&self) -> Vec<MemberView> {
        self.directory
            .peers()
            .await
            .iter()
            .map(member_view)
            .collect()
    }

    /// openraft 0.9 keeps a cut-off leader leading (it only cannot
    /// commit) and ignores an election trigger on a leader; a restart
    /// would resume its committed vote and lead again. So the instance is
    /// shut down, its vote moved to the next term as a candidate's own
    /// (what starting an election does: safe, it votes for nobody else in
    /// that term), and started again: it comes back a follower, then a
    /// candidate that cannot win without a majority.
    async fn step_down(&mut self, topology: &Topology) -> Result<(), String> {
        use openraft::storage::RaftLogStorage;
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let term = running.raft.metrics().borrow().current_term;
        self.endpoint.clear();
        running.raft.shutdown().await.map_err(|e| e.to_string())?;
        drop(running);
        {
            let (mut log, _) = store::open(&self.settings.dir, true).map_err(|e| e.to_string())?;
            log.save_vote(&super::Vote::new(term + 1, self.settings.me))
                .await
                .map_err(|e| e.to_string())?;
        }
        self.start(topology).await
    }

    /// A Raft call that waits for a quorum, bounded: a leader cut off from
    /// its majority never answers, and this task must keep its rounds
    /// (step-down included) going.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = T>) -> Result<T, String> {
        let limit = self
            .running
            .as_ref()
            .map_or(CALL_DEADLINE, |r| r.election_timeout * 2);
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| format!("no quorum answered within {limit:?}"))
    }

    async fn start(&mut self, topology: &Topology) -> Result<(), String> {
        let (log, sm) = store::open(&self.settings.dir, true).map_err(|e| e.to_string())?;
        let applied = sm.subscribe();
        let commit_index = log.commit_index();
        let config = raft_config(topology.election_timeout());
        let config = Arc::new(config.validate().map_err(|e| e.to_string())?);
        // A follower that comes back hears from the leader before its own
        // election timeout runs out.
        let network = network::Network::new(self.settings.me, self.rpc.clone())
            .with_max_backoff(topology.election_timeout() / 2);
        let raft = Raft::new(self.settings.me, config.clone(), network, log, sm)
            .await
            .map_err(|e| e.to_string())?;
        let may_stand = failover::may_lead(topology, &self.settings.name);
        let (elector, inbound) = Elector::spawn(&raft, &config, may_stand);
        self.endpoint.set(inbound);
        info!(dir = %self.settings.dir.display(), "raft started");
        self.running = Some(Running {
            raft,
            elector,
            since: tokio::time::Instant::now(),
            applied,
            commit_index,
            election_timeout: topology.election_timeout(),
        });
        Ok(())
    }

    /// The first candidate by name forms the group, alone, unless a member
    /// of the topology's group already belongs to one (this node's data
    /// dir was wiped: it waits to be added instead). Everyone else waits.
    async fn maybe_form_group(&self, raft: &Raft, topology: &Topology) -> Option<String> {
        let first = first_candidate(topology)?;
        if first != self.settings.name {
            return Some(format!(
                "waiting to be added to the group (formed by {first}, the first candidate by name)"
            ));
        }
        let peers = self.directory.peers().await;
        for peer in peers.iter().filter(|p| {
            p.id != self.settings.me
                && p.status == crate::membership::MemberStatus::Alive
                && failover::in_group(topology, &p.name)
        }) {
            match self.view_of(peer.addr).await {
                Ok(view) if view.initialized => {
                    return Some(format!(
                        "{} already belongs to a group: waiting to be added",
                        peer.name
                    ))
                }
                Ok(_) => {}
                Err(e) => debug!(peer = %peer.name, "no view: {e}"),
            }
        }
        let me = Peer {
            name: self.settings.name.clone(),
            addr: self.settings.advertise,
        };
        let members = BTreeMap::from([(self.settings.me, me)]);
        match raft.initialize(members).await {
            Ok(()) => {
                info!("formed the raft group");
                None
            }
            Err(e) => Some(format!("cannot form the group: {e}")),
        }
    }

    /// Leader of the current term with a quorum heard from within one
    /// election timeout: a leader cut off from its majority stops acting.
    fn is_effective_leader(&self, raft: &Raft, topology: &Topology) -> bool {
        let m = raft.metrics().borrow().clone();
        m.state == ServerState::Leader
            && m.millis_since_quorum_ack
                .is_some_and(|ms| u128::from(ms) <= topology.election_timeout().as_millis())
    }

    /// The leader's duties: the group's voters follow the topology, and in
    /// `raft` failover mode, dead masters are replaced.
    async fn lead(&self, raft: &Raft, topology: &Topology, members: &[MemberView]) {
        // The leader of a new term announces itself in the log first.
        let term = raft.metrics().borrow().current_term;
        let announced = self
            .running
            .as_ref()
            .and_then(|r| r.applied.borrow().state.leader)
            .is_some_and(|(t, node)| t == term && node == self.settings.me);
        if !announced {
            let me = self.settings.me;
            if self
                .write(raft, Command::Leader { term, node: me })
                .await
                .is_none()
            {
                return;
            }
        }
        let voters = self.reconcile_voters(raft, topology, members).await;
        let all_known = topology
            .nodes()
            .all(|n| members.iter().any(|m| m.name == n.name));
        let settled = all_known || self.started.elapsed() >= GOSSIP_SETTLE;
        if topology.failover.mode.value == FailoverMode::Raft && settled {
            let Some(running) = &self.running else { return };
            let state = running.applied.borrow().state.clone();
            for command in failover::appointments(topology, members, &state) {
                if let Some(master) = failover::replaces_dead(&command, members, &state) {
                    if self.answers_directly(master, topology).await {
                        continue;
                    }
                }
                self.write(raft, command).await;
            }
        }
        // A voter that may not lead (the topology changed) hands over.
        if !failover::may_lead(topology, &self.settings.name) {
            if let Some(to) = members.iter().find(|m| {
                m.status == crate::membership::MemberStatus::Alive
                    && voters.contains(&m.id)
                    && failover::may_lead(topology, &m.name)
            }) {
                info!(to = %to.name, "this node may not lead: handing leadership over");
                let _ = self.ask_to_elect(to.addr).await;
            }
        }
    }

    /// One membership step towards the topology's voters; returns the
    /// voters as they were.
    async fn reconcile_voters(
        &self,
        raft: &Raft,
        topology: &Topology,
        members: &[MemberView],
    ) -> BTreeSet<NodeId> {
        let membership = raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.membership().learner_ids().collect();
        match failover::membership_step(topology, members, &voters, &learners) {
            MembershipStep::Nothing => {}
            MembershipStep::AddLearner { id, peer } => {
                info!(peer = %peer.name, %id, "adding to the raft group as a learner");
                if let Err(e) = raft.add_learner(id, peer, false).await {
                    warn!("cannot add a learner: {e}");
                }
            }
            MembershipStep::ChangeVoters {
                voters: wanted,
                why,
            } => {
                // A learner becomes a voter once it has the log: a voter
                // still catching up would hold back every commit.
                let m = raft.metrics().borrow().clone();
                let last = m.last_log_index.unwrap_or(0);
                let behind: Vec<NodeId> = wanted
                    .difference(&voters)
                    .filter(|id| {
                        let matched = m
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(id).cloned().flatten())
                            .map_or(0, |l| l.index);
                        matched + LEARNER_LAG < last
                    })
                    .copied()
                    .collect();
                if !behind.is_empty() {
                    debug!(?behind, "waiting for learners to catch up before they vote");
                    return voters;
                }
                info!(voters = ?wanted, "changing the raft voters: {why}");
                if let Err(e) = raft.change_membership(wanted, false).await {
                    warn!("cannot change the voters: {e}");
                }
            }
            MembershipStep::RemoveLearners { ids } => {
                if let Err(e) = raft
                    .change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await
                {
                    warn!("cannot remove learners: {e}");
                }
            }
        }
        voters
    }

    async fn write(&self, raft: &Raft, command: Command) -> Option<Response> {
        let written = match self.bounded(raft.client_write(command.clone())).await {
            Ok(written) => written,
            Err(e) => {
                warn!("raft write not answered: {e}");
                return None;
            }
        };
        match written {
            Ok(written) => {
                match &written.data {
                    Response::Appointed(master) => {
                        info!(%master, reason = %master.reason, ?command, "appointed a master")
                    }
                    Response::Stale { current } => {
                        debug!(?current, "appointment refused: the view was stale")
                    }
                    _ => {}
                }
                Some(written.data)
            }
            Err(e) => {
                warn!("raft write failed: {e}");
                None
            }
        }
    }

    /// Outside the group: [`watch_group`] runs (started once); inside, it
    /// stops.
    fn watch_from_outside(&mut self) {
        if self.watcher.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        self.watcher = Some(tokio::spawn(watch_group(
            self.settings.me,
            self.topology.clone(),
            self.directory.clone(),
            self.rpc.clone(),
            self.fetched_tx.clone(),
        )));
    }

    async fn view_of(&self, addr: SocketAddr) -> Result<GroupView, String> {
        let body = self
            .rpc
            .call(addr, VIEW_METHOD, &[], CALL_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        postcard::from_bytes(&body).map_err(|e| format!("bad answer: {e}"))
    }

    fn answered(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Answered>> {
        // Nothing here leaves the map half-updated on a panic.
        self.answered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `master`, which gossip declares dead, answers this leader
    /// over rpc (see [`failover::replaces_dead`]). An answer holds for an
    /// election timeout, so a master that answers while its gossip stays
    /// silent (UDP blocked, TCP not) costs one call a timeout, and is
    /// logged once a minute.
    async fn answers_directly(&self, master: &MemberView, topology: &Topology) -> bool {
        let now = tokio::time::Instant::now();
        let hold = topology.election_timeout();
        let last = self.answered().get(&master.id).map(|a| a.at);
        if last.is_some_and(|at| now.duration_since(at) < hold) {
            return true;
        }
        let deadline = hold.min(CALL_DEADLINE);
        let answered = match self.rpc.call(master.addr, VIEW_METHOD, &[], deadline).await {
            // An error from its handler is an answer all the same: the
            // agent is up.
            Ok(_) | Err(CallError::Remote(_)) => true,
            Err(e) => {
                debug!(master = %master.name, "gossip says dead, and no direct answer: {e}");
                false
            }
        };
        let mut answers = self.answered();
        if !answered {
            answers.remove(&master.id);
            return false;
        }
        let logged = match answers.get(&master.id) {
            Some(a) if now.duration_since(a.logged) < ANSWER_LOGGED => a.logged,
            _ => {
                warn!(
                    master = %master.name,
                    "gossip here says the master is dead, but it answers this leader directly: it stays master (this node's gossip view may be stale, or the master's gossip port blocked)"
                );
                now
            }
        };
        answers.insert(master.id, Answered { at: now, logged });
        true
    }

    async fn ask_to_elect(&self, addr: SocketAddr) -> Result<(), String> {
        self.rpc
            .call(addr, ELECT_METHOD, &[], CALL_DEADLINE)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Builds and publishes this node's view; tells the roles who is
    /// master.
    fn publish(&self, topology: &Topology, members: &[MemberView], note: Option<String>) {
        let mut view = self.local_view();
        view.note = note;
        view.mode = Some(topology.failover.mode.value);
        let unfenced = |node: String| Master {
            node,
            generation: 0,
            reason: String::new(),
        };
        view.masters = match topology.failover.mode.value {
            FailoverMode::Disabled => failover::configured_masters(topology)
                .into_iter()
                .map(|(set, node)| (set, unfenced(node)))
                .collect(),
            FailoverMode::Eventual => failover::eventual_masters(topology, members)
                .into_iter()
                .filter_map(|(set, node)| Some((set, unfenced(node?))))
                .collect(),
            FailoverMode::Raft => view.state.masters.clone(),
        };
        let masters: BTreeMap<String, String> = view
            .masters
            .iter()
            .map(|(set, m)| (set.clone(), m.node.clone()))
            .collect();
        // In mode `raft` a member that knows no leader may be replaying an
        // old log after a restart: its masters could be stale (a replaced
        // master would believe it is master again). Roles hear of masters
        // only from a node in touch with a leader.
        // (An election timeout after start, a live leader's heartbeats have
        // brought the log up to date; the fencing generation is what makes
        // a stale master harmless.)
        let settled = self
            .running
            .as_ref()
            .is_none_or(|r| r.since.elapsed() >= r.election_timeout);
        let in_touch = view.mode != Some(FailoverMode::Raft)
            || !view.running
            || (view.leader.is_some() && settled);
        if in_touch {
            self.masters.send_if_modified(|have| {
                let changed = *have != masters;
                *have = masters;
                changed
            });
        }
        self.view.send_if_modified(|have| {
            let changed = *have != view;
            *have = view;
            changed
        });
    }

    /// This node's view now: fresh from the instance, with the masters and
    /// note of the last round (in mode `raft` the masters are the state's).
    fn current_view(&self) -> GroupView {
        let published = self.view.borrow().clone();
        let mut view = self.local_view();
        view.mode = published.mode;
        view.note = published.note;
        view.masters = if view.mode == Some(FailoverMode::Raft) {
            view.state.masters.clone()
        } else {
            published.masters
        };
        view
    }

    fn local_view(&self) -> GroupView {
        let Some(running) = &self.running else {
            // What a member told us, as seen from outside the group.
            return as_seen_from_outside(self.fetched.borrow().clone().unwrap_or_default());
        };
        let m = running.raft.metrics().borrow().clone();
        let applied = running.applied.borrow().clone();
        let membership = m.membership_config.membership();
        let nodes = |ids: Vec<NodeId>| -> Vec<(NodeId, Peer)> {
            ids.into_iter()
                .map(|id| (id, membership.get_node(&id).cloned().unwrap_or_default()))
                .collect()
        };
        GroupView {
            running: true,
            initialized: m.vote.leader_id().term > 0 || m.last_log_index.is_some(),
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader: m.current_leader,
            quorum_ack_ms: m.millis_since_quorum_ack,
            voters: nodes(membership.voter_ids().collect()),
            learners: nodes(membership.learner_ids().collect()),
            last_log_index: m.last_log_index,
            commit_index: running.commit_index.get(),
            last_applied: m.last_applied.map(|l| l.index),
            state: applied.state.summary(),
            decisions: applied.state.decisions.len(),
            mode: None,
            masters: BTreeMap::new(),
            note: None,
        }
    }

    async fn command(&mut self, command: RaftCommand, topology: Option<&Topology>) {
        match command {
            RaftCommand::Promote { set, node, reply } => {
                let _ = reply.send(self.promote(topology, &set, &node).await);
            }
            RaftCommand::TransferLeader { node, reply } => {
                if self.current_view().role == "leader" {
                    let _ = reply.send(self.transfer_here(topology, &node).await);
                    return;
                }
                // Forwarded from a task of its own: the leader may ask this
                // very node to stand, and this task must be free to answer.
                let deadline = topology.map_or(CALL_DEADLINE, |t| t.election_timeout() * 6);
                let forward = self.forward(TRANSFER_METHOD, &node, deadline);
                tokio::spawn(async move {
                    let _ = reply.send(forward.await);
                });
            }
            RaftCommand::RecordDecision { command, reply } => {
                // Off the loop: a write waits for a quorum, an rpc for the
                // leader, and 2PC retries on its own timers anyway.
                // The leader writes; anyone else encodes and forwards.
                let answer = match self.leader_write(command.clone()) {
                    Some(write) => Either::Left(async move { write.await.and_then(decided) }),
                    None => Either::Right(self.forward(DECIDE_METHOD, &command, CALL_DEADLINE)),
                };
                tokio::spawn(async move {
                    let _ = reply.send(answer.await);
                });
            }
            RaftCommand::ConsistentRead { reply } => {
                let _ = reply.send(self.consistent_read().await);
            }
            // The loop stops before it gets here; answer anyway.
            RaftCommand::Stop { reply } => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// On the leader, or forwarded to it.
    async fn promote(
        &self,
        topology: Option<&Topology>,
        set: &str,
        node: &str,
    ) -> Result<Master, String> {
        if self.current_view().role == "leader" {
            return self.promote_here(topology, set, node).await;
        }
        self.forward(PROMOTE_METHOD, &(set, node), CALL_DEADLINE)
            .await
    }

    async fn promote_here(
        &self,
        topology: Option<&Topology>,
        set: &str,
        node: &str,
    ) -> Result<Master, String> {
        let topology = topology.ok_or("no committed topology yet")?;
        if topology.failover.mode.value != FailoverMode::Raft {
            return Err(format!(
                "failover mode is `{}`: masters move through raft only in mode `raft`",
                mode_name(topology.failover.mode.value)
            ));
        }
        let running = self
            .running
            .as_ref()
            .ok_or("this node is not in the raft group")?;
        let members = self.member_views().await;
        let state = running.applied.borrow().state.clone();
        let command =
            failover::promote(topology, &members, &state, set, node).map_err(|e| e.to_string())?;
        match self.bounded(running.raft.client_write(command)).await? {
            Ok(written) => match written.data {
                Response::Appointed(master) => Ok(master),
                Response::Stale { current } => Err(format!(
                    "the master changed meanwhile (now {}): try again",
                    current.map_or("none".into(), |m| m.to_string())
                )),
                other => Err(format!("unexpected answer {other:?}")),
            },
            Err(e) => Err(leader_hint(&e.to_string(), &self.current_view())),
        }
    }

    /// Where the leader this node knows takes rpc.
    fn leader_addr(&self) -> Result<SocketAddr, String> {
        let view = self.current_view();
        let leader = view.leader.ok_or("no leader known: try again")?;
        view.voters
            .iter()
            .find(|(id, _)| *id == leader)
            .map(|(_, p)| p.addr)
            .ok_or_else(|| "the leader is not a voter known here: try again".to_string())
    }

    /// openraft 0.9 has no leader transfer, and followers refuse votes
    /// while the leader's lease (3/4 of the election timeout) runs. So the
    /// leader stops its heartbeats and elections, waits the lease out, asks
    /// the target to stand (it does so before anyone else times out, at a
    /// whole election timeout at the earliest, and its log is checked by
    /// the voters as usual), then resumes.
    async fn transfer_here(&self, topology: Option<&Topology>, node: &str) -> Result<(), String> {
        let topology = topology.ok_or("no committed topology yet")?;
        if !failover::may_lead(topology, node) {
            return Err(format!(
                "{node} may not lead: its topology entry must say `election: candidate`"
            ));
        }
        if node == self.settings.name {
            return Ok(());
        }
        let running = self.running.as_ref().ok_or("not in the raft group")?;
        let view = self.current_view();
        let target = view
            .voters
            .iter()
            .find(|(_, p)| p.name == node)
            .map(|(_, p)| p.addr)
            .ok_or_else(|| format!("{node} is not a voter of the raft group yet"))?;
        let t = topology.election_timeout();
        let lease = Duration::from_millis(raft_config(t).election_timeout_max);
        let config = running.raft.runtime_config();
        config.heartbeat(false);
        running.elector.set_may_stand(false);
        tokio::time::sleep(lease + t / 10).await;
        let asked = self.ask_to_elect(target).await;
        let mut won = false;
        if asked.is_ok() {
            let until = tokio::time::Instant::now() + 2 * t;
            while tokio::time::Instant::now() < until {
                if self.view_of(target).await.is_ok_and(|v| v.role == "leader") {
                    won = true;
                    break;
                }
                tokio::time::sleep(t / 10).await;
            }
        }
        config.heartbeat(true);
        running
            .elector
            .set_may_stand(failover::may_lead(topology, &self.settings.name));
        asked?;
        if won {
            info!(to = node, "handed the leadership over");
            Ok(())
        } else {
            Err(format!("{node} did not win its election: try again"))
        }
    }

    /// Through the leader: here when this node leads, else over rpc. The
    /// leader confirms with a quorum that it still leads (ReadIndex) and
    /// answers once it applied everything committed before the read.
    async fn consistent_read(&self) -> Result<GroupView, String> {
        if self.current_view().role == "leader" {
            return self.consistent_read_here().await;
        }
        // `()` is no bytes at all: the method takes an empty body.
        self.forward(READ_METHOD, &(), CALL_DEADLINE).await
    }

    async fn control(&mut self, call: ControlCall) {
        let answer = match call.method.as_str() {
            VIEW_METHOD => encode(&self.current_view()),
            WATCH_METHOD => match postcard::from_bytes::<ViewStamp>(&call.body) {
                Ok(have) => {
                    // Held off the loop: answered when the published view
                    // moves on (at once for a leader or term change, else
                    // at the next round) or at the hold.
                    let views = self.view.subscribe();
                    tokio::spawn(async move {
                        let answer = match news_for(views, have, WATCH_HOLD).await {
                            Some(view) => encode(&view),
                            // No news: an empty answer, not the whole view
                            // again (167 sets' masters at 500 nodes, to
                            // each of 495 callers every hold).
                            None => Ok(Vec::new()),
                        };
                        let _ = call.reply.send(answer);
                    });
                    return;
                }
                Err(e) => Err(RpcError::bad_request(e)),
            },
            ELECT_METHOD => self.elect_here().await.map(|()| Vec::new()),
            READ_METHOD => encode(&self.consistent_read_here().await),
            TRANSFER_METHOD => match postcard::from_bytes::<String>(&call.body) {
                Ok(node) => {
                    let topology = self.topology.borrow().clone();
                    encode(&self.transfer_here(topology.as_deref(), &node).await)
                }
                Err(e) => Err(RpcError::bad_request(e)),
            },
            PROMOTE_METHOD => match postcard::from_bytes::<(String, String)>(&call.body) {
                Ok((set, node)) => {
                    let topology = self.topology.borrow().clone();
                    encode(&self.promote_here(topology.as_deref(), &set, &node).await)
                }
                Err(e) => Err(RpcError::bad_request(e)),
            },
            DECIDE_METHOD => match postcard::from_bytes::<Command>(&call.body) {
                Ok(command @ Command::RecordDecision { .. }) => {
                    let Some(write) = self.leader_write(command) else {
                        let not = Err::<Decision, _>(leader_hint(
                            "this node is not the leader",
                            &self.current_view(),
                        ));
                        let _ = call.reply.send(encode(&not));
                        return;
                    };
                    tokio::spawn(async move {
                        let _ = call.reply.send(encode(&write.await.and_then(decided)));
                    });
                    return;
                }
                Ok(_) => Err(RpcError::bad_request("not a decision")),
                Err(e) => Err(RpcError::bad_request(e)),
            },
            other => Err(RpcError::unknown_method(other)),
        };
        let _ = call.reply.send(answer);
    }

    /// On an effective leader: `command` written through this node's
    /// instance, bounded like every quorum call, as a future that needs
    /// nothing of the driver (to run off its loop). `None` elsewhere.
    fn leader_write(
        &self,
        command: Command,
    ) -> Option<impl std::future::Future<Output = Result<Response, String>> + Send + 'static> {
        let running = self.running.as_ref()?;
        let topology = self.topology.borrow().clone()?;
        if !self.is_effective_leader(&running.raft, &topology) {
            return None;
        }
        let raft = running.raft.clone();
        let limit = running.election_timeout * 2;
        Some(async move {
            match tokio::time::timeout(limit, raft.client_write(command)).await {
                Err(_) => Err(format!("no quorum answered within {limit:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(written)) => Ok(written.data),
            }
        })
    }

    /// `body` sent to the leader this node knows under `method`, as a
    /// future that needs nothing of the driver; the answer decoded.
    fn forward<B: Serialize, T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        method: &'static str,
        body: &B,
        deadline: Duration,
    ) -> impl std::future::Future<Output = Result<T, String>> + Send + 'static {
        let leader = self.leader_addr();
        let body = postcard::to_allocvec(body).map_err(|e| e.to_string());
        let rpc = self.rpc.clone();
        async move {
            let answer = rpc
                .call(leader?, method, &body?, deadline)
                .await
                .map_err(|e| format!("the leader did not answer: {e}"))?;
            postcard::from_bytes::<Result<T, String>>(&answer)
                .map_err(|e| format!("bad answer: {e}"))?
        }
    }

    /// Starts an election here (a leader handing over asked for it).
    async fn elect_here(&self) -> Result<(), RpcError> {
        let running = self
            .running
            .as_ref()
            .ok_or_else(|| RpcError::new("unavailable", "not in the raft group"))?;
        info!("starting an election: asked to take the lead");
        running
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| RpcError::internal(e.to_string()))
    }

    /// [`READ_METHOD`] on this node: only a leader answers with the state.
    async fn consistent_read_here(&self) -> Result<GroupView, String> {
        let running = self.running.as_ref().ok_or("not in the raft group")?;
        self.bounded(running.raft.ensure_linearizable())
            .await?
            .map_err(|e| format!("not a leader with a quorum: {e}"))?;
        Ok(self.current_view())
    }
}

/// What a node outside the group has of the group's view; a member
/// answers [`WATCH_METHOD`] once its own is news to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewStamp {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_applied: Option<u64>,
}

impl ViewStamp {
    fn of(view: &GroupView) -> ViewStamp {
        ViewStamp {
            term: view.term,
            leader: view.leader,
            last_applied: view.last_applied,
        }
    }

    /// Whether a view with this stamp is news to a caller that has
    /// `have`: more applied, or as much in a later term, or the leader of
    /// the same term found. A member that lags (a follower a few entries
    /// behind the leader the caller heard) has none: answering its older
    /// view at once sent the caller straight on to the next member, which
    /// answered at once too, so that during an apply at 500 nodes every
    /// node outside the group polled the voters in a loop (a tenth of the
    /// machine's CPU, and voters too busy to heartbeat).
    fn is_news_to(&self, have: &ViewStamp) -> bool {
        let key = |s: &ViewStamp| (s.last_applied, s.term, s.leader.is_some());
        key(self) > key(have)
    }
}

/// A member's answer to a [`WATCH_METHOD`] call from a node that has
/// `have`: its view once that is news to the caller, or nothing after
/// `hold`.
async fn news_for(
    mut views: watch::Receiver<GroupView>,
    have: ViewStamp,
    hold: Duration,
) -> Option<GroupView> {
    let news = views.wait_for(|view| ViewStamp::of(view).is_news_to(&have));
    match tokio::time::timeout(hold, news).await {
        Ok(Ok(view)) => Some(view.clone()),
        _ => None,
    }
}

/// A member's view without what only that member sees (its role, how
/// long ago a quorum acknowledged it, its note): what a node outside the
/// group keeps. Kept whole, each answer of the leader (whose quorum ack
/// moves every heartbeat) was news that woke a round on every such node.
fn as_seen_from_outside(view: GroupView) -> GroupView {
    GroupView {
        running: false,
        role: "off".into(),
        quorum_ack_ms: None,
        note: None,
        ..view
    }
}

/// The group's alive members (bar this node) that `watch_group` asks,
/// as listed `at` from `topology`.
struct Listed {
    topology: Arc<Topology>,
    at: tokio::time::Instant,
    members: Vec<SocketAddr>,
}

/// Outside the group: long-polls one alive member after another
/// ([`WATCH_METHOD`]) and keeps the newest view (by applied index: a
/// member cut off from the others answers an older one). A member answers
/// as soon as it publishes a change (a new leader or term at once, the
/// rest at its round), so a new leader reaches nodes outside the group
/// within a call of a member's; each node costs a member one call per
/// [`WATCH_HOLD`] when nothing happens.
async fn watch_group(
    me: NodeId,
    topology: watch::Receiver<Option<Arc<Topology>>>,
    directory: Arc<dyn PeerDirectory>,
    rpc: RpcClient,
    out: Arc<watch::Sender<Option<GroupView>>>,
) {
    let mut turn: usize = rand::random_range(0..1024);
    // Members that failed in a row: the next one is asked at once (the one
    // polled may be the leader just killed, whose connection fails at the
    // kill); a pause only once every member failed.
    let mut failed: usize = 0;
    // Who to ask, listed again when the topology changes, after a failed
    // call, or once it is OUTSIDE_ROUND old. Listing looks at every member
    // of the gossip, and while the group writes (an apply, appointments)
    // each of its entries is news that starts a round on every node
    // outside it: listed every round, each entry cost 495 nodes a pass
    // over 500 members at 500 nodes.
    let mut listed: Option<Listed> = None;
    loop {
        let current = topology.borrow().clone();
        let fresh = listed.as_ref().is_some_and(|l| {
            current
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&l.topology, c))
                && l.at.elapsed() < OUTSIDE_ROUND
                && failed == 0
                && !l.members.is_empty()
        });
        if !fresh {
            listed = match current {
                None => None,
                Some(topology) => {
                    let seen = topology.clone();
                    let members = directory
                        .peers_where(Box::new(move |id, name, status| {
                            id != me
                                && status == crate::membership::MemberStatus::Alive
                                && failover::in_group(&topology, name)
                        }))
                        .await
                        .iter()
                        .map(|p| p.addr)
                        .collect();
                    Some(Listed {
                        topology: seen,
                        at: tokio::time::Instant::now(),
                        members,
                    })
                }
            };
        }
        let members = listed.as_ref().map_or(&[][..], |l| l.members.as_slice());
        let pause = topology
            .borrow()
            .as_ref()
            .map_or(Duration::from_secs(1), |t| tick_of(t.election_timeout()));
        if members.is_empty() {
            tokio::time::sleep(pause).await;
            continue;
        }
        turn = turn.wrapping_add(1);
        let addr = members[turn % members.len()];
        let have = out.borrow().as_ref().map(ViewStamp::of).unwrap_or_default();
        let answer = match postcard::to_allocvec(&have) {
            Ok(body) => rpc
                .call(addr, WATCH_METHOD, &body, WATCH_HOLD + CALL_DEADLINE)
                .await
                .map_err(|e| e.to_string())
                .and_then(|body| {
                    if body.is_empty() {
                        // No news since our stamp.
                        return Ok(None);
                    }
                    postcard::from_bytes::<GroupView>(&body)
                        .map(|view| Some(as_seen_from_outside(view)))
                        .map_err(|e| e.to_string())
                }),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(None) => {}
            Ok(Some(view)) if view.initialized => {
                let adopted = out.send_if_modified(|kept| {
                    let newer = kept
                        .as_ref()
                        .is_none_or(|k| view.last_applied >= k.last_applied);
                    let changed = newer && kept.as_ref() != Some(&view);
                    if changed {
                        *kept = Some(view);
                    }
                    changed
                });
                if !adopted {
                    // An older view (a member of a build that answers
                    // any change at once): not straight on to the next.
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(Some(_)) => tokio::time::sleep(pause).await,
            Err(e) => {
                debug!(%addr, "no view of the group from this member: {e}");
                failed += 1;
                if failed >= members.len() {
                    failed = 0;
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
        }
        failed = 0;
    }
}

/// The decision a [`Command::RecordDecision`] write found in the log.
fn decided(response: Response) -> Result<Decision, String> {
    match response {
        Response::Decided(decision) => Ok(decision),
        Response::Forgotten => Err("the log no longer keeps this txn's decision".into()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RpcError> {
    postcard::to_allocvec(value).map_err(|e| RpcError::internal(format!("cannot encode: {e}")))
}

fn mode_name(mode: FailoverMode) -> String {
    serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// "not the leader" errors say who is.
fn leader_hint(error: &str, view: &GroupView) -> String {
    match view.leader {
        Some(leader) if view.role != "leader" => {
            let name = view
                .voters
                .iter()
                .find(|(id, _)| *id == leader)
                .map_or(leader.to_string(), |(_, p)| p.name.clone());
            format!("{error} (the leader is {name})")
        }
        _ => error.to_string(),
    }
}

/// On a leader that no quorum has acknowledged for longer than 0.65 of
/// `election_timeout`: for how long (ms). With a round every fifth of it,
/// a cut-off leader steps down within 0.85t, before any follower can
/// stand (0.9t, see [`raft_config`]).
fn lost_quorum(raft: &Raft, election_timeout: Duration) -> Option<u64> {
    let m = raft.metrics().borrow().clone();
    let silent = m.millis_since_quorum_ack?;
    let limit = election_timeout.as_millis() * 13 / 20;
    (m.state == ServerState::Leader && u128::from(silent) > limit).then_some(silent)
}

/// How often the driver looks again: a fifth of an election timeout,
/// within 50 ms – 1 s.
fn tick_of(election_timeout: Duration) -> Duration {
    (election_timeout / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The node that forms the group: the first `election: candidate` by name
/// (the same on every node that has the committed topology).
fn first_candidate(topology: &Topology) -> Option<String> {
    topology
        .nodes()
        .filter(|n| n.spec.election == crate::config::Election::Candidate)
        .map(|n| n.name.to_string())
        .min()
}

fn member_view(peer: &crate::agent::apply::Peer) -> MemberView {
    MemberView {
        name: peer.name.clone(),
        id: peer.id,
        addr: peer.addr,
        status: peer.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member answers a watch only with news to the caller: a lagging
    /// member holds the call (answering its older view at once made the
    /// caller poll the group in a loop), a member that applies more or
    /// sees a new term or leader answers at once.
    #[tokio::test(start_paused = true)]
    async fn a_watch_is_answered_with_news_only() {
        let view = |term, leader: Option<u128>, applied| GroupView {
            initialized: true,
            term,
            leader: leader.map(|n| NodeId(uuid::Uuid::from_u128(n))),
            last_applied: Some(applied),
            ..GroupView::default()
        };
        let have = ViewStamp::of(&view(4, Some(1), 108));
        let hold = Duration::from_secs(2);
        let answer = |member: GroupView| {
            let (tx, rx) = watch::channel(member);
            async move {
                let started = tokio::time::Instant::now();
                let answer = news_for(rx, have, hold).await;
                drop(tx);
                (answer.map(|v| ViewStamp::of(&v)), started.elapsed())
            }
        };
        // Behind, or the same: held for the whole hold, then nothing.
        for member in [
            view(4, Some(1), 107),
            view(4, Some(1), 108),
            view(3, Some(2), 108),
        ] {
            assert_eq!(answer(member).await, (None, hold));
        }
        // Ahead: at once.
        for member in [
            view(4, Some(1), 109),
            view(5, None, 108),
            view(5, Some(2), 108),
        ] {
            let stamp = ViewStamp::of(&member);
            assert_eq!(answer(member).await, (Some(stamp), Duration::ZERO));
        }
        // A member that catches up during the hold answers then.
        let (tx, rx) = watch::channel(view(4, Some(1), 107));
        let call = tokio::spawn(news_for(rx, have, hold));
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.send_replace(view(4, Some(1), 108));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!call.is_finished(), "equal to what the caller has: no news");
        tx.send_replace(view(4, Some(1), 109));
        let answer = call.await.unwrap().map(|v| v.last_applied);
        assert_eq!(answer, Some(Some(109)));
    }

    #[test]
    fn what_only_the_answering_member_sees_is_not_news_outside_the_group() {
        let leader = GroupView {
            running: true,
            initialized: true,
            role: "leader".into(),
            term: 4,
            quorum_ack_ms: Some(12),
            last_applied: Some(108),
            note: Some("a learner lags".into()),
            ..GroupView::default()
        };
        let follower = GroupView {
            role: "follower".into(),
            quorum_ack_ms: None,
            note: None,
            ..leader.clone()
        };
        let later_ack = GroupView {
            quorum_ack_ms: Some(250),
            ..leader.clone()
        };
        let seen = as_seen_from_outside(leader.clone());
        assert_eq!(seen, as_seen_from_outside(follower));
        assert_eq!(seen, as_seen_from_outside(later_ack));
        assert_eq!((seen.role.as_str(), seen.running), ("off", false));
        // What the group decided is kept.
        let applied_more = GroupView {
            last_applied: Some(109),
            ..leader
        };
        assert_ne!(seen, as_seen_from_outside(applied_more));
    }
}
