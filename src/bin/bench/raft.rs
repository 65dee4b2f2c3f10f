//! `raft`: N agents (`cohort agent`, found next to this binary) sharing
//! one topology with failover mode `raft`: the first V nodes `election:
//! candidate`, the others `off`, in ⌈N/`--set-size`⌉ replica sets dealt
//! round-robin (n1 to set-1, n2 to set-2, …), each set's first master the
//! first of its nodes: the sets headed by n1..nV have a voter as master,
//! the others a node outside the group, and a set's master alternates
//! between the two as it is killed. Waits until every node lists all N
//! alive and every node's `GET /v1/leaders` names the same leader, V
//! voters and the same master for every set. Then:
//!
//! - *leader failover* ×K: SIGKILL the leader; time from the kill until
//!   every live node's `/v1/leaders` names the same new leader (every live
//!   node polled on a thread of its own, every `--poll-ms`, over a kept-alive
//!   connection; a node's time is the answer that first showed the value it
//!   still shows when all agree). Then restart the killed node (same data
//!   dir) and wait until the group is whole again: all N alive everywhere,
//!   one leader named by every node, V voters, every voter a leader or a
//!   follower, one set of masters everywhere.
//! - *master failover* ×K: SIGKILL the master of a set whose master is not
//!   the leader (the sets in turn); time from the kill until every live node
//!   shows the same new master (node and fencing generation) for the set.
//!   The leader's `/v1/events` stream gives when the leader's SWIM suspected
//!   and declared the victim dead (the leader appoints only on a dead
//!   declaration), which splits the figure into SWIM detection and Raft
//!   (appointment, commit, spreading to every node). Restart; wait until the
//!   group is whole and the old master is seen alive everywhere.
//!
//! Every node the bench starts is stopped on every exit path (see
//! `common::spawn`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::common::{
    self, cpu_ticks, log_lines, percentile, round1, spread, sweep, unix_ms_now, Agent,
};

#[derive(clap::Args)]
pub struct RaftArgs {
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// The first this many nodes are `election: candidate`; the rest `off`.
    #[arg(long, default_value_t = 5)]
    voters: usize,
    /// Leader kills, then as many master kills.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Master kills [default: --kills].
    #[arg(long)]
    master_kills: Option<usize>,
    /// The topology's `failover.election_timeout`.
    #[arg(long, default_value = "1s")]
    election_timeout: String,
    /// Nodes per replica set.
    #[arg(long, default_value_t = 5)]
    set_size: usize,
    /// Pause between two `/v1/leaders` polls of one node while timing.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// The agents' log level (each node logs to its own file).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Keep the scratch dir (configs, data, every agent's log) and say where.
    #[arg(long)]
    keep: bool,
    /// The cohort binary [default: next to this one].
    #[arg(long)]
    cohort: Option<PathBuf>,
}

/// The agents' gossip settings (their defaults, written out).
const PROTOCOL_PERIOD: Duration = Duration::from_secs(1);
const ACK_TIMEOUT: Duration = Duration::from_millis(500);
const SUSPICION_MULTIPLIER: f64 = 4.0;
/// SwimConfig's `suspicion_max_multiplier` (not a node-config setting).
const SUSPICION_MAX_MULTIPLIER: f64 = 6.0;

/// Boot: full membership, then one group with every master.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// One failover, kill → every node agrees.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(120);
/// Restart → the group is whole again.
const WHOLE_DEADLINE: Duration = Duration::from_secs(180);
/// Threads a sweep of every node is split over.
const SWEEP_THREADS: usize = 8;

/// One node of the topology (`ui` lays its cluster out the same way).
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) bind: SocketAddr,
    pub(crate) api: SocketAddr,
    pub(crate) dir: PathBuf,
    pub(crate) voter: bool,
    pub(crate) set: String,
}

/// What the bench reads of one node's `GET /v1/leaders`.
#[derive(Clone, Debug, PartialEq)]
struct View {
    role: String,
    term: u64,
    leader: String,
    voters: usize,
    masters: BTreeMap<String, (String, u64)>,
}

