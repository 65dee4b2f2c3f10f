//! The driver loop: one task per node, owning its coordinator and its
//! participant (see the module doc of `apply` for the contract it keeps).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::config::{Diagnostic, Diagnostics, Pos, Topology};
use crate::rpc::RpcClient;
use crate::storage::{describe, write_atomic};
use crate::twophase::{
    Action, Committed, ConfigHash, Coordinator, Decision, DecisionLog, Event, Message, NodeId,
    Participant, Prepare, Proposal, Record, Start, TxnId, Version, Vote,
};

use super::decision_log::ReplicatedLog;
use super::directory::{Peer, PeerDirectory};
use super::hooks::{Installed, RoleHooks};
use super::outbox::{Outbox, ReplySlot};
use super::rpc::Envelope;
use super::store::{ApplyStore, StoreError};
use super::{
    ApplyConfig, ApplyError, ApplyHandle, ApplyInbox, ApplyReport, ApplyStatus, DiskError,
    InstallStatus, LastApply,
};
use crate::agent::topology_watch::config_hash;
use crate::membership::by_name;

type Reply = oneshot::Sender<Result<ApplyReport, ApplyError>>;

/// The first pause before a failed 2PC write is tried again; it doubles up
/// to `RETRY_MAX`, so a disk freed after a long while is noticed within
/// a few seconds, and a failing one is not hammered.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(3200);

/// What a persist did besides the store: the topology file of a new
/// version (a copy of an operator's edit kept, or why the file failed).
type Written = Option<(Version, Result<Option<PathBuf>, String>)>;

pub(super) enum Input {
    /// A 2PC message from a peer (or from this node, through the rpc);
    /// `reply`: the peer's call waits for our answer (see `outbox`).
    Message {
        envelope: Envelope,
        reply: Option<ReplySlot>,
    },
    /// A validation this driver started has finished; `parsed` is the
    /// text it accepted, kept for the install.
    Validated {
        txn: TxnId,
        result: Result<(), String>,
        parsed: Option<(ConfigHash, Arc<Topology>)>,
    },
    /// `ApplyHandle::apply`.
    Apply {
        text: String,
        base: Option<Version>,
        reply: Reply,
    },
    /// The text of an apply parsed and the peers looked up: start it.
    Resolved {
        text: String,
        topology: Box<Topology>,
        peers: Vec<Peer>,
        reply: Reply,
        received: Instant,
        base: Option<Version>,
    },
    /// A peer asks for the committed version (rpc `COMMITTED_METHOD`).
    Committed {
        reply: oneshot::Sender<Committed>,
    },
    /// Catch-up: a newer committed version fetched from `from`.
    CatchUp {
        committed: Box<Committed>,
        from: String,
    },
    /// `ApplyHandle::use_replicated_log`.
    UseLog(Arc<dyn ReplicatedLog>),
    /// A proposal to the replicated log came back: the decision the log
    /// holds for `txn`, or why it could not be had (asked again later).
    Recorded {
        txn: TxnId,
        result: Result<Decision, String>,
    },
    Stop,
}

/// A version for the roles: the committed version's at start-up, then
/// every version installed (its topology file is written already).
struct InstallJob {
    change: Installed,
    /// Writing the topology file failed (reported with the roles' result).
    file_error: Option<String>,
}

/// A streak of failed 2PC writes.
struct Failing {
    since: SystemTime,
    started: Instant,
    error: String,
    failures: u64,
    interval: Duration,
    retry_at: Instant,
}

struct Waiter {
    reply: Reply,
    not_reached: Vec<(String, String)>,
    names: BTreeMap<NodeId, String>,
    received: Instant,
    started: Instant,
    log: DecisionLog,
}

