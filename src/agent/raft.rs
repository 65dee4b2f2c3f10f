//! Wires the Raft driver into the agent: it follows the committed topology
//! of the apply driver, tells this node's roles when it becomes or stops
//! being its replica set's master, and shows the group in `cohort status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{Leaders, LoggedTopology, MasterInfo, NodeState, RaftPeer};
use crate::config::Topology;
use crate::raft::driver::{self, GroupView, RaftHandle, RaftPorts, RaftSettings};
use crate::roles::RoleSet;
use crate::rpc::RpcClient;

use super::apply::{ApplyHandle, BoxFuture, PeerDirectory, ReplicatedLog};
use crate::twophase::{ConfigHash, Decision, TxnId, Version};

/// Starts the driver and the tasks around it.
#[allow(clippy::too_many_arguments)]
pub fn start(
    settings: RaftSettings,
    ports: RaftPorts,
    applies: &ApplyHandle,
    directory: Arc<dyn PeerDirectory>,
    rpc: RpcClient,
    roles: Arc<RoleSet>,
    state: Arc<NodeState>,
) -> RaftHandle {
    let name = settings.name.clone();
    let (topology_tx, topology) = watch::channel(applies.status().topology.clone());
    let mut statuses = applies.watch();
    let routes = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let (version, committed) = {
                let status = statuses.borrow_and_update();
                (status.version.0, status.topology.clone())
            };
            // `/v1/route` maps keys over the committed topology.
            routes.set_committed(version, committed.clone());
            topology_tx.send_if_modified(|have| {
                let changed = !same(have, &committed);
                *have = committed;
                changed
            });
            if statuses.changed().await.is_err() {
                break;
            }
        }
    });
    let (masters_tx, masters) = watch::channel(BTreeMap::new());
    let handle = driver::spawn(
        settings,
        ports,
        topology.clone(),
        directory,
        rpc,
        masters_tx,
    );
    tokio::spawn(tell_roles(name.clone(), masters, topology, roles));
    let mut views = handle.watch();
    tokio::spawn(async move {
        let mut changes = crate::api::RaftChanges::default();
        loop {
            let view = views.borrow_and_update().clone();
            let shown = leaders(&name, &view, false);
            let events = changes.next(&shown);
            state.update(|s| s.raft = Some(shown));
            // `leader-changed`, `master-changed`: the web page lives on them.
            events.into_iter().for_each(|e| state.publish(e));
            if views.changed().await.is_err() {
                break;
            }
        }
    });
    handle
}

fn same(a: &Option<Arc<Topology>>, b: &Option<Arc<Topology>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// 2PC decisions go to the Raft log while the group has a leader.
impl ReplicatedLog for RaftHandle {
    fn available(&self) -> bool {
        self.leader_known()
    }

    fn record(
        &self,
        txn: TxnId,
        decision: Decision,
        installs: Option<(Version, ConfigHash)>,
    ) -> BoxFuture<'_, Result<Decision, String>> {
        Box::pin(self.record_decision(txn, decision, installs))
    }
}

/// Calls the roles' `master_changed` whenever this node becomes or stops
/// being its replica set's master.
async fn tell_roles(
    name: String,
    mut masters: watch::Receiver<BTreeMap<String, String>>,
    topology: watch::Receiver<Option<Arc<Topology>>>,
    roles: Arc<RoleSet>,
) {
    loop {
        let is_master = {
            let masters = masters.borrow_and_update();
            let topology = topology.borrow();
            topology
                .as_ref()
                .and_then(|t| t.node(&name).map(|n| n.replicaset.to_string()))
                .and_then(|set| masters.get(&set).cloned())
                .is_some_and(|master| master == name)
        };
        if is_master != roles.is_master() {
            info!(
                is_master,
                "this node {} its replica set's master",
                if is_master { "became" } else { "is no longer" }
            );
            let report = roles.set_master(is_master).await;
            if let Err(e) = report.result() {
                warn!("telling the roles of the master change: {e}");
            }
        }
        if masters.changed().await.is_err() {
            return;
        }
    }
}

/// The API's form of a node's view.
pub fn leaders(node: &str, view: &GroupView, consistent: bool) -> Leaders {
    let peer = |(id, p): &(crate::raft::NodeId, crate::raft::Peer)| RaftPeer {
        name: p.name.clone(),
        id: id.0,
        addr: p.addr.to_string(),
    };
    let leader = view.leader.map(|leader| {
        view.voters
            .iter()
            .find(|(id, _)| *id == leader)
            .map(peer)
            .unwrap_or(RaftPeer {
                name: String::new(),
                id: leader.0,
                addr: String::new(),
            })
    });
    // By name, for people; ids order them arbitrarily.
    let by_name = |peers: &[(crate::raft::NodeId, crate::raft::Peer)]| {
        let mut list: Vec<RaftPeer> = peers.iter().map(peer).collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    };
    Leaders {
        node: node.to_string(),
        consistent,
        failover_mode: view
            .mode
            .and_then(|m| serde_json::to_value(m).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        role: view.role.clone(),
        term: view.term,
        leader,
        voters: by_name(&view.voters),
        learners: by_name(&view.learners),
        commit_index: view.commit_index,
        applied_index: view.last_applied,
        last_log_index: view.last_log_index,
        masters: view
            .masters
            .iter()
            .map(|(set, m)| {
                (
                    set.clone(),
                    MasterInfo {
                        node: m.node.clone(),
                        generation: m.generation,
                        reason: m.reason.clone(),
                    },
                )
            })
            .collect(),
        topology: view.state.topology.map(|(version, hash)| LoggedTopology {
            version: version.0,
            hash: hash.to_hex(),
        }),
        decisions: view.decisions,
        note: view.note.clone(),
    }
}

/// Where the Raft files of a node live, and how peers reach it.
pub fn settings(
    me: crate::raft::NodeId,
    name: &str,
    data_dir: &std::path::Path,
    advertise: SocketAddr,
) -> RaftSettings {
    RaftSettings {
        me,
        name: name.to_string(),
        dir: data_dir.join("raft"),
        advertise,
    }
}
