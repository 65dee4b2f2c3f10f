//! `membership`: the SWIM run of `compare.rs` on N `cohort agent`
//! processes (found next to this binary), encrypted gossip.
//!
//! How each figure is read: membership and traffic from each agent's
//! `GET /metrics` (`cohort_members{status="alive"}`, the gossip counters,
//! `cohort_gossip_refutations_total`), a few hundred bytes whatever N;
//! suspicions and dead declarations from every agent's `GET /v1/events`
//! stream, open from convergence to the end; CPU and RSS from `/proc`.
//!
//! What the bench itself costs at N=500: convergence is polled on 4
//! threads, each agent only until it first lists all N alive (the report
//! says how many sweeps and how long the longest took: the convergence
//! figure is late by at most that plus the interval); during the idle
//! window the bench reads the counters twice and `/proc` every
//! `--sample-seconds`, and the event streams are idle; the bench's CPU is
//! in `idle.cores.bench`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::common::{self, Agent, Counters, Network, Sampler, Traffic};
use crate::compare::{self, FalsePositives, Idle, KillPlan, KillResult, SwimArgs, SwimOutcome};

#[derive(clap::Args)]
pub struct MembershipArgs {
    #[command(flatten)]
    run: SwimArgs,
    #[arg(long, default_value = "1s")]
    protocol_period: String,
    #[arg(long, default_value = "500ms")]
    ack_timeout: String,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    cohort: Option<PathBuf>,
}

/// The agents' gossip timing and protection.
pub struct Gossip {
    pub protocol_period: String,
    pub ack_timeout: String,
    /// No key file, `allow_plaintext` (the bench's `--plaintext`).
    pub plaintext: bool,
}

impl Gossip {
    /// memberlist's `DefaultLANConfig` probe interval and probe timeout.
    pub fn memberlist_lan(plaintext: bool) -> Gossip {
        Gossip {
            protocol_period: "1s".into(),
            ack_timeout: "500ms".into(),
            plaintext,
        }
    }

    /// The node config's `gossip:` line.
    fn yaml(&self, key_file: &Path) -> String {
        let protection = if self.plaintext {
            "allow_plaintext: true".to_string()
        } else {
            format!("key_file: {}", key_file.display())
        };
        format!(
            "gossip: {{ {protection}, protocol_period: {}, ack_timeout: {} }}",
            self.protocol_period, self.ack_timeout
        )
    }
}

/// Agents polled at once while waiting for convergence.
const POLL_THREADS: usize = 4;
/// At least this long between two polls of the same agent.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

