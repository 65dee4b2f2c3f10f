//! Two-phase commit of topology applies under the seeded simulator
//! (`cohort::twophase::sim`): nodes crash right after any action they carry
//! out, links lose, delay, duplicate and reorder messages, clocks run
//! ±10 % apart. The simulator checks at every step that (1) no version gets
//! two texts, (2) no node installs an aborted txn nor drops a committed
//! one, a decision never changes, (3) a lock held past its lease says
//! "waiting for the decision of txn T from node N" and is past it only
//! while the holder or the coordinator is down; at the end every node runs
//! one version, every commit is installed everywhere and nothing is locked.
//! A failing seed is printed with the command that replays it alone
//! (`TWOPC_SEED=<seed> cargo test --test twophase_sim <test>`);
//! `TWOPC_SEEDS=N` runs more seeds.

mod support;

use std::time::Duration;

use cohort::twophase::sim::{CrashPoint, Sim, SimConfig};
use cohort::twophase::{Decision, DecisionLog, LockStatus, Outcome, TxnId, Version};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const LEASE: Duration = Duration::from_secs(5);

use support::seeds::Figures;

/// Every seed of this suite: `TWOPC_SEED=N` replays one, `TWOPC_SEEDS=N`
/// runs more.
fn over_seeds(test: &str, count: u64, scenario: impl Fn(u64) -> Result<Figures, String>) {
    support::seeds::over_seeds("twophase_sim", "TWOPC", test, count, scenario)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---- chaos: random applies, crashes after any action, loss -----------------

fn chaos_config(seed: u64, loss: f64, log: DecisionLog) -> SimConfig {
    let mut config = SimConfig::new(seed, 3 + (seed % 5) as usize);
    config.log = log;
    config.coordinator.lease = LEASE;
    config.loss = loss;
    config.duplicate = 0.05;
    config.delay_min = Duration::from_millis(1);
    config.delay_max = Duration::from_millis(150);
    config.slow = 0.05;
    config.slow_delay_max = Duration::from_secs(3);
    config.crash_per_action = 0.005;
    config.downtime_min = Duration::from_millis(100);
    config.downtime_max = LEASE * 3;
    config.clock_skew = 0.1;
    config.validation_failure = 0.05;
    config
}

/// 90 s of applies started from random nodes every 0.3–4 s (a fifth of
/// them racing a second one, a tenth on a stale base), then the network heals and every crashed
/// node restarts; the cluster must settle within 2 minutes and then commit
/// one more apply.
fn chaos(seed: u64, loss: f64, log: DecisionLog) -> Result<Figures, String> {
    chaos_with(chaos_config(seed, loss, log))
}

fn chaos_with(config: SimConfig) -> Result<Figures, String> {
    let seed = config.seed;
    let n = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x2c0f_fee5);
    let window = Duration::from_secs(90);
    let mut refused = 0;
    while sim.elapsed() < window {
        let gap = rng.random_range(Duration::from_millis(300)..=Duration::from_secs(4));
        sim.run_for(gap);
        let racers = if rng.random_bool(0.2) { 2 } else { 1 };
        for _ in 0..racers {
            let node = rng.random_range(0..n);
            // One in ten from a stale view of the cluster's version.
            let stale = rng.random_bool(0.1).then(|| {
                let have = sim.committed(node).version.0;
                Version(have.saturating_sub(rng.random_range(1..=2)))
            });
            if sim.start_txn_on(node, stale).is_err() {
                refused += 1;
            }
        }
    }
    sim.heal();
    let took = sim
        .run_until_true(Duration::from_secs(120), Sim::settled)
        .ok_or_else(|| sim.describe_unsettled())?;
    sim.final_check()?;
    let stats = sim.stats();
    // Whatever happened, the healed cluster applies the next change.
    let next = sim.start_txn(rng.random_range(0..n))?;
    sim.run_until_true(Duration::from_secs(30), Sim::settled)
        .ok_or_else(|| format!("the apply after the heal: {}", sim.describe_unsettled()))?;
    sim.final_check()?;
    if sim.decision(next) != Some(Decision::Commit) {
        return Err(format!(
            "the apply after the heal did not commit: {:?}",
            sim.results().last()
        ));
    }
    // Why the applies aborted, by the first reason each answer gives.
    let mut why = [0u32; 5];
    for (_, _, result) in sim.results() {
        if let Outcome::Aborted { reasons } = &result.outcome {
            let first = reasons.values().next().map_or("", String::as_str);
            let k = if first.starts_with("locked by") {
                0
            } else if first.starts_with("base version mismatch") {
                1
            } else if first.contains("port 8080") {
                2
            } else if reasons.is_empty() {
                3
            } else {
                4
            };
            why[k] += 1;
        }
    }
    Ok(vec![
        ("nodes", n as f64),
        ("txns started", stats.started as f64),
        ("aborted: locked by another txn", f64::from(why[0])),
        ("aborted: base version mismatch", f64::from(why[1])),
        ("aborted: validation failed", f64::from(why[2])),
        ("aborted: only silent nodes", f64::from(why[3])),
        (
            "aborted: other (coordinator restart, ...)",
            f64::from(why[4]),
        ),
        ("committed", stats.committed as f64),
        ("aborted", stats.aborted as f64),
        ("starts refused (node down)", f64::from(refused)),
        ("crashes", stats.crashes as f64),
        ("messages", stats.messages as f64),
        ("lock holds", stats.holds as f64),
        ("holds past lease", stats.holds_past_lease as f64),
        ("max lock hold (s)", secs(stats.max_hold)),
        (
            "max past lease, holder and coordinator up (s)",
            secs(stats.max_unexcused_past_lease),
        ),
        ("settled after heal (s)", secs(took)),
    ])
}

