//! A network partition, on five hosts of the test's own (network
//! namespaces on one bridge, `support/hosts.rs`), each running a real
//! agent, all `election: candidate`, failover mode `raft` with a 1 s
//! election timeout. The leader's host is cut off the LAN:
//!
//! - the four others agree on a new leader (another node, a later term)
//!   and keep committing topology changes (`cohort apply --wait` on one of
//!   them: `committed`, the cut-off node not reached);
//! - the cut-off node stops calling itself leader, and nothing asked of it
//!   commits: a `failover promote` sent to it just after the cut fails and
//!   never takes effect, a `leaders --consistent` there fails;
//! - healed, all five agree on one leader, and the cut-off node catches up
//!   with the topology committed meanwhile.
//!
//! And failover's guard against a stale gossip view: a leader healed from
//! a partition keeps a master its gossip still calls dead (the master,
//! left answering the leader's calls only, cannot refute) as long as it
//! answers the leader over rpc; SIGKILLed, it is replaced by the next by
//! priority.
//!
//! Every wait is a condition with a generous deadline; the measured times
//! are printed. Needs root, iproute2 and nftables (CI has them).

#[path = "support/hosts.rs"]
mod hosts;
mod support;

use std::time::{Duration, Instant};

use hosts::{Hosts, Seen};
use serde_json::Value;
use support::*;

/// The longest any condition is waited for; only reached when broken.
const WAIT: Duration = Duration::from_secs(60);

/// The replica sets and their nodes, in priority order.
const SETS: [(&str, &[&str]); 2] = [("s1", &["n1", "n2", "n3"]), ("s2", &["n4", "n5"])];

fn topology(hosts: &Hosts, comment: &str) -> String {
    let mut text = format!(
        "{comment}cluster: test\nfailover: {{ mode: raft, election_timeout: 1s }}\nreplicasets:\n"
    );
    for (set, nodes) in SETS {
        let role = if set == "s1" { "storage" } else { "router" };
        text.push_str(&format!(
            "  {set}:\n    roles: [{role}]\n    failover_priority: [{}]\n    nodes:\n",
            nodes.join(", ")
        ));
        for node in nodes {
            let host = &hosts.hosts[hosts.index(node)];
            text.push_str(&format!(
                "      {node}: {{ address: {}, election: candidate }}\n",
                host.addr()
            ));
        }
    }
    text
}

/// The committed topology version host `i` reports.
fn version(hosts: &Hosts, i: usize) -> Option<u64> {
    hosts.status(i)?["apply"]["version"].as_u64()
}

/// How host `observer` sees `name` in its membership.
fn sees(hosts: &Hosts, observer: usize, name: &str) -> Option<String> {
    let members = hosts.json(observer, &["members"])?;
    members
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["status"].as_str().map(String::from))
}

/// Five hosts, their agents started with the same topology, once the
/// group formed and all have committed it: the hosts, the group as all
/// five see it, the committed version, when they were started.
fn cluster(tag: &str) -> (Hosts, Seen, u64, Instant) {
    let hosts = Hosts::new(tag, &["n1", "n2", "n3", "n4", "n5"]);
    hosts.write_topology(&topology(&hosts, ""));
    let started = Instant::now();
    hosts.start_all(WAIT);
    let all: Vec<usize> = (0..hosts.len()).collect();
    let first = hosts.agreed("the group forms", &all, 5, WAIT, |s| s.masters.len() == 2);
    eprintln!(
        "formed: {} leads in term {}, masters {:?} ({:?} after the start)",
        first.leader,
        first.term,
        first.masters,
        started.elapsed()
    );
    let version = wait_until(WAIT, "one committed version everywhere", || {
        let v = version(&hosts, 0)?;
        all.iter()
            .all(|&i| version(&hosts, i) == Some(v))
            .then_some(v)
    });
    (hosts, first, version, started)
}

/// A set `leader` is not master of, and a node of it that is neither its
/// master nor `leader`: a promote that must not happen while `leader` is
/// cut off leaves that set's master alone (no automatic failover touches
/// it either).
fn promotion_for(first: &Seen, leader: &str) -> (String, String) {
    SETS.iter()
        .find_map(|(set, nodes)| {
            let master = &first.masters.get(*set)?.0;
            if master == leader {
                return None;
            }
            let target = nodes.iter().find(|n| **n != master && **n != leader)?;
            Some((set.to_string(), target.to_string()))
        })
        .expect("a set and a node to promote")
}

