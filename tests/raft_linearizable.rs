//! Linearizability of the replica-set masters, against real agents on
//! hosts of the test's own (network namespaces on one bridge,
//! `support/hosts.rs`). The register is `s1`'s master and fencing
//! generation; writes are `cohort failover promote s1 NODE`, reads
//! `cohort leaders --consistent`; `support/linearizability.rs` says how a
//! history is checked.
//!
//! The cluster: three voters `n1`–`n3` (set `core`, all `election:
//! candidate`) and the two nodes of `s1`, `m1` and `m2`, outside the Raft
//! group (`election: off`). Faults only ever hit the voters, so `s1`'s
//! master never dies and the leader never appoints one on its own: every
//! change of the register is a client's write.
//!
//! - Under chaos (the leader SIGKILLed and restarted, the leader's host cut
//!   off and healed) several clients promote and read concurrently, on
//!   every host; the history must be linearizable.
//! - The broken read path is caught: reads of a cut-off node's own view
//!   (`cohort leaders` without `--consistent`) while the majority commits
//!   new generations make a history the checker rejects as stale.
//!
//! Needs root, iproute2 and nftables (CI has them).

#[path = "support/hosts.rs"]
mod hosts;
#[path = "support/linearizability.rs"]
mod linearizability;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hosts::{Cli, Hosts};
use linearizability::{check, Kind, Master, Op, Recorder, Why, WriteOutcome};
use support::*;

/// The longest any condition is waited for; only reached when broken.
const WAIT: Duration = Duration::from_secs(60);
/// How long the clients run under chaos.
const CHAOS: Duration = Duration::from_secs(25);
const VOTERS: [&str; 3] = ["n1", "n2", "n3"];
const S1: [&str; 2] = ["m1", "m2"];
/// The reason of an appointment made by `failover promote`.
const BY_OPERATOR: &str = "promoted by the operator";

/// The agent tests of this file run one at a time: two clusters at once
/// would share two cores.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

fn cluster(tag: &str) -> Hosts {
    let names: Vec<&str> = VOTERS.iter().chain(S1.iter()).copied().collect();
    let hosts = Hosts::new(tag, &names);
    let mut text = String::from(
        "cluster: test\nfailover: { mode: raft, election_timeout: 1s }\nreplicasets:\n  core:\n    roles: [router]\n    failover_priority: [n1, n2, n3]\n    nodes:\n",
    );
    for name in VOTERS {
        let addr = hosts.hosts[hosts.index(name)].addr();
        text.push_str(&format!(
            "      {name}: {{ address: {addr}, election: candidate }}\n"
        ));
    }
    text.push_str("  s1:\n    roles: [storage]\n    failover_priority: [m1, m2]\n    nodes:\n");
    for name in S1 {
        let addr = hosts.hosts[hosts.index(name)].addr();
        text.push_str(&format!(
            "      {name}: {{ address: {addr}, election: off }}\n"
        ));
    }
    hosts.write_topology(&text);
    let started = Instant::now();
    hosts.start_all(WAIT);
    let all: Vec<usize> = (0..hosts.len()).collect();
    let group = hosts.agreed("the group forms", &all, 3, WAIT, |s| {
        s.masters.get("s1").map(|m| m.0.as_str()) == Some("m1") && s.masters.contains_key("core")
    });
    eprintln!(
        "formed: {} leads in term {}, masters {:?} ({:?} after the start)",
        group.leader,
        group.term,
        group.masters,
        started.elapsed()
    );
    hosts
}

/// `s1`'s master in a `cohort leaders --format json` answer, and the
/// reason it was appointed.
fn s1_of(leaders: &serde_json::Value) -> Option<(Master, String)> {
    let m = &leaders["masters"]["s1"];
    Some((
        Master {
            node: m["node"].as_str()?.to_string(),
            generation: m["generation"].as_u64()?,
        },
        m["reason"].as_str().unwrap_or("").to_string(),
    ))
}