fn view(v: &Value) -> Option<View> {
    let masters = v["masters"]
        .as_object()?
        .iter()
        .map(|(set, m)| {
            (
                set.clone(),
                (
                    m["node"].as_str().unwrap_or("").to_string(),
                    m["generation"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect();
    Some(View {
        role: v["role"].as_str().unwrap_or("").to_string(),
        term: v["term"].as_u64().unwrap_or(0),
        leader: v["leader"]["name"].as_str().unwrap_or("").to_string(),
        voters: v["voters"].as_array().map_or(0, Vec::len),
        masters,
    })
}

/// An HTTP/1.1 connection kept alive between requests (reopened when the
/// server closed it), so that tight polling costs a request, not a
/// connection.
struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, stream: None }
    }

    fn get_json(&mut self, path: &str) -> Option<Value> {
        for _ in 0..2 {
            if self.stream.is_none() {
                let stream =
                    TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                stream.set_nodelay(true).ok()?;
                self.stream = Some(BufReader::new(stream));
            }
            match self.exchange(path) {
                Ok(answer) => return answer,
                Err(_) => self.stream = None,
            }
        }
        None
    }

    /// One request on the open connection: Ok(None) for an answer that is
    /// not a 200 with JSON, Err when the connection is unusable.
    fn exchange(&mut self, path: &str) -> std::io::Result<Option<Value>> {
        let addr = self.addr;
        let reader = self.stream.as_mut().expect("connected");
        write!(
            reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let code = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
        // Without a length (chunked, or close-delimited) the connection
        // cannot be reused: read what there is and drop it.
        let Some(length) = length else {
            return Err(std::io::ErrorKind::InvalidData.into());
        };
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if close {
            self.stream = None;
        }
        Ok((code == "200")
            .then(|| serde_json::from_slice(&body).ok())
            .flatten())
    }
}

/// One request on a new connection (sweeps, rare).
fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    Conn::new(addr).get_json(path)
}

fn leaders_of(api: SocketAddr) -> Option<View> {
    view(&get_json(api, "/v1/leaders")?)
}

pub(crate) fn alive_count(api: SocketAddr) -> Option<usize> {
    let v = get_json(api, "/v1/members")?;
    Some(
        v["members"]
            .as_array()?
            .iter()
            .filter(|m| m["status"] == "alive")
            .count(),
    )
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// What one node showed while a failover was timed.
struct Slot<K> {
    /// The key it shows now (None: the old state, or no answer).
    current: Option<K>,
    /// The answer that first showed `current`.
    since: Instant,
    polls: u64,
}

/// The outcome of one timed failover.
struct Watched<K> {
    killed_at: Instant,
    killed_unix_ms: f64,
    /// When every watched node showed the same key, and that key.
    agreed: Option<(K, Instant)>,
    /// Per watched node: (the key it showed at the end, since when).
    last: Vec<(Option<K>, Instant)>,
    polls: u64,
}

/// Polls `/v1/leaders` of every node in `watched` on a thread each, every
/// `poll`; runs `kill` once every poller has answered once (it returns
/// the instant of the kill); returns once every watched node shows the
/// same `Some(key(view))`, or after [`FAILOVER_DEADLINE`].
fn watch<K: Clone + PartialEq + Send>(
    watched: &[SocketAddr],
    poll: Duration,
    key: impl Fn(&View) -> Option<K> + Sync,
    kill: impl FnOnce() -> Instant,
) -> Watched<K> {
    let start = Instant::now();
    let slots: Mutex<Vec<Slot<K>>> = Mutex::new(
        watched
            .iter()
            .map(|_| Slot {
                current: None,
                since: start,
                polls: 0,
            })
            .collect(),
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for (i, api) in watched.iter().enumerate() {
            let (slots, stop, key) = (&slots, &stop, &key);
            scope.spawn(move || {
                let mut conn = Conn::new(*api);
                while !stop.load(Ordering::Relaxed) {
                    let k = conn
                        .get_json("/v1/leaders")
                        .and_then(|v| view(&v))
                        .and_then(|v| key(&v));
                    let now = Instant::now();
                    {
                        let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
                        let slot = &mut slots[i];
                        if slot.current != k {
                            slot.current = k;
                            slot.since = now;
                        }
                        slot.polls += 1;
                    }
                    std::thread::sleep(poll);
                }
            });
        }
        // Every poller has a connection and an answer before the kill.
        let warm = start + Duration::from_secs(5);
        while Instant::now() < warm {
            let slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            if slots.iter().all(|s| s.polls > 0) {
                break;
            }
            drop(slots);
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed_unix_ms = unix_ms_now();
        let killed_at = kill();
        let deadline = killed_at + FAILOVER_DEADLINE;
        let mut agreed = None;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            let slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            let Some(first) = slots.first().and_then(|s| s.current.clone()) else {
                continue;
            };
            if slots.iter().all(|s| s.current.as_ref() == Some(&first)) {
                let at = slots.iter().map(|s| s.since).max().unwrap_or(killed_at);
                agreed = Some((first, at.max(killed_at)));
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let slots = slots.lock().unwrap_or_else(|p| p.into_inner());
        Watched {
            killed_at,
            killed_unix_ms,
            agreed,
            last: slots
                .iter()
                .map(|s| (s.current.clone(), s.since.max(killed_at)))
                .collect(),
            polls: slots.iter().map(|s| s.polls).sum(),
        }
    })
}

/// Follows a node's `/v1/events` (HTTP/1.0: the stream ends with the
/// connection) on a thread; collects (at_ms, subject, detail) of
/// `member-status` events until [`EventTap::stop`].
struct EventTap {
    stream: Option<TcpStream>,
    thread: Option<std::thread::JoinHandle<Vec<(f64, String, String)>>>,
}

impl EventTap {
    fn start(api: SocketAddr) -> EventTap {
        let Ok(mut stream) = TcpStream::connect_timeout(&api, Duration::from_secs(2)) else {
            return EventTap {
                stream: None,
                thread: None,
            };
        };
        let ok = write!(stream, "GET /v1/events HTTP/1.0\r\nHost: {api}\r\n\r\n").is_ok();
        let (Ok(reader), true) = (stream.try_clone(), ok) else {
            return EventTap {
                stream: None,
                thread: None,
            };
        };
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                if event["kind"] != "member-status" {
                    continue;
                }
                seen.push((
                    event["at_ms"].as_f64().unwrap_or(0.0),
                    event["subject"].as_str().unwrap_or("").to_string(),
                    event["detail"].as_str().unwrap_or("").to_string(),
                ));
            }
            seen
        });
        EventTap {
            stream: Some(stream),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<(f64, String, String)> {
        if let Some(stream) = self.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// `count` nodes on free loopback ports, the first `voters` of them
/// candidates, in sets of `set_size` dealt round-robin: n1..nV head sets
/// 1..V (their first master is a voter), the other sets are headed by off
/// nodes.
pub(crate) fn lay_out(
    count: usize,
    voters: usize,
    set_size: usize,
    root: &Path,
) -> anyhow::Result<Vec<Node>> {
    let sets = count.div_ceil(set_size);
    let mut taken = BTreeSet::new();
    let mut nodes = Vec::new();
    for i in 0..count {
        let name = format!("n{}", i + 1);
        nodes.push(Node {
            bind: SocketAddr::from(([127, 0, 0, 1], common::free_port(&mut taken)?)),
            api: SocketAddr::from(([127, 0, 0, 1], common::free_port(&mut taken)?)),
            dir: root.join(&name),
            name,
            voter: i < voters,
            set: format!("set-{}", i % sets + 1),
        });
    }
    Ok(nodes)
}

pub(crate) fn topology_text(nodes: &[Node], election_timeout: &str) -> String {
    let mut text = format!(
        "cluster: bench\nfailover: {{ mode: raft, election_timeout: {election_timeout} }}\nreplicasets:\n"
    );
    let sets: BTreeSet<&str> = nodes.iter().map(|n| n.set.as_str()).collect();
    let mut sets: Vec<&str> = sets.into_iter().collect();
    sets.sort_by_key(|s| s.trim_start_matches("set-").parse::<usize>().unwrap_or(0));
    for set in sets {
        let _ = writeln!(text, "  {set}:\n    roles: [storage]\n    nodes:");
        for node in nodes.iter().filter(|n| n.set == set) {
            let election = if node.voter { "candidate" } else { "off" };
            let _ = writeln!(
                text,
                "      {}: {{ address: {}, election: {election} }}",
                node.name, node.bind
            );
        }
    }
    text
}

/// Starts (or restarts: same config and data dir, log appended) a node.
fn start(cohort: &Path, node: &Node) -> anyhow::Result<Agent> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node.dir.join("agent.log"))?;
    let child = common::spawn(
        Command::new(cohort)
            .arg("agent")
            .arg("--config")
            .arg(node.dir.join("cohort.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log),
    )
    .with_context(|| format!("cannot start {}", cohort.display()))?;
    Ok(Agent {
        name: node.name.clone(),
        api: node.api,
        child,
    })
}

fn check_running(agents: &mut [Option<Agent>], nodes: &[Node]) -> anyhow::Result<()> {
    for (agent, node) in agents.iter_mut().zip(nodes) {
        let Some(agent) = agent else { continue };
        if let Ok(Some(exit)) = agent.child.try_wait() {
            let log = fs::read_to_string(node.dir.join("agent.log")).unwrap_or_default();
            let tail = common::last_lines(&log, 40);
            bail!(
                "agent {} exited ({exit}); the end of its log:\n{}",
                node.name,
                tail
            );
        }
    }
    Ok(())
}

/// The group as every node sees it, when it is whole: all N alive on
/// every node, one leader named by all, V voters, each voter a leader or
/// a follower, one set of masters (one per set) everywhere. Err says what
/// is missing.
fn whole(nodes: &[Node], voters: usize, sets: usize) -> Result<View, String> {
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    let views = sweep(&apis, SWEEP_THREADS, leaders_of);
    let mut agreed: Option<(&str, &View)> = None;
    for (node, v) in nodes.iter().zip(&views) {
        let Some(v) = v else {
            return Err(format!("{} does not answer /v1/leaders", node.name));
        };
        if v.leader.is_empty() {
            return Err(format!("{} names no leader (role {})", node.name, v.role));
        }
        if v.voters != voters {
            return Err(format!("{} lists {} voters", node.name, v.voters));
        }
        if node.voter && v.role != "leader" && v.role != "follower" {
            return Err(format!("{} is a {}", node.name, v.role));
        }
        if v.masters.len() != sets {
            return Err(format!(
                "{} knows {} masters of {sets}",
                node.name,
                v.masters.len()
            ));
        }
        match agreed {
            None => agreed = Some((&node.name, v)),
            Some((first, a)) if a.leader != v.leader || a.masters != v.masters => {
                return Err(format!(
                    "{first} sees leader {} and masters {:?}; {} sees {} and {:?}",
                    a.leader, a.masters, node.name, v.leader, v.masters
                ));
            }
            Some(_) => {}
        }
    }
    let agreed = agreed.map(|(_, v)| v.clone()).ok_or("no node")?;
    let leader_role = nodes
        .iter()
        .zip(&views)
        .find(|(n, _)| n.name == agreed.leader)
        .and_then(|(_, v)| v.as_ref().map(|v| v.role.clone()));
    if leader_role.as_deref() != Some("leader") {
        return Err(format!(
            "{} is named leader but says {leader_role:?}",
            agreed.leader
        ));
    }
    let alive = sweep(&apis, SWEEP_THREADS, alive_count);
    if let Some((node, count)) = nodes
        .iter()
        .zip(&alive)
        .find(|(_, c)| **c != Some(nodes.len()))
    {
        return Err(format!(
            "{} sees {count:?} of {} alive",
            node.name,
            nodes.len()
        ));
    }
    Ok(agreed)
}

fn wait_whole(
    nodes: &[Node],
    agents: &mut [Option<Agent>],
    voters: usize,
    sets: usize,
    limit: Duration,
) -> anyhow::Result<(View, f64)> {
    let started = Instant::now();
    loop {
        check_running(agents, nodes)?;
        match whole(nodes, voters, sets) {
            Ok(view) => return Ok((view, started.elapsed().as_secs_f64())),
            Err(why) if started.elapsed() > limit => {
                bail!(
                    "the group was not whole within {} s: {why}",
                    limit.as_secs()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn raft(args: RaftArgs, root: &Path) -> anyhow::Result<()> {
    let cohort = common::cohort_binary(args.cohort.as_deref())?;
    if args.voters < 3 || args.voters > args.nodes || args.set_size < 2 {
        bail!("need at least 3 voters, no more voters than nodes, and sets of at least 2");
    }
    if args.nodes.div_ceil(args.set_size) < 2 {
        bail!("need at least two replica sets (one whose master is not the leader)");
    }
    common::run_in(root, args.keep, || run(&args, &cohort, root))
}

fn run(args: &RaftArgs, cohort: &Path, root: &Path) -> anyhow::Result<Value> {
    let loadavg_at_start = common::loadavg();
    common::write_gossip_key(root)?;

    let sets = args.nodes.div_ceil(args.set_size);
    let nodes = lay_out(args.nodes, args.voters, args.set_size, root)?;
    let text = topology_text(&nodes, &args.election_timeout);
    let mut agents: Vec<Option<Agent>> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        fs::create_dir_all(&node.dir)?;
        fs::write(node.dir.join("topology.yaml"), &text)?;
        // Every node joins through n1, and n1 through n2: a node restarted
        // after a kill joins through one that is up (one node is down at
        // a time), rather than waiting to be probed.
        let join = nodes[if i == 0 { 1 } else { 0 }].bind;
        let config = format!(
            "node: {name}\ncluster: bench\nbind: {bind}\ndata_dir: {data}\ntopology: {topology}\njoin: [{join}]\n\
             gossip: {{ key_file: {key}, protocol_period: {period}ms, ack_timeout: {ack}ms }}\n\
             api: {{ http: {api}, socket: null }}\nlog: {{ level: {level}, format: text }}\n",
            name = node.name,
            bind = node.bind,
            data = node.dir.join("data").display(),
            topology = node.dir.join("topology.yaml").display(),
            key = root.join("gossip.key").display(),
            period = PROTOCOL_PERIOD.as_millis(),
            ack = ACK_TIMEOUT.as_millis(),
            api = node.api,
            level = args.log_level,
        );
        fs::write(node.dir.join("cohort.yaml"), config)?;
        agents.push(Some(start(cohort, node)?));
    }
    let last_started = Instant::now();
    eprintln!(
        "bench: {} agents started ({} voters, {sets} replica sets of {}); waiting for full membership",
        args.nodes, args.voters, args.set_size
    );
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    loop {
        check_running(&mut agents, &nodes)?;
        if sweep(&apis, SWEEP_THREADS, alive_count)
            .iter()
            .all(|&n| n == Some(args.nodes))
        {
            break;
        }
        if last_started.elapsed() > BOOT_DEADLINE {
            bail!("no full membership within {} s", BOOT_DEADLINE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let membership_s = last_started.elapsed().as_secs_f64();
    eprintln!(
        "bench: full membership {membership_s:.2} s after the last start; waiting for the group"
    );
    let (mut group, _) = wait_whole(&nodes, &mut agents, args.voters, sets, BOOT_DEADLINE)?;
    let group_s = last_started.elapsed().as_secs_f64();
    eprintln!(
        "bench: one group {group_s:.2} s after the last start: leader {} (term {}), masters {}",
        group.leader,
        group.term,
        group
            .masters
            .iter()
            .map(|(s, (n, g))| format!("{s}={n}/{g}"))
            .collect::<Vec<_>>()
            .join(" ")
    );

    let poll = Duration::from_millis(args.poll_ms);
    let index_of = |name: &str| nodes.iter().position(|n| n.name == name);
    let cpu_start = (cpu_ticks(agents.iter().flatten()), Instant::now());
    let mut failures: Vec<Value> = Vec::new();

    // Leader failover.
    let (mut leader_all, mut leader_elected) = (Vec::new(), Vec::new());
    let (mut leader_voters, mut leader_off) = (Vec::new(), Vec::new());
    let mut leader_each = Vec::new();
    let mut term_jumps = Vec::new();
    for k in 0..args.kills {
        let old = group.clone();
        let Some(victim) = index_of(&old.leader) else {
            bail!("the leader {} is not a node of the topology", old.leader);
        };
        let watched: Vec<usize> = (0..nodes.len()).filter(|&i| i != victim).collect();
        let watched_apis: Vec<SocketAddr> = watched.iter().map(|&i| nodes[i].api).collect();
        let old_leader = old.leader.clone();
        let seen = watch(
            &watched_apis,
            poll,
            |v| {
                (!v.leader.is_empty() && v.leader != old_leader).then(|| (v.leader.clone(), v.term))
            },
            || {
                let at = Instant::now();
                if let Some(agent) = agents[victim].as_mut() {
                    common::stop(&mut agent.child);
                }
                at
            },
        );
        agents[victim] = None;
        let Some(((new_leader, new_term), all_at)) = seen.agreed.clone() else {
            let shown: Vec<String> = watched
                .iter()
                .zip(&seen.last)
                .map(|(&i, (k, _))| format!("{}={k:?}", nodes[i].name))
                .collect();
            eprintln!(
                "bench: leader kill {}: {} killed, no agreement on a new leader within {} s: {}",
                k + 1,
                old_leader,
                FAILOVER_DEADLINE.as_secs(),
                shown.join(" ")
            );
            failures.push(
                json!({ "phase": "leader", "kill": k + 1, "victim": old_leader, "shown": shown }),
            );
            agents[victim] = Some(start(cohort, &nodes[victim])?);
            group = wait_whole(&nodes, &mut agents, args.voters, sets, WHOLE_DEADLINE)?.0;
            continue;
        };
        let all_ms = ms_between(seen.killed_at, all_at);
        let since = |pick: &dyn Fn(usize) -> bool| {
            watched
                .iter()
                .zip(&seen.last)
                .filter(|(&i, _)| pick(i))
                .map(|(_, (_, at))| ms_between(seen.killed_at, *at))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        let elected_ms = since(&|i| nodes[i].name == new_leader);
        let voters_ms = since(&|i| nodes[i].voter);
        let off_ms = since(&|i| !nodes[i].voter);
        leader_all.push(all_ms);
        leader_elected.extend(elected_ms);
        leader_voters.extend(voters_ms);
        leader_off.extend(off_ms);
        term_jumps.push(new_term.saturating_sub(old.term));

        let restarted = Instant::now();
        agents[victim] = Some(start(cohort, &nodes[victim])?);
        let (now, rejoin_s) = wait_whole(&nodes, &mut agents, args.voters, sets, WHOLE_DEADLINE)?;
        let restarted_s = restarted.elapsed().as_secs_f64();
        eprintln!(
            "bench: leader kill {}: {} (term {}) killed; {new_leader} named by every live node after {all_ms:.0} ms (term {new_term}; it named itself after {} ms, voters {} ms, off nodes {} ms); restarted, whole again after {rejoin_s:.1} s",
            k + 1,
            old.leader,
            old.term,
            ms(elected_ms),
            ms(voters_ms),
            ms(off_ms),
        );
        if now.masters != old.masters {
            eprintln!(
                "bench: note: the masters changed meanwhile: {:?} -> {:?}",
                old.masters, now.masters
            );
        }
        leader_each.push(json!({
            "kill": k + 1,
            "victim": old.leader,
            "old_term": old.term,
            "new_leader": new_leader,
            "new_term": new_term,
            "all_ms": round1(all_ms),
            "new_leader_names_itself_ms": elected_ms.map(round1),
            "voters_ms": voters_ms.map(round1),
            "off_nodes_ms": off_ms.map(round1),
            "polls": seen.polls,
            "whole_again_s": round1(restarted_s),
            "masters_changed": now.masters != old.masters,
        }));
        group = now;
    }

    // Master failover: a set whose master is not the leader, the sets in turn.
    let master_kills = args.master_kills.unwrap_or(args.kills);
    let set_names: Vec<String> = (1..=sets).map(|s| format!("set-{s}")).collect();
    let mut next_set = 0usize;
    let (mut master_all, mut master_voters, mut master_off) = (Vec::new(), Vec::new(), Vec::new());
    let (mut swim_suspect, mut swim_dead, mut appointed, mut spread_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut master_each = Vec::new();
    for k in 0..master_kills {
        let old = group.clone();
        let Some(set) = (0..sets)
            .map(|j| &set_names[(next_set + j) % sets])
            .find(|s| old.masters.get(*s).is_some_and(|m| m.0 != old.leader))
            .cloned()
        else {
            bail!("every set's master is the leader?");
        };
        next_set = set_names.iter().position(|s| *s == set).unwrap_or(0) + 1;
        let (victim_name, old_generation) = old.masters[&set].clone();
        let Some(victim) = index_of(&victim_name) else {
            bail!("the master {victim_name} is not a node of the topology");
        };
        let Some(leader) = index_of(&old.leader) else {
            bail!("the leader {} is not a node of the topology", old.leader);
        };
        let watched: Vec<usize> = (0..nodes.len()).filter(|&i| i != victim).collect();
        let watched_apis: Vec<SocketAddr> = watched.iter().map(|&i| nodes[i].api).collect();
        let tap = EventTap::start(nodes[leader].api);
        std::thread::sleep(Duration::from_millis(100));
        let seen = watch(
            &watched_apis,
            poll,
            |v| v.masters.get(&set).filter(|m| m.0 != victim_name).cloned(),
            || {
                let at = Instant::now();
                if let Some(agent) = agents[victim].as_mut() {
                    common::stop(&mut agent.child);
                }
                at
            },
        );
        agents[victim] = None;
        let events = tap.stop();
        let event_ms = |to: &str| {
            events
                .iter()
                .find(|(at, subject, detail)| {
                    subject == &victim_name
                        && detail.ends_with(to)
                        && *at >= seen.killed_unix_ms.floor()
                })
                .map(|(at, _, _)| (at - seen.killed_unix_ms).max(0.0))
        };
        let (suspect_ms, dead_ms) = (event_ms("-> suspect"), event_ms("-> dead"));
        let Some(((new_master, generation), all_at)) = seen.agreed.clone() else {
            let shown: Vec<String> = watched
                .iter()
                .zip(&seen.last)
                .map(|(&i, (k, _))| format!("{}={k:?}", nodes[i].name))
                .collect();
            eprintln!(
                "bench: master kill {}: {victim_name} ({set}) killed, no agreement on a new master within {} s: {}",
                k + 1,
                FAILOVER_DEADLINE.as_secs(),
                shown.join(" ")
            );
            failures.push(json!({ "phase": "master", "kill": k + 1, "set": set, "victim": victim_name, "shown": shown }));
            agents[victim] = Some(start(cohort, &nodes[victim])?);
            group = wait_whole(&nodes, &mut agents, args.voters, sets, WHOLE_DEADLINE)?.0;
            continue;
        };
        let all_ms = ms_between(seen.killed_at, all_at);
        let since = |pick: &dyn Fn(usize) -> bool| {
            watched
                .iter()
                .zip(&seen.last)
                .filter(|(&i, _)| pick(i))
                .map(|(_, (_, at))| ms_between(seen.killed_at, *at))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
        };
        let leader_ms = since(&|i| i == leader);
        let voters_ms = since(&|i| nodes[i].voter);
        let off_ms = since(&|i| !nodes[i].voter);
        master_all.push(all_ms);
        master_voters.extend(voters_ms);
        master_off.extend(off_ms);
        swim_suspect.extend(suspect_ms);
        swim_dead.extend(dead_ms);
        let appoint_ms = leader_ms.zip(dead_ms).map(|(l, d)| l - d);
        appointed.extend(appoint_ms);
        let after_leader = leader_ms.map(|l| all_ms - l);
        spread_ms.extend(after_leader);

        let restarted = Instant::now();
        agents[victim] = Some(start(cohort, &nodes[victim])?);
        let (now, _) = wait_whole(&nodes, &mut agents, args.voters, sets, WHOLE_DEADLINE)?;
        let restarted_s = restarted.elapsed().as_secs_f64();
        eprintln!(
            "bench: master kill {}: {victim_name} ({set}, {}) killed; {new_master} (generation {generation}) shown by every live node after {all_ms:.0} ms; the leader {}: suspected after {} ms, dead after {} ms, showed the new master after {} ms; voters {} ms, off nodes {} ms; restarted, whole again after {restarted_s:.1} s",
            k + 1,
            if nodes[victim].voter { "a voter" } else { "outside the group" },
            old.leader,
            ms(suspect_ms),
            ms(dead_ms),
            ms(leader_ms),
            ms(voters_ms),
            ms(off_ms),
        );
        if now.leader != old.leader {
            eprintln!(
                "bench: note: the leader changed meanwhile: {} -> {}",
                old.leader, now.leader
            );
        }
        master_each.push(json!({
            "kill": k + 1,
            "set": set,
            "victim": victim_name,
            "victim_is_voter": nodes[victim].voter,
            "old_generation": old_generation,
            "new_master": new_master,
            "new_generation": generation,
            "leader": old.leader,
            "all_ms": round1(all_ms),
            "leader_swim_suspect_ms": suspect_ms.map(round1),
            "leader_swim_dead_ms": dead_ms.map(round1),
            "leader_shows_new_master_ms": leader_ms.map(round1),
            "voters_ms": voters_ms.map(round1),
            "off_nodes_ms": off_ms.map(round1),
            "polls": seen.polls,
            "whole_again_s": round1(restarted_s),
            "leader_changed": now.leader != old.leader,
        }));
        group = now;
    }

    let cpu_end = cpu_ticks(agents.iter().flatten());
    let window = cpu_start.1.elapsed().as_secs_f64();
    let secs = |a: u64, b: u64| a.saturating_sub(b) as f64 / common::TICKS_PER_SECOND;
    let (machine, agents_cpu, bench_cpu) = (
        secs(cpu_end.0, cpu_start.0 .0),
        secs(cpu_end.1, cpu_start.0 .1),
        secs(cpu_end.2, cpu_start.0 .2),
    );
    let rss: Vec<f64> = agents
        .iter()
        .flatten()
        .filter_map(|a| common::proc_stat(a.child.id()))
        .map(|(_, kib)| kib as f64 / 1024.0)
        .collect();
    let log = log_lines(nodes.iter().map(|n| (&n.name, &n.dir)));
    drop(agents);

    let n = args.nodes as f64;
    let scale = n.log10().max(1.0);
    let period_s = PROTOCOL_PERIOD.as_secs_f64();
    let report = json!({
        "scenario": "raft",
        "nodes": args.nodes,
        "voters": args.voters,
        "replicasets": sets,
        "set_size": args.set_size,
        "kills": args.kills,
        "master_kills": master_kills,
        "election_timeout": args.election_timeout,
        "poll_ms": args.poll_ms,
        "gossip": {
            "protocol_period": format!("{}ms", PROTOCOL_PERIOD.as_millis()),
            "ack_timeout": format!("{}ms", ACK_TIMEOUT.as_millis()),
            "suspicion_min_s": SUSPICION_MULTIPLIER * scale * period_s,
            "suspicion_max_s": SUSPICION_MAX_MULTIPLIER * scale * period_s,
        },
        "how_measured": "SIGKILL -> every live node's GET /v1/leaders (each polled on a thread of its own over a kept-alive HTTP/1.1 connection, poll_ms between answers) shows the same new value; a node's time is the answer that first showed the value it still showed when all agreed. Leader: the new leader's name. Master: the set's new master (node, generation); the set is one whose master is not the leader, the sets in turn. leader_swim_*: member-status events of the victim on the leader's GET /v1/events (the node's own at_ms). After each kill the node is restarted (same data dir) and the next kill waits until all N are alive on every node, every node names one leader, V voters, one set of masters.",
        "loadavg_at_start": loadavg_at_start,
        "loadavg_at_end": common::loadavg(),
        "boot": { "membership_s": membership_s, "group_s": group_s },
        "leader_failover_ms": spread(&leader_all),
        "leader_failover": {
            "new_leader_names_itself_ms": spread(&leader_elected),
            "every_voter_ms": spread(&leader_voters),
            "every_off_node_ms": spread(&leader_off),
            "term_jumps": term_jumps,
            "each": leader_each,
        },
        "master_failover_ms": spread(&master_all),
        "master_failover": {
            "leader_swim_suspect_ms": spread(&swim_suspect),
            "leader_swim_dead_ms": spread(&swim_dead),
            "leader_dead_to_leader_shows_new_master_ms": spread(&appointed),
            "leader_shows_to_every_node_ms": spread(&spread_ms),
            "every_voter_ms": spread(&master_voters),
            "every_off_node_ms": spread(&master_off),
            "each": master_each,
        },
        "failures": failures,
        "cpu": {
            "window_s": window,
            "agents_cores": agents_cpu / window,
            "bench_cores": bench_cpu / window,
            "machine_busy_cores": machine / window,
            "other_processes_cores": ((machine - agents_cpu - bench_cpu) / window).max(0.0),
        },
        "agent_rss_mib": { "median": percentile(&rss, 0.5), "max": percentile(&rss, 1.0) },
        "agent_log": log,
    });
    eprintln!(
        "bench: {} nodes, {} voters: leader failover median {} ms, p99 {} ms (min {}, max {}); master failover median {} ms, p99 {} ms (min {}, max {}), of which the leader's SWIM dead declaration median {} ms; {} failure(s)",
        args.nodes,
        args.voters,
        ms(percentile(&leader_all, 0.5)),
        ms(percentile(&leader_all, 0.99)),
        ms(percentile(&leader_all, 0.0)),
        ms(percentile(&leader_all, 1.0)),
        ms(percentile(&master_all, 0.5)),
        ms(percentile(&master_all, 0.99)),
        ms(percentile(&master_all, 0.0)),
        ms(percentile(&master_all, 1.0)),
        ms(percentile(&swim_dead, 0.5)),
        report["failures"].as_array().map_or(0, Vec::len),
    );
    Ok(report)
}
