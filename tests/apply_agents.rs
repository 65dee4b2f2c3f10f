//! Five real agents on loopback applying topology changes by two-phase
//! commit. Each node has its own dir, node config, data dir, topology file
//! (in `etc/`) and API port; they share a gossip key and join through each
//! other. What an operator sees is checked through the API (`GET
//! /v1/status`, `PUT /v1/topology`) and the files on disk:
//!
//! - an edit of one node's file (temp file + rename, like an editor) is
//!   committed everywhere as one version, files byte-identical, comments
//!   kept;
//! - a broken edit (bad YAML, an unknown role, two http ports on one host)
//!   is rejected with `FILE:LINE:COLUMN` in that node's status and changes
//!   nothing anywhere;
//! - an external role whose `validate` refuses on one node aborts a `PUT
//!   /v1/topology` with HTTP 409 and its stderr as the reason;
//! - a coordinator SIGKILLed between prepare and commit leaves no lock
//!   behind: the survivors give the txn up by asking each other, or, when
//!   they all voted yes, wait for the coordinator and settle when it is
//!   back;
//! - a node stopped during an apply is reported not reached, and catches
//!   up when it restarts;
//! - of two edits made at once on two nodes one wins everywhere, and the
//!   other is kept beside its file as `topology.yaml.before-vN`.
//!
//! Every wait is a condition with a deadline sized for a loaded 2-core
//! machine; none is a figure.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agents::{quoted, Agent, Config};
use support::*;

/// The longest any condition is waited for; only reached when broken.
const WAIT: Duration = Duration::from_secs(60);
/// The 2PC lock when free, as the status says it.
const FREE: &str = "no apply in progress";

impl Agent {
    /// The 2PC lock in words.
    fn lock(&self) -> Option<String> {
        Some(self.status()?["apply"]["lock"].as_str()?.to_string())
    }

    fn file(&self) -> Vec<u8> {
        fs::read(&self.topology).unwrap_or_default()
    }

    /// `PUT /v1/topology?wait=true`: the HTTP code and the JSON answer.
    fn put(&self, text: &str) -> (u16, Value) {
        let (code, body) = http_with_body(
            self.api(),
            "PUT",
            "/v1/topology?wait=true&timeout=45s",
            text,
            WAIT,
        )
        .unwrap_or_else(|| panic!("{} answers PUT /v1/topology", self.name));
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("PUT /v1/topology answered {code} with {body:?}: {e}"));
        (code, json)
    }

    /// Files named `topology.yaml.before-v*` beside the topology file.
    fn kept_copies(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.dir.join("etc"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("topology.yaml.before-v"))
            .collect();
        names.sort();
        names
    }
}

/// The committed version as one node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed {
    version: u64,
    hash: String,
    text: String,
}

struct Cluster {
    nodes: Vec<Agent>,
    /// The external role `probe` (see `probe_script`) and the dir of the
    /// files that steer it.
    probe: PathBuf,
    flags: PathBuf,
    /// Every node `election: candidate`: a Raft group, which records the
    /// 2PC decisions.
    voters: bool,
    /// Removed at the end, unless `APPLY_AGENTS_KEEP` is set (then its
    /// path is printed, to read the agents' logs).
    root: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Five agents started with the same topology (`probe`: with the
    /// external role on every node), once they all see each other alive,
    /// have committed it, and are quiet.
    fn start(probe: bool) -> Cluster {
        Cluster::start_with(probe, false)
    }

    /// The same, every node a Raft candidate when `voters`.
    fn start_with(probe: bool, voters: bool) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let flags = root.path().join("flags");
        fs::create_dir_all(&flags).unwrap();
        let mut nodes: Vec<Agent> = (1..=5)
            .map(|i| {
                let name = format!("n{i}");
                let dir = root.path().join(&name);
                fs::create_dir_all(dir.join("etc")).unwrap();
                Agent {
                    name,
                    port: free_port_not_ephemeral(),
                    api: free_port_not_ephemeral(),
                    topology: dir.join("etc").join("topology.yaml"),
                    dir,
                    proc: None,
                }
            })
            .collect();
        let join: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        for node in &nodes {
            node.write_config(&Config {
                join: &join,
                ..Config::default()
            });
        }
        let mut cluster = Cluster {
            probe: probe_script(root.path(), &flags),
            flags,
            voters,
            nodes: Vec::new(),
            root: Some(root),
        };
        let first = cluster.text_with(&nodes, "first version", probe, "");
        for node in &nodes {
            fs::write(&node.topology, &first).unwrap();
        }
        for node in &mut nodes {
            node.start(WAIT);
        }
        cluster.nodes = nodes;
        cluster.all_alive();
        let v1 = cluster.quiet();
        assert_eq!(v1.text, first, "the first version");
        cluster
    }

    /// The topology of these five nodes: `note` in its first comment,
    /// `probe` assigns the external role to both replica sets, `more` is
    /// appended as is.
    fn text(&self, note: &str, probe: bool, more: &str) -> String {
        self.text_with(&self.nodes, note, probe, more)
    }

    fn text_with(&self, nodes: &[Agent], note: &str, probe: bool, more: &str) -> String {
        let extra = if probe { ", probe" } else { "" };
        let election = if self.voters {
            ", election: candidate"
        } else {
            ""
        };
        let mut text = format!(
            "# Test topology: {note}\n# (comments are part of the text every node keeps)\n\
             cluster: test\nreplicasets:\n  s1:\n    roles: [storage{extra}]   # the data\n    nodes:\n"
        );
        for node in &nodes[..3] {
            text.push_str(&format!(
                "      {}: {{ address: {}{election} }}\n",
                node.name,
                addr(node.port)
            ));
        }
        text.push_str(&format!("  s2:\n    roles: [router{extra}]\n    nodes:\n"));
        for node in &nodes[3..] {
            text.push_str(&format!(
                "      {}: {{ address: {}{election} }}\n",
                node.name,
                addr(node.port)
            ));
        }
        if probe {
            text.push_str(&format!(
                "roles:\n  probe:\n    exec: {}\n    timeout: 30s\n",
                quoted(&self.probe)
            ));
        }
        text.push_str(more);
        text
    }

