//! What the scenarios share: ports, child processes that cannot outlive
//! the bench, the open-files limit, a network namespace with loss and
//! delay, a seeded generator, `/proc` figures, summaries and tables.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// USER_HZ, the unit of the CPU times in `/proc/PID/stat` on Linux.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// A port free for TCP and UDP on loopback now and never handed out
/// before in this run: nodes bind theirs a moment later, and the OS could
/// otherwise give the same port twice in between. Ports come from below
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): the
/// nodes' own outgoing connections take ephemeral ports, and with hundreds
/// of nodes starting in waves one of them would sooner or later hold the
/// port that a node started later is told to bind.
pub fn free_port(taken: &mut BTreeSet<u16>) -> anyhow::Result<u16> {
    let (low, high) = assignable_ports();
    let span = u32::from(high - low) + 1;
    // Consecutive within a run, from a random place: two benches at the
    // same time rarely probe the same ports.
    let start = match taken.last() {
        Some(&last) if (low..high).contains(&last) => u32::from(last - low) + 1,
        _ => rand::random::<u32>() % span,
    };
    for k in 0..span {
        let port = low + ((start + k) % span) as u16;
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            taken.insert(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no port free for TCP and UDP in {low}-{high}")
}

/// Up to 10,000 ports just below the ephemeral range (the whole range
/// above 1024 when the ephemeral range leaves no room below it).
fn assignable_ports() -> (u16, u16) {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 2048 {
        (
            ephemeral_low.saturating_sub(10_000).max(1024),
            ephemeral_low - 1,
        )
    } else {
        (1024, u16::MAX)
    }
}

/// The nodes running now, for the signal handler.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const STOP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Call first thing, before any thread starts: on SIGINT, SIGTERM or
/// SIGHUP, a thread of its own kills and reaps every node started by
/// [`spawn`], removes `scratch` and exits 128 + the signal.
pub fn stop_on_signal(scratch: PathBuf) -> anyhow::Result<()> {
    let signals = SigSet::from_iter(STOP_SIGNALS);
    // Blocked here, so in every thread started later: only `wait` takes them.
    signals.thread_block()?;
    std::thread::spawn(move || {
        let Ok(signal) = signals.wait() else { return };
        for pid in running().drain(..) {
            let pid = Pid::from_raw(pid as i32);
            // Only a child of ours that is still running (not one reaped
            // already, whose pid may be someone else's by now).
            if waitpid(pid, Some(WaitPidFlag::WNOHANG)) != Ok(WaitStatus::StillAlive) {
                continue;
            }
            let _ = signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        let _ = fs::remove_dir_all(&scratch);
        eprintln!("bench: {signal}: every node stopped");
        std::process::exit(128 + signal as i32);
    });
    Ok(())
}

/// Starts a node that cannot outlive the bench: the owners' `Drop` stop
/// their nodes on every ordinary exit path (result, error, panic), the
/// [`stop_on_signal`] thread on a stop signal, and the kernel SIGKILLs
/// them (parent-death signal) if the bench itself is SIGKILLed.
pub fn spawn(command: &mut Command) -> io::Result<Child> {
    let bench = nix::unistd::getpid();
    // SAFETY: between fork and exec the closure only makes system calls
    // that are async-signal-safe (sigprocmask, prctl, getppid) and
    // allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // The node gets the signals the bench blocked for itself.
            signal::sigprocmask(
                SigmaskHow::SIG_UNBLOCK,
                Some(&SigSet::from_iter(STOP_SIGNALS)),
                None,
            )?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The bench died before prctl: nobody would kill this one.
            if nix::unistd::getppid() != bench {
                return Err(io::Error::other("the bench is gone"));
            }
            Ok(())
        });
    }
    let mut running = running();
    let child = command.spawn()?;
    running.push(child.id());
    Ok(child)
}

/// The `cohort` binary: `given`, or the one next to this bench.
pub fn cohort_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let cohort = match given {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("cohort"),
    };
    if !cohort.exists() {
        anyhow::bail!(
            "{} not found: run `cargo build --release` first, or pass --cohort",
            cohort.display()
        );
    }
    Ok(cohort)
}

