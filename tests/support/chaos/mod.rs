//! The chaos suite's harness. A schedule (`schedule.rs`, a pure function
//! of a seed) is played on real agents, each in a network namespace of its
//! own on one bridge (`support/hosts.rs`), each linked to the bridge by a
//! userspace wire that can lose, delay, duplicate and reorder frames
//! (`wire.rs`), with nftables for partitions, signals for SIGKILL and
//! SIGSTOP/SIGCONT, and a 4 MiB tmpfs as every data dir, which the test
//! fills. Meanwhile a client keeps applying topology changes through
//! `cohort apply --wait` and observers read every node's status every
//! 200 ms; after the heal and a settle deadline the invariants of
//! `check.rs` are checked over all of it.
//!
//! Test files include it with `#[path = "support/chaos/mod.rs"] mod chaos;`
//! next to `mod support;` and `#[path = "support/hosts.rs"] mod hosts;`.
#![allow(dead_code)]

pub mod check;
pub mod schedule;
pub mod sys;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hosts::Hosts;
use crate::support::{bearer, exchange, masters_of, signal_pid, wait_until};
use check::{Apply, Final, Obs, Outcome, Record};
use schedule::{Action, Kind, Profile, Rng, Schedule};
use wire::Wire;

/// The longest a cluster may take to form, or an agent to answer after a
/// start: only reached when something is broken.
const WAIT: Duration = Duration::from_secs(60);
/// After the heal, how long the nodes get to agree again.
const SETTLE: Duration = Duration::from_secs(60);
/// Size of each data dir's tmpfs.
const DISK: &str = "4m";
/// Between two status reads of one node.
const OBSERVE_EVERY: Duration = Duration::from_millis(200);
/// What `cohort apply --wait` is given; its CLI waits 10 s more.
const APPLY_TIMEOUT: &str = "10s";

/// Whether this machine can run the suite: root, TUN, iproute2, nftables.
/// When it cannot, the reason; the caller skips unless
/// `COHORT_REQUIRE_CHAOS=1`.
pub fn unavailable() -> Option<String> {
    if !sys::is_root() {
        return Some("it needs root (network namespaces, TAP devices, tmpfs mounts)".into());
    }
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        return Some(format!("it needs /dev/net/tun (CONFIG_TUN): {e}"));
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables"), ("mount", "mount")] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
            || Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("it needs `{tool}` (apt-get install {package})"));
        }
    }
    None
}

/// True when the suite may run here; prints why not and returns false
/// (or panics, with `COHORT_REQUIRE_CHAOS=1`) when it cannot.
pub fn ready() -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    if std::env::var("COHORT_REQUIRE_CHAOS").as_deref() == Ok("1") {
        panic!("the chaos suite cannot run and COHORT_REQUIRE_CHAOS=1: {why}");
    }
    eprintln!("skipped: the chaos suite cannot run here: {why}");
    false
}

/// A seed as written by the suite (`0x…`) or in decimal.
pub fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A seed nobody chose: the clock and the pid, mixed.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
}

/// The command that plays `seed` again.
pub fn replay_command(seed: u64, profile: Profile) -> String {
    let release = match profile {
        Profile::Short => "",
        Profile::Long => " --release",
    };
    format!(
        "CHAOS_SEED={seed:#x} CHAOS_PROFILE={} cargo test{release} --test chaos -- --ignored --exact replay --nocapture",
        profile.name()
    )
}