struct Driver {
    config: ApplyConfig,
    coordinator: Coordinator,
    participant: Participant,
    store: Arc<Mutex<ApplyStore>>,
    directory: Arc<dyn PeerDirectory>,
    hooks: Arc<dyn RoleHooks>,
    tx: mpsc::WeakSender<Input>,
    outbox: Outbox,
    /// Messages this node sent itself, delivered after the current actions.
    local: VecDeque<Message>,
    waiting: BTreeMap<TxnId, Waiter>,
    status: Arc<watch::Sender<ApplyStatus>>,
    installer: mpsc::UnboundedSender<InstallJob>,
    /// Writing the topology file of this version failed (told to the
    /// install status with the roles' result).
    file_error: Option<(Version, String)>,
    /// The committed version's topology, parsed (none at version 0, or if
    /// this build no longer accepts it).
    committed: Option<Arc<Topology>>,
    /// The text the last validation accepted, parsed: the install of that
    /// text uses it. (Parsed again at the install, a 500-node text cost
    /// each node ~3.5 ms more per apply, on the driver loop.)
    validated: Option<(ConfigHash, Arc<Topology>)>,
    /// The cluster's Raft group, once it runs.
    replicated: Option<Arc<dyn ReplicatedLog>>,
    /// Set while 2PC writes fail; cleared by the first one that works.
    failing: Option<Failing>,
    /// A record that could not be written and that the actions after it
    /// wait for (they stay queued in the state machines): retried with
    /// `failing`'s backoff. Meanwhile the machines may run ahead of the
    /// disk in memory, but nothing they do leaves the node, exactly as on
    /// a slow disk; a crash finds the state before the record.
    blocked: Option<Record>,
}

/// Loads the node's 2PC state and starts its driver.
pub fn spawn(
    config: ApplyConfig,
    inbox: ApplyInbox,
    directory: Arc<dyn PeerDirectory>,
    client: RpcClient,
    hooks: Arc<dyn RoleHooks>,
) -> Result<ApplyHandle, StoreError> {
    let store = ApplyStore::open(&config.data_dir)?;
    let now = Instant::now();
    let disk = store.state().clone();
    let left_over = finish_topology_rewrite(
        &config.topology_path,
        &disk.participant.committed,
        store.replaced(),
    );
    let coordinator = Coordinator::new(now, config.me, config.coordinator, &disk.coordinator);
    let participant = Participant::new(now, config.me, config.participant, &disk.participant);
    let committed = parse_committed(
        &config,
        &disk.participant.committed.text,
        disk.participant.committed.version,
    );
    let (version, hash) = participant.committed();
    let (status, status_rx) = watch::channel(ApplyStatus {
        node: config.me,
        version,
        hash,
        lock: participant.status(),
        coordinating: Vec::new(),
        last: None,
        install: None,
        stopped: None,
        disk_error: None,
        text: disk.participant.committed.text.as_str().into(),
        txn: disk.participant.committed.txn,
        topology: committed.clone(),
        kept_edits: Vec::new(),
        left_over,
    });
    let status = Arc::new(status);
    let (installer, jobs) = mpsc::unbounded_channel();
    // The roles of the committed version start first, before any newer
    // version this run installs.
    if let (Some(topology), Some(txn)) = (committed.clone(), disk.participant.committed.txn) {
        let _ = installer.send(InstallJob {
            change: Installed {
                txn,
                version,
                hash,
                text: disk.participant.committed.text.as_str().into(),
                topology,
                previous: None,
            },
            file_error: None,
        });
    }
    tokio::spawn(install_loop(
        config.topology_path.clone(),
        hooks.clone(),
        status.clone(),
        jobs,
    ));
    let ApplyInbox { tx, rx } = inbox;
    tokio::spawn(super::catch_up::run(
        tx.downgrade(),
        status_rx.clone(),
        directory.clone(),
        client.clone(),
    ));
    let outbox = Outbox::new(
        config.me,
        directory.clone(),
        client,
        config.send_deadline,
        tx.downgrade(),
    );
    let driver = Driver {
        config,
        coordinator,
        participant,
        store: Arc::new(Mutex::new(store)),
        directory,
        outbox,
        hooks,
        tx: tx.downgrade(),
        local: VecDeque::new(),
        waiting: BTreeMap::new(),
        status,
        installer,
        file_error: None,
        committed,
        validated: None,
        replicated: None,
        failing: None,
        blocked: None,
    };
    info!(uuid = %driver.config.me, %version, %hash, "apply driver started");
    let task = tokio::spawn(driver.run(rx));
    Ok(ApplyHandle {
        tx,
        status: status_rx,
        task: Arc::new(std::sync::Mutex::new(Some(task))),
    })
}

