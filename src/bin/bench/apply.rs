//! `apply`: starts N agents (`cohort agent`, found next to this binary)
//! that all boot with the same topology file naming every node, in replica
//! sets of up to three with the `storage` and `http` roles (each node's
//! http role serves on a port of its own), five of them `election:
//! candidate` (the first node of sets 1-5) and the rest `off`. Waits
//! until each node has listed all N alive, then until every node shows the
//! same committed version with the 2PC lock free (the agents apply their
//! file at boot themselves). Then times `--runs` applies one at a time, each a small
//! real change (a comment line naming the change, and one node's http
//! port moved to a free port), sent as `PUT
//! /v1/topology?wait=true&timeout=T` to a node's API, the coordinator
//! rotating through the cluster:
//!
//! - *wall*: the PUT as the client sees it, request written → answer read;
//! - the coordinator's `timings`: resolve (parse, peers looked up), prepare
//!   (PREPARE sent → decision on disk), commit (decision → every
//!   participant acknowledged);
//! - *all installed*: from the request to the last node's install (the
//!   topology file written, then the roles), from each node's
//!   `apply.install.at_ms` in `GET /v1/status` (same machine, same clock);
//! - *all seen*: from the request until a status sweep, started after the
//!   answer, found every node at the new version with its lock free (an
//!   upper bound: its resolution is a sweep);
//! - *cpu*: the agents' CPU time over each window (per apply, and in
//!   cores), the bench's own, and what the rest of the machine used.
//!
//! Each measured apply starts once every node installed the previous one.
//! `--in-a-row K` then sends K applies back to back (the next PUT right
//! after the previous answer, the coordinator rotating), counting commits
//! and failures (with the coordinator's reasons).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::common::{
    self, cpu_ticks, log_lines, percentile, round1, spread, sweep, unix_ms_now, Agent,
};

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Applies timed one at a time (each once every node installed the
    /// previous one).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Then this many applies back to back, each sent right after the
    /// previous answer.
    #[arg(long, default_value_t = 0)]
    in_a_row: usize,
    /// The `timeout` of each `PUT /v1/topology?wait=true`.
    #[arg(long, default_value = "60s")]
    timeout: String,
    /// Pause between two status sweeps while waiting for every node.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// Threads a status sweep is split over (each asks its share of the
    /// nodes one after another).
    #[arg(long, default_value_t = 4)]
    poll_threads: usize,
    /// The agents' log level (each node logs to its own file).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Agents started at once after the first (everyone's seed); the next
    /// wave starts when each agent of this one has joined, as in the
    /// membership bench.
    #[arg(long, default_value_t = 50)]
    wave: usize,
    /// After the boot apply, measure the agents' CPU while idle over this
    /// many seconds (no apply, no status sweep) before the runs; 0 skips it.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// After the boot apply (so before the idle window) and after each
    /// timed apply, wait up to this many seconds for the gossip to go
    /// quiet: every agent done spreading that apply's new payloads (its
    /// `cohort_gossip_pending_updates` at 0). 0 does not wait.
    #[arg(long, default_value_t = 300)]
    quiet_seconds: u64,
    /// Keep the scratch dir (configs, data, every agent's log) and say where.
    #[arg(long)]
    keep: bool,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    cohort: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ParseArgs {
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// Parses timed.
    #[arg(long, default_value_t = 50)]
    reps: usize,
}

/// What one node's share of an apply costs in parsing: the text `bench
/// apply` would propose for `--nodes`, parsed and validated as every
/// participant does at PREPARE (`Topology::parse`), in this process, no
/// agent running.
pub fn parse(args: &ParseArgs) -> anyhow::Result<()> {
    let model = Model {
        nodes: (1..=args.nodes)
            .map(|i| {
                let port = u16::try_from(20_000 + 2 * i).unwrap_or(u16::MAX);
                (format!("n{i}"), SocketAddr::from(([127, 0, 0, 1], port)))
            })
            .collect(),
        http: (1..=args.nodes)
            .map(|i| u16::try_from(40_000 + i).unwrap_or(u16::MAX))
            .collect(),
        comment: format!("cohort bench parse: {} nodes", args.nodes),
    };
    let text = model.text();
    let file = Path::new("bench-topology.yaml");
    ::cohort::config::Topology::parse(&text, file)
        .map_err(|e| anyhow::anyhow!("the bench's own topology does not parse: {e}"))?;
    let mut ms = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let started = Instant::now();
        let parsed = ::cohort::config::Topology::parse(&text, file);
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(std::hint::black_box(parsed));
    }
    let report = json!({
        "scenario": "parse",
        "nodes": args.nodes,
        "text_bytes": text.len(),
        "parse_ms": spread(&ms),
        "how_measured": "Topology::parse (serde-saphyr, then validation) of the text `bench apply` proposes at this N, timed in one thread of this process; what every participant does once per PREPARE",
        "all_nodes_cpu_s_estimate": percentile(&ms, 0.5).map(|m| m * args.nodes as f64 / 1000.0),
    });
    println!("{report}");
    eprintln!(
        "bench: parse of {} bytes ({} nodes): median {} ms",
        text.len(),
        args.nodes,
        self::ms(percentile(&ms, 0.5))
    );
    Ok(())
}

