//! Whether the cluster is assembled (Cloister's "cluster is up at N
//! nodes"): `assembling` until `cluster_up_at` nodes of the committed
//! topology are alive at once, or until a topology is committed when it
//! sets none; then `up` for the rest of this agent's run. Each node
//! computes it from its own member table; the state shows in the status,
//! goes out as a `cluster-state` event, and the roles hear each change.
//!
//! `up` is sticky: a node that dies later does not take the cluster back
//! to `assembling`. The threshold says when the cluster has first been
//! put together (roles may then start serving); losing a node afterwards
//! is failover's business, and roles flapping between states at every
//! death would turn one failure into many. `alive` keeps counting, so the
//! status still shows how many are there.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{ApiEvent, ClusterStateInfo, MemberInfo, NodeState};
use crate::config::Topology;
use crate::roles::{ClusterState, RoleSet};

/// The cluster state from the committed topology (none before the first
/// commit) and the member table, for the node named `me` (alive, since it
/// runs this). `was` is the state so far: `up` stays `up`.
pub fn compute(
    topology: Option<&Topology>,
    members: &[MemberInfo],
    me: &str,
    was: ClusterState,
) -> ClusterStateInfo {
    let Some(topology) = topology else {
        return ClusterStateInfo {
            state: was,
            alive: 0,
            up_at: None,
            nodes: 0,
        };
    };
    let nodes: BTreeSet<&str> = topology.nodes().map(|n| n.name).collect();
    // By name: a node that came back with a new id (its data dir wiped)
    // is one node, whatever tombstone its old id left.
    let alive: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.status == "alive")
        .map(|m| m.name.as_str())
        .chain(std::iter::once(me))
        .filter(|name| nodes.contains(name))
        .collect();
    let up_at = topology.cluster_up_at();
    let reached = up_at.is_none_or(|n| alive.len() >= n);
    ClusterStateInfo {
        state: if reached { ClusterState::Up } else { was },
        alive: alive.len(),
        up_at,
        nodes: nodes.len(),
    }
}

/// One line for logs and the event's detail: "3 of 3 nodes alive,
/// cluster_up_at 3".
pub fn describe(info: &ClusterStateInfo) -> String {
    let threshold = match info.up_at {
        Some(n) => format!("cluster_up_at {n}"),
        None => "no cluster_up_at: up once a topology is committed".to_string(),
    };
    format!("{} of {} nodes alive, {threshold}", info.alive, info.nodes)
}

/// Keeps the status's cluster state current, publishes each change and
/// tells the roles, until the agent's state is dropped.
pub async fn follow(state: Arc<NodeState>, roles: Arc<RoleSet>, me: String) {
    let mut seen = state.watch_membership();
    let (tell, told) = watch::channel(ClusterState::default());
    // Roles may take their time (an external role's timeout): the status
    // must not wait for them.
    tokio::spawn(tell_roles(told, roles));
    let mut current = ClusterState::default();
    let mut shown: Option<ClusterStateInfo> = None;
    loop {
        let committed = state.committed();
        let members = state
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .clone();
        let now = compute(
            committed.as_ref().map(|c| c.topology.as_ref()),
            &members,
            &me,
            current,
        );
        if shown.as_ref() != Some(&now) {
            state.update(|s| s.cluster_state = Some(now.clone()));
            shown = Some(now.clone());
        }
        if now.state != current {
            current = now.state;
            let detail = describe(&now);
            info!(cluster = %current, "the cluster is {current}: {detail}");
            state.publish(ApiEvent::now(
                "cluster-state",
                current.to_string(),
                None,
                detail,
            ));
            tell.send_replace(current);
        }
        if seen.changed().await.is_err() {
            return;
        }
    }
}

/// Hands every change to the roles, one at a time, the latest first when
/// several came while they were busy.
async fn tell_roles(mut told: watch::Receiver<ClusterState>, roles: Arc<RoleSet>) {
    while told.changed().await.is_ok() {
        let cluster = *told.borrow_and_update();
        if let Err(e) = roles.set_cluster_state(cluster).await.result() {
            warn!("telling the roles that the cluster is {cluster}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn topology(up_at: Option<usize>) -> Topology {
        let mut text = String::from("cluster: c\n");
        if let Some(n) = up_at {
            text.push_str(&format!("cluster_up_at: {n}\n"));
        }
        text.push_str(
            "replicasets:\n  s1:\n    nodes:\n      a: { address: 127.0.0.1:1 }\n      b: { address: 127.0.0.1:2 }\n      c: { address: 127.0.0.1:3 }\n",
        );
        Topology::parse(&text, Path::new("t.yaml")).unwrap()
    }

    fn member(name: &str, status: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            uuid: uuid::Uuid::nil(),
            address: "127.0.0.1:1".into(),
            status: status.into(),
            generation: 1,
            version: 0,
            replicaset: None,
            roles: Vec::new(),
            since_ms: 0,
        }
    }

    #[test]
    fn assembling_until_up_at_topology_nodes_are_alive() {
        let t = topology(Some(3));
        let members = [
            member("a", "alive"),
            member("b", "alive"),
            member("c", "dead"),
            member("stranger", "alive"),
        ];
        let info = compute(Some(&t), &members, "a", ClusterState::Assembling);
        assert_eq!(info.state, ClusterState::Assembling);
        assert_eq!((info.alive, info.up_at, info.nodes), (2, Some(3), 3));
        assert_eq!(describe(&info), "2 of 3 nodes alive, cluster_up_at 3");

        let members = [member("b", "alive"), member("c", "alive")];
        // The node itself counts, listed or not.
        let info = compute(Some(&t), &members, "a", ClusterState::Assembling);
        assert_eq!((info.state, info.alive), (ClusterState::Up, 3));
    }

    #[test]
    fn up_is_sticky_and_alive_keeps_counting() {
        let t = topology(Some(3));
        let members = [member("b", "dead"), member("c", "left")];
        let info = compute(Some(&t), &members, "a", ClusterState::Up);
        assert_eq!((info.state, info.alive), (ClusterState::Up, 1));
    }

    #[test]
    fn a_node_counts_once_whatever_its_old_lives_left() {
        let t = topology(Some(3));
        let members = [
            member("b", "dead"),
            member("b", "alive"),
            member("b", "alive"),
        ];
        let info = compute(Some(&t), &members, "a", ClusterState::Assembling);
        assert_eq!((info.state, info.alive), (ClusterState::Assembling, 2));
    }

    #[test]
    fn without_cluster_up_at_up_once_a_topology_is_committed() {
        let info = compute(None, &[], "a", ClusterState::Assembling);
        assert_eq!(info.state, ClusterState::Assembling);
        assert_eq!((info.alive, info.up_at, info.nodes), (0, None, 0));
        let t = topology(None);
        let info = compute(Some(&t), &[], "a", ClusterState::Assembling);
        assert_eq!(
            (info.state, info.alive, info.up_at),
            (ClusterState::Up, 1, None)
        );
        assert_eq!(
            describe(&info),
            "1 of 3 nodes alive, no cluster_up_at: up once a topology is committed"
        );
    }

    #[test]
    fn a_node_outside_the_topology_does_not_count_itself() {
        let t = topology(Some(1));
        let info = compute(Some(&t), &[], "outsider", ClusterState::Assembling);
        assert_eq!((info.state, info.alive), (ClusterState::Assembling, 0));
    }
}