#[test]
fn the_majority_side_of_a_partition_elects_and_commits_and_healing_leaves_one_leader() {
    let (hosts, first, version_before, started) = cluster("rnet");
    let all: Vec<usize> = (0..hosts.len()).collect();
    let old_name = first.leader.clone();
    let old = hosts.index(&old_name);
    let (set, target) = promotion_for(&first, &old_name);

    // The leader's host is cut off; a promote is sent to it at once.
    hosts.isolate(old);
    let cut = Instant::now();
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let (second, promote, promote_took) = std::thread::scope(|scope| {
        let promote = scope.spawn(|| {
            let asked = Instant::now();
            let out = hosts.cli(old, &["failover", "promote", &set, &target]);
            (out, asked.elapsed())
        });
        let second = hosts.agreed(
            "a new leader on the majority side",
            &majority,
            5,
            WAIT,
            |s| s.leader != old_name && s.term > first.term,
        );
        eprintln!(
            "{old_name} cut off: {} leads in term {} on the majority side after {:?}",
            second.leader,
            second.term,
            cut.elapsed()
        );
        let (out, took) = promote.join().expect("the promote thread");
        (second, out, took)
    });
    assert!(
        !promote.ok,
        "`failover promote {set} {target}` on the cut-off {old_name} succeeded: {promote:?}"
    );
    eprintln!(
        "promote {set} {target} on the cut-off {old_name} failed after {promote_took:?}: {}",
        promote.stderr.trim()
    );
    let asked = Instant::now();
    let read = hosts.cli(old, &["leaders", "--consistent", "--format", "json"]);
    assert!(
        !read.ok,
        "a consistent read on the cut-off {old_name} succeeded: {}",
        read.stdout
    );
    eprintln!(
        "leaders --consistent on the cut-off {old_name} failed after {:?}: {}",
        asked.elapsed(),
        read.stderr.trim()
    );

    // The majority side applies a topology change once gossip there says
    // the cut-off node is dead (a suspect one would be waited for).
    let applier = majority
        .iter()
        .copied()
        .find(|&i| hosts.name(i) != second.leader)
        .expect("a majority host that does not lead");
    wait_until(WAIT, "the majority to see the cut-off node dead", || {
        majority
            .iter()
            .all(|&i| sees(&hosts, i, &old_name).as_deref() == Some("dead"))
            .then_some(())
    });
    let next_text = topology(&hosts, &format!("# applied while {old_name} was cut off\n"));
    let file = hosts.file("next-topology.yaml", &next_text);
    let file = file.display().to_string();
    let applying = Instant::now();
    let out = hosts.cli(
        applier,
        &[
            "apply",
            &file,
            "--wait",
            "--timeout",
            "30s",
            "--format",
            "json",
        ],
    );
    let answer: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("cohort apply printed no JSON ({e}): {out:?}"));
    assert!(out.ok, "cohort apply on {}: {out:?}", hosts.name(applier));
    assert_eq!(answer["outcome"], "committed", "{answer:#}");
    let version_after = answer["version"].as_u64().expect("a version");
    assert_eq!(version_after, version_before + 1, "{answer:#}");
    eprintln!(
        "apply on {} while {old_name} is cut off: committed version {version_after} in {:?}, not reached: {}",
        hosts.name(applier),
        applying.elapsed(),
        answer["not_reached"]
    );
    for &i in &majority {
        wait_until(WAIT, "the majority to have the new version", || {
            (version(&hosts, i) == Some(version_after)).then_some(())
        });
    }
    assert_eq!(
        version(&hosts, old),
        Some(version_before),
        "the cut-off node cannot have the new version"
    );

    // Healed: one leader for all five, the same group everywhere, and the
    // cut-off node catches up with the version committed meanwhile.
    hosts.heal(old);
    let healed = Instant::now();
    let one = one_leader(&hosts, &all);
    eprintln!(
        "healed: all five agree that {} leads in term {} after {:?}",
        one.leader,
        one.term,
        healed.elapsed()
    );
    wait_until(WAIT, "the healed node to catch up", || {
        (version(&hosts, old) == Some(version_after)).then_some(())
    });
    eprintln!(
        "{old_name} has version {version_after} {:?} after healing",
        healed.elapsed()
    );

    // The promote sent to the cut-off node never took effect.
    assert_eq!(
        one.masters.get(&set),
        first.masters.get(&set),
        "the master of {set} (the cut-off node was asked to promote {target})"
    );
    eprintln!(
        "masters before: {:?}, after: {:?} (total {:?})",
        first.masters,
        one.masters,
        started.elapsed()
    );
}