fn parse_committed(config: &ApplyConfig, text: &str, version: Version) -> Option<Arc<Topology>> {
    if version == Version(0) {
        return None;
    }
    match Topology::parse(text, &config.text_name) {
        Ok(topology) => Some(Arc::new(topology)),
        Err(problems) => {
            warn!(%version, "the committed topology no longer parses:\n{problems}");
            None
        }
    }
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        loop {
            self.drain().await;
            self.publish();
            let deadline = [
                self.coordinator.poll_timeout(),
                self.participant.poll_timeout(),
                self.failing.as_ref().map(|f| f.retry_at),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = rx.recv() => match input {
                    None | Some(Input::Stop) => break,
                    Some(input) => self.handle(input),
                },
                () = sleep => {
                    let now = Instant::now();
                    if self.failing.as_ref().is_some_and(|f| f.retry_at <= now) {
                        self.retry().await;
                    }
                    self.coordinator.handle_timeout(now);
                    self.participant.handle_timeout(now);
                }
            }
        }
        info!(uuid = %self.config.me, "apply driver stopped");
        let why = "stopped".to_string();
        self.status.send_modify(|s| {
            s.stopped = Some(why.clone());
            s.disk_error = None;
        });
        for (_, waiter) in std::mem::take(&mut self.waiting) {
            let _ = waiter.reply.send(Err(ApplyError::Stopped(why.clone())));
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Message { envelope, reply } => {
                if envelope.to != self.config.me {
                    debug!(to = %envelope.to, from = %envelope.from, "2PC message for another node dropped");
                    return;
                }
                if let Some(slot) = reply {
                    self.outbox
                        .hold(envelope.from, envelope.message.txn(), slot);
                }
                match envelope.message {
                    Message::Prepare(prepare)
                        if self.blocked.is_some() && envelope.from != self.config.me =>
                    {
                        self.refuse_prepare(envelope.from, &prepare)
                    }
                    message => self.deliver(now, envelope.from, message),
                }
            }
            Input::Validated {
                txn,
                result,
                parsed,
            } => {
                if let Err(why) = &result {
                    info!(%txn, "this node votes no: {why}");
                }
                if parsed.is_some() {
                    self.validated = parsed;
                }
                self.participant.validated(now, txn, result);
            }
            Input::Apply { reply, .. } if self.blocked.is_some() => self.refuse_apply(reply),
            Input::Apply { text, base, reply } => self.resolve(now, text, base, reply),
            Input::Resolved { reply, .. } if self.blocked.is_some() => self.refuse_apply(reply),
            Input::Resolved {
                text,
                topology,
                peers,
                reply,
                received,
                base,
            } => match self.precheck(&text, base) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(()) => self.start(now, text, *topology, &peers, reply, received),
            },
            Input::Committed { reply } => {
                let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
                let _ = reply.send(store.state().participant.committed.clone());
            }
            Input::CatchUp { committed, from } => self.catch_up(*committed, &from),
            Input::UseLog(log) => self.replicated = Some(log),
            Input::Recorded { txn, result } => match result {
                Ok(decision) => {
                    self.coordinator.decision_recorded(now, txn, decision);
                    self.participant.decision_recorded(txn, decision);
                }
                // The state machines propose again on their timers.
                Err(why) => info!(%txn, "the raft log has not recorded a decision yet: {why}"),
            },
            Input::Stop => {}
        }
    }

    fn deliver(&mut self, now: Instant, from: NodeId, message: Message) {
        match message.role(self.config.me) {
            crate::twophase::Role::Coordinator => {
                self.coordinator.handle_message(now, from, message)
            }
            crate::twophase::Role::Participant => {
                self.participant.handle_message(now, from, message)
            }
        }
    }

    /// Carries out every pending action in order, then takes the events,
    /// then delivers what this node sent itself; until nothing is left, or
    /// until a write fails that the rest must wait for (`blocked`: events
    /// wait too, since the caller must never hear of what is not on disk).
    async fn drain(&mut self) {
        loop {
            while self.blocked.is_none() {
                let Some(action) = self
                    .coordinator
                    .poll_action()
                    .or_else(|| self.participant.poll_action())
                else {
                    break;
                };
                self.execute(action).await;
            }
            if self.blocked.is_some() {
                return;
            }
            while let Some(event) = self
                .coordinator
                .poll_event()
                .or_else(|| self.participant.poll_event())
            {
                self.on_event(event);
            }
            let Some(message) = self.local.pop_front() else {
                return;
            };
            self.deliver(Instant::now(), self.config.me, message);
        }
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Persist(record) => self.persist(record).await,
            Action::Send { to, message } if to == self.config.me => self.local.push_back(message),
            Action::Send { to, message } => self.outbox.send(to, message),
            Action::Validate(proposal) => self.validate(proposal),
            Action::Propose {
                txn,
                decision,
                installs,
            } => self.propose(txn, decision, installs),
        }
    }

    /// `Action::Persist`. A failed write of `Staged` becomes a no vote and
    /// one of `Started` an error for the caller (nothing had left the node
    /// for either); any other record is retried until it is written, and
    /// the actions after it wait (`blocked`).
    async fn persist(&mut self, record: Record) {
        let why = match self.write(record.clone()).await {
            Ok(written) => return self.written(written),
            Err(e) => e.to_string(),
        };
        self.write_failed(&why);
        match &record {
            Record::Staged(prepare) => {
                let txn = prepare.proposal.txn;
                let no = format!("{}: {why}", super::NO_VOTE_CANNOT_STAGE);
                if self.participant.stage_failed(txn, no) {
                    return warn!(%txn, "this node votes no: it cannot stage the change: {why}");
                }
            }
            // Dropped by the coordinator (when it can be) before the guard
            // lets this arm run.
            Record::Started { txn, .. } if self.coordinator.start_failed(*txn) => {
                let e = ApplyError::Disk(why);
                warn!(%txn, "topology change not started: {e}");
                self.last(None, None, e.to_string());
                if let Some(waiter) = self.waiting.remove(txn) {
                    let _ = waiter.reply.send(Err(e));
                }
                return;
            }
            _ => {}
        }
        self.blocked = Some(record);
    }

    /// Writes `record` (off the loop: fsyncs take their time) and, when it
    /// installs a new version, the topology file after it.
    async fn write(&self, record: Record) -> Result<Written, StoreError> {
        let store = self.store.clone();
        let path = self.config.topology_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
            let before = store.state().participant.committed.clone();
            store.persist(&record)?;
            let after = &store.state().participant.committed;
            if after.version == before.version {
                return Ok(None);
            }
            // A new version: the topology file follows before the
            // participant acknowledges (DESIGN step 5), so an
            // acknowledged node has the file too.
            let previous = (before.version > Version(0)).then_some(before.text.as_bytes());
            Ok(Some((
                after.version,
                write_topology(&path, after.text.as_bytes(), previous, after.version),
            )))
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            path: self.config.data_dir.join(super::store::DIR),
            why: format!("the write did not finish: {e}"),
        })?
    }

    /// A persist worked: the disk is back if it was failing.
    fn written(&mut self, written: Written) {
        self.recovered();
        match written {
            // The file holds a committed text again.
            Some((_, Ok(kept))) => {
                self.status.send_if_modified(|s| {
                    let cleared = s.left_over.take().is_some();
                    s.kept_edits.extend(kept.clone());
                    cleared || kept.is_some()
                });
            }
            // The version is committed whatever happens to the
            // file; the install status says the file failed.
            Some((version, Err(why))) => {
                error!(%version, "{why}");
                self.file_error = Some((version, why));
            }
            None => {}
        }
    }

    /// Due while writes fail: the blocked record again, or (nothing
    /// blocked: the failed write was given up) `state.bin` as it is.
    async fn retry(&mut self) {
        if let Some(record) = self.blocked.take() {
            match self.write(record.clone()).await {
                Ok(written) => self.written(written),
                Err(e) => {
                    self.blocked = Some(record);
                    self.write_failed(&e.to_string());
                }
            }
            return;
        }
        let store = self.store.clone();
        let probe = tokio::task::spawn_blocking(move || {
            store.lock().unwrap_or_else(|p| p.into_inner()).rewrite()
        })
        .await;
        match probe {
            Ok(Ok(())) => self.recovered(),
            Ok(Err(e)) => self.write_failed(&e.to_string()),
            Err(e) => self.write_failed(&format!("the write did not finish: {e}")),
        }
    }

    /// Once per streak the error is logged, the status says it, and the
    /// retries start; later failures only push the next retry back.
    fn write_failed(&mut self, why: &str) {
        let now = Instant::now();
        match &mut self.failing {
            Some(f) => {
                f.failures += 1;
                f.interval = f.interval.saturating_mul(2).min(RETRY_MAX);
                f.retry_at = now + f.interval;
                if f.error != why {
                    debug!("2PC write failed again: {why}");
                    f.error = why.to_string();
                }
            }
            None => {
                error!(
                    "a 2PC write failed: {why}; until one works again (tried again from {} ms, \
                     up to every {} s) this node votes no on every topology change and starts none",
                    RETRY_FIRST.as_millis(),
                    RETRY_MAX.as_secs_f64()
                );
                self.failing = Some(Failing {
                    since: SystemTime::now(),
                    started: now,
                    error: why.to_string(),
                    failures: 1,
                    interval: RETRY_FIRST,
                    retry_at: now + RETRY_FIRST,
                });
            }
        }
        let Some(f) = &self.failing else { return };
        let error = DiskError {
            since: f.since,
            error: f.error.clone(),
        };
        self.status.send_if_modified(|s| {
            let changed = s.disk_error.as_ref() != Some(&error);
            s.disk_error = Some(error);
            changed
        });
    }

    fn recovered(&mut self) {
        let Some(f) = self.failing.take() else {
            return;
        };
        info!(
            failures = f.failures,
            "2PC writes work again, {:.1} s after the first failure; this node takes part in topology changes again",
            f.started.elapsed().as_secs_f64()
        );
        self.status.send_modify(|s| s.disk_error = None);
    }

    /// While a write is blocked: a no, at once, to a PREPARE (validating
    /// it would only queue behind the write). A no needs nothing on disk.
    fn refuse_prepare(&mut self, from: NodeId, prepare: &Prepare) {
        let txn = prepare.proposal.txn;
        if from != txn.coordinator {
            return;
        }
        let why = self.failing.as_ref().map_or("", |f| f.error.as_str());
        debug!(%txn, "this node votes no: it cannot write its 2PC state: {why}");
        let vote = Vote::No(format!("{}: {why}", super::NO_VOTE_CANNOT_WRITE));
        self.outbox
            .send(txn.coordinator, Message::Vote { txn, vote });
    }

    fn refuse_apply(&self, reply: Reply) {
        let why = self.failing.as_ref().map_or("", |f| f.error.as_str());
        let e = ApplyError::Disk(why.to_string());
        self.last(None, None, e.to_string());
        let _ = reply.send(Err(e));
    }

    /// Off the loop: the log answers once a quorum has the entry.
    fn propose(
        &self,
        txn: TxnId,
        decision: Decision,
        installs: Option<(Version, crate::twophase::ConfigHash)>,
    ) {
        let (Some(log), Some(tx)) = (self.replicated.clone(), self.tx.upgrade()) else {
            // Raft is not running yet (the agent is starting): the state
            // machine proposes again on its timer.
            return debug!(%txn, "no raft log yet to propose {decision} to");
        };
        tokio::spawn(async move {
            let result = log.record(txn, decision, installs).await;
            let _ = tx.send(Input::Recorded { txn, result }).await;
        });
    }

    fn validate(&self, proposal: Proposal) {
        let Some(tx) = self.tx.upgrade() else { return };
        let hooks = self.hooks.clone();
        let old = self.committed.clone();
        let name = self.config.text_name.clone();
        let cluster = self.config.cluster.clone();
        tokio::spawn(async move {
            let txn = proposal.txn;
            let (result, parsed) = match check_text(&proposal.text, &name, &cluster) {
                Err(problems) => (Err(problems.to_string()), None),
                Ok(_) if config_hash(proposal.text.as_bytes()) != proposal.hash => {
                    (Err("the text does not match its hash".to_string()), None)
                }
                Ok(new) => {
                    let result = hooks.validate(&new, old.as_deref(), proposal.version).await;
                    let parsed = result.is_ok().then(|| (proposal.hash, Arc::new(new)));
                    (result, parsed)
                }
            };
            let _ = tx
                .send(Input::Validated {
                    txn,
                    result,
                    parsed,
                })
                .await;
        });
    }

    /// Parses the text of an apply (here: problems are the caller's
    /// answer) and looks the peers up off the loop.
    /// Nothing to do (the text is committed), or the edit is stale.
    /// Checked when the apply is asked for and again when it starts: a
    /// commit or a catch-up may land while the peers are looked up.
    fn precheck(&self, text: &str, base: Option<Version>) -> Result<(), ApplyError> {
        let (version, hash) = self.participant.committed();
        if version > Version(0) && config_hash(text.as_bytes()) == hash {
            return Err(ApplyError::Unchanged(version));
        }
        if let Some(based_on) = base.filter(|b| *b != version) {
            let stale = ApplyError::Stale {
                based_on,
                committed: version,
            };
            self.last(None, None, stale.to_string());
            return Err(stale);
        }
        Ok(())
    }

    fn resolve(&mut self, received: Instant, text: String, base: Option<Version>, reply: Reply) {
        if let Err(e) = self.precheck(&text, base) {
            let _ = reply.send(Err(e));
            return;
        }
        let topology = match check_text(&text, &self.config.text_name, &self.config.cluster) {
            Ok(topology) => topology,
            Err(problems) => {
                for problem in problems.iter() {
                    warn!("topology change rejected: {problem}");
                }
                self.last(None, None, problems.to_string());
                let _ = reply.send(Err(ApplyError::Invalid(problems)));
                return;
            }
        };
        let Some(tx) = self.tx.upgrade() else { return };
        let directory = self.directory.clone();
        tokio::spawn(async move {
            let peers = directory.peers().await;
            let _ = tx
                .send(Input::Resolved {
                    text,
                    topology: Box::new(topology),
                    peers,
                    reply,
                    received,
                    base,
                })
                .await;
        });
    }

    fn start(
        &mut self,
        now: Instant,
        text: String,
        new: Topology,
        peers: &[Peer],
        reply: Reply,
        received: Instant,
    ) {
        let names = by_name(peers);
        let old = self.committed.clone();
        let all: BTreeSet<&str> = old
            .iter()
            .flat_map(|t| t.nodes().map(|n| n.name))
            .chain(new.nodes().map(|n| n.name))
            .collect();
        let mut participants = vec![self.config.me];
        let mut not_reached = Vec::new();
        for name in all.iter().filter(|n| **n != self.config.name) {
            match names.get(name) {
                Some(peer) if peer.takes_part() => participants.push(peer.id),
                Some(peer) => not_reached.push((name.to_string(), peer.status.to_string())),
                None => not_reached.push((name.to_string(), "unknown to membership".to_string())),
            }
        }
        // A base node membership does not know still counts against the
        // majority: it stands for an id that takes no part. The first
        // version has no base: the new topology's nodes stand in, so two
        // nodes started at once cannot each commit a first version alone.
        let base_members = old
            .as_deref()
            .unwrap_or(&new)
            .nodes()
            .map(|n| match names.get(n.name) {
                _ if n.name == self.config.name => self.config.me,
                Some(peer) => peer.id,
                None => NodeId(Uuid::new_v4()),
            })
            .collect();
        let names: BTreeMap<NodeId, String> = peers
            .iter()
            .filter(|p| !p.name.is_empty())
            .map(|p| (p.id, p.name.clone()))
            .collect();
        let (base, _) = self.participant.committed();
        let hash = config_hash(text.as_bytes());
        let log = match &self.replicated {
            Some(log) if log.available() => DecisionLog::Replicated,
            _ => DecisionLog::Coordinator,
        };
        let start = Start {
            base,
            text,
            hash,
            participants,
            base_members,
            log,
        };
        match self.coordinator.start(now, start) {
            Ok(txn) => {
                info!(
                    %txn,
                    version = %base.next(),
                    %hash,
                    decision_log = log_name(log),
                    "topology change started"
                );
                self.waiting.insert(
                    txn,
                    Waiter {
                        reply,
                        not_reached,
                        names,
                        received,
                        started: now,
                        log,
                    },
                );
            }
            Err(e) => {
                warn!("topology change not started: {e}");
                self.last(None, None, e.to_string());
                let _ = reply.send(Err(ApplyError::Start(e)));
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Decided(result) => {
                let txn = result.txn;
                let committed = match result.outcome {
                    crate::twophase::Outcome::Committed(v) => Some(v),
                    crate::twophase::Outcome::Aborted { .. } => None,
                };
                let waiter = self.waiting.remove(&txn);
                let now = Instant::now();
                let report = ApplyReport {
                    result,
                    not_reached: waiter
                        .as_ref()
                        .map(|w| w.not_reached.clone())
                        .unwrap_or_default(),
                    resolve: waiter
                        .as_ref()
                        .map(|w| w.started - w.received)
                        .unwrap_or_default(),
                    prepare: waiter.as_ref().map(|w| now - w.started).unwrap_or_default(),
                    names: waiter.as_ref().map(|w| w.names.clone()).unwrap_or_default(),
                    log: waiter.as_ref().map_or(DecisionLog::Coordinator, |w| w.log),
                };
                info!(%txn, "topology change decided: {report}");
                self.last_took(
                    Some(txn),
                    committed,
                    report.to_string(),
                    Some(report.resolve + report.prepare),
                );
                if let Some(waiter) = waiter {
                    let _ = waiter.reply.send(Ok(report));
                }
            }
            Event::Finished { txn } => debug!(%txn, "every participant acknowledged"),
            Event::Installed { txn, version, hash } => self.installed(txn, version, hash),
            Event::Released { txn, decision } => debug!(%txn, %decision, "2PC lock released"),
            Event::Anomaly { txn, what } => error!(%txn, "2PC anomaly (ignored): {what}"),
        }
    }

    fn installed(&mut self, txn: TxnId, version: Version, hash: crate::twophase::ConfigHash) {
        let (text, committed_txn) = {
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            let committed = &store.state().participant.committed;
            (committed.text.clone(), committed.txn)
        };
        info!(%txn, %version, %hash, "installed a new topology version");
        let previous = self.committed.take();
        let text: Arc<str> = text.into();
        let parsed = match self.validated.take() {
            Some((validated, topology)) if validated == hash => Some(topology),
            _ => parse_committed(&self.config, &text, version),
        };
        self.status.send_modify(|s| {
            s.text = text.clone();
            s.txn = committed_txn;
            s.topology = parsed.clone();
        });
        let Some(topology) = parsed else {
            self.status.send_modify(|s| {
                s.install = Some(InstallStatus {
                    version,
                    at: SystemTime::now(),
                    result: Err("the installed text does not parse on this node".into()),
                })
            });
            return;
        };
        self.committed = Some(topology.clone());
        let _ = self.installer.send(InstallJob {
            change: Installed {
                txn,
                version,
                hash,
                text,
                topology,
                previous,
            },
            file_error: self
                .file_error
                .take()
                .filter(|(v, _)| *v == version)
                .map(|(_, why)| why),
        });
    }

    /// Installs a newer committed version fetched from a peer, after
    /// checking its text against its hash (a node installs only what some
    /// node installed, so its txn was decided commit).
    fn catch_up(&mut self, committed: Committed, from: &str) {
        let version = committed.version;
        if config_hash(committed.text.as_bytes()) != committed.hash {
            return warn!(%version, %from, "catch-up: the text does not match its hash; ignored");
        }
        match self.participant.catch_up(committed) {
            Ok(()) => {
                info!(%version, %from, "catching up: installing a version committed while this node was away")
            }
            Err(why) => debug!(%version, %from, "catch-up deferred: {why}"),
        }
    }

    fn last(&self, txn: Option<TxnId>, committed: Option<Version>, summary: String) {
        self.last_took(txn, committed, summary, None);
    }

    fn last_took(
        &self,
        txn: Option<TxnId>,
        committed: Option<Version>,
        summary: String,
        took: Option<std::time::Duration>,
    ) {
        self.status.send_modify(|s| {
            s.last = Some(LastApply {
                at: SystemTime::now(),
                txn,
                committed,
                took,
                summary,
            })
        });
    }

    /// The committed version on disk: the participant's in memory may be
    /// ahead while a write is blocked, and only what is on disk is told.
    fn durable(&self) -> (Version, ConfigHash) {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let committed = &store.state().participant.committed;
        (committed.version, committed.hash)
    }

    fn publish(&self) {
        let (version, hash) = self.durable();
        let lock = self.participant.status();
        let coordinating: Vec<TxnId> = self.coordinator.txns().map(|(txn, _)| txn).collect();
        self.status.send_if_modified(|s| {
            let changed = s.version != version
                || s.hash != hash
                || s.lock != lock
                || s.coordinating != coordinating;
            s.version = version;
            s.hash = hash;
            s.lock = lock;
            s.coordinating = coordinating;
            changed
        });
    }
}

