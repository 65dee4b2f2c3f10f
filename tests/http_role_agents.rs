//! The `http` role end to end: four real agents on one host (127.0.0.1)
//! serve their name and UUID on the ports the topology gives them. One
//! apply (an edit of a node's topology file) moves a server, swaps two and
//! switches one off; a port an outside process holds, or one a node left
//! out of `listen` keeps, is refused at validation and aborts the change
//! everywhere; a port a hung node is to give up passes validation, the
//! apply waits for it in vain and the node logs exactly `Failed to change
//! port from X to Y`, and the next apply fixes it. Agents log JSON, so a
//! line's message is compared whole.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use support::agents::{Agent, Config};
use support::*;

/// Starting, gossiping, committing on a loaded 2-core machine: generous,
/// never a figure to meet.
const DEADLINE: Duration = Duration::from_secs(90);

/// The cluster name in node configs and topologies.
const CLUSTER: &str = "http-test";

const SIGSTOP: i32 = 19;

impl Agent {
    fn uuid(&self) -> String {
        let status = wait_until(DEADLINE, "the agent's status", || self.status());
        status["uuid"].as_str().unwrap().to_string()
    }

    /// The installed version, once this node has run its roles for it:
    /// `(version, error of the install)`.
    fn installed(&self) -> Option<(u64, Option<String>)> {
        let status = self.status()?;
        let install = &status["apply"]["install"];
        Some((
            install["version"].as_u64()?,
            install["error"].as_str().map(String::from),
        ))
    }

    fn committed(&self) -> Option<u64> {
        self.status()?["config_version"].as_u64()
    }

    /// Every log record whose message is exactly `message`, as `level`s.
    fn logged(&self, message: &str) -> Vec<String> {
        read(&self.log())
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|record| record["message"] == message)
            .map(|record| record["level"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Every log message that is a failed port change's line (other records
    /// quote it inside their own message).
    fn port_failures(&self) -> Vec<String> {
        read(&self.log())
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|record| record["message"].as_str().map(String::from))
            .filter(|message| message.starts_with("Failed to change port"))
            .collect()
    }
}

/// Four agents of one replica set running the http role, all on
/// 127.0.0.1, each with its topology file.
struct Cluster {
    _root: tempfile::TempDir,
    agents: Vec<Agent>,
}

impl Cluster {
    /// Starts the agents with `listen` as the first topology, and waits
    /// until every node installed it.
    fn start(listen: &BTreeMap<String, Option<u16>>) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let agents: Vec<Agent> = (1..=4)
            .map(|i| Agent::new(root.path(), &format!("n{i}")))
            .collect();
        for agent in &agents {
            agent.write_config(&Config {
                cluster: CLUSTER,
                join: &[agents[0].port],
                log_format: "json",
                ..Config::default()
            });
        }
        let mut cluster = Cluster {
            _root: root,
            agents,
        };
        let text = cluster.topology(listen, "the first version");
        for agent in &cluster.agents {
            fs::write(&agent.topology, &text).unwrap();
        }
        for agent in &mut cluster.agents {
            agent.start(DEADLINE);
        }
        cluster.installed_everywhere(1);
        cluster
    }

    /// The topology text: one replica set `web` with the http role, and
    /// `listen` as the ports (`None`: `null`).
    fn topology(&self, listen: &BTreeMap<String, Option<u16>>, comment: &str) -> String {
        let mut text = format!("# {comment}\ncluster: {CLUSTER}\nreplicasets:\n  web:\n    roles: [http]\n    nodes:\n");
        for agent in &self.agents {
            text.push_str(&format!(
                "      {}: {{ address: {} }}\n",
                agent.name,
                addr(agent.port)
            ));
        }
        text.push_str("roles:\n  http:\n    listen:\n");
        for (name, port) in listen {
            let port = port.map_or_else(|| "null".to_string(), |p| p.to_string());
            text.push_str(&format!("      {name}: {port}   # {name}'s server\n"));
        }
        text
    }