#[test]
fn chaos_no_loss_crashes_at_any_action() {
    over_seeds("chaos_no_loss_crashes_at_any_action", 200, |seed| {
        chaos(seed, 0.0, DecisionLog::Coordinator)
    });
}

#[test]
fn chaos_10_percent_loss_crashes_at_any_action() {
    over_seeds("chaos_10_percent_loss_crashes_at_any_action", 200, |seed| {
        chaos(seed, 0.1, DecisionLog::Coordinator)
    });
}

#[test]
fn chaos_30_percent_loss_crashes_at_any_action() {
    over_seeds("chaos_30_percent_loss_crashes_at_any_action", 200, |seed| {
        chaos(seed, 0.3, DecisionLog::Coordinator)
    });
}

/// The same with the decision in a replicated log (Raft, issue 6): the
/// coordinator's downtime no longer excuses a lock held past its lease.
#[test]
fn chaos_replicated_log_30_percent_loss() {
    over_seeds("chaos_replicated_log_30_percent_loss", 200, |seed| {
        chaos(seed, 0.3, DecisionLog::Replicated)
    });
}

/// Txns of both logs side by side (agents use the replicated log while
/// the Raft group has a leader, their own otherwise): each txn keeps the
/// log it started with, and the invariants hold across them.
#[test]
fn chaos_mixed_logs_30_percent_loss() {
    over_seeds("chaos_mixed_logs_30_percent_loss", 200, |seed| {
        let mut config = chaos_config(seed, 0.3, DecisionLog::Coordinator);
        config.mixed_logs = true;
        chaos_with(config)
    });
}

// ---- catch-up: applies among the nodes that are up ------------------------

