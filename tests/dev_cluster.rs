//! `cohort dev --nodes 3` starts three real agents and leaves none behind,
//! whether it is stopped with SIGTERM or killed outright.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

const START: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(20);

/// Starts `cohort dev --nodes 3` and returns it with its agents' pids.
fn start_dev(dir: &std::path::Path) -> (Proc, Vec<i32>) {
    let (ports, api_ports) = (free_ports(3), free_ports(3));
    let dev = Proc::spawn(
        cohort()
            .args(["dev", "--nodes", "3", "--dir"])
            .arg(dir)
            .args([
                "--port-base",
                &ports.to_string(),
                "--api-port-base",
                &api_ports.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pids: Vec<i32> = (0..3)
        .map(|i| {
            let api = addr(api_ports + i);
            let status = wait_until(START, "a dev agent's API", || status(api));
            assert_eq!(status["node"], format!("n{}", i + 1));
            assert_eq!(status["cluster"], "dev");
            assert_eq!(
                status["topology"]["state"], "valid",
                "the generated topology validates"
            );
            status["pid"].as_i64().expect("pid") as i32
        })
        .collect();
    for pid in &pids {
        assert!(process_alive(*pid));
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: i32 = parent
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ppid, dev.pid(), "agent {pid} is a child of cohort dev");
    }
    (dev, pids)
}

#[test]
fn sigterm_stops_every_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, pids) = start_dev(dir.path());
    dev.signal(SIGTERM);
    assert_eq!(dev.wait_exit(STOP).code(), Some(0));
    for pid in pids {
        assert!(!process_alive(pid), "agent {pid} outlived cohort dev");
    }
}

#[test]
fn sigkill_of_cohort_dev_still_takes_every_agent_down() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, pids) = start_dev(dir.path());
    dev.signal(SIGKILL);
    dev.wait_exit(STOP);
    for pid in pids {
        wait_until(STOP, "the orphaned agent to die", || {
            (!process_alive(pid)).then_some(())
        });
    }
}
