//! Five real agents on loopback, all `election: candidate`, failover mode
//! `raft` with a 1 s election timeout. What an operator sees is checked
//! through `GET /v1/leaders` on every node:
//!
//! - the group forms by itself from the committed topology: one leader,
//!   five voters, each replica set's master the first of its priority;
//! - SIGKILL of the leader → a new leader in a later term, seen by every
//!   survivor; SIGKILL of a master → the next alive node by priority is
//!   master with the next fencing generation, everywhere; the old master
//!   restarted comes back as a replica;
//! - SIGKILL of all five at once and a restart → a leader again, from
//!   their persisted state alone;
//! - `--consistent` reads, `failover promote` and `raft transfer-leader`
//!   through the API.
//!
//! Waits are conditions with generous deadlines (a loaded 2-core machine);
//! the failover times themselves are measured by `bench raft`, not here.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agents::{Agent, Config};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

impl Agent {
    /// Runs `cohort ARGS` against this agent's API: exit success, stdout
    /// and stderr.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = cohort()
            .arg("--api")
            .arg(self.api().to_string())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `GET /v1/leaders` (or `?consistent`) as JSON.
    fn leaders(&self, consistent: bool) -> Option<Value> {
        let path = if consistent {
            "/v1/leaders?consistent"
        } else {
            "/v1/leaders"
        };
        let (code, body) = http(self.api(), "GET", path)?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

/// Two replica sets (n1–n3, n4–n5), failover mode `raft`, a 1 s
/// election timeout, node `n{i+1}` with `election: elections[i]`.
fn topology(nodes: &[Agent], elections: &[&str]) -> String {
    let mut text = String::from(
        "cluster: test\nfailover: { mode: raft, election_timeout: 1s }\nreplicasets:\n  s1:\n    roles: [storage]\n    failover_priority: [n1, n2, n3]\n    nodes:\n",
    );
    for (i, node) in nodes.iter().enumerate() {
        if i == 3 {
            text.push_str(
                "  s2:\n    roles: [router]\n    failover_priority: [n4, n5]\n    nodes:\n",
            );
        }
        text.push_str(&format!(
            "      {}: {{ address: {}, election: {} }}\n",
            node.name,
            addr(node.port),
            elections[i]
        ));
    }
    text
}

struct Cluster {
    nodes: Vec<Agent>,
    _root: tempfile::TempDir,
}

/// What one node says of the group, in short.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    term: u64,
    leader: String,
    voters: usize,
    /// The voters' names, sorted.
    voter_names: Vec<String>,
    masters: BTreeMap<String, (String, u64)>,
}

fn seen(leaders: &Value) -> Option<Seen> {
    let masters = masters_of(leaders)?;
    Some(Seen {
        term: leaders["term"].as_u64()?,
        leader: leaders["leader"]["name"].as_str()?.to_string(),
        voters: leaders["voters"].as_array()?.len(),
        voter_names: {
            let mut names: Vec<String> = leaders["voters"]
                .as_array()?
                .iter()
                .filter_map(|v| Some(v["name"].as_str()?.to_string()))
                .collect();
            names.sort();
            names
        },
        masters,
    })
}

impl Cluster {
    /// Five candidates.
    fn start() -> Cluster {
        Cluster::with_elections(&["candidate"; 5])
    }

    /// Five agents, node `n{i+1}` with `election: elections[i]`.
    fn with_elections(elections: &[&str]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Agent> = (1..=5)
            .map(|i| Agent::new(root.path(), &format!("n{i}")))
            .collect();
        let join: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let cluster = Cluster {
            nodes: Vec::new(),
            _root: root,
        };
        let text = topology(&nodes, elections);
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
        Cluster { nodes, ..cluster }
    }