    /// Waits until n2-n5 (n1 coordinated `txn` and was killed) have free
    /// locks.
    fn wait_survivors_free(&self, txn: &str) {
        let mut last = Vec::new();
        wait_until_or(WAIT, || {
            last = self.nodes[1..].iter().map(|n| n.lock()).collect();
            last.iter()
                .all(|l| l.as_deref() == Some(FREE))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("the survivors of {txn} still hold their locks: {last:?}"));
    }

    fn flag(&self, name: &str) -> PathBuf {
        self.flags.join(name)
    }

    fn running(&self) -> impl Iterator<Item = &Agent> {
        self.nodes.iter().filter(|n| n.proc.is_some())
    }

    fn node(&self, name: &str) -> &Agent {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    /// Waits until every running node sees every running node alive.
    fn all_alive(&self) {
        let names: Vec<&str> = self.running().map(|n| n.name.as_str()).collect();
        wait_until(WAIT, &format!("{names:?} alive on each of them"), || {
            self.running()
                .all(|n| {
                    names
                        .iter()
                        .all(|name| n.sees(name).as_deref() == Some("alive"))
                })
                .then_some(())
        });
    }

    /// Waits until every running node has the same committed version and
    /// hash, its lock free, and a topology file that is the committed
    /// text byte for byte; returns that version.
    fn settled(&self) -> Committed {
        let mut last = String::new();
        let found = wait_until_or(WAIT, || {
            let mut seen: Option<Committed> = None;
            last.clear();
            for node in self.running() {
                let Some(status) = node.status() else {
                    last = format!("{} does not answer", node.name);
                    return None;
                };
                let apply = &status["apply"];
                let committed = Committed {
                    version: apply["version"].as_u64()?,
                    hash: apply["hash"].as_str()?.to_string(),
                    text: committed_text(node)?,
                };
                last.push_str(&format!(
                    "{}: config_version {}, apply.version {}, lock {:?}, file {}; ",
                    node.name,
                    status["config_version"],
                    committed.version,
                    apply["lock"].as_str().unwrap_or(""),
                    if node.file() == committed.text.as_bytes() {
                        "= committed"
                    } else {
                        "differs"
                    }
                ));
                let ok = status["config_version"].as_u64() == Some(committed.version)
                    && apply["lock"] == FREE
                    && node.file() == committed.text.as_bytes()
                    && seen.as_ref().is_none_or(|s| *s == committed);
                if !ok {
                    return None;
                }
                seen = Some(committed);
            }
            seen
        });
        found.unwrap_or_else(|| panic!("the cluster did not settle within {WAIT:?}: {last}"))
    }

    /// `settled`, and moreover every node's file trigger is idle: its
    /// status says the file is the committed text, nothing pending, and
    /// the node coordinates nothing.
    fn quiet(&self) -> Committed {
        let mut last = String::new();
        let found = wait_until_or(WAIT, || {
            let committed = self.settled();
            last.clear();
            for node in self.running() {
                let status = node.status()?;
                last.push_str(&format!(
                    "{}: version {}, topology {}, apply.coordinating {}; ",
                    node.name,
                    status["config_version"],
                    status["topology"],
                    status["apply"]["coordinating"]
                ));
                let idle = status["config_version"].as_u64() == Some(committed.version)
                    && status["topology"]["matches_committed"] == true
                    && status["topology"]["pending"].is_null()
                    && status["apply"]["coordinating"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                if !idle {
                    return None;
                }
            }
            Some(committed)
        });
        found.unwrap_or_else(|| panic!("the cluster did not become quiet within {WAIT:?}: {last}"))
    }

    /// Every running node is on `committed` now, lock free, file intact,
    /// and no copy of an edit was made anywhere.
    fn assert_still(&self, committed: &Committed) {
        for node in self.running() {
            let status = node.status().unwrap();
            assert_eq!(
                status["config_version"].as_u64(),
                Some(committed.version),
                "{}: {status:#}",
                node.name
            );
            assert_eq!(status["apply"]["version"].as_u64(), Some(committed.version));
            assert_eq!(status["apply"]["hash"], committed.hash.as_str());
            assert_eq!(
                committed_text(node).as_deref(),
                Some(committed.text.as_str())
            );
            assert_eq!(node.kept_copies(), Vec::<String>::new(), "{}", node.name);
        }
    }

    /// Waits until every running node's lock is free, then checks that
    /// nothing changed.
    fn assert_unchanged(&self, committed: &Committed) {
        wait_until(WAIT, "every lock to be free", || {
            self.running()
                .all(|n| n.lock().as_deref() == Some(FREE))
                .then_some(())
        });
        self.assert_still(committed);
        for node in self.running() {
            assert_eq!(
                node.file(),
                committed.text.as_bytes(),
                "{}'s file changed",
                node.name
            );
        }
    }
}

impl Drop for Cluster {
    /// On a failure, the end of every agent's log, to see why.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("---- {} ({}) ----", node.name, node.log().display());
                eprintln!("{}", node.log_tail(80));
            }
            eprintln!("---- probe calls ----\n{}", read(&self.flag("calls.log")));
        }
        // The agents stop before their dir goes.
        for node in &mut self.nodes {
            node.proc.take();
        }
        if std::env::var_os("APPLY_AGENTS_KEEP").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("kept {}", root.keep().display());
            }
        }
    }
}

/// `GET /v1/topology`: the committed text.
fn committed_text(node: &Agent) -> Option<String> {
    let body: Value = serde_json::from_str(&http_get(node.api(), "/v1/topology")?).ok()?;
    Some(body["text"].as_str()?.to_string())
}