/// Parses and validates a proposed text; a topology of another cluster is
/// a problem too.
/// How the API and the logs name a decision log.
pub fn log_name(log: DecisionLog) -> &'static str {
    match log {
        DecisionLog::Replicated => "raft",
        DecisionLog::Coordinator => "coordinator",
    }
}

fn check_text(text: &str, name: &Path, cluster: &str) -> Result<Topology, Diagnostics> {
    let topology = Topology::parse(text, name)?;
    if topology.cluster.value != cluster {
        return Err(Diagnostics::one(Diagnostic::new(
            name,
            Pos::of(&topology.cluster.referenced),
            format!(
                "the topology is for cluster `{}`, this node is in cluster `{cluster}`",
                topology.cluster.value
            ),
        )));
    }
    Ok(topology)
}

/// Runs the roles of each installed version, one version at a time.
async fn install_loop(
    path: PathBuf,
    hooks: Arc<dyn RoleHooks>,
    status: Arc<watch::Sender<ApplyStatus>>,
    mut jobs: mpsc::UnboundedReceiver<InstallJob>,
) {
    while let Some(InstallJob { change, file_error }) = jobs.recv().await {
        let version = change.version;
        let result = match file_error {
            None => hooks.installed(&change).await,
            Some(why) => Err(why),
        };
        match &result {
            Ok(()) => info!(%version, path = %path.display(), "topology version applied"),
            Err(why) => error!(%version, "applying topology version failed: {why}"),
        }
        status.send_modify(|s| {
            s.install = Some(InstallStatus {
                version,
                at: SystemTime::now(),
                result,
            })
        });
    }
}

