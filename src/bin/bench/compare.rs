//! What a SWIM run is, for both implementations (`membership` on cohort,
//! `memberlist-peer` on hashicorp/memberlist): its arguments, the seeded
//! kill plan, what is measured and how it is printed; and `compare`, which
//! runs the two one after the other with the same nodes, seed, loss,
//! delay and windows and prints both with the ratios cohort/memberlist.
//!
//! A run: start N processes in waves (the next wave once each process of
//! this one has joined), time full membership from the last start, settle,
//! then an idle window (traffic, CPU, peak RSS, false positives), then the
//! seeded kills, one at a time, each timed until every live node declared
//! the victim dead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use crate::common::{self, fmt_num, percentile, spread, summary, NetArgs, Seeded, Traffic};

#[derive(clap::Args, Clone, Debug)]
pub struct SwimArgs {
    /// Processes started (nodes of the cluster).
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Nodes SIGKILLed one after another, chosen by --seed; 0 for an idle
    /// measurement only.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// Wait after convergence, before the idle window, so that the join
    /// updates' retransmissions are over.
    #[arg(long, default_value_t = 30)]
    pub settle_seconds: u64,
    /// Idle window: traffic, CPU, peak RSS and false positives (600 for
    /// the 10 minutes).
    #[arg(long, default_value_t = 20)]
    pub idle_seconds: u64,
    /// Seed of the kill plan (which nodes, in what order, after what
    /// pauses) [default: random; printed either way].
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub net: NetArgs,
    /// Processes started at once; the next wave starts when every process
    /// of this one has joined (sees another member).
    #[arg(long, default_value_t = 50)]
    pub wave: usize,
    /// RSS is sampled this often during the idle window (peak per node).
    #[arg(long, default_value_t = 10)]
    pub sample_seconds: u64,
    /// Give up on a victim's full detection after this long.
    #[arg(long, default_value_t = 120)]
    pub detection_timeout_seconds: u64,
    /// Write SVG charts (the detection CDF) into this directory.
    #[arg(long)]
    pub chart_dir: Option<PathBuf>,
    /// Gossip in the clear on both sides: memberlist's LAN defaults
    /// exactly, cohort with `gossip.allow_plaintext`. Without it both
    /// encrypt with AES-256-GCM under one 32-byte key (memberlist's
    /// `SecretKey`, cohort's key file): like for like, as cohort runs in
    /// production.
    #[arg(long)]
    pub plaintext: bool,
}

impl SwimArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nodes < 3 || self.kills + 1 >= self.nodes {
            bail!("need at least 3 nodes and fewer kills than nodes - 1");
        }
        if self.wave == 0 {
            bail!("--wave must be at least 1");
        }
        Ok(())
    }

    /// The seed given, or a fresh one (printed with the results).
    pub fn resolve_seed(&self) -> u64 {
        self.seed.unwrap_or_else(rand::random)
    }

    /// The nodes (indices) of each wave after the first node, which starts
    /// alone as everyone's join seed.
    pub fn waves(&self) -> Vec<std::ops::Range<usize>> {
        (1..self.nodes)
            .step_by(self.wave)
            .map(|start| start..(start + self.wave).min(self.nodes))
            .collect()
    }

    /// Open files the bench holds per node (an event stream or three pipes
    /// and a log) plus slack, for [`common::ensure_open_files`].
    pub fn open_files_needed(&self) -> u64 {
        4 * self.nodes as u64 + 256
    }
}

/// Which nodes die, in what order, after what pause: the same for the same
/// seed and node count, whatever the implementation. Node 0 (`n1`, the
/// join seed) is never killed.
pub struct KillPlan {
    pub steps: Vec<(usize, Duration)>,
}

impl KillPlan {
    pub fn new(seed: u64, nodes: usize, kills: usize) -> KillPlan {
        let mut rng = Seeded::new(seed);
        let mut candidates: Vec<usize> = (1..nodes).collect();
        rng.shuffle(&mut candidates);
        // A pause of 0-2 s (two protocol periods) before each kill puts it
        // at a random phase of the victim's and its probers' rounds.
        let steps = candidates
            .into_iter()
            .take(kills)
            .map(|victim| (victim, Duration::from_millis(rng.below(2000))))
            .collect();
        KillPlan { steps }
    }
}

