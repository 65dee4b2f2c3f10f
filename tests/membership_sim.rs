//! Issue 4 acceptance (a)-(g), plus clock skew (h) and user events (i):
//! SWIM under the seeded simulator, over many seeds. A failing seed is printed with the command that replays it alone
//! (`SWIM_SEED=<seed> cargo test --test membership_sim <test>`).

mod support;

use std::time::Duration;

use cohort::membership::sim::{LinkSpec, Sim, SimConfig};
use cohort::membership::{ConfigStamp, MemberEvent, MemberStatus, Payload, RaftRole};
use std::collections::BTreeMap;

const PERIOD: Duration = Duration::from_secs(1);

fn periods(d: Duration) -> f64 {
    d.as_secs_f64() / PERIOD.as_secs_f64()
}

use support::seeds::Figures;

/// Every seed of this suite: `SWIM_SEED=N` replays one, `SWIM_SEEDS=N`
/// runs more.
fn over_seeds(test: &str, count: u64, scenario: impl Fn(u64) -> Result<Figures, String>) {
    support::seeds::over_seeds("membership_sim", "SWIM", test, count, scenario)
}

/// A deterministic pick in 0..n from the seed.
fn pick(seed: u64, salt: u64, n: usize) -> usize {
    let x = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(salt.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    ((x ^ (x >> 29)) % n as u64) as usize
}

fn config(seed: u64, loss: f64) -> SimConfig {
    let mut config = SimConfig::new(seed);
    config.link = LinkSpec {
        loss,
        ..LinkSpec::default()
    };
    config
}

/// `n` nodes, each but node 0 asked to join it, spread over one period.
fn joining_cluster(config: SimConfig, n: usize) -> Sim {
    let mut sim = Sim::new(config);
    for _ in 0..n {
        sim.add_node();
    }
    let stagger = PERIOD / u32::try_from(n).unwrap_or(1).max(1);
    for i in 1..n {
        sim.join(i, 0);
        sim.run_for(stagger);
    }
    sim
}

/// `n` nodes joining through node 0 within the first period; returns the
/// simulation once all see all alive, or an error after `limit` periods.
fn converged_cluster(config: SimConfig, n: usize, limit: u64) -> Result<(Sim, f64), String> {
    let mut sim = joining_cluster(config, n);
    let took = sim
        .run_until_true(PERIOD * u32::try_from(limit).unwrap_or(u32::MAX), |s| {
            s.all_running_see_each_other_alive()
        })
        .ok_or_else(|| format!("{n} nodes not all alive everywhere after {limit} periods"))?;
    Ok((sim, periods(took)))
}

// (a) ---------------------------------------------------------------------

#[test]
fn a_nodes_joining_through_one_seed_all_see_all_alive() {
    over_seeds(
        "a_nodes_joining_through_one_seed_all_see_all_alive",
        50,
        // Well before the first push-pull (30 s): gossip alone must do it.
        |seed| {
            converged_cluster(config(seed, 0.0), 50, 10)
                .map(|(_, took)| vec![("periods to all-alive", took)])
        },
    );
}

#[test]
fn a_thousand_nodes_joining_through_one_seed_all_see_all_alive() {
    over_seeds(
        "a_thousand_nodes_joining_through_one_seed_all_see_all_alive",
        2,
        |seed| {
            converged_cluster(config(seed, 0.0), 1000, 60)
                .map(|(_, took)| vec![("periods to all-alive", took)])
        },
    );
}

/// The same with AES-256-GCM on every packet (the sim's default is
/// plaintext, for speed).
#[test]
fn a_encrypted_cluster_converges() {
    over_seeds("a_encrypted_cluster_converges", 10, |seed| {
        let mut config = config(seed, 0.05);
        config.encrypted = true;
        let (sim, took) = converged_cluster(config, 20, 60)?;
        let dropped: u64 = sim
            .running()
            .filter_map(|i| sim.swim(i))
            .map(|s| s.stats().dropped.total())
            .sum();
        if dropped > 0 {
            return Err(format!("{dropped} packets dropped by receivers"));
        }
        Ok(vec![("periods to all-alive", took)])
    });
}

/// A seed replays exactly: same figures, same traffic.
#[test]
fn a_same_seed_replays_identically() {
    let run = || {
        let (sim, took) = converged_cluster(config(7, 0.1), 40, 60).map_err(|e| e.to_string())?;
        Ok::<_, String>((took, sim.stats()))
    };
    assert_eq!(run(), run());
}

// (b) ---------------------------------------------------------------------

fn crashed_node_declared_dead(seed: u64, config: SimConfig) -> Result<Figures, String> {
    let n = 32;
    let (mut sim, _) = converged_cluster(config, n, 60)?;
    let victim = 1 + pick(seed, 1, n - 1);
    let victim_id = sim.id(victim).ok_or("no victim")?;
    let crashed_at = sim.elapsed();
    sim.crash(victim);
    let took = sim
        .run_until_true(PERIOD * 120, |s| {
            s.running()
                .all(|i| s.status(i, victim) == Some(MemberStatus::Dead))
        })
        .ok_or("after 120 periods some live node still does not see the crashed one dead")?;
    let first = sim
        .dead_declarations()
        .iter()
        .filter(|d| d.subject == victim_id)
        .map(|d| d.at - crashed_at)
        .min()
        .ok_or("no declaration recorded")?;
    let wrong: Vec<_> = sim
        .dead_declarations()
        .iter()
        .filter(|d| d.subject != victim_id)
        .collect();
    if !wrong.is_empty() {
        return Err(format!("live nodes declared dead: {wrong:?}"));
    }
    Ok(vec![
        ("first declaration (periods)", periods(first)),
        ("dead everywhere (periods)", periods(took)),
    ])
}

#[test]
fn b_crashed_node_declared_dead_everywhere_without_loss() {
    over_seeds(
        "b_crashed_node_declared_dead_everywhere_without_loss",
        50,
        |seed| crashed_node_declared_dead(seed, config(seed, 0.0)),
    );
}

#[test]
fn b_crashed_node_declared_dead_everywhere_at_10_percent_loss() {
    over_seeds(
        "b_crashed_node_declared_dead_everywhere_at_10_percent_loss",
        50,
        |seed| crashed_node_declared_dead(seed, config(seed, 0.1)),
    );
}

// (c) ---------------------------------------------------------------------

#[test]
fn c_no_false_positive_at_10_percent_loss_over_300_periods() {
    over_seeds(
        "c_no_false_positive_at_10_percent_loss_over_300_periods",
        50,
        |seed| {
            let (mut sim, _) = converged_cluster(config(seed, 0.1), 16, 60)?;
            sim.record_events(true);
            sim.run_for(PERIOD * 300);
            if let Some(d) = sim.dead_declarations().first() {
                return Err(format!(
                    "{} live declarations of death, first: {d:?}",
                    sim.dead_declarations().len()
                ));
            }
            let suspicions = sim
                .events()
                .iter()
                .filter(|(_, _, e)| {
                    matches!(
                        e,
                        MemberEvent::StatusChanged {
                            to: MemberStatus::Suspect,
                            ..
                        }
                    )
                })
                .count();
            let refutations: u64 = sim
                .running()
                .filter_map(|i| sim.swim(i))
                .map(|s| s.stats().refutations)
                .sum();
            Ok(vec![
                ("suspect events seen", suspicions as f64),
                ("refutations", refutations as f64),
            ])
        },
    );
}

// (d) ---------------------------------------------------------------------

#[test]
fn d_partition_into_halves_heals_and_converges() {
    over_seeds("d_partition_into_halves_heals_and_converges", 50, |seed| {
        let n = 24;
        let (mut sim, _) = converged_cluster(config(seed, 0.0), n, 60)?;
        for i in n / 2..n {
            sim.set_group(i, 1);
        }
        // Odd seeds: only one direction is cut (asymmetric partition).
        if seed % 2 == 0 {
            sim.partition(0, 1);
        } else {
            sim.block(0, 1);
        }
        sim.run_for(PERIOD * 40);
        let split = (0..n / 2).all(|i| sim.status(i, n - 1) == Some(MemberStatus::Dead))
            && (n / 2..n).all(|i| sim.status(i, 0) == Some(MemberStatus::Dead));
        if !split {
            return Err("the halves did not declare each other dead while cut".into());
        }
        sim.heal();
        let took = sim
            .run_until_true(PERIOD * 60, Sim::all_running_see_each_other_alive)
            .ok_or("not converged 60 periods after the heal")?;
        Ok(vec![("periods to all-alive after heal", periods(took))])
    });
}

// (e) ---------------------------------------------------------------------

#[test]
fn e_restart_with_new_generation_is_alive_and_old_packets_ignored() {
    over_seeds(
        "e_restart_with_new_generation_is_alive_and_old_packets_ignored",
        50,
        |seed| {
            let n = 16;
            let (mut sim, _) = converged_cluster(config(seed, 0.0), n, 60)?;
            let victim = 1 + pick(seed, 2, n - 1);
            let victim_id = sim.id(victim).ok_or("no victim")?;
            sim.capture(victim, true);
            sim.run_for(PERIOD * 2);
            let (old_dst, old_packet) = sim.captured(victim).cloned().ok_or("nothing captured")?;
            sim.crash(victim);
            // Half the seeds restart before anyone declares it dead.
            let down = if seed % 2 == 0 { 30 } else { 1 };
            sim.run_for(PERIOD * down);
            let old_generation = sim.generation(victim).ok_or("no generation")?;
            // Every third seed comes back at a new address.
            let moved = seed % 3 == 0;
            sim.record_events(true);
            sim.restart(victim, 0, moved);
            let new_generation = sim.generation(victim).ok_or("no generation")?;
            if new_generation <= old_generation {
                return Err("generation did not grow".into());
            }
            let took = sim
                .run_until_true(PERIOD * 60, |s| {
                    s.all_running_see_each_other_alive()
                        && s.running().filter(|&i| i != victim).all(|i| {
                            s.swim(i)
                                .and_then(|w| w.member(victim_id))
                                .is_some_and(|m| m.incarnation.generation == new_generation)
                        })
                })
                .ok_or("restarted node not alive with its new generation everywhere")?;
            if moved {
                let moved_everywhere = sim.running().filter(|&i| i != victim).all(|i| {
                    sim.events().iter().any(|(_, o, e)| {
                        *o == i && matches!(e, MemberEvent::AddressChanged { id, .. } if *id == victim_id)
                    })
                });
                if !moved_everywhere {
                    return Err("some node saw no address change".into());
                }
            }
            // Replay a packet of the old life to the node it was sent to.
            let receiver = (0..n)
                .find(|&i| i != victim && sim.swim(i).is_some_and(|s| s.local().addr == old_dst))
                .unwrap_or(0);
            let before = sim.swim(receiver).map(|s| s.stats().dropped.old_generation);
            sim.inject(victim, receiver, old_packet);
            sim.run_for(PERIOD / 10);
            let after = sim.swim(receiver).map(|s| s.stats().dropped.old_generation);
            if after != before.map(|b| b + 1) {
                return Err(format!(
                    "old-generation packet not counted: {before:?} -> {after:?}"
                ));
            }
            if sim.status(receiver, victim) != Some(MemberStatus::Alive) {
                return Err("the old packet changed the restarted node's status".into());
            }
            Ok(vec![(
                "periods to alive with new generation",
                periods(took),
            )])
        },
    );
}

// (f) ---------------------------------------------------------------------

fn stalled_node_run(seed: u64, lifeguard: bool) -> Result<(usize, u32, usize), String> {
    let n = 16;
    let mut config = config(seed, 0.0);
    if !lifeguard {
        config.swim.max_local_health = 0;
    }
    let (mut sim, _) = converged_cluster(config, n, 60)?;
    let slow = pick(seed, 3, n);
    let slow_id = sim.id(slow).ok_or("no slow node")?;
    // Every input reaches it 1.5 s late: its acks come back after the
    // probe period is over, so its direct and indirect probes all fail.
    sim.set_input_delay(slow, Duration::from_millis(1500));
    sim.record_events(true);
    let mut max_health = 0;
    for _ in 0..120 {
        sim.run_for(PERIOD);
        max_health = max_health.max(sim.swim(slow).map_or(0, |s| s.health_score()));
    }
    let healthy_declared_dead = sim
        .dead_declarations()
        .iter()
        .filter(|d| d.subject != slow_id)
        .count();
    let suspicions_by_slow = sim
        .events()
        .iter()
        .filter(|(_, o, e)| {
            *o == slow
                && matches!(
                    e,
                    MemberEvent::StatusChanged {
                        to: MemberStatus::Suspect,
                        ..
                    }
                )
        })
        .count();
    Ok((healthy_declared_dead, max_health, suspicions_by_slow))
}

#[test]
fn f_stalled_node_does_not_get_healthy_peers_declared_dead() {
    over_seeds(
        "f_stalled_node_does_not_get_healthy_peers_declared_dead",
        50,
        |seed| {
            let (dead, max_health, suspicions) = stalled_node_run(seed, true)?;
            if dead > 0 {
                return Err(format!("{dead} declarations of death of healthy nodes"));
            }
            if max_health == 0 {
                return Err("the slow node never raised its health multiplier".into());
            }
            Ok(vec![
                ("slow node's max health score", f64::from(max_health)),
                ("suspect events at the slow node", suspicions as f64),
            ])
        },
    );
}

/// Not an assertion: what the same runs look like with Lifeguard's local
/// health off, for the report.
#[test]
fn f_stalled_node_without_local_health_for_comparison() {
    over_seeds(
        "f_stalled_node_without_local_health_for_comparison",
        10,
        |seed| {
            let (dead, _, suspicions) = stalled_node_run(seed, false)?;
            Ok(vec![
                ("healthy nodes declared dead", dead as f64),
                ("suspect events at the slow node", suspicions as f64),
            ])
        },
    );
}

// (g) ---------------------------------------------------------------------

#[test]
fn g_churn_leaves_only_current_members_and_young_records() {
    over_seeds(
        "g_churn_leaves_only_current_members_and_young_records",
        50,
        |seed| {
            let reclaim = Duration::from_secs(20);
            let mut config = config(seed, 0.0);
            config.swim.reclaim_after = Some(reclaim);
            let stable = 10;
            let (mut sim, _) = converged_cluster(config, stable, 60)?;
            // 1,000 short-lived nodes, one joining every period; each leaves
            // gracefully after 4 periods and its process stops 2 periods later.
            // (Four a period overloads piggybacking, see the module notes.)
            let cycles = 1000;
            let per_period = 1;
            let mut churned = Vec::new();
            let ticks = cycles / per_period + 6;
            for tick in 0..ticks {
                if tick < cycles / per_period {
                    for _ in 0..per_period {
                        let node = sim.add_node();
                        sim.join(node, 0);
                        churned.push(node);
                    }
                }
                if tick >= 4 && tick - 4 < cycles / per_period {
                    for &node in &churned[(tick - 4) * per_period..(tick - 3) * per_period] {
                        sim.leave(node);
                    }
                }
                if tick >= 6 && tick - 6 < cycles / per_period {
                    for &node in &churned[(tick - 6) * per_period..(tick - 5) * per_period] {
                        sim.crash(node);
                    }
                }
                sim.run_for(PERIOD);
            }
            // The last leave needs a few periods to reach everyone.
            sim.run_for(PERIOD * 10);
            let running: Vec<_> = sim.running().collect();
            if running.len() != stable {
                return Err(format!(
                    "{} nodes running, expected {stable}",
                    running.len()
                ));
            }
            let now = sim.now();
            let mut worst_table = 0;
            for &i in &running {
                let swim = sim.swim(i).ok_or("not running")?;
                for m in swim.members() {
                    let current = running.iter().any(|&r| sim.id(r) == Some(m.id));
                    let young = now - m.status_since <= reclaim;
                    if m.status.is_active() && !current {
                        let index = (0..sim.len()).find(|&x| sim.id(x) == Some(m.id));
                        let position = index.and_then(|x| churned.iter().position(|&c| c == x));
                        return Err(format!(
                        "node {i} holds departed member {index:?} (churn #{position:?} of {}) as {} at {}, since {:?} ago",
                        churned.len(),
                        m.status,
                        m.incarnation,
                        now - m.status_since
                    ));
                    }
                    if !m.status.is_active() && !young {
                        return Err(format!(
                            "node {i} holds a {} record older than reclaim",
                            m.status
                        ));
                    }
                }
                worst_table = worst_table.max(swim.table_len());
            }
            let leavers_declared_dead = sim
                .dead_declarations()
                .iter()
                .filter(|d| !running.iter().any(|&r| sim.id(r) == Some(d.subject)))
                .count();
            if leavers_declared_dead > 0 {
                return Err(format!(
                    "{leavers_declared_dead} declarations of death of nodes that left gracefully"
                ));
            }
            Ok(vec![
                ("largest member table", worst_table as f64),
                (
                    "forgotten ids remembered (node 0)",
                    sim.swim(0).map_or(0, |s| s.forgotten_len()) as f64,
                ),
            ])
        },
    );
}

// (h) ---------------------------------------------------------------------

#[test]
fn h_clocks_ten_percent_apart_detect_the_dead_and_only_the_dead() {
    // Every node's clock runs at its own rate in 0.9..1.1 (timers, ack
    // timeouts and suspicions all measured on it), at 10 % loss.
    over_seeds(
        "h_clocks_ten_percent_apart_detect_the_dead_and_only_the_dead",
        50,
        |seed| {
            let mut skewed = config(seed, 0.1);
            skewed.clock_skew = 0.1;
            crashed_node_declared_dead(seed, skewed)
        },
    );
}

// (i) ---------------------------------------------------------------------

/// 40 nodes at 10 % loss; 12 events sent from random nodes while one node
/// crashes; a node that joins afterwards must not replay them.
fn user_events_delivered_once(seed: u64) -> Result<Figures, String> {
    let n = 40;
    let (mut sim, _) = converged_cluster(config(seed, 0.1), n, 60)?;
    let crashed = 1 + pick(seed, 7, n - 1);
    let mut sent = Vec::new();
    let mut sent_at = BTreeMap::new();
    for k in 0..12u64 {
        let mut from = pick(seed, 100 + k, n);
        if from == crashed {
            from = 0;
        }
        if k == 6 {
            sim.crash(crashed);
        }
        let id = sim
            .send_user_event(from, "deploy", format!("release-{k}").as_bytes())
            .map_err(|e| format!("send refused: {e}"))?;
        sent_at.insert(id, sim.elapsed());
        sent.push(id);
        sim.run_for(PERIOD / 2);
    }
    let everyone_has_all = |s: &Sim| {
        let mut got: BTreeMap<usize, usize> = BTreeMap::new();
        for (_, node, _) in s.deliveries() {
            *got.entry(*node).or_default() += 1;
        }
        s.running().all(|i| got.get(&i) == Some(&sent.len()))
    };
    let took = sim
        .run_until_true(PERIOD * 60, everyone_has_all)
        .ok_or("after 60 periods some live node still misses an event")?;
    // Let retransmissions and push-pulls run out: copies keep arriving but
    // must never be delivered twice.
    sim.run_for(PERIOD * 60);
    let mut count: BTreeMap<(usize, _), u32> = BTreeMap::new();
    let mut latest = 0.0f64;
    for (at, node, id) in sim.deliveries() {
        *count.entry((*node, *id)).or_default() += 1;
        latest = latest.max(periods(*at - sent_at[id]));
    }
    if let Some(((node, id), times)) = count.iter().find(|(_, times)| **times > 1) {
        return Err(format!("node {node} delivered {id:?} {times} times"));
    }
    for i in sim.running() {
        let got = sent
            .iter()
            .filter(|id| count.contains_key(&(i, **id)))
            .count();
        if got != sent.len() {
            return Err(format!("node {i} delivered {got} of {} events", sent.len()));
        }
    }
    // A newcomer learns the recent events in its join but does not
    // deliver what happened before it existed.
    let before = sim.deliveries().len();
    let newcomer = sim.add_node();
    sim.join(newcomer, 0);
    sim.run_until_true(PERIOD * 40, |s| s.all_running_see_each_other_alive())
        .ok_or("the newcomer did not join within 40 periods")?;
    sim.run_for(PERIOD * 10);
    if let Some(late) = sim.deliveries()[before..].iter().find(|d| d.1 == newcomer) {
        return Err(format!("the newcomer delivered an old event: {late:?}"));
    }
    let duplicates: u64 = sim
        .running()
        .filter_map(|i| sim.swim(i))
        .map(|s| s.stats().user_events_duplicate)
        .sum();
    Ok(vec![
        (
            "all delivered everywhere (periods after the last send)",
            periods(took),
        ),
        ("slowest delivery (periods after its send)", latest),
        ("duplicate copies dropped, cluster total", duplicates as f64),
    ])
}

#[test]
fn i_user_events_are_delivered_exactly_once_everywhere_at_10_percent_loss() {
    over_seeds(
        "i_user_events_are_delivered_exactly_once_everywhere_at_10_percent_loss",
        50,
        user_events_delivered_once,
    );
}

// (j) ---------------------------------------------------------------------

/// A node's push-pull timer is armed when it knows only itself (30 s);
/// once it has joined 100 nodes, its first periodic exchange follows the
/// interval for 100 (90 s ± 25 %, counted from the join), so that nodes
/// started together do not all exchange full state in one window.
#[test]
fn j_first_periodic_push_pulls_follow_the_joined_clusters_interval() {
    over_seeds(
        "j_first_periodic_push_pulls_follow_the_joined_clusters_interval",
        5,
        |seed| {
            let (mut sim, took) = converged_cluster(config(seed, 0.0), 100, 30)?;
            let streams = |sim: &Sim| -> Vec<u64> {
                (1..sim.len())
                    .map(|i| sim.swim(i).map_or(0, |s| s.stats().streams_sent))
                    .collect()
            };
            sim.run_for(Duration::from_secs(60) - Duration::from_secs_f64(took));
            let early = streams(&sim);
            if let Some((i, n)) = early.iter().enumerate().find(|(_, &n)| n != 1) {
                return Err(format!(
                    "node {} sent {n} streams in its first minute: only its join was due",
                    i + 1
                ));
            }
            sim.run_for(Duration::from_secs(120));
            let later = streams(&sim);
            if let Some((i, n)) = later.iter().enumerate().find(|(_, &n)| n < 2) {
                return Err(format!(
                    "node {} sent {n} streams in three minutes: its periodic exchange never came",
                    i + 1
                ));
            }
            Ok(vec![("periods to all-alive", took)])
        },
    );
}

// (bench) -----------------------------------------------------------------

/// Not a test: the traffic of a start, for docs/benchmarks.md. N nodes
/// (`SWIM_BURST_NODES`, default 500) join through node 0 within one
/// period; prints one JSON line: messages delivered per second (datagrams
/// and streams) and KiB/s of the whole cluster in 5-second windows over
/// the first minute, and when every node first saw every other alive.
/// `cargo test --release --test membership_sim -- --ignored --nocapture start_burst`
#[test]
#[ignore = "a measurement: prints the start burst as JSON"]
fn start_burst() {
    let n: usize = std::env::var("SWIM_BURST_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let mut sim = joining_cluster(config(1, 0.0), n);
    let window = Duration::from_secs(5);
    let step = Duration::from_millis(500);
    let mut before = sim.stats();
    let mut converged = None;
    let (mut delivered, mut kib) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        for _ in 0..window.as_millis() / step.as_millis() {
            sim.run_for(step);
            if converged.is_none() && sim.all_running_see_each_other_alive() {
                converged = Some(sim.elapsed().as_secs_f64());
            }
        }
        let now = sim.stats();
        delivered.push((now.delivered - before.delivered) / window.as_secs());
        kib.push((now.bytes - before.bytes) / window.as_secs() / 1024);
        before = now;
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "swim start burst (simulator, no loss)",
            "nodes": n,
            "window_s": window.as_secs(),
            "delivered_per_s": delivered,
            "kib_per_s": kib,
            "all_alive_everywhere_s": converged,
        })
    );
}

