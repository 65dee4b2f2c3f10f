//! The issues list (issue 9) on real agents: each kind is raised and then
//! cleared by the real condition, and seen cluster-wide through one node's
//! `GET /v1/issues` (merged: one entry per kind and subject, every
//! reporter in `reported_by`), through `cohort issues` and on the event
//! stream (`cohort monitor --kind issue`).
//!
//! - members: SIGSTOP → suspect (and unreachable), SIGCONT → clear;
//!   SIGKILL → dead, and its replica set without a master; restart → clear;
//! - Raft: two of three candidates killed → no quorum, no leader;
//! - config: a node stopped across a commit comes back with its 2PC store
//!   read-only → it cannot catch up (catching up on it, a mismatch seen by
//!   the others, its 2PC writes failing); the mount undone → clear, no
//!   restart;
//! - the data dir made read-only (a bind mount in the agent's own mount
//!   namespace) → unwritable; unmounted → clear;
//! - disk space: the agent's data dir on a small tmpfs, filled and emptied;
//! - clock skew: one agent started with `COHORT_TEST_CLOCK_OFFSET_MS=5000`,
//!   then restarted without it;
//! - a broken topology file on one node, then fixed;
//! - a datagram sealed with a key the cluster lacks, then a minute of
//!   silence.
//!
//! Needs root (mount namespaces, bind mounts, tmpfs) and util-linux's
//! `unshare` and `nsenter`; CI has them. Every wait is a condition with a
//! generous deadline; nothing sleeps to synchronise.

mod support;

use std::fs;
use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::agents::{quoted, Agent, Config};
use support::*;

/// Starting, gossiping, committing, electing on a loaded 2-core machine:
/// generous, never a figure to meet.
const WAIT: Duration = Duration::from_secs(90);
/// Undecryptable packets stay an issue for a minute after the last one.
const QUIET_MINUTE: Duration = Duration::from_secs(150);

const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

/// Longer suspicions (3 s at least) than the harness's default, so a
/// stopped node is seen suspect before it is declared dead.
const GOSSIP: &str = ", suspicion_multiplier: 10";

