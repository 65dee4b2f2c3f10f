//! The roles one node runs: exactly those its replica set's `roles:` name,
//! plus their dependencies. Validates a proposed topology with every role
//! that would run under it; applies one by starting what is added (after
//! its dependencies), applying what stays and stopping what is removed
//! (before what it depends on).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::Topology;
use crate::twophase::Version;

use super::order::{plan, PlanError};
use super::registry::Registry;
use super::{ClusterState, Role, RoleContext, RoleResult};

/// Who this node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's name in the topology.
    pub name: String,
    pub uuid: Uuid,
}

/// What the set did to one role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleAction {
    /// `init`; `apply_config` follows as its own step.
    Start,
    Apply,
    MasterChange,
    ClusterStateChange,
    Stop,
}

impl fmt::Display for RoleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleAction::Start => "start",
            RoleAction::Apply => "apply",
            RoleAction::MasterChange => "master change",
            RoleAction::ClusterStateChange => "cluster state change",
            RoleAction::Stop => "stop",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleStep {
    pub role: String,
    pub action: RoleAction,
    pub result: RoleResult,
}

/// Every step of an apply (or a master change, or a stop), in the order
/// they ran. Failures are reported here, never rolled back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub steps: Vec<RoleStep>,
    /// The roles could not be ordered: nothing ran.
    pub plan_error: Option<PlanError>,
}

impl ApplyReport {
    pub fn is_ok(&self) -> bool {
        self.plan_error.is_none() && self.steps.iter().all(|s| s.result.is_ok())
    }

    pub fn failures(&self) -> impl Iterator<Item = &RoleStep> {
        self.steps.iter().filter(|s| s.result.is_err())
    }

    /// Ok, or every failure on one line: ``role `http` apply: why; …``.
    pub fn result(&self) -> Result<(), String> {
        let mut problems: Vec<String> = self.plan_error.iter().map(|e| e.to_string()).collect();
        problems.extend(self.failures().map(|s| {
            let why = s.result.as_ref().err().map_or("", String::as_str);
            format!("role `{}` {}: {why}", s.role, s.action)
        }));
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleFailure {
    pub role: String,
    pub reason: String,
}

/// Why this node's roles refuse a topology: every role's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.failures.iter().map(|f| format!("role `{}`: {}", f.role, f.reason)).collect::<Vec<_>>().join("; "))]
pub struct ValidationError {
    pub failures: Vec<RoleFailure>,
}

/// The roles of one node. Calls are serialised: an apply, a validation, a
/// master change or a stop runs alone, so calls on one role never overlap.
pub struct RoleSet {
    identity: NodeIdentity,
    registry: Registry,
    master: watch::Sender<bool>,
    cluster: watch::Sender<ClusterState>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// One instance per role name ever planned, running or not.
    instances: BTreeMap<String, Arc<dyn Role>>,
    /// Running roles in start order.
    running: Vec<String>,
    applied: Option<Arc<Topology>>,
    replicaset: String,
    version: Option<Version>,
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleSet")
            .field("identity", &self.identity)
            .field("registry", &self.registry)
            .field("is_master", &*self.master.borrow())
            .finish_non_exhaustive()
    }
}

impl RoleSet {
    /// A set running nothing until the first `apply`.
    pub fn new(identity: NodeIdentity, registry: Registry, is_master: bool) -> RoleSet {
        RoleSet {
            identity,
            registry,
            master: watch::Sender::new(is_master),
            cluster: watch::Sender::new(ClusterState::default()),
            state: Mutex::new(State::default()),
        }
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub fn is_master(&self) -> bool {
        *self.master.borrow()
    }

    pub fn watch_master(&self) -> watch::Receiver<bool> {
        self.master.subscribe()
    }

    /// The running roles, in start order.
    pub async fn running(&self) -> Vec<String> {
        self.state.lock().await.running.clone()
    }

    /// The last topology applied.
    pub async fn applied(&self) -> Option<Arc<Topology>> {
        self.state.lock().await.applied.clone()
    }

    /// The roles this node would run under `topology`, in start order.
    pub async fn plan(&self, topology: &Topology) -> Result<Vec<String>, PlanError> {
        let mut state = self.state.lock().await;
        self.plan_locked(&mut state, topology)
    }

    /// Asks every role that would run under `new` whether it accepts the
    /// change from `old` (the committed topology; none before the first).
    /// Changes nothing. All the roles are asked at once; every refusal is
    /// returned.
    pub async fn validate_all(
        &self,
        new: &Topology,
        old: Option<&Topology>,
        version: Option<Version>,
    ) -> Result<(), ValidationError> {
        let mut state = self.state.lock().await;
        let roles = self
            .plan_locked(&mut state, new)
            .map_err(|e| ValidationError {
                failures: vec![RoleFailure {
                    role: e.role().to_string(),
                    reason: e.to_string(),
                }],
            })?;
        let replicaset = self.replicaset_in(new, &state);
        let checks = roles.iter().map(|name| {
            let role = state.instances.get(name).cloned();
            let ctx = self.context(&replicaset, name, version);
            async move {
                let result = match role {
                    Some(role) => role.validate_config(&ctx, new, old).await,
                    None => Err("the role could not be made".to_string()),
                };
                (ctx.role, result)
            }
        });
        // The roles are asked without the lock: a slow external validate
        // must not hold up a stop (or an install of another version).
        let checks: Vec<_> = checks.collect();
        drop(state);
        let failures: Vec<RoleFailure> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|(role, result)| result.err().map(|reason| RoleFailure { role, reason }))
            .collect();
        for failure in &failures {
            info!(role = %failure.role, "the role refuses the change: {}", failure.reason);
        }
        match failures.is_empty() {
            true => Ok(()),
            false => Err(ValidationError { failures }),
        }
    }