/// How long the agents get to converge and commit their first version.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// Pause between two sweeps while waiting for the gossip to go quiet.
const QUIET_POLL: Duration = Duration::from_secs(1);
/// How long every node gets to show a committed version after the answer.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// The topology the bench proposes: every node, its address and its http
/// port, and a comment naming the change.
#[derive(Clone)]
struct Model {
    nodes: Vec<(String, SocketAddr)>,
    http: Vec<u16>,
    comment: String,
}

impl Model {
    fn text(&self) -> String {
        let mut text = format!(
            "# {}\ncluster: bench\nfailover: {{ mode: raft, election_timeout: 1s }}\nreplicasets:\n",
            self.comment
        );
        let sets = self.nodes.len().div_ceil(3);
        for (set, members) in self.nodes.chunks(3).enumerate() {
            let _ = writeln!(
                text,
                "  storage-{}:\n    roles: [storage, http]\n    nodes:",
                set + 1
            );
            for (i, (name, address)) in members.iter().enumerate() {
                // The first node of each set, then the second, ..., until
                // there are VOTERS: the group spans sets, as an operator
                // would lay it out.
                let election = if i * sets + set < VOTERS {
                    "candidate"
                } else {
                    "off"
                };
                let _ = writeln!(
                    text,
                    "      {name}: {{ address: {address}, election: {election} }}"
                );
            }
        }
        text.push_str("roles:\n  http:\n    listen:\n");
        for ((name, _), port) in self.nodes.iter().zip(&self.http) {
            let _ = writeln!(text, "      {name}: {port}");
        }
        text
    }
}

/// Nodes in the Raft group (`election: candidate`); every other node is
/// `off`. Until 2026-11-24 the bench made every node a voter (a group of
/// N: at 500, the leader's heartbeats alone were 7,500 rpc/s), which no
/// operator would run and which buried the apply in Raft traffic.
const VOTERS: usize = 5;

/// The bench's API token: every agent's `api.token_file` holds it.
const API_TOKEN: &str = "cohort-bench-token";

/// One HTTP/1.0 exchange: (status code, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    Ok((code, body.to_string()))
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    match http(addr, "GET", path, "", Duration::from_secs(5)) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// What the bench reads of a node's `GET /v1/status`.
#[derive(Clone, Debug, Default)]
struct NodeView {
    version: Option<u64>,
    hash: String,
    lock: String,
    coordinating: usize,
    install_version: Option<u64>,
    install_at_ms: Option<f64>,
    install_error: Option<String>,
}

fn node_view(api: SocketAddr) -> Option<NodeView> {
    let s = get_json(api, "/v1/status")?;
    let apply = &s["apply"];
    Some(NodeView {
        version: s["config_version"].as_u64(),
        hash: apply["hash"].as_str().unwrap_or("").to_string(),
        lock: apply["lock"].as_str().unwrap_or("").to_string(),
        coordinating: apply["coordinating"].as_array().map_or(0, Vec::len),
        install_version: apply["install"]["version"].as_u64(),
        install_at_ms: apply["install"]["at_ms"].as_f64(),
        install_error: apply["install"]["error"].as_str().map(String::from),
    })
}

fn settled(view: &Option<NodeView>, version: u64) -> bool {
    view.as_ref().is_some_and(|v| {
        v.version.is_some_and(|have| have >= version)
            && v.install_version.is_some_and(|have| have >= version)
            && v.lock == "no apply in progress"
            && v.coordinating == 0
    })
}

