//! `memberlist-peer`: the SWIM run of `compare.rs` on hashicorp/memberlist,
//! so that cohort's figures are compared with a measured peer, not an
//! assumed one.
//!
//! Starts N processes of `bench/peers/memberlist/main.go` (one memberlist
//! node each, `DefaultLANConfig()` with only the name, bind address/port
//! and an event delegate changed; built by `bench/peers/memberlist/build.sh`
//! into `target/peers/memberlist/memberlist`), every one joining through
//! the first. Each prints a JSON line per membership event and answers
//! "stats" on stdin with memberlist's own go-metrics counters
//! (`memberlist.udp.sent` / `memberlist.tcp.sent`); convergence is when
//! every node counts N members.
//!
//! memberlist's delegates do not expose suspicion: `NotifyLeave` fires when
//! a node declares the victim dead. Suspicions and refutations come from
//! memberlist's log (stderr): "Suspect X has failed, no acks received"
//! (written by the prober that starts a suspicion; other nodes learn it by
//! gossip without a log line), "Refuting a suspect message" and "Refuting
//! a dead message" (written by the live node that refutes). So first
//! detection is the earlier of the first such suspicion and the first
//! NotifyLeave; full detection the last live node's NotifyLeave.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::common::{self, Counters, Sampler, Traffic};
use crate::compare::{self, FalsePositives, Idle, KillPlan, KillResult, SwimArgs, SwimOutcome};

#[derive(clap::Args)]
pub struct MemberlistArgs {
    #[command(flatten)]
    run: SwimArgs,
    /// The peer binary [default: target/peers/memberlist/memberlist, built
    /// by bench/peers/memberlist/build.sh].
    #[arg(long)]
    peer: Option<PathBuf>,
}

/// What a peer's output says, in arrival order.
enum Line {
    /// NotifyJoin / NotifyLeave / NotifyUpdate about `node`; `members` is
    /// the observer's count afterwards.
    Member {
        observer: usize,
        event: String,
        node: String,
        members: usize,
        at: Instant,
    },
    /// The answer to a "stats" request: the observer's counters, and its
    /// clock (Unix ms) when it read them.
    Stats {
        observer: usize,
        counters: Counters,
        t_ms: u64,
    },
    /// memberlist logged "Suspect `node` has failed, no acks received".
    SuspectLogged {
        observer: usize,
        node: String,
        at: Instant,
    },
    /// The observer refuted a suspect or dead message about itself.
    Refuted { observer: usize, at: Instant },
    /// The observer's standard output ended: it exited.
    Closed { observer: usize },
}

impl Line {
    fn at(&self) -> Option<Instant> {
        match self {
            Line::Member { at, .. } | Line::SuspectLogged { at, .. } | Line::Refuted { at, .. } => {
                Some(*at)
            }
            _ => None,
        }
    }
}

struct Peer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing stdin alone would stop it too; SIGKILL does not wait.
        common::stop(&mut self.child);
    }
}

