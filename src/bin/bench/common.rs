//! What the scenarios share: ports, child processes that cannot outlive
//! the bench, `/proc` figures and summaries.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// USER_HZ, the unit of the CPU times in `/proc/PID/stat` on Linux.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// A port free for TCP and UDP now and never handed out before in this
/// run: nodes bind theirs a moment later, and the OS could otherwise give
/// the same ephemeral port twice in between.
pub fn free_port(taken: &mut BTreeSet<u16>) -> anyhow::Result<u16> {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !taken.contains(&port) && UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return Ok(port);
        }
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

/// A fresh random gossip key, written as the keyring every agent reads
/// (`root/gossip.key`).
pub fn write_gossip_key(root: &Path) -> io::Result<()> {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    let line = base64::engine::general_purpose::STANDARD.encode(key);
    fs::write(root.join("gossip.key"), format!("{line}\n"))
}

/// Runs a scenario in `root` (its agents stop inside `run`, whatever
/// happens), removes `root` unless `keep`, and prints the report.
pub fn run_in(
    root: &Path,
    keep: bool,
    run: impl FnOnce() -> anyhow::Result<serde_json::Value>,
) -> anyhow::Result<()> {
    fs::create_dir_all(root)?;
    let result = run();
    if keep {
        eprintln!("bench: configs, data and logs kept in {}", root.display());
    } else {
        let _ = fs::remove_dir_all(root);
    }
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
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
