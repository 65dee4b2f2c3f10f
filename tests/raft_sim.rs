//! The Raft group (openraft over our store) under the seeded simulator
//! (`cohort::raft::sim`): several nodes in one process on a paused clock,
//! a client writing masters and 2PC decisions to whoever it believes leads,
//! and faults: lost messages, the leader cut off from the majority, crashes
//! and restarts from the store, all nodes at once. Every run checks that
//! no term has two leaders, every index holds the same entry everywhere,
//! an acknowledged write is never lost, no fencing generation is given
//! twice, voter-only nodes never lead; and that once the faults stop, a
//! leader everyone agrees on is back within ten election timeouts.
//!
//! A failing seed is printed with the command that replays it
//! (`RAFT_SEED=<seed> cargo test --test raft_sim <test>`); `RAFT_SEEDS=N`
//! runs more seeds. A replay repeats the faults and openraft's timeouts,
//! not necessarily every interleaving (see the simulator's doc).

mod support;

use std::time::Duration;

use cohort::raft::sim::{node_id, Checker, Sim, SimConfig};
use cohort::raft::{Command, Entry, LogId, Master, Response};
use openraft::{CommittedLeaderId, EntryPayload, ServerState};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use support::seeds::Figures;

/// Every seed of this suite: `RAFT_SEED=N` replays one, `RAFT_SEEDS=N`
/// runs more.
fn over_seeds(test: &str, count: u64, scenario: impl Fn(u64) -> Result<Figures, String>) {
    support::seeds::over_seeds("raft_sim", "RAFT", test, count, scenario)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The liveness bound once faults stop: ten election timeouts.
fn bound(sim: &Sim) -> Duration {
    sim.config().election_timeout * 10
}

/// How long the majority may take to replace a leader cut off from it:
/// twenty election timeouts. openraft 0.9's own timers take 0.9T–1.5T
/// before the first vote (the followers' leader lease, 0.7T, then the
/// timeout, 0.2T–0.7T, then up to a tick), 1.5T more on a node that once
/// lost an election for a shorter log (the flag is only cleared by its
/// next election), and a split vote costs a round of 0.2T–0.7T.
fn replace_bound(sim: &Sim) -> Duration {
    sim.config().election_timeout * 20
}

/// The faults stop (links heal, loss ends, crashed nodes restart); a
/// leader must be agreed on within the bound, every node must then apply
/// one more write and hold the same state, and no invariant may have
/// broken. Adds the figures of the run.
fn finish(mut sim: Sim, mut figures: Figures) -> Result<Figures, String> {
    sim.heal();
    sim.set_loss(0.0);
    sim.restart_all()?;
    let recovered = sim.await_leader(bound(&sim))?;
    let converged = sim.converge(bound(&sim))?;
    sim.check()?;
    let stats = sim.stats();
    if stats.client.acked == 0 {
        return Err("no write was acknowledged in the whole run".into());
    }
    figures.extend([
        ("recover_ms", ms(recovered)),
        ("converge_ms", ms(converged)),
        ("acked", stats.client.acked as f64),
        ("stale", stats.client.stale as f64),
        ("failed", stats.client.failed as f64),
        ("terms_led", stats.terms_led as f64),
        ("max_term", stats.max_term as f64),
        ("messages", stats.net.sent as f64),
        ("lost", stats.net.lost as f64),
    ]);
    Ok(figures)
}

/// `RAFT_LOG=openraft=debug` (an env filter) prints openraft's log of a
/// replayed seed.
fn trace() {
    /// Log lines carry the simulated clock (ms since the first line).
    struct SimClock;
    impl tracing_subscriber::fmt::time::FormatTime for SimClock {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            thread_local! {
                static START: std::cell::OnceCell<tokio::time::Instant> = const { std::cell::OnceCell::new() };
            }
            let now = tokio::time::Instant::now();
            let since = START.with(|s| now - *s.get_or_init(|| now));
            write!(w, "{:>9.3}ms", since.as_secs_f64() * 1000.0)
        }
    }
    if let Ok(filter) = std::env::var("RAFT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_timer(SimClock)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

fn start(config: SimConfig) -> Result<(Sim, tempfile::TempDir), String> {
    trace();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sim = Sim::new(config, dir.path())?;
    Ok((sim, dir))
}

/// The first leader, within the bound.
fn first_leader(sim: &mut Sim) -> Result<f64, String> {
    let b = bound(sim);
    sim.await_leader(b).map(ms)
}

// ---- steady: no faults -------------------------------------------------------

fn no_faults(seed: u64) -> Result<Figures, String> {
    let nodes = if seed % 2 == 0 { 3 } else { 5 };
    let (mut sim, _dir) = start(SimConfig::new(seed, nodes))?;
    let elected = first_leader(&mut sim)?;
    sim.start_workload();
    sim.run_for(Duration::from_secs(10));
    // Nothing went wrong: one term, no write lost.
    let terms = sim.stats().terms_led;
    if terms != 1 {
        return Err(format!(
            "{terms} terms without any fault: {}",
            sim.describe_nodes()
        ));
    }
    finish(sim, vec![("first_leader_ms", elected)])
}

#[test]
fn steady() {
    over_seeds("steady", 8, no_faults);
}

// ---- lossy: 10 % of messages lost -----------------------------------------

fn lossy(seed: u64) -> Result<Figures, String> {
    let mut config = SimConfig::new(seed, 5);
    config.loss = 0.10;
    let (mut sim, _dir) = start(config)?;
    let elected = first_leader(&mut sim)?;
    sim.start_workload();
    sim.run_for(Duration::from_secs(15));
    finish(sim, vec![("first_leader_ms", elected)])
}

#[test]
fn lossy_10_percent() {
    over_seeds("lossy_10_percent", 8, lossy);
}

// ---- the leader cut off from the majority --------------------------------

/// Three times: the leader is cut off from every other node while the
/// client keeps writing. The others must elect a new leader within the
/// bound; the cut lasts 0–3 election timeouts more, then heals. Measures
/// how long the old leader keeps calling itself leader (openraft 0.9 has
/// no step-down on a lost quorum: it stays leader, unable to commit, until
/// it hears of a higher term).
fn leader_isolated(seed: u64) -> Result<Figures, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x0150_1a7e);
    let nodes = if seed % 2 == 0 { 3 } else { 5 };
    let mut config = SimConfig::new(seed, nodes);
    config.loss = rng.random_range(0.0..=0.05);
    let t = config.election_timeout;
    let (mut sim, _dir) = start(config)?;
    let elected = first_leader(&mut sim)?;
    sim.start_workload();
    let mut figures = vec![("first_leader_ms", elected)];
    let step = Duration::from_millis(5);
    for _ in 0..3 {
        sim.run_for(t.mul_f64(rng.random_range(1.0..4.0)));
        let b = bound(&sim);
        sim.await_leader(b)?;
        let old = sim.agreed_leader().ok_or("the leader vanished")?;
        let old_term = sim.metrics(old).map_or(0, |m| m.current_term);
        sim.isolate(old);
        let still_leads = |sim: &Sim| {
            sim.metrics(old)
                .is_some_and(|m| m.state == ServerState::Leader && m.current_term == old_term)
        };
        let mut waited = Duration::ZERO;
        let mut stepped_down = None;
        let replaced = loop {
            sim.run_for(step);
            waited += step;
            if stepped_down.is_none() && !still_leads(&sim) {
                stepped_down = Some(waited);
            }
            let new_leader = sim
                .leader()
                .filter(|&l| l != old)
                .and_then(|l| sim.metrics(l))
                .is_some_and(|m| m.current_term > old_term);
            if new_leader {
                break waited;
            }
            if waited >= replace_bound(&sim) {
                return Err(format!(
                    "n{old} cut off for {waited:?} and the others elected nobody: {}",
                    sim.describe_nodes()
                ));
            }
        };
        let more = t.mul_f64(rng.random_range(0.0..3.0));
        sim.run_for(more);
        waited += more;
        if stepped_down.is_none() && !still_leads(&sim) {
            stepped_down = Some(waited);
        }
        // What the old leader's metrics say of its quorum (what the agent's
        // driver acts on): how far behind the cut's real length.
        if let Some(age) = sim.metrics(old).and_then(|m| m.millis_since_quorum_ack) {
            figures.push(("quorum_ack_age_lag_ms", ms(waited) - age as f64));
        }
        figures.push(("replaced_ms", ms(replaced)));
        // A leader that never stepped down counts the whole cut.
        figures.push(("old_leader_leads_ms", ms(stepped_down.unwrap_or(waited))));
        figures.push((
            "old_leader_stepped_down",
            f64::from(u8::from(stepped_down.is_some())),
        ));
        sim.heal();
        figures.push(("rejoin_ms", ms(sim.await_leader(b)?)));
    }
    finish(sim, figures)
}