fn start_peer(
    binary: &Path,
    root: &Path,
    index: usize,
    name: &str,
    // `-join SEED`, `-key KEY`, as the run needs them.
    flags: &[String],
    taken: &mut BTreeSet<u16>,
    out: &mpsc::Sender<Line>,
) -> anyhow::Result<(Peer, String)> {
    let bind = format!("127.0.0.1:{}", common::free_port(taken)?);
    let mut command = Command::new(binary);
    command.args(["-name", name, "-bind", &bind]);
    command.args(flags);
    let mut child = common::spawn(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .with_context(|| format!("cannot start {}", binary.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let log = fs::File::create(root.join(format!("{name}.log")))?;
    follow_stdout(index, stdout, out.clone());
    follow_stderr(index, stderr, log, out.clone());
    Ok((
        Peer {
            name: name.into(),
            stdin: child.stdin.take(),
            child,
        },
        bind,
    ))
}

/// A reader thread: two per peer, so small stacks.
fn reader(body: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(body);
}

fn follow_stdout(
    observer: usize,
    stdout: impl std::io::Read + Send + 'static,
    out: mpsc::Sender<Line>,
) {
    reader(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = Instant::now();
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let number = |key: &str| v[key].as_u64().unwrap_or(0);
            let parsed = match v["event"].as_str() {
                Some("stats") => Line::Stats {
                    observer,
                    counters: Counters {
                        datagram_bytes: number("udp_bytes_sent"),
                        datagrams: number("udp_packets_sent"),
                        stream_bytes: number("tcp_bytes_sent"),
                    },
                    t_ms: number("t_ms"),
                },
                Some(event) => Line::Member {
                    observer,
                    event: event.to_string(),
                    node: v["node"].as_str().unwrap_or("").to_string(),
                    members: number("members") as usize,
                    at,
                },
                None => continue,
            };
            if out.send(parsed).is_err() {
                return;
            }
        }
        let _ = out.send(Line::Closed { observer });
    });
}

/// Copies memberlist's log to `log` and reports its suspicions and
/// refutations.
fn follow_stderr(
    observer: usize,
    stderr: impl std::io::Read + Send + 'static,
    mut log: fs::File,
    out: mpsc::Sender<Line>,
) {
    reader(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let at = Instant::now();
            let _ = writeln!(log, "{line}");
            let parsed = if let Some(node) = line
                .split_once("memberlist: Suspect ")
                .and_then(|(_, rest)| rest.split_once(" has failed"))
                .map(|(node, _)| node.to_string())
            {
                Line::SuspectLogged { observer, node, at }
            } else if line.contains("memberlist: Refuting a suspect message")
                || line.contains("memberlist: Refuting a dead message")
            {
                Line::Refuted { observer, at }
            } else {
                continue;
            };
            if out.send(parsed).is_err() {
                return;
            }
        }
    });
}

/// The peers' output as it arrives, with what the scenario keeps of it.
struct Cluster {
    lines: mpsc::Receiver<Line>,
    peers: Vec<Peer>,
    /// Each node's member count, from its latest event.
    members: Vec<usize>,
    /// Each node's latest stats answer.
    stats: Vec<Option<(Counters, u64)>>,
    closed: Vec<bool>,
    /// Member events, suspicions and refutations from convergence on
    /// (false positives).
    history: Vec<Line>,
    keep_history: bool,
}