    /// Makes `new` the node's topology: stops the roles it no longer runs
    /// (in reverse start order), then in dependency order starts the added
    /// ones (`init`, then `apply_config`) and applies the rest. A role whose
    /// dependency did not start is not started. Nothing is rolled back.
    pub async fn apply(&self, new: Arc<Topology>, version: Option<Version>) -> ApplyReport {
        let mut state = self.state.lock().await;
        let mut report = ApplyReport::default();
        let roles = match self.plan_locked(&mut state, &new) {
            Ok(roles) => roles,
            Err(e) => {
                warn!("cannot apply the topology's roles: {e}");
                report.plan_error = Some(e);
                return report;
            }
        };
        let old = state.applied.clone();

        let removed: Vec<String> = state
            .running
            .iter()
            .rev()
            .filter(|r| !roles.contains(r))
            .cloned()
            .collect();
        for name in removed {
            let result = match state.instances.get(&name).cloned() {
                Some(role) => {
                    let ctx = self.context(&state.replicaset, &name, state.version);
                    role.stop(&ctx).await
                }
                None => Ok(()),
            };
            state.running.retain(|r| *r != name);
            report.step(name, RoleAction::Stop, result);
        }

        state.replicaset = self.replicaset_in(&new, &state);
        state.version = version;
        let mut not_started: BTreeSet<String> = BTreeSet::new();
        for name in &roles {
            let Some(role) = state.instances.get(name).cloned() else {
                continue; // planned roles always have an instance
            };
            let ctx = self.context(&state.replicaset, name, version);
            if !state.running.contains(name) {
                let needs = dependencies(&new, name, role.as_ref());
                if let Some(dep) = needs.iter().find(|d| !state.running.contains(*d)) {
                    not_started.insert(name.clone());
                    let why = format!("not started: it needs `{dep}`, which did not start");
                    report.step(name.clone(), RoleAction::Start, Err(why));
                    continue;
                }
                let started = role.init(&ctx).await;
                let ok = started.is_ok();
                report.step(name.clone(), RoleAction::Start, started);
                if !ok {
                    not_started.insert(name.clone());
                    continue;
                }
                state.running.push(name.clone());
            }
            let applied = role.apply_config(&ctx, &new, old.as_deref()).await;
            report.step(name.clone(), RoleAction::Apply, applied);
        }
        let running: BTreeSet<String> = state.running.drain(..).collect();
        state.running = roles.into_iter().filter(|r| running.contains(r)).collect();
        state.applied = Some(new);
        report
    }

