//! The cluster state (issue 9): the topology's `cluster_up_at: N` keeps
//! every node `assembling` until N of its nodes are alive at once, then
//! `up`; roles hear it, `/v1/status` and `cohort status` show it, and
//! `/v1/events` carries a `cluster-state` event. Checked with the parser,
//! and on three real agents of which two start first.

mod support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cohort::config::Topology;
use support::agents::{Agent, Config};
use support::*;

/// Starting, gossiping, committing on a loaded 2-core machine: generous,
/// never a figure to meet.
const DEADLINE: Duration = Duration::from_secs(90);

// ---- the topology field --------------------------------------------------

const THREE_NODES: &str = "cluster: orders
UP_AT
replicasets:
  s1:
    nodes:
      a: { address: 127.0.0.1:3301 }
      b: { address: 127.0.0.1:3302 }
  s2:
    nodes:
      c: { address: 127.0.0.1:3303 }
";

fn parse_with(line: &str) -> Result<Topology, Vec<String>> {
    Topology::parse(
        &THREE_NODES.replace("UP_AT", line),
        Path::new("topology.yaml"),
    )
    .map_err(|d| d.to_string().lines().map(str::to_string).collect())
}

#[test]
fn cluster_up_at_is_optional_and_counts_nodes() {
    assert_eq!(parse_with("").unwrap().cluster_up_at(), None);
    for n in 1..=3 {
        let t = parse_with(&format!("cluster_up_at: {n}")).unwrap();
        assert_eq!(t.cluster_up_at(), Some(n));
    }
}