    /// Waits until every running node committed and installed `version`,
    /// and its roles applied it without error.
    fn installed_everywhere(&self, version: u64) {
        for agent in self.agents.iter().filter(|a| a.proc.is_some()) {
            let (installed, error) = wait_until(
                DEADLINE,
                &format!("{} to install version {version}", agent.name),
                || {
                    let (installed, error) = agent.installed()?;
                    (installed >= version && agent.committed() == Some(version))
                        .then_some((installed, error))
                },
            );
            assert_eq!(installed, version, "{}", agent.name);
            assert_eq!(
                error, None,
                "{} applied version {version} with an error",
                agent.name
            );
        }
    }

    /// The committed version on every running node.
    fn versions(&self) -> Vec<(String, Option<u64>)> {
        self.agents
            .iter()
            .filter(|a| a.proc.is_some())
            .map(|a| (a.name.clone(), a.committed()))
            .collect()
    }
}

/// `{"name": ..., "uuid": ...}` from the server on `port`, or None when
/// nothing answers.
fn hello(port: u16) -> Option<(String, String)> {
    let body = http_get(addr(port), "/")?;
    let hello: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        hello["name"].as_str()?.to_string(),
        hello["uuid"].as_str()?.to_string(),
    ))
}

/// Asserts that `port` answers with `agent`'s name and UUID.
fn assert_serves(port: u16, agent: &Agent) {
    let uuid = agent.uuid();
    assert_eq!(
        hello(port),
        Some((agent.name.clone(), uuid)),
        "port {port} should answer for {}",
        agent.name
    );
}

/// Asserts that nothing listens on `port`.
fn assert_refused(port: u16) {
    match TcpStream::connect_timeout(&addr(port), Duration::from_secs(5)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("port {port} should refuse connections: {other:?}"),
    }
}

/// `PUT /v1/topology?wait=true` on `agent`'s API: the HTTP status and the
/// `ApplyResult`.
fn put_topology(agent: &Agent, text: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_with_body(
        agent.api(),
        "PUT",
        "/v1/topology?wait=true&timeout=80s",
        text,
        DEADLINE + Duration::from_secs(60),
    )
    .unwrap_or_else(|| panic!("no answer from {}'s API", agent.name));
    let result = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("PUT /v1/topology answered {code} {body}: {e}"));
    (code, result)
}

fn listen(entries: &[(&str, Option<u16>)]) -> BTreeMap<String, Option<u16>> {
    entries
        .iter()
        .map(|(name, port)| (name.to_string(), *port))
        .collect()
}