/// Why writes ended with an unknown outcome (the first words of the
/// error, digits dropped), and how often.
type Reasons = Mutex<BTreeMap<String, usize>>;

/// `failover promote s1 NODE` on host `i`, recorded.
fn promote(hosts: &Hosts, i: usize, client: usize, node: &str, unknown: &Reasons) -> Op {
    let invoke = Instant::now();
    let out = hosts.cli(i, &["failover", "promote", "s1", node]);
    let complete = Instant::now();
    let outcome = outcome(node, &out);
    if outcome == WriteOutcome::Unknown {
        let reason: String = out
            .stderr
            .trim()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(90)
            .collect();
        *unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
    Op {
        client,
        invoke,
        complete,
        kind: Kind::Write {
            node: node.to_string(),
            outcome,
        },
    }
}

/// What a promote's output says of its effect. Only refusals that are
/// decided before anything is written (or by the compare-and-set, which
/// then writes nothing) count as no effect; every other failure may have
/// taken effect.
fn outcome(node: &str, out: &Cli) -> WriteOutcome {
    if out.ok {
        let line = out.stdout.trim();
        let said = format!("{node} is the master of s1 (generation ");
        let generation = line
            .strip_prefix(&said)
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("promote {node} answered {line:?}"));
        return WriteOutcome::Written(generation);
    }
    let refused = [
        // The CLI could not connect: nothing was asked.
        "cannot reach the agent API",
        // Checks on the leader before it writes, or the compare-and-set
        // refusing the write.
        "is already the master of",
        "only an alive node can be promoted",
        "the master changed meanwhile",
        // No leader to forward to, or the node asked was not the leader
        // (openraft appends nothing then).
        "no leader known",
        "has to forward request to",
        // The rpc to the leader failed before the request was sent (a
        // failed handshake sends nothing).
        "the peer refused the connection",
    ];
    // The leader's rpc port refused the TCP connection: nothing was sent.
    // (Other `cannot reach the peer` errors may break with the request in
    // flight.)
    let not_connected =
        out.stderr.contains("cannot reach the peer") && out.stderr.contains("Connection refused");
    if not_connected || refused.iter().any(|r| out.stderr.contains(r)) {
        WriteOutcome::Refused
    } else {
        WriteOutcome::Unknown
    }
}

/// A read of host `i`'s view, consistent or its own, recorded; None when
/// it failed (a failed read has no effect). Appointments not made by an
/// operator are pushed to `system`.
fn read(
    hosts: &Hosts,
    i: usize,
    client: usize,
    consistent: bool,
    system: &Mutex<Vec<String>>,
) -> Option<Op> {
    let invoke = Instant::now();
    let answer = hosts.leaders(i, consistent);
    let complete = Instant::now();
    let answer = answer?;
    assert_eq!(answer["consistent"], consistent, "{answer:#}");
    let (value, reason) = s1_of(&answer)?;
    if reason != BY_OPERATOR && value.generation > 1 {
        system
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{value}: {reason}"));
    }
    Some(Op {
        client,
        invoke,
        complete,
        kind: Kind::Read { value },
    })
}

/// The voter that leads, as it and another running voter say; None if
/// none is found within `timeout`.
fn leader(hosts: &Hosts, timeout: Duration) -> Option<usize> {
    let voters: Vec<usize> = VOTERS.iter().map(|n| hosts.index(n)).collect();
    wait_until_or(timeout, || {
        voters.iter().copied().find(|&i| {
            if !hosts.running(i) || hosts.is_isolated(i) {
                return false;
            }
            let says = |j: usize| {
                hosts
                    .leaders(j, false)
                    .and_then(|v| Some(v["leader"]["name"].as_str()? == hosts.name(i)))
                    .unwrap_or(false)
            };
            let leads = hosts
                .leaders(i, false)
                .is_some_and(|v| v["role"] == "leader");
            leads
                && voters
                    .iter()
                    .any(|&j| j != i && hosts.running(j) && !hosts.is_isolated(j) && says(j))
        })
    })
}