#[test]
fn leader_isolated_from_the_majority() {
    over_seeds("leader_isolated_from_the_majority", 24, leader_isolated);
}

// ---- random crashes and restarts (a minority down at most) -----------------

/// For 20 s, every 0.1–1.5 s: a node crashes (the leader a third of the
/// time; never more than a minority down), a crashed node restarts, or the
/// links change (one link cut, a minority split from the majority, or all
/// healed). Snapshots every 30 entries, so a node back from a long crash
/// is caught up by InstallSnapshot.
fn crashes(seed: u64) -> Result<Figures, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x0c7a_54e5);
    let nodes = if seed % 2 == 0 { 3 } else { 5 };
    let mut config = SimConfig::new(seed, nodes);
    config.loss = rng.random_range(0.0..=0.05);
    config.snapshot_every = Some(30);
    let minority = (nodes - 1) / 2;
    let (mut sim, _dir) = start(config)?;
    let elected = first_leader(&mut sim)?;
    sim.start_workload();
    let window = Duration::from_secs(20);
    let since = sim.elapsed();
    while sim.elapsed() - since < window {
        sim.run_for(rng.random_range(Duration::from_millis(100)..=Duration::from_millis(1500)));
        let down: Vec<usize> = (0..nodes).filter(|&i| !sim.is_up(i)).collect();
        match rng.random_range(0..10) {
            0..=3 if down.len() < minority => {
                // The leader, a third of the time.
                let victim = match sim.leader() {
                    Some(l) if rng.random_bool(0.33) => l,
                    _ => sim.up()[rng.random_range(0..sim.up().len())],
                };
                sim.crash(victim);
            }
            0..=6 if !down.is_empty() => {
                sim.restart(down[rng.random_range(0..down.len())])?;
            }
            7 => {
                let a = rng.random_range(0..nodes);
                let b = (a + rng.random_range(1..nodes)) % nodes;
                sim.cut(a, b);
            }
            8 => {
                // A minority on one side, the majority on the other.
                let mut order: Vec<usize> = (0..nodes).collect();
                for i in (1..nodes).rev() {
                    order.swap(i, rng.random_range(0..=i));
                }
                let (minority, majority) = order.split_at(rng.random_range(1..=nodes / 2));
                sim.partition(&[minority.to_vec(), majority.to_vec()]);
            }
            9 => sim.heal(),
            _ => {}
        }
    }
    let stats = sim.stats();
    finish(
        sim,
        vec![
            ("first_leader_ms", elected),
            ("crashes", stats.crashes as f64),
            ("snapshots_installed", stats.snapshots_installed as f64),
        ],
    )
}