pub fn membership(args: MembershipArgs, root: &Path) -> anyhow::Result<()> {
    args.run.check()?;
    let cohort = common::cohort_binary(args.cohort.as_deref())?;
    let seed = args.run.resolve_seed();
    let gossip = Gossip {
        protocol_period: args.protocol_period.clone(),
        ack_timeout: args.ack_timeout.clone(),
        plaintext: args.run.plaintext,
    };
    let outcome = common::in_scratch(root, false, || run(&args.run, seed, &gossip, &cohort, root))?;
    let report = outcome.to_json();
    compare::write_charts(args.run.chart_dir.as_deref(), &[&report])?;
    compare::print_outcomes(&[&outcome]);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn start_agent(
    cohort: &Path,
    root: &Path,
    name: &str,
    seed: Option<SocketAddr>,
    gossip: &Gossip,
    net: &Network,
    taken: &mut BTreeSet<u16>,
) -> anyhow::Result<(Agent, SocketAddr)> {
    let (port, api_port) = (common::free_port(taken)?, common::free_port(taken)?);
    let dir = root.join(name);
    fs::create_dir_all(&dir)?;
    let bind = SocketAddr::from(([127, 0, 0, 1], port));
    let api = SocketAddr::from((net.api_ip, api_port));
    let join = seed.map_or(String::new(), |s| s.to_string());
    // `socket: null`: 500 agents cannot share the default unix socket.
    let config = format!(
        "node: {name}\ncluster: bench\nbind: {bind}\ndata_dir: {data}\ntopology: {data}/topology.yaml\njoin: [{join}]\n\
         {gossip}\napi: {{ http: {api}, socket: null }}\nlog: {{ level: warn, format: text }}\n",
        data = dir.join("data").display(),
        gossip = gossip.yaml(&root.join("gossip.key")),
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

/// What the bench reads from an agent's `/metrics`, and when.
#[derive(Clone, Copy)]
struct Scrape {
    alive: u64,
    refutations: u64,
    counters: Counters,
    at: Instant,
}

fn scrape(api: SocketAddr) -> Option<Scrape> {
    let text = common::http_get(api, "/metrics")?;
    let mut alive = None;
    let mut refutations = 0;
    let mut counters = Counters::default();
    for (name, value) in common::metric_samples(&text) {
        match name {
            "cohort_members{status=\"alive\"}" => alive = Some(value),
            "cohort_gossip_refutations_total" => refutations = value,
            "cohort_gossip_sent_bytes_total{transport=\"udp\"}" => counters.datagram_bytes = value,
            "cohort_gossip_sent_bytes_total{transport=\"tcp\"}" => counters.stream_bytes = value,
            "cohort_gossip_packets_sent_total{transport=\"udp\"}" => counters.datagrams = value,
            _ => {}
        }
    }
    Some(Scrape {
        alive: alive?,
        refutations,
        counters,
        at: Instant::now(),
    })
}

fn scrape_all(agents: &[Agent]) -> Vec<Option<Scrape>> {
    let apis: Vec<SocketAddr> = agents.iter().map(|a| a.api).collect();
    common::sweep(&apis, POLL_THREADS, scrape)
}

/// What an event stream says, as the bench sees it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// The stream answered (events flow from here on).
    Open,
    Suspect,
    Dead,
    /// The stream ended.
    End,
}

struct Seen {
    observer: usize,
    subject: String,
    kind: Kind,
    at: Instant,
}

/// Follows a node's event stream on its own thread until the stream ends;
/// `lag` (the delay the network adds) is taken off each event's time.
fn follow_events(observer: usize, api: SocketAddr, lag: Duration, out: mpsc::Sender<Seen>) {
    let send = move |out: &mpsc::Sender<Seen>, subject: String, kind: Kind| {
        let at = Instant::now().checked_sub(lag).unwrap_or_else(Instant::now);
        out.send(Seen {
            observer,
            subject,
            kind,
            at,
        })
        .is_ok()
    };
    let body = move || {
        let Ok(mut stream) = TcpStream::connect_timeout(&api, Duration::from_secs(5)) else {
            send(&out, String::new(), Kind::End);
            return;
        };
        if write!(stream, "GET /v1/events HTTP/1.1\r\nHost: {api}\r\n\r\n").is_err() {
            send(&out, String::new(), Kind::End);
            return;
        }
        let mut lines = BufReader::new(stream).lines();
        let ok = lines
            .next()
            .and_then(Result::ok)
            .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"));
        if !ok || !send(&out, String::new(), Kind::Open) {
            send(&out, String::new(), Kind::End);
            return;
        }
        for line in lines {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                continue;
            };
            if event["kind"] != "member-status" {
                continue;
            }
            // "alive -> suspect", "suspect -> dead", ...
            let to = event["detail"]
                .as_str()
                .and_then(|d| d.rsplit("-> ").next())
                .unwrap_or("");
            let kind = match to.trim() {
                "suspect" => Kind::Suspect,
                "dead" => Kind::Dead,
                _ => continue,
            };
            let subject = event["subject"].as_str().unwrap_or("").to_string();
            if !send(&out, subject, kind) {
                return;
            }
        }
        send(&out, String::new(), Kind::End);
    };
    // Small stacks: one such thread per node, 500 of them.
    let _ = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(body);
}

/// The agent that exited although nobody killed it, with its log.
fn exited(agents: &mut [Agent], root: &Path, killed: &[usize]) -> Option<String> {
    for (i, agent) in agents.iter_mut().enumerate() {
        if killed.contains(&i) {
            continue;
        }
        if let Ok(Some(exit)) = agent.child.try_wait() {
            let log =
                fs::read_to_string(root.join(&agent.name).join("agent.log")).unwrap_or_default();
            return Some(format!(
                "agent {} exited ({exit}); the end of its log:\n{}",
                agent.name,
                common::last_lines(&log, 40)
            ));
        }
    }
    None
}

/// Waits until every agent of `range` answers and sees at least `min_alive`
/// members (itself included).
fn wait_joined(
    agents: &mut [Agent],
    range: std::ops::Range<usize>,
    min_alive: u64,
    root: &Path,
) -> anyhow::Result<()> {
    let apis: Vec<SocketAddr> = agents[range].iter().map(|a| a.api).collect();
    common::wait_joined(
        &apis,
        min_alive,
        |api| scrape(api).map(|s| s.alive),
        || match exited(agents, root, &[]) {
            Some(death) => bail!("{death}"),
            None => Ok(()),
        },
    )
}

/// The dead declarations and suspicions of live nodes among `seen`, and
/// the live nodes declared dead.
fn false_positives<'a>(
    seen: impl IntoIterator<Item = &'a Seen>,
    names: &[String],
    killed: &[usize],
) -> FalsePositives {
    let victims: BTreeSet<&str> = killed.iter().map(|&i| names[i].as_str()).collect();
    let mut fp = FalsePositives::default();
    let mut declared = BTreeSet::new();
    for s in seen {
        if victims.contains(s.subject.as_str()) {
            continue;
        }
        match s.kind {
            Kind::Suspect => fp.suspicions += 1,
            Kind::Dead => {
                fp.dead_declarations += 1;
                declared.insert(s.subject.clone());
            }
            _ => {}
        }
    }
    fp.nodes_declared_dead = declared.len();
    fp
}