/// The hosts `n1`… with their wires and tmpfs data dirs, a topology of
/// replica sets of up to three, failover by Raft.
pub struct Cluster {
    pub hosts: Hosts,
    wires: Vec<Wire>,
    mounted: Vec<PathBuf>,
    /// (from, to): packets from `from` are dropped at `to`.
    blocked: Mutex<BTreeSet<(usize, usize)>>,
    /// Killed or stopped, for the client to pass over.
    down: Mutex<BTreeSet<usize>>,
    stopped: Mutex<BTreeSet<usize>>,
    /// The replica sets and their hosts.
    sets: Vec<(String, Vec<usize>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// `nodes` hosts, their links made wires seeded from `seed`, their data
    /// dirs small tmpfs mounts, and the topology file written; no agent
    /// started.
    pub fn new(tag: &str, nodes: usize, seed: u64) -> Cluster {
        let names: Vec<String> = (1..=nodes).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut cluster = Cluster {
            hosts: Hosts::new(tag, &refs),
            wires: Vec::new(),
            mounted: Vec::new(),
            blocked: Mutex::new(BTreeSet::new()),
            down: Mutex::new(BTreeSet::new()),
            stopped: Mutex::new(BTreeSet::new()),
            sets: sets(nodes),
        };
        for i in 0..nodes {
            // The veth `Hosts` made is swapped for a wire of the same names.
            let dev = format!("v{i}");
            let hub = cluster.hosts.hub();
            hub.ip(&["link", "del", &dev]);
            let host = &cluster.hosts.hosts[i];
            let wire = Wire::new(&host.netns().name, &hub.name, &dev, seed ^ (i as u64 + 1))
                .unwrap_or_else(|e| panic!("a TAP wire for {}: {e}", host.name));
            cluster.wires.push(wire);
            let ns = host.netns();
            ns.ip(&["addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            hub.ip(&["link", "set", &dev, "master", "br0"]);
            hub.ip(&["link", "set", &dev, "up"]);
            let data = host.dir.join("data");
            fs::create_dir_all(&data).expect("the data dir");
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={DISK},mode=0700")])
                .arg("cohort-chaos")
                .arg(&data)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount a tmpfs on {}: {}",
                data.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            cluster.mounted.push(data);
        }
        cluster.hosts.write_topology(&cluster.topology(""));
        cluster
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// How many nodes are Raft voters (the first five are candidates, the
    /// sixth and seventh voters, the rest outside the group).
    pub fn voters(&self) -> usize {
        self.len().min(7)
    }

    /// The topology, with `tail` appended (the client's changes).
    pub fn topology(&self, tail: &str) -> String {
        let mut text = String::from(
            "cluster: test\nfailover: { mode: raft, election_timeout: 1s }\nreplicasets:\n",
        );
        for (set, members) in &self.sets {
            let names: Vec<&str> = members.iter().map(|&i| self.hosts.name(i)).collect();
            text.push_str(&format!(
                "  {set}:\n    roles: [storage]\n    failover_priority: [{}]\n    nodes:\n",
                names.join(", ")
            ));
            for &i in members {
                let election = match i {
                    0..=4 => "candidate",
                    5 | 6 => "voter",
                    _ => "off",
                };
                text.push_str(&format!(
                    "      {}: {{ address: {}, election: {election} }}\n",
                    self.hosts.name(i),
                    self.hosts.hosts[i].addr()
                ));
            }
        }
        text.push_str(tail);
        text
    }

    /// Starts every agent and waits until the group formed (a leader, every
    /// voter, a master for every set) and every node has the first version.
    pub fn form(&self) {
        self.hosts.start_all(WAIT);
        let all: Vec<usize> = (0..self.len()).collect();
        let sets = self.sets.len();
        self.hosts
            .agreed("the group forms", &all, self.voters(), WAIT, |s| {
                s.masters.len() == sets
            });
        wait_until(WAIT, "one committed version everywhere", || {
            let versions: BTreeSet<Option<(u64, String)>> =
                (0..self.len()).map(|i| self.version(i)).collect();
            (versions.len() == 1 && versions.iter().all(Option::is_some)).then_some(())
        });
    }

    /// `GET path` on host `i`'s API, from inside its namespace, with a
    /// short deadline (a stopped agent must not hold the caller).
    pub fn get(&self, i: usize, path: &str) -> Option<Value> {
        let api = self.hosts.hosts[i].api();
        let path = path.to_string();
        sys::in_netns(&self.hosts.hosts[i].netns().name, move || {
            Ok(get_here(api, &path))
        })
        .ok()
        .flatten()
    }

    /// Host `i`'s committed version and hash.
    pub fn version(&self, i: usize) -> Option<(u64, String)> {
        let status = self.get(i, "/v1/status")?;
        version_of(&status)
    }

    /// Host `i`'s view of every member's status.
    pub fn members(&self, i: usize) -> Option<BTreeMap<String, String>> {
        let members = self.get(i, "/v1/members")?;
        Some(
            members["members"]
                .as_array()?
                .iter()
                .filter_map(|m| {
                    Some((
                        m["name"].as_str()?.to_string(),
                        m["status"].as_str()?.to_string(),
                    ))
                })
                .collect(),
        )
    }

    fn is_down(&self, i: usize) -> bool {
        lock(&self.down).contains(&i)
    }

    /// Carries out one step of a schedule.
    pub fn act(&self, action: &Action) {
        match action {
            Action::Netem { hosts, netem } => {
                for &h in hosts {
                    self.wires[h].set(Some(*netem));
                }
            }
            Action::ClearNetem { hosts } => {
                for &h in hosts {
                    self.wires[h].set(None);
                }
            }
            Action::Partition { side } => {
                let mut blocked = lock(&self.blocked);
                for a in 0..self.len() {
                    for b in 0..self.len() {
                        if side.contains(&a) != side.contains(&b) {
                            blocked.insert((a, b));
                        }
                    }
                }
                self.firewall(&blocked);
            }
            Action::OneWay { from, to } => {
                let mut blocked = lock(&self.blocked);
                for &a in from {
                    for &b in to {
                        blocked.insert((a, b));
                    }
                }
                self.firewall(&blocked);
            }
            Action::HealPartition => {
                let mut blocked = lock(&self.blocked);
                blocked.clear();
                self.firewall(&blocked);
            }
            Action::Kill(h) => {
                lock(&self.down).insert(*h);
                self.hosts.kill(*h);
            }
            Action::Restart(h) => {
                self.hosts.start(*h, WAIT);
                lock(&self.down).remove(h);
            }
            Action::SigStop(h) => {
                lock(&self.down).insert(*h);
                lock(&self.stopped).insert(*h);
                signal_pid(self.pid(*h), sys::SIGSTOP);
            }
            Action::SigCont(h) => {
                signal_pid(self.pid(*h), sys::SIGCONT);
                lock(&self.stopped).remove(h);
                lock(&self.down).remove(h);
            }
            Action::FillDisk(h) => fill(&self.mounted[*h]),
            // The agent retries its failed writes and goes on by itself.
            Action::FreeDisk(h) => {
                let _ = fs::remove_file(self.mounted[*h].join(FILLER));
            }
        }
    }

    fn pid(&self, i: usize) -> i32 {
        self.hosts
            .pid(i)
            .unwrap_or_else(|| panic!("{} has no agent to signal", self.hosts.name(i)))
    }

    /// Writes each host's input filter: packets from the hosts it must not
    /// hear are dropped (loopback, and so its own API, is untouched).
    fn firewall(&self, blocked: &BTreeSet<(usize, usize)>) {
        for to in 0..self.len() {
            let from: Vec<String> = blocked
                .iter()
                .filter(|(_, b)| *b == to)
                .map(|(a, _)| self.hosts.hosts[*a].ip.to_string())
                .collect();
            // `add` then `delete` makes the delete succeed when the table
            // is absent; all in one transaction.
            let mut script =
                String::from("add table inet cohort_chaos\ndelete table inet cohort_chaos\n");
            if !from.is_empty() {
                script.push_str(&format!(
                    "table inet cohort_chaos {{\n  chain input {{ type filter hook input priority -10; policy accept; ip saddr {{ {} }} drop; }}\n}}\n",
                    from.join(", ")
                ));
            }
            self.hosts.hosts[to].netns().nft_script(&script);
        }
    }

    /// Undoes whatever fault is still on (a schedule heals itself; this is
    /// for one that stopped half-way).
    pub fn heal_all(&self) {
        for wire in &self.wires {
            wire.set(None);
        }
        self.act(&Action::HealPartition);
        let stopped: Vec<usize> = lock(&self.stopped).iter().copied().collect();
        for h in stopped {
            self.act(&Action::SigCont(h));
        }
        for h in 0..self.len() {
            let _ = fs::remove_file(self.mounted[h].join(FILLER));
            if !self.hosts.running(h) {
                self.act(&Action::Restart(h));
            }
        }
    }

    /// Bytes used in each data dir's tmpfs.
    pub fn disk_used(&self) -> Vec<u64> {
        self.mounted
            .iter()
            .map(|dir| {
                let out = Command::new("df")
                    .args(["-B1", "--output=used"])
                    .arg(dir)
                    .output();
                out.ok()
                    .and_then(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .nth(1)?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Frames carried by the wires while impaired, and what was done to them.
    pub fn wire_totals(&self) -> Value {
        let mut totals = [0u64; 5];
        for wire in &self.wires {
            let s = wire.stats();
            for (t, c) in
                totals
                    .iter_mut()
                    .zip([&s.frames, &s.lost, &s.duplicated, &s.delayed, &s.reordered])
            {
                *t += c.load(Ordering::Relaxed);
            }
        }
        json!({
            "frames_impaired": totals[0],
            "lost": totals[1],
            "duplicated": totals[2],
            "delayed": totals[3],
            "reordered": totals[4],
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first (a stopped one dies of SIGKILL too), then the
        // mounts they used, then the wires; `Hosts` then removes the
        // namespaces and the files.
        for i in 0..self.hosts.len() {
            if self.hosts.running(i) {
                self.hosts.kill(i);
            }
        }
        for dir in &self.mounted {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
        self.wires.clear();
    }
}

/// Replica sets of up to three nodes, sizes as even as they can be.
fn sets(nodes: usize) -> Vec<(String, Vec<usize>)> {
    let count = nodes.div_ceil(3);
    let mut sets = Vec::new();
    let mut next = 0;
    for s in 0..count {
        let size = nodes / count + usize::from(s < nodes % count);
        sets.push((format!("s{}", s + 1), (next..next + size).collect()));
        next += size;
    }
    sets
}

const FILLER: &str = "chaos-filler";

/// Fills the file system of `dir` to the last byte it takes.
fn fill(dir: &Path) {
    let Ok(mut file) = fs::File::create(dir.join(FILLER)) else {
        return;
    };
    let chunk = vec![0u8; 65_536];
    for size in [65_536, 4_096, 256, 1] {
        while let Ok(n) = file.write(&chunk[..size]) {
            if n == 0 {
                break;
            }
        }
    }
}

/// `GET path` with the tests' token, from the calling thread's namespace.
fn get_here(api: SocketAddr, path: &str) -> Option<Value> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {api}\r\n{}\r\n", bearer());
    match exchange(api, &request, Duration::from_secs(1))? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn version_of(status: &Value) -> Option<(u64, String)> {
    Some((
        status["apply"]["version"].as_u64()?,
        status["apply"]["hash"].as_str()?.to_string(),
    ))
}

/// What one schedule did and found.
pub struct Run {
    pub schedule: Schedule,
    pub record: Record,
    /// Broken invariants with their evidence; a harness failure (a panic
    /// while playing) is one too.
    pub violations: Vec<String>,
    pub formed_ms: u64,
    pub played_ms: u64,
    pub settled_ms: Option<u64>,
    pub wires: Value,
    pub disk_used: Vec<u64>,
    /// The end of every agent's log, kept when something broke.
    pub logs: Vec<(String, String)>,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn applies(&self) -> Value {
        let count =
            |f: fn(&Outcome) -> bool| self.record.applies.iter().filter(|a| f(&a.outcome)).count();
        json!({
            "attempted": self.record.applies.len(),
            "committed": count(|o| matches!(o, Outcome::Committed { .. })),
            "aborted": count(|o| matches!(o, Outcome::Aborted(_))),
            "unknown": count(|o| matches!(o, Outcome::Unknown(_))),
        })
    }

    pub fn summary(&self) -> Value {
        let faults: BTreeMap<&str, usize> = self
            .schedule
            .faults()
            .into_iter()
            .map(|(k, n)| (k.name(), n))
            .collect();
        let final_version = self
            .record
            .last
            .versions
            .values()
            .flatten()
            .map(|(v, _)| *v)
            .max();
        json!({
            "seed": format!("{:#x}", self.schedule.seed),
            "profile": self.schedule.profile.name(),
            "nodes": self.schedule.nodes,
            "faults": faults,
            "applies": self.applies(),
            "observations": self.record.observations.len(),
            "final_version": final_version,
            "formed_ms": self.formed_ms,
            "played_ms": self.played_ms,
            "settled_ms": self.settled_ms,
            "wires": self.wires,
            "disk_used_max": self.disk_used.iter().max(),
            "violations": self.violations.len(),
        })
    }

    /// The failure report: the seed, how to replay it, the schedule, the
    /// evidence, the agents' logs.
    pub fn report(&self) -> String {
        let mut text = format!(
            "CHAOS_SEED={:#x} broke {} invariant(s); replay: {}\n{}\n",
            self.schedule.seed,
            self.violations.len(),
            replay_command(self.schedule.seed, self.schedule.profile),
            self.schedule
        );
        for v in &self.violations {
            text.push_str(&format!("- {v}\n"));
        }
        text.push_str("applies:\n");
        for a in &self.record.applies {
            text.push_str(&format!(
                "  {:>6.1}s via {} text {}: {:?}\n",
                a.at_ms as f64 / 1000.0,
                a.via,
                a.text,
                a.outcome
            ));
        }
        for (node, log) in &self.logs {
            text.push_str(&format!("---- the end of {node}'s log ----\n{log}\n"));
        }
        text
    }
}

/// The client and observers' shared notebook.
struct Notebook {
    start: Instant,
    stop_client: AtomicBool,
    stop_observers: AtomicBool,
    observations: Mutex<Vec<Obs>>,
    applies: Mutex<Vec<Apply>>,
    texts: Mutex<Vec<String>>,
}

impl Notebook {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Tells the client and the observers to stop when dropped.
struct StopOnDrop<'a>(&'a Notebook);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop_client.store(true, Ordering::SeqCst);
        self.0.stop_observers.store(true, Ordering::SeqCst);
    }
}

/// Plays `schedule` on a fresh cluster and checks the invariants; a panic
/// of the harness is reported as a violation, with the seed.
pub fn run(schedule: &Schedule, tag: &str) -> Run {
    eprintln!(
        "CHAOS_SEED={:#x} ({}; replay: {})\n{schedule}",
        schedule.seed,
        schedule.profile.name(),
        replay_command(schedule.seed, schedule.profile)
    );
    let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| play(schedule, tag)));
    match played {
        Ok(run) => run,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Run {
                schedule: schedule.clone(),
                record: Record::default(),
                violations: vec![format!("the harness failed while playing: {why}")],
                formed_ms: 0,
                played_ms: 0,
                settled_ms: None,
                wires: Value::Null,
                disk_used: Vec::new(),
                logs: Vec::new(),
            }
        }
    }
}

fn play(schedule: &Schedule, tag: &str) -> Run {
    debug_assert_eq!(schedule::check(schedule), Ok(()));
    let cluster = Cluster::new(tag, schedule.nodes, schedule.seed);
    let forming = Instant::now();
    cluster.form();
    let formed_ms = forming.elapsed().as_millis() as u64;
    let initial = cluster
        .get(0, "/v1/topology")
        .and_then(|t| t["text"].as_str().map(String::from))
        .expect("the first committed text");
    let notebook = Notebook {
        start: Instant::now(),
        stop_client: AtomicBool::new(false),
        stop_observers: AtomicBool::new(false),
        observations: Mutex::new(Vec::new()),
        applies: Mutex::new(Vec::new()),
        texts: Mutex::new(vec![initial]),
    };
    let (played_ms, settled_ms, last) = std::thread::scope(|scope| {
        // A panic below must still stop the threads, or the scope would
        // wait for them forever.
        let _stop = StopOnDrop(&notebook);
        let observers: Vec<_> = (0..cluster.len())
            .map(|i| {
                scope.spawn({
                    let (cluster, notebook) = (&cluster, &notebook);
                    move || observe(cluster, notebook, i)
                })
            })
            .collect();
        let client = scope.spawn(|| apply_loop(&cluster, &notebook, schedule.seed));
        for step in &schedule.steps {
            // Pacing the schedule, not waiting for a condition: each step
            // happens at its offset whatever the cluster does.
            let due = notebook.start + Duration::from_millis(step.at_ms);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            eprintln!(
                "{:>7.1}s  {}",
                notebook.now_ms() as f64 / 1000.0,
                step.action
            );
            cluster.act(&step.action);
        }
        cluster.heal_all();
        let played_ms = notebook.now_ms();
        notebook.stop_client.store(true, Ordering::SeqCst);
        client.join().expect("the client thread");
        let settling = Instant::now();
        let mut last = settle(&cluster);
        let mut settled_ms = last.settled.then(|| settling.elapsed().as_millis() as u64);
        // (f) The cluster still takes changes: an apply after the heal
        // commits, and then every node has it. Tried again after an abort
        // (another node's topology watcher may apply at the same time).
        let mut after = Vec::new();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let via = attempt % cluster.len();
            let outcome = apply_once(&cluster, &notebook, via, schedule.seed, "20s");
            let done = matches!(outcome, Outcome::Committed { .. });
            after.push(outcome);
            if done {
                last = settle(&cluster);
                if !last.settled {
                    settled_ms = None;
                }
                break;
            }
        }
        last.after_heal = after;
        notebook.stop_observers.store(true, Ordering::SeqCst);
        for o in observers {
            o.join().expect("an observer thread");
        }
        (played_ms, settled_ms, last)
    });
    let record = Record {
        texts: notebook
            .texts
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        applies: notebook
            .applies
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        observations: notebook
            .observations
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        last,
    };
    let violations = check::violations(&record);
    let logs = if violations.is_empty() {
        Vec::new()
    } else {
        (0..cluster.len())
            .map(|i| {
                (
                    cluster.hosts.name(i).to_string(),
                    cluster.hosts.log_tail(i, 60),
                )
            })
            .collect()
    };
    Run {
        schedule: schedule.clone(),
        violations,
        formed_ms,
        played_ms,
        settled_ms,
        wires: cluster.wire_totals(),
        disk_used: cluster.disk_used(),
        logs,
        record,
    }
}

/// Waits until the nodes agree (version, text, Raft group) and see each
/// other alive, at most `SETTLE`: what they say then, or at the deadline.
fn settle(cluster: &Cluster) -> Final {
    let mut last = Final::default();
    let settled = crate::support::wait_until_or(SETTLE, || {
        last = final_state(cluster);
        (check::agreement(&last).is_empty()
            && check::one_group(&last).is_empty()
            && check::alive_everywhere(&last).is_empty()
            && check::locks_released(&last).is_empty())
        .then_some(())
    });
    last.settled = settled.is_some();
    last
}

/// Everything the checks need from the nodes once healed.
fn final_state(cluster: &Cluster) -> Final {
    let mut last = Final::default();
    for i in 0..cluster.len() {
        let name = cluster.hosts.name(i).to_string();
        let status = cluster.get(i, "/v1/status");
        last.versions
            .insert(name.clone(), status.as_ref().and_then(version_of));
        last.locks.insert(
            name.clone(),
            status.as_ref().and_then(|s| {
                let lock = s["apply"]["lock"].as_str()?;
                Some(match s["apply"]["waiting_seconds"].as_u64() {
                    Some(waited) => format!("{lock} ({waited} s)"),
                    None => lock.to_string(),
                })
            }),
        );
        last.raft.insert(
            name.clone(),
            status.as_ref().and_then(|s| {
                let raft = &s["raft"];
                Some((
                    raft["term"].as_u64()?,
                    raft["leader"]["name"].as_str().map(String::from),
                    masters_of(raft)?,
                ))
            }),
        );
        last.texts.insert(
            name.clone(),
            cluster
                .get(i, "/v1/topology")
                .and_then(|t| t["text"].as_str().map(String::from)),
        );
        last.members.insert(name.clone(), cluster.members(i));
        let panics = cluster.hosts.log_lines(i, "panicked");
        if !panics.is_empty() {
            last.panics.insert(name.clone(), panics);
        }
        if let Some(status) = cluster.hosts.exit_status(i) {
            last.exited.insert(name.clone(), status.to_string());
        } else if !cluster.hosts.running(i) {
            last.exited
                .insert(name, "not running after the heal".into());
        }
    }
    last
}

/// Reads host `i`'s status every `OBSERVE_EVERY` from inside its
/// namespace until told to stop.
fn observe(cluster: &Cluster, notebook: &Notebook, i: usize) {
    let host = &cluster.hosts.hosts[i];
    sys::enter_netns(&host.netns().name).expect("enter the host's namespace");
    let api = host.api();
    while !notebook.stop_observers.load(Ordering::SeqCst) {
        let at_ms = notebook.now_ms();
        if let Some(status) = get_here(api, "/v1/status") {
            let raft = &status["raft"];
            let (version, hash) = match version_of(&status) {
                Some((v, h)) => (Some(v), Some(h)),
                None => (None, None),
            };
            lock(&notebook.observations).push(Obs {
                at_ms,
                node: host.name.clone(),
                version,
                hash,
                term: raft["term"].as_u64(),
                leader: raft["leader"]["name"].as_str().map(String::from),
                masters: masters_of(raft).unwrap_or_default(),
            });
        }
        std::thread::sleep(OBSERVE_EVERY);
    }
}

/// Applies a new text, one at a time, through `cohort apply --wait` on a
/// random node that is neither killed nor stopped, until told to stop.
fn apply_loop(cluster: &Cluster, notebook: &Notebook, seed: u64) {
    let mut rng = Rng::new(seed ^ 0x00c1_1e47);
    while !notebook.stop_client.load(Ordering::SeqCst) {
        let up: Vec<usize> = (0..cluster.len())
            .filter(|&i| !cluster.is_down(i))
            .collect();
        if up.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        apply_once(cluster, notebook, rng.pick(&up), seed, APPLY_TIMEOUT);
        // Leaves the machine's two cores some room between applies.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `cohort apply --wait` of a new text via host `via`, recorded.
fn apply_once(
    cluster: &Cluster,
    notebook: &Notebook,
    via: usize,
    seed: u64,
    timeout: &str,
) -> Outcome {
    let number = {
        let mut texts = lock(&notebook.texts);
        let number = texts.len();
        texts.push(cluster.topology(&format!(
            "roles:\n  storage:\n    config: {{ chaos: \"{seed:#x}-{number}\" }}\n"
        )));
        number
    };
    let text = lock(&notebook.texts)[number].clone();
    let file = cluster.hosts.file(&format!("apply-{number}.yaml"), &text);
    let at_ms = notebook.now_ms();
    let out = cluster.hosts.cli(
        via,
        &[
            "apply",
            &file.display().to_string(),
            "--wait",
            "--timeout",
            timeout,
            "--format",
            "json",
        ],
    );
    let outcome = match serde_json::from_str::<Value>(&out.stdout) {
        Ok(answer) => match answer["outcome"].as_str() {
            Some("committed") => match answer["version"].as_u64() {
                Some(version) => Outcome::Committed {
                    version,
                    hash: answer["hash"]
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| check::hash(&text)),
                },
                None => Outcome::Unknown(format!("committed without a version: {answer}")),
            },
            Some("aborted") => Outcome::Aborted(answer["message"].to_string()),
            Some("invalid") => panic!("the client's text is invalid: {answer}\n{text}"),
            _ => Outcome::Unknown(answer.to_string()),
        },
        Err(_) => Outcome::Unknown(format!(
            "no answer: {}",
            out.stderr.lines().last().unwrap_or("").trim()
        )),
    };
    lock(&notebook.applies).push(Apply {
        at_ms,
        via: cluster.hosts.name(via).to_string(),
        text: number,
        outcome: outcome.clone(),
    });
    outcome
}

/// Counts over many runs, for the long mode's summary.
#[derive(Default)]
pub struct Totals {
    pub schedules: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub nodes: BTreeMap<usize, usize>,
    pub attempted: u64,
    pub committed: u64,
    pub aborted: u64,
    pub unknown: u64,
    pub observations: u64,
    pub violations: u64,
    pub failing: Vec<String>,
}

impl Totals {
    pub fn add(&mut self, run: &Run) {
        self.schedules += 1;
        for (kind, n) in run.schedule.faults() {
            *self.faults.entry(kind.name()).or_insert(0) += n;
        }
        *self.nodes.entry(run.schedule.nodes).or_insert(0) += 1;
        let a = run.applies();
        self.attempted += a["attempted"].as_u64().unwrap_or(0);
        self.committed += a["committed"].as_u64().unwrap_or(0);
        self.aborted += a["aborted"].as_u64().unwrap_or(0);
        self.unknown += a["unknown"].as_u64().unwrap_or(0);
        self.observations += run.record.observations.len() as u64;
        self.violations += run.violations.len() as u64;
        if !run.ok() {
            self.failing
                .push(replay_command(run.schedule.seed, run.schedule.profile));
        }
    }

    pub fn json(&self, seconds: f64) -> Value {
        let kinds: BTreeMap<&str, usize> = Kind::ALL
            .iter()
            .map(|k| (k.name(), self.faults.get(k.name()).copied().unwrap_or(0)))
            .collect();
        json!({
            "seconds": seconds.round(),
            "schedules": self.schedules,
            "nodes": self.nodes,
            "faults": kinds,
            "applies": {
                "attempted": self.attempted,
                "committed": self.committed,
                "aborted": self.aborted,
                "unknown": self.unknown,
            },
            "observations": self.observations,
            "violations": self.violations,
            "failing": self.failing,
        })
    }
}
