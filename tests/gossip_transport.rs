//! When a firewall blocks UDP but not TCP (or the reverse), status says so
//! in plain words, and a node reachable over TCP is not declared dead: its
//! probes fall back to TCP (as memberlist's do). Three real agents run in
//! a network namespace this test creates; nftables drops one node's
//! inbound UDP, then its inbound TCP. Needs root, `ip` and `nft`.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::agents::spawn_agent;
use support::netns::Netns;
use support::*;

const CONVERGE: Duration = Duration::from_secs(60);
const KEY: &str = "q1Yd5rO3o0bI7wJ7dHqv1Uq9QbS7+7Kz3KQbq3oE8Xk=";

struct Agent {
    name: String,
    port: u16,
    api: u16,
    _proc: Proc,
}

fn start(ns: &Netns, root: &Path, name: &str, port: u16, seed: u16) -> Agent {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let key = dir.join("gossip.key");
    fs::write(&key, format!("{KEY}\n")).unwrap();
    let api = port + 1000;
    let config = dir.join("cohort.yaml");
    fs::write(
        &config,
        format!(
            "node: {name}\ncluster: test\nbind: 127.0.0.1:{port}\ndata_dir: {data}\ntopology: {dir}/topology.yaml\n\
             join: [127.0.0.1:{seed}]\ngossip: {{ key_file: {key}, protocol_period: 300ms, ack_timeout: 150ms, push_pull_interval: 1s }}\n\
             api: {{ http: 127.0.0.1:{api}, socket: {dir}/api.sock, token_file: {token} }}\nlog: {{ level: info, format: text }}\n",
            data = dir.join("data").display(),
            token = token_file().display(),
            dir = dir.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join("agent.log")).unwrap();
    let proc = spawn_agent(ns.exec(env!("CARGO_BIN_EXE_cohort")), &config, log);
    Agent {
        name: name.into(),
        port,
        api,
        _proc: proc,
    }
}

/// `cohort ARGS` against `agent`'s API, run inside the namespace.
fn ask(ns: &Netns, agent: &Agent, args: &[&str]) -> Option<String> {
    ns.cohort(addr(agent.api), args)
}

fn json(ns: &Netns, agent: &Agent, args: &[&str]) -> Option<serde_json::Value> {
    serde_json::from_str(&ask(ns, agent, args)?).ok()
}

fn statuses(ns: &Netns, observer: &Agent) -> Option<Vec<(String, String)>> {
    let members = json(ns, observer, &["members", "--format", "json"])?;
    Some(
        members
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_string(),
                    m["status"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

fn warnings(ns: &Netns, agent: &Agent) -> Vec<String> {
    json(ns, agent, &["status", "--format", "json"])
        .and_then(|s| {
            s["warnings"].as_array().map(|w| {
                w.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn wait_for_warning(ns: &Netns, agent: &Agent, wanted: &[&str]) -> String {
    wait_until(
        CONVERGE,
        &format!("{} to warn {wanted:?}", agent.name),
        || {
            warnings(ns, agent)
                .into_iter()
                .find(|w| wanted.iter().all(|part| w.contains(part)))
        },
    )
}

fn log_of(root: &Path, name: &str) -> PathBuf {
    root.join(name).join("agent.log")
}

#[test]
fn status_names_udp_or_tcp_blocked_and_tcp_keeps_a_node_alive() {
    let ns = Netns::create("transport");
    let root = tempfile::tempdir().unwrap();
    let a = start(&ns, root.path(), "a", 7101, 7101);
    let b = start(&ns, root.path(), "b", 7102, 7101);
    let c = start(&ns, root.path(), "c", 7103, 7101);
    let all = [&a, &b, &c];
    wait_until(CONVERGE, "3 alive members on every node", || {
        all.iter()
            .all(|o| {
                statuses(&ns, o)
                    .is_some_and(|v| v.len() == 3 && v.iter().all(|(_, s)| s == "alive"))
            })
            .then_some(())
    });
    for agent in all {
        assert_eq!(warnings(&ns, agent), Vec::<String>::new(), "{}", agent.name);
    }

    // b's inbound UDP is dropped: b hears no datagram, but TCP works.
    ns.nft("add table inet cohort_test");
    ns.nft("add chain inet cohort_test input { type filter hook input priority 0 ; }");
    ns.nft(&format!(
        "add rule inet cohort_test input udp dport {} drop",
        b.port
    ));
    let said = wait_for_warning(&ns, &b, &["UDP seems blocked", "while TCP works"]);
    assert!(said.contains(&format!("UDP port {}", b.port)), "{said}");
    wait_for_warning(
        &ns,
        &a,
        &["UDP fails with some peers", "answered only over TCP"],
    );
    // `cohort status` says it to a person too.
    let text = ask(&ns, &b, &["status"]).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning") && l.contains("UDP seems blocked")),
        "{text}"
    );
    // Reachable over TCP, b was never declared dead by anyone.
    for observer in [&a, &c] {
        let view = statuses(&ns, observer).unwrap();
        assert!(
            view.iter().any(|(n, s)| n == "b" && s != "dead"),
            "{} sees {view:?}",
            observer.name
        );
        let log = fs::read_to_string(log_of(root.path(), &observer.name)).unwrap();
        assert!(
            !log.lines()
                .any(|l| l.contains("member=b") && l.contains("-> dead")),
            "{} declared b dead:\n{log}",
            observer.name
        );
    }

    // Now the reverse: b's UDP flows again, its inbound TCP is dropped.
    ns.nft("flush chain inet cohort_test input");
    ns.nft(&format!(
        "add rule inet cohort_test input tcp dport {} drop",
        b.port
    ));
    wait_for_warning(&ns, &a, &["TCP fails", "while UDP gossip works"]);
}