/// Live nodes taken for failed, counted the same way for both
/// implementations where they can be (see the fields).
#[derive(Clone, Copy, Debug, Default)]
pub struct FalsePositives {
    /// (observer, live node) dead declarations: cohort's `-> dead` events,
    /// memberlist's NotifyLeave.
    pub dead_declarations: usize,
    /// Live nodes declared dead by at least one observer.
    pub nodes_declared_dead: usize,
    /// A live node refuting a suspicion or dead claim about itself: cohort's
    /// `cohort_gossip_refutations_total`, memberlist's "Refuting a suspect
    /// message" and "Refuting a dead message" log lines. Comparable.
    pub refutations: u64,
    /// Suspicions of live nodes, not comparable between the two: cohort,
    /// every observer's `-> suspect` event; memberlist, the prober's
    /// "Suspect X has failed" log line (one per suspicion it starts).
    pub suspicions: usize,
}

impl FalsePositives {
    pub fn to_json(self) -> Value {
        json!({
            "dead_declarations": self.dead_declarations,
            "nodes_declared_dead": self.nodes_declared_dead,
            "refutations": self.refutations,
            "suspicions": self.suspicions,
        })
    }
}

/// One victim's detection.
#[derive(Clone, Debug, Default)]
pub struct KillResult {
    pub victim: String,
    pub pause_ms: u64,
    /// The first suspicion or dead declaration anywhere.
    pub first_detection_s: Option<f64>,
    pub first_dead_s: Option<f64>,
    /// The last live node's dead declaration (None when not all did).
    pub full_s: Option<f64>,
    pub declared_dead_by: usize,
    pub live: usize,
    /// Each observer's dead declaration, from the kill.
    pub per_observer_s: Vec<f64>,
}

/// The idle window's figures.
#[derive(Default)]
pub struct Idle {
    pub window_s: f64,
    pub traffic: Traffic,
    pub cpu_percent: Vec<f64>,
    pub rss_peak_mib: Vec<f64>,
    pub rss_samples: usize,
    pub false_positives: FalsePositives,
    pub cores: Value,
}

/// Everything one run measured.
pub struct SwimOutcome {
    /// `membership` or `memberlist-peer`.
    pub scenario: &'static str,
    /// `cohort` or `memberlist`, for tables and charts.
    pub label: &'static str,
    pub implementation: String,
    pub nodes: usize,
    pub seed: u64,
    pub network: Value,
    /// Gossip sealed with AES-256-GCM (not `--plaintext`).
    pub encrypted: bool,
    pub waves: usize,
    pub convergence_s: f64,
    pub idle: Idle,
    pub kills: Vec<KillResult>,
    /// From the event streams' start (after convergence) to the end,
    /// victims excluded.
    pub false_positives: FalsePositives,
    /// What only one implementation has (its settings, how it was measured).
    pub extra: serde_json::Map<String, Value>,
}

fn ms3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl SwimOutcome {
    fn kill_values(&self, f: impl Fn(&KillResult) -> Option<f64>) -> Vec<f64> {
        self.kills.iter().filter_map(f).collect()
    }

    pub fn first_detection(&self) -> Vec<f64> {
        self.kill_values(|k| k.first_detection_s)
    }

    pub fn first_dead(&self) -> Vec<f64> {
        self.kill_values(|k| k.first_dead_s)
    }

    pub fn full(&self) -> Vec<f64> {
        self.kill_values(|k| k.full_s)
    }

    pub fn to_json(&self) -> Value {
        let kills: Vec<Value> = self
            .kills
            .iter()
            .map(|k| {
                json!({
                    "victim": k.victim,
                    "pause_ms": k.pause_ms,
                    "first_detection_s": k.first_detection_s,
                    "first_dead_declaration_s": k.first_dead_s,
                    "full_detection_s": k.full_s,
                    "declared_dead_by": k.declared_dead_by,
                    "live": k.live,
                })
            })
            .collect();
        let per_observer: Vec<f64> = self
            .kills
            .iter()
            .flat_map(|k| k.per_observer_s.iter().copied().map(ms3))
            .collect();
        let mut idle = json!({
            "window_s": self.idle.window_s,
            "false_positives": self.idle.false_positives.to_json(),
            "agent_rss_peak_mib": summary(&self.idle.rss_peak_mib),
            "agent_cpu_percent": summary(&self.idle.cpu_percent),
            "rss_samples": self.idle.rss_samples,
            "cores": self.idle.cores,
        });
        if let Some(fields) = idle.as_object_mut() {
            self.idle.traffic.report(fields);
        }
        let mut report = json!({
            "scenario": self.scenario,
            "label": self.label,
            "implementation": self.implementation,
            "nodes": self.nodes,
            "seed": self.seed,
            "network": self.network,
            "encryption": if self.encrypted { "AES-256-GCM" } else { "none" },
            "waves": self.waves,
            "convergence_s": self.convergence_s,
            "first_detection_s": spread(&self.first_detection()),
            "first_dead_declaration_s": spread(&self.first_dead()),
            "full_detection_s": spread(&self.full()),
            "false_positives": self.false_positives.to_json(),
            "idle": idle,
            // The idle window's figures at the top too, where earlier
            // reports had them.
            "idle_window_s": self.idle.window_s,
            "agent_rss_mib": summary(&self.idle.rss_peak_mib),
            "agent_cpu_percent": summary(&self.idle.cpu_percent),
            "kills": kills,
            "samples": { "detection_per_observer_s": per_observer },
        });
        if let Some(fields) = report.as_object_mut() {
            self.idle.traffic.report(fields);
            for (key, value) in &self.extra {
                fields.insert(key.clone(), value.clone());
            }
        }
        report
    }
}

