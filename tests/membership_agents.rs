//! Real agents on loopback gossiping with SWIM over encrypted UDP: they
//! all see each other, a killed node is declared dead everywhere, a
//! restarted one comes back with a greater generation, a stopped one is
//! `left` without ever being suspected, and a node with the wrong key is
//! never admitted while its packets are counted.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::*;

/// Detection at a 300 ms period takes a few seconds; the deadline is for a
/// loaded 2-core machine, not a figure (benchmarks measure those).
const CONVERGE: Duration = Duration::from_secs(60);

const KEY_A: &str = "q1Yd5rO3o0bI7wJ7dHqv1Uq9QbS7+7Kz3KQbq3oE8Xk=";
const KEY_B: &str = "mX0C4m1Qm0x6J3b7a9u0y5t2r8e1w4q7z0x3c6v9b2M=";

struct Node {
    name: String,
    port: u16,
    api: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Node {
    fn new(root: &Path, name: &str, seed: u16, key: &str) -> Node {
        let (port, api) = (free_port(), free_port());
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("gossip.key"), format!("{key}\n")).unwrap();
        let seed = if seed == 0 { port } else { seed };
        fs::write(
            dir.join("cohort.yaml"),
            format!(
                "node: {name}\ncluster: test\nbind: {bind}\ndata_dir: {data}\ntopology: {topo}\njoin: [{seed}]\n\
                 gossip: {{ key_file: {key}, protocol_period: 300ms, ack_timeout: 150ms }}\napi: {{ http: {api} }}\nlog: {{ level: info, format: text }}\n",
                bind = addr(port),
                data = dir.join("data").display(),
                topo = dir.join("topology.yaml").display(),
                seed = addr(seed),
                key = dir.join("gossip.key").display(),
                api = addr(api),
            ),
        )
        .unwrap();
        Node {
            name: name.into(),
            port,
            api,
            dir,
            proc: None,
        }
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        self.proc = Some(Proc::spawn(
            cohort()
                .arg("agent")
                .arg("--config")
                .arg(self.dir.join("cohort.yaml"))
                .stdout(Stdio::null())
                .stderr(log),
        ));
        wait_until(CONVERGE, "the agent's API", || status(addr(self.api)));
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    fn members(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(addr(self.api), "/v1/members")?).ok()
    }

    /// `name -> (status, generation)` as this node sees the cluster.
    fn view(&self) -> Option<Vec<(String, String, u64)>> {
        let members = self.members()?;
        Some(
            members["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["status"].as_str().unwrap_or("").to_string(),
                        m["generation"].as_u64().unwrap_or(0),
                    )
                })
                .collect(),
        )
    }

    fn generation_of(&self, name: &str) -> Option<u64> {
        self.view()?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, g)| g)
    }

    fn status_of(&self, name: &str) -> Option<String> {
        self.view()?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, s, _)| s)
    }
}

/// Waits until every running node in `observers` sees `name` as `status`.
fn wait_everywhere(observers: &[&Node], name: &str, status: &str) {
    wait_until(
        CONVERGE,
        &format!("{name} to be {status} on every node"),
        || {
            observers
                .iter()
                .all(|o| o.status_of(name).as_deref() == Some(status))
                .then_some(())
        },
    );
}

#[test]
fn five_agents_detect_death_restart_leave_and_refuse_a_foreign_key() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    let first = Node::new(root.path(), "n1", 0, KEY_A);
    let seed = first.port;
    nodes.push(first);
    for i in 2..=5 {
        nodes.push(Node::new(root.path(), &format!("n{i}"), seed, KEY_A));
    }
    for node in &mut nodes {
        node.start();
    }

    // All alive, everywhere.
    wait_until(CONVERGE, "5 alive members on every node", || {
        nodes
            .iter()
            .all(|n| {
                n.view()
                    .is_some_and(|v| v.len() == 5 && v.iter().all(|(_, s, _)| s == "alive"))
            })
            .then_some(())
    });

    // SIGKILL n3: dead on every other node.
    let old_generation = nodes[2].generation_of("n3").unwrap();
    nodes[2].proc.as_ref().unwrap().signal(SIGKILL);
    nodes[2].proc.take().unwrap().wait_exit(CONVERGE);
    {
        let others: Vec<&Node> = nodes.iter().filter(|n| n.name != "n3").collect();
        wait_everywhere(&others, "n3", "dead");
    }

    // Restart n3: alive again everywhere, with a greater generation.
    nodes[2].start();
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_everywhere(&all, "n3", "alive");
        for observer in &all {
            let generation = observer.generation_of("n3").unwrap();
            assert!(
                generation > old_generation,
                "{} sees n3 at generation {generation}, not above {old_generation}",
                observer.name
            );
        }
    }

    // SIGTERM n4: `left` everywhere, and nobody ever suspected it.
    nodes[3].proc.as_ref().unwrap().signal(SIGTERM);
    assert_eq!(
        nodes[3].proc.take().unwrap().wait_exit(CONVERGE).code(),
        Some(0)
    );
    {
        let others: Vec<&Node> = nodes.iter().filter(|n| n.name != "n4").collect();
        wait_everywhere(&others, "n4", "left");
        for observer in &others {
            let log = read(&observer.log());
            let suspected = log
                .lines()
                .any(|l| l.contains("member=n4") && l.contains("-> suspect"));
            assert!(
                !suspected,
                "{} suspected n4 on a graceful leave:\n{log}",
                observer.name
            );
        }
    }

    // A node with another key: never admitted, its packets counted.
    let mut stranger = Node::new(root.path(), "stranger", seed, KEY_B);
    stranger.start();
    wait_until(CONVERGE, "n1 to count undecryptable packets", || {
        let members = nodes[0].members()?;
        (members["gossip"]["dropped"]["decrypt"].as_u64()? > 0).then_some(())
    });
    let warnings = nodes[0].members().unwrap()["gossip"]["warnings"].to_string();
    assert!(warnings.contains("could not be decrypted"), "{warnings}");
    for node in nodes.iter().filter(|n| n.proc.is_some()) {
        assert_eq!(
            node.status_of("stranger"),
            None,
            "{} admitted the stranger",
            node.name
        );
    }
    let alone = stranger.view().unwrap();
    assert_eq!(alone.len(), 1, "the stranger sees only itself: {alone:?}");
}
