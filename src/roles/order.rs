//! Which roles a node runs and in what order: the `roles:` of its replica
//! set plus everything they depend on, each after its dependencies. Pure
//! (no I/O), so the order is the same on every node for the same file.

use std::collections::HashMap;

use crate::config::Topology;

/// Why a node's roles cannot be ordered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown role `{role}`{}: neither built in nor defined under `roles:` with `exec`", needed_by.as_ref().map(|by| format!(" (needed by `{by}`)")).unwrap_or_default())]
    UnknownRole {
        role: String,
        needed_by: Option<String>,
    },
    #[error("role dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

impl PlanError {
    /// The role the problem is about.
    pub fn role(&self) -> &str {
        match self {
            PlanError::UnknownRole { role, .. } => role,
            PlanError::Cycle(cycle) => cycle.first().map_or("", String::as_str),
        }
    }
}

/// The roles `node` runs under `topology`, dependencies first; empty when
/// the node is not in the topology. `known` gives the dependencies a role
/// declares itself (its `Role::dependencies`), or none for a role that
/// cannot be made; the topology's `depends:` are added to them. Ties keep
/// the order of the replica set's `roles:` list.
pub fn plan(
    topology: &Topology,
    node: &str,
    known: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<String>, PlanError> {
    let Some(me) = topology.node(node) else {
        return Ok(Vec::new());
    };
    let Some(set) = topology.replicasets.value.get(me.replicaset) else {
        return Ok(Vec::new());
    };
    let mut walk = Walk {
        topology,
        known,
        marks: HashMap::new(),
        path: Vec::new(),
        order: Vec::new(),
    };
    for role in &set.roles {
        walk.visit(&role.value, None)?;
    }
    Ok(walk.order)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

struct Walk<'t, 'k> {
    topology: &'t Topology,
    known: &'k dyn Fn(&str) -> Option<Vec<String>>,
    marks: HashMap<String, Mark>,
    path: Vec<String>,
    order: Vec<String>,
}

impl Walk<'_, '_> {
    fn visit(&mut self, role: &str, needed_by: Option<&str>) -> Result<(), PlanError> {
        match self.marks.get(role) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = self.path.iter().position(|r| r == role).unwrap_or(0);
                let mut cycle = self.path[start..].to_vec();
                cycle.push(role.to_string());
                return Err(PlanError::Cycle(cycle));
            }
            None => {}
        }
        let Some(own) = (self.known)(role) else {
            return Err(PlanError::UnknownRole {
                role: role.to_string(),
                needed_by: needed_by.map(str::to_string),
            });
        };
        let mut deps: Vec<String> = self
            .topology
            .roles
            .get(role)
            .map(|spec| spec.depends.iter().map(|d| d.value.clone()).collect())
            .unwrap_or_default();
        for dep in own {
            if !deps.contains(&dep) {
                deps.push(dep);
            }
        }
        self.marks.insert(role.to_string(), Mark::Visiting);
        self.path.push(role.to_string());
        for dep in &deps {
            self.visit(dep, Some(role))?;
        }
        self.path.pop();
        self.marks.insert(role.to_string(), Mark::Done);
        self.order.push(role.to_string());
        Ok(())
    }
}

/// Whether `node` runs `role` under `topology`, counting the topology's
/// `depends:` only (what another node can tell about a peer).
pub(crate) fn runs_role(topology: &Topology, node: &str, role: &str) -> bool {
    plan(topology, node, &|_| Some(Vec::new())).is_ok_and(|roles| roles.iter().any(|r| r == role))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn topology(text: &str) -> Topology {
        Topology::parse(text, Path::new("t.yaml")).expect("valid topology")
    }

    fn builtin(role: &str) -> Option<Vec<String>> {
        ["http", "router", "storage", "billing", "audit"]
            .contains(&role)
            .then(Vec::new)
    }

    const TEXT: &str = "
cluster: c
replicasets:
  s1:
    roles: [billing, http]
    nodes: { a: { address: 127.0.0.1:3301 } }
  r1:
    nodes: { b: { address: 127.0.0.1:3302 } }
roles:
  billing: { exec: /bin/true, depends: [audit, storage] }
  audit: { exec: /bin/true, depends: [storage] }
";

    #[test]
    fn dependencies_come_first_in_list_order() {
        let t = topology(TEXT);
        assert_eq!(
            plan(&t, "a", &builtin).unwrap(),
            ["storage", "audit", "billing", "http"]
        );
        assert!(plan(&t, "b", &builtin).unwrap().is_empty());
        assert!(plan(&t, "nobody", &builtin).unwrap().is_empty());
    }

    #[test]
    fn declared_dependencies_join_the_topology_ones() {
        let t = topology(TEXT);
        let known = |role: &str| match role {
            "http" => Some(vec!["router".to_string()]),
            other => builtin(other),
        };
        assert_eq!(
            plan(&t, "a", &known).unwrap(),
            ["storage", "audit", "billing", "router", "http"]
        );
    }

    #[test]
    fn cycles_through_declared_dependencies_and_unknown_roles_are_errors() {
        let t = topology(TEXT);
        let cyclic = |role: &str| match role {
            "storage" => Some(vec!["billing".to_string()]),
            other => builtin(other),
        };
        let error = plan(&t, "a", &cyclic).unwrap_err();
        assert_eq!(
            error.to_string(),
            "role dependency cycle: billing -> audit -> storage -> billing"
        );
        let unknown = |role: &str| (role != "audit").then(Vec::new);
        assert_eq!(
            plan(&t, "a", &unknown).unwrap_err().to_string(),
            "unknown role `audit` (needed by `billing`): neither built in nor defined under `roles:` with `exec`"
        );
        assert!(runs_role(&t, "a", "storage"));
        assert!(!runs_role(&t, "b", "http"));
    }
}