#[test]
fn a_bad_cluster_up_at_is_reported_at_its_value() {
    let rule =
        "a whole number of nodes from 1 up (how many must be alive for the cluster to be up)";
    let cases = [
        (
            "cluster_up_at: 0",
            format!("topology.yaml:2:16: cluster_up_at 0 is invalid: use {rule}"),
        ),
        (
            "cluster_up_at: -2",
            format!("topology.yaml:2:16: cluster_up_at -2 is invalid: use {rule}"),
        ),
        (
            "cluster_up_at: many",
            format!("topology.yaml:2:16: cluster_up_at must be {rule}"),
        ),
        (
            "cluster_up_at: 4",
            "topology.yaml:2:16: cluster_up_at 4 is more than the 3 nodes of this topology: the cluster could never be up".to_string(),
        ),
        (
            "cluster_up_a: 2",
            "topology.yaml:2:1: unknown field `cluster_up_a`, did you mean `cluster_up_at`?"
                .to_string(),
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(parse_with(line).unwrap_err(), [expected], "{line}");
    }
}

// ---- three real agents -----------------------------------------------------

/// Records every call with its arguments and the cluster state in its
/// environment, one line a call, in `heard-NODE` beside itself.
const ROLE: &str = r#"#!/bin/sh
cat > /dev/null
echo "$* (COHORT_CLUSTER_STATE=$COHORT_CLUSTER_STATE)" >> "$(dirname "$0")/heard-$COHORT_NODE"
"#;

impl Agent {
    /// `(state, alive)` of `/v1/status`'s `cluster_state`.
    fn cluster_state(&self) -> Option<(String, u64)> {
        let status = self.status()?;
        let cluster = &status["cluster_state"];
        Some((
            cluster["state"].as_str()?.to_string(),
            cluster["alive"].as_u64()?,
        ))
    }

    /// The version this node installed without error, its roles included.
    fn installed(&self) -> Option<u64> {
        let status = self.status()?;
        let install = &status["apply"]["install"];
        install["error"]
            .is_null()
            .then(|| install["version"].as_u64())
            .flatten()
    }
}

/// `cohort --format json monitor --kind cluster-state,user` on `agent`:
/// its event lines as they come, once it shows a probe user event (then
/// its stream is surely open).
fn monitor(agent: &Agent) -> (Child, mpsc::Receiver<serde_json::Value>) {
    let mut child = cohort()
        .args(["--api", &agent.api().to_string(), "--format", "json"])
        .args(["monitor", "--kind", "cluster-state,user"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let event = serde_json::from_str(&line).expect("one JSON object a line");
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    wait_until(DEADLINE, "the monitor to show a probe event", || {
        let sent = cohort()
            .args(["--api", &agent.api().to_string(), "event", "probe"])
            .output()
            .unwrap();
        assert!(sent.status.success(), "{sent:?}");
        let event: serde_json::Value = rx.recv_timeout(Duration::from_millis(500)).ok()?;
        (event["kind"] == "user").then_some(())
    });
    (child, rx)
}

#[test]
fn the_cluster_is_assembling_until_up_at_nodes_are_alive_then_up_and_roles_hear_it() {
    let root = tempfile::tempdir().unwrap();
    let exec = root.path().join("recorder");
    std::fs::write(&exec, ROLE).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exec, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let heard = |node: &str| read(&root.path().join(format!("heard-{node}")));
    let mut agents: Vec<Agent> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| Agent::new(root.path(), n))
        .collect();
    let mut text = String::from("cluster: up-test\ncluster_up_at: 3\nreplicasets:\n  s1:\n    roles: [recorder]\n    nodes:\n");
    for agent in &agents {
        text.push_str(&format!(
            "      {}: {{ address: {} }}\n",
            agent.name,
            addr(agent.port)
        ));
    }
    text.push_str(&format!(
        "roles:\n  recorder: {{ exec: {} }}\n",
        agents::quoted(&exec)
    ));
    let ports: Vec<u16> = agents.iter().map(|a| a.port).collect();
    for agent in &agents {
        agent.write_config(&Config {
            cluster: "up-test",
            join: &ports,
            ..Config::default()
        });
        std::fs::write(&agent.topology, &text).unwrap();
    }

    // Two of three: the first version commits (a majority), the roles run,
    // and the cluster assembles.
    for agent in &mut agents[..2] {
        agent.start(DEADLINE);
    }
    for agent in &agents[..2] {
        wait_until(
            DEADLINE,
            &format!("{} to install version 1", agent.name),
            || (agent.installed()? >= 1).then_some(()),
        );
        let seen = wait_until(DEADLINE, "2 alive", || {
            agent.cluster_state().filter(|(_, alive)| *alive == 2)
        });
        assert_eq!(seen.0, "assembling", "{}", agent.name);
        let status = agent.status().unwrap();
        assert_eq!(status["cluster_state"]["up_at"], 3);
        assert_eq!(status["cluster_state"]["nodes"], 3);
        // Validated, started (and re-applied on a master change) while
        // assembling.
        let lines = heard(&agent.name);
        assert!(
            lines.contains("\napply (COHORT_CLUSTER_STATE=assembling)\n"),
            "{lines}"
        );
        assert!(
            lines.lines().all(|l| l.ends_with("=assembling)")),
            "{}: {lines}",
            agent.name
        );
    }
    let out = cohort()
        .args(["--api", &agents[0].api().to_string(), "status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        shown.contains("\ncluster state   assembling (2 of 3 nodes alive, cluster_up_at 3)\n"),
        "{shown}"
    );

    // The third: up everywhere, and every node's role heard it.
    let (mut watcher, events) = monitor(&agents[0]);
    agents[2].start(DEADLINE);
    for agent in &agents {
        let seen = wait_until(DEADLINE, &format!("{} to be up", agent.name), || {
            agent.cluster_state().filter(|(state, _)| state == "up")
        });
        assert_eq!(seen.1, 3, "{}", agent.name);
    }
    for agent in &agents[..2] {
        wait_until(
            DEADLINE,
            &format!("{}'s role to hear it", agent.name),
            || {
                heard(&agent.name)
                    .ends_with("cluster-state up (COHORT_CLUSTER_STATE=up)\n")
                    .then_some(())
            },
        );
        let lines = heard(&agent.name);
        let told: Vec<&str> = lines
            .lines()
            .filter(|l| l.starts_with("cluster-state"))
            .collect();
        assert_eq!(
            told,
            ["cluster-state up (COHORT_CLUSTER_STATE=up)"],
            "{lines}"
        );
    }
    // The third may start its role before or after it counts three alive:
    // either the apply said `up`, or a `cluster-state up` call followed.
    wait_until(DEADLINE, "n3's role to hear it", || {
        let lines = heard("n3");
        let last = lines.lines().last()?;
        last.ends_with("(COHORT_CLUSTER_STATE=up)").then_some(())
    });

    // Probes may still be in the stream before it.
    let event = wait_until(DEADLINE, "n1's monitor to show the change", || {
        events
            .recv_timeout(Duration::from_millis(500))
            .ok()
            .filter(|e| e["kind"] != "user")
    });
    assert_eq!(event["kind"], "cluster-state");
    assert_eq!(event["subject"], "up");
    assert_eq!(event["detail"], "3 of 3 nodes alive, cluster_up_at 3");

    // `up` stays when a node goes.
    agents[2].kill(DEADLINE);
    wait_until(DEADLINE, "n1 to count 2 alive", || {
        agents[0].cluster_state().filter(|(_, alive)| *alive == 2)
    });
    assert_eq!(agents[0].cluster_state().unwrap().0, "up");

    watcher.kill().unwrap();
    watcher.wait().unwrap();
    for agent in &mut agents[..2] {
        agent.stop(DEADLINE);
    }
}
