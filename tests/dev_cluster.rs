//! `cohort dev --nodes 3` starts three real agents and leaves none behind,
//! whether it is stopped with SIGTERM or killed outright, and reports an
//! agent that dies under it.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const START: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(20);

struct Dev {
    proc: Proc,
    pids: Vec<i32>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// If a test fails, the agents go too: a broken `cohort dev` must not
/// leave them running on the machine.
impl Drop for Dev {
    fn drop(&mut self) {
        for pid in &self.pids {
            if process_alive(*pid) {
                let _ = try_signal_pid(*pid, SIGKILL);
            }
        }
    }
}

fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("the agent's /proc entry");
    // The fields after the command name (in parentheses): state, then ppid.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse().ok())
        .expect("a ppid in /proc/PID/stat")
}

/// Starts `cohort dev --nodes 3` (its files under `--dir DIR`, or under
/// `tmpdir` when `dir` is None) and waits until every agent answers.
fn start_dev(logs: &Path, dir: Option<&Path>, tmpdir: &Path) -> Dev {
    let (ports, api_ports) = (free_ports(3), free_ports(3));
    let (stdout, stderr) = (logs.join("dev.out"), logs.join("dev.err"));
    let mut command = cohort();
    command
        .args(["dev", "--nodes", "3"])
        .args(["--port-base", &ports.to_string()])
        .args(["--api-port-base", &api_ports.to_string()])
        .env("TMPDIR", tmpdir)
        .stdout(fs::File::create(&stdout).unwrap())
        .stderr(fs::File::create(&stderr).unwrap());
    if let Some(dir) = dir {
        command.arg("--dir").arg(dir);
    }
    let mut proc = Proc::spawn(&mut command);
    let pids: Vec<i32> = (0..3)
        .map(|i| {
            let api = addr(api_ports + i);
            let status = wait_until(START, "a dev agent's API", || {
                if let Some(exit) = proc.child.try_wait().expect("try_wait") {
                    panic!("cohort dev exited ({exit}):\n{}", read(&stderr));
                }
                status(api)
            });
            assert_eq!(status["node"], format!("n{}", i + 1));
            assert_eq!(status["cluster"], "dev");
            assert_eq!(status["bind"], addr(ports + i).to_string());
            assert_eq!(
                status["topology"]["state"], "valid",
                "the generated topology validates: {}",
                status["topology"]
            );
            status["pid"].as_i64().expect("pid") as i32
        })
        .collect();
    for pid in &pids {
        assert!(process_alive(*pid));
        assert_eq!(
            parent_of(*pid),
            proc.pid(),
            "agent {pid} is a child of cohort dev"
        );
    }
    // The banner comes once every agent answers: a row per node, and a
    // command to try.
    let banner = wait_until(START, "the banner", || {
        let text = read(&stdout);
        text.contains("Stop: Ctrl-C").then_some(text)
    });
    for i in 0..3 {
        let row = format!(
            "n{:<5} {:<17} {:<17}",
            i + 1,
            addr(ports + i).to_string(),
            addr(api_ports + i).to_string()
        );
        assert!(banner.contains(&row), "no row `{row}` in:\n{banner}");
    }
    assert!(
        banner.contains(&format!("--api {} status", addr(api_ports))),
        "{banner}"
    );
    Dev {
        proc,
        pids,
        stdout,
        stderr,
    }
}

/// The API address of the banner's `--api ADDR status` hint.
fn status_api(banner: &str) -> String {
    banner
        .split("--api ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an --api hint in the banner")
        .to_string()
}

fn leftover_temp_dirs(tmpdir: &Path) -> Vec<String> {
    fs::read_dir(tmpdir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("cohort-dev-"))
        .collect()
}

#[test]
fn sigterm_stops_every_agent_and_removes_the_temp_dir() {
    let test = tempfile::tempdir().unwrap();
    let tmpdir = test.path().join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    let mut dev = start_dev(test.path(), None, &tmpdir);
    let keyring = tmpdir
        .join(&leftover_temp_dirs(&tmpdir)[0])
        .join("gossip.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&keyring).unwrap().permissions().mode() & 0o777,
        0o600,
        "the keyring is private"
    );
    // Writes as the banner says: over TCP with the cluster's token file,
    // or through a node's unix socket without one.
    let root = keyring.parent().unwrap();
    let token = root.join("api.token");
    assert_eq!(
        fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600,
        "the API token is private"
    );
    let banner = read(&dev.stdout);
    assert!(
        banner.contains(&format!("export COHORT_TOKEN_FILE={}\n", token.display())),
        "{banner}"
    );
    let api = status_api(&banner);
    for args in [
        vec![
            "--api",
            &api,
            "--token-file",
            token.to_str().unwrap(),
            "event",
            "tcp",
        ],
        vec![
            "--socket",
            root.join("n2/api.sock").to_str().unwrap(),
            "event",
            "socket",
        ],
    ] {
        let out = cohort().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    dev.proc.signal(SIGTERM);
    assert_eq!(
        dev.proc.wait_exit(STOP).code(),
        Some(0),
        "{}",
        read(&dev.stderr)
    );
    for pid in &dev.pids {
        assert!(!process_alive(*pid), "agent {pid} outlived cohort dev");
    }
    assert_eq!(leftover_temp_dirs(&tmpdir), Vec::<String>::new());
    assert!(read(&dev.stdout).contains("3 agents running"));
}

#[test]
fn sigkill_of_cohort_dev_still_takes_every_agent_down() {
    let test = tempfile::tempdir().unwrap();
    let dir = test.path().join("cluster");
    let mut dev = start_dev(test.path(), Some(&dir), test.path());
    dev.proc.signal(SIGKILL);
    dev.proc.wait_exit(STOP);
    for pid in &dev.pids {
        wait_until(STOP, "the orphaned agent to die", || {
            (!process_alive(*pid)).then_some(())
        });
    }
    assert!(dir.join("n1/cohort.yaml").exists(), "--dir is kept");
}

#[test]
fn an_agent_that_dies_is_reported_and_the_others_run_on() {
    let test = tempfile::tempdir().unwrap();
    let dir = test.path().join("cluster");
    let mut dev = start_dev(test.path(), Some(&dir), test.path());
    let (victim, others) = (dev.pids[1], [dev.pids[0], dev.pids[2]]);
    signal_pid(victim, SIGKILL);
    let line = wait_until(STOP, "cohort dev to report the death", || {
        read(&dev.stderr)
            .lines()
            .find(|l| l.contains("agent n2 exited unexpectedly"))
            .map(str::to_string)
    });
    assert!(line.contains("signal: 9"), "{line}");
    assert!(line.contains(&dir.join("n2/agent.log").display().to_string()));
    assert!(others.iter().all(|pid| process_alive(*pid)));
    assert!(
        dev.proc.child.try_wait().unwrap().is_none(),
        "cohort dev runs on"
    );

    dev.proc.signal(SIGTERM);
    assert_eq!(dev.proc.wait_exit(STOP).code(), Some(0));
    for pid in others {
        assert!(!process_alive(pid), "agent {pid} outlived cohort dev");
    }
}