// (k) ---------------------------------------------------------------------

/// What the wave of payload updates after an apply costs and leaves.
struct PayloadWave {
    /// Until every node's queue of updates to send was empty.
    drained_s: f64,
    /// (observer, subject) views still on the old payload at that moment.
    stale_at_drain: usize,
    /// Until every view held every node's new payload.
    current_s: Option<f64>,
    /// Datagrams and bytes the whole cluster sent until drained.
    datagrams: u64,
    bytes: u64,
}

fn agent_like_payload(i: usize, version: u64) -> Payload {
    Payload {
        name: format!("node-{i:03}"),
        rpc_addr: Some(std::net::SocketAddr::from((
            [127, 0, 1, (i % 250) as u8],
            7947,
        ))),
        replica_set: Some(format!("set-{:03}", i / 3)),
        roles: vec!["storage".to_string()],
        config: (version > 0).then_some(ConfigStamp {
            version,
            hash: [version as u8; 32],
        }),
        raft_role: RaftRole::Off,
        tags: BTreeMap::new(),
    }
}

/// (observer, subject) views in `sim` of a payload older than `version`.
fn stale_views(sim: &Sim, version: u64) -> usize {
    let ids: Vec<_> = sim.running().filter_map(|i| sim.id(i)).collect();
    sim.running()
        .filter_map(|o| sim.swim(o))
        .map(|swim| {
            ids.iter()
                .filter(|&&id| id != swim.local().id)
                .filter(|&&id| {
                    swim.member(id)
                        .and_then(|m| m.payload.config)
                        .is_none_or(|c| c.version < version)
                })
                .count()
        })
        .sum()
}

