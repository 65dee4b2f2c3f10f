//! `memberlist-peer`: the `membership` scenario on hashicorp/memberlist, so
//! that issue 4's "full detection at N=100 no slower than memberlist's LAN
//! defaults on the same machine" is measured, not assumed.
//!
//! Starts N processes of `bench/peers/memberlist/main.go` (one memberlist
//! node each, `DefaultLANConfig()` with only the name, bind address/port
//! and an event delegate changed; built by `bench/peers/memberlist/build.sh`
//! into `target/peers/memberlist/memberlist`), every one joining through
//! the first. Each prints a JSON line per membership event; convergence is
//! when every node counts N members. After the settle period, an idle
//! window measures the bytes memberlist sends (its own go-metrics counters
//! `memberlist.udp.sent` / `memberlist.tcp.sent`), RSS and CPU. Then nodes
//! are SIGKILLed one at a time like in `membership`.
//!
//! memberlist's delegates do not expose suspicion: `NotifyLeave` fires when
//! a node declares the victim dead. So this scenario reports
//! `first_dead_declaration_s` (first NotifyLeave) where `membership`
//! reports `first_detection_s` (first suspect or dead), and
//! `first_suspect_logged_s` from memberlist's own log line "Suspect X has
//! failed, no acks received" (stderr, written by the prober that suspects
//! first; other nodes learn the suspicion by gossip without a log line).
//! Full detection is the last live node's NotifyLeave.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::common::{self, summary, Counters, Traffic};