/// The external role `probe`: logs each call to `FLAGS/calls.log`; its
/// `validate` on node N, when `FLAGS/hold-N` exists, waits until
/// `FLAGS/release` appears (`FLAGS/holding-N` exists while it waits), then
/// refuses with the content of `FLAGS/refuse-N` on stderr when that file
/// exists. Everything else succeeds.
fn probe_script(root: &Path, flags: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = root.join("probe.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             flags={flags}\n\
             cat >/dev/null\n\
             echo \"$1 $COHORT_NODE ${{COHORT_CONFIG_VERSION:-}}\" >>\"$flags/calls.log\"\n\
             if [ \"$1\" = validate ]; then\n\
             \x20 if [ -e \"$flags/hold-$COHORT_NODE\" ]; then\n\
             \x20   : >\"$flags/holding-$COHORT_NODE\"\n\
             \x20   while [ ! -e \"$flags/release\" ]; do sleep 0.05; done\n\
             \x20   rm -f \"$flags/holding-$COHORT_NODE\"\n\
             \x20 fi\n\
             \x20 if [ -e \"$flags/refuse-$COHORT_NODE\" ]; then\n\
             \x20   cat \"$flags/refuse-$COHORT_NODE\" >&2\n\
             \x20   exit 1\n\
             \x20 fi\n\
             fi\n\
             exit 0\n",
            flags = quoted(flags),
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn problems(status: &Value) -> Vec<String> {
    status["topology"]["problems"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|p| p.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `node` reports its file invalid with exactly `expected`
/// problems, and returns its status.
fn wait_rejected(node: &Agent, expected: &[String]) -> Value {
    let mut last = Value::Null;
    wait_until_or(WAIT, || {
        last = node.status()?;
        (last["topology"]["state"] == "invalid" && problems(&last) == expected).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} did not reject its file with {expected:#?}; its status: {last:#}",
            node.name
        )
    });
    last
}

#[test]
fn edits_commit_everywhere_and_broken_or_refused_ones_change_nothing() {
    let started = Instant::now();
    let cluster = Cluster::start(false);
    let v1 = cluster.quiet();
    // Five nodes started with one file commit it once.
    assert_eq!(
        v1.version, 1,
        "the same first text was committed as more than one version"
    );

    // 1. An edit on n2, saved like an editor does: one new version on
    // every node, every file byte for byte the edit, comments included.
    let edit = cluster.text(
        "edited on n2",
        false,
        "# a trailing comment the operator wrote\n",
    );
    cluster.node("n2").edit(&edit);
    let v2 = cluster.settled();
    assert_eq!(v2.version, v1.version + 1);
    assert_eq!(v2.text, edit);
    assert_ne!(v2.hash, v1.hash);
    for node in cluster.running() {
        assert_eq!(node.file(), edit.as_bytes(), "{}'s file", node.name);
        let mut last = Value::Null;
        wait_until_or(WAIT, || {
            last = node.status()?;
            let file = &last["topology"];
            (file["state"] == "valid"
                && file["matches_committed"] == true
                && file["pending"].is_null())
            .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}'s status says its file is not the committed text: {last:#}",
                node.name
            )
        });
    }
    cluster.assert_still(&v2);
    // Only n2's edit was made, and it won: no node reports an edit that
    // lost (every node's own file was committed, as version 1 or 2).
    for node in cluster.running() {
        let status = node.status().unwrap();
        let last = status["apply"]["last"]["summary"].as_str().unwrap_or("");
        assert!(
            !last.contains("another change won"),
            "{} reports a lost edit although its file was committed: {status:#}",
            node.name
        );
    }

    // 2. Broken edits on n3: each rejected with FILE:LINE:COLUMN in n3's
    // status, and nothing changes on any node.
    let n3 = cluster.node("n3");
    let path = n3.topology.display().to_string();
    let broken = [
        (
            "bad YAML (an unclosed flow sequence)",
            edit.replacen("roles: [storage]", "roles: [storage", 1),
            format!("{path}:7:10: illegal placement of ':' indicator"),
        ),
        (
            "an unknown role",
            edit.replacen("roles: [storage]", "roles: [storage, cache]", 1),
            format!(
                "{path}:6:22: unknown role `cache`: not built in (http, router, storage) and not defined under `roles:` with an `exec` path"
            ),
        ),
        (
            "two http ports on one host",
            format!("{edit}roles:\n  http:\n    listen:\n      n1: 40001\n      n2: 40001\n"),
            format!(
                "{path}:21:11: roles.http.listen: port 40001 on host 127.0.0.1 is already taken by node `n1`"
            ),
        ),
    ];
    for (what, text, problem) in &broken {
        n3.edit(text);
        let status = wait_rejected(n3, std::slice::from_ref(problem));
        let pending = status["topology"]["pending"].as_str().unwrap_or("");
        assert_eq!(
            pending,
            format!(
                "rejected: 1 problem(s); the cluster keeps version {}",
                v2.version
            ),
            "{what}: {status:#}"
        );
        assert_eq!(status["topology"]["matches_committed"], false, "{what}");
        // The operator's broken file stays as written.
        assert_eq!(n3.file(), text.as_bytes(), "{what}");
        for node in cluster.running().filter(|n| n.name != "n3") {
            assert_eq!(
                node.file(),
                v2.text.as_bytes(),
                "{what}: {}'s file",
                node.name
            );
        }
        for node in cluster.running() {
            let status = node.status().unwrap();
            assert_eq!(
                status["config_version"].as_u64(),
                Some(v2.version),
                "{what}"
            );
            assert_eq!(status["apply"]["lock"], FREE, "{what}: {}", node.name);
            assert_eq!(committed_text(node).as_deref(), Some(v2.text.as_str()));
        }
    }
    // Putting the committed text back: valid, nothing to apply.
    n3.edit(&v2.text);
    wait_until(WAIT, "n3's file to be valid again", || {
        let status = n3.status()?;
        (status["topology"]["state"] == "valid" && status["topology"]["matches_committed"] == true)
            .then_some(())
    });
    cluster.assert_unchanged(&v2);

    // 3. An external role whose validate refuses on n4: `PUT
    // /v1/topology` on n1 is aborted (409) with n4's stderr as the reason,
    // and no node changes version.
    let why = "n4 refuses: /srv/cache is read-only";
    fs::write(cluster.flag("refuse-n4"), format!("{why}\n")).unwrap();
    let with_probe = cluster.text("the probe role on every node", true, "");
    let (code, answer) = cluster.node("n1").put(&with_probe);
    assert_eq!(code, 409, "{answer:#}");
    assert_eq!(answer["outcome"], "aborted", "{answer:#}");
    let reasons = answer["reasons"].as_array().cloned().unwrap_or_default();
    assert_eq!(reasons.len(), 1, "{answer:#}");
    assert_eq!(reasons[0]["node"], "n4", "{answer:#}");
    assert_eq!(
        reasons[0]["reason"],
        format!("role `probe`: {why}").as_str(),
        "{answer:#}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains(why),
        "{answer:#}"
    );
    cluster.assert_unchanged(&v2);
    // Every node was asked (the role runs on all of them).
    let calls = read(&cluster.flag("calls.log"));
    for node in cluster.running() {
        let call = format!("validate {} {}", node.name, v2.version + 1);
        assert!(calls.lines().any(|l| l == call), "no `{call}` in {calls}");
    }

    // Once n4 accepts, the same text commits everywhere, and every node
    // runs the role's apply for it.
    fs::remove_file(cluster.flag("refuse-n4")).unwrap();
    let (code, answer) = cluster.node("n1").put(&with_probe);
    assert_eq!(code, 200, "{answer:#}");
    assert_eq!(answer["outcome"], "committed", "{answer:#}");
    assert_eq!(
        answer["version"].as_u64(),
        Some(v2.version + 1),
        "{answer:#}"
    );
    assert_eq!(answer["finished"], true, "{answer:#}");
    let v3 = cluster.settled();
    assert_eq!(v3.version, v2.version + 1);
    assert_eq!(v3.text, with_probe);
    wait_until(WAIT, "the probe role applied on every node", || {
        let calls = read(&cluster.flag("calls.log"));
        cluster
            .running()
            .all(|n| {
                let call = format!("apply {} {}", n.name, v3.version);
                calls.lines().any(|l| l == call)
            })
            .then_some(())
    });
    cluster.assert_still(&v3);
    // The answer names the hash of the text it committed (v3's, not the
    // version it replaced).
    assert_eq!(
        answer["hash"],
        v3.hash.as_str(),
        "the hash in the PUT answer for version {} (v{}'s hash is {})",
        v3.version,
        v2.version,
        v2.hash
    );
    eprintln!("edits test: {:?}", started.elapsed());
}

/// Starts `PUT /v1/topology` of `text` on `node` in a thread: the answer,
/// or None when the connection broke (the node was killed first).
fn put_in_background(node: &Agent, text: String) -> std::thread::JoinHandle<Option<(u16, String)>> {
    let api = node.api();
    std::thread::spawn(move || {
        http_with_body(
            api,
            "PUT",
            "/v1/topology?wait=true&timeout=45s",
            &text,
            WAIT,
        )
    })
}

/// Waits until n1 (the coordinator) and n2–n4 are prepared for one txn
/// while n5's validation hangs in the probe role; returns the txn's
/// lock text on n1.
fn wait_prepared_but_n5(cluster: &Cluster) -> String {
    let mut last = Vec::new();
    wait_until_or(WAIT, || {
        last = cluster.nodes.iter().map(|n| n.lock()).collect();
        let coordinator = last[0].clone()?;
        let txn = coordinator.strip_prefix("prepared for ")?.to_string();
        let prepared = last[1..4]
            .iter()
            .all(|l| l.as_deref() == Some(coordinator.as_str()));
        let validating = last[4].as_deref() == Some(format!("validating {txn}").as_str());
        (prepared && validating && cluster.flag("holding-n5").exists()).then_some(txn)
    })
    .unwrap_or_else(|| panic!("n1-n4 prepared and n5 validating; the locks: {last:?}"))
}

#[test]
fn a_killed_coordinator_leaves_no_lock_and_a_stopped_node_catches_up() {
    let started = Instant::now();
    let mut cluster = Cluster::start(true);
    let v = cluster.quiet();

    // 4a. n5's validation hangs; n1 coordinates and is SIGKILLed once
    // n1-n4 voted yes, before any decision. The survivors' leases run
    // out, they ask each other, and n5, still validating, refuses the
    // txn for good: every survivor aborts and frees its lock, without the
    // coordinator.
    fs::write(cluster.flag("hold-n5"), "").unwrap();
    let put = put_in_background(
        &cluster.nodes[0],
        cluster.text("4a: the coordinator dies", true, ""),
    );
    let txn = wait_prepared_but_n5(&cluster);
    cluster.nodes[0].kill(WAIT);
    let answer = put.join().unwrap();
    if let Some(answer) = &answer {
        eprintln!("4a: the coordinator decided before it was killed: {answer:?}");
    }
    cluster.wait_survivors_free(&txn);
    cluster.assert_still(&v);
    // n5's hanging validation ends; its late yes changes nothing.
    fs::write(cluster.flag("release"), "").unwrap();
    wait_until(WAIT, "n5's validation to end", || {
        (!cluster.flag("holding-n5").exists()).then_some(())
    });
    cluster.nodes[0].start(WAIT);
    let after = cluster.settled();
    assert_eq!(after, v, "after the coordinator's restart");
    cluster.assert_unchanged(&v);

    // 4b. The same, but n5 is let go right after the kill: every survivor
    // voted yes, and none can know the decision. They keep their locks,
    // waiting for it, until the coordinator is back; it never decided, so
    // it aborts, and everyone is free on the old version.
    fs::remove_file(cluster.flag("release")).unwrap();
    cluster.all_alive();
    let put = put_in_background(
        &cluster.nodes[0],
        cluster.text("4b: the coordinator dies after all voted yes", true, ""),
    );
    let txn = wait_prepared_but_n5(&cluster);
    cluster.nodes[0].kill(WAIT);
    fs::write(cluster.flag("release"), "").unwrap();
    let answer = put.join().unwrap();
    if let Some(answer) = &answer {
        eprintln!("4b: the coordinator decided before it was killed: {answer:?}");
    } else {
        let waiting = format!("waiting for the decision of {txn}");
        let mut last = Vec::new();
        wait_until_or(WAIT, || {
            last = cluster.nodes[1..].iter().map(|n| n.lock()).collect();
            last.iter()
                .all(|l| l.as_deref() == Some(waiting.as_str()))
                .then_some(())
        })
        .unwrap_or_else(|| panic!("the survivors to wait for the decision: {last:?}"));
        for node in &cluster.nodes[1..] {
            let status = node.status().unwrap();
            assert!(
                status["apply"]["waiting_seconds"].is_u64(),
                "{}: {status:#}",
                node.name
            );
        }
        cluster.assert_still(&v);
    }
    cluster.nodes[0].start(WAIT);
    let after = cluster.settled();
    assert_eq!(after, v, "after the coordinator's restart");
    cluster.assert_unchanged(&v);
    wait_until(WAIT, "n5's validation to end", || {
        (!cluster.flag("holding-n5").exists()).then_some(())
    });
    fs::remove_file(cluster.flag("hold-n5")).unwrap();

    // 5. n4 stops (SIGTERM): an apply commits on the four others and
    // names n4 as not reached; restarted, n4 catches up to that version,
    // its file byte for byte the others'.
    cluster.all_alive();
    cluster.nodes[3].stop(WAIT);
    wait_until(WAIT, "n1 to see n4 left", || {
        (cluster.nodes[0].sees("n4").as_deref() == Some("left")).then_some(())
    });
    let next = cluster.text("5: applied while n4 was down", true, "# n4 was away\n");
    let (code, answer) = cluster.nodes[0].put(&next);
    assert_eq!(code, 200, "{answer:#}");
    assert_eq!(answer["outcome"], "committed", "{answer:#}");
    assert_eq!(
        answer["version"].as_u64(),
        Some(v.version + 1),
        "{answer:#}"
    );
    assert_eq!(answer["finished"], true, "{answer:#}");
    assert_eq!(
        answer["not_reached"],
        serde_json::json!([{ "node": "n4", "reason": "left" }]),
        "{answer:#}"
    );
    let committed = cluster.settled();
    assert_eq!(committed.version, v.version + 1);
    assert_eq!(committed.text, next);
    assert_eq!(
        cluster.nodes[3].file(),
        v.text.as_bytes(),
        "n4's file while it was down"
    );
    cluster.nodes[3].start(WAIT);
    let caught_up = cluster.quiet();
    assert_eq!(caught_up, committed, "after n4's restart");
    let n4 = cluster.nodes[3].status().unwrap();
    assert_eq!(n4["apply"]["kept_edits"], Value::Null, "{n4:#}");
    cluster.assert_still(&committed);
    eprintln!("coordinator and catch-up test: {:?}", started.elapsed());
}

#[test]
fn of_two_edits_made_at_once_one_wins_and_the_other_is_kept_beside_its_file() {
    let started = Instant::now();
    let cluster = Cluster::start(false);
    let v = cluster.quiet();

    // 6. Edits saved at once on n2 and n4, each on version v: exactly one
    // is committed, as v + 1, on every node; the other node keeps its
    // edit, byte for byte, as `topology.yaml.before-v(v+1)` and says so
    // in its status.
    let edits = [
        ("n2", cluster.text("n2's edit", false, "# made on n2\n")),
        ("n4", cluster.text("n4's edit", false, "# made on n4\n")),
    ];
    for (name, text) in &edits {
        cluster.node(name).edit(text);
    }
    let committed = cluster.quiet();
    assert_eq!(
        committed.version,
        v.version + 1,
        "one of the two edits is committed, once"
    );
    let (winner, loser) = match edits.iter().position(|(_, t)| *t == committed.text) {
        Some(0) => (&edits[0], &edits[1]),
        Some(_) => (&edits[1], &edits[0]),
        None => panic!("the committed text is neither edit:\n{}", committed.text),
    };
    eprintln!("{}'s edit won over {}'s", winner.0, loser.0);
    let kept_name = format!("topology.yaml.before-v{}", committed.version);
    let loser_node = cluster.node(loser.0);
    let kept = loser_node.topology.with_file_name(&kept_name);
    assert_eq!(
        fs::read(&kept).unwrap_or_default(),
        loser.1.as_bytes(),
        "{}'s edit kept at {}",
        loser.0,
        kept.display()
    );
    let status = loser_node.status().unwrap();
    assert_eq!(
        status["apply"]["kept_edits"],
        serde_json::json!([kept.display().to_string()]),
        "{status:#}"
    );
    for node in cluster.running() {
        assert_eq!(node.file(), winner.1.as_bytes(), "{}'s file", node.name);
        let copies = node.kept_copies();
        if node.name == loser.0 {
            assert_eq!(copies, vec![kept_name.clone()], "{}", node.name);
        } else {
            assert_eq!(copies, Vec::<String>::new(), "{}", node.name);
            let status = node.status().unwrap();
            assert_eq!(status["apply"]["kept_edits"], Value::Null, "{status:#}");
        }
    }
    eprintln!("simultaneous edits test: {:?}", started.elapsed());
}

/// The leader's name as `node` sees it (`GET /v1/leaders`).
fn raft_leader(node: &Agent) -> Option<String> {
    let leaders: Value = serde_json::from_str(&http_get(node.api(), "/v1/leaders")?).ok()?;
    Some(leaders["leader"]["name"].as_str()?.to_string())
}

/// With Raft voters the decisions of 2PC go to the Raft log, and the case
/// that blocks without them resolves without the coordinator: every
/// survivor voted yes, the coordinator (here also the Raft leader) is
/// SIGKILLed before deciding; the survivors elect a new leader, their
/// leases run out, they propose abort to the log, and the first decision
/// recorded is everyone's. The coordinator, back, takes the log's word.
#[test]
fn with_raft_voters_a_dead_coordinator_blocks_nobody() {
    let started = Instant::now();
    let mut cluster = Cluster::start_with(true, true);
    cluster.quiet();
    wait_until(WAIT, "every node to know a raft leader", || {
        cluster
            .running()
            .all(|n| raft_leader(n).is_some())
            .then_some(())
    });

    // An apply now is decided through the log, which keeps the version.
    let text = cluster.text("decided through raft", true, "");
    let (code, answer) = cluster.nodes[1].put(&text);
    assert_eq!(code, 200, "{answer:#}");
    assert_eq!(answer["outcome"], "committed", "{answer:#}");
    assert_eq!(answer["decision_log"], "raft", "{answer:#}");
    let v = cluster.quiet();
    assert_eq!(v.text, text);
    wait_until(WAIT, "the log's committed version on every node", || {
        cluster
            .running()
            .all(|n| {
                http_get(n.api(), "/v1/leaders")
                    .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                    .is_some_and(|l| {
                        l["topology"]["version"].as_u64() == Some(v.version)
                            && l["topology"]["hash"] == v.hash.as_str()
                    })
            })
            .then_some(())
    });

    // n5's validation hangs; n1 coordinates and is SIGKILLed once n1-n4
    // voted yes; n5 is let go and votes yes to a dead coordinator.
    fs::write(cluster.flag("hold-n5"), "").unwrap();
    let put = put_in_background(
        &cluster.nodes[0],
        cluster.text("the coordinator dies, raft decides", true, ""),
    );
    let txn = wait_prepared_but_n5(&cluster);
    let leader_before = raft_leader(&cluster.nodes[1]);
    cluster.nodes[0].kill(WAIT);
    fs::write(cluster.flag("release"), "").unwrap();
    if let Some(answer) = put.join().unwrap() {
        eprintln!("the coordinator decided before it was killed: {answer:?}");
    }
    cluster.wait_survivors_free(&txn);
    assert!(cluster.nodes[0].proc.is_none(), "n1 stayed down");
    cluster.assert_still(&v);
    eprintln!(
        "survivors free without the coordinator (raft leader before: {leader_before:?}, \
         after: {:?})",
        raft_leader(&cluster.nodes[1])
    );

    // Back, the coordinator asks the log and announces its abort.
    cluster.nodes[0].start(WAIT);
    let after = cluster.quiet();
    assert_eq!(after, v, "after the coordinator's restart");
    cluster.assert_unchanged(&v);
    eprintln!("raft decision log test: {:?}", started.elapsed());
}

// ---- a full disk under one node's 2PC store -----------------------------

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

fn require_root() {
    support::require_root("this test mounts a tmpfs in a namespace of its own");
}

/// Three agents; n3's `DATA_DIR/twophase` is a 1 MiB tmpfs that only it
/// sees (its own mount namespace), which the test fills and empties; or
/// another mount of the test's choosing there.
struct FullDisk {
    nodes: Vec<Agent>,
    /// n3's 2PC store, the tmpfs's mount point.
    store: PathBuf,
    /// Kept when `APPLY_AGENTS_KEEP` is set, as `Cluster` does.
    root: Option<tempfile::TempDir>,
}

impl FullDisk {
    /// n3's store is a 1 MiB tmpfs.
    fn start() -> FullDisk {
        FullDisk::start_with(|store, _| {
            format!(
                "mount -t tmpfs -o size=1m cohort-apply-agents {}",
                quoted(store)
            )
        })
    }

    /// Three agents on a first version; n3 runs in a mount namespace of
    /// its own, set up by the script `mounts(its store, its topology
    /// file)` returns.
    fn start_with(mounts: impl FnOnce(&Path, &Path) -> String) -> FullDisk {
        let root = tempfile::tempdir().unwrap();
        let mut nodes: Vec<Agent> = ["n1", "n2", "n3"]
            .iter()
            .map(|name| Agent::new(root.path(), name))
            .collect();
        let join: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        for node in &nodes {
            node.write_config(&Config {
                join: &join,
                ..Config::default()
            });
        }
        let store = nodes[2].dir.join("data").join("twophase");
        fs::create_dir_all(&store).unwrap();
        let mut cluster = FullDisk {
            nodes: Vec::new(),
            store,
            root: Some(root),
        };
        let first = cluster.text_of(&nodes, "first version");
        for node in &nodes {
            fs::write(&node.topology, &first).unwrap();
        }
        for node in &mut nodes[..2] {
            node.start(WAIT);
        }
        let mounts = mounts(&cluster.store, &nodes[2].topology);
        nodes[2].start_in_own_mounts(&mounts, WAIT);
        cluster.nodes = nodes;
        cluster.on_version(&cluster.nodes.iter().collect::<Vec<_>>(), 1, &first);
        cluster
    }

    fn text(&self, note: &str) -> String {
        self.text_of(&self.nodes, note)
    }

    fn text_of(&self, nodes: &[Agent], note: &str) -> String {
        let mut text = format!(
            "# Test topology: {note}\ncluster: test\nreplicasets:\n  s1:\n    roles: [storage]\n    nodes:\n"
        );
        for node in nodes {
            text.push_str(&format!(
                "      {}: {{ address: {} }}\n",
                node.name,
                addr(node.port)
            ));
        }
        text
    }

    /// Fills n3's tmpfs to the last byte: every write there fails with
    /// ENOSPC.
    fn fill(&self) {
        let d = quoted(&self.store);
        self.nodes[2].in_own_mounts(&format!(
            "fallocate -l $(( $(stat -f -c '%a * %S' {d}) )) {d}/ballast"
        ));
    }

    fn free(&self) {
        self.nodes[2].in_own_mounts(&format!("rm {}/ballast", quoted(&self.store)));
    }

    /// Waits until each of `nodes` runs `version` with `text`: its status,
    /// its committed text, its topology file, its lock free.
    fn on_version(&self, nodes: &[&Agent], version: u64, text: &str) {
        let mut last = String::new();
        let done = wait_until_or(WAIT, || {
            last.clear();
            let mut all = true;
            for node in nodes {
                let status = node.status().unwrap_or_default();
                let apply = &status["apply"];
                let ok = apply["version"].as_u64() == Some(version)
                    && apply["lock"] == FREE
                    && committed_text(node).as_deref() == Some(text)
                    && node.file() == text.as_bytes();
                last.push_str(&format!(
                    "{}: version {}, lock {}, stopped {}; ",
                    node.name, apply["version"], apply["lock"], apply["stopped"]
                ));
                all &= ok;
            }
            all.then_some(())
        });
        assert!(
            done.is_some(),
            "not all of {:?} run version {version}: {last}",
            nodes.iter().map(|n| &n.name).collect::<Vec<_>>()
        );
    }

    /// Waits until no node coordinates a txn: every participant
    /// acknowledged every decision.
    fn finished(&self) {
        let mut last = Vec::new();
        let done = wait_until_or(WAIT, || {
            last = self
                .nodes
                .iter()
                .map(|n| n.status().map(|s| s["apply"]["coordinating"].clone()))
                .collect();
            last.iter()
                .all(|c| {
                    c.as_ref()
                        .is_some_and(|c| c.as_array().is_none_or(Vec::is_empty))
                })
                .then_some(())
        });
        assert!(done.is_some(), "txns left unfinished: {last:?}");
    }

    /// n3's `apply.disk_error` once it says its writes fail (its driver
    /// is not reported as stopped: it retries).
    fn wait_failing(&self) -> String {
        let n3 = &self.nodes[2];
        wait_until(WAIT, "n3 to say its 2PC writes fail", || {
            let apply = &n3.status()?["apply"];
            let failing = apply["disk_error"].as_str()?.to_string();
            (failing.starts_with("retrying after a disk error since ")
                && apply["stopped"].is_null())
            .then_some(failing)
        })
    }

    /// Waits until n3 lists (or no longer lists) `data-dir-unwritable`
    /// on its store.
    fn wait_store_issue(&self, listed: bool) {
        let n3 = &self.nodes[2];
        let subject = self.store.display().to_string();
        let mut last = Value::Null;
        let seen = wait_until_or(WAIT, || {
            last = serde_json::from_str(&http_get(n3.api(), "/v1/issues?local")?).ok()?;
            let found = last["issues"].as_array()?.iter().any(|i| {
                i["kind"] == "data-dir-unwritable"
                    && i["subject"] == subject.as_str()
                    && i["level"] == "critical"
            });
            (found == listed).then_some(())
        });
        assert!(
            seen.is_some(),
            "n3 {} data-dir-unwritable {subject}: {last:#}",
            if listed {
                "never listed"
            } else {
                "still lists"
            }
        );
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("---- {} ({}) ----", node.name, node.log().display());
                eprintln!("{}", node.log_tail(60));
            }
        }
        // A stopped n3 must not keep the test waiting: SIGKILL reaps it.
        for node in &mut self.nodes {
            node.proc.take();
        }
        if std::env::var_os("APPLY_AGENTS_KEEP").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("kept {}", root.keep().display());
            }
        }
    }
}