impl Cluster {
    /// Waits up to `timeout` for the next line; records it, and returns
    /// the events and suspicions to the caller too.
    fn next(&mut self, timeout: Duration) -> Option<(usize, &'static str, String, Instant)> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        match &line {
            Line::Member {
                observer, members, ..
            } => self.members[*observer] = *members,
            Line::Stats {
                observer,
                counters,
                t_ms,
            } => self.stats[*observer] = Some((*counters, *t_ms)),
            Line::Closed { observer } => self.closed[*observer] = true,
            Line::SuspectLogged { .. } | Line::Refuted { .. } => {}
        }
        let seen = match &line {
            Line::Member {
                observer,
                event,
                node,
                at,
                ..
            } => {
                let kind = match event.as_str() {
                    "join" => "join",
                    "leave" => "leave",
                    _ => "update",
                };
                Some((*observer, kind, node.clone(), *at))
            }
            Line::SuspectLogged { observer, node, at } => {
                Some((*observer, "suspect", node.clone(), *at))
            }
            _ => None,
        };
        if self.keep_history && line.at().is_some() {
            self.history.push(line);
        }
        seen
    }

    /// Drains output until `until`.
    fn idle_until(&mut self, until: Instant) {
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            self.next(left.min(Duration::from_millis(200)));
        }
    }

    /// A peer that exited although nobody killed it, with its log's tail.
    fn died(&mut self, root: &Path, killed: &[usize]) -> Option<String> {
        for (i, peer) in self.peers.iter_mut().enumerate() {
            if killed.contains(&i) {
                continue;
            }
            if self.closed[i] || matches!(peer.child.try_wait(), Ok(Some(_))) {
                let log =
                    fs::read_to_string(root.join(format!("{}.log", peer.name))).unwrap_or_default();
                let tail = common::last_lines(&log, 20);
                return Some(format!("peer {} exited:\n{tail}", peer.name));
            }
        }
        None
    }

    /// Waits until every peer of `range` counts at least `members`
    /// members (itself included).
    fn wait_joined(
        &mut self,
        range: std::ops::Range<usize>,
        members: usize,
        root: &Path,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next_check = Instant::now();
        while range.clone().any(|i| self.members[i] < members) {
            if Instant::now() >= next_check {
                if let Some(death) = self.died(root, &[]) {
                    bail!("{death}");
                }
                if Instant::now() > deadline {
                    let late: Vec<usize> = range
                        .clone()
                        .filter(|&i| self.members[i] < members)
                        .collect();
                    let first = &self.peers[late[0]].name;
                    let log =
                        fs::read_to_string(root.join(format!("{first}.log"))).unwrap_or_default();
                    bail!(
                        "{} of the peers {}..={} saw fewer than {members} members after 60 s; {first}'s log ends:\n{}",
                        late.len(),
                        range.start + 1,
                        range.end,
                        common::last_lines(&log, 20)
                    );
                }
                next_check = Instant::now() + Duration::from_millis(500);
            }
            self.next(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Asks every live peer for its counters and waits (10 s at most) for
    /// the answers; `None` for a node that did not answer.
    fn read_stats(&mut self, killed: &[usize]) -> Vec<Option<(Counters, u64)>> {
        self.stats.iter_mut().for_each(|s| *s = None);
        let mut asked = Vec::new();
        for (i, peer) in self.peers.iter_mut().enumerate() {
            if killed.contains(&i) {
                continue;
            }
            if let Some(stdin) = peer.stdin.as_mut() {
                if stdin
                    .write_all(b"stats\n")
                    .and_then(|_| stdin.flush())
                    .is_ok()
                {
                    asked.push(i);
                }
            }
        }
        let give_up = Instant::now() + Duration::from_secs(10);
        while asked.iter().any(|&i| self.stats[i].is_none()) && Instant::now() < give_up {
            self.next(Duration::from_millis(200));
        }
        self.stats.clone()
    }

    /// False positives among the recorded lines in `[from, to]`: about
    /// (or, for refutations, by) nodes not in `killed`.
    fn false_positives(&self, from: Instant, to: Instant, killed: &[usize]) -> FalsePositives {
        let victims: BTreeSet<&str> = killed
            .iter()
            .map(|&i| self.peers[i].name.as_str())
            .collect();
        let mut fp = FalsePositives::default();
        let mut declared = BTreeSet::new();
        for line in &self.history {
            if !line.at().is_some_and(|at| at >= from && at <= to) {
                continue;
            }
            match line {
                Line::Member { event, node, .. }
                    if event == "leave" && !victims.contains(node.as_str()) =>
                {
                    fp.dead_declarations += 1;
                    declared.insert(node.clone());
                }
                Line::SuspectLogged { node, .. } if !victims.contains(node.as_str()) => {
                    fp.suspicions += 1
                }
                Line::Refuted { observer, .. } if !killed.contains(observer) => fp.refutations += 1,
                _ => {}
            }
        }
        fp.nodes_declared_dead = declared.len();
        fp
    }
}

/// The peer binary (given, or the one build.sh makes) and its version.
pub fn peer_binary(given: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    let binary = match given {
        Some(path) => path.to_path_buf(),
        None => {
            // target/release/bench -> target/peers/memberlist/memberlist
            let exe = std::env::current_exe()?;
            let target = exe
                .parent()
                .and_then(Path::parent)
                .context("cannot locate target/ from the bench's path")?;
            target.join("peers/memberlist/memberlist")
        }
    };
    if !binary.exists() {
        bail!(
            "{} not found: run bench/peers/memberlist/build.sh first, or pass --peer",
            binary.display()
        );
    }
    let version = fs::read_to_string(binary.with_file_name("VERSION"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    Ok((binary, version))
}

pub fn memberlist_peer(args: MemberlistArgs, root: &Path) -> anyhow::Result<()> {
    args.run.check()?;
    let (binary, version) = peer_binary(args.peer.as_deref())?;
    let seed = args.run.resolve_seed();
    let outcome = common::in_scratch(root, false, || {
        run(&args.run, seed, &binary, &version, root)
    })?;
    let report = outcome.to_json();
    compare::write_charts(args.run.chart_dir.as_deref(), &[&report])?;
    compare::print_outcomes(&[&outcome]);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// One run on memberlist (see `compare.rs` for what a run is).
pub fn run(
    args: &SwimArgs,
    seed: u64,
    binary: &Path,
    version: &str,
    root: &Path,
) -> anyhow::Result<SwimOutcome> {
    let n = args.nodes;
    common::ensure_open_files(args.open_files_needed())?;
    let net = common::enter_network(&args.net)?;
    let plan = KillPlan::new(seed, n, args.kills);
    let (tx, lines) = mpsc::channel();
    let mut cluster = Cluster {
        lines,
        peers: Vec::new(),
        members: vec![0; n],
        stats: vec![None; n],
        closed: vec![false; n],
        history: Vec::new(),
        keep_history: false,
    };
    // The first node alone (every other node's seed), then the waves.
    let mut taken = BTreeSet::new();
    // One key for every peer: memberlist's SecretKey, base64 like cohort's.
    let mut key_flags: Vec<String> = Vec::new();
    if !args.plaintext {
        common::write_gossip_key(root)?;
        let key = fs::read_to_string(root.join("gossip.key"))?;
        key_flags = vec!["-key".into(), key.trim().to_string()];
    }
    let flags = |join: Option<&str>| -> Vec<String> {
        let join = join.map(|seed| ["-join".to_string(), seed.to_string()]);
        join.into_iter()
            .flatten()
            .chain(key_flags.iter().cloned())
            .collect()
    };
    let (first, join) = start_peer(binary, root, 0, "n1", &flags(None), &mut taken, &tx)?;
    cluster.peers.push(first);
    // memberlist's Join does not retry: the seed must listen first. It
    // reports itself (NotifyJoin) once bound.
    cluster.wait_joined(0..1, 1, root)?;
    let waves = args.waves();
    let mut last_started = Instant::now();
    for (w, wave) in waves.iter().enumerate() {
        for i in wave.clone() {
            let name = format!("n{}", i + 1);
            let (peer, _) =
                start_peer(binary, root, i, &name, &flags(Some(&join)), &mut taken, &tx)?;
            cluster.peers.push(peer);
        }
        last_started = Instant::now();
        if w + 1 < waves.len() {
            cluster.wait_joined(wave.clone(), 2, root)?;
        }
    }
    drop(tx);
    eprintln!(
        "bench: {n} memberlist peers started ({} waves); waiting for full membership",
        waves.len()
    );
    let deadline = last_started + Duration::from_secs(300);
    let mut next_check = Instant::now();
    let mut converged = Instant::now();
    while cluster.members.iter().any(|&m| m != n) {
        if Instant::now() >= next_check {
            if let Some(death) = cluster.died(root, &[]) {
                bail!("{death}");
            }
            if Instant::now() > deadline {
                bail!("no full membership within 300 s of the last start");
            }
            next_check = Instant::now() + Duration::from_millis(500);
        }
        if let Some((_, _, _, at)) = cluster.next(Duration::from_millis(100)) {
            converged = at;
        }
    }
    let convergence = converged.duration_since(last_started).as_secs_f64();
    eprintln!("bench: full membership {convergence:.2} s after the last start");
    cluster.keep_history = true;
    let history_from = Instant::now();

    eprintln!("bench: settling {} s", args.settle_seconds);
    cluster.idle_until(Instant::now() + Duration::from_secs(args.settle_seconds));

    // Idle window.
    eprintln!("bench: idle window {} s", args.idle_seconds);
    let pids: Vec<u32> = cluster.peers.iter().map(|p| p.child.id()).collect();
    let idle_start = Instant::now();
    let before = cluster.read_stats(&[]);
    let cpu_before = common::cpu_ticks_of(&pids);
    let mut sampler = Sampler::start(pids.clone());
    let idle_end = idle_start + Duration::from_secs(args.idle_seconds);
    let every = Duration::from_secs(args.sample_seconds.max(1));
    while Instant::now() < idle_end {
        cluster.idle_until((Instant::now() + every).min(idle_end));
        sampler.sample();
    }
    let after = cluster.read_stats(&[]);
    let window = idle_start.elapsed().as_secs_f64();
    let cpu_after = common::cpu_ticks_of(&pids);
    let rss_samples = sampler.samples + 1;
    let (cpu_percent, rss_peak_mib) = sampler.finish();
    let mut traffic = Traffic::default();
    for (b, a) in before.iter().zip(&after) {
        if let (Some((b, b_ms)), Some((a, a_ms))) = (b, a) {
            traffic.add(*b, *a, a_ms.saturating_sub(*b_ms) as f64 / 1000.0);
        }
    }
    if let Some(death) = cluster.died(root, &[]) {
        bail!("{death}");
    }
    let idle = Idle {
        window_s: window,
        traffic,
        cpu_percent,
        rss_peak_mib,
        rss_samples,
        false_positives: cluster.false_positives(idle_start, idle_end, &[]),
        cores: common::cores(cpu_before, cpu_after, window),
    };

    // Kills, as the plan says, timed from the peers' output.
    let mut kills = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    for &(victim, pause) in &plan.steps {
        cluster.idle_until(Instant::now() + pause);
        let name = cluster.peers[victim].name.clone();
        common::stop(&mut cluster.peers[victim].child);
        let killed_at = Instant::now();
        killed.push(victim);
        let live = n - killed.len();
        let mut suspected: Option<Instant> = None;
        let mut dead_on: BTreeMap<usize, Instant> = BTreeMap::new();
        let give_up = killed_at + Duration::from_secs(args.detection_timeout_seconds);
        while dead_on.len() < live && Instant::now() < give_up {
            let Some((observer, kind, node, at)) = cluster.next(Duration::from_millis(200)) else {
                continue;
            };
            if node != name || killed.contains(&observer) {
                continue;
            }
            match kind {
                "suspect" => {
                    suspected.get_or_insert(at);
                }
                "leave" => {
                    dead_on.entry(observer).or_insert(at);
                }
                _ => {}
            }
        }
        let since = |at: &Instant| at.duration_since(killed_at).as_secs_f64();
        let first_dead = dead_on.values().min().copied();
        let first = match (suspected, first_dead) {
            (Some(s), Some(d)) => Some(s.min(d)),
            (s, d) => s.or(d),
        };
        let result = KillResult {
            victim: name.clone(),
            pause_ms: pause.as_millis() as u64,
            first_detection_s: first.as_ref().map(since),
            first_dead_s: first_dead.as_ref().map(since),
            full_s: (dead_on.len() == live)
                .then(|| dead_on.values().max().map(since))
                .flatten(),
            declared_dead_by: dead_on.len(),
            live,
            per_observer_s: dead_on.values().map(since).collect(),
        };
        eprintln!(
            "bench: killed {name}: first detection {}, dead on {} of {live} live nodes after {}",
            result
                .first_detection_s
                .map_or("-".into(), |s| format!("{s:.2} s")),
            result.declared_dead_by,
            result
                .full_s
                .map_or("- (not all)".into(), |s| format!("{s:.2} s")),
        );
        kills.push(result);
    }
    // Late lines (a victim's last dead declarations) are no false positives.
    cluster.idle_until(Instant::now() + Duration::from_secs(1));
    let whole = cluster.false_positives(history_from, Instant::now(), &killed);

    let mut extra = serde_json::Map::new();
    extra.insert("protocol_period".into(), json!("1s"));
    extra.insert("ack_timeout".into(), json!("500ms"));
    extra.insert("suspicion_multiplier".into(), json!(4));
    extra.insert("settle_seconds".into(), json!(args.settle_seconds));
    extra.insert(
        "how_measured".into(),
        json!("first detection: the earlier of the first \"Suspect X has failed\" log line and the first NotifyLeave about the victim; full: the last live node's NotifyLeave; false positives: NotifyLeave about nodes never killed, and \"Refuting a suspect/dead message\" log lines; suspicions: the prober's \"Suspect X has failed\" lines"),
    );
    extra.insert(
        "bench_load".into(),
        json!({
            "convergence": "pushed: every peer prints each membership event on stdout (no polling)",
            "idle_window": "two stats requests on stdin (start, end) and /proc every sample_seconds",
            "sample_seconds": args.sample_seconds,
        }),
    );
    extra.insert("loadavg_at_end".into(), json!(common::loadavg()));
    drop(cluster);
    Ok(SwimOutcome {
        scenario: "memberlist-peer",
        label: "memberlist",
        implementation: format!("hashicorp/memberlist {version}, DefaultLANConfig (name, bind address/port and an event delegate changed{})", if args.plaintext { "" } else { "; SecretKey set" }),
        nodes: n,
        seed,
        network: net.report,
        encrypted: !args.plaintext,
        waves: waves.len() + 1,
        convergence_s: convergence,
        idle,
        kills,
        false_positives: whole,
        extra,
    })
}