/// At start: a topology file that holds the text of a version this node's
/// commits replaced is a rewrite the agent did not finish (it was killed
/// between its store and the file, or the file's write failed). Taken for
/// an edit, it would bring that version back as a new one; the committed
/// text goes over it instead. Returns the file's hash if it cannot be
/// rewritten (the trigger must not apply it either).
fn finish_topology_rewrite(
    path: &Path,
    committed: &Committed,
    replaced: &[ConfigHash],
) -> Option<ConfigHash> {
    let version = committed.version;
    let bytes = std::fs::read(path).ok().filter(|_| version > Version(0))?;
    let hash = config_hash(&bytes);
    if hash == committed.hash || !replaced.contains(&hash) {
        return None;
    }
    // The left-over text passed as the version replaced: no copy is kept.
    match write_topology(path, committed.text.as_bytes(), Some(&bytes), version) {
        Ok(_) => {
            warn!(path = %path.display(), %version, "the topology file still held the text of a version that version {version} replaced (the agent stopped, or the file's write failed, before it was rewritten): version {version} is written over it; to bring that text back, save it again while the agent runs");
            None
        }
        Err(why) => {
            error!(path = %path.display(), %version, "the topology file holds the text of a version that version {version} replaced, and cannot be rewritten: {why}; it is not taken for an edit");
            Some(hash)
        }
    }
}

