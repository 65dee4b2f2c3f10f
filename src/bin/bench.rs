//! Benchmarks against real agents on loopback. Prints JSON (and a short
//! summary on stderr); never asserts a figure.
//!
//!   cargo build --release
//!   target/release/bench membership --nodes 100
//!
//! `membership`: starts N agents (`cohort agent`, found next to this
//! binary), measures the time until every node sees all N alive, then
//! SIGKILLs nodes one at a time and times first detection (the first node
//! to suspect or declare it dead) and full detection (the last live node to
//! declare it dead) from every node's `/v1/events` stream; counts false
//! positives (a live node suspected or declared dead); samples per-node
//! gossip bytes/s and packets/s, and RSS and CPU of each agent while idle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
#[command(about = "cohort benchmarks on real agents; prints JSON")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(clap::Subcommand)]
enum Scenario {
    /// SWIM: convergence, failure detection, false positives, traffic, footprint.
    Membership(MembershipArgs),
}

#[derive(clap::Args)]
struct MembershipArgs {
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Nodes SIGKILLed one after another (the median is reported).
    #[arg(long, default_value_t = 5)]
    kills: usize,
    #[arg(long, default_value = "1s")]
    protocol_period: String,
    #[arg(long, default_value = "500ms")]
    ack_timeout: String,
    /// Idle window for traffic, CPU and false positives.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    cohort: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().scenario {
        Scenario::Membership(args) => membership(args),
    }
}

struct Agent {
    name: String,
    api: SocketAddr,
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for TCP and UDP now and never handed out before in this
/// run: agents bind theirs a moment later, and the OS could otherwise give
/// the same ephemeral port twice in between.
fn free_port(taken: &mut BTreeSet<u16>) -> anyhow::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !taken.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
    }
}

fn start_agent(
    cohort: &Path,
    root: &Path,
    name: &str,
    seed: Option<SocketAddr>,
    args: &MembershipArgs,
    taken: &mut BTreeSet<u16>,
) -> anyhow::Result<(Agent, SocketAddr)> {
    let (port, api_port) = (free_port(taken)?, free_port(taken)?);
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
    let child = Command::new(cohort)
        .arg("agent")
        .arg("--config")
        .arg(dir.join("cohort.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("agent.log"))?)
        .spawn()
        .with_context(|| format!("cannot start {}", cohort.display()))?;
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

fn members(api: SocketAddr) -> Option<serde_json::Value> {
    serde_json::from_str(&http_get(api, "/v1/members")?).ok()
}

fn alive_count(view: &serde_json::Value) -> usize {
    view["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["status"] == "alive").count())
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

fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu_ticks, rss_kib))
}

fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * p).round() as usize;
    Some(values[index])
}

