//! Debian containers under a real systemd, for the tests that need one
//! (tests/systemd_nspawn.rs, tests/ansible_playbook.rs): a debootstrap
//! image cached as a tarball under target/tmp/nspawn-cache, unpacked per
//! test and booted with systemd-nspawn; commands run inside with nsenter.
//! The package under test comes from `COHORT_NSPAWN_DEB` or is built by
//! `packaging/build --no-checks --deb-only`.
//!
//! Test files include it with `#[path = "support/nspawn.rs"] mod nspawn;`.
//! Every wait polls a condition until a deadline; a container is halted
//! and its files removed when its `Machine` is dropped, pass or fail.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const SUITE: &str = "bookworm";
pub const BOOT: Duration = Duration::from_secs(90);
pub const SHORT: Duration = Duration::from_secs(30);

/// A cached image: its tarball's name (bump it when the recipe changes: a
/// new name builds a new cache) and what debootstrap includes.
pub struct Image {
    pub name: &'static str,
    pub packages: &'static str,
}

/// systemd, D-Bus and procps: what the boot test needs.
pub const SYSTEMD_IMAGE: Image = Image {
    name: "debian-bookworm-systemd-v1.tar",
    packages: "systemd,systemd-sysv,dbus,procps",
};

/// The same and Python 3 with python3-apt: what Ansible needs on a host
/// (its apt module installs a .deb through python3-apt; the containers
/// have no network to fetch it).
pub const ANSIBLE_IMAGE: Image = Image {
    name: "debian-bookworm-systemd-python-v1.tar",
    packages: "systemd,systemd-sysv,dbus,procps,python3,python3-apt",
};

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Why containers cannot run here, if they cannot: not root, a tool
/// missing (`tools` besides nspawn's own), no debootstrap while `image`
/// is not cached.
pub fn preconditions(image: &Image, tools: &[&str]) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new("/proc/self/ns/pid").exists() {
        return Err("no namespaces".into());
    }
    let mut missing = Vec::new();
    for tool in ["systemd-nspawn", "nsenter", "tar", "dpkg-deb"]
        .iter()
        .chain(tools)
    {
        if !on_path(tool) {
            missing.push(tool.to_string());
        }
    }
    if !image_path(image).exists() && !on_path("debootstrap") {
        missing.push("debootstrap (the image is not cached yet)".into());
    }
    if std::env::var_os("COHORT_NSPAWN_DEB").is_none() && !on_path("cargo") {
        missing.push("cargo (to build the package; or set COHORT_NSPAWN_DEB)".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (apt-get install systemd-container debootstrap util-linux)",
            missing.join(", ")
        ))
    }
}

/// The .deb under test: COHORT_NSPAWN_DEB, or built by packaging/build.
pub fn package() -> PathBuf {
    if let Some(path) = std::env::var_os("COHORT_NSPAWN_DEB") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "COHORT_NSPAWN_DEB={} is not a file",
            path.display()
        );
        return path;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join("packaging/build"))
        .args(["--no-checks", "--deb-only"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .expect("run packaging/build");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "packaging/build failed:\n{stdout}");
    let deb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deb: "))
        .unwrap_or_else(|| panic!("packaging/build did not name the .deb:\n{stdout}"));
    PathBuf::from(deb)
}

pub fn image_path(image: &Image) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("nspawn-cache")
        .join(image.name)
}

/// The cached rootfs tarball, made with debootstrap the first time.
pub fn image(image: &Image) -> PathBuf {
    let path = image_path(image);
    if path.exists() {
        return path;
    }
    let cache = path.parent().unwrap();
    fs::create_dir_all(cache).expect("cache dir");
    let build = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    let mirror = std::env::var("COHORT_DEBIAN_MIRROR").unwrap_or(DEFAULT_MIRROR.into());
    eprintln!(
        "building the {SUITE} image {} with debootstrap from {mirror} (cached afterwards)",
        image.name
    );
    let built = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", image.packages),
            SUITE,
        ])
        .arg(&build)
        .arg(&mirror)
        .stdout(Stdio::null())
        .status()
        .expect("run debootstrap");
    if !built.success() {
        let _ = fs::remove_dir_all(&build);
        panic!("debootstrap failed ({built})");
    }
    // Downloaded .debs are not needed in the image.
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "rm -f {}/var/cache/apt/archives/*.deb",
            build.display()
        ))
        .status();
    let partial = cache.join(format!("{}.partial-{}", image.name, std::process::id()));
    check(
        Command::new("tar")
            .args(["--numeric-owner", "-cf"])
            .arg(&partial)
            .arg("-C")
            .arg(&build)
            .arg("."),
    );
    fs::rename(&partial, &path).expect("keep the image");
    fs::remove_dir_all(&build).expect("remove the debootstrap dir");
    path
}

/// The container's network.
pub enum Network<'a> {
    /// Its own namespace with only loopback (`--private-network`).
    Private,
    /// A namespace the test made (`--network-namespace-path`), e.g. one
    /// with a veth to a bridge.
    Namespace(&'a Path),
}

