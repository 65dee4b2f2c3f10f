//! Real agents on loopback gossiping with SWIM over encrypted UDP: they
//! all see each other, a killed node is declared dead everywhere, a
//! restarted one comes back with a greater generation, a stopped one is
//! `left` without ever being suspected, and a node with the wrong key is
//! never admitted while its packets are counted. User events reach every
//! node once: its monitor stream and its configured handlers.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use support::agents::{Agent, Config, KEY};
use support::*;

/// Detection at a 300 ms period takes a few seconds; the deadline is for a
/// loaded 2-core machine, not a figure (benchmarks measure those).
const CONVERGE: Duration = Duration::from_secs(60);

const KEY_B: &str = "mX0C4m1Qm0x6J3b7a9u0y5t2r8e1w4q7z0x3c6v9b2M=";

/// A node joining through `seed` (itself when 0), with the gossip key `key`.
fn node(root: &Path, name: &str, seed: u16, key: &str) -> Agent {
    node_with(root, name, seed, key, "", "")
}

/// A node with more `gossip` settings (`, name: value` items) and
/// `extra` YAML lines at the end of its config.
fn node_with(root: &Path, name: &str, seed: u16, key: &str, gossip: &str, extra: &str) -> Agent {
    let node = Agent::new(root, name);
    let seed = if seed == 0 { node.port } else { seed };
    node.write_config(&Config {
        join: &[seed],
        key,
        gossip,
        extra,
        ..Config::default()
    });
    node
}

impl Agent {
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
}

/// Waits until every running node in `observers` sees `name` as `status`.
fn wait_everywhere(observers: &[&Agent], name: &str, status: &str) {
    wait_until(
        CONVERGE,
        &format!("{name} to be {status} on every node"),
        || {
            observers
                .iter()
                .all(|o| o.sees(name).as_deref() == Some(status))
                .then_some(())
        },
    );
}