/// `PUT /v1/topology` on `node`, answered at the decision (not waiting
/// for every acknowledgement: a node that cannot write holds its own
/// back): the HTTP code and the JSON answer.
fn put_now(node: &Agent, text: &str) -> (u16, Value) {
    let (code, body) = http_with_body(node.api(), "PUT", "/v1/topology?timeout=30s", text, WAIT)
        .unwrap_or_else(|| panic!("{} answers PUT /v1/topology", node.name));
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("PUT /v1/topology answered {code} with {body:?}: {e}"));
    (code, json)
}

/// The reason the aborted `answer` gives for `node`.
/// What a full disk gives as its error.
const NO_SPACE: &str = "No space left on device";

/// A change that n3's full disk aborted: 409, nobody silent (n3 answered
/// at once), and n3's reason beginning with `reason` and naming ENOSPC.
fn aborted_by_n3(code: u16, answer: &Value, reason: &str) {
    assert_eq!(
        (code, &answer["outcome"]),
        (409, &"aborted".into()),
        "{answer:#}"
    );
    assert_eq!(
        answer["silent"],
        Value::Null,
        "nobody is silent: {answer:#}"
    );
    let why = reason_of(answer, "n3");
    assert!(why.starts_with(reason) && why.contains(NO_SPACE), "{why}");
}

