//! The topology (`topology.yaml`): the cluster's desired shape — replica
//! sets, their nodes and roles, failover, expelled nodes and role settings.
//! The model keeps where each name and value stands in the file, so that
//! every semantic check can point at the exact key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::diagnostic::{suggestion, Diagnostics, Pos, Report};
use super::duration::HumanDuration;
use super::node::parse_socket_addr;
use super::yaml::{self, pos, OrderedMap};
use super::{is_valid_name, ConfigError, NAME_RULE};

/// Roles compiled into the agent. `storage` and `router` carry no behaviour
/// of their own yet: they name what a replica set is for and take part in
/// dependency order and master changes like any role.
pub const BUILTIN_ROLES: &[&str] = &["http", "router", "storage"];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub cluster: Spanned<String>,
    #[serde(default)]
    pub failover: Failover,
    pub replicasets: Spanned<OrderedMap<ReplicaSet>>,
    #[serde(default)]
    pub expelled: Vec<Spanned<String>>,
    #[serde(default)]
    pub roles: OrderedMap<RoleSpec>,
    /// How many nodes of this topology must be alive at once before the
    /// cluster is `up` (until then each node reports `assembling`); absent,
    /// the cluster is up as soon as a topology is committed.
    #[serde(default)]
    pub cluster_up_at: Option<Spanned<UpAt>>,
    /// Each node's place, by name: (replica set, node) indices, built by
    /// `parse`. Looked up per member in loops over the members (who is in
    /// the Raft group), where a scan of the sets made each loop N².
    #[serde(skip)]
    index: HashMap<String, (usize, usize)>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    #[serde(default = "default_failover_mode")]
    pub mode: Spanned<FailoverMode>,
    #[serde(default = "default_election_timeout")]
    pub election_timeout: Spanned<HumanDuration>,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            mode: default_failover_mode(),
            election_timeout: default_election_timeout(),
        }
    }
}

fn default_failover_mode() -> Spanned<FailoverMode> {
    unplaced(FailoverMode::default())
}

fn default_election_timeout() -> Spanned<HumanDuration> {
    unplaced(HumanDuration::from_secs(1))
}

fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// Who moves a replica set's master when it dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// Masters are the first of `failover_priority` and never move.
    #[default]
    Disabled,
    /// Each node picks the first alive by priority from gossip (no consensus).
    Eventual,
    /// The Raft leader appoints masters through the replicated log.
    Raft,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSet {
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    #[serde(default)]
    pub failover_priority: Vec<Spanned<String>>,
    pub nodes: Spanned<OrderedMap<NodeSpec>>,
    /// The set's share of the keys `cohort route` maps to replica sets
    /// (weighted rendezvous hashing); 1 when absent, 0 takes the set out of
    /// routing.
    #[serde(default)]
    pub weight: Option<Spanned<Weight>>,
}

impl ReplicaSet {
    /// The routing weight: 1 unless the topology says otherwise.
    pub fn weight(&self) -> f64 {
        self.weight.as_ref().map_or(1.0, |w| w.value.0)
    }
}

/// A replica set's routing weight: a finite number, 0 or more.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weight(pub f64);

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const RULE: &str = "a number from 0 up (1 when absent; 0 takes the set out of routing)";
        let n = f64::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("weight must be {RULE}")))?;
        if n.is_finite() && n >= 0.0 {
            Ok(Weight(n))
        } else {
            Err(serde::de::Error::custom(format!(
                "weight {n} is invalid: use {RULE}"
            )))
        }
    }
}

/// `cluster_up_at`: a number of nodes, 1 or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpAt(pub usize);

impl<'de> Deserialize<'de> for UpAt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const RULE: &str =
            "a whole number of nodes from 1 up (how many must be alive for the cluster to be up)";
        let n = i64::deserialize(d)
            .map_err(|_| serde::de::Error::custom(format!("cluster_up_at must be {RULE}")))?;
        match usize::try_from(n) {
            Ok(n) if n >= 1 => Ok(UpAt(n)),
            _ => Err(serde::de::Error::custom(format!(
                "cluster_up_at {n} is invalid: use {RULE}"
            ))),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub address: Spanned<Address>,
    #[serde(default)]
    pub election: Election,
}