#[test]
fn five_agents_detect_death_restart_leave_and_refuse_a_foreign_key() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Agent> = Vec::new();
    let first = node(root.path(), "n1", 0, KEY);
    let seed = first.port;
    nodes.push(first);
    for i in 2..=5 {
        nodes.push(node(root.path(), &format!("n{i}"), seed, KEY));
    }
    for node in &mut nodes {
        node.start(CONVERGE);
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
    nodes[2].kill(CONVERGE);
    {
        let others: Vec<&Agent> = nodes.iter().filter(|n| n.name != "n3").collect();
        wait_everywhere(&others, "n3", "dead");
    }

    // Restart n3: alive again everywhere, with a greater generation.
    nodes[2].start(CONVERGE);
    {
        let all: Vec<&Agent> = nodes.iter().collect();
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
    nodes[3].stop(CONVERGE);
    {
        let others: Vec<&Agent> = nodes.iter().filter(|n| n.name != "n4").collect();
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
    let mut stranger = node(root.path(), "stranger", seed, KEY_B);
    stranger.start(CONVERGE);
    wait_until(CONVERGE, "n1 to count undecryptable packets", || {
        let members = nodes[0].members()?;
        (members["gossip"]["dropped"]["decrypt"].as_u64()? > 0).then_some(())
    });
    let warnings = nodes[0].members().unwrap()["gossip"]["warnings"].to_string();
    assert!(warnings.contains("could not be decrypted"), "{warnings}");
    for node in nodes.iter().filter(|n| n.proc.is_some()) {
        assert_eq!(
            node.sees("stranger"),
            None,
            "{} admitted the stranger",
            node.name
        );
    }
    let alone = stranger.view().unwrap();
    assert_eq!(alone.len(), 1, "the stranger sees only itself: {alone:?}");
}

/// A handler script that appends `NAME ID ORIGIN PAYLOAD-IN-BASE64` to `out`.
fn handler_script(dir: &Path, out: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).unwrap();
    let script = dir.join("on-event.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\npayload=$(base64 -w0)\necho \"$1 $COHORT_EVENT_ID $COHORT_EVENT_ORIGIN_NAME $payload\" >> {}\n",
            out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn user_events_reach_every_node_once_its_handlers_and_its_monitor() {
    let root = tempfile::tempdir().unwrap();
    let scripts = root.path().join("scripts");
    let (all_out, deploy_out) = (root.path().join("e1.out"), root.path().join("e2.out"));
    let every = handler_script(&scripts.join("every"), &all_out);
    let deploy = handler_script(&scripts.join("deploy"), &deploy_out);
    // Push-pull every second: full state, events included, keeps arriving
    // as duplicates that must never be delivered again.
    let fast_sync = ", push_pull_interval: 1s";
    let handlers = |spec: &str| format!("events:\n  handlers:\n{spec}");
    let mut e1 = node_with(
        root.path(),
        "e1",
        0,
        KEY,
        fast_sync,
        &handlers(&format!(
            "    - {{ event: \"*\", exec: {} }}\n",
            every.display()
        )),
    );
    let seed = e1.port;
    let mut e2 = node_with(
        root.path(),
        "e2",
        seed,
        KEY,
        fast_sync,
        &handlers(&format!(
            "    - {{ event: deploy, exec: {} }}\n",
            deploy.display()
        )),
    );
    let mut e3 = node_with(root.path(), "e3", seed, KEY, fast_sync, "");
    for node in [&mut e1, &mut e2, &mut e3] {
        node.start(CONVERGE);
    }
    let nodes = [&e1, &e2, &e3];
    wait_until(CONVERGE, "3 alive members on every node", || {
        nodes
            .iter()
            .all(|n| {
                n.view()
                    .is_some_and(|v| v.len() == 3 && v.iter().all(|(_, s, _)| s == "alive"))
            })
            .then_some(())
    });

    // e2's monitor, as an operator would watch it.
    let mut monitor = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "--api",
            &addr(e2.api).to_string(),
            "monitor",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let monitor_out = monitor.stdout.take().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(monitor_out)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                if event["kind"] == "user" && seen_tx.send(event).is_err() {
                    break;
                }
            }
        }
    });
    // The stream is open once it relays something: wait for the first
    // event, resending a probe event until one shows.
    let send = |api: u16, args: &[&str], stdin: Option<&[u8]>| {
        let mut command = cohort();
        command
            .args(["--api", &addr(api).to_string(), "event"])
            .args(args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            if let Some(bytes) = stdin {
                input.write_all(bytes).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    };
    let first = wait_until(CONVERGE, "e2's monitor to show a user event", || {
        let sent = send(e1.api, &["warmup"], None);
        assert!(sent.status.success(), "{sent:?}");
        seen.recv_timeout(Duration::from_millis(500)).ok()
    });
    assert_eq!(first["subject"], "warmup");

    // Text from e1, bytes on stdin from e3 (to a handler on e1 and e2).
    let sent = send(e1.api, &["deploy", "v42"], None);
    assert!(sent.status.success(), "{sent:?}");
    let said = String::from_utf8_lossy(&sent.stdout).to_string();
    assert!(
        said.starts_with("event `deploy` (3 bytes) sent as "),
        "{said}"
    );
    let sent = send(e3.api, &["deploy", "-"], Some(&[0, 159, 146, 150]));
    assert!(sent.status.success(), "{sent:?}");

    let shown = wait_until(CONVERGE, "e2's monitor to show both deploys", || {
        let mut deploys = Vec::new();
        while let Ok(event) = seen.recv_timeout(Duration::from_millis(200)) {
            if event["subject"] == "deploy" {
                deploys.push(event);
            }
            if deploys.len() == 2 {
                return Some(deploys);
            }
        }
        None
    });
    // Two origins: either may arrive first.
    assert!(shown.iter().any(|e| e["payload"] == "v42"), "{shown:?}");
    assert!(
        shown.iter().any(|e| e["payload_base64"] == "AJ+Slg=="),
        "{shown:?}"
    );

    // Each node's handlers ran once per event: e1 handles all (warmup
    // events included), e2 only deploys.
    wait_until(CONVERGE, "the handlers to run", || {
        (lines(&deploy_out).len() >= 2).then_some(())
    });
    // Let several push-pulls (each carrying every live event) land on
    // every node after delivery: duplicates arrive, none is delivered.
    let streams_now: Vec<u64> = nodes
        .iter()
        .map(|n| {
            n.members().unwrap()["gossip"]["streams_sent"]
                .as_u64()
                .unwrap()
        })
        .collect();
    wait_until(CONVERGE, "two more push-pulls from every node", || {
        nodes
            .iter()
            .zip(&streams_now)
            .all(|(n, before)| {
                n.members()
                    .and_then(|m| m["gossip"]["streams_sent"].as_u64())
                    .is_some_and(|now| now >= before + 2)
            })
            .then_some(())
    });
    let deploys = lines(&deploy_out);
    assert_eq!(deploys.len(), 2, "{deploys:?}");
    assert!(
        deploys.iter().all(|l| l.starts_with("deploy ")),
        "{deploys:?}"
    );
    assert!(
        deploys.iter().any(|l| l.ends_with(" e1 djQy")),
        "{deploys:?}"
    );
    assert!(
        deploys.iter().any(|l| l.ends_with(" e3 AJ+Slg==")),
        "{deploys:?}"
    );
    let everything = lines(&all_out);
    let delivered_e1 = e1.members().unwrap()["gossip"]["user_events_delivered"]
        .as_u64()
        .unwrap();
    assert_eq!(everything.len() as u64, delivered_e1, "{everything:?}");
    let ids: std::collections::BTreeSet<&str> = everything
        .iter()
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    assert_eq!(
        ids.len(),
        everything.len(),
        "an event was handled twice: {everything:?}"
    );
    for node in nodes {
        let delivered = node.members().unwrap()["gossip"]["user_events_delivered"]
            .as_u64()
            .unwrap();
        assert_eq!(
            delivered, delivered_e1,
            "{} delivered {delivered}",
            node.name
        );
    }

    // Clear refusals.
    let bad = send(e1.api, &["no spaces"], None);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(err.contains("event name `no spaces` is invalid"), "{err}");
    let big = vec![b'x'; 4000];
    let bad = send(e1.api, &["deploy", "-"], Some(&big));
    let err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(err.contains("fit in one gossip packet"), "{err}");

    let _ = monitor.kill();
    let _ = monitor.wait();
}

/// A gossip key rotation by reload, as an operator does it on every node:
/// the keyring file becomes [A, B] (B accepted), then [B, A] (B seals),
/// then [B] (A gone), each step a SIGHUP everywhere. Neither node restarts
/// its membership (same generation, alive throughout the checks), and a
/// node that holds only B is then admitted.
#[test]
fn a_gossip_key_rotated_by_reload_keeps_membership() {
    let root = tempfile::tempdir().unwrap();
    let mut a = node(root.path(), "a", 0, KEY);
    let mut b = node(root.path(), "b", a.port, KEY);
    a.start(CONVERGE);
    b.start(CONVERGE);
    wait_everywhere(&[&a, &b], "a", "alive");
    wait_everywhere(&[&a, &b], "b", "alive");
    let before = (a.view().unwrap(), b.view().unwrap());

    for (step, keys) in [
        format!("{KEY}\n{KEY_B}\n"),
        format!("{KEY_B}\n{KEY}\n"),
        format!("# rotated\n{KEY_B}\n"),
    ]
    .iter()
    .enumerate()
    {
        for n in [&a, &b] {
            fs::write(n.dir.join("gossip.key"), keys).unwrap();
            n.proc.as_ref().unwrap().signal(SIGHUP);
        }
        for n in [&a, &b] {
            wait_until(CONVERGE, &format!("{}'s reload {step}", n.name), || {
                (read(&n.log()).matches("gossip keyring reloaded").count() > step).then_some(())
            });
        }
        wait_everywhere(&[&a, &b], "a", "alive");
        wait_everywhere(&[&a, &b], "b", "alive");
    }
    assert_eq!(
        (a.view().unwrap(), b.view().unwrap()),
        before,
        "the same members, generations and statuses"
    );

    let mut c = node(root.path(), "c", a.port, KEY_B);
    c.start(CONVERGE);
    wait_everywhere(&[&a, &b, &c], "c", "alive");
    for n in [&a, &b] {
        let log = read(&n.log());
        assert!(
            !log.contains("reload: the running gossip keyring stays"),
            "{log}"
        );
    }
}