fn all_drained(sim: &Sim) -> bool {
    sim.running()
        .filter_map(|i| sim.swim(i))
        .all(|s| s.pending_broadcasts() == 0)
}

/// `n` nodes converge with agent-like payloads; then every node publishes
/// a new config stamp at once, as each does when an apply commits.
fn payload_wave(config: SimConfig, n: usize, limit: Duration) -> Result<PayloadWave, String> {
    let mut sim = joining_cluster(config, n);
    for i in 0..n {
        sim.set_payload(i, agent_like_payload(i, 0))
            .map_err(|e| e.to_string())?;
    }
    sim.run_until_true(PERIOD * 120, |s| {
        s.all_running_see_each_other_alive() && all_drained(s)
    })
    .ok_or_else(|| format!("{n} nodes did not converge and drain in 120 periods"))?;
    let before = sim.stats();
    for i in 0..n {
        sim.set_payload(i, agent_like_payload(i, 1))
            .map_err(|e| e.to_string())?;
    }
    let start = sim.elapsed();
    let step = Duration::from_millis(100);
    let mut drained = None;
    let mut current = None;
    while sim.elapsed() - start < limit && (drained.is_none() || current.is_none()) {
        sim.run_for(step);
        let at = (sim.elapsed() - start).as_secs_f64();
        if drained.is_none() && all_drained(&sim) {
            let stats = sim.stats();
            drained = Some((
                at,
                stale_views(&sim, 1),
                stats.delivered + stats.lost + stats.blocked + stats.unroutable
                    - (before.delivered + before.lost + before.blocked + before.unroutable),
                stats.bytes - before.bytes,
            ));
        }
        if current.is_none() && stale_views(&sim, 1) == 0 {
            current = Some(at);
        }
    }
    let (drained_s, stale_at_drain, datagrams, bytes) =
        drained.ok_or_else(|| format!("update queues not drained in {limit:?}"))?;
    Ok(PayloadWave {
        drained_s,
        stale_at_drain,
        current_s: current,
        datagrams,
        bytes,
    })
}