/// The initial value: a consistent read once all agree on it.
fn initial(hosts: &Hosts) -> Master {
    wait_until(WAIT, "a consistent read of s1", || {
        hosts.leaders(0, true).and_then(|v| s1_of(&v)).map(|m| m.0)
    })
}

#[test]
fn promotes_and_consistent_reads_under_kills_and_partitions_are_linearizable() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let hosts = cluster("rlin");
    let initial = initial(&hosts);
    eprintln!("initial value: {initial}");
    let recorder = Recorder::default();
    let stop = AtomicBool::new(false);
    let failed_reads = AtomicUsize::new(0);
    let system = Mutex::new(Vec::new());
    let unknown = Reasons::default();
    let clients = 4;
    let began = Instant::now();
    let events = std::thread::scope(|scope| {
        for client in 0..clients {
            let (hosts, recorder, stop, failed_reads, system, unknown) =
                (&hosts, &recorder, &stop, &failed_reads, &system, &unknown);
            scope.spawn(move || {
                let mut k = client;
                let mut last: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let i = k % hosts.len();
                    // Client 0 also talks to cut-off hosts (where every
                    // call fails or times out); the others keep the pace.
                    if !hosts.running(i) || (client != 0 && hosts.is_isolated(i)) {
                        continue;
                    }
                    if k % 2 == 0 {
                        match read(hosts, i, client, true, system) {
                            Some(op) => {
                                if let Kind::Read { value } = &op.kind {
                                    last = Some(value.node.clone());
                                }
                                recorder.record(op);
                            }
                            None => {
                                failed_reads.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        // The node that is not the master as last read,
                        // else the next in turn.
                        let target = match &last {
                            Some(m) => *S1.iter().find(|n| *n != m).expect("two nodes"),
                            None => S1[(k / 2) % S1.len()],
                        };
                        recorder.record(promote(hosts, i, client, target, unknown));
                    }
                }
            });
        }
        // Chaos: the leader killed and restarted, the leader cut off and
        // healed, until CHAOS has passed.
        let mut events = Vec::new();
        let mut note = |what: String| {
            eprintln!("{:>6.1}s {what}", began.elapsed().as_secs_f64());
            events.push(what);
        };
        while began.elapsed() < CHAOS {
            let Some(victim) = leader(&hosts, Duration::from_secs(15)) else {
                note("no leader found to kill".into());
                continue;
            };
            note(format!("SIGKILL {} (the leader)", hosts.name(victim)));
            hosts.kill(victim);
            std::thread::sleep(Duration::from_secs(3));
            hosts.start(victim, WAIT);
            note(format!("{} restarted", hosts.name(victim)));
            std::thread::sleep(Duration::from_secs(2));
            if began.elapsed() >= CHAOS {
                break;
            }
            let Some(victim) = leader(&hosts, Duration::from_secs(15)) else {
                note("no leader found to cut off".into());
                continue;
            };
            note(format!("cut off {} (the leader)", hosts.name(victim)));
            hosts.isolate(victim);
            std::thread::sleep(Duration::from_secs(4));
            hosts.heal(victim);
            note(format!("healed {}", hosts.name(victim)));
            std::thread::sleep(Duration::from_secs(2));
        }
        stop.store(true, Ordering::Relaxed);
        events
    });
    let ran = began.elapsed();

    // A last consistent read once all is quiet: every write that took
    // effect is behind it.
    let last = wait_until(WAIT, "a final consistent read", || {
        (0..hosts.len()).find_map(|i| read(&hosts, i, clients, true, &system))
    });
    recorder.record(last);
    let ops = recorder.ops();
    let system = system.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(
        system.is_empty(),
        "the leader appointed s1's master on its own, which this test's history cannot contain: {system:?}"
    );
    let verdict = check(&initial, &ops);
    let summary = verdict.unwrap_or_else(|v| panic!("the history is not linearizable: {v}"));
    eprintln!(
        "{} ops in {ran:?} ({} clients, chaos: {}): {} reads ({} failed reads not recorded), {} writes answered with a generation, {} refused, {} unknown outcomes ({} of them took effect); generations {} to {}",
        ops.len(),
        clients,
        events.join(", "),
        summary.reads,
        failed_reads.load(Ordering::Relaxed),
        summary.written,
        summary.refused,
        summary.unknown,
        summary.unknown_taken,
        initial.generation,
        summary.last_generation
    );
    let unknown = unknown.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut unknown: Vec<(usize, String)> = unknown.into_iter().map(|(r, n)| (n, r)).collect();
    unknown.sort_by(|a, b| b.cmp(a));
    for (count, reason) in unknown.iter().take(6) {
        eprintln!("  unknown outcome x{count}: {reason}");
    }
    assert!(
        summary.written >= 5 && summary.reads >= 20,
        "too little happened to mean anything: {summary:?}"
    );
}