/// As the agent runs it: each apply takes as participants only the nodes
/// that are up (membership sees the others dead), so a node down during
/// applies misses them; once back, it learns the newer version from a
/// peer (the gossiped version, `catch_up_interval`) and installs it. Long
/// downtimes (up to 4 leases), 10 % loss, crashes at any action; at the
/// end every node runs the last committed version and every commit counts
/// as installed everywhere (skipped versions are behind the one caught
/// up to).
fn catch_up_chaos(seed: u64) -> Result<Figures, String> {
    let mut config = chaos_config(seed, 0.1, DecisionLog::Coordinator);
    config.nodes = 5;
    config.downtime_max = LEASE * 4;
    config.catch_up_interval = Some(Duration::from_secs(1));
    let n = config.nodes;
    let mut sim = Sim::new(config);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x00ca_7c40);
    let window = Duration::from_secs(90);
    while sim.elapsed() < window {
        sim.run_for(rng.random_range(Duration::from_millis(300)..=Duration::from_secs(3)));
        let node = rng.random_range(0..n);
        let up: Vec<usize> = (0..n).filter(|&i| sim.is_running(i)).collect();
        let _ = sim.start_txn_among(node, None, &up);
    }
    sim.heal();
    let took = sim
        .run_until_true(Duration::from_secs(120), Sim::settled)
        .ok_or_else(|| sim.describe_unsettled())?;
    sim.final_check()?;
    let stats = sim.stats();
    if stats.committed > 0 && sim.committed(0).version == Version(0) {
        return Err("commits were decided but the cluster is at version 0".into());
    }
    Ok(vec![
        ("txns started", stats.started as f64),
        ("committed", stats.committed as f64),
        ("crashes", stats.crashes as f64),
        ("versions installed by catch-up", stats.caught_up as f64),
        ("settled after heal (s)", secs(took)),
    ])
}

#[test]
fn nodes_down_during_applies_catch_up() {
    over_seeds("nodes_down_during_applies_catch_up", 200, catch_up_chaos);
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let mut sim = Sim::new(chaos_config(seed, 0.1, DecisionLog::Coordinator));
        for k in 0..20 {
            sim.run_for(Duration::from_millis(700));
            let _ = sim.start_txn(k % sim.len());
        }
        sim.heal();
        sim.run_for(Duration::from_secs(60));
        (sim.trace(), sim.stats().committed, sim.stats().crashes)
    };
    for seed in support::seeds::seeds("TWOPC", 5) {
        assert_eq!(run(seed), run(seed), "seed {seed} did not replay exactly");
    }
}

// ---- every crash point of one apply ----------------------------------------

fn quiet_config(seed: u64, nodes: usize, log: DecisionLog) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    config.log = log;
    config.coordinator.lease = LEASE;
    config.clock_skew = 0.1;
    config
}

/// One apply from node 0 on 3 nodes; node `victim` crashes right after its
/// `k`-th action and comes back `down` later. Returns what was decided.
fn crash_point_run(
    seed: u64,
    log: DecisionLog,
    victim: usize,
    k: u64,
    down: Duration,
) -> Result<Option<Decision>, String> {
    let mut sim = Sim::new(quiet_config(seed, 3, log));
    sim.crash_at(victim, CrashPoint::AfterActions(k), Some(down));
    let txn = sim.start_txn(0)?;
    sim.run_until_true(Duration::from_secs(120), |s| {
        s.elapsed() > down && s.settled()
    })
    .ok_or_else(|| sim.describe_unsettled())?;
    sim.final_check()?;
    // The cluster is usable afterwards: the next apply commits.
    let next = sim.start_txn(1)?;
    sim.run_until_true(Duration::from_secs(30), Sim::settled)
        .ok_or_else(|| {
            format!(
                "after the crash, a second apply: {}",
                sim.describe_unsettled()
            )
        })?;
    sim.final_check()?;
    if sim.decision(next) != Some(Decision::Commit) {
        return Err(format!(
            "the apply after the crash did not commit: {:?}",
            sim.results()
        ));
    }
    Ok(sim.decision(txn))
}

/// Counts the actions each node carries out in one quiet apply.
fn actions_per_node(seed: u64, log: DecisionLog) -> Vec<u64> {
    (0..3)
        .map(|victim| {
            // Crash "after action 1000" never fires: count until settled.
            let mut k = 0;
            loop {
                let mut sim = Sim::new(quiet_config(seed, 3, log));
                sim.crash_at(victim, CrashPoint::AfterActions(k), None);
                if sim.start_txn(0).is_err() {
                    return k;
                }
                sim.run_for(Duration::from_secs(60));
                if sim.is_running(victim) {
                    return k;
                }
                k += 1;
            }
        })
        .collect()
}

