//! A network namespace of the test's own, with only loopback, for tests
//! that need what the host's network is not ours to change: multicast on
//! loopback, firewall rules. Needs root and iproute2 (CI has both); the
//! namespace is deleted on drop, also when the test fails.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `cohort-TAG-PID`, loopback up.
    pub fn create(tag: &str) -> Netns {
        let name = format!("cohort-{tag}-{}", std::process::id());
        // A namespace left by a killed earlier run that had this pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let made = Command::new("ip").args(["netns", "add", &name]).output();
        match made {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "this test needs a network namespace of its own and `ip netns add {name}` failed: {}\
                 \nRun it as root (CI does), with iproute2 installed (apt-get install iproute2).",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "this test needs a network namespace of its own and cannot run `ip`: {e}\
                 \nInstall iproute2 (apt-get install iproute2) and run it as root (CI does)."
            ),
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Loopback made multicast-capable, with the route a group is joined
    /// and sent on when no interface is named.
    pub fn enable_multicast(&self) {
        self.ip(&["link", "set", "lo", "multicast", "on"]);
        self.ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
    }

    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// An nftables command inside the namespace (needs `nft`: CI installs
    /// nftables).
    pub fn nft(&self, rule: &str) {
        let out = self.exec("nft").args(rule.split(' ')).output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "nft {rule}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run nft ({e}): apt-get install nftables"),
        }
    }

    /// A whole nftables script (`nft -f -`) inside the namespace: one
    /// transaction, so a ruleset with a drop policy never applies half.
    pub fn nft_script(&self, script: &str) {
        use std::io::Write;
        let mut child = self
            .exec("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nft ({e}): apt-get install nftables"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).expect("write to nft");
        }
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft -f - in {}: {}\n{script}",
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// `program` run inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's).
    pub fn exec(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// `cohort --api API ARGS...` inside the namespace: stdout when it
    /// succeeds.
    pub fn cohort(&self, api: SocketAddr, args: &[&str]) -> Option<String> {
        let out = self
            .exec(env!("CARGO_BIN_EXE_cohort"))
            .arg("--api")
            .arg(api.to_string())
            .args(args)
            .env("COHORT_TOKEN_FILE", super::token_file())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