#[test]
fn local_reads_of_a_cut_off_node_are_caught_as_stale() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let hosts = cluster("rstale");
    let initial = initial(&hosts);
    let system = Mutex::new(Vec::new());
    // A voter that does not lead is cut off; the majority keeps its
    // leader and commits.
    let lead = leader(&hosts, WAIT).expect("a leader");
    let cut = VOTERS
        .iter()
        .map(|n| hosts.index(n))
        .find(|&i| i != lead)
        .expect("a follower");
    hosts.isolate(cut);
    let majority: Vec<usize> = (0..hosts.len()).filter(|&i| i != cut).collect();
    eprintln!(
        "initial value {initial}; {} cut off, {} leads",
        hosts.name(cut),
        hosts.name(lead)
    );

    let recorder = Recorder::default();
    let stop = AtomicBool::new(false);
    let unknown = Reasons::default();
    let began = Instant::now();
    std::thread::scope(|scope| {
        // Writes on the majority side, alternating the master.
        scope.spawn(|| {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let i = majority[k % majority.len()];
                recorder.record(promote(&hosts, i, 0, S1[k % S1.len()], &unknown));
            }
        });
        // Reads of the cut-off node's own view.
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if let Some(op) = read(&hosts, cut, 1, false, &system) {
                    recorder.record(op);
                }
            }
        });
        // Until two writes were answered and three reads started after the
        // first of them completed (or the deadline: then the assertions
        // below say what is missing).
        wait_until_or(WAIT, || {
            let ops = recorder.ops();
            let mut written: Vec<Instant> = ops
                .iter()
                .filter(|o| {
                    matches!(
                        o.kind,
                        Kind::Write {
                            outcome: WriteOutcome::Written(_),
                            ..
                        }
                    )
                })
                .map(|o| o.complete)
                .collect();
            written.sort();
            let first = *written.first()?;
            let after = ops
                .iter()
                .filter(|o| matches!(o.kind, Kind::Read { .. }) && o.invoke > first)
                .count();
            (written.len() >= 2 && after >= 3).then_some(())
        });
        stop.store(true, Ordering::Relaxed);
    });
    let ops = recorder.ops();
    let reads = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Read { .. }))
        .count();
    let verdict = check(&initial, &ops);
    eprintln!(
        "{} ops in {:?} ({reads} local reads of {}): {verdict:?}",
        ops.len(),
        began.elapsed(),
        hosts.name(cut)
    );
    let violation = verdict.expect_err("local reads of a cut-off node must be caught");
    assert_eq!(violation.why, Why::StaleRead, "{violation}");

    // The same writes with a consistent read on the majority side instead
    // are fine: what was caught is the read path.
    let mut control: Vec<Op> = ops
        .into_iter()
        .filter(|o| matches!(o.kind, Kind::Write { .. }))
        .collect();
    let last = wait_until(WAIT, "a consistent read on the majority side", || {
        read(&hosts, majority[0], 2, true, &system)
    });
    control.push(last);
    check(&initial, &control).unwrap_or_else(|v| panic!("the control history: {v}"));
}