/// Waits until no agent has member updates left to piggyback, sweeping
/// every `/metrics` each second, up to `--quiet-seconds`. Reports how long
/// that took (`quiet_after_s`, null when the limit passed first) and the
/// CPU meanwhile: the gossip an apply leaves behind.
fn wait_gossip_quiet(
    agents: &mut [Agent],
    root: &Path,
    apis: &[SocketAddr],
    args: &ApplyArgs,
) -> anyhow::Result<Value> {
    let (before, started) = (cpu_ticks(agents.iter()), Instant::now());
    let limit = Duration::from_secs(args.quiet_seconds);
    let quiet = loop {
        check_alive(agents, root)?;
        let pending: u64 = sweep(apis, args.poll_threads, common::pending_updates)
            .into_iter()
            .map(|p| p.unwrap_or(1))
            .sum();
        if pending == 0 {
            break true;
        }
        if started.elapsed() >= limit {
            break false;
        }
        std::thread::sleep(QUIET_POLL);
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut report = common::cores(before, cpu_ticks(agents.iter()), seconds.max(0.001));
    report["quiet_after_s"] = if quiet {
        json!(round1(seconds))
    } else {
        json!(null)
    };
    report["waited_s"] = json!(round1(seconds));
    Ok(report)
}

fn check_alive(agents: &mut [Agent], root: &Path) -> anyhow::Result<()> {
    for agent in agents {
        if let Ok(Some(exit)) = agent.child.try_wait() {
            let log =
                fs::read_to_string(root.join(&agent.name).join("agent.log")).unwrap_or_default();
            let tail = common::last_lines(&log, 40);
            bail!(
                "agent {} exited ({exit}); the end of its log:\n{}",
                agent.name,
                tail
            );
        }
    }
    Ok(())
}

/// What one PUT gave.
struct Put {
    coordinator: String,
    http_status: Option<u16>,
    result: Option<Value>,
    error: Option<String>,
    sent_unix_ms: f64,
    started: Instant,
    wall_ms: f64,
}

impl Put {
    fn committed_version(&self) -> Option<u64> {
        let r = self.result.as_ref()?;
        (self.http_status == Some(200) && r["outcome"] == "committed")
            .then(|| r["version"].as_u64())
            .flatten()
    }

    fn timing(&self, field: &str) -> Option<f64> {
        self.result.as_ref()?["timings"][field].as_f64()
    }

    /// The failure as JSON: everything the answer said about why.
    fn failure(&self, attempt: usize) -> Value {
        let r = self.result.clone().unwrap_or(Value::Null);
        json!({
            "attempt": attempt,
            "coordinator": self.coordinator,
            "http_status": self.http_status,
            "error": self.error,
            "outcome": r.get("outcome").or_else(|| r.get("code")),
            "message": r.get("message"),
            "reasons": r.get("reasons"),
            "silent": r.get("silent"),
            "not_reached": r.get("not_reached"),
            "finished": r.get("finished"),
            "timings": r.get("timings"),
            "wall_ms": self.wall_ms,
        })
    }
}

fn put(agent: &Agent, text: &str, timeout: &str) -> Put {
    let path = format!("/v1/topology?wait=true&timeout={timeout}");
    let sent_unix_ms = unix_ms_now();
    let started = Instant::now();
    let answer = http(agent.api, "PUT", &path, text, Duration::from_secs(600));
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (http_status, result, error) = match answer {
        Ok((code, body)) => match serde_json::from_str::<Value>(&body) {
            Ok(v) => (Some(code), Some(v), None),
            Err(e) => (Some(code), None, Some(format!("not JSON ({e}): {body}"))),
        },
        Err(e) => (None, None, Some(format!("{e:#}"))),
    };
    Put {
        coordinator: agent.name.clone(),
        http_status,
        result,
        error,
        sent_unix_ms,
        started,
        wall_ms,
    }
}

/// After an answer: sweeps until every node is at `version` or later with
/// its lock free. Returns (ms from the request to the sweep that found
/// them all, ms from the request to the last node's install, sweeps,
/// install errors), or `None` after [`SETTLE_DEADLINE`].
fn wait_installed(
    apis: &[SocketAddr],
    names: &[String],
    version: u64,
    sent: &Put,
    args: &ApplyArgs,
) -> Option<(f64, Option<f64>, usize, Vec<String>)> {
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut sweeps = 0;
    loop {
        let views = sweep(apis, args.poll_threads, node_view);
        sweeps += 1;
        if views.iter().all(|v| settled(v, version)) {
            let seen_ms = sent.started.elapsed().as_secs_f64() * 1000.0;
            // Only installs of exactly this version say when it landed.
            let at: Vec<f64> = views
                .iter()
                .flatten()
                .filter(|v| v.install_version == Some(version))
                .filter_map(|v| v.install_at_ms)
                .collect();
            let installed_ms = (at.len() == views.len())
                .then(|| at.iter().copied().fold(f64::MIN, f64::max) - sent.sent_unix_ms);
            let errors = views
                .iter()
                .zip(names)
                .filter_map(|(v, n)| Some(format!("{n}: {}", v.as_ref()?.install_error.as_ref()?)))
                .collect();
            return Some((seen_ms, installed_ms, sweeps, errors));
        }
        if Instant::now() > deadline {
            let behind: Vec<String> = views
                .iter()
                .zip(names)
                .filter(|(v, _)| !settled(v, version))
                .map(|(v, n)| format!("{n}: {v:?}"))
                .take(10)
                .collect();
            eprintln!(
                "bench: not every node at version {version} within {} s: {}",
                SETTLE_DEADLINE.as_secs(),
                behind.join("; ")
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(args.poll_ms));
    }
}

/// Where the CPU went over a window of `seconds` holding `applies`
/// applies, from two [`cpu_ticks`].
fn cpu_report(
    before: (u64, u64, u64),
    after: (u64, u64, u64),
    seconds: f64,
    applies: usize,
) -> Value {
    let s = |a: u64, b: u64| a.saturating_sub(b) as f64 / common::TICKS_PER_SECOND;
    let (machine, agents, me) = (
        s(after.0, before.0),
        s(after.1, before.1),
        s(after.2, before.2),
    );
    json!({
        "window_s": seconds,
        "agents_cpu_s": agents,
        "agents_cpu_s_per_apply": agents / applies.max(1) as f64,
        "agents_cores": agents / seconds,
        "bench_cpu_s": me,
        "other_processes_cores": ((machine - agents - me) / seconds).max(0.0),
        "machine_busy_cores": machine / seconds,
    })
}

/// `12.3` for a figure, `-` for none (stderr).
fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

pub fn apply(args: ApplyArgs, root: &Path) -> anyhow::Result<()> {
    let cohort = common::cohort_binary(args.cohort.as_deref())?;
    if args.nodes < 1 || args.runs + args.in_a_row == 0 {
        bail!("need at least 1 node and at least one apply");
    }
    if args.wave == 0 {
        bail!("--wave must be at least 1");
    }
    common::run_in(root, args.keep, || run(&args, &cohort, root))
}

fn run(args: &ApplyArgs, cohort: &Path, root: &Path) -> anyhow::Result<Value> {
    let loadavg_at_start = common::loadavg();
    common::write_gossip_key(root)?;
    // Writes over TCP need the API token (reads on loopback do not).
    let token = root.join("api.token");
    fs::write(&token, format!("{API_TOKEN}\n"))?;
    fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;

    // Every port first: the topology names them all.
    let mut taken = BTreeSet::new();
    let mut model = Model {
        nodes: Vec::new(),
        http: Vec::new(),
        comment: format!("cohort bench apply: {} nodes, first version", args.nodes),
    };
    let mut apis = Vec::new();
    for i in 1..=args.nodes {
        let bind = SocketAddr::from(([127, 0, 0, 1], common::free_port(&mut taken)?));
        apis.push(SocketAddr::from((
            [127, 0, 0, 1],
            common::free_port(&mut taken)?,
        )));
        model.nodes.push((format!("n{i}"), bind));
        model.http.push(common::free_port(&mut taken)?);
    }
    let names: Vec<String> = model.nodes.iter().map(|(n, _)| n.clone()).collect();
    let seed = model.nodes[0].1;
    let first_text = model.text();

    let mut agents: Vec<Agent> = Vec::new();
    for (i, (name, bind)) in model.nodes.iter().enumerate() {
        let dir = root.join(name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("topology.yaml"), &first_text)?;
        let join = if i == 0 {
            String::new()
        } else {
            seed.to_string()
        };
        let config = format!(
            "node: {name}\ncluster: bench\nbind: {bind}\ndata_dir: {data}\ntopology: {topology}\njoin: [{join}]\n\
             gossip: {{ key_file: {key} }}\napi: {{ http: {api}, socket: null, token_file: {token} }}\nlog: {{ level: {level}, format: text }}\n",
            data = dir.join("data").display(),
            topology = dir.join("topology.yaml").display(),
            key = root.join("gossip.key").display(),
            token = root.join("api.token").display(),
            api = apis[i],
            level = args.log_level,
        );
        fs::write(dir.join("cohort.yaml"), config)?;
        let child = common::spawn_agent(cohort, &dir)?;
        agents.push(Agent {
            name: name.clone(),
            api: apis[i],
            child,
        });
        // The seed alone, then waves: each joined before the next starts.
        let wave_ends = i == 0 || i % args.wave == 0;
        if wave_ends && i + 1 < model.nodes.len() {
            let first = if i == 0 { 0 } else { i + 1 - args.wave };
            let min_alive = if i == 0 { 1 } else { 2 };
            common::wait_joined(&apis[first..=i], min_alive, common::alive_members, || {
                check_alive(&mut agents, root)
            })?;
        }
    }
    let last_started = Instant::now();
    eprintln!(
        "bench: {} agents started in waves of {} ({} replica sets); waiting for full membership",
        args.nodes,
        args.wave,
        args.nodes.div_ceil(3)
    );

    // Boot: full membership, then one committed version everywhere, lock free.
    // Each agent polled (its /metrics) until it first lists all N alive:
    // until 1f311d0 the bench read the whole member table (JSON, a row per
    // member) of all N agents every 200 ms, a load of its own on the agents
    // while they start.
    let deadline = last_started + BOOT_DEADLINE;
    let mut pending: Vec<SocketAddr> = apis.clone();
    while !pending.is_empty() {
        check_alive(&mut agents, root)?;
        let alive = sweep(&pending, args.poll_threads, common::alive_members);
        pending = pending
            .iter()
            .zip(alive)
            .filter(|(_, alive)| *alive != Some(args.nodes as u64))
            .map(|(api, _)| *api)
            .collect();
        if Instant::now() > deadline {
            bail!(
                "no full membership within {} s ({} agents short of it)",
                BOOT_DEADLINE.as_secs(),
                pending.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let membership_s = last_started.elapsed().as_secs_f64();
    eprintln!("bench: full membership {membership_s:.2} s after the last start; waiting for the boot apply");
    let boot_version = loop {
        check_alive(&mut agents, root)?;
        let views = sweep(&apis, args.poll_threads, node_view);
        let first = views.first().cloned().flatten();
        if let Some(v) = first.as_ref().and_then(|f| f.version) {
            let same = views.iter().all(|w| {
                w.as_ref().is_some_and(|w| {
                    w.version == Some(v) && w.hash == first.as_ref().map_or("", |f| f.hash.as_str())
                })
            });
            if same && views.iter().all(|w| settled(w, v)) {
                break v;
            }
        }
        if Instant::now() > deadline {
            let versions: Vec<String> = views
                .iter()
                .zip(&names)
                .map(|(v, n)| {
                    format!(
                        "{n}={:?}/{}",
                        v.as_ref().and_then(|v| v.version),
                        v.as_ref().map_or("?", |v| v.lock.as_str())
                    )
                })
                .collect();
            bail!(
                "the nodes did not settle on one version within {} s: {}",
                BOOT_DEADLINE.as_secs(),
                versions.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let boot_s = last_started.elapsed().as_secs_f64();
    eprintln!("bench: every node at version {boot_version}, lock free, {boot_s:.2} s after the last start");

    // The boot apply gave every node a new payload; spreading it is not
    // idle (measured in 5bb444a: a minute at 9x the idle packet rate at
    // 300 agents), so it is waited out and reported on its own.
    let boot_wave = (args.quiet_seconds > 0)
        .then(|| wait_gossip_quiet(&mut agents, root, &apis, args))
        .transpose()?;
    if let Some(wave) = &boot_wave {
        eprintln!(
            "bench: gossip quiet after the boot apply: {} (agents {:.2} cores meanwhile)",
            wave["quiet_after_s"].as_f64().map_or_else(
                || format!("not within {} s", args.quiet_seconds),
                |s| format!("{s:.1} s")
            ),
            wave["nodes"].as_f64().unwrap_or(0.0)
        );
    }

    // Idle with the topology committed: what each agent costs when nothing
    // happens, to set beside the membership bench's agents (no topology).
    let idle_cpu = (args.idle_seconds > 0).then(|| {
        let (before, started) = (cpu_ticks(&agents), Instant::now());
        std::thread::sleep(Duration::from_secs(args.idle_seconds));
        let window = started.elapsed().as_secs_f64();
        let mut report = common::cores(before, cpu_ticks(&agents), window);
        let per_agent = report["nodes"].as_f64().unwrap_or(0.0) / args.nodes as f64;
        report["window_s"] = json!(window);
        report["agent_core_percent_each"] = json!(per_agent * 100.0);
        eprintln!(
            "bench: idle {} s: {:.3} % of a core per agent, machine {:.2} cores busy",
            args.idle_seconds,
            per_agent * 100.0,
            report["machine_busy"].as_f64().unwrap_or(0.0)
        );
        report
    });

    let mut change = 0usize;
    let mut failures: Vec<Value> = Vec::new();
    // The next change on the committed model: a comment naming it, and the
    // http port of a node N/2 away from the coordinator moved to a free port.
    let mut propose = |model: &Model, coordinator: usize, taken: &mut BTreeSet<u16>| {
        change += 1;
        let mover = (coordinator + args.nodes / 2) % args.nodes;
        let port = common::free_port(taken)?;
        let mut next = model.clone();
        next.comment = format!(
            "cohort bench apply: change {change}, {} http {} -> {port}",
            model.nodes[mover].0, model.http[mover]
        );
        next.http[mover] = port;
        anyhow::Ok((next, format!("change {change}")))
    };

    // Measured applies, one at a time, each after the gossip of the one
    // before went quiet; the CPU is counted from each request until every
    // node installed it, the gossip wave after it on its own.
    let stride = (args.nodes / args.runs.max(1)).max(1);
    // CPU ticks (machine, agents, bench) and seconds, summed over the runs.
    let (mut runs_ticks, mut runs_seconds) = ((0, 0, 0), 0.0);
    let mut waves = Vec::new();
    let mut wall = Vec::new();
    let (mut resolve, mut prepare, mut commit) = (Vec::new(), Vec::new(), Vec::new());
    let (mut all_installed, mut all_seen) = (Vec::new(), Vec::new());
    let mut per_run = Vec::new();
    let mut install_errors = Vec::new();
    for r in 0..args.runs {
        check_alive(&mut agents, root)?;
        let coordinator = (r * stride) % args.nodes;
        let (next, label) = propose(&model, coordinator, &mut taken)?;
        let (cpu_before, started) = (cpu_ticks(&agents), Instant::now());
        let sent = put(&agents[coordinator], &next.text(), &args.timeout);
        let Some(version) = sent.committed_version() else {
            eprintln!(
                "bench: run {} ({label}) failed: {}",
                r + 1,
                sent.failure(r + 1)
            );
            failures.push(json!({ "phase": "runs", "failure": sent.failure(r + 1) }));
            continue;
        };
        model = next;
        wall.push(sent.wall_ms);
        resolve.extend(sent.timing("resolve_ms"));
        prepare.extend(sent.timing("prepare_ms"));
        commit.extend(sent.timing("commit_ms"));
        let finished = sent.result.as_ref().and_then(|r| r["finished"].as_bool());
        let settled = wait_installed(&apis, &names, version, &sent, args);
        let cpu_after = cpu_ticks(&agents);
        let spent = |after: u64, before: u64| after.saturating_sub(before);
        runs_ticks.0 += spent(cpu_after.0, cpu_before.0);
        runs_ticks.1 += spent(cpu_after.1, cpu_before.1);
        runs_ticks.2 += spent(cpu_after.2, cpu_before.2);
        runs_seconds += started.elapsed().as_secs_f64();
        let (seen_ms, installed_ms, sweeps) = match &settled {
            Some((seen, installed, sweeps, errors)) => {
                all_seen.push(*seen);
                all_installed.extend(*installed);
                install_errors.extend(errors.iter().cloned());
                (Some(*seen), *installed, Some(*sweeps))
            }
            None => (None, None, None),
        };
        eprintln!(
            "bench: run {} ({label}, coordinator {}): version {version}, wall {:.1} ms (resolve {} / prepare {} / commit {}), all installed {} ms",
            r + 1,
            sent.coordinator,
            sent.wall_ms,
            ms(sent.timing("resolve_ms")),
            ms(sent.timing("prepare_ms")),
            ms(sent.timing("commit_ms")),
            ms(installed_ms),
        );
        per_run.push(json!({
            "coordinator": sent.coordinator,
            "version": version,
            "finished": finished,
            "wall_ms": round1(sent.wall_ms),
            "resolve_ms": sent.timing("resolve_ms").map(round1),
            "prepare_ms": sent.timing("prepare_ms").map(round1),
            "commit_ms": sent.timing("commit_ms").map(round1),
            "all_installed_ms": installed_ms.map(round1),
            "all_seen_ms": seen_ms.map(round1),
            "sweeps": sweeps,
        }));
        if args.quiet_seconds > 0 {
            let wave = wait_gossip_quiet(&mut agents, root, &apis, args)?;
            eprintln!(
                "bench: run {}: gossip quiet {} s later (agents {:.2} cores meanwhile)",
                r + 1,
                wave["waited_s"].as_f64().unwrap_or(0.0),
                wave["nodes"].as_f64().unwrap_or(0.0)
            );
            waves.push(wave);
        }
    }

    let runs_cpu = cpu_report((0, 0, 0), runs_ticks, runs_seconds.max(0.001), wall.len());
    let gossip_waves = json!({
        "how_measured": "after the boot apply and after each measured run: every agent's /metrics swept each second until cohort_gossip_pending_updates is 0 on all (quiet_after_s; null when --quiet-seconds passed first); nodes/machine_busy: cores over that wait",
        "after_boot": boot_wave,
        "after_runs_quiet_s": spread(&waves.iter().filter_map(|w| w["quiet_after_s"].as_f64()).collect::<Vec<_>>()),
        "after_runs_agents_cores": spread(&waves.iter().filter_map(|w| w["nodes"].as_f64()).collect::<Vec<_>>()),
        "after_runs_not_quiet": waves.iter().filter(|w| w["quiet_after_s"].is_null()).count(),
    });

    // Back to back.
    let mut row = json!(null);
    if args.in_a_row > 0 {
        let (mut walls, mut walls_committed) = (Vec::new(), Vec::new());
        let (mut r_resolve, mut r_prepare, mut r_commit) = (Vec::new(), Vec::new(), Vec::new());
        let mut committed = 0usize;
        let mut unfinished = 0usize;
        let mut last_version = None;
        let mut row_failures = 0usize;
        eprintln!("bench: {} applies in a row", args.in_a_row);
        let (row_cpu, started) = (cpu_ticks(&agents), Instant::now());
        for k in 0..args.in_a_row {
            let coordinator = (args.runs + k) % args.nodes;
            let (next, _) = propose(&model, coordinator, &mut taken)?;
            let sent = put(&agents[coordinator], &next.text(), &args.timeout);
            walls.push(sent.wall_ms);
            match sent.committed_version() {
                Some(version) => {
                    committed += 1;
                    walls_committed.push(sent.wall_ms);
                    last_version = Some(version);
                    model = next;
                    if sent.result.as_ref().and_then(|r| r["finished"].as_bool()) != Some(true) {
                        unfinished += 1;
                    }
                    r_resolve.extend(sent.timing("resolve_ms"));
                    r_prepare.extend(sent.timing("prepare_ms"));
                    r_commit.extend(sent.timing("commit_ms"));
                }
                None => {
                    row_failures += 1;
                    eprintln!(
                        "bench: in a row, apply {} failed: {}",
                        k + 1,
                        sent.failure(k + 1)
                    );
                    failures.push(json!({ "phase": "in_a_row", "failure": sent.failure(k + 1) }));
                    check_alive(&mut agents, root)?;
                }
            }
        }
        let total_s = started.elapsed().as_secs_f64();
        let row_cpu = cpu_report(row_cpu, cpu_ticks(&agents), total_s, args.in_a_row);
        let settle = last_version.and_then(|v| {
            let last = Put {
                coordinator: String::new(),
                http_status: None,
                result: None,
                error: None,
                sent_unix_ms: unix_ms_now(),
                started: Instant::now(),
                wall_ms: 0.0,
            };
            wait_installed(&apis, &names, v, &last, args)
        });
        eprintln!(
            "bench: in a row: {committed} of {} committed ({unfinished} without every acknowledgement), {row_failures} failed, {total_s:.1} s; wall median {} ms, p99 {} ms",
            args.in_a_row,
            ms(percentile(&walls, 0.5)),
            ms(percentile(&walls, 0.99)),
        );
        let mut wall_summary = spread(&walls);
        wall_summary["p99"] = json!(percentile(&walls, 0.99));
        row = json!({
            "applies": args.in_a_row,
            "committed": committed,
            "committed_without_every_ack": unfinished,
            "failed": row_failures,
            "total_s": total_s,
            "applies_per_s": args.in_a_row as f64 / total_s,
            "cpu": row_cpu,
            "wall_ms": wall_summary,
            "wall_ms_committed": {
                "median": percentile(&walls_committed, 0.5),
                "p99": percentile(&walls_committed, 0.99),
                "max": percentile(&walls_committed, 1.0),
            },
            "resolve_ms": spread(&r_resolve),
            "prepare_ms": spread(&r_prepare),
            "commit_ms": spread(&r_commit),
            "last_version": last_version,
            "every_node_at_last_version_after_ms": settle.as_ref().map(|s| round1(s.0)),
            "wall_ms_each": walls.iter().map(|w| round1(*w)).collect::<Vec<f64>>(),
        });
    }

    // The end: one version, one hash everywhere?
    let views = sweep(&apis, args.poll_threads, node_view);
    let final_versions: BTreeSet<String> = views
        .iter()
        .map(|v| {
            v.as_ref().map_or("unreachable".into(), |v| {
                format!(
                    "version {} hash {}",
                    v.version.map_or("none".into(), |v| v.to_string()),
                    &v.hash[..v.hash.len().min(12)]
                )
            })
        })
        .collect();
    let agent_log = log_lines(names.iter().map(|n| (n, root.join(n))));
    drop(agents);

    let wall_summary = spread(&wall);
    let mut report = json!({
        "scenario": "apply",
        "nodes": args.nodes,
        "replicasets": args.nodes.div_ceil(3),
        "runs": args.runs,
        "in_a_row": args.in_a_row,
        "timeout": args.timeout,
        "change": "a comment line naming the change, and one node's http port moved to a free port (the http role of that node rebinds)",
        "coordinator": "rotates: measured run r on node r*max(1, N/runs), in a row apply k on node runs+k (mod N)",
        "how_measured": format!(
            "wall_ms: client side, the PUT /v1/topology?wait=true written -> its answer read (HTTP/1.0, a new connection each); resolve/prepare/commit_ms: the coordinator's `timings`; all_installed_ms: request -> the latest `apply.install.at_ms` (ms, server clock = client clock, one machine) of the N nodes; all_seen_ms: request -> end of the first status sweep, started after the answer, that found every node at the version with its lock free (sweeps: {} threads each asking N/{} nodes one after another, {} ms apart); nothing polls while a PUT runs; cpu: /proc ticks (10 ms) of the agents, of the bench and of the whole machine over each window (the measured window is each run's request until every node installed it, summed, sweeps included; the in-a-row one has no sweeps), other_processes_cores = machine - agents - bench",
            args.poll_threads, args.poll_threads, args.poll_ms
        ),
        "loadavg_at_start": loadavg_at_start,
        "boot": {
            "how_measured": "membership_s: last start -> every agent has listed all N alive (its /metrics polled until it first did); first_version_everywhere_s: last start -> one committed version on every node, lock free (/v1/status)",
            "membership_s": membership_s,
            "first_version_everywhere_s": boot_s,
            "version": boot_version,
        },
        "gossip_waves": gossip_waves,
        "idle_cpu": idle_cpu,
        "loadavg_at_end": common::loadavg(),
        "measured": {
            "cpu": runs_cpu,
            "committed": wall.len(),
            "wall_ms": wall_summary,
            "resolve_ms": spread(&resolve),
            "prepare_ms": spread(&prepare),
            "commit_ms": spread(&commit),
            "all_installed_ms": spread(&all_installed),
            "all_seen_ms": spread(&all_seen),
            "each": per_run,
        },
        "in_a_row_result": row,
        "failures": failures,
        "install_errors": install_errors,
        "final_versions": final_versions,
        "agent_log": agent_log,
    });
    if args.in_a_row == 0 {
        if let Some(o) = report.as_object_mut() {
            o.remove("in_a_row_result");
        }
    }
    eprintln!(
        "bench: {} nodes: wall median {} ms (min {}, max {}); all installed median {} ms; {} failure(s); at the end: {}",
        args.nodes,
        ms(percentile(&wall, 0.5)),
        ms(percentile(&wall, 0.0)),
        ms(percentile(&wall, 1.0)),
        ms(percentile(&all_installed, 0.5)),
        report["failures"].as_array().map_or(0, Vec::len),
        final_versions.iter().cloned().collect::<Vec<_>>().join("; "),
    );
    Ok(report)
}