/// A node of a test's topology: name, replica set, `election`.
type Spec = (&'static str, &'static str, &'static str);

fn require_root() {
    support::require_root("this test mounts in namespaces of its own");
}

/// The topology of `specs` on the agents' ports.
fn topology(specs: &[Spec], agents: &[Agent], extra_set_line: &str) -> String {
    let mut text = String::from("cluster: test\nfailover: { mode: disabled }\nreplicasets:\n");
    let mut sets: Vec<&str> = Vec::new();
    for (_, set, _) in specs {
        if !sets.contains(set) {
            sets.push(set);
        }
    }
    for set in sets {
        text.push_str(&format!(
            "  {set}:\n    roles: [storage]\n{extra_set_line}    nodes:\n"
        ));
        for ((name, s, election), agent) in specs.iter().zip(agents) {
            if *s == set {
                text.push_str(&format!(
                    "      {name}: {{ address: {}, election: {election} }}\n",
                    addr(agent.port)
                ));
            }
        }
    }
    text
}

/// Agents for `specs` under `root`, configured (joined through each other,
/// one topology file each), not started.
fn agents(root: &Path, specs: &[Spec]) -> (Vec<Agent>, String) {
    let agents: Vec<Agent> = specs.iter().map(|(n, _, _)| Agent::new(root, n)).collect();
    let text = topology(specs, &agents, "");
    let join: Vec<u16> = agents.iter().map(|a| a.port).collect();
    for agent in &agents {
        agent.write_config(&Config {
            join: &join,
            gossip: GOSSIP,
            ..Config::default()
        });
        fs::write(&agent.topology, &text).unwrap();
    }
    (agents, text)
}

fn data_dir(agent: &Agent) -> PathBuf {
    agent.dir.join("data")
}

/// `GET /v1/issues` (`?local` when `local`) on `agent`.
fn issues(agent: &Agent, local: bool) -> Option<Value> {
    let path = if local {
        "/v1/issues?local"
    } else {
        "/v1/issues"
    };
    serde_json::from_str(&http_get(agent.api(), path)?).ok()
}

fn list(answer: &Value) -> &[Value] {
    answer["issues"].as_array().map_or(&[], Vec::as_slice)
}

fn find<'a>(answer: &'a Value, kind: &str, subject: &str) -> Option<&'a Value> {
    list(answer)
        .iter()
        .find(|i| i["kind"] == kind && i["subject"] == subject)
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `observer`'s cluster-wide list holds (kind, subject) and
/// `more` accepts the answer; returns the issue.
fn wait_raised(
    observer: &Agent,
    kind: &str,
    subject: &str,
    mut more: impl FnMut(&Value, &Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    let issue = wait_until_or(WAIT, || {
        let answer = issues(observer, false)?;
        let found = find(&answer, kind, subject).cloned();
        last = answer.clone();
        found.filter(|issue| more(issue, &answer))
    });
    // Printed, never asserted: how long the condition took to show.
    eprintln!(
        "{kind} {subject}: listed by {} after {:?}",
        observer.name,
        start.elapsed()
    );
    issue.unwrap_or_else(|| {
        panic!(
            "{} never listed {kind} {subject}; its last answer:\n{last:#}\nits log:\n{}",
            observer.name,
            observer.log_tail(40)
        )
    })
}

/// Waits until `observer`'s cluster-wide list has no (kind, subject).
fn wait_cleared(observer: &Agent, kind: &str, subject: &str, within: Duration) {
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    let cleared = wait_until_or(within, || {
        let answer = issues(observer, false)?;
        let gone = find(&answer, kind, subject).is_none();
        last = answer;
        gone.then_some(())
    });
    eprintln!(
        "{kind} {subject}: cleared on {} after {:?}",
        observer.name,
        start.elapsed()
    );
    assert!(
        cleared.is_some(),
        "{} still lists {kind} {subject}:\n{last:#}",
        observer.name
    );
}

/// Waits until every running agent of `nodes` has a committed topology
/// and knows a Raft leader (before that, an empty list means nothing yet).
fn wait_ready(nodes: &[Agent]) {
    for node in nodes.iter().filter(|n| n.proc.is_some()) {
        let ready = wait_until_or(WAIT, || {
            let status = node.status()?;
            let committed = status["apply"]["version"].as_u64()? >= 1;
            let led = status["raft"]["leader"]["name"].is_string();
            (committed && led).then_some(())
        });
        assert!(
            ready.is_some(),
            "{} has no committed topology or no leader: {:#}",
            node.name,
            node.status().unwrap_or_default()
        );
    }
}

/// Waits until `observer` lists nothing and every running node answered.
fn wait_no_issues(observer: &Agent, running: usize) {
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    let calm = wait_until_or(WAIT, || {
        let answer = issues(observer, false)?;
        let ok = list(&answer).is_empty()
            && answer["nodes_answered"] == running
            && names(&answer["unanswered"]).is_empty();
        last = answer;
        ok.then_some(())
    });
    eprintln!("no issues on {} after {:?}", observer.name, start.elapsed());
    assert!(
        calm.is_some(),
        "{} never listed no issues from {running} nodes; its last answer:\n{last:#}\nits log:\n{}",
        observer.name,
        observer.log_tail(40)
    );
}

fn cli(agent: &Agent, args: &[&str]) -> Output {
    cohort()
        .arg("--api")
        .arg(agent.api().to_string())
        .args(args)
        .output()
        .unwrap()
}

/// `cohort monitor --kind issue --format json` on `agent`, in the
/// background: what it printed comes back from `stop_monitor`.
fn monitor(agent: &Agent) -> Proc {
    Proc::spawn(
        cohort()
            .arg("--api")
            .arg(agent.api().to_string())
            .args(["--format", "json", "monitor", "--kind", "issue"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
}

fn stop_monitor(mut proc: Proc) -> Vec<Value> {
    proc.signal(SIGTERM);
    proc.wait_exit(WAIT);
    let mut text = String::new();
    if let Some(out) = proc.child.stdout.as_mut() {
        out.read_to_string(&mut text).unwrap();
    }
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_event(events: &[Value], kind: &str, subject: &str) -> bool {
    events
        .iter()
        .any(|e| e["kind"] == kind && e["subject"] == subject && e["issue"]["kind"].is_string())
}

/// Members suspect, unreachable and dead, a replica set without its
/// master, and a Raft group without quorum or leader: raised and cleared.
#[test]
fn members_masters_quorum_and_leader() {
    let root = tempfile::tempdir().unwrap();
    let specs: [Spec; 4] = [
        ("n1", "s1", "candidate"),
        ("n2", "s1", "candidate"),
        ("n3", "s1", "candidate"),
        ("n4", "s2", "off"),
    ];
    let (mut nodes, _) = agents(root.path(), &specs);
    for node in &mut nodes {
        node.start(WAIT);
    }
    wait_ready(&nodes);
    wait_no_issues(&nodes[0], 4);
    let out = cli(&nodes[0], &["issues"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no issues (4 of 4 nodes answered)\n"
    );

    // Stopped: suspect, and it does not answer for its list.
    let events = monitor(&nodes[0]);
    let n4 = nodes[3].proc.as_ref().unwrap().pid();
    signal_pid(n4, SIGSTOP);
    // Every other node suspects it in its own time: wait for all three.
    let suspect = wait_raised(&nodes[0], "member-suspect", "n4", |issue, answer| {
        names(&issue["reported_by"]) == ["n1", "n2", "n3"]
            && names(&answer["unanswered"]) == ["n4"]
            && find(answer, "member-unreachable", "n4").is_some()
    });
    assert_eq!(suspect["level"], "warning");
    assert_eq!(names(&suspect["reported_by"]), ["n1", "n2", "n3"]);
    signal_pid(n4, SIGCONT);
    wait_no_issues(&nodes[0], 4);
    let seen = stop_monitor(events);
    assert!(
        has_event(&seen, "issue-raised", "member-suspect n4")
            && has_event(&seen, "issue-cleared", "member-suspect n4"),
        "the event stream: {seen:#?}"
    );

    // Killed: dead, and its set (it alone) has no alive master.
    nodes[3].kill(WAIT);
    let dead = wait_raised(&nodes[0], "member-dead", "n4", |issue, answer| {
        names(&issue["reported_by"]) == ["n1", "n2", "n3"]
            && find(answer, "no-master", "s2").is_some()
    });
    assert_eq!(dead["level"], "critical");
    assert_eq!(dead["node"], "n1", "the answering node speaks for it");
    assert!(dead["since"].as_str().unwrap().ends_with('Z'), "{dead}");
    let answer = issues(&nodes[0], false).unwrap();
    let order: Vec<&str> = list(&answer)
        .iter()
        .map(|i| i["level"].as_str().unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "critical first: {answer:#}"
    );
    let out = cli(&nodes[0], &["issues"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("LEVEL     NODE")
            && text.contains("member-dead")
            && text.contains("no-master"),
        "{text}"
    );
    let out = cli(
        &nodes[1],
        &[
            "--format", "json", "issues", "--local", "--level", "critical",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let local: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(local["nodes_asked"], 1);
    assert!(
        list(&local)
            .iter()
            .all(|i| i["node"] == "n2" && i["level"] == "critical"),
        "{local:#}"
    );
    nodes[3].start(WAIT);
    wait_no_issues(&nodes[0], 4);

    // Two of the three candidates killed: no quorum, then no leader.
    nodes[1].kill(WAIT);
    nodes[2].kill(WAIT);
    wait_raised(&nodes[0], "no-quorum", "raft", |issue, answer| {
        issue["level"] == "critical" && find(answer, "no-leader", "raft").is_some()
    });
    nodes[1].start(WAIT);
    nodes[2].start(WAIT);
    wait_no_issues(&nodes[0], 4);
    let out = cli(&nodes[3], &["issues"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// A node stopped across a commit that cannot catch up (its 2PC store is
/// read-only), then catches up by itself once the store is writable again
/// (no restart); then its data dir made read-only while it runs, then
/// writable again.
#[test]
fn config_mismatch_catching_up_and_an_unwritable_data_dir() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let specs: [Spec; 3] = [
        ("n1", "s1", "candidate"),
        ("n2", "s1", "candidate"),
        ("n3", "s1", "off"),
    ];
    let (mut nodes, _) = agents(root.path(), &specs);
    for node in &mut nodes {
        node.start(WAIT);
    }
    wait_ready(&nodes);
    wait_no_issues(&nodes[0], 3);

    // Version 2 is committed while n3 is down.
    nodes[2].stop(WAIT);
    let second = topology(&specs, &nodes, "    weight: 2\n");
    nodes[0].edit(&second);
    for node in &nodes[..2] {
        let committed = wait_until_or(WAIT, || {
            (node.status()?["apply"]["version"] == 2).then_some(())
        });
        assert!(
            committed.is_some(),
            "{} never committed version 2 ({second}; file: {}): {:#}\n{}",
            node.name,
            read(&nodes[0].topology),
            node.status().unwrap_or_default(),
            node.log_tail(30)
        );
    }
    let store = data_dir(&nodes[2]).join("twophase");
    assert!(store.is_dir(), "n3 installed version 1 there");
    nodes[2].start_in_own_mounts(
        &format!(
            "mount --bind {s} {s} && mount -o remount,bind,ro {s}",
            s = quoted(&store)
        ),
        WAIT,
    );
    // Each reporter lists it after its own grace: wait for both.
    let mismatch = wait_raised(&nodes[0], "config-mismatch", "n3", |issue, answer| {
        names(&issue["reported_by"]) == ["n1", "n2"] && find(answer, "catching-up", "n3").is_some()
    });
    assert_eq!(mismatch["level"], "warning");
    assert_eq!(names(&mismatch["reported_by"]), ["n1", "n2"]);
    assert!(
        mismatch["message"]
            .as_str()
            .unwrap()
            .contains("n3 runs topology version 1, behind version 2"),
        "{mismatch}"
    );
    let answer = issues(&nodes[0], false).unwrap();
    assert_eq!(
        names(&find(&answer, "catching-up", "n3").unwrap()["reported_by"]),
        ["n3"]
    );
    let failing = find(&answer, "data-dir-unwritable", &store.display().to_string())
        .unwrap_or_else(|| panic!("n3's apply driver cannot write its store: {answer:#}"));
    assert_eq!(failing["level"], "critical");
    assert_eq!(failing["node"], "n3");
    assert!(
        failing["message"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{failing}"
    );

    // The store writable again under the running agent: its driver's
    // retry works, it catches up, every issue clears; no restart.
    nodes[2].in_own_mounts(&format!("umount {}", quoted(&store)));
    wait_no_issues(&nodes[0], 3);
    assert_eq!(nodes[2].status().unwrap()["apply"]["version"], 2);

    // Its data dir read-only under it (a bind mount only it sees).
    nodes[2].stop(WAIT);
    nodes[2].start_in_own_mounts("true", WAIT);
    wait_no_issues(&nodes[0], 3);
    let dir = data_dir(&nodes[2]);
    nodes[2].in_own_mounts(&format!(
        "mount --bind {d} {d} && mount -o remount,bind,ro {d}",
        d = quoted(&dir)
    ));
    let subject = dir.display().to_string();
    let unwritable = wait_raised(&nodes[0], "data-dir-unwritable", &subject, |_, _| true);
    assert_eq!(unwritable["level"], "critical");
    assert_eq!(unwritable["node"], "n3");
    assert!(
        unwritable["message"]
            .as_str()
            .unwrap()
            .contains("Read-only file system"),
        "{unwritable}"
    );
    // The node's health answers from the same probe: unusable, and why.
    let (code, body) = http(addr(nodes[2].api), "GET", "/v1/health").expect("health answers");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, &health["code"]),
        (503, &"data_dir_unusable".into()),
        "{health}"
    );
    assert_eq!(health["message"], unwritable["message"], "{health}");
    nodes[2].in_own_mounts(&format!("umount {}", quoted(&dir)));
    wait_cleared(&nodes[0], "data-dir-unwritable", &subject, WAIT);
    wait_no_issues(&nodes[0], 3);
    let (code, body) = http(addr(nodes[2].api), "GET", "/v1/health").expect("health answers");
    assert_eq!(code, 200, "{body}");
}

/// The data dir on a tmpfs of 100 MiB, filled by a ballast file until
/// 3 MiB are free (warning: under 5 % and under 1 GiB), then 700 KiB
/// (critical: under 1 % and under 100 MiB), then emptied. Filling, not
/// shrinking: a small tmpfs with most of it free is not nearly full.
#[test]
fn a_nearly_full_disk() {
    require_root();
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, _) = agents(root.path(), &[("n1", "s1", "candidate")]);
    let dir = data_dir(&nodes[0]);
    fs::create_dir_all(&dir).unwrap();
    let d = quoted(&dir);
    nodes[0].start_in_own_mounts(
        &format!("mount -t tmpfs -o size=100m cohort-issues {d}"),
        WAIT,
    );
    wait_ready(&nodes);
    let node = &nodes[0];
    wait_no_issues(node, 1);
    let subject = dir.display().to_string();
    // Leaves `free` bytes available (blocks free to non-root × block size).
    let fill_leaving = |name: &str, free: u64| {
        node.in_own_mounts(&format!(
            "fallocate -l $(( $(stat -f -c '%a * %S' {d}) - {free} )) {d}/{name}"
        ))
    };
    fill_leaving("ballast-1", 3 << 20);
    let warning = wait_raised(node, "disk-full", &subject, |_, _| true);
    assert_eq!(warning["level"], "warning");
    assert!(
        warning["message"]
            .as_str()
            .unwrap()
            .contains("free of 100.0 MiB"),
        "{warning}"
    );
    fill_leaving("ballast-2", 700 << 10);
    wait_raised(node, "disk-full", &subject, |issue, _| {
        issue["level"] == "critical"
    });
    node.in_own_mounts(&format!("rm {d}/ballast-1 {d}/ballast-2"));
    wait_cleared(node, "disk-full", &subject, WAIT);
    wait_no_issues(node, 1);
}

/// One clock 5 s ahead (a test-only offset), then fixed; a broken
/// topology file on one node, then fixed; a packet no key opens, then a
/// quiet minute.
#[test]
fn clock_skew_a_rejected_topology_and_undecryptable_packets() {
    let root = tempfile::tempdir().unwrap();
    let specs: [Spec; 3] = [
        ("n1", "s1", "candidate"),
        ("n2", "s1", "off"),
        ("n3", "s1", "off"),
    ];
    let (mut nodes, text) = agents(root.path(), &specs);
    nodes[0].start(WAIT);
    nodes[1].start(WAIT);
    let mut skewed = cohort();
    skewed.env("COHORT_TEST_CLOCK_OFFSET_MS", "5000");
    nodes[2].start_as(skewed, WAIT);
    wait_ready(&nodes);
    assert!(
        read(&nodes[2].log()).contains("COHORT_TEST_CLOCK_OFFSET_MS is set"),
        "the offset is logged: {}",
        nodes[2].log_tail(40)
    );
    // n1 and n2 see n3 ahead; n3 sees both others behind: itself is off.
    let skew = wait_raised(&nodes[0], "clock-skew", "n3", |issue, _| {
        names(&issue["reported_by"]) == ["n1", "n2", "n3"]
    });
    assert_eq!(skew["level"], "warning");
    assert!(
        skew["message"]
            .as_str()
            .unwrap()
            .contains("ahead of this node's"),
        "{skew}"
    );
    let from_n3 = issues(&nodes[2], true).unwrap();
    let own = find(&from_n3, "clock-skew", "n3").expect("n3 names itself");
    assert!(
        own["message"]
            .as_str()
            .unwrap()
            .contains("ahead of 2 of its 2 peers"),
        "{own}"
    );
    nodes[2].stop(WAIT);
    nodes[2].start(WAIT);
    wait_no_issues(&nodes[0], 3);

    // A file that does not parse, on n2 only.
    nodes[1].edit("cluster: test\nreplicasets:\n  s1: [\n");
    let path = nodes[1].topology.display().to_string();
    let rejected = wait_raised(&nodes[0], "topology-rejected", &path, |_, _| true);
    assert_eq!(rejected["node"], "n2");
    assert_eq!(rejected["level"], "warning");
    assert!(
        rejected["message"]
            .as_str()
            .unwrap()
            .contains("the cluster keeps the committed version"),
        "{rejected}"
    );
    nodes[1].edit(&text);
    wait_no_issues(&nodes[0], 3);

    // A packet sealed with a key this cluster does not have.
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = cohort::membership::PacketSecurity::Encrypted(
        cohort::membership::Keyring::new(&[[0x5a; 32]]).unwrap(),
    );
    let frame = cohort::membership::wire::seal(&stranger, [7; 12], b"not for you").unwrap();
    sender.send_to(&frame, addr(nodes[0].port)).unwrap();
    let garbage = wait_raised(&nodes[0], "undecryptable-packets", "n1", |_, _| true);
    let from = sender.local_addr().unwrap().to_string();
    let message = garbage["message"].as_str().unwrap();
    assert!(
        message.starts_with("1 gossip packets could not be decrypted") && message.contains(&from),
        "{garbage}"
    );
    assert_eq!(garbage["level"], "warning");
    wait_cleared(&nodes[0], "undecryptable-packets", "n1", QUIET_MINUTE);
    wait_no_issues(&nodes[0], 3);
}
