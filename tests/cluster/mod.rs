//! A small cluster of real agents for the operator-surface tests (routing,
//! metrics): replica sets with weights, failover mode `raft`, every node
//! joined through the others; stopped (SIGKILL) when dropped.
#![allow(dead_code)]

use std::fs;
use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::support::agents::{Agent, Config};
use crate::support::{addr, cohort, http, masters_of, wait_until_or};

pub const WAIT: Duration = Duration::from_secs(60);

/// One node: its name, replica set and `election`.
pub struct Spec {
    pub name: &'static str,
    pub set: &'static str,
    pub election: &'static str,
}

pub const fn node(name: &'static str, set: &'static str, election: &'static str) -> Spec {
    Spec {
        name,
        set,
        election,
    }
}

pub struct Cluster {
    pub nodes: Vec<Agent>,
    pub text: String,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Starts one agent per spec, all with the same topology: the sets in
    /// the order first named, each with `weight` from `weights` when given.
    pub fn start(specs: &[Spec], weights: &[(&str, f64)]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Agent> = specs
            .iter()
            .map(|s| Agent::new(root.path(), s.name))
            .collect();
        let mut text = String::from(
            "cluster: test\nfailover: { mode: raft, election_timeout: 1s }\nreplicasets:\n",
        );
        let mut sets: Vec<&str> = Vec::new();
        for s in specs {
            if !sets.contains(&s.set) {
                sets.push(s.set);
            }
        }
        for set in &sets {
            text.push_str(&format!("  {set}:\n    roles: [storage]\n"));
            if let Some((_, w)) = weights.iter().find(|(name, _)| name == set) {
                text.push_str(&format!("    weight: {w}\n"));
            }
            text.push_str("    nodes:\n");
            for (spec, agent) in specs.iter().zip(&nodes).filter(|(s, _)| s.set == *set) {
                text.push_str(&format!(
                    "      {}: {{ address: {}, election: {} }}\n",
                    spec.name,
                    addr(agent.port),
                    spec.election
                ));
            }
        }
        let join: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        for node in &nodes {
            node.write_config(&Config {
                join: &join,
                ..Config::default()
            });
            fs::write(&node.topology, &text).unwrap();
        }
        for node in &mut nodes {
            node.start(WAIT);
        }
        Cluster {
            nodes,
            text,
            _root: root,
        }
    }

    pub fn node(&self, name: &str) -> &Agent {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn gossip_addr(&self, name: &str) -> SocketAddr {
        addr(self.node(name).port)
    }

    /// `GET PATH` on node `i`: status and body (panics when nothing answers).
    pub fn get_raw(&self, i: usize, path: &str) -> (u16, String) {
        http(self.nodes[i].api(), "GET", path)
            .unwrap_or_else(|| panic!("{} does not answer {path}", self.nodes[i].name))
    }

    /// `cohort --api NODE ARGS`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        cohort()
            .arg("--api")
            .arg(self.nodes[i].api().to_string())
            .args(args)
            .output()
            .unwrap()
    }

    /// Waits until every running node names a master for each of `sets`
    /// and a Raft leader, and lists each master alive.
    pub fn wait_masters(&self, sets: &[&str]) {
        let mut last = String::new();
        let ready = wait_until_or(WAIT, || {
            for node in self.nodes.iter().filter(|n| n.proc.is_some()) {
                let (code, body) = http(node.api(), "GET", "/v1/leaders")?;
                last = format!("{}: {code} {body}", node.name);
                if code != 200 {
                    return None;
                }
                let view: Value = serde_json::from_str(&body).ok()?;
                view["leader"]["name"].as_str()?;
                let masters = masters_of(&view)?;
                if !sets.iter().all(|s| masters.contains_key(*s)) {
                    return None;
                }
                // And its gossip knows each master alive: what a route
                // answers with (CI once asked a node that did not yet).
                for (master, _) in masters.values() {
                    if node.sees(master).as_deref() != Some("alive") {
                        last = format!("{} does not see {master} alive yet", node.name);
                        return None;
                    }
                }
            }
            Some(())
        });
        ready
            .unwrap_or_else(|| panic!("no leader and masters of {sets:?} within {WAIT:?}: {last}"));
    }
}