/// Starts `cohort agent` with `dir/cohort.yaml`, its log in
/// `dir/agent.log`.
pub fn spawn_agent(cohort: &Path, dir: &Path) -> anyhow::Result<Child> {
    use anyhow::Context;
    spawn(
        Command::new(cohort)
            .arg("agent")
            .arg("--config")
            .arg(dir.join("cohort.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("agent.log"))?),
    )
    .with_context(|| format!("cannot start {}", cohort.display()))
}

/// A running agent, stopped when dropped.
pub struct Agent {
    pub name: String,
    pub api: SocketAddr,
    pub child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Kills and reaps a node; harmless when it is gone already.
pub fn stop(child: &mut Child) {
    let mut running = running();
    let _ = child.kill();
    let _ = child.wait();
    running.retain(|&pid| pid != child.id());
}

/// This run's scratch directory (configurations, logs).
pub fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("cohort-bench-{}", std::process::id()))
}

/// (CPU ticks used so far, RSS in KiB) of a process.
pub fn proc_stat(pid: u32) -> Option<(u64, u64)> {
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

/// CPU % of a core over `seconds` and RSS MiB at the end, for every
/// process both samples exist for.
pub fn footprint(
    before: &[Option<(u64, u64)>],
    after: &[Option<(u64, u64)>],
    seconds: f64,
) -> (Vec<f64>, Vec<f64>) {
    let cpu_percent = before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| {
            let ticks = a.as_ref()?.0.saturating_sub(b.as_ref()?.0);
            Some(ticks as f64 / TICKS_PER_SECOND / seconds * 100.0)
        })
        .collect();
    let rss_mib = after
        .iter()
        .filter_map(|s| Some(s.as_ref()?.1 as f64 / 1024.0))
        .collect();
    (cpu_percent, rss_mib)
}

pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[index])
}

/// `{"median": .., "max": ..}` (null when nothing was measured).
pub fn summary(values: &[f64]) -> serde_json::Value {
    serde_json::json!({ "median": percentile(values, 0.5), "max": percentile(values, 1.0) })
}

/// [`summary`] plus the mean, which (unlike the median) adds up across
/// parts: mean datagram + mean stream = mean total.
pub fn summary_with_mean(values: &[f64]) -> serde_json::Value {
    let mean = (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    serde_json::json!({
        "median": percentile(values, 0.5),
        "max": percentile(values, 1.0),
        "mean": mean,
    })
}

/// Per-node traffic over an idle window, from counters read before and
/// after it.
#[derive(Default)]
pub struct Traffic {
    pub datagram_bytes_per_s: Vec<f64>,
    pub stream_bytes_per_s: Vec<f64>,
    pub bytes_per_s: Vec<f64>,
    pub packets_per_s: Vec<f64>,
}

/// Counters of one node at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub datagram_bytes: u64,
    pub datagrams: u64,
    pub stream_bytes: u64,
}

impl Traffic {
    /// Adds one node whose counters went from `before` to `after` in `seconds`.
    pub fn add(&mut self, before: Counters, after: Counters, seconds: f64) {
        if seconds <= 0.0 {
            return;
        }
        let datagram = after.datagram_bytes.saturating_sub(before.datagram_bytes) as f64;
        let stream = after.stream_bytes.saturating_sub(before.stream_bytes) as f64;
        self.datagram_bytes_per_s.push(datagram / seconds);
        self.stream_bytes_per_s.push(stream / seconds);
        self.bytes_per_s.push((datagram + stream) / seconds);
        self.packets_per_s
            .push(after.datagrams.saturating_sub(before.datagrams) as f64 / seconds);
    }

    /// The JSON fields both scenarios print.
    pub fn report(&self, report: &mut serde_json::Map<String, serde_json::Value>) {
        report.insert(
            "per_node_bytes_per_s".into(),
            summary_with_mean(&self.bytes_per_s),
        );
        report.insert(
            "per_node_datagram_bytes_per_s".into(),
            summary_with_mean(&self.datagram_bytes_per_s),
        );
        report.insert(
            "per_node_stream_bytes_per_s".into(),
            summary_with_mean(&self.stream_bytes_per_s),
        );
        report.insert(
            "per_node_packets_per_s".into(),
            summary_with_mean(&self.packets_per_s),
        );
    }
}

/// The samples of a Prometheus text exposition, as (series, value): the
/// series with its labels as written (`cohort_members{status="alive"}`).
pub fn metric_samples(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        let value = value.parse::<f64>().ok()?;
        Some((name, value as u64))
    })
}

/// One series of an agent's `/metrics` (labels as written).
fn metric(api: SocketAddr, series: &str) -> Option<u64> {
    let text = http_get(api, "/metrics")?;
    let value = metric_samples(&text).find_map(|(name, value)| (name == series).then_some(value));
    value
}

