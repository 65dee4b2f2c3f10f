//! `membership`: starts N agents (`cohort agent`, found next to this
//! binary), measures the time until every node sees all N alive, waits a
//! settle period (join updates are still being retransmitted right after
//! convergence), then samples per-node gossip bytes/s (datagram and stream
//! apart) and packets/s, and RSS and CPU of each agent over an idle window.
//! Then SIGKILLs nodes one at a time and times first detection (the first
//! node to suspect or declare it dead), the first dead declaration, and
//! full detection (the last live node to declare it dead) from every
//! node's `/v1/events` stream; counts false positives (a live node
//! suspected or declared dead) from convergence on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::common::{self, summary, Agent, Counters, Traffic};

#[derive(clap::Args)]
pub struct MembershipArgs {
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Nodes SIGKILLed one after another (the median is reported).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    #[arg(long, default_value = "1s")]
    protocol_period: String,
    #[arg(long, default_value = "500ms")]
    ack_timeout: String,
    /// Wait after convergence, before the idle window, so that the join
    /// updates' retransmissions are over.
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
    /// Idle window for traffic, CPU and RSS.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    cohort: Option<PathBuf>,
}

fn start_agent(
    cohort: &Path,
    root: &Path,
    name: &str,
    seed: Option<SocketAddr>,
    args: &MembershipArgs,
    taken: &mut BTreeSet<u16>,
) -> anyhow::Result<(Agent, SocketAddr)> {
    let (port, api_port) = (common::free_port(taken)?, common::free_port(taken)?);
    let dir = root.join(name);
    fs::create_dir_all(&dir)?;
    let bind = SocketAddr::from(([127, 0, 0, 1], port));
    let api = SocketAddr::from(([127, 0, 0, 1], api_port));
    let join = seed.map_or(String::new(), |s| s.to_string());
    let config = format!(
        "node: {name}\ncluster: bench\nbind: {bind}\ndata_dir: {data}\ntopology: {data}/topology.yaml\njoin: [{join}]\n\
         gossip: {{ key_file: {key}, protocol_period: {period}, ack_timeout: {ack} }}\napi: {{ http: {api} }}\nlog: {{ level: warn, format: text }}\n",
        data = dir.join("data").display(),
        key = root.join("gossip.key").display(),
        period = args.protocol_period,
        ack = args.ack_timeout,
    );
    fs::write(dir.join("cohort.yaml"), config)?;
    let child = common::spawn_agent(cohort, &dir)?;
    Ok((
        Agent {
            name: name.into(),
            api,
            child,
        },
        bind,
    ))
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// `GET /v1/members`: the node's view and its gossip counters.
fn members(api: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(api, "/v1/members")?).ok()
}

fn alive_count(view: &serde_json::Value) -> usize {
    view["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["status"] == "alive").count())
}

/// A node's gossip counters (`GossipHealth` of `/v1/members`) and when
/// they were read.
fn traffic(api: SocketAddr) -> Option<(Counters, Instant)> {
    let view = members(api)?;
    let g = &view["gossip"];
    Some((
        Counters {
            datagram_bytes: g["datagram_bytes_sent"].as_u64()?,
            datagrams: g["datagrams_sent"].as_u64()?,
            stream_bytes: g["stream_bytes_sent"].as_u64()?,
        },
        Instant::now(),
    ))
}

/// (observer, subject, kind/detail, when) for every event of every node.
type Seen = (String, String, String, Instant);

/// Follows a node's event stream on its own thread until the stream ends.
fn follow_events(observer: String, api: SocketAddr, out: mpsc::Sender<Seen>) {
    std::thread::spawn(move || {
        let Ok(mut stream) = TcpStream::connect(api) else {
            return;
        };
        if write!(stream, "GET /v1/events HTTP/1.1\r\nHost: {api}\r\n\r\n").is_err() {
            return;
        }
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                continue;
            };
            let subject = event["subject"].as_str().unwrap_or("").to_string();
            let detail = format!(
                "{} {}",
                event["kind"].as_str().unwrap_or(""),
                event["detail"].as_str().unwrap_or("")
            );
            if out
                .send((observer.clone(), subject, detail, Instant::now()))
                .is_err()
            {
                return;
            }
        }
    });
}

pub fn membership(args: MembershipArgs, root: &Path) -> anyhow::Result<()> {
    let cohort = common::cohort_binary(args.cohort.as_deref())?;
    if args.nodes < 3 || args.kills >= args.nodes - 1 {
        bail!("need at least 3 nodes and fewer kills than nodes - 1");
    }
    common::run_in(root, false, || run(&args, &cohort, root))
}