/// The topology file becomes the installed text, byte for byte. A file
/// that is neither the new text nor the version it replaces (the operator
/// edited it on this node) is kept next to it first, as
/// `FILE.before-vN` (returned).
fn write_topology(
    path: &Path,
    new: &[u8],
    previous: Option<&[u8]>,
    version: Version,
) -> Result<Option<PathBuf>, String> {
    let mut kept = None;
    match std::fs::read(path) {
        Ok(old) if old == new => return Ok(None),
        Ok(old) if !old.is_empty() && Some(old.as_slice()) != previous => {
            let mut backup = path.as_os_str().to_owned();
            backup.push(format!(".before-v{version}"));
            let backup = PathBuf::from(backup);
            write_atomic(&backup, &old, 0o644).map_err(|e| {
                format!(
                    "cannot keep a copy at {}: {}",
                    backup.display(),
                    describe(&e)
                )
            })?;
            warn!(path = %path.display(), copy = %backup.display(), %version, "the topology file held an edit that was not committed; version {version} replaces it and the edit is kept in the copy");
            kept = Some(backup);
        }
        _ => {}
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {}", dir.display(), describe(&e)))?;
    }
    write_atomic(path, new, 0o644)
        .map_err(|e| format!("cannot write {}: {}", path.display(), describe(&e)))?;
    Ok(kept)
}
