//! What applying a topology would change, against the committed one: for
//! `cohort topology diff` and for people reading an apply. Everything is
//! matched by name, so comments, key order and YAML style never show up.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;
use serde_saphyr::Spanned;

use super::duration::HumanDuration;
use super::topology::{Election, Failover, FailoverMode, NodeRef, ReplicaSet, RoleSpec, Topology};

/// Every difference between two topologies, each list in topology order
/// (the new file's, or the old one's for what was removed).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TopologyDiff {
    /// `from` is `None` on the first apply.
    pub cluster: Option<Change<Option<String>>>,
    pub failover_mode: Option<Change<FailoverMode>>,
    pub election_timeout: Option<Change<HumanDuration>>,
    /// `None` in a change: the field is absent.
    pub cluster_up_at: Option<Change<Option<usize>>>,
    pub replicasets_added: Vec<ReplicaSetInfo>,
    pub replicasets_removed: Vec<ReplicaSetInfo>,
    pub nodes_added: Vec<NodeInfo>,
    pub nodes_changed: Vec<NodeChange>,
    pub nodes_removed: Vec<NodeInfo>,
    pub expelled: Vec<String>,
    pub unexpelled: Vec<String>,
    /// Roles a replica set (present in both) starts or stops running.
    pub roles_added: Vec<RoleAssignment>,
    pub roles_removed: Vec<RoleAssignment>,
    pub failover_priority_changed: Vec<PriorityChange>,
    /// Routing weights of replica sets present in both (1 when absent).
    pub weights_changed: Vec<WeightChange>,
    /// `roles.http.listen`, for nodes of the new topology.
    pub ports_changed: Vec<PortChange>,
    pub role_settings_added: Vec<String>,
    pub role_settings_changed: Vec<RoleSettingsChange>,
    pub role_settings_removed: Vec<String>,
}

/// A value before and after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change<T> {
    pub from: T,
    pub to: T,
}