#[test]
fn an_isolated_leader_steps_down_even_with_a_write_pending_and_cannot_commit() {
    let (hosts, first, _, _) = cluster("rstep");
    let all: Vec<usize> = (0..hosts.len()).collect();
    let old_name = first.leader.clone();
    let old = hosts.index(&old_name);
    let (set, target) = promotion_for(&first, &old_name);

    // Cut off, with a write pending on it: it must still step down (the
    // driver steps a leader down an election timeout after it last heard
    // from a quorum).
    hosts.isolate(old);
    let cut = Instant::now();
    let promote = std::thread::scope(|scope| {
        let promote = scope.spawn(|| hosts.cli(old, &["failover", "promote", &set, &target]));
        let role = wait_until(WAIT, "the cut-off node to stop leading", || {
            let view = hosts.leaders(old, false)?;
            let role = view["role"].as_str()?.to_string();
            (role != "leader").then_some(role)
        });
        eprintln!(
            "the cut-off {old_name} is {role} {:?} after the cut",
            cut.elapsed()
        );
        promote.join().expect("the promote thread")
    });
    assert!(
        !promote.ok,
        "the promote on the cut-off leader: {promote:?}"
    );

    // Stepped down, it fails what needs a quorum, and stays down.
    let (promote, read) = (
        hosts.cli(old, &["failover", "promote", &set, &target]),
        hosts.cli(old, &["leaders", "--consistent"]),
    );
    assert!(!promote.ok, "{promote:?}");
    assert!(!read.ok, "{read:?}");
    eprintln!(
        "on the cut-off {old_name}: promote: {}; leaders --consistent: {}",
        promote.stderr.trim(),
        read.stderr.trim()
    );
    let view = hosts.leaders(old, false).expect("the cut-off node answers");
    assert_ne!(view["role"], "leader", "{view:#}");

    // The majority elects before the heal: its new leader's first entry is
    // in a later term, so the cut-off node's uncommitted promote loses.
    // (Healed sooner, the cut-off node's log can be the most up to date
    // and Raft may then commit that promote: a failed write's outcome is
    // unknown, which is not what this test is about.)
    let majority: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    one_leader(&hosts, &majority);
    hosts.heal(old);
    let one = one_leader(&hosts, &all);
    assert_eq!(
        one.masters.get(&set),
        first.masters.get(&set),
        "the master of {set} (the cut-off node was asked to promote {target})"
    );
}