#[test]
fn servers_move_swap_switch_off_and_a_port_held_outside_aborts_everywhere() {
    let ports: Vec<u16> = (0..4).map(|_| free_port_not_ephemeral()).collect();
    let first = listen(&[
        ("n1", Some(ports[0])),
        ("n2", Some(ports[1])),
        ("n3", Some(ports[2])),
        ("n4", Some(ports[3])),
    ]);
    let cluster = Cluster::start(&first);
    let [n1, n2, n3, n4] = [0, 1, 2, 3].map(|i| &cluster.agents[i]);

    // 1. Every node answers with its name and UUID on its port.
    for (agent, port) in cluster.agents.iter().zip(&ports) {
        assert_serves(*port, agent);
    }

    // 2. One edit of n3's topology file: n1 moves to a new port, n2 and n3
    // swap theirs, n4 switches its server off.
    let moved = free_port_not_ephemeral();
    let second = listen(&[
        ("n1", Some(moved)),
        ("n2", Some(ports[2])),
        ("n3", Some(ports[1])),
        ("n4", None),
    ]);
    let text = cluster.topology(&second, "move n1, swap n2 and n3, n4 off");
    n3.edit(&text);
    cluster.installed_everywhere(2);
    assert_serves(moved, n1);
    assert_refused(ports[0]);
    assert_serves(ports[2], n2);
    assert_serves(ports[1], n3);
    assert_refused(ports[3]);
    for agent in &cluster.agents {
        assert_eq!(
            read(&agent.topology),
            text,
            "{}'s topology file is the committed text",
            agent.name
        );
    }

    // Through the API this time: n4's server comes back on a new port.
    let back = free_port_not_ephemeral();
    let third = listen(&[
        ("n1", Some(moved)),
        ("n2", Some(ports[2])),
        ("n3", Some(ports[1])),
        ("n4", Some(back)),
    ]);
    let text = cluster.topology(&third, "n4 back on");
    let (code, result) = put_topology(n2, &text);
    assert_eq!(code, 200, "{result}");
    assert_eq!(result["outcome"], "committed", "{result}");
    assert_eq!(result["version"], 3, "{result}");
    assert_eq!(result["finished"], true, "{result}");
    cluster.installed_everywhere(3);
    assert_serves(back, n4);
    assert_serves(moved, n1);
    assert_serves(ports[2], n2);
    assert_serves(ports[1], n3);

    // 3. A port an outside process holds: n1 refuses it at validation, the
    // change is aborted everywhere, and nothing changes.
    let outside = TcpListener::bind(addr(0)).unwrap();
    let held = outside.local_addr().unwrap().port();
    let mut fourth = third.clone();
    fourth.insert("n1".into(), Some(held));
    let refused_text = cluster.topology(&fourth, "n1 onto a port held outside");
    let (code, result) = put_topology(n2, &refused_text);
    assert_eq!(code, 409, "{result}");
    assert_eq!(result["outcome"], "aborted", "{result}");
    let reasons = result["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "only n1 refuses: {result}");
    assert_eq!(reasons[0]["node"], "n1", "{result}");
    let reason = reasons[0]["reason"].as_str().unwrap();
    let failure = format!("Failed to change port from {moved} to {held}");
    assert!(reason.contains(&failure), "{reason}");
    assert!(
        reason.contains(&format!("127.0.0.1:{held} is in use by another process")),
        "{reason}"
    );
    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains("n1") && message.contains(&held.to_string()),
        "{message}"
    );
    // The refusal is logged on n1, as a warning at validation.
    let levels = wait_until(DEADLINE, "n1 to log the refused change", || {
        let levels = n1.logged(&failure);
        (!levels.is_empty()).then_some(levels)
    });
    assert_eq!(levels, ["WARN"], "{:?}", n1.port_failures());
    for agent in [n2, n3, n4] {
        assert_eq!(
            agent.port_failures(),
            Vec::<String>::new(),
            "{}",
            agent.name
        );
    }
    // Aborted everywhere: every lock is free again, versions unchanged.
    for agent in &cluster.agents {
        wait_until(
            DEADLINE,
            &format!("{}'s 2PC lock to be free", agent.name),
            || {
                let status = agent.status()?;
                (status["apply"]["lock"] == "no apply in progress").then_some(())
            },
        );
    }
    assert!(
        cluster.versions().iter().all(|(_, v)| *v == Some(3)),
        "{:?}",
        cluster.versions()
    );
    for agent in &cluster.agents {
        assert_eq!(read(&agent.topology), text, "{}", agent.name);
        assert_eq!(agent.installed(), Some((3, None)), "{}", agent.name);
    }
    assert_serves(moved, n1);
    assert_serves(ports[2], n2);
    assert_serves(ports[1], n3);
    assert_serves(back, n4);
    // The outside process still has its port to itself.
    assert_eq!(
        outside.local_addr().unwrap().port(),
        held,
        "the outside listener is still there"
    );
    drop(outside);

    // A node left out of `listen` keeps its server as it is: its port is
    // still its own, so n1 may not take it in that change...
    let mut left_out = third.clone();
    left_out.remove("n2");
    left_out.insert("n1".into(), Some(ports[2]));
    let (code, result) = put_topology(n3, &cluster.topology(&left_out, "n1 onto n2's port"));
    assert_eq!(code, 409, "{result}");
    assert_eq!(result["outcome"], "aborted", "{result}");
    let reasons = result["reasons"].as_array().expect("reasons");
    assert_eq!(reasons.len(), 1, "only n1 refuses: {result}");
    assert_eq!(reasons[0]["node"], "n1", "{result}");
    let reason = reasons[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "Failed to change port from {moved} to {}: port {} on host 127.0.0.1 is also taken by node `n2`",
            ports[2], ports[2]
        )),
        "{reason}"
    );
    let failure = format!("Failed to change port from {moved} to {}", ports[2]);
    let levels = wait_until(DEADLINE, "n1 to log the second refusal", || {
        let levels = n1.logged(&failure);
        (!levels.is_empty()).then_some(levels)
    });
    assert_eq!(levels, ["WARN"], "{:?}", n1.port_failures());
    // ... and once committed, nothing changes on it.
    left_out.insert("n1".into(), Some(moved));
    let text = cluster.topology(&left_out, "n2 left out");
    let (code, result) = put_topology(n4, &text);
    assert_eq!(code, 200, "{result}");
    assert_eq!(result["outcome"], "committed", "{result}");
    assert_eq!(result["version"], 4, "{result}");
    cluster.installed_everywhere(4);
    assert_serves(moved, n1);
    assert_serves(ports[2], n2);
    assert_serves(ports[1], n3);
    assert_serves(back, n4);
    for agent in &cluster.agents {
        assert_eq!(read(&agent.topology), text, "{}", agent.name);
    }
}