fn membership(args: MembershipArgs) -> anyhow::Result<()> {
    let cohort = match &args.cohort {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("cohort"),
    };
    if !cohort.exists() {
        bail!(
            "{} not found: run `cargo build --release` first, or pass --cohort",
            cohort.display()
        );
    }
    if args.nodes < 3 || args.kills >= args.nodes - 1 {
        bail!("need at least 3 nodes and fewer kills than nodes - 1");
    }
    let root = std::env::temp_dir().join(format!("cohort-bench-{}", std::process::id()));
    fs::create_dir_all(&root)?;
    let key: [u8; 32] = rand::random();
    fs::write(root.join("gossip.key"), format!("{}\n", base64_key(&key)))?;

    // Start: the first node is every other node's seed.
    let mut agents: Vec<Agent> = Vec::new();
    let mut taken = BTreeSet::new();
    let (first, seed) = start_agent(&cohort, &root, "n1", None, &args, &mut taken)?;
    agents.push(first);
    for i in 2..=args.nodes {
        agents.push(
            start_agent(
                &cohort,
                &root,
                &format!("n{i}"),
                Some(seed),
                &args,
                &mut taken,
            )?
            .0,
        );
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
    // Every stream is open once each node has answered a request after it.
    std::thread::sleep(Duration::from_millis(500));

    // Idle window: traffic, CPU, RSS, false positives.
    let before: Vec<(u64, u64, u64)> = agents.iter().map(|a| traffic(a.api)).collect();
    let cpu_before: Vec<Option<(u64, u64)>> =
        agents.iter().map(|a| proc_stat(a.child.id())).collect();
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.idle_seconds));
    let idle = idle_start.elapsed().as_secs_f64();
    let after: Vec<(u64, u64, u64)> = agents.iter().map(|a| traffic(a.api)).collect();
    let cpu_after: Vec<Option<(u64, u64)>> =
        agents.iter().map(|a| proc_stat(a.child.id())).collect();
    let ticks = 100.0; // USER_HZ on Linux
    let mut bytes_per_s: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0.saturating_sub(b.0) + a.2.saturating_sub(b.2)) as f64 / idle)
        .collect();
    let mut packets_per_s: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.1.saturating_sub(b.1) as f64 / idle)
        .collect();
    let mut cpu_pct: Vec<f64> = cpu_before
        .iter()
        .zip(&cpu_after)
        .filter_map(|(b, a)| {
            Some((a.as_ref()?.0.saturating_sub(b.as_ref()?.0)) as f64 / ticks / idle * 100.0)
        })
        .collect();
    let mut rss_mib: Vec<f64> = cpu_after
        .iter()
        .filter_map(|s| Some(s.as_ref()?.1 as f64 / 1024.0))
        .collect();

    // Kills: one at a time, detection timed from the event streams.
    let mut first_detection = Vec::new();
    let mut full_detection = Vec::new();
    let mut false_positives: BTreeMap<String, usize> = BTreeMap::new();
    let mut killed: Vec<String> = Vec::new();
    let mut pending: Vec<Seen> = events.try_iter().collect();
    for k in 0..args.kills {
        let victim_index = args.nodes - 1 - k;
        let victim = agents[victim_index].name.clone();
        let _ = agents[victim_index].child.kill();
        let _ = agents[victim_index].child.wait();
        let killed_at = Instant::now();
        killed.push(victim.clone());
        let live: Vec<String> = agents
            .iter()
            .filter(|a| !killed.contains(&a.name))
            .map(|a| a.name.clone())
            .collect();
        let mut first: Option<Instant> = None;
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
                if detail.contains("-> dead") && live.contains(&observer) {
                    dead_on.entry(observer).or_insert(at);
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
        if let Some(first) = first {
            first_detection.push(first.duration_since(killed_at).as_secs_f64());
        }
        if let Some(last) = dead_on.values().max() {
            full_detection.push(last.duration_since(killed_at).as_secs_f64());
        }
        eprintln!(
            "bench: killed {victim}: first detection {:?}, dead on all {} live nodes after {:?}",
            first.map(|f| f.duration_since(killed_at)),
            dead_on.len(),
            dead_on.values().max().map(|l| l.duration_since(killed_at))
        );
    }
    pending.extend(events.try_iter());
    for (_, subject, detail, _) in &pending {
        if !killed.contains(subject)
            && (detail.contains("-> suspect") || detail.contains("-> dead"))
        {
            *false_positives
                .entry(
                    if detail.contains("-> dead") {
                        "dead"
                    } else {
                        "suspect"
                    }
                    .to_string(),
                )
                .or_default() += 1;
        }
    }

    let report = serde_json::json!({
        "scenario": "membership",
        "nodes": args.nodes,
        "protocol_period": args.protocol_period,
        "ack_timeout": args.ack_timeout,
        "convergence_s": convergence,
        "kills": args.kills,
        "first_detection_s": { "median": percentile(&mut first_detection, 0.5), "max": percentile(&mut first_detection, 1.0) },
        "full_detection_s": { "median": percentile(&mut full_detection, 0.5), "max": percentile(&mut full_detection, 1.0) },
        "false_positives": { "suspect": false_positives.get("suspect").copied().unwrap_or(0), "dead": false_positives.get("dead").copied().unwrap_or(0) },
        "idle_window_s": idle,
        "per_node_bytes_per_s": { "median": percentile(&mut bytes_per_s, 0.5), "max": percentile(&mut bytes_per_s, 1.0) },
        "per_node_packets_per_s": { "median": percentile(&mut packets_per_s, 0.5), "max": percentile(&mut packets_per_s, 1.0) },
        "agent_rss_mib": { "median": percentile(&mut rss_mib, 0.5), "max": percentile(&mut rss_mib, 1.0) },
        "agent_cpu_percent": { "median": percentile(&mut cpu_pct, 0.5), "max": percentile(&mut cpu_pct, 1.0) },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(agents);
    let _ = fs::remove_dir_all(&root);
    Ok(())
}

/// (datagram bytes sent, datagrams sent, stream bytes sent) of one node.
fn traffic(api: SocketAddr) -> (u64, u64, u64) {
    members(api).map_or((0, 0, 0), |v| {
        let g = &v["gossip"];
        (
            g["datagram_bytes_sent"].as_u64().unwrap_or(0),
            g["datagrams_sent"].as_u64().unwrap_or(0),
            g["stream_bytes_sent"].as_u64().unwrap_or(0),
        )
    })
}

fn base64_key(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}