fn every_crash_point(test: &str, log: DecisionLog) {
    over_seeds(test, 200, |seed| {
        let counts = actions_per_node(seed, log);
        let mut runs = 0;
        let (mut commits, mut aborts) = (0, 0);
        for (victim, &count) in counts.iter().enumerate() {
            for k in 0..count {
                for down in [Duration::from_millis(300), LEASE * 3] {
                    let decided = crash_point_run(seed, log, victim, k, down).map_err(|e| {
                        format!("node {victim} crashed after action {k}, down {down:?}: {e}")
                    })?;
                    runs += 1;
                    match decided {
                        Some(Decision::Commit) => commits += 1,
                        _ => aborts += 1,
                    }
                }
            }
        }
        Ok(vec![
            ("crash points (node, action, downtime)", f64::from(runs)),
            ("actions of the coordinator node", counts[0] as f64),
            ("actions of another node", counts[1] as f64),
            ("committed", f64::from(commits)),
            ("aborted", f64::from(aborts)),
        ])
    });
}

#[test]
fn every_crash_point_of_one_apply() {
    every_crash_point("every_crash_point_of_one_apply", DecisionLog::Coordinator);
}

#[test]
fn every_crash_point_of_one_apply_replicated_log() {
    every_crash_point(
        "every_crash_point_of_one_apply_replicated_log",
        DecisionLog::Replicated,
    );
}

// ---- the blocking case -----------------------------------------------------

/// The coordinator records commit and crashes before telling anyone; it
/// stays down three leases. Every other node is prepared and undecided:
/// they keep their locks, say why, never guess; when the coordinator comes
/// back it sends the commit and all install it.
#[test]
fn coordinator_down_after_deciding_blocks_and_never_guesses() {
    over_seeds(
        "coordinator_down_after_deciding_blocks_and_never_guesses",
        200,
        |seed| {
            let n = 3 + (seed % 4) as usize;
            let mut sim = Sim::new(quiet_config(seed, n, DecisionLog::Coordinator));
            let down = LEASE * 3;
            sim.crash_at(0, CrashPoint::AfterDecided(0), Some(down));
            let txn = sim.start_txn(0)?;
            sim.run_until_true(LEASE, |s| !s.is_running(0))
                .ok_or("the coordinator did not crash")?;
            if sim.decision(txn) != Some(Decision::Commit) {
                return Err(format!("decided {:?}, expected commit", sim.decision(txn)));
            }
            // Well past every lease, the coordinator still down.
            sim.run_for(LEASE * 2);
            let expected = format!(
                "waiting for the decision of txn {} from node {}",
                txn.seq,
                sim.id(0)
            );
            for i in 1..n {
                let status = sim.lock_status(i).ok_or("a participant is down")?;
                if !matches!(status, LockStatus::Waiting { .. }) || status.to_string() != expected {
                    return Err(format!(
                        "node {i} says \"{status}\", expected \"{expected}\""
                    ));
                }
                if sim.committed(i).version.0 != 0 {
                    return Err(format!("node {i} installed without the coordinator"));
                }
            }
            let waited = sim.elapsed();
            sim.run_until_true(Duration::from_secs(60), Sim::settled)
                .ok_or_else(|| sim.describe_unsettled())?;
            sim.final_check()?;
            if sim.installed_by(txn) != n {
                return Err("the commit was not installed everywhere".into());
            }
            Ok(vec![
                ("nodes", n as f64),
                (
                    "locks held past lease (s)",
                    secs(sim.stats().max_hold) - secs(LEASE),
                ),
                ("waited before the coordinator came back (s)", secs(waited)),
            ])
        },
    );
}