    /// Records whether this node is its replica set's master; on a change,
    /// every running role hears it, in start order.
    pub async fn set_master(&self, is_master: bool) -> ApplyReport {
        let state = self.state.lock().await;
        let mut report = ApplyReport::default();
        let changed = self.master.send_if_modified(|current| {
            let changed = *current != is_master;
            *current = is_master;
            changed
        });
        if !changed {
            return report;
        }
        info!(is_master, "master state changed");
        for name in &state.running {
            if let Some(role) = state.instances.get(name) {
                let ctx = self.context(&state.replicaset, name, state.version);
                let result = role.master_changed(&ctx).await;
                report.step(name.clone(), RoleAction::MasterChange, result);
            }
        }
        report
    }

    /// Whether the cluster is up, as the roles were last told.
    pub fn cluster_state(&self) -> ClusterState {
        *self.cluster.borrow()
    }

    /// Records the cluster's state; on a change, every running role hears
    /// it, in start order. A role started later reads it from its context.
    pub async fn set_cluster_state(&self, cluster: ClusterState) -> ApplyReport {
        let state = self.state.lock().await;
        let mut report = ApplyReport::default();
        if !self.cluster.send_if_modified(|current| {
            let changed = *current != cluster;
            *current = cluster;
            changed
        }) {
            return report;
        }
        info!(cluster = %cluster, "cluster state changed");
        for name in &state.running {
            if let Some(role) = state.instances.get(name) {
                let ctx = self.context(&state.replicaset, name, state.version);
                let result = role.cluster_state_changed(&ctx).await;
                report.step(name.clone(), RoleAction::ClusterStateChange, result);
            }
        }
        report
    }

    /// Stops every running role, in reverse start order.
    pub async fn stop_all(&self) -> ApplyReport {
        let mut state = self.state.lock().await;
        let mut report = ApplyReport::default();
        while let Some(name) = state.running.pop() {
            if let Some(role) = state.instances.get(&name).cloned() {
                let ctx = self.context(&state.replicaset, &name, state.version);
                let result = role.stop(&ctx).await;
                report.step(name, RoleAction::Stop, result);
            }
        }
        report
    }

    fn context(&self, replicaset: &str, role: &str, version: Option<Version>) -> RoleContext {
        RoleContext::new(
            &self.identity,
            replicaset,
            role,
            version,
            self.master.subscribe(),
        )
        .with_cluster_state(self.cluster.subscribe())
    }

    fn replicaset_in(&self, topology: &Topology, state: &State) -> String {
        topology
            .node(&self.identity.name)
            .map_or_else(|| state.replicaset.clone(), |n| n.replicaset.to_string())
    }

    /// Plans, making an instance of every role the plan meets.
    fn plan_locked(
        &self,
        state: &mut State,
        topology: &Topology,
    ) -> Result<Vec<String>, PlanError> {
        let instances = RefCell::new(&mut state.instances);
        let known = |name: &str| {
            let mut instances = instances.borrow_mut();
            if let Some(role) = instances.get(name) {
                return Some(role.dependencies());
            }
            let role = self.registry.create(name, topology)?;
            let deps = role.dependencies();
            instances.insert(name.to_string(), role);
            Some(deps)
        };
        plan(topology, &self.identity.name, &known)
    }
}

impl ApplyReport {
    fn step(&mut self, role: String, action: RoleAction, result: RoleResult) {
        match &result {
            Ok(()) => debug!(role = %role, %action, "role step done"),
            Err(why) => warn!(role = %role, %action, "role step failed: {why}"),
        }
        self.steps.push(RoleStep {
            role,
            action,
            result,
        });
    }
}

/// A role's direct dependencies: the topology's `depends:` and its own.
fn dependencies(topology: &Topology, name: &str, role: &dyn Role) -> Vec<String> {
    let mut deps: Vec<String> = topology
        .roles
        .get(name)
        .map(|spec| spec.depends.iter().map(|d| d.value.clone()).collect())
        .unwrap_or_default();
    deps.extend(role.dependencies());
    deps
}
