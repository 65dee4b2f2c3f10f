//! Real agents with no join seeds find each other through sealed
//! multicast announcements: three with the cluster's key and
//! `discovery.multicast.enabled: true` all see each other alive; one with
//! another key is never admitted (its announcements are dropped, and it
//! cannot read theirs); one with multicast left at its default (off) stays
//! alone; a node that leaves on request stays left, while a late one
//! finds the rest.
//!
//! Loopback has no MULTICAST flag by default and the host's network is not
//! ours to use, so the test makes its own network namespace (root and
//! iproute2 are needed: CI runs as root and installs iproute2) and runs
//! every agent and every `cohort` command inside it. The namespace and the
//! agents are removed when the test ends, also when it fails.

mod support;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::agents::spawn_agent;
use support::netns::Netns;
use support::{wait_until, Proc};

/// Discovery takes an announce round trip and a push-pull; the deadline
/// is for a loaded 2-core machine, not a figure.
const CONVERGE: Duration = Duration::from_secs(60);

const KEY_A: &str = "q1Yd5rO3o0bI7wJ7dHqv1Uq9QbS7+7Kz3KQbq3oE8Xk=";
const KEY_B: &str = "mX0C4m1Qm0x6J3b7a9u0y5t2r8e1w4q7z0x3c6v9b2M=";

const DROPPED: &str = "multicast announcement dropped";
const JOINING: &str = "joining a node heard on the multicast group";