/// Why a prepared node never gives up a txn on its own, even long after
/// its lease, even when every node it can reach is as uncertain as it is:
/// the coordinator's commit reached node 1 only, which installed it and
/// crashed; the coordinator crashed too. Nodes 2.. see only "prepared"
/// answers. Aborting (the "abort-pending" rule) would leave node 1 on
/// another version for good. They wait, and commit when node 1 is back.
#[test]
fn prepared_nodes_never_abort_while_a_silent_node_may_have_installed() {
    over_seeds(
        "prepared_nodes_never_abort_while_a_silent_node_may_have_installed",
        200,
        |seed| {
            let n = 4 + (seed % 3) as usize;
            let mut sim = Sim::new(quiet_config(seed, n, DecisionLog::Coordinator));
            // The decision goes to the participants in node order: itself
            // (lost with the crash) and node 1, then the crash.
            sim.crash_at(0, CrashPoint::AfterDecided(2), None);
            let txn = sim.start_txn(0)?;
            sim.run_until_true(LEASE, |s| s.installed_by(txn) == 1)
                .ok_or("node 1 did not install alone")?;
            if sim.is_running(0) || sim.committed(1).version.0 != 1 {
                return Err(
                    "the script went wrong: not (coordinator down, node 1 installed)".into(),
                );
            }
            sim.crash(1);
            sim.run_for(LEASE * 4);
            for i in 2..n {
                let status = sim.lock_status(i).ok_or("a participant is down")?;
                if !matches!(status, LockStatus::Waiting { .. }) {
                    return Err(format!("node {i} gave up: {status}"));
                }
            }
            // Node 1 alone knows, and says so.
            sim.restart(1);
            let took = sim
                .run_until_true(LEASE * 2, |s| (2..n).all(|i| s.committed(i).version.0 == 1))
                .ok_or("the waiting nodes did not learn the commit from node 1")?;
            sim.restart(0);
            sim.run_until_true(Duration::from_secs(60), Sim::settled)
                .ok_or_else(|| sim.describe_unsettled())?;
            sim.final_check()?;
            Ok(vec![("committed after node 1 came back (s)", secs(took))])
        },
    );
}

/// "Not prepared" is a promise: node 1 voted yes, crashed and came back
/// at once, asking for the decision while node 2 had not yet received the
/// PREPARE (its link from the coordinator is cut). Node 2 answers "not
/// prepared", so node 1 aborts; node 2 must then never vote yes when the
/// PREPARE finally arrives, or the coordinator would commit without node 1.
#[test]
fn a_not_prepared_answer_is_a_promise_never_to_vote_yes() {
    over_seeds(
        "a_not_prepared_answer_is_a_promise_never_to_vote_yes",
        200,
        |seed| {
            let mut sim = Sim::new(quiet_config(seed, 3, DecisionLog::Coordinator));
            sim.set_cut(0, 2, true);
            // Node 1: Validate, Persist(Staged), Send(yes), then the crash.
            sim.crash_at(
                1,
                CrashPoint::AfterActions(2),
                Some(Duration::from_millis(50)),
            );
            let txn = sim.start_txn(0)?;
            sim.run_until_true(LEASE, |s| {
                s.stats().crashes == 1
                    && s.is_running(1)
                    && s.lock_status(1) == Some(LockStatus::Free)
            })
            .ok_or("node 1 did not abort on node 2's answer")?;
            sim.set_cut(0, 2, false);
            sim.run_until_true(Duration::from_secs(60), Sim::settled)
                .ok_or_else(|| sim.describe_unsettled())?;
            sim.final_check()?;
            if sim.decision(txn) != Some(Decision::Abort) {
                return Err(format!("decided {:?}", sim.decision(txn)));
            }
            Ok(vec![])
        },
    );
}