#[test]
fn random_crashes_and_restarts() {
    over_seeds("random_crashes_and_restarts", 12, crashes);
}

// ---- power cut: every node at once ------------------------------------------

/// Three times, every node crashes at once while the client writes; they
/// come back from their stores after 0–2 election timeouts, one by one in
/// a random order, up to one timeout apart (every other time all at
/// once). Once all run, a leader must be back within the bound, and
/// nothing acknowledged before the cut may be lost.
fn power_cut(seed: u64) -> Result<Figures, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x0009_03e7);
    let nodes = if seed % 2 == 0 { 3 } else { 5 };
    let config = SimConfig::new(seed, nodes);
    let t = config.election_timeout;
    let (mut sim, _dir) = start(config)?;
    let elected = first_leader(&mut sim)?;
    sim.start_workload();
    let mut figures = vec![("first_leader_ms", elected)];
    for round in 0..3 {
        sim.run_for(rng.random_range(Duration::from_millis(200)..=Duration::from_secs(3)));
        if round % 2 == 0 {
            sim.power_cut()?;
        } else {
            for i in 0..nodes {
                sim.crash(i);
            }
            sim.run_for(t.mul_f64(rng.random_range(0.0..2.0)));
            let mut order: Vec<usize> = (0..nodes).collect();
            for i in (1..nodes).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for i in order {
                sim.restart(i)?;
                sim.run_for(t.mul_f64(rng.random_range(0.0..1.0)));
            }
        }
        let b = bound(&sim);
        figures.push(("back_ms", ms(sim.await_leader(b)?)));
        figures.push(("term_after", sim.stats().max_term as f64));
    }
    finish(sim, figures)
}

#[test]
fn power_cut_of_every_node() {
    over_seeds("power_cut_of_every_node", 16, power_cut);
}

// ---- 5 voters, 2 of them voter-only ------------------------------------------