/// A node's place in the Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Election {
    /// May become the cluster leader.
    Candidate,
    /// Votes, never leads.
    Voter,
    /// Outside the group; learns the state from the leader.
    #[default]
    Off,
}

/// A role's settings under `roles:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// An external role: the executable called with validate/apply/stop.
    pub exec: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub depends: Vec<Spanned<String>>,
    /// How long one call of an external role may take.
    pub timeout: Option<Spanned<HumanDuration>>,
    /// The `http` role: the port of each node; `null` switches it off.
    pub listen: Option<OrderedMap<Option<Spanned<Port>>>>,
    /// Free-form settings handed to the role.
    pub config: Option<serde_json::Value>,
}

/// `ip:port` of a node, with a message an operator understands when wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Address(pub SocketAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_socket_addr(&text)
            .map(Address)
            .map_err(|e| serde::de::Error::custom(format!("address {e}")))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A TCP/UDP port, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        match u16::try_from(n) {
            Ok(p) if p > 0 => Ok(Port(p)),
            _ => Err(serde::de::Error::custom(format!(
                "port {n} is out of range 1-65535"
            ))),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One node as the rest of the agent sees it.
#[derive(Clone, Copy, Debug)]
pub struct NodeRef<'t> {
    pub name: &'t str,
    pub replicaset: &'t str,
    pub spec: &'t NodeSpec,
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let text = super::read_file(path)?;
        Ok(Topology::parse(&text, path)?)
    }

    /// Parses and validates topology text. `file` names it in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Topology, Diagnostics> {
        let mut topology: Topology = yaml::parse(text, file).map_err(Diagnostics::one)?;
        // Before validating, which looks nodes up. A name in two sets (which
        // validation refuses) is found in the first.
        for (s, (_, rs)) in topology.replicasets.value.0.iter().enumerate() {
            for (n, (name, _)) in rs.nodes.value.0.iter().enumerate() {
                topology.index.entry(name.value.clone()).or_insert((s, n));
            }
        }
        topology.validate(file)?;
        Ok(topology)
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeRef<'_>> {
        self.replicasets.value.iter().flat_map(|(set, rs)| {
            rs.nodes.value.iter().map(move |(name, spec)| NodeRef {
                name: &name.value,
                replicaset: &set.value,
                spec,
            })
        })
    }

    pub fn node(&self, name: &str) -> Option<NodeRef<'_>> {
        let &(s, n) = self.index.get(name)?;
        let (set, rs) = self.replicasets.value.0.get(s)?;
        let (name, spec) = rs.nodes.value.0.get(n)?;
        Some(NodeRef {
            name: &name.value,
            replicaset: &set.value,
            spec,
        })
    }

    pub fn election_timeout(&self) -> Duration {
        self.failover.election_timeout.value.0
    }

    /// How many of its nodes must be alive for the cluster to be up; none
    /// when the topology does not say (up once committed).
    pub fn cluster_up_at(&self) -> Option<usize> {
        self.cluster_up_at.as_ref().map(|n| n.value.0)
    }

    fn validate(&self, file: &Path) -> Result<(), Diagnostics> {
        let mut report = Report::new(file);
        if !is_valid_name(&self.cluster.value) {
            report.error(
                pos(&self.cluster),
                format!(
                    "cluster name `{}` is invalid: {NAME_RULE}",
                    self.cluster.value
                ),
            );
        }
        self.check_replicasets(&mut report);
        self.check_failover(&mut report);
        self.check_roles(&mut report);
        self.check_cluster_up_at(&mut report);
        report.finish()
    }

    fn check_cluster_up_at(&self, report: &mut Report<'_>) {
        let Some(up_at) = &self.cluster_up_at else {
            return;
        };
        let nodes = self.nodes().count();
        if up_at.value.0 > nodes {
            report.error(
                pos(up_at),
                format!(
                    "cluster_up_at {} is more than the {nodes} node{} of this topology: the cluster could never be up",
                    up_at.value.0,
                    if nodes == 1 { "" } else { "s" }
                ),
            );
        }
    }

    fn check_replicasets(&self, report: &mut Report<'_>) {
        if self.replicasets.value.is_empty() {
            report.error(
                pos(&self.replicasets),
                "replicasets: at least one replica set with one node is needed",
            );
        }
        // name -> replica set it was first seen in; address -> node.
        let mut seen_nodes: HashMap<&str, &str> = HashMap::new();
        let mut seen_addresses: HashMap<SocketAddr, &str> = HashMap::new();
        let expelled: HashMap<&str, Pos> = self
            .expelled
            .iter()
            .map(|e| (e.value.as_str(), pos(e)))
            .collect();

        for (set_name, set) in self.replicasets.value.iter() {
            if !is_valid_name(&set_name.value) {
                report.error(
                    pos(set_name),
                    format!(
                        "replica set name `{}` is invalid: {NAME_RULE}",
                        set_name.value
                    ),
                );
            }
            if set.nodes.value.is_empty() {
                report.error(
                    pos(&set.nodes),
                    format!("replica set `{}` has no nodes", set_name.value),
                );
            }
            for (node_name, spec) in set.nodes.value.iter() {
                let name = node_name.value.as_str();
                if !is_valid_name(name) {
                    report.error(
                        pos(node_name),
                        format!("node name `{name}` is invalid: {NAME_RULE}"),
                    );
                }
                if let Some(first_set) = seen_nodes.insert(name, &set_name.value) {
                    report.error(
                        pos(node_name),
                        format!(
                            "node `{name}` is already in replica set `{first_set}`; a node belongs to exactly one replica set"
                        ),
                    );
                }
                if expelled.contains_key(name) {
                    report.error(
                        pos(node_name),
                        format!("node `{name}` is expelled but still listed in replica set `{}`; remove it from one of them", set_name.value),
                    );
                }
                let address = spec.address.value.0;
                if let Some(other) = seen_addresses.insert(address, name) {
                    report.error(
                        pos(&spec.address),
                        format!("address {address} is already used by node `{other}`"),
                    );
                }
            }
            let mut priority_seen: Vec<&str> = Vec::new();
            for entry in &set.failover_priority {
                let name = entry.value.as_str();
                if !set.nodes.value.contains_key(name) {
                    report.error(
                        pos(entry),
                        format!(
                            "failover_priority: `{name}` is not a node of replica set `{}`{}",
                            set_name.value,
                            suggestion(name, set.nodes.value.keys())
                        ),
                    );
                } else if priority_seen.contains(&name) {
                    report.error(
                        pos(entry),
                        format!("failover_priority: `{name}` is listed twice"),
                    );
                }
                priority_seen.push(name);
            }
        }
        let weights: Vec<&Spanned<Weight>> = self
            .replicasets
            .value
            .iter()
            .filter_map(|(_, set)| set.weight.as_ref())
            .collect();
        let all_zero = self
            .replicasets
            .value
            .iter()
            .all(|(_, set)| set.weight() == 0.0);
        if let (true, Some(first)) = (all_zero, weights.first()) {
            report.error(
                pos(first),
                "every replica set has weight 0: routing would have no set for any key; give at least one a weight above 0",
            );
        }
    }

    fn check_failover(&self, report: &mut Report<'_>) {
        let has_candidate = self.nodes().any(|n| n.spec.election == Election::Candidate);
        if self.failover.mode.value == FailoverMode::Raft && !has_candidate {
            report.error(
                pos(&self.failover.mode),
                "failover mode `raft` needs at least one node with `election: candidate`",
            );
        }
        if self.failover.election_timeout.value.0 < Duration::from_millis(50) {
            report.error(
                pos(&self.failover.election_timeout),
                format!(
                    "failover.election_timeout {} is too short: use at least 50ms",
                    self.failover.election_timeout.value
                ),
            );
        }
    }

    fn check_roles(&self, report: &mut Report<'_>) {
        let known = |name: &str| BUILTIN_ROLES.contains(&name) || self.roles.contains_key(name);
        let all_names = || BUILTIN_ROLES.iter().copied().chain(self.roles.keys());

        for (role, spec) in self.roles.iter() {
            let name = role.value.as_str();
            let builtin = BUILTIN_ROLES.contains(&name);
            if !is_valid_name(name) {
                report.error(
                    pos(role),
                    format!("role name `{name}` is invalid: {NAME_RULE}"),
                );
            }
            match (&spec.exec, builtin) {
                (Some(exec), true) => report.error(
                    pos(exec),
                    format!("role `{name}` is built in and takes no `exec`"),
                ),
                (None, false) => report.error(
                    pos(role),
                    format!(
                        "role `{name}` is not built in ({}), so it needs `exec: /path/to/executable`{}",
                        BUILTIN_ROLES.join(", "),
                        suggestion(name, BUILTIN_ROLES.iter().copied())
                    ),
                ),
                (Some(exec), false) if !exec.value.is_absolute() => report.error(
                    pos(exec),
                    format!("exec: `{}` must be an absolute path", exec.value.display()),
                ),
                _ => {}
            }
            for dep in &spec.depends {
                if !known(&dep.value) {
                    report.error(
                        pos(dep),
                        format!(
                            "role `{name}` depends on unknown role `{}`{}",
                            dep.value,
                            suggestion(&dep.value, all_names())
                        ),
                    );
                } else if dep.value == name {
                    report.error(pos(dep), format!("role `{name}` depends on itself"));
                }
            }
            if let Some(listen) = &spec.listen {
                if name != "http" {
                    report.error(
                        pos(role),
                        format!("role `{name}`: only the `http` role takes `listen`"),
                    );
                }
                self.check_listen(listen, report);
            }
        }
        self.check_dependency_cycles(report);

        for (_, set) in self.replicasets.value.iter() {
            for role in &set.roles {
                if !known(&role.value) {
                    report.error(
                        pos(role),
                        format!(
                            "unknown role `{}`: not built in ({}) and not defined under `roles:` with an `exec` path{}",
                            role.value,
                            BUILTIN_ROLES.join(", "),
                            suggestion(&role.value, all_names())
                        ),
                    );
                }
            }
        }
    }

    fn check_listen(&self, listen: &OrderedMap<Option<Spanned<Port>>>, report: &mut Report<'_>) {
        // (host, port) -> node that took it first.
        let mut taken: HashMap<(std::net::IpAddr, Port), &str> = HashMap::new();
        for (node, port) in listen.iter() {
            let Some(node_ref) = self.node(&node.value) else {
                report.error(
                    pos(node),
                    format!(
                        "roles.http.listen: `{}` is not a node of this topology{}",
                        node.value,
                        suggestion(&node.value, self.nodes().map(|n| n.name))
                    ),
                );
                continue;
            };
            let Some(port) = port else { continue };
            let host = node_ref.spec.address.value.0.ip();
            if let Some(other) = taken.insert((host, port.value), &node.value) {
                report.error(
                    pos(port),
                    format!(
                        "roles.http.listen: port {} on host {host} is already taken by node `{other}`",
                        port.value
                    ),
                );
            }
        }
    }

    /// Reports each dependency cycle once, naming its roles in order.
    fn check_dependency_cycles(&self, report: &mut Report<'_>) {
        let edges: BTreeMap<&str, Vec<&str>> = self
            .roles
            .iter()
            .map(|(r, s)| {
                (
                    r.value.as_str(),
                    s.depends
                        .iter()
                        .map(|d| d.value.as_str())
                        .filter(|d| *d != r.value)
                        .collect(),
                )
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: HashMap<&str, Mark> = HashMap::new();

        fn visit<'a>(
            role: &'a str,
            edges: &BTreeMap<&'a str, Vec<&'a str>>,
            marks: &mut HashMap<&'a str, Mark>,
            path: &mut Vec<&'a str>,
            cycles: &mut Vec<Vec<&'a str>>,
        ) {
            match marks.get(role) {
                Some(Mark::Done) => return,
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|r| *r == role).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(role);
                    cycles.push(cycle);
                    return;
                }
                None => {}
            }
            marks.insert(role, Mark::Visiting);
            path.push(role);
            for dep in edges.get(role).into_iter().flatten() {
                visit(dep, edges, marks, path, cycles);
            }
            path.pop();
            marks.insert(role, Mark::Done);
        }

        // Walk in file order so the same file always names the same cycle.
        for (role, _) in self.roles.iter() {
            let mut cycles = Vec::new();
            visit(
                &role.value,
                &edges,
                &mut marks,
                &mut Vec::new(),
                &mut cycles,
            );
            for cycle in cycles {
                let first = cycle[0];
                let at = self
                    .roles
                    .iter()
                    .find(|(r, _)| r.value == first)
                    .map_or(Pos::START, |(r, _)| pos(r));
                report.error(at, format!("role dependency cycle: {}", cycle.join(" -> ")));
            }
        }
    }
}