fn refutations(before: &[Option<Scrape>], after: &[Option<Scrape>], killed: &[usize]) -> u64 {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(i, _)| !killed.contains(i))
        .filter_map(|(_, (b, a))| {
            Some(
                a.as_ref()?
                    .refutations
                    .saturating_sub(b.as_ref()?.refutations),
            )
        })
        .sum()
}

/// One run on cohort (see `compare.rs` for what a run is).
pub fn run(
    args: &SwimArgs,
    seed: u64,
    gossip: &Gossip,
    cohort: &Path,
    root: &Path,
) -> anyhow::Result<SwimOutcome> {
    let n = args.nodes;
    common::ensure_open_files(args.open_files_needed())?;
    let net = common::enter_network(&args.net)?;
    let inotify = common::inotify_room();
    if let Some((room, limit)) = inotify {
        if (n as u64) > room {
            eprintln!(
                "bench: only {room} more inotify instances (fs.inotify.max_user_instances = {limit}): \
                 {} agents will read their topology file every 2 s instead of watching it \
                 (sysctl -w fs.inotify.max_user_instances={} avoids it)",
                n as u64 - room,
                limit + n as u64
            );
        }
    }
    common::write_gossip_key(root)?;
    let plan = KillPlan::new(seed, n, args.kills);

    // The first node alone (every other node's seed), then the waves.
    let mut agents: Vec<Agent> = Vec::new();
    let mut taken = BTreeSet::new();
    let (first, join) = start_agent(cohort, root, "n1", None, gossip, &net, &mut taken)?;
    agents.push(first);
    wait_joined(&mut agents, 0..1, 1, root)?;
    let waves = args.waves();
    let mut last_started = Instant::now();
    for (w, wave) in waves.iter().enumerate() {
        for i in wave.clone() {
            let name = format!("n{}", i + 1);
            agents.push(start_agent(cohort, root, &name, Some(join), gossip, &net, &mut taken)?.0);
        }
        last_started = Instant::now();
        if w + 1 < waves.len() {
            wait_joined(&mut agents, wave.clone(), 2, root)?;
        }
    }
    eprintln!(
        "bench: {n} agents started ({} waves); waiting for full membership",
        waves.len()
    );

    // Convergence: each agent polled until it first lists all N alive.
    let mut complete_at: Vec<Option<Instant>> = vec![None; n];
    let (mut sweeps, mut longest_sweep) = (0usize, Duration::ZERO);
    let bench_ticks = || common::proc_stat(std::process::id()).map_or(0, |(ticks, _)| ticks);
    let (poll_began, poll_ticks) = (Instant::now(), bench_ticks());
    let deadline = last_started + Duration::from_secs(300);
    loop {
        let pending: Vec<usize> = (0..n).filter(|&i| complete_at[i].is_none()).collect();
        if pending.is_empty() {
            break;
        }
        let began = Instant::now();
        let apis: Vec<SocketAddr> = pending.iter().map(|&i| agents[i].api).collect();
        let seen = common::sweep(&apis, POLL_THREADS, scrape);
        for (&i, s) in pending.iter().zip(seen) {
            if let Some(s) = s.filter(|s| s.alive == n as u64) {
                complete_at[i] = Some(s.at);
            }
        }
        sweeps += 1;
        longest_sweep = longest_sweep.max(began.elapsed());
        if let Some(death) = exited(&mut agents, root, &[]) {
            bail!("{death}");
        }
        if Instant::now() > deadline {
            bail!("no full membership within 300 s of the last start");
        }
        std::thread::sleep(POLL_INTERVAL.saturating_sub(began.elapsed()));
    }
    let poll_s = poll_began.elapsed().as_secs_f64();
    let poll_cpu_s = bench_ticks().saturating_sub(poll_ticks) as f64 / common::TICKS_PER_SECOND;
    let converged = complete_at
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(last_started);
    let convergence = converged.duration_since(last_started).as_secs_f64();
    eprintln!("bench: full membership {convergence:.2} s after the last start");

    // Every node's events from here on; the settle period starts once all
    // streams are open.
    let (events_tx, events) = mpsc::channel::<Seen>();
    for (i, agent) in agents.iter().enumerate() {
        follow_events(i, agent.api, net.observer_lag, events_tx.clone());
    }
    drop(events_tx);
    let mut history: Vec<Seen> = Vec::new();
    let mut open = 0;
    let opened_by = Instant::now() + Duration::from_secs(60);
    while open < n && Instant::now() < opened_by {
        if let Ok(seen) = events.recv_timeout(Duration::from_millis(200)) {
            match seen.kind {
                Kind::Open => open += 1,
                Kind::End => bail!("the event stream of {} failed", agents[seen.observer].name),
                _ => history.push(seen),
            }
        }
    }
    if open < n {
        bail!("only {open} of {n} event streams opened within 60 s");
    }
    let baseline = scrape_all(&agents);
    let drain = |history: &mut Vec<Seen>, until: Instant| {
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Ok(seen) = events.recv_timeout(left.min(Duration::from_millis(500))) {
                if !matches!(seen.kind, Kind::Open | Kind::End) {
                    history.push(seen);
                }
            }
        }
    };
    eprintln!("bench: settling {} s", args.settle_seconds);
    drain(
        &mut history,
        Instant::now() + Duration::from_secs(args.settle_seconds),
    );

    // Idle window.
    eprintln!("bench: idle window {} s", args.idle_seconds);
    let pids: Vec<u32> = agents.iter().map(|a| a.child.id()).collect();
    let idle_start = Instant::now();
    let before = scrape_all(&agents);
    let cpu_before = common::cpu_ticks_of(&pids);
    let mut sampler = Sampler::start(pids.clone());
    let idle_end = idle_start + Duration::from_secs(args.idle_seconds);
    let every = Duration::from_secs(args.sample_seconds.max(1));
    while Instant::now() < idle_end {
        drain(&mut history, (Instant::now() + every).min(idle_end));
        sampler.sample();
    }
    let after = scrape_all(&agents);
    let window = idle_start.elapsed().as_secs_f64();
    let cpu_after = common::cpu_ticks_of(&pids);
    let rss_samples = sampler.samples + 1;
    let (cpu_percent, rss_peak_mib) = sampler.finish();
    let mut traffic = Traffic::default();
    for (b, a) in before.iter().zip(&after) {
        if let (Some(b), Some(a)) = (b, a) {
            traffic.add(
                b.counters,
                a.counters,
                a.at.duration_since(b.at).as_secs_f64(),
            );
        }
    }
    let names: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let in_window = history
        .iter()
        .filter(|s| s.at >= idle_start && s.at <= idle_end);
    let mut idle_fp = false_positives(in_window, &names, &[]);
    idle_fp.refutations = refutations(&before, &after, &[]);
    if let Some(death) = exited(&mut agents, root, &[]) {
        bail!("{death}");
    }
    let idle = Idle {
        window_s: window,
        traffic,
        cpu_percent,
        rss_peak_mib,
        rss_samples,
        false_positives: idle_fp,
        cores: common::cores(cpu_before, cpu_after, window),
    };

    // Kills, as the plan says, each timed from the event streams.
    let mut kills = Vec::new();
    let mut killed: Vec<usize> = Vec::new();
    for &(victim, pause) in &plan.steps {
        drain(&mut history, Instant::now() + pause);
        let name = agents[victim].name.clone();
        common::stop(&mut agents[victim].child);
        let killed_at = Instant::now();
        killed.push(victim);
        let live: Vec<usize> = (0..n).filter(|i| !killed.contains(i)).collect();
        let mut first: Option<Instant> = None;
        let mut first_dead: Option<Instant> = None;
        let mut dead_on: BTreeMap<usize, Instant> = BTreeMap::new();
        let give_up = killed_at + Duration::from_secs(args.detection_timeout_seconds);
        while dead_on.len() < live.len() && Instant::now() < give_up {
            let Ok(seen) = events.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            if matches!(seen.kind, Kind::Open | Kind::End) {
                continue;
            }
            if seen.subject == name {
                let at = seen.at.max(killed_at);
                first.get_or_insert(at);
                if seen.kind == Kind::Dead {
                    first_dead.get_or_insert(at);
                    if live.contains(&seen.observer) {
                        dead_on.entry(seen.observer).or_insert(at);
                    }
                }
            }
            history.push(seen);
        }
        let since = |at: &Instant| at.duration_since(killed_at).as_secs_f64();
        let result = KillResult {
            victim: name.clone(),
            pause_ms: pause.as_millis() as u64,
            first_detection_s: first.as_ref().map(since),
            first_dead_s: first_dead.as_ref().map(since),
            full_s: (dead_on.len() == live.len())
                .then(|| dead_on.values().max().map(since))
                .flatten(),
            declared_dead_by: dead_on.len(),
            live: live.len(),
            per_observer_s: dead_on.values().map(since).collect(),
        };
        eprintln!(
            "bench: killed {name}: first detection {}, dead on {} of {} live nodes after {}",
            result
                .first_detection_s
                .map_or("-".into(), |s| format!("{s:.2} s")),
            result.declared_dead_by,
            result.live,
            result
                .full_s
                .map_or("- (not all)".into(), |s| format!("{s:.2} s")),
        );
        kills.push(result);
    }
    // Late lines (the last victims' dead declarations) are no false
    // positives; a second to collect them.
    drain(&mut history, Instant::now() + Duration::from_secs(1));
    let end = scrape_all(&agents);
    let mut whole = false_positives(&history, &names, &killed);
    whole.refutations = refutations(&baseline, &end, &killed);

    let polling = agents
        .iter()
        .filter(|a| {
            fs::read_to_string(root.join(&a.name).join("agent.log"))
                .is_ok_and(|log| log.contains("cannot watch the topology file"))
        })
        .count();
    let mut extra = serde_json::Map::new();
    extra.insert("protocol_period".into(), json!(gossip.protocol_period));
    extra.insert("ack_timeout".into(), json!(gossip.ack_timeout));
    extra.insert("settle_seconds".into(), json!(args.settle_seconds));
    extra.insert(
        "bench_load".into(),
        json!({
            "convergence_poll": {
                "endpoint": "/metrics",
                "threads": POLL_THREADS,
                "min_interval_ms": POLL_INTERVAL.as_millis() as u64,
                "sweeps": sweeps,
                "longest_sweep_s": longest_sweep.as_secs_f64(),
                "polled_for_s": poll_s,
                "bench_cpu_s": poll_cpu_s,
                "note": "each agent is polled until it first lists all N alive; convergence_s is late by at most longest_sweep_s + min_interval_ms",
            },
            "event_streams": n,
            "idle_window": "two /metrics sweeps (start, end) and /proc every sample_seconds",
            "sample_seconds": args.sample_seconds,
        }),
    );
    extra.insert(
        "how_measured".into(),
        json!("first detection: the first suspect or dead event about the victim on any node's /v1/events; full: the last live node's dead event; false positives: those events about nodes never killed, and cohort_gossip_refutations_total"),
    );
    extra.insert(
        "inotify".into(),
        json!({
            "room_at_start": inotify.map(|r| r.0),
            "max_user_instances": inotify.map(|r| r.1),
            "agents_polling_topology_file": polling,
        }),
    );
    extra.insert(
        "agent_log".into(),
        common::log_lines(agents.iter().map(|a| (a.name.clone(), root.join(&a.name)))),
    );
    extra.insert("loadavg_at_end".into(), json!(common::loadavg()));
    drop(agents);
    Ok(SwimOutcome {
        scenario: "membership",
        label: "cohort",
        implementation: format!("cohort {}", env!("CARGO_PKG_VERSION")),
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