/// Voters 3 and 4 vote but never stand: they must never lead nor become
/// candidates, and the three others keep the group led through crashes
/// and isolation of the leader (one fault at a time).
fn voter_only(seed: u64) -> Result<Figures, String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x7073_0001);
    let mut config = SimConfig::new(seed, 5);
    config.voter_only = [3, 4].into();
    let t = config.election_timeout;
    let (mut sim, _dir) = start(config)?;
    let elected = first_leader(&mut sim)?;
    sim.start_workload();
    let mut figures = vec![("first_leader_ms", elected)];
    for _ in 0..4 {
        sim.run_for(t.mul_f64(rng.random_range(2.0..6.0)));
        let b = bound(&sim);
        sim.await_leader(b)?;
        let victim = if rng.random_bool(0.5) {
            sim.leader().ok_or("no leader")?
        } else {
            rng.random_range(0..5)
        };
        if rng.random_bool(0.5) {
            sim.crash(victim);
        } else {
            sim.isolate(victim);
        }
        sim.run_for(t.mul_f64(rng.random_range(3.0..6.0)));
        let leader = sim.leader();
        if let Some(l) = leader.filter(|l| *l >= 3) {
            return Err(format!("voter-only n{l} leads: {}", sim.describe_nodes()));
        }
        sim.heal();
        sim.restart_all()?;
        figures.push(("back_ms", ms(sim.await_leader(b)?)));
    }
    finish(sim, figures)
}

#[test]
fn voter_only_nodes_never_lead() {
    over_seeds("voter_only_nodes_never_lead", 10, voter_only);
}

// ---- the checker can fail ----------------------------------------------------

fn entry(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, node_id(0)), index),
        payload: EntryPayload::Normal(command),
    }
}

fn appoint(node: &str, expect: u64) -> Command {
    Command::AppointMaster {
        set: "s1".into(),
        node: node.into(),
        expect,
        reason: "test".into(),
    }
}

fn appointed(node: &str, generation: u64) -> Response {
    Response::Appointed(Master {
        node: node.into(),
        generation,
        reason: "test".into(),
    })
}

#[test]
fn the_checker_reports_each_broken_invariant() {
    // Two leaders in one term.
    let mut c = Checker::new();
    c.observe(node_id(0), 2, ServerState::Leader, None);
    c.observe(node_id(1), 2, ServerState::Leader, None);
    assert!(
        c.violations()
            .iter()
            .any(|v| v.contains("two leaders in term 2")),
        "{:?}",
        c.violations()
    );

    // A follower that knows n0 as the leader of term 5 while n1 leads it.
    let mut c = Checker::new();
    c.observe(node_id(2), 5, ServerState::Follower, Some(node_id(0)));
    c.observe(node_id(1), 5, ServerState::Leader, Some(node_id(1)));
    assert!(
        c.violations()
            .iter()
            .any(|v| v.contains("two leaders in term 5")),
        "{:?}",
        c.violations()
    );

    // Two nodes applied different entries at one index.
    let mut c = Checker::new();
    c.applied(
        node_id(0),
        &entry(1, 5, appoint("a", 0)),
        &appointed("a", 1),
    );
    c.applied(
        node_id(1),
        &entry(2, 5, appoint("b", 0)),
        &appointed("b", 1),
    );
    assert!(
        c.violations().iter().any(|v| v.contains("index 5")),
        "{:?}",
        c.violations()
    );
    // ... which also gave generation 1 of s1 to two nodes.
    assert!(
        c.violations().iter().any(|v| v.contains("generation 1")),
        "{:?}",
        c.violations()
    );

    // A write acknowledged at index 7 that a node then applied otherwise
    // (the acknowledged write was lost).
    let mut c = Checker::new();
    let acked = entry(3, 7, appoint("a", 0));
    c.acked(acked.log_id, &appoint("a", 0), &appointed("a", 1));
    c.applied(
        node_id(2),
        &entry(4, 7, appoint("c", 0)),
        &appointed("c", 1),
    );
    assert!(
        c.violations()
            .iter()
            .any(|v| v.contains("the client was told")),
        "{:?}",
        c.violations()
    );

    // A node short of the last acknowledged write at the end.
    let mut c = Checker::new();
    c.acked(acked.log_id, &appoint("a", 0), &appointed("a", 1));
    c.applied(node_id(0), &acked, &appointed("a", 1));
    c.check_all_applied(&[node_id(0), node_id(1)]);
    assert_eq!(c.violations().len(), 1, "{:?}", c.violations());
    assert!(c.violations()[0].contains("n1 applied through 0"));

    // A voter-only node standing for election.
    let mut c = Checker::new();
    c.voter_only(node_id(4));
    c.observe(node_id(4), 9, ServerState::Candidate, None);
    assert_eq!(c.violations().len(), 1, "{:?}", c.violations());

    // And a clean history is clean.
    let mut c = Checker::new();
    c.observe(node_id(0), 1, ServerState::Leader, None);
    c.acked(acked.log_id, &appoint("a", 0), &appointed("a", 1));
    for n in 0..3 {
        c.applied(node_id(n), &acked, &appointed("a", 1));
    }
    c.check_all_applied(&[node_id(0), node_id(1), node_id(2)]);
    assert!(c.violations().is_empty(), "{:?}", c.violations());
}