/// How many members an agent lists alive, from `/metrics` (not from the
/// member table's JSON, a row per member).
pub fn alive_members(api: SocketAddr) -> Option<u64> {
    metric(api, "cohort_members{status=\"alive\"}")
}

/// How many member updates an agent still has to piggyback (its
/// `cohort_gossip_pending_updates`): 0 once its news has been spread.
pub fn pending_updates(api: SocketAddr) -> Option<u64> {
    metric(api, "cohort_gossip_pending_updates")
}

/// `GET path` on an agent's API (HTTP/1.0, a connection each): the body of
/// a 200, else None.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// A fresh random gossip key, written as the keyring every agent reads
/// (`root/gossip.key`).
pub fn write_gossip_key(root: &Path) -> io::Result<()> {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    let line = base64::engine::general_purpose::STANDARD.encode(key);
    fs::write(root.join("gossip.key"), format!("{line}\n"))
}

/// Runs a scenario in `root` (its agents stop inside `run`, whatever
/// happens), removes `root` unless `keep`, and prints the report: JSON on
/// stdout, a table of its figures on stderr.
pub fn run_in(
    root: &Path,
    keep: bool,
    run: impl FnOnce() -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<()> {
    let report = in_scratch(root, keep, run)?;
    print_table("figures", &report_rows(&report));
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `run` with `root` created before and removed after (unless `keep`).
pub fn in_scratch<T>(
    root: &Path,
    keep: bool,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    fs::create_dir_all(root)?;
    let result = run();
    if keep {
        eprintln!("bench: configs, data and logs kept in {}", root.display());
    } else {
        let _ = fs::remove_dir_all(root);
    }
    result
}

pub fn unix_ms_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// [`summary`] plus the minimum, the p99 and how many.
pub fn spread(values: &[f64]) -> serde_json::Value {
    let mut s = summary(values);
    s["min"] = serde_json::json!(percentile(values, 0.0));
    s["p99"] = serde_json::json!(percentile(values, 0.99));
    s["n"] = serde_json::json!(values.len());
    s
}

/// Waits until each of `apis` answers and `alive` (what it reads from one
/// agent) says it lists at least `min_alive` members alive, itself
/// included: a wave of a start has joined. `check` runs between sweeps
/// (an agent that exited ends the wait with its error).
pub fn wait_joined(
    apis: &[SocketAddr],
    min_alive: u64,
    alive: impl Fn(SocketAddr) -> Option<u64> + Sync,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    const WITHIN: Duration = Duration::from_secs(60);
    const THREADS: usize = 4;
    const INTERVAL: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + WITHIN;
    let mut pending = apis.to_vec();
    loop {
        let seen = sweep(&pending, THREADS, &alive);
        pending = pending
            .iter()
            .zip(seen)
            .filter(|(_, n)| n.is_none_or(|n| n < min_alive))
            .map(|(api, _)| *api)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        check()?;
        if Instant::now() > deadline {
            anyhow::bail!(
                "{} agents (first: the API at {}) did not join within {} s",
                pending.len(),
                pending[0],
                WITHIN.as_secs()
            );
        }
        std::thread::sleep(INTERVAL);
    }
}

/// `f` on every address, split over `threads` threads, in order.
pub fn sweep<T: Send>(
    apis: &[SocketAddr],
    threads: usize,
    f: impl Fn(SocketAddr) -> T + Sync,
) -> Vec<T> {
    let chunk = apis.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = apis
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(|a| f(*a)).collect::<Vec<T>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// CPU ticks so far: (the machine's busy ticks, all CPUs, from
/// `/proc/stat`; the agents'; the bench's own).
pub fn cpu_ticks<'a>(agents: impl IntoIterator<Item = &'a Agent>) -> (u64, u64, u64) {
    let machine = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?)
        })
        .unwrap_or(0);
    let agents = agents
        .into_iter()
        .filter_map(|a| proc_stat(a.child.id()))
        .map(|(ticks, _)| ticks)
        .sum();
    let me = proc_stat(std::process::id()).map_or(0, |(ticks, _)| ticks);
    (machine, agents, me)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<String> {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// WARN and ERROR lines of the agents' logs (`(name, dir)`: `dir/agent.log`):
/// counts, and the first few.
pub fn log_lines<N: AsRef<str>, D: AsRef<Path>>(
    agents: impl IntoIterator<Item = (N, D)>,
) -> serde_json::Value {
    let (mut warn, mut error) = (0usize, 0usize);
    let mut samples = Vec::new();
    for (name, dir) in agents {
        let name = name.as_ref();
        let log = fs::read_to_string(dir.as_ref().join("agent.log")).unwrap_or_default();
        for line in log.lines() {
            let level = line.split_whitespace().nth(1).unwrap_or("");
            let counter = match level {
                "WARN" => &mut warn,
                "ERROR" => &mut error,
                _ => continue,
            };
            *counter += 1;
            if samples.len() < 30 {
                let line: String = line.chars().take(400).collect();
                samples.push(format!("{name}: {line}"));
            }
        }
    }
    serde_json::json!({ "warn_lines": warn, "error_lines": error, "first_lines": samples })
}

/// Raises this process's soft limit on open files to its hard limit
/// (children inherit it) and returns it: the bench holds a descriptor or
/// three per node (an event stream; a peer's pipes), and 500 nodes need
/// more than the usual 1024.
pub fn raise_open_files_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // An unlimited hard limit still stops at fs.nr_open.
    let ceiling = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(hard, |nr_open| hard.min(nr_open));
    if soft < ceiling {
        setrlimit(Resource::RLIMIT_NOFILE, ceiling, hard)?;
    }
    Ok(ceiling.max(soft))
}