/// A booted container; halted and removed when dropped.
pub struct Machine {
    pub name: String,
    pub root: PathBuf,
    nspawn: Child,
    log: PathBuf,
    /// The container's PID 1 (systemd), as the host sees it.
    pub leader: u32,
}

impl Machine {
    /// Unpacks `image` into `work/root`, copies `files` into its /var/tmp
    /// and boots it as machine `cohort-TAG-PID`.
    pub fn boot(
        image: &Path,
        work: &Path,
        tag: &str,
        network: Network<'_>,
        files: &[&Path],
    ) -> Machine {
        let root = work.join("root");
        fs::create_dir_all(&root).expect("root dir");
        check(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(image)
                .arg("-C")
                .arg(&root),
        );
        for file in files {
            // /var/tmp: the container's /tmp is a fresh tmpfs.
            fs::copy(file, root.join("var/tmp").join(file_name(file))).expect("copy a file in");
        }
        let name = format!("cohort-{tag}-{}", std::process::id());
        let log = work.join("nspawn.log");
        let mut command = Command::new("systemd-nspawn");
        command.args(["--keep-unit", "--register=no", "--console=passive"]);
        match network {
            Network::Private => {
                command.arg("--private-network");
            }
            Network::Namespace(path) => {
                command.arg(format!("--network-namespace-path={}", path.display()));
            }
        }
        let nspawn = command
            .arg(format!("--machine={name}"))
            .arg("-D")
            .arg(&root)
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).expect("log"))
            .stderr(fs::File::create(work.join("nspawn.err")).expect("log"))
            .spawn()
            .expect("start systemd-nspawn");
        let mut machine = Machine {
            name,
            root,
            nspawn,
            log,
            leader: 0,
        };
        let nspawn_pid = machine.nspawn.id();
        machine.leader = machine.wait("the container's systemd", SHORT, || {
            child_named(nspawn_pid, "systemd")
        });
        let state = machine.wait("the container's boot", BOOT, || {
            let out = machine.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded").then_some(state)
        });
        if state == "degraded" {
            eprintln!(
                "container {} degraded:\n{}",
                machine.name,
                machine.out("systemctl --failed --no-pager")
            );
        }
        machine
    }

    /// Runs a shell script inside the container with a clean environment.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .arg("-a")
            .args([
                "env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "DEBIAN_FRONTEND=noninteractive",
                "SYSTEMD_PAGER=",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a script that must succeed; its stdout, trimmed.
    pub fn out(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "in {}: `{script}` failed ({}):\n{}{}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn run(&self, script: &str) {
        self.out(script);
    }

    pub fn json(&self, script: &str) -> Value {
        let text = self.out(script);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{script}`: {e}:\n{text}"))
    }

    pub fn try_json(&self, script: &str) -> Option<Value> {
        let output = self.sh(script);
        output.status.success().then_some(())?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// A file of the container, read from the host (its root is a plain
    /// directory: everything but /tmp, /run and the API file systems).
    pub fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(self.root.join(path.trim_start_matches('/'))).ok()
    }

    /// `systemctl is-active`, which exits non-zero for anything but active.
    pub fn state(&self, unit: &str) -> String {
        let output = self.sh(&format!("systemctl is-active {unit}"));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    pub fn show(&self, unit: &str) -> HashMap<String, String> {
        self.out(&format!("systemctl show {unit}"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The unit's journal entries, each as journalctl's JSON.
    pub fn journal(&self, unit: &str) -> Vec<Value> {
        self.out(&format!("journalctl -u {unit} -o json --no-pager"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Polls `probe` until it gives a value, failing at the deadline with
    /// the container's log.
    pub fn wait<T>(&self, what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() >= deadline {
                let journal = if self.leader != 0 {
                    String::from_utf8_lossy(&self.sh("journalctl --no-pager -n 60").stdout)
                        .into_owned()
                } else {
                    fs::read_to_string(&self.log).unwrap_or_default()
                };
                panic!(
                    "{}: waited {within:?} for {what}, in vain. Last of the journal:\n{journal}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGTERM to systemd-nspawn halts the container; SIGKILL if that
        // takes too long.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        loop {
            match self.nspawn.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            // Say what held the halt up: the end of the console.
            let console = fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = console.lines().collect();
            eprintln!(
                "{}: halting took {:.1}s; the console's last lines:\n{}",
                self.name,
                started.elapsed().as_secs_f64(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
        // nspawn leaves its propagation dir when /run is not a tmpfs.
        let _ = fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The child of `parent` whose command name is `name`.
pub fn child_named(parent: u32, name: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let (head, tail) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1;
        let ppid: u32 = tail.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

pub fn check(command: &mut Command) {
    let output = command.output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Time spent in each phase, printed at the end.
pub struct Phases {
    name: &'static str,
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    pub fn new(name: &'static str) -> Phases {
        let now = Instant::now();
        Phases {
            name,
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    pub fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }

    pub fn report(&self) -> String {
        let phases: Vec<String> = self
            .done
            .iter()
            .map(|(p, d)| format!("{p} {:.1}s", d.as_secs_f64()))
            .collect();
        format!(
            "{}: {:.1}s in all: {}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            phases.join(", ")
        )
    }
}