/// A leader healed from a partition holds its verdicts of that time
/// ("dead", for everyone) until each member hears of its own and refutes
/// it; acting on them would move masters that never failed. Here the
/// group is one voter, `n1`, which leads throughout (a quorum of one);
/// `s1` is `m1` (master) and `m2`. Once the start's refutations are in
/// (a verdict on an older incarnation than `m2` knows would be undone),
/// `n1` is cut off and declares both dead (and `m1` `n1`). Then `m1` is
/// left answering the connections `n1` opens, and nothing else, so that
/// it can refute to nobody (it cannot open a gossip stream itself); once
/// `m2` has declared it dead too, `n1` is healed: `m2` refutes, `m1` stays
/// dead in every view, and `n1` would appoint `m2`. It asks `m1` directly
/// first, hears it, and keeps it. Killed, `m1` answers nobody and `m2`
/// takes over.
#[test]
fn a_healed_leader_does_not_move_a_master_its_stale_gossip_calls_dead() {
    let hosts = Hosts::new("rstale", &["n1", "m1", "m2"]);
    let address = |name: &str| hosts.hosts[hosts.index(name)].addr();
    hosts.write_topology(&format!(
        "cluster: test\nfailover: {{ mode: raft, election_timeout: 1s }}\nreplicasets:\n  core:\n    roles: [router]\n    nodes:\n      n1: {{ address: {}, election: candidate }}\n  s1:\n    roles: [storage]\n    failover_priority: [m1, m2]\n    nodes:\n      m1: {{ address: {}, election: off }}\n      m2: {{ address: {}, election: off }}\n",
        address("n1"),
        address("m1"),
        address("m2")
    ));
    hosts.start_all(WAIT);
    let all: Vec<usize> = (0..hosts.len()).collect();
    let first = hosts.agreed("the group forms", &all, 1, WAIT, |s| {
        s.masters.get("s1").is_some_and(|m| m.0 == "m1")
    });
    let generation = first.masters["s1"].1;
    let (n1, m1, m2) = (hosts.index("n1"), hosts.index("m1"), hosts.index("m2"));
    let s1_of_n1 = || {
        Seen::of(&hosts.leaders(n1, false)?)?
            .masters
            .get("s1")
            .cloned()
    };

    // n1's verdict will be on the incarnation of m1 it knows.
    wait_until(WAIT, "n1 and m2 to know m1's same incarnation", || {
        let known = |i: usize| known_incarnation(&hosts, i, "m1");
        (known(n1).is_some() && known(n1) == known(m2)).then_some(())
    });
    hosts.isolate(n1);
    wait_until(
        WAIT,
        "n1 and m1 to declare each other dead, and n1 m2",
        || {
            let dead = |i: usize, name: &str| sees(&hosts, i, name).as_deref() == Some("dead");
            (dead(n1, "m1") && dead(n1, "m2") && dead(m1, "n1")).then_some(())
        },
    );
    assert_eq!(
        s1_of_n1(),
        Some(("m1".to_string(), generation)),
        "with no alive candidate, the cut-off leader appoints nobody"
    );
    hosts.only_called_by(m1, &[n1]);
    wait_until(WAIT, "m2 to declare m1 dead", || {
        (sees(&hosts, m2, "m1").as_deref() == Some("dead")).then_some(())
    });
    hosts.heal(n1);
    let healed = Instant::now();
    // Either the leader finds that m1 answers, or (the bug) it moves s1.
    let kept = wait_until_or(WAIT, || {
        if let Some(line) = hosts
            .log_lines(n1, "but it answers this leader directly")
            .into_iter()
            .next()
        {
            return Some(Ok(line));
        }
        match s1_of_n1()? {
            (node, g) if g != generation => Some(Err((node, g))),
            _ => None,
        }
    });
    let kept = kept.unwrap_or_else(|| {
        let lines = |i: usize| hosts.log_lines(i, "member=m1").join("\n");
        panic!(
            "the leader neither kept s1's master nor moved it within {WAIT:?}; m1 in n1's log:\n{}\nin m2's:\n{}",
            lines(n1),
            lines(m2)
        )
    });
    let line = kept.unwrap_or_else(|moved| {
        panic!("the healed leader moved s1's master on its stale view: {moved:?}")
    });
    eprintln!("{:?} after the heal: {line}", healed.elapsed());
    assert_eq!(
        sees(&hosts, n1, "m1").as_deref(),
        Some("dead"),
        "m1 in n1's gossip"
    );
    let read = Seen::of(&hosts.leaders(n1, true).expect("a consistent read")).expect("a view");
    assert_eq!(
        read.masters.get("s1"),
        Some(&("m1".to_string(), generation))
    );

    hosts.kill(m1);
    let killed = Instant::now();
    let next = wait_until(WAIT, "m2 to be appointed", || {
        s1_of_n1().filter(|(node, _)| node == "m2")
    });
    eprintln!(
        "s1: m2 (generation {}) appointed {:?} after m1 was killed",
        next.1,
        killed.elapsed()
    );
    assert!(
        next.1 > generation,
        "{next:?} after generation {generation}"
    );
}

/// The incarnation (generation, version) of `name` in host `i`'s members.
fn known_incarnation(hosts: &Hosts, i: usize, name: &str) -> Option<(u64, u64)> {
    let members = hosts.json(i, &["members"])?;
    let m = members.as_array()?.iter().find(|m| m["name"] == name)?;
    Some((m["generation"].as_u64()?, m["version"].as_u64()?))
}

/// Waits until every host of `among` reports the same group and exactly
/// one of them says it is the leader, the one they all name (with every
/// host a voter).
fn one_leader(hosts: &Hosts, among: &[usize]) -> Seen {
    let mut last = Vec::new();
    wait_until_or(WAIT, || {
        last = among.iter().map(|&i| hosts.leaders(i, false)).collect();
        let seen: Vec<Seen> = last
            .iter()
            .map(|v| Seen::of(v.as_ref()?))
            .collect::<Option<_>>()?;
        let leaders: Vec<&Seen> = seen.iter().filter(|s| s.role == "leader").collect();
        let one = leaders.len() == 1 && leaders[0].node == leaders[0].leader;
        let same = seen
            .iter()
            .all(|s| s.voters == hosts.len() && s.same_group(&seen[0]));
        (one && same).then(|| seen[0].clone())
    })
    .unwrap_or_else(|| panic!("one leader agreed by hosts {among:?}; last seen:\n{last:#?}"))
}