/// DESIGN.md ("Applying a topology change"): "The caller gets one result:
/// committed version N, or aborted with every node's reason." Two nodes
/// refuse: both reasons are reported, and the healthy nodes, which voted
/// yes, are not called silent (the coordinator decides once every vote is
/// in, not at the first no).
#[test]
fn an_abort_reports_every_refusing_node_and_no_healthy_node_as_silent() {
    let ports: Vec<u16> = (0..3).map(|_| free_port_not_ephemeral()).collect();
    let first = listen(&[
        ("n1", Some(ports[0])),
        ("n2", Some(ports[1])),
        ("n3", Some(ports[2])),
        ("n4", None),
    ]);
    let cluster = Cluster::start(&first);
    let [n1, n2, _, n4] = [0, 1, 2, 3].map(|i| &cluster.agents[i]);
    for agent in &cluster.agents {
        wait_until(DEADLINE, "every node to see 4 alive members", || {
            ["n1", "n2", "n3", "n4"]
                .iter()
                .all(|n| agent.sees(n).as_deref() == Some("alive"))
                .then_some(())
        });
    }
    // Two ports held outside: n1 and n4 each refuse one.
    let (outside1, outside4) = (
        TcpListener::bind(addr(0)).unwrap(),
        TcpListener::bind(addr(0)).unwrap(),
    );
    let (h1, h4) = (
        outside1.local_addr().unwrap().port(),
        outside4.local_addr().unwrap().port(),
    );
    let mut both = first.clone();
    both.insert("n1".into(), Some(h1));
    both.insert("n4".into(), Some(h4));
    let (code, result) = put_topology(n2, &cluster.topology(&both, "two refusals"));
    assert_eq!(code, 409, "{result}");
    // Both refusals are logged where they happen.
    for (agent, line) in [
        (
            n1,
            format!("Failed to change port from {} to {h1}", ports[0]),
        ),
        (n4, format!("Failed to change port from null to {h4}")),
    ] {
        wait_until(DEADLINE, &format!("{} to log `{line}`", agent.name), || {
            (agent.logged(&line) == ["WARN"]).then_some(())
        });
    }
    let reasons: BTreeMap<String, String> = result["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        reasons.keys().collect::<Vec<_>>(),
        ["n1", "n4"],
        "every refusing node's reason: {result}"
    );
    assert!(
        reasons["n4"].contains(&format!("Failed to change port from null to {h4}")),
        "{result}"
    );
    assert!(
        result["silent"].as_array().is_none_or(|s| s.is_empty()),
        "n3 and n4 answered, none is silent: {result}"
    );
    assert!(
        !result["message"].as_str().unwrap().contains("no answer"),
        "{result}"
    );
    drop((outside1, outside4));
}