/// Fails early, with the fix, when `needed` descriptors do not fit.
pub fn ensure_open_files(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < needed {
        anyhow::bail!(
            "this run needs about {needed} open files and the limit is {soft} (hard {hard}): \
             raise the hard limit (`ulimit -Hn {needed}` as root, or LimitNOFILE=) and run again"
        );
    }
    Ok(())
}

/// How many more inotify instances this user may open (each agent watches
/// its topology file with one; an agent that gets none reads the file every
/// 2 s instead and logs a warning), and the limit.
pub fn inotify_room() -> Option<(u64, u64)> {
    let limit: u64 = fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Ours and everyone else's of this user (all root here): the fds of
    // every process that point at an inotify instance.
    let uid = nix::unistd::getuid().as_raw();
    let mut in_use = 0u64;
    for process in fs::read_dir("/proc").ok()?.flatten() {
        let path = process.path();
        let owned = fs::metadata(&path).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == uid
        });
        if !owned {
            continue;
        }
        let Ok(fds) = fs::read_dir(path.join("fd")) else {
            continue;
        };
        in_use += fds
            .flatten()
            .filter(|fd| {
                fs::read_link(fd.path())
                    .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify")
            })
            .count() as u64;
    }
    Some((limit.saturating_sub(in_use), limit))
}

/// Loss and delay on loopback for one run.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NetArgs {
    /// Drop this percentage of the packets between nodes (UDP and TCP
    /// alike, at random), inside a network namespace of the run's own:
    /// never the host's network.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Delay every packet between nodes by this many ms (tc netem; needs
    /// a kernel with sch_netem), in the same namespace.
    #[arg(long, default_value_t = 0)]
    pub delay: u64,
}

/// Where this run's nodes talk: the host's loopback, or a namespace of
/// the run's own with loss and delay.
pub struct Network {
    /// Where the nodes' HTTP APIs listen: 127.0.0.2 in a namespace with
    /// loss (exempt from it, so that the bench's own requests and event
    /// streams are not what loss slows down), 127.0.0.1 otherwise.
    pub api_ip: std::net::Ipv4Addr,
    /// What the bench's observations over the API lag behind the nodes
    /// (the delay, which also applies to the API: netem cannot exempt it
    /// without classifiers this kernel may lack).
    pub observer_lag: std::time::Duration,
    pub report: serde_json::Value,
}

/// The nftables table that drops packets; its address exemption matches
/// [`Network::api_ip`].
const LOSS_RULES: &str = "table inet cohort_bench {
  chain input {
    type filter hook input priority 0; policy accept;
    ip daddr 127.0.0.2 accept
    ip saddr 127.0.0.2 accept
    numgen random mod 10000 < BASIS_POINTS drop
  }
}
";