fn assert_committed(code: u16, answer: &Value) {
    assert_eq!(
        (code, &answer["outcome"]),
        (200, &"committed".into()),
        "{answer:#}"
    );
}

fn reason_of(answer: &Value, node: &str) -> String {
    answer["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["node"] == node))
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_else(|| panic!("no reason from {node}: {answer:#}"))
        .to_string()
}

/// n3's 2PC store on a full disk, with no restart anywhere:
///
/// - a change n3 cannot stage aborts at once with n3's reason (the disk
///   error), nobody silent; n3 says in its status and its issues that
///   its writes fail, and refuses to coordinate; freed, it writes what
///   it held back by itself and the change commits on all three;
/// - n3 stopped (SIGSTOP) while a version is committed without it, its
///   disk filled, then let go: it cannot catch up, and a change aborts
///   with its reason; freed, it catches up by itself (the time from
///   freeing to caught up is printed) and the next change commits on all
///   three.
#[test]
fn a_node_whose_disk_fills_votes_no_and_catches_up_once_it_is_freed() {
    require_root();
    let started = Instant::now();
    let cluster = FullDisk::start();
    let [n1, n2, n3] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];

    // A change n3 cannot stage.
    cluster.fill();
    let v2 = cluster.text("version 2");
    let (code, answer) = put_now(n1, &v2);
    aborted_by_n3(
        code,
        &answer,
        "this node cannot stage the change: cannot write ",
    );
    let failing = cluster.wait_failing();
    assert!(failing.contains(NO_SPACE), "{failing}");
    cluster.wait_store_issue(true);
    // It coordinates nothing meanwhile, and says why at once: 503, its
    // disk and not the request.
    let (code, answer) = put_now(n3, &v2);
    assert_eq!(code, 503, "{answer:#}");
    assert_eq!(answer["code"], "unavailable", "{answer:#}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("this node cannot write its 2PC state") && message.contains(NO_SPACE),
        "{answer:#}"
    );
    cluster.on_version(&[n1, n2], 1, &cluster.text("first version"));

    cluster.free();
    let freed = Instant::now();
    wait_until(WAIT, "n3's writes to work again", || {
        n3.status()?["apply"]["disk_error"].is_null().then_some(())
    });
    eprintln!(
        "n3 writes again {:?} after its disk was freed",
        freed.elapsed()
    );
    cluster.wait_store_issue(false);
    // The abort it could not record is recorded and acknowledged.
    cluster.finished();
    let (code, answer) = put_now(n1, &v2);
    assert_committed(code, &answer);
    cluster.on_version(&[n1, n2, n3], 2, &v2);
    cluster.finished();

    // A version n3 misses, then cannot catch up on.
    let n3_pid = n3.proc.as_ref().unwrap().pid();
    signal_pid(n3_pid, SIGSTOP);
    wait_until(WAIT, "n1 and n2 to see n3 dead", || {
        [n1, n2]
            .iter()
            .all(|n| n.sees("n3").as_deref() == Some("dead"))
            .then_some(())
    });
    let v3 = cluster.text("version 3, without n3");
    let (code, answer) = put_now(n1, &v3);
    assert_committed(code, &answer);
    cluster.on_version(&[n1, n2], 3, &v3);
    cluster.fill();
    signal_pid(n3_pid, SIGCONT);
    let failing = cluster.wait_failing();
    assert!(failing.contains(NO_SPACE), "{failing}");
    assert_eq!(
        n3.status().unwrap()["apply"]["version"],
        2,
        "n3 cannot install version 3"
    );
    wait_until(WAIT, "n1 to see n3 alive", || {
        (n1.sees("n3").as_deref() == Some("alive")).then_some(())
    });
    let v4 = cluster.text("version 4");
    let (code, answer) = put_now(n1, &v4);
    aborted_by_n3(code, &answer, "this node cannot write its 2PC state: ");

    cluster.free();
    let freed = Instant::now();
    cluster.on_version(&[n3], 3, &v3);
    eprintln!(
        "n3 caught up on version 3 {:?} after its disk was freed",
        freed.elapsed()
    );
    cluster.wait_store_issue(false);
    let (code, answer) = put_now(n1, &v4);
    assert_committed(code, &answer);
    cluster.on_version(&[n1, n2, n3], 4, &v4);
    cluster.finished();
    eprintln!("full disk test: {:?}", started.elapsed());
}