struct Agent {
    name: String,
    api: SocketAddr,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    /// Node `i` of the namespace: ports of its own (the namespace has its
    /// own port space), no join seeds, `discovery` as given.
    fn new(root: &Path, i: u16, name: &str, key: &str, discovery: &str) -> Agent {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("gossip.key"), format!("{key}\n")).unwrap();
        let api = SocketAddr::from(([127, 0, 0, 1], 8400 + i));
        fs::write(
            dir.join("cohort.yaml"),
            format!(
                "node: {name}\ncluster: test\nbind: 127.0.0.1:{port}\ndata_dir: {data}\ntopology: {topo}\n\
                 gossip: {{ key_file: {key}, protocol_period: 300ms, ack_timeout: 150ms }}\n\
                 api: {{ http: {api}, socket: {socket}, token_file: {token} }}\nlog: {{ level: \"info,cohort::agent::discovery=debug\", format: text }}\n{discovery}",
                port = 3401 + i,
                data = dir.join("data").display(),
                topo = dir.join("topology.yaml").display(),
                key = dir.join("gossip.key").display(),
                socket = dir.join("api.sock").display(),
                token = support::token_file().display(),
            ),
        )
        .unwrap();
        Agent {
            name: name.into(),
            api,
            dir,
            proc: None,
        }
    }

    fn start(&mut self, ns: &Netns) {
        let log = fs::File::create(self.log()).unwrap();
        self.proc = Some(spawn_agent(
            ns.exec(env!("CARGO_BIN_EXE_cohort")),
            &self.dir.join("cohort.yaml"),
            log,
        ));
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    fn log_lines_with(&self, needles: &[&str]) -> usize {
        support::read(&self.log())
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// `(name, status)` of every member this node knows, itself included,
    /// sorted by name, from `cohort members --format json`.
    fn view(&self, ns: &Netns) -> Option<Vec<(String, String)>> {
        let out = ns.cohort(self.api, &["members", "--format", "json"])?;
        let members: serde_json::Value = serde_json::from_str(&out).ok()?;
        let mut view: Vec<(String, String)> = members
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_string(),
                    m["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        view.sort();
        Some(view)
    }

    fn status_of(&self, ns: &Netns, name: &str) -> Option<String> {
        self.view(ns)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
    }
}

fn multicast(interface: &str) -> String {
    format!(
        "discovery:\n  multicast:\n    enabled: true\n    group: 239.255.43.1:3300\n    interval: 300ms\n    interface: {interface}\n"
    )
}

#[test]
fn agents_without_seeds_find_each_other_by_multicast_and_a_foreign_key_is_refused() {
    let ns = Netns::create("mc");
    ns.enable_multicast();
    let root = tempfile::tempdir().unwrap();
    // Two name the interface by its address, one leaves it to the route.
    let mut members = vec![
        Agent::new(root.path(), 1, "n1", KEY_A, &multicast("127.0.0.1")),
        Agent::new(root.path(), 2, "n2", KEY_A, &multicast("127.0.0.1")),
        Agent::new(root.path(), 3, "n3", KEY_A, &multicast("0.0.0.0")),
    ];
    // The right key, but multicast discovery left at its default: off.
    let mut quiet = Agent::new(root.path(), 4, "quiet", KEY_A, "");
    let mut stranger = Agent::new(root.path(), 5, "stranger", KEY_B, &multicast("127.0.0.1"));
    quiet.start(&ns);
    for agent in &mut members {
        agent.start(&ns);
    }
    stranger.start(&ns);

    let three: Vec<(String, String)> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| (n.to_string(), "alive".to_string()))
        .collect();
    wait_until(CONVERGE, "n1, n2 and n3 alive on each of them", || {
        members
            .iter()
            .all(|a| a.view(&ns).as_ref() == Some(&three))
            .then_some(())
    });

    // The stranger's announcements reach the members and are refused, and
    // it cannot read theirs. Twelve drops at the stranger take four rounds
    // of the members' announcements, all sent after `quiet` was up.
    wait_until(CONVERGE, "the foreign key's announcements dropped", || {
        let refused = members
            .iter()
            .all(|a| a.log_lines_with(&[DROPPED, "undecryptable"]) > 0);
        let refusing = stranger.log_lines_with(&[DROPPED, "undecryptable"]) >= 12;
        (refused && refusing).then_some(())
    });
    for agent in &members {
        assert_eq!(
            agent.view(&ns).as_ref(),
            Some(&three),
            "{} admitted a node it should not have",
            agent.name
        );
        // Heard every round, but joined each peer at most once or twice
        // (none when the peers joined it first): announcements of members
        // already alive do not trigger joins.
        let joins = agent.log_lines_with(&[JOINING]);
        assert!(
            joins <= 4,
            "{} started {joins} joins for 2 peers:\n{}",
            agent.name,
            support::read(&agent.log())
        );
    }
    let alone = |agent: &Agent| vec![(agent.name.clone(), "alive".to_string())];
    assert_eq!(stranger.view(&ns), Some(alone(&stranger)));
    assert_eq!(
        quiet.view(&ns),
        Some(alone(&quiet)),
        "multicast discovery is off unless enabled"
    );
    assert_eq!(
        quiet.log_lines_with(&["multicast"]),
        0,
        "{}",
        support::read(&quiet.log())
    );

    // n3 leaves on request and keeps running: hearing announcements, even
    // of a node it does not know (n4, started now), must not pull it back.
    ns.cohort(members[2].api, &["leave"])
        .expect("cohort leave on n3");
    wait_until(CONVERGE, "n3 left on n1 and n2", || {
        members[..2]
            .iter()
            .all(|a| a.status_of(&ns, "n3").as_deref() == Some("left"))
            .then_some(())
    });
    members.push(Agent::new(
        root.path(),
        6,
        "n4",
        KEY_A,
        &multicast("127.0.0.1"),
    ));
    members[3].start(&ns);
    wait_until(CONVERGE, "the late n4 to find n1 and n2", || {
        let view = members[3].view(&ns)?;
        let alive: Vec<&str> = view
            .iter()
            .filter(|(_, s)| s == "alive")
            .map(|(n, _)| n.as_str())
            .collect();
        ["n1", "n2", "n4"]
            .iter()
            .all(|n| alive.contains(n))
            .then_some(())
    });
    let before = stranger.log_lines_with(&[DROPPED]);
    wait_until(CONVERGE, "more rounds of announcements", || {
        (stranger.log_lines_with(&[DROPPED]) >= before + 12).then_some(())
    });
    for agent in &members {
        assert_eq!(
            agent.status_of(&ns, "n3").as_deref(),
            Some("left"),
            "{} sees n3 back although it left:\n{}",
            agent.name,
            support::read(&members[2].log())
        );
    }

    // A clean stop still works with the multicast task running.
    let mut n1 = members[0].proc.take().unwrap();
    n1.signal(support::SIGTERM);
    assert_eq!(n1.wait_exit(CONVERGE).code(), Some(0));
}