/// The same crash with a replicated decision log: nobody waits for the
/// coordinator; the log already holds commit, and participants whose lease
/// ran out learn it by proposing abort.
#[test]
fn replicated_log_does_not_block_on_the_coordinator() {
    over_seeds(
        "replicated_log_does_not_block_on_the_coordinator",
        200,
        |seed| {
            let n = 3 + (seed % 4) as usize;
            let mut sim = Sim::new(quiet_config(seed, n, DecisionLog::Replicated));
            sim.crash_at(0, CrashPoint::AfterDecided(0), Some(LEASE * 3));
            let txn = sim.start_txn(0)?;
            sim.run_until_true(LEASE, |s| !s.is_running(0))
                .ok_or("the coordinator did not crash")?;
            let took = sim
                .run_until_true(LEASE * 2, |s| (1..n).all(|i| s.committed(i).version.0 == 1))
                .ok_or("participants did not install while the coordinator was down")?;
            sim.run_until_true(Duration::from_secs(60), Sim::settled)
                .ok_or_else(|| sim.describe_unsettled())?;
            sim.final_check()?;
            if sim.decision(txn) != Some(Decision::Commit) {
                return Err("not committed".into());
            }
            Ok(vec![(
                "installed without the coordinator after (s)",
                secs(took),
            )])
        },
    );
}

// ---- racing coordinators ---------------------------------------------------

fn aborted_by_the_other(result: &Outcome, other: TxnId) -> bool {
    let locked = format!(
        "locked by txn {} from node {}",
        other.seq, other.coordinator
    );
    match result {
        Outcome::Committed(_) => false,
        Outcome::Aborted { reasons } => reasons
            .values()
            .any(|r| *r == locked || r.starts_with("base version mismatch: have ")),
    }
}

/// Two nodes start an apply on the same base at the same instant: at most
/// one commits, and a loser's answer names the winner's lock (or the base
/// it lost to).
#[test]
fn racing_coordinators_at_most_one_commits() {
    over_seeds("racing_coordinators_at_most_one_commits", 200, |seed| {
        let n = 3 + (seed % 5) as usize;
        let mut sim = Sim::new(quiet_config(seed, n, DecisionLog::Coordinator));
        let a = (seed as usize) % n;
        let b = (a + 1 + (seed as usize / 7) % (n - 1)) % n;
        let ta = sim.start_txn(a)?;
        let tb = sim.start_txn(b)?;
        sim.run_until_true(Duration::from_secs(60), Sim::settled)
            .ok_or_else(|| sim.describe_unsettled())?;
        sim.final_check()?;
        let da = sim.decision(ta);
        let db = sim.decision(tb);
        if da == Some(Decision::Commit) && db == Some(Decision::Commit) {
            return Err("both committed".into());
        }
        for (mine, other) in [(ta, tb), (tb, ta)] {
            let Some((_, _, result)) = sim.results().iter().find(|(_, _, r)| r.txn == mine) else {
                return Err(format!("no answer for {mine}"));
            };
            if !matches!(result.outcome, Outcome::Committed(_))
                && !aborted_by_the_other(&result.outcome, other)
            {
                return Err(format!("{mine} aborted without naming the other: {result}"));
            }
        }
        let winners = [da, db]
            .iter()
            .filter(|d| **d == Some(Decision::Commit))
            .count();
        Ok(vec![("committed of the two", winners as f64)])
    });
}

/// The same race under 30 % loss and crashes: still at most one.
#[test]
fn racing_coordinators_under_loss_and_crashes() {
    over_seeds("racing_coordinators_under_loss_and_crashes", 200, |seed| {
        let config = chaos_config(seed, 0.3, DecisionLog::Coordinator);
        let n = config.nodes;
        let mut sim = Sim::new(config);
        let a = (seed as usize) % n;
        let b = (a + 1) % n;
        let ta = sim.start_txn(a)?;
        let tb = sim.start_txn(b)?;
        sim.run_for(Duration::from_secs(30));
        sim.heal();
        sim.run_until_true(Duration::from_secs(120), Sim::settled)
            .ok_or_else(|| sim.describe_unsettled())?;
        sim.final_check()?;
        let both = sim.decision(ta) == Some(Decision::Commit)
            && sim.decision(tb) == Some(Decision::Commit);
        if both {
            return Err("both committed".into());
        }
        let winners = [ta, tb]
            .iter()
            .filter(|t| sim.decision(**t) == Some(Decision::Commit))
            .count();
        Ok(vec![("committed of the two", winners as f64)])
    });
}