    fn node(&self, name: &str) -> &Agent {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn node_mut(&mut self, name: &str) -> &mut Agent {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Waits until every running node reports the same group, with a
    /// leader and `voters` voters, and `check` holds for it.
    fn agreed(&self, what: &str, voters: usize, check: impl Fn(&Seen) -> bool) -> Seen {
        let mut last = String::new();
        let found = wait_until_or(WAIT, || {
            last.clear();
            let mut agreed: Option<Seen> = None;
            for node in self.nodes.iter().filter(|n| n.proc.is_some()) {
                let Some(view) = node.leaders(false) else {
                    last = format!("{} does not answer /v1/leaders", node.name);
                    return None;
                };
                last.push_str(&format!("{}: {view}\n", node.name));
                let seen = seen(&view)?;
                if seen.voters != voters || !check(&seen) {
                    return None;
                }
                if agreed.as_ref().is_some_and(|a| *a != seen) {
                    return None;
                }
                agreed = Some(seen);
            }
            agreed
        });
        found.unwrap_or_else(|| panic!("{what}: not agreed within {WAIT:?}:\n{last}"))
    }
}

#[test]
fn a_killed_leader_and_a_killed_master_are_replaced_and_the_old_master_returns_as_a_replica() {
    let mut cluster = Cluster::start();
    let first = cluster.agreed("the group forms", 5, |s| {
        s.masters.get("s1").map(|m| m.0.as_str()) == Some("n1")
            && s.masters.get("s2").map(|m| m.0.as_str()) == Some("n4")
    });
    assert_eq!(
        first.masters["s1"].1, 1,
        "the first appointment: generation 1"
    );

    // The leader dies: another takes over in a later term.
    let old_leader = first.leader.clone();
    let killed = Instant::now();
    cluster.node_mut(&old_leader).kill(WAIT);
    let second = cluster.agreed("a new leader", 5, |s| {
        s.leader != old_leader && s.term > first.term
    });
    eprintln!(
        "leader {old_leader} killed: {} leads in term {} after {:?}",
        second.leader,
        second.term,
        killed.elapsed()
    );
    if old_leader != "n1" {
        cluster.node_mut(&old_leader).start(WAIT);
    }

    // The master of s1 dies: n2 is next by priority, with generation 2.
    if cluster.node("n1").proc.is_some() {
        cluster.node_mut("n1").kill(WAIT);
    }
    let third = cluster.agreed("n2 is master of s1", 5, |s| {
        s.masters.get("s1").map(|m| m.0.as_str()) == Some("n2")
    });
    assert_eq!(third.masters["s1"].1, first.masters["s1"].1 + 1);
    assert_eq!(third.masters["s2"], first.masters["s2"], "s2 untouched");

    // n1 comes back: it stays a replica.
    cluster.node_mut("n1").start(WAIT);
    let fourth = cluster.agreed("n1 is back", 5, |s| {
        s.masters.get("s1").map(|m| m.0.as_str()) == Some("n2")
    });
    assert_eq!(fourth.masters["s1"], third.masters["s1"]);
    let status = cluster.node("n1").status().unwrap();
    assert_eq!(status["raft"]["masters"]["s1"]["node"], "n2", "{status:#}");
}

#[test]
fn all_voters_killed_at_once_elect_a_leader_from_their_persisted_state() {
    let mut cluster = Cluster::start();
    let before = cluster.agreed("the group forms", 5, |s| s.masters.len() == 2);
    for node in &mut cluster.nodes {
        node.kill(WAIT);
    }
    let restarted = Instant::now();
    for node in &mut cluster.nodes {
        node.start(WAIT);
    }
    // (openraft resumes a leader whose vote was committed in its term, so
    // the term may be the same: what matters is one leader, agreed.)
    let after = cluster.agreed("a leader after the power cut", 5, |s| s.term >= before.term);
    eprintln!(
        "all five restarted: {} leads in term {} after {:?}",
        after.leader,
        after.term,
        restarted.elapsed()
    );
    // Nothing was lost: the appointments are the same.
    assert_eq!(after.masters, before.masters);
}

#[test]
fn consistent_reads_promote_and_transfer_go_through_the_leader() {
    let cluster = Cluster::start();
    let group = cluster.agreed("the group forms", 5, |s| s.masters.len() == 2);
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.name != group.leader)
        .unwrap();
    let read = wait_until(WAIT, "a consistent read", || follower.leaders(true));
    assert_eq!(read["consistent"], true);
    assert_eq!(read["leader"]["name"], group.leader.as_str());

    // Promote n3 in s1 through a follower.
    let (ok, out, err) = follower.cli(&["failover", "promote", "s1", "n3"]);
    assert!(ok, "{out}{err}");
    let promoted = cluster.agreed("n3 promoted", 5, |s| {
        s.masters.get("s1").map(|m| m.0.as_str()) == Some("n3")
    });
    assert_eq!(promoted.masters["s1"].1, group.masters["s1"].1 + 1);
    // A node of another set is refused with a reason.
    let (ok, out, err) = follower.cli(&["failover", "promote", "s1", "n5"]);
    assert!(!ok, "{out}");
    assert!(err.contains("n5"), "{err}");

    // Hand the lead to another node.
    let target = cluster
        .nodes
        .iter()
        .find(|n| n.name != group.leader)
        .unwrap()
        .name
        .clone();
    let (ok, out, err) = follower.cli(&["raft", "transfer-leader", &target]);
    assert!(ok, "{out}{err}");
    cluster.agreed("the lead handed over", 5, |s| s.leader == target);

    // `raft peers` lists the five voters, the leader marked.
    let (ok, out, err) = follower.cli(&["raft", "peers"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("true")).count(),
        5,
        "{out}"
    );
    let leader_line = out.lines().find(|l| l.contains("leader")).unwrap_or("");
    assert!(leader_line.starts_with(&target), "{out}");
}

/// Voters follow the topology: three candidates and two `off` nodes; the
/// `off` nodes see the leader and the masters from outside the group. Then
/// one apply turns n3 `off` and n4 into a `voter`: n3 leaves the group,
/// n4 joins it (as a learner first), no operator step. Then a voter dies
/// and an edit of the topology replaces it.
#[test]
fn the_voters_follow_the_topology_and_off_nodes_see_the_group() {
    let mut cluster =
        Cluster::with_elections(&["candidate", "candidate", "candidate", "off", "off"]);
    let first = cluster.agreed("three voters, seen by all five", 3, |s| {
        s.masters.len() == 2
    });
    let off = cluster.node("n5").leaders(false).unwrap();
    assert_eq!(off["role"], "off", "{off}");

    let text = topology(
        &cluster.nodes,
        &["candidate", "candidate", "off", "voter", "off"],
    );
    let file = cluster.node("n1").dir.join("next.yaml");
    fs::write(&file, &text).unwrap();
    let (ok, out, err) = cluster
        .node("n1")
        .cli(&["apply", file.to_str().unwrap(), "--wait"]);
    assert!(ok, "{out}{err}");
    let changed = cluster.agreed("n3 out, n4 in", 3, |s| s.voter_names == ["n1", "n2", "n4"]);
    assert_ne!(changed.leader, "n4", "a `voter` never leads");
    assert_eq!(changed.masters, first.masters, "the masters did not move");
    assert_eq!(cluster.node("n3").leaders(false).unwrap()["role"], "off");

    // A voter dies for good (n2, SIGKILL); an edit of the topology alone
    // replaces it by n5: the change is decided and committed by the
    // survivors (through the Raft log, n2 not reached), the leader removes
    // n2 from the group and adds n5. No operator step on the group.
    cluster.nodes[1].kill(WAIT);
    // As an operator would, once n2 is known dead (a node still suspected
    // is asked to vote, and its silence aborts the change).
    wait_until(WAIT, "n1 to see n2 dead", || {
        (cluster.node("n1").sees("n2").as_deref() == Some("dead")).then_some(())
    });
    let text = topology(
        &cluster.nodes,
        &["candidate", "off", "off", "voter", "candidate"],
    );
    fs::write(&file, &text).unwrap();
    let (ok, out, err) = cluster
        .node("n1")
        .cli(&["apply", file.to_str().unwrap(), "--wait"]);
    assert!(ok, "{out}{err}");
    let replaced = cluster.agreed("dead n2 replaced by n5", 3, |s| {
        s.voter_names == ["n1", "n4", "n5"]
    });
    assert_eq!(replaced.masters, first.masters, "the masters did not move");
}