#[derive(clap::Args)]
pub struct MemberlistArgs {
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Nodes SIGKILLed one after another (the median is reported).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Wait after convergence, before the idle window.
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
    /// Idle window for traffic, CPU and RSS.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
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
    /// The observer's standard output ended: it exited.
    Closed { observer: usize },
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
    seed: Option<&str>,
    taken: &mut BTreeSet<u16>,
    out: &mpsc::Sender<Line>,
) -> anyhow::Result<(Peer, String)> {
    let bind = format!("127.0.0.1:{}", common::free_port(taken)?);
    let mut command = Command::new(binary);
    command.args(["-name", name, "-bind", &bind]);
    if let Some(seed) = seed {
        command.args(["-join", seed]);
    }
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

fn follow_stdout(
    observer: usize,
    stdout: impl std::io::Read + Send + 'static,
    out: mpsc::Sender<Line>,
) {
    std::thread::spawn(move || {
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

/// Copies memberlist's log to `log` and reports its suspicions.
fn follow_stderr(
    observer: usize,
    stderr: impl std::io::Read + Send + 'static,
    mut log: fs::File,
    out: mpsc::Sender<Line>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let at = Instant::now();
            let _ = writeln!(log, "{line}");
            let suspect = line
                .split_once("memberlist: Suspect ")
                .and_then(|(_, rest)| rest.split_once(" has failed"))
                .map(|(node, _)| node.to_string());
            if let Some(node) = suspect {
                if out
                    .send(Line::SuspectLogged { observer, node, at })
                    .is_err()
                {
                    return;
                }
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
    /// Member events and suspicions from convergence on (false positives).
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
            Line::SuspectLogged { .. } => {}
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
        if self.keep_history && seen.is_some() {
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
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Some(format!("peer {} exited:\n{}", peer.name, tail.join("\n")));
            }
        }
        None
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
}

fn default_peer() -> anyhow::Result<PathBuf> {
    // target/release/bench -> target/peers/memberlist/memberlist
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate target/ from the bench's path")?;
    Ok(target.join("peers/memberlist/memberlist"))
}

pub fn memberlist_peer(args: MemberlistArgs, root: &Path) -> anyhow::Result<()> {
    let binary = match &args.peer {
        Some(path) => path.clone(),
        None => default_peer()?,
    };
    if !binary.exists() {
        bail!(
            "{} not found: run bench/peers/memberlist/build.sh first, or pass --peer",
            binary.display()
        );
    }
    if args.nodes < 3 || args.kills >= args.nodes - 1 {
        bail!("need at least 3 nodes and fewer kills than nodes - 1");
    }
    let version = fs::read_to_string(binary.with_file_name("VERSION"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    fs::create_dir_all(root)?;
    let result = run(&args, &binary, root, &version);
    // The peers are stopped by now (dropped inside `run`), whatever happened.
    let _ = fs::remove_dir_all(root);
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn run(
    args: &MemberlistArgs,
    binary: &Path,
    root: &Path,
    version: &str,
) -> anyhow::Result<serde_json::Value> {
    let (tx, lines) = mpsc::channel();
    let mut cluster = Cluster {
        lines,
        peers: Vec::new(),
        members: vec![0; args.nodes],
        stats: vec![None; args.nodes],
        closed: vec![false; args.nodes],
        history: Vec::new(),
        keep_history: false,
    };
    // Start: the first node is every other node's seed.
    let mut taken = BTreeSet::new();
    let (first, seed) = start_peer(binary, root, 0, "n1", None, &mut taken, &tx)?;
    cluster.peers.push(first);
    // memberlist's Join does not retry: the seed must listen first. It
    // reports itself (NotifyJoin) once bound.
    let seed_up = Instant::now() + Duration::from_secs(10);
    while cluster.members[0] == 0 {
        if Instant::now() > seed_up {
            match cluster.died(root, &[]) {
                Some(death) => bail!("{death}"),
                None => bail!("the seed n1 did not start within 10 s"),
            }
        }
        cluster.next(Duration::from_millis(100));
    }
    for i in 1..args.nodes {
        let name = format!("n{}", i + 1);
        let (peer, _) = start_peer(binary, root, i, &name, Some(&seed), &mut taken, &tx)?;
        cluster.peers.push(peer);
    }
    drop(tx);
    let last_started = Instant::now();
    eprintln!(
        "bench: {} memberlist peers started; waiting for full membership",
        args.nodes
    );
    let deadline = last_started + Duration::from_secs(300);
    let mut next_check = Instant::now();
    while cluster.members.iter().any(|&m| m != args.nodes) {
        if Instant::now() >= next_check {
            if let Some(death) = cluster.died(root, &[]) {
                bail!("{death}");
            }
            if Instant::now() > deadline {
                bail!("no full membership within 300 s");
            }
            next_check = Instant::now() + Duration::from_millis(500);
        }
        cluster.next(Duration::from_millis(100));
    }
    let convergence = last_started.elapsed().as_secs_f64();
    eprintln!("bench: full membership {convergence:.2} s after the last start");
    cluster.keep_history = true;

    eprintln!("bench: settling {} s", args.settle_seconds);
    cluster.idle_until(Instant::now() + Duration::from_secs(args.settle_seconds));

    // Idle window: traffic, CPU, RSS.
    eprintln!("bench: idle window {} s", args.idle_seconds);
    let before = cluster.read_stats(&[]);
    let pids: Vec<u32> = cluster.peers.iter().map(|p| p.child.id()).collect();
    let cpu_before: Vec<Option<(u64, u64)>> = pids.iter().map(|&p| common::proc_stat(p)).collect();
    let idle_start = Instant::now();
    cluster.idle_until(idle_start + Duration::from_secs(args.idle_seconds));
    let idle = idle_start.elapsed().as_secs_f64();
    let cpu_after: Vec<Option<(u64, u64)>> = pids.iter().map(|&p| common::proc_stat(p)).collect();
    let after = cluster.read_stats(&[]);
    let mut window = Traffic::default();
    for (b, a) in before.iter().zip(&after) {
        if let (Some((b, b_ms)), Some((a, a_ms))) = (b, a) {
            window.add(*b, *a, a_ms.saturating_sub(*b_ms) as f64 / 1000.0);
        }
    }
    let (cpu_pct, rss_mib) = common::footprint(&cpu_before, &cpu_after, idle);
    if let Some(death) = cluster.died(root, &[]) {
        bail!("{death}");
    }

    // Kills: one at a time, detection timed from the peers' output.
    let mut first_dead = Vec::new();
    let mut first_suspect = Vec::new();
    let mut full_detection = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    for k in 0..args.kills {
        let victim_index = args.nodes - 1 - k;
        let victim = cluster.peers[victim_index].name.clone();
        common::stop(&mut cluster.peers[victim_index].child);
        let killed_at = Instant::now();
        killed.push(victim_index);
        let live = args.nodes - killed.len();
        let mut suspected: Option<Instant> = None;
        let mut dead_on: BTreeMap<usize, Instant> = BTreeMap::new();
        let give_up = killed_at + Duration::from_secs(120);
        while dead_on.len() < live && Instant::now() < give_up {
            let Some((observer, kind, node, at)) = cluster.next(Duration::from_millis(200)) else {
                continue;
            };
            if node != victim || killed.contains(&observer) {
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
        if dead_on.len() < live {
            eprintln!(
                "bench: {victim} not declared dead by every live node within 120 s ({} of {live})",
                dead_on.len(),
            );
        }
        let since_kill = |at: &Instant| at.duration_since(killed_at).as_secs_f64();
        let first = dead_on.values().min();
        first_dead.extend(first.map(since_kill));
        first_suspect.extend(suspected.as_ref().map(since_kill));
        full_detection.extend(dead_on.values().max().map(since_kill));
        eprintln!(
            "bench: killed {victim}: suspect logged {:?}, first dead {:?}, dead on all {} live nodes after {:?}",
            suspected.map(|s| s.duration_since(killed_at)),
            first.map(|f| f.duration_since(killed_at)),
            dead_on.len(),
            dead_on.values().max().map(|l| l.duration_since(killed_at))
        );
    }
    // Late lines (a victim's last dead declarations) are no false positives.
    cluster.idle_until(Instant::now() + Duration::from_secs(1));
    let killed_names: Vec<&str> = killed
        .iter()
        .map(|&i| cluster.peers[i].name.as_str())
        .collect();
    let (mut suspects, mut deads) = (0, 0);
    for line in &cluster.history {
        match line {
            Line::Member { event, node, .. }
                if event == "leave" && !killed_names.contains(&node.as_str()) =>
            {
                deads += 1
            }
            Line::SuspectLogged { node, .. } if !killed_names.contains(&node.as_str()) => {
                suspects += 1
            }
            _ => {}
        }
    }

    let mut report = serde_json::json!({
        "scenario": "memberlist-peer",
        "implementation": format!("hashicorp/memberlist {version}, DefaultLANConfig (name, bind address/port and an event delegate changed)"),
        "nodes": args.nodes,
        "protocol_period": "1s",
        "ack_timeout": "500ms",
        "suspicion_multiplier": 4,
        "convergence_s": convergence,
        "settle_seconds": args.settle_seconds,
        "kills": args.kills,
        "first_dead_declaration_s": summary(&first_dead),
        "first_suspect_logged_s": summary(&first_suspect),
        "full_detection_s": summary(&full_detection),
        "false_positives": { "suspect_logged": suspects, "dead": deads },
        "idle_window_s": idle,
        "agent_rss_mib": summary(&rss_mib),
        "agent_cpu_percent": summary(&cpu_pct),
    });
    if let Some(fields) = report.as_object_mut() {
        window.report(fields);
    }
    drop(cluster);
    Ok(report)
}