/// n3 commits version 2 but cannot write its topology file (a bind mount
/// of the file onto itself, in n3's namespace: the atomic rename onto it
/// fails), then is killed: the state a SIGKILL between the 2PC store and
/// the file leaves. Restarted, it must not take version 1's text for an
/// edit and commit it again (chaos found that as one text committed
/// twice): it writes version 2 over it, or, while it cannot, leaves the
/// file alone and says so.
#[test]
fn a_topology_file_a_restart_finds_on_a_replaced_version_is_rewritten_not_applied() {
    require_root();
    let file_busy = |topology: &Path| format!("mount --bind {t} {t}", t = quoted(topology));
    let mut cluster = FullDisk::start_with(|_, topology| file_busy(topology));
    let first = cluster.text("first version");
    let v2 = cluster.text("version 2");
    let (code, answer) = put_now(&cluster.nodes[0], &v2);
    assert_committed(code, &answer);
    cluster.on_version(&[&cluster.nodes[0], &cluster.nodes[1]], 2, &v2);
    let n3 = &cluster.nodes[2];
    let failed = wait_until(WAIT, "n3 to install version 2 without its file", || {
        let install = n3.status()?["apply"]["install"].clone();
        (install["version"] == 2).then(|| install["error"].as_str().map(String::from))
    });
    let failed = failed.unwrap_or_else(|| panic!("n3's file write did not fail"));
    assert!(failed.contains("topology.yaml"), "{failed}");
    assert_eq!(committed_text(n3).as_deref(), Some(v2.as_str()));
    assert_eq!(n3.file(), first.as_bytes(), "the file n3 could not write");

    // Restarted while the file still cannot be written: not an edit.
    let topology = cluster.nodes[2].topology.clone();
    cluster.nodes[2].kill(WAIT);
    cluster.nodes[2].start_in_own_mounts(&file_busy(&topology), WAIT);
    let status = judged(&cluster.nodes[2]);
    let pending = status["topology"]["pending"].as_str().unwrap_or_default();
    assert!(
        pending.starts_with("the file holds the text of a version this node replaced")
            && pending.ends_with("the cluster keeps version 2"),
        "{status:#}"
    );
    assert_eq!(status["topology"]["matches_committed"], false, "{status:#}");
    assert_eq!(status["apply"]["version"], 2, "{status:#}");
    assert_eq!(cluster.nodes[2].file(), first.as_bytes());

    // Restarted with a file it can write: version 2 goes over it.
    cluster.nodes[2].kill(WAIT);
    cluster.nodes[2].start(WAIT);
    let n3 = &cluster.nodes[2];
    let status = judged(n3);
    assert_eq!(status["topology"]["matches_committed"], true, "{status:#}");
    assert_eq!(status["apply"]["version"], 2, "{status:#}");
    assert_eq!(n3.file(), v2.as_bytes());
    let log = n3.log_tail(400);
    for line in [
        "cannot be rewritten: ",
        "the topology file still held the text of a version that version 2 replaced",
    ] {
        assert!(log.contains(line), "no `{line}` in n3's log: {log}");
    }
    cluster.on_version(&cluster.nodes.iter().collect::<Vec<_>>(), 2, &v2);
    cluster.finished();
}

/// `node`'s status once its topology trigger has judged the file (it says
/// whether the file matches the committed version).
fn judged(node: &Agent) -> Value {
    wait_until(WAIT, "the node to judge its topology file", || {
        let status = node.status()?;
        status["topology"]["matches_committed"]
            .is_boolean()
            .then_some(status)
    })
}