impl<T: PartialEq> Change<T> {
    fn of(from: T, to: T) -> Option<Change<T>> {
        (from != to).then_some(Change { from, to })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaSetInfo {
    pub name: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub replicaset: String,
    pub address: SocketAddr,
    pub election: Election,
}

/// A node kept by name whose place or settings differ.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeChange {
    pub name: String,
    pub replicaset: Option<Change<String>>,
    pub address: Option<Change<SocketAddr>>,
    pub election: Option<Change<Election>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleAssignment {
    pub replicaset: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightChange {
    pub replicaset: String,
    pub from: f64,
    pub to: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorityChange {
    pub replicaset: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortChange {
    pub node: String,
    pub from: HttpPort,
    pub to: HttpPort,
}

/// A node's entry under `roles.http.listen`. No entry and `null` differ:
/// the http role leaves a node without an entry as it is, and stops the
/// server of a node whose entry is `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpPort {
    Unset,
    Off,
    Port(u16),
}

/// Only what differs is `Some`. `listen` is left out: see `ports_changed`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleSettingsChange {
    pub role: String,
    pub exec: Option<Change<Option<PathBuf>>>,
    pub depends: Option<Change<Vec<String>>>,
    pub timeout: Option<Change<Option<HumanDuration>>>,
    pub config: Option<Change<Option<serde_json::Value>>>,
}

impl TopologyDiff {
    /// `old` is None before the first apply (everything is added).
    pub fn between(old: Option<&Topology>, new: &Topology) -> TopologyDiff {
        let default_failover = Failover::default();
        let old_failover = old.map_or(&default_failover, |t| &t.failover);
        let old_nodes: HashMap<&str, NodeRef<'_>> = old
            .into_iter()
            .flat_map(Topology::nodes)
            .map(|n| (n.name, n))
            .collect();
        let new_nodes: HashMap<&str, NodeRef<'_>> = new.nodes().map(|n| (n.name, n)).collect();
        let old_sets: HashMap<&str, &ReplicaSet> = sets(old).collect();
        let old_roles: HashMap<&str, &RoleSpec> = role_specs(old).collect();
        let old_expelled = old.map_or_else(Vec::new, |t| names(&t.expelled));
        let new_expelled = names(&new.expelled);

        let mut diff = TopologyDiff {
            cluster: Change::of(
                old.map(|t| t.cluster.value.clone()),
                Some(new.cluster.value.clone()),
            ),
            failover_mode: Change::of(old_failover.mode.value, new.failover.mode.value),
            election_timeout: Change::of(
                old_failover.election_timeout.value,
                new.failover.election_timeout.value,
            ),
            cluster_up_at: Change::of(old.and_then(Topology::cluster_up_at), new.cluster_up_at()),
            replicasets_added: sets(Some(new))
                .filter(|(name, _)| !old_sets.contains_key(name))
                .map(set_info)
                .collect(),
            replicasets_removed: sets(old)
                .filter(|(name, _)| !new.replicasets.value.contains_key(name))
                .map(set_info)
                .collect(),
            nodes_added: new
                .nodes()
                .filter(|n| !old_nodes.contains_key(n.name))
                .map(node_info)
                .collect(),
            nodes_removed: old
                .into_iter()
                .flat_map(Topology::nodes)
                .filter(|n| !new_nodes.contains_key(n.name))
                .map(node_info)
                .collect(),
            expelled: missing_from(&new_expelled, &old_expelled),
            unexpelled: missing_from(&old_expelled, &new_expelled),
            role_settings_added: role_specs(Some(new))
                .filter(|(name, _)| !old_roles.contains_key(name))
                .map(|(name, _)| name.to_string())
                .collect(),
            role_settings_removed: role_specs(old)
                .filter(|(name, _)| !new.roles.contains_key(name))
                .map(|(name, _)| name.to_string())
                .collect(),
            ..TopologyDiff::default()
        };

        for node in new.nodes() {
            if let Some(was) = old_nodes.get(node.name) {
                let change = NodeChange {
                    name: node.name.to_string(),
                    replicaset: Change::of(was.replicaset, node.replicaset).map(owned),
                    address: Change::of(was.spec.address.value.0, node.spec.address.value.0),
                    election: Change::of(was.spec.election, node.spec.election),
                };
                if change.replicaset.is_some()
                    || change.address.is_some()
                    || change.election.is_some()
                {
                    diff.nodes_changed.push(change);
                }
            }
            if let Some(Change { from, to }) =
                Change::of(http_port(old, node.name), http_port(Some(new), node.name))
            {
                let node = node.name.to_string();
                diff.ports_changed.push(PortChange { node, from, to });
            }
        }

        for (set, new_set) in sets(Some(new)) {
            let Some(old_set) = old_sets.get(set) else {
                continue;
            };
            let (was, now) = (names(&old_set.roles), names(&new_set.roles));
            let assign = |role| RoleAssignment {
                replicaset: set.to_string(),
                role,
            };
            diff.roles_added
                .extend(missing_from(&now, &was).into_iter().map(assign));
            diff.roles_removed
                .extend(missing_from(&was, &now).into_iter().map(assign));
            let (from, to) = (
                names(&old_set.failover_priority),
                names(&new_set.failover_priority),
            );
            if from != to {
                let replicaset = set.to_string();
                diff.failover_priority_changed.push(PriorityChange {
                    replicaset,
                    from,
                    to,
                });
            }
            if let Some(Change { from, to }) = Change::of(old_set.weight(), new_set.weight()) {
                let replicaset = set.to_string();
                diff.weights_changed.push(WeightChange {
                    replicaset,
                    from,
                    to,
                });
            }
        }

        for (role, spec) in role_specs(Some(new)) {
            if let Some(change) = old_roles
                .get(role)
                .and_then(|was| settings_change(role, was, spec))
            {
                diff.role_settings_changed.push(change);
            }
        }
        diff
    }

    pub fn is_empty(&self) -> bool {
        *self == TopologyDiff::default()
    }

    /// One line per change, in the order of the fields.
    fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.cluster {
            Some(Change { from: None, to }) => lines.push(format!("+ cluster {}", show(to))),
            Some(c) => lines.push(changed("cluster", "", show(&c.from), show(&c.to))),
            None => {}
        }
        if let Some(c) = &self.failover_mode {
            lines.push(changed("failover", "mode", word(&c.from), word(&c.to)));
        }
        if let Some(c) = &self.election_timeout {
            lines.push(changed("failover", "election timeout", c.from, c.to));
        }
        if let Some(c) = &self.cluster_up_at {
            let show = |n: &Option<usize>| n.map_or("none".into(), |n| format!("{n} nodes"));
            lines.push(changed("cluster up at", "", show(&c.from), show(&c.to)));
        }
        for (sign, sets) in [
            ("+", &self.replicasets_added),
            ("-", &self.replicasets_removed),
        ] {
            for set in sets {
                let roles = match set.roles.as_slice() {
                    [] => String::new(),
                    roles => format!(" (roles {})", list(roles)),
                };
                lines.push(format!("{sign} replica set {}{roles}", set.name));
            }
        }
        for n in &self.nodes_added {
            let election = match n.election {
                Election::Off => String::new(),
                e => format!(", election {}", word(&e)),
            };
            let (name, set, address) = (&n.name, &n.replicaset, n.address);
            lines.push(format!(
                "+ node {name} (replica set {set}, {address}{election})"
            ));
        }
        for n in &self.nodes_changed {
            let node = format!("node {}", n.name);
            if let Some(c) = &n.replicaset {
                lines.push(changed(&node, "replica set", &c.from, &c.to));
            }
            if let Some(c) = &n.address {
                lines.push(changed(&node, "address", c.from, c.to));
            }
            if let Some(c) = &n.election {
                lines.push(changed(&node, "election", word(&c.from), word(&c.to)));
            }
        }
        for n in &self.nodes_removed {
            let (name, set, address) = (&n.name, &n.replicaset, n.address);
            lines.push(format!("- node {name} (replica set {set}, {address})"));
        }
        lines.extend(self.expelled.iter().map(|n| format!("+ expelled {n}")));
        lines.extend(self.unexpelled.iter().map(|n| format!("- expelled {n}")));
        for (sign, roles) in [("+", &self.roles_added), ("-", &self.roles_removed)] {
            for RoleAssignment { replicaset, role } in roles {
                lines.push(format!("{sign} role {role} on replica set {replicaset}"));
            }
        }
        for p in &self.failover_priority_changed {
            let set = format!("replica set {}", p.replicaset);
            lines.push(changed(
                &set,
                "failover priority",
                list(&p.from),
                list(&p.to),
            ));
        }
        for w in &self.weights_changed {
            let set = format!("replica set {}", w.replicaset);
            lines.push(changed(&set, "weight", w.from, w.to));
        }
        for p in &self.ports_changed {
            lines.push(changed(
                format!("node {}", p.node),
                "http port",
                p.from,
                p.to,
            ));
        }
        lines.extend(
            self.role_settings_added
                .iter()
                .map(|r| format!("+ roles.{r}")),
        );
        for r in &self.role_settings_changed {
            let role = format!("roles.{}", r.role);
            let path = |p: &Option<PathBuf>| {
                p.as_ref()
                    .map_or("none".into(), |p| p.display().to_string())
            };
            let timeout = |t: &Option<HumanDuration>| t.map_or("default".into(), |t| t.to_string());
            if let Some(c) = &r.exec {
                lines.push(changed(&role, "exec", path(&c.from), path(&c.to)));
            }
            if let Some(c) = &r.depends {
                lines.push(changed(&role, "depends", list(&c.from), list(&c.to)));
            }
            if let Some(c) = &r.timeout {
                lines.push(changed(&role, "timeout", timeout(&c.from), timeout(&c.to)));
            }
            if r.config.is_some() {
                lines.push(format!("~ {role}: config changed"));
            }
        }
        lines.extend(
            self.role_settings_removed
                .iter()
                .map(|r| format!("- roles.{r}")),
        );
        lines
    }
}

/// One change per line, or `no change`.
impl fmt::Display for TopologyDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lines() {
            lines if lines.is_empty() => f.write_str("no change"),
            lines => f.write_str(&lines.join("\n")),
        }
    }
}