fn run(args: &MembershipArgs, cohort: &Path, root: &Path) -> anyhow::Result<serde_json::Value> {
    common::write_gossip_key(root)?;

    // Start: the first node is every other node's seed.
    let mut agents: Vec<Agent> = Vec::new();
    let mut taken = BTreeSet::new();
    let (first, seed) = start_agent(cohort, root, "n1", None, args, &mut taken)?;
    agents.push(first);
    for i in 2..=args.nodes {
        let name = format!("n{i}");
        agents.push(start_agent(cohort, root, &name, Some(seed), args, &mut taken)?.0);
    }
    let last_started = Instant::now();
    eprintln!(
        "bench: {} agents started; waiting for full membership",
        args.nodes
    );
    let deadline = last_started + Duration::from_secs(300);
    loop {
        let converged = agents
            .iter()
            .all(|a| members(a.api).is_some_and(|v| alive_count(&v) == args.nodes));
        if converged {
            break;
        }
        for agent in &mut agents {
            if let Ok(Some(exit)) = agent.child.try_wait() {
                let log = fs::read_to_string(root.join(&agent.name).join("agent.log"))
                    .unwrap_or_default();
                bail!("agent {} exited ({exit}):\n{}", agent.name, log.trim_end());
            }
        }
        if Instant::now() > deadline {
            bail!("no full membership within 300 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let convergence = last_started.elapsed().as_secs_f64();
    eprintln!("bench: full membership {convergence:.2} s after the last start");

    // Follow every node's events from here on.
    let (events_tx, events) = mpsc::channel::<Seen>();
    for agent in &agents {
        follow_events(agent.name.clone(), agent.api, events_tx.clone());
    }
    drop(events_tx);

    // Settle: the join updates' retransmissions end (and the event streams
    // open) before the idle window starts.
    eprintln!("bench: settling {} s", args.settle_seconds);
    std::thread::sleep(Duration::from_secs(args.settle_seconds).max(Duration::from_millis(500)));

    // Idle window: traffic, CPU, RSS.
    eprintln!("bench: idle window {} s", args.idle_seconds);
    let before: Vec<Option<(Counters, Instant)>> = agents.iter().map(|a| traffic(a.api)).collect();
    let cpu_before: Vec<Option<(u64, u64)>> = agents
        .iter()
        .map(|a| common::proc_stat(a.child.id()))
        .collect();
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let idle = idle_start.elapsed().as_secs_f64();
    let after: Vec<Option<(Counters, Instant)>> = agents.iter().map(|a| traffic(a.api)).collect();
    let cpu_after: Vec<Option<(u64, u64)>> = agents
        .iter()
        .map(|a| common::proc_stat(a.child.id()))
        .collect();
    let mut window = Traffic::default();
    for (b, a) in before.iter().zip(&after) {
        if let (Some((b, b_at)), Some((a, a_at))) = (b, a) {
            window.add(*b, *a, a_at.duration_since(*b_at).as_secs_f64());
        }
    }
    let (cpu_pct, rss_mib) = common::footprint(&cpu_before, &cpu_after, idle);

    // Kills: one at a time, detection timed from the event streams.
    let mut first_detection = Vec::new();
    let mut first_dead = Vec::new();
    let mut full_detection = Vec::new();
    let mut killed: Vec<String> = Vec::new();
    let mut pending: Vec<Seen> = events.try_iter().collect();
    for k in 0..args.kills {
        let victim_index = args.nodes - 1 - k;
        let victim = agents[victim_index].name.clone();
        common::stop(&mut agents[victim_index].child);
        let killed_at = Instant::now();
        killed.push(victim.clone());
        let live: Vec<String> = agents
            .iter()
            .filter(|a| !killed.contains(&a.name))
            .map(|a| a.name.clone())
            .collect();
        let mut first: Option<Instant> = None;
        let mut first_dead_at: Option<Instant> = None;
        let mut dead_on: BTreeMap<String, Instant> = BTreeMap::new();
        let give_up = killed_at + Duration::from_secs(120);
        while dead_on.len() < live.len() && Instant::now() < give_up {
            let Ok(seen) = events.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            pending.push(seen.clone());
            let (observer, subject, detail, at) = seen;
            if subject == victim && (detail.contains("-> suspect") || detail.contains("-> dead")) {
                first.get_or_insert(at);
                if detail.contains("-> dead") {
                    first_dead_at.get_or_insert(at);
                    if live.contains(&observer) {
                        dead_on.entry(observer).or_insert(at);
                    }
                }
            }
        }
        if dead_on.len() < live.len() {
            eprintln!(
                "bench: {victim} not declared dead by every live node within 120 s ({} of {})",
                dead_on.len(),
                live.len()
            );
        }
        let since_kill = |at: &Instant| at.duration_since(killed_at).as_secs_f64();
        first_detection.extend(first.as_ref().map(since_kill));
        first_dead.extend(first_dead_at.as_ref().map(since_kill));
        full_detection.extend(dead_on.values().max().map(since_kill));
        eprintln!(
            "bench: killed {victim}: first detection {:?}, dead on all {} live nodes after {:?}",
            first.map(|f| f.duration_since(killed_at)),
            dead_on.len(),
            dead_on.values().max().map(|l| l.duration_since(killed_at))
        );
    }
    pending.extend(events.try_iter());
    let mut false_positives: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, subject, detail, _) in &pending {
        if killed.contains(subject) {
            continue;
        }
        if detail.contains("-> dead") {
            *false_positives.entry("dead").or_default() += 1;
        } else if detail.contains("-> suspect") {
            *false_positives.entry("suspect").or_default() += 1;
        }
    }

    let mut report = serde_json::json!({
        "scenario": "membership",
        "nodes": args.nodes,
        "protocol_period": args.protocol_period,
        "ack_timeout": args.ack_timeout,
        "convergence_s": convergence,
        "settle_seconds": args.settle_seconds,
        "kills": args.kills,
        "first_detection_s": summary(&first_detection),
        "first_dead_declaration_s": summary(&first_dead),
        "full_detection_s": summary(&full_detection),
        "false_positives": {
            "suspect": false_positives.get("suspect").copied().unwrap_or(0),
            "dead": false_positives.get("dead").copied().unwrap_or(0),
        },
        "idle_window_s": idle,
        "agent_rss_mib": summary(&rss_mib),
        "agent_cpu_percent": summary(&cpu_pct),
    });
    if let Some(fields) = report.as_object_mut() {
        window.report(fields);
    }
    Ok(report)
}