#[test]
fn a_port_a_hung_node_never_gives_up_fails_the_apply_with_the_exact_log_line() {
    let ports: Vec<u16> = (0..4).map(|_| free_port_not_ephemeral()).collect();
    let first = listen(&[
        ("n1", Some(ports[0])),
        ("n2", Some(ports[1])),
        ("n3", Some(ports[2])),
        ("n4", Some(ports[3])),
    ]);
    let mut cluster = Cluster::start(&first);
    for (agent, port) in cluster.agents.iter().zip(&ports) {
        assert_serves(*port, agent);
    }

    // n4 hangs (SIGSTOP): its process, and its listening socket, stay.
    // The others declare it dead, so it takes no part in the next change.
    cluster.agents[3].proc.as_ref().unwrap().signal(SIGSTOP);
    for agent in &cluster.agents[..3] {
        wait_until(
            DEADLINE,
            &format!("{} to see the hung n4 dead", agent.name),
            || (agent.sees("n4").as_deref() == Some("dead")).then_some(()),
        );
    }

    // n1 takes n4's port, which n4 gives up in the same change: validation
    // counts it free, the apply waits for it in vain and fails on n1.
    let second = listen(&[
        ("n1", Some(ports[3])),
        ("n2", Some(ports[1])),
        ("n3", Some(ports[2])),
        ("n4", None),
    ]);
    let text = cluster.topology(&second, "n1 takes the port n4 gives up");
    let (code, result) = put_topology(&cluster.agents[1], &text);
    assert_eq!(code, 200, "{result}");
    assert_eq!(result["outcome"], "committed", "{result}");
    assert_eq!(result["version"], 2, "{result}");
    let not_reached = result["not_reached"].as_array().expect("not_reached");
    assert_eq!(not_reached.len(), 1, "{result}");
    assert_eq!(not_reached[0]["node"], "n4", "{result}");

    let n1 = &cluster.agents[0];
    let failure = format!("Failed to change port from {} to {}", ports[0], ports[3]);
    let (version, error) = wait_until(DEADLINE, "n1 to finish applying version 2", || {
        n1.installed().filter(|(v, _)| *v == 2)
    });
    assert_eq!(version, 2);
    let error = error.expect("n1's apply of version 2 failed");
    assert!(error.contains(&failure), "{error}");
    assert!(
        error.contains(&format!("127.0.0.1:{} was still in use after", ports[3])),
        "{error}"
    );
    // Exactly one line, logged at apply (an error), none at validation.
    assert_eq!(n1.logged(&failure), ["ERROR"], "{:?}", n1.port_failures());
    assert_eq!(n1.port_failures(), [failure.as_str()]);
    // n1 keeps serving on its old port; the others applied version 2.
    assert_serves(ports[0], n1);
    for agent in &cluster.agents[1..3] {
        assert_eq!(agent.installed(), Some((2, None)), "{}", agent.name);
        assert_eq!(
            agent.port_failures(),
            Vec::<String>::new(),
            "{}",
            agent.name
        );
    }
    assert_serves(ports[1], &cluster.agents[1]);
    assert_serves(ports[2], &cluster.agents[2]);

    // n4 is killed and restarted: it catches up on version 2 (its server
    // off), and the next apply fixes n1.
    cluster.agents[3].kill(DEADLINE);
    cluster.agents[3].start(DEADLINE);
    let n4 = &cluster.agents[3];
    wait_until(DEADLINE, "n4 to catch up on version 2", || {
        (n4.installed() == Some((2, None)) && n4.committed() == Some(2)).then_some(())
    });
    for agent in &cluster.agents {
        wait_until(DEADLINE, &format!("{} to see n4 alive", agent.name), || {
            (agent.sees("n4").as_deref() == Some("alive")).then_some(())
        });
    }
    assert_refused(ports[3]);
    let text = cluster.topology(&second, "the same ports again: n1 retries");
    let (code, result) = put_topology(&cluster.agents[2], &text);
    assert_eq!(code, 200, "{result}");
    assert_eq!(result["outcome"], "committed", "{result}");
    assert_eq!(result["version"], 3, "{result}");
    cluster.installed_everywhere(3);
    assert_serves(ports[3], &cluster.agents[0]);
    assert_refused(ports[0]);
    assert_serves(ports[1], &cluster.agents[1]);
    assert_serves(ports[2], &cluster.agents[2]);
    assert_eq!(
        cluster.agents[0].port_failures(),
        [failure],
        "one failure, logged once"
    );
}