impl fmt::Display for HttpPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpPort::Unset => f.write_str("unset"),
            HttpPort::Off => f.write_str("off"),
            HttpPort::Port(port) => port.fmt(f),
        }
    }
}

fn sets(t: Option<&Topology>) -> impl Iterator<Item = (&str, &ReplicaSet)> {
    t.into_iter()
        .flat_map(|t| t.replicasets.value.iter())
        .map(|(name, set)| (name.value.as_str(), set))
}

fn role_specs(t: Option<&Topology>) -> impl Iterator<Item = (&str, &RoleSpec)> {
    t.into_iter()
        .flat_map(|t| t.roles.iter())
        .map(|(name, spec)| (name.value.as_str(), spec))
}

fn http_port(t: Option<&Topology>, node: &str) -> HttpPort {
    let listen = t
        .and_then(|t| t.roles.get("http"))
        .and_then(|s| s.listen.as_ref());
    match listen.and_then(|l| l.get(node)) {
        None => HttpPort::Unset,
        Some(None) => HttpPort::Off,
        Some(Some(port)) => HttpPort::Port(port.value.0),
    }
}

fn settings_change(role: &str, old: &RoleSpec, new: &RoleSpec) -> Option<RoleSettingsChange> {
    let exec = |s: &RoleSpec| s.exec.as_ref().map(|e| e.value.clone());
    let timeout = |s: &RoleSpec| s.timeout.as_ref().map(|t| t.value);
    let (was, now) = (names(&old.depends), names(&new.depends));
    // Dependencies are a set: their order starts nothing differently.
    let depends = (!missing_from(&was, &now).is_empty() || !missing_from(&now, &was).is_empty())
        .then_some(Change { from: was, to: now });
    let change = RoleSettingsChange {
        role: role.to_string(),
        exec: Change::of(exec(old), exec(new)),
        depends,
        timeout: Change::of(timeout(old), timeout(new)),
        config: Change::of(old.config.clone(), new.config.clone()),
    };
    let changed = change.exec.is_some()
        || change.depends.is_some()
        || change.timeout.is_some()
        || change.config.is_some();
    changed.then_some(change)
}