/// With loss or delay asked for: moves the calling thread into a new
/// network namespace, loopback up, loss and delay applied there. Call it
/// on the thread that then starts the nodes and the threads that talk to
/// them (they inherit the namespace; threads started before it do not).
///
/// The namespace (`unshare(CLONE_NEWNET)`, not `ip netns add`) has no
/// name in /run/netns: it ends with the last process in it, so no exit
/// path, SIGKILL of the bench included, can leave it (or its loss rule)
/// behind, and nothing here touches the host's network. Loss is an
/// nftables rule in the input hook (`numgen random` drops that share of
/// packets; a drop there is silent to the sender, like a loss on the
/// wire, where one in the output hook would fail its `sendto`): it needs
/// no qdisc, and some kernels (this machine's) have no netem. Delay needs
/// netem.
pub fn enter_network(args: &NetArgs) -> anyhow::Result<Network> {
    use anyhow::Context;
    let localhost = std::net::Ipv4Addr::LOCALHOST;
    if args.loss == 0.0 && args.delay == 0 {
        return Ok(Network {
            api_ip: localhost,
            observer_lag: std::time::Duration::ZERO,
            report: serde_json::json!({ "namespace": "host", "loss_percent": 0.0, "delay_ms": 0 }),
        });
    }
    if !(0.0..100.0).contains(&args.loss) {
        anyhow::bail!("--loss is a percentage below 100, not {}", args.loss);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("cannot create a network namespace for --loss/--delay (needs root)")?;
    run_tool("ip", &["link", "set", "lo", "up"], None)?;
    let mut how = Vec::new();
    let basis_points = (args.loss * 100.0).round() as u32;
    if basis_points > 0 {
        let rules = LOSS_RULES.replace("BASIS_POINTS", &basis_points.to_string());
        run_tool("nft", &["-f", "-"], Some(&rules))
            .context("--loss needs nftables (apt-get install nftables)")?;
        how.push(format!(
            "nftables, input hook: numgen random mod 10000 < {basis_points} drop; \
             127.0.0.2 (the nodes' HTTP APIs) exempt"
        ));
    }
    let mut lag = std::time::Duration::ZERO;
    if args.delay > 0 {
        let delay = format!("{}ms", args.delay);
        run_tool(
            "tc",
            &[
                "qdisc", "add", "dev", "lo", "root", "netem", "delay", &delay,
            ],
            None,
        )
        .context("--delay needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM)")?;
        how.push(format!(
            "tc netem delay {delay} on lo (API traffic included: the cohort scenario takes it off its event times)"
        ));
        lag = std::time::Duration::from_millis(args.delay);
    }
    Ok(Network {
        api_ip: std::net::Ipv4Addr::new(127, 0, 0, 2),
        observer_lag: lag,
        report: serde_json::json!({
            "namespace": "private (unshare CLONE_NEWNET; ends with the run)",
            "loss_percent": f64::from(basis_points) / 100.0,
            "delay_ms": args.delay,
            "how": how,
        }),
    })
}

/// Runs `program args` (with `input` on its stdin), failing with its
/// stderr.
fn run_tool(program: &str, args: &[&str], input: Option<&str>) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// SplitMix64: the scenarios' seeded choices (which nodes die, in what
/// order, after what pauses) must be the same for the same seed in every
/// build, which `rand`'s `StdRng` does not promise.
pub struct Seeded(u64);

impl Seeded {
    pub fn new(seed: u64) -> Seeded {
        Seeded(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// CPU time and peak RSS of processes over a window, from `/proc`: a few
/// reads per process per sample, cheap at 500 processes.
pub struct Sampler {
    pids: Vec<u32>,
    first: Vec<Option<(u64, u64)>>,
    last: Vec<Option<(u64, u64)>>,
    peak_kib: Vec<u64>,
    started: std::time::Instant,
    pub samples: usize,
}

impl Sampler {
    pub fn start(pids: Vec<u32>) -> Sampler {
        let first: Vec<_> = pids.iter().map(|&p| proc_stat(p)).collect();
        let peak_kib = first.iter().map(|s| s.map_or(0, |s| s.1)).collect();
        Sampler {
            last: first.clone(),
            first,
            pids,
            peak_kib,
            started: std::time::Instant::now(),
            samples: 1,
        }
    }

    pub fn sample(&mut self) {
        for (i, &pid) in self.pids.iter().enumerate() {
            if let Some(now) = proc_stat(pid) {
                self.peak_kib[i] = self.peak_kib[i].max(now.1);
                self.last[i] = Some(now);
            }
        }
        self.samples += 1;
    }

    /// CPU % of a core over the window and peak RSS in MiB, per process
    /// (those with two samples).
    pub fn finish(mut self) -> (Vec<f64>, Vec<f64>) {
        self.sample();
        let seconds = self.started.elapsed().as_secs_f64();
        let (cpu, _) = footprint(&self.first, &self.last, seconds);
        let peak = self
            .peak_kib
            .iter()
            .zip(&self.last)
            .filter(|(_, last)| last.is_some())
            .map(|(kib, _)| *kib as f64 / 1024.0)
            .collect();
        (cpu, peak)
    }
}

/// [`cpu_ticks`] for processes given by pid: (the machine's busy ticks;
/// these processes'; the bench's own).
pub fn cpu_ticks_of(pids: &[u32]) -> (u64, u64, u64) {
    let (machine, _, me) = cpu_ticks(std::iter::empty());
    let theirs = pids
        .iter()
        .filter_map(|&p| proc_stat(p))
        .map(|(ticks, _)| ticks)
        .sum();
    (machine, theirs, me)
}

/// Cores busy over a window from two [`cpu_ticks_of`] readings.
pub fn cores(before: (u64, u64, u64), after: (u64, u64, u64), seconds: f64) -> serde_json::Value {
    let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / TICKS_PER_SECOND / seconds;
    let machine = per_s(after.0, before.0);
    let nodes = per_s(after.1, before.1);
    let bench = per_s(after.2, before.2);
    serde_json::json!({
        "machine_busy": machine,
        "nodes": nodes,
        "bench": bench,
        "other_processes": (machine - nodes - bench).max(0.0),
    })
}

/// A number for a table: three significant digits or so.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e9) {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Prints `rows` (the first one is the header) as an aligned table on
/// stderr.
pub fn print_table(title: &str, rows: &[Vec<String>]) {
    if rows.len() < 2 {
        return;
    }
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("\n{title}\n");
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..columns)
            .map(|c| {
                let cell = row.get(c).map_or("", String::as_str);
                let pad = widths[c].saturating_sub(cell.chars().count());
                // Names left, figures right.
                if c == 0 {
                    format!("{cell}{}", " ".repeat(pad))
                } else {
                    format!("{}{cell}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    eprint!("{out}");
}

/// A table of any report: every `{median, ...}` summary (median, p99,
/// max, n) and every top-level number, under its JSON path.
pub fn report_rows(report: &serde_json::Value) -> Vec<Vec<String>> {
    fn cell(v: &serde_json::Value) -> String {
        v.as_f64().map_or_else(String::new, fmt_num)
    }
    fn walk(path: &str, v: &serde_json::Value, depth: usize, rows: &mut Vec<Vec<String>>) {
        let Some(object) = v.as_object() else { return };
        if object.contains_key("median") {
            rows.push(vec![
                path.to_string(),
                cell(&object["median"]),
                object.get("p99").map_or_else(String::new, cell),
                object.get("max").map_or_else(String::new, cell),
                object.get("n").map_or_else(String::new, cell),
            ]);
            return;
        }
        for (key, value) in object {
            // Raw samples and per-run detail are for the JSON only.
            if matches!(key.as_str(), "each" | "samples" | "first_lines") {
                continue;
            }
            let path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            if value.is_number() && depth <= 1 {
                rows.push(vec![path, cell(value)]);
            } else if depth < 3 {
                walk(&path, value, depth + 1, rows);
            }
        }
    }
    let mut rows = vec![vec![
        "figure".to_string(),
        "median / value".to_string(),
        "p99".to_string(),
        "max".to_string(),
        "n".to_string(),
    ]];
    walk("", report, 0, &mut rows);
    rows
}

/// The last `n` lines of `text`, joined (a log's tail for an error).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_table_has_summaries_and_top_level_numbers_not_samples() {
        let report = serde_json::json!({
            "nodes": 500,
            "scenario": "apply",
            "leader_failover_ms": { "median": 1121.4, "p99": 2635.5, "max": 2635.5, "n": 20 },
            "measured": { "wall_ms": { "median": 17.0, "max": 37.0 }, "each": [{ "median": 1.0 }] },
            "samples": { "x": { "median": 1.0 } },
        });
        let rows = report_rows(&report);
        let names: Vec<&str> = rows.iter().skip(1).map(|r| r[0].as_str()).collect();
        assert_eq!(
            names,
            ["leader_failover_ms", "measured.wall_ms", "nodes"],
            "{rows:?}"
        );
        assert_eq!(rows[1][1..], ["1121", "2636", "2636", "20"]);
    }

    #[test]
    fn a_seeded_generator_repeats_and_stays_in_range() {
        let (mut a, mut b) = (Seeded::new(9), Seeded::new(9));
        for _ in 0..1000 {
            let v = a.below(7);
            assert_eq!(v, b.below(7));
            assert!(v < 7);
        }
        let mut items: Vec<u32> = (0..50).collect();
        Seeded::new(1).shuffle(&mut items);
        assert_ne!(items, (0..50).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..50).collect::<Vec<_>>());
    }
}