/// After an apply every node publishes a new payload at once; with the
/// payload's smaller λ, every view still ends up current, a miss being
/// repaired by a push-pull at the latest (90 s ± 25 % at 100 nodes).
#[test]
fn k_every_nodes_new_payload_reaches_every_view_at_5_percent_loss() {
    over_seeds(
        "k_every_nodes_new_payload_reaches_every_view_at_5_percent_loss",
        5,
        |seed| {
            let wave = payload_wave(config(seed, 0.05), 100, Duration::from_secs(240))?;
            let current = wave.current_s.ok_or_else(|| {
                format!(
                    "views still stale 240 s after the wave ({} at its drain)",
                    wave.stale_at_drain
                )
            })?;
            Ok(vec![
                ("s until drained", wave.drained_s),
                ("stale views at drain", wave.stale_at_drain as f64),
                ("s until all views current", current),
                ("datagrams per node", wave.datagrams as f64 / 100.0),
            ])
        },
    );
}

/// Not a test: the wave of payload updates after an apply, for
/// docs/benchmarks.md. `SWIM_WAVE_NODES` (default 500), `SWIM_WAVE_LOSS`
/// (default 0), `SWIM_WAVE_SEEDS` (default 3), `SWIM_WAVE_MULTIPLIER`
/// (default: the config's λ for payloads); prints one JSON line per seed.
/// `cargo test --release --test membership_sim -- --ignored --nocapture payload_wave_figures`
#[test]
#[ignore = "a measurement: prints the payload wave as JSON"]
fn payload_wave_figures() {
    let var = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = var("SWIM_WAVE_NODES", 500.0) as usize;
    let loss = var("SWIM_WAVE_LOSS", 0.0);
    let multiplier = var("SWIM_WAVE_MULTIPLIER", 0.0) as u32;
    for seed in 1..=var("SWIM_WAVE_SEEDS", 3.0) as u64 {
        let mut config = config(seed, loss);
        if multiplier > 0 {
            config.swim.payload_retransmit_multiplier = multiplier;
        }
        let lambda = config.swim.payload_retransmit_multiplier;
        let wave = payload_wave(config, n, Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        println!(
            "{}",
            serde_json::json!({
                "scenario": "every node publishes a new payload at once (simulator)",
                "seed": seed,
                "nodes": n,
                "loss": loss,
                "payload_retransmit_multiplier": lambda,
                "drained_s": wave.drained_s,
                "stale_views_at_drain": wave.stale_at_drain,
                "all_views_current_s": wave.current_s,
                "datagrams_per_node": wave.datagrams as f64 / n as f64,
                "bytes_per_node": wave.bytes as f64 / n as f64,
            })
        );
    }
}