fn set_info((name, set): (&str, &ReplicaSet)) -> ReplicaSetInfo {
    ReplicaSetInfo {
        name: name.to_string(),
        roles: names(&set.roles),
    }
}

fn node_info(node: NodeRef<'_>) -> NodeInfo {
    NodeInfo {
        name: node.name.to_string(),
        replicaset: node.replicaset.to_string(),
        address: node.spec.address.value.0,
        election: node.spec.election,
    }
}

fn owned(change: Change<&str>) -> Change<String> {
    Change {
        from: change.from.to_string(),
        to: change.to.to_string(),
    }
}

fn names(list: &[Spanned<String>]) -> Vec<String> {
    list.iter().map(|s| s.value.clone()).collect()
}

/// Those of `these` not in `others`, in their order.
fn missing_from(these: &[String], others: &[String]) -> Vec<String> {
    these
        .iter()
        .filter(|n| !others.contains(n))
        .cloned()
        .collect()
}

/// `~ node n1: address A -> B`; without `what`, `~ cluster: A -> B`.
fn changed(
    subject: impl fmt::Display,
    what: &str,
    from: impl fmt::Display,
    to: impl fmt::Display,
) -> String {
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what} ")
    };
    format!("~ {subject}: {what}{from} -> {to}")
}

fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

fn show(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("none")
}

/// How the topology file spells an enum value (`candidate`, `raft`).
fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => word,
        _ => "?".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "\
cluster: orders
replicasets:
  s1:
    roles: [storage]
    failover_priority: [n1, n2]
    nodes:
      n1: { address: 127.0.0.1:3301, election: candidate }
      n2: { address: 127.0.0.1:3302 }
  s2:
    roles: [router, http]
    nodes:
      n3: { address: 127.0.0.1:3303 }
roles:
  http: { listen: { n1: 8081, n2: 8082, n3: 8083 } }