/// A figure of one run for the table: its text and its value (for ratios).
fn figures(o: &SwimOutcome) -> Vec<(&'static str, Option<f64>, String)> {
    let median = |v: &[f64]| percentile(v, 0.5);
    let both = |a: Option<f64>, b: Option<f64>| {
        format!(
            "{} / {}",
            a.map_or("-".into(), fmt_num),
            b.map_or("-".into(), fmt_num)
        )
    };
    let one = |v: Option<f64>| v.map_or("-".into(), fmt_num);
    let count = |v: f64| (Some(v), fmt_num(v));
    let t = &o.idle.traffic;
    let fp = &o.idle.false_positives;
    let all = &o.false_positives;
    let full = o.full();
    let rows: Vec<(&'static str, (Option<f64>, String))> = vec![
        ("nodes", count(o.nodes as f64)),
        (
            "encryption",
            (
                None,
                (if o.encrypted { "AES-256-GCM" } else { "none" }).to_string(),
            ),
        ),
        (
            "loss % / delay ms",
            (
                None,
                format!("{} / {}", o.network["loss_percent"], o.network["delay_ms"]),
            ),
        ),
        (
            "convergence s (from the last start)",
            (Some(o.convergence_s), fmt_num(o.convergence_s)),
        ),
        (
            "first detection s (median)",
            (
                median(&o.first_detection()),
                one(median(&o.first_detection())),
            ),
        ),
        (
            "first dead declaration s (median)",
            (median(&o.first_dead()), one(median(&o.first_dead()))),
        ),
        (
            "full detection s (median / p99)",
            (median(&full), both(median(&full), percentile(&full, 0.99))),
        ),
        (
            "idle: false dead declarations",
            count(fp.dead_declarations as f64),
        ),
        (
            "idle: live nodes declared dead",
            count(fp.nodes_declared_dead as f64),
        ),
        ("idle: refutations", count(fp.refutations as f64)),
        (
            "idle: suspicions (not comparable)",
            (None, fp.suspicions.to_string()),
        ),
        (
            "whole run: false dead declarations",
            count(all.dead_declarations as f64),
        ),
        ("whole run: refutations", count(all.refutations as f64)),
        (
            "bytes/s per node (median / mean)",
            (
                median(&t.bytes_per_s),
                both(median(&t.bytes_per_s), mean(&t.bytes_per_s)),
            ),
        ),
        (
            "packets/s per node (median)",
            (median(&t.packets_per_s), one(median(&t.packets_per_s))),
        ),
        (
            "peak RSS MiB (median / max)",
            (
                median(&o.idle.rss_peak_mib),
                both(
                    median(&o.idle.rss_peak_mib),
                    percentile(&o.idle.rss_peak_mib, 1.0),
                ),
            ),
        ),
        (
            "CPU % of a core (median / max)",
            (
                median(&o.idle.cpu_percent),
                both(
                    median(&o.idle.cpu_percent),
                    percentile(&o.idle.cpu_percent, 1.0),
                ),
            ),
        ),
    ];
    rows.into_iter()
        .map(|(name, (value, text))| (name, value, text))
        .collect()
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// cohort / peer; None when the peer's figure is 0 or missing.
fn ratio(cohort: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (cohort, peer) {
        (Some(c), Some(p)) if p != 0.0 => Some(c / p),
        _ => None,
    }
}

/// The short table of one run or of a side-by-side (with ratios), on
/// stderr.
pub fn print_outcomes(outcomes: &[&SwimOutcome]) {
    let columns: Vec<Vec<(&'static str, Option<f64>, String)>> =
        outcomes.iter().map(|o| figures(o)).collect();
    let mut header = vec!["".to_string()];
    header.extend(outcomes.iter().map(|o| o.label.to_string()));
    let pair = outcomes.len() == 2;
    if pair {
        header.push(format!("{}/{}", outcomes[0].label, outcomes[1].label));
    }
    let mut rows = vec![header];
    for (i, (name, _, _)) in columns[0].iter().enumerate() {
        let mut row = vec![name.to_string()];
        row.extend(columns.iter().map(|c| c[i].2.clone()));
        if pair {
            let r = ratio(columns[0][i].1, columns[1][i].1);
            row.push(r.map_or(String::new(), |r| format!("{r:.2}")));
        }
        rows.push(row);
    }
    let mut seeds: Vec<String> = outcomes.iter().map(|o| o.seed.to_string()).collect();
    seeds.dedup();
    common::print_table(&format!("seed {}", seeds.join(", ")), &rows);
}

/// The ratios cohort/memberlist the issue asks for (null where the
/// peer's figure is 0).
fn ratios(cohort: &SwimOutcome, peer: &SwimOutcome) -> Value {
    let median = |v: &[f64]| percentile(v, 0.5);
    let r = |c: Option<f64>, p: Option<f64>| json!(ratio(c, p));
    let count = |v: usize| Some(v as f64);
    json!({
        "convergence_s": r(Some(cohort.convergence_s), Some(peer.convergence_s)),
        "first_detection_s_median": r(median(&cohort.first_detection()), median(&peer.first_detection())),
        "first_dead_declaration_s_median": r(median(&cohort.first_dead()), median(&peer.first_dead())),
        "full_detection_s_median": r(median(&cohort.full()), median(&peer.full())),
        "full_detection_s_p99": r(percentile(&cohort.full(), 0.99), percentile(&peer.full(), 0.99)),
        "idle_false_dead_declarations": r(
            count(cohort.idle.false_positives.dead_declarations),
            count(peer.idle.false_positives.dead_declarations),
        ),
        "idle_refutations": r(
            Some(cohort.idle.false_positives.refutations as f64),
            Some(peer.idle.false_positives.refutations as f64),
        ),
        "per_node_bytes_per_s_median": r(median(&cohort.idle.traffic.bytes_per_s), median(&peer.idle.traffic.bytes_per_s)),
        "per_node_bytes_per_s_mean": r(mean(&cohort.idle.traffic.bytes_per_s), mean(&peer.idle.traffic.bytes_per_s)),
        "per_node_packets_per_s_median": r(median(&cohort.idle.traffic.packets_per_s), median(&peer.idle.traffic.packets_per_s)),
        "agent_rss_peak_mib_median": r(median(&cohort.idle.rss_peak_mib), median(&peer.idle.rss_peak_mib)),
        "agent_cpu_percent_median": r(median(&cohort.idle.cpu_percent), median(&peer.idle.cpu_percent)),
    })
}

/// Writes the charts `--chart-dir` asks for and says where.
pub fn write_charts(dir: Option<&Path>, reports: &[&Value]) -> anyhow::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    let path = crate::chart::detection_cdf(dir, reports)?;
    eprintln!("bench: chart {}", path.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub run: SwimArgs,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    pub cohort: Option<PathBuf>,
    /// The memberlist peer [default: target/peers/memberlist/memberlist,
    /// built by bench/peers/memberlist/build.sh].
    #[arg(long)]
    pub peer: Option<PathBuf>,
    /// Wait between the two runs, for the machine to calm down.
    #[arg(long, default_value_t = 10)]
    pub pause_seconds: u64,
}

/// `compare`: cohort, then memberlist, same conditions (memberlist's LAN
/// defaults: probe interval 1 s, probe timeout 500 ms; cohort the same
/// protocol period and ack timeout).
pub fn compare(args: CompareArgs, root: &Path) -> anyhow::Result<()> {
    args.run.check()?;
    let cohort_binary = common::cohort_binary(args.cohort.as_deref())?;
    let peer = crate::memberlist::peer_binary(args.peer.as_deref())?;
    let seed = args.run.resolve_seed();
    eprintln!("bench: compare, seed {seed}: cohort first, then memberlist");
    let gossip = crate::cohort::Gossip::memberlist_lan(args.run.plaintext);
    let cohort = common::in_scratch(&root.join("cohort"), false, || {
        crate::cohort::run(
            &args.run,
            seed,
            &gossip,
            &cohort_binary,
            &root.join("cohort"),
        )
    })?;
    // Kept whatever memberlist's part does: at 500 nodes it may not
    // start at all, and cohort's half hour of figures must not go with it.
    let c = cohort.to_json();
    print_outcomes(&[&cohort]);
    eprintln!("bench: cohort's report: {}", serde_json::to_string(&c)?);
    eprintln!(
        "bench: cohort done; {} s before memberlist",
        args.pause_seconds
    );
    std::thread::sleep(Duration::from_secs(args.pause_seconds));
    let memberlist = common::in_scratch(&root.join("memberlist"), false, || {
        crate::memberlist::run(&args.run, seed, &peer.0, &peer.1, &root.join("memberlist"))
    });
    let _ = std::fs::remove_dir_all(root);
    let mut report = json!({
        "scenario": "compare",
        "nodes": args.run.nodes,
        "seed": seed,
        "network": cohort.network,
        "settle_seconds": args.run.settle_seconds,
        "idle_seconds": args.run.idle_seconds,
        "kills": args.run.kills,
        "cohort": c,
    });
    let failed = match &memberlist {
        Ok(memberlist) => {
            let m = memberlist.to_json();
            write_charts(args.run.chart_dir.as_deref(), &[&c, &m])?;
            print_outcomes(&[&cohort, memberlist]);
            report["ratios_cohort_over_memberlist"] = ratios(&cohort, memberlist);
            report["memberlist"] = m;
            None
        }
        Err(e) => {
            write_charts(args.run.chart_dir.as_deref(), &[&c])?;
            report["memberlist"] = json!({ "error": format!("{e:#}") });
            Some(e)
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    match failed {
        Some(e) => bail!("memberlist's part failed (cohort's figures are above): {e:#}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn a_seed_gives_one_kill_plan_whatever_runs_it() {
        let a = KillPlan::new(42, 500, 5).steps;
        let b = KillPlan::new(42, 500, 5).steps;
        assert_eq!(a, b);
        assert_ne!(a, KillPlan::new(43, 500, 5).steps);
        let victims: BTreeSet<usize> = a.iter().map(|s| s.0).collect();
        assert_eq!(victims.len(), 5, "distinct victims: {a:?}");
        // n1, every node's join seed, is never killed.
        assert!(a
            .iter()
            .all(|&(v, pause)| (1..500).contains(&v) && pause < Duration::from_secs(2)));
    }

    #[test]
    fn victims_are_distinct_and_never_the_join_seed() {
        for seed in 0..200 {
            let victims: Vec<usize> = KillPlan::new(seed, 10, 8)
                .steps
                .iter()
                .map(|s| s.0)
                .collect();
            let distinct: BTreeSet<usize> = victims.iter().copied().collect();
            assert_eq!(distinct.len(), 8, "seed {seed}: {victims:?}");
            assert!(
                !distinct.contains(&0) && distinct.iter().all(|&v| v < 10),
                "seed {seed}: {victims:?}"
            );
        }
    }

    #[test]
    fn waves_cover_every_node_after_the_first_once() {
        let args = SwimArgs {
            nodes: 120,
            kills: 5,
            settle_seconds: 0,
            idle_seconds: 0,
            seed: None,
            net: NetArgs::default(),
            wave: 50,
            sample_seconds: 10,
            detection_timeout_seconds: 1,
            chart_dir: None,
            plaintext: false,
        };
        assert_eq!(args.waves(), vec![1..51, 51..101, 101..120]);
    }

    #[test]
    fn a_ratio_needs_a_peer_figure_above_zero() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(0.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