";

    fn parse(text: &str) -> Topology {
        Topology::parse(text, Path::new("t.yaml")).expect("valid topology")
    }

    fn diff(old: &str, new: &str) -> TopologyDiff {
        TopologyDiff::between(Some(&parse(old)), &parse(new))
    }

    /// BASE with each `(from, to)` replaced; a missing `from` is a broken test.
    fn edit(edits: &[(&str, &str)]) -> String {
        edits.iter().fold(BASE.to_string(), |text, (from, to)| {
            assert!(text.contains(from), "{from:?} is not in the text");
            text.replacen(from, to, 1)
        })
    }

    fn port(node: &str, from: HttpPort, to: HttpPort) -> PortChange {
        PortChange {
            node: node.to_string(),
            from,
            to,
        }
    }

    #[test]
    fn the_same_topology_written_differently_is_no_change() {
        let rewritten = "\
# the same cluster, reordered and in block style
roles:
  http:
    listen: { n3: 8083, n2: 8082, n1: 8081 }
replicasets:
  s2:
    nodes:
      n3:
        address: 127.0.0.1:3303   # router
    roles: [http, router]
  s1:
    nodes:
      n2: { address: 127.0.0.1:3302, election: off }
      n1: { election: candidate, address: 127.0.0.1:3301 }
    failover_priority: [n1, n2]
    roles: [storage]
failover: { mode: disabled, election_timeout: 1s }
cluster: orders
";
        for text in [BASE, rewritten] {
            let d = diff(BASE, text);
            assert!(d.is_empty(), "{d:?}");
            assert_eq!(d.to_string(), "no change");
        }
    }

    #[test]
    fn cluster_up_at_and_weights_are_changes() {
        let new = edit(&[
            ("cluster: orders\n", "cluster: orders\ncluster_up_at: 3\n"),
            (
                "    roles: [router, http]\n",
                "    roles: [router, http]\n    weight: 2.5\n",
            ),
        ]);
        let d = diff(BASE, &new);
        assert_eq!(
            d.cluster_up_at,
            Some(Change {
                from: None,
                to: Some(3)
            })
        );
        assert_eq!(
            d.weights_changed,
            [WeightChange {
                replicaset: "s2".into(),
                from: 1.0,
                to: 2.5
            }]
        );
        assert_eq!(
            d.to_string(),
            "~ cluster up at: none -> 3 nodes\n~ replica set s2: weight 1 -> 2.5"
        );
        // Writing the default weight is no change.
        let explicit = edit(&[(
            "    roles: [storage]\n",
            "    roles: [storage]\n    weight: 1\n",
        )]);
        assert!(diff(BASE, &explicit).is_empty());
    }

    #[test]
    fn nodes_added_and_removed() {
        let new = edit(&[
            ("      n2: { address: 127.0.0.1:3302 }\n", ""),
            ("[n1, n2]", "[n1]"),
            (" n2: 8082,", ""),
            (
                "3303 }\n",
                "3303 }\n      n4: { address: 127.0.0.1:3304, election: voter }\n",
            ),
        ]);
        let d = diff(BASE, &new);
        assert_eq!(d.nodes_added.len(), 1);
        assert_eq!(d.nodes_added[0].name, "n4");
        assert_eq!(d.nodes_added[0].election, Election::Voter);
        assert_eq!(d.nodes_removed.len(), 1);
        assert_eq!(d.nodes_removed[0].replicaset, "s1");
        // n2's port goes with n2; n4 has no entry to change.
        assert!(d.ports_changed.is_empty());
        assert_eq!(
            d.to_string(),
            "+ node n4 (replica set s2, 127.0.0.1:3304, election voter)\n\
             - node n2 (replica set s1, 127.0.0.1:3302)\n\
             ~ replica set s1: failover priority [n1, n2] -> [n1]"
        );
    }

    #[test]
    fn node_moved_and_readdressed() {
        let new = edit(&[
            ("      n2: { address: 127.0.0.1:3302 }\n", ""),
            ("[n1, n2]", "[n1]"),
            (
                "3303 }\n",
                "3303 }\n      n2: { address: 127.0.0.1:3312 }\n",
            ),
        ]);
        let d = diff(BASE, &new);
        assert!(d.nodes_added.is_empty() && d.nodes_removed.is_empty());
        assert_eq!(
            d.nodes_changed,
            vec![NodeChange {
                name: "n2".to_string(),
                replicaset: Some(Change {
                    from: "s1".to_string(),
                    to: "s2".to_string()
                }),
                address: Some(Change {
                    from: "127.0.0.1:3302".parse().unwrap(),
                    to: "127.0.0.1:3312".parse().unwrap(),
                }),
                election: None,
            }]
        );
        assert_eq!(
            d.to_string(),
            "~ node n2: replica set s1 -> s2\n\
             ~ node n2: address 127.0.0.1:3302 -> 127.0.0.1:3312\n\
             ~ replica set s1: failover priority [n1, n2] -> [n1]"
        );
    }

    #[test]
    fn http_ports_moved_swapped_and_switched_off() {
        let moved = diff(BASE, &edit(&[("n1: 8081", "n1: 8091")]));
        assert_eq!(
            moved.ports_changed,
            vec![port("n1", HttpPort::Port(8081), HttpPort::Port(8091))]
        );
        assert_eq!(moved.to_string(), "~ node n1: http port 8081 -> 8091");

        let swapped = diff(BASE, &edit(&[("n1: 8081, n2: 8082", "n1: 8082, n2: 8081")]));
        assert_eq!(
            swapped.to_string(),
            "~ node n1: http port 8081 -> 8082\n~ node n2: http port 8082 -> 8081"
        );

        let off = diff(BASE, &edit(&[("n3: 8083", "n3: null")]));
        assert_eq!(
            off.ports_changed,
            vec![port("n3", HttpPort::Port(8083), HttpPort::Off)]
        );
        assert_eq!(off.to_string(), "~ node n3: http port 8083 -> off");

        let unset = diff(BASE, &edit(&[(", n3: 8083", "")]));
        assert_eq!(unset.to_string(), "~ node n3: http port 8083 -> unset");
    }

    #[test]
    fn roles_of_a_replica_set() {
        let d = diff(
            BASE,
            &edit(&[
                ("[storage]", "[storage, http]"),
                ("[router, http]", "[router]"),
            ]),
        );
        let assigned = |set: &str, role: &str| RoleAssignment {
            replicaset: set.to_string(),
            role: role.to_string(),
        };
        assert_eq!(d.roles_added, vec![assigned("s1", "http")]);
        assert_eq!(d.roles_removed, vec![assigned("s2", "http")]);
        assert_eq!(
            d.to_string(),
            "+ role http on replica set s1\n- role http on replica set s2"
        );
    }

    #[test]
    fn cluster_failover_expelled_and_role_settings() {
        let new = edit(&[
            ("cluster: orders\n", "cluster: billing\nfailover: { mode: raft, election_timeout: 2s }\nexpelled: [old]\n"),
            ("[router, http]", "[router, http, audit]"),
        ]) + "  audit: { exec: /usr/lib/audit, depends: [storage], config: { level: 1 } }\n";
        let old = edit(&[("[router, http]", "[router, http, audit]")])
            + "  audit: { exec: /usr/lib/audit, depends: [storage] }\n  gone: { exec: /bin/gone }\n";
        let d = diff(&old, &new);
        assert_eq!(d.role_settings_removed, vec!["gone".to_string()]);
        let audit = &d.role_settings_changed[0];
        assert!(audit.exec.is_none() && audit.depends.is_none() && audit.timeout.is_none());
        assert_eq!(audit.config.as_ref().map(|c| c.from.is_none()), Some(true));
        assert_eq!(
            d.to_string(),
            "~ cluster: orders -> billing\n\
             ~ failover: mode disabled -> raft\n\
             ~ failover: election timeout 1s -> 2s\n\
             + expelled old\n\
             ~ roles.audit: config changed\n\
             - roles.gone"
        );
    }

    #[test]
    fn first_apply_adds_everything() {
        let d = TopologyDiff::between(None, &parse(BASE));
        assert_eq!(
            d.cluster,
            Some(Change {
                from: None,
                to: Some("orders".to_string())
            })
        );
        assert_eq!(d.failover_mode, None, "the default is no change");
        assert_eq!(d.nodes_added.len(), 3);
        assert_eq!(d.role_settings_added, vec!["http".to_string()]);
        assert_eq!(
            d.to_string(),
            "+ cluster orders\n\
             + replica set s1 (roles [storage])\n\
             + replica set s2 (roles [router, http])\n\
             + node n1 (replica set s1, 127.0.0.1:3301, election candidate)\n\
             + node n2 (replica set s1, 127.0.0.1:3302)\n\
             + node n3 (replica set s2, 127.0.0.1:3303)\n\
             ~ node n1: http port unset -> 8081\n\
             ~ node n2: http port unset -> 8082\n\
             ~ node n3: http port unset -> 8083\n\
             + roles.http"
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["ports_changed"][0]["to"],
            serde_json::json!({ "port": 8081 })
        );
        assert_eq!(json["nodes_added"][0]["election"], "candidate");
    }
}
