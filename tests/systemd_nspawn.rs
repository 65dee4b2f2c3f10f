//! The .deb on a real systemd: a Debian bookworm container (debootstrap,
//! cached as a tarball under target/tmp/nspawn-cache) booted with
//! systemd-nspawn, where the package is installed with apt and the agent
//! is run, reloaded, frozen, clustered, upgraded and purged the way an
//! operator would.
//!
//! Needs root, systemd-nspawn and nsenter (and debootstrap while the image
//! is not cached). Without them the test says why and passes, unless
//! `COHORT_REQUIRE_NSPAWN=1` makes that a failure. The package is built by
//! `packaging/build --no-checks --deb-only`, or taken from
//! `COHORT_NSPAWN_DEB=PATH`.
//!
//! Every wait polls a condition until a deadline; the container is halted
//! and its files removed at the end, pass or fail.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bump when the image recipe changes: a new name builds a new cache.
const IMAGE: &str = "debian-bookworm-systemd-v1.tar";
const SUITE: &str = "bookworm";
const PACKAGES: &str = "systemd,systemd-sysv,dbus,procps";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// The unit's WatchdogSec= is 15 s; SIGABRT, then RestartSec=2s.
const WATCHDOG_RESTART: Duration = Duration::from_secs(60);
const BOOT: Duration = Duration::from_secs(90);
const SHORT: Duration = Duration::from_secs(30);

#[test]
fn the_package_runs_under_a_real_systemd() {
    if let Err(reason) = preconditions() {
        if std::env::var("COHORT_REQUIRE_NSPAWN").as_deref() == Ok("1") {
            panic!("COHORT_REQUIRE_NSPAWN=1 but the boot test cannot run: {reason}");
        }
        // Straight to stderr: the harness would hide an eprintln! of a
        // passing test, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: the systemd-nspawn boot test cannot run here: {reason}"
        );
        return;
    }
    let mut clock = Phases::new();
    let work = tempfile::Builder::new()
        .prefix("nspawn-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");

    let deb = package();
    let upgrade = higher_version(&deb, work.path());
    clock.done("package");
    let image = image();
    clock.done("image");

    let machine = Machine::boot(&image, work.path(), &[&deb, &upgrade.path]);
    clock.done("boot");

    // Install: the user, the directories and a key; nothing started.
    let deb_name = file_name(&deb);
    machine.run(&format!(
        "apt-get install -y --no-install-recommends /var/tmp/{deb_name}"
    ));
    assert_eq!(
        machine.state("cohort.service"),
        "inactive",
        "install must not start the service"
    );
    assert_eq!(
        machine.out("systemctl is-enabled cohort.service || true"),
        "disabled"
    );
    assert!(
        !machine.out("getent passwd cohort").is_empty(),
        "no user cohort"
    );
    assert_eq!(
        machine.out("stat -c '%a %U %G' /var/lib/cohort"),
        "750 cohort cohort"
    );
    assert_eq!(
        machine.out("stat -c '%a %U %G' /etc/cohort"),
        "2775 root cohort"
    );
    assert_eq!(
        machine.out("stat -c '%a %U %G' /etc/cohort/keys/gossip.key"),
        "640 root cohort"
    );
    assert!(
        machine
            .out("dpkg-query -W -f='${Conffiles}' cohort")
            .contains("/etc/cohort/cohort.yaml"),
        "/etc/cohort/cohort.yaml must be a conffile"
    );
    for path in [
        "/usr/share/man/man1/cohort.1.gz",
        "/usr/share/bash-completion/completions/cohort",
        "/usr/lib/sysusers.d/cohort.conf",
        "/usr/lib/tmpfiles.d/cohort.conf",
        "/usr/share/doc/cohort/copyright",
        "/usr/share/doc/cohort/examples/topology.yaml",
    ] {
        machine.run(&format!("test -s {path}"));
    }
    machine.run("dpkg --verify cohort");
    clock.done("install");

    // The operator's edit of the conffile, which the upgrade must keep.
    machine.run(
        "printf '%s\\n' '# edited by the boot test' 'node: solo' 'cluster: boot' \
         'bind: 127.0.0.1:3301' >> /etc/cohort/cohort.yaml",
    );

    // Start: Type=notify, so `systemctl start` returns once READY=1 came.
    machine.run("systemctl start cohort.service");
    let show = machine.show("cohort.service");
    assert_eq!(show["Type"], "notify");
    assert_eq!(show["ActiveState"], "active");
    assert_eq!(show["SubState"], "running");
    assert_eq!(show["NRestarts"], "0");
    let pid = show["MainPID"].clone();
    let status = machine.json("cohort --format json status");
    assert_eq!(status["node"], "solo");
    assert_eq!(status["cluster"], "boot");
    assert_eq!(status["pid"].to_string(), pid);
    let uuid = status["uuid"].as_str().unwrap().to_string();
    let generation = status["generation"].as_u64().unwrap();
    // STATUS= comes from the agent's own state, kept current.
    let text = machine.wait("the status line", SHORT, || {
        let text = machine.show("cohort.service")["StatusText"].clone();
        text.starts_with("boot: 1 alive").then_some(text)
    });
    eprintln!("status line: {text}");
    // WATCHDOG=1 keeps coming: systemd's record of the last ping moves.
    let first_ping = machine.show("cohort.service")["WatchdogTimestampMonotonic"].clone();
    machine.wait("a second watchdog ping", SHORT, || {
        let ping = machine.show("cohort.service")["WatchdogTimestampMonotonic"].clone();
        (ping != first_ping && ping != "0").then_some(())
    });
    clock.done("start");

    // Reload: SIGHUP through ExecReload; the same process, the same
    // incarnation (no rejoin), and the journal says it reloaded.
    machine.run("systemctl reload cohort.service");
    let reloaded = machine.wait("the agent's `reloaded` entry", SHORT, || {
        machine
            .journal("cohort.service")
            .into_iter()
            .find(|e| e["MESSAGE"] == "reloaded")
    });
    let show = machine.show("cohort.service");
    assert_eq!(show["MainPID"], pid, "reload must not restart the process");
    assert_eq!(show["ActiveState"], "active");
    let status = machine.json("cohort --format json status");
    assert_eq!(status["uuid"], uuid.as_str());
    assert_eq!(
        status["generation"].as_u64(),
        Some(generation),
        "reload must not rejoin"
    );
    let members = machine.json("cohort --format json members");
    let me = member(&members, "solo");
    assert_eq!(me["generation"].as_u64(), Some(generation));
    assert_eq!(me["status"], "alive");

    // Journald: structured fields on the agent's entries.
    for (field, want) in [
        ("NODE", "solo"),
        ("CLUSTER", "boot"),
        ("NODE_UUID", uuid.as_str()),
        ("SYSLOG_IDENTIFIER", "cohort"),
        ("PRIORITY", "6"),
        ("TARGET", "cohort::agent::reload"),
    ] {
        assert_eq!(reloaded[field], want, "{field} in {reloaded}");
    }
    let journal = machine.journal("cohort.service");
    let started = journal
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("agent started"))
        })
        .expect("an `agent started` entry");
    assert_eq!(started["UUID"], uuid.as_str());
    assert_eq!(started["GENERATION"], generation.to_string());
    assert_eq!(started["BIND"], "127.0.0.1:3301");
    // systemd had nothing to say about the unit's directories.
    let said = machine.out("journalctl -u cohort.service --no-pager -o cat");
    assert!(!said.contains("but the mode is different"), "{said}");
    clock.done("reload + journal");

    // Watchdog: a frozen agent stops pinging; systemd kills it and
    // Restart= brings it back with the same identity.
    machine.run(&format!("kill -STOP {pid}"));
    machine.wait("the watchdog restart", WATCHDOG_RESTART, || {
        let show = machine.show("cohort.service");
        (show["NRestarts"] == "1" && show["ActiveState"] == "active" && show["MainPID"] != pid)
            .then_some(())
    });
    assert!(
        machine
            .out("journalctl -u cohort.service --no-pager -o cat")
            .contains("Failed with result 'watchdog'"),
        "the restart was not the watchdog's"
    );
    let status = machine.json("cohort --format json status");
    assert_eq!(status["uuid"], uuid.as_str(), "the UUID survives a restart");
    let generation = status["generation"].as_u64().unwrap();
    clock.done("watchdog");

    // Two nodes in one machine with cohort@: they form a cluster.
    for (name, port, api, join) in [
        ("a", 3311, 8311, ""),
        ("b", 3312, 8312, "join: [\"127.0.0.1:3311\"]"),
    ] {
        machine.run(&format!(
            "install -d -g cohort -m 2775 /etc/cohort/{name} && printf '%s\\n' \
             'node: {name}' 'cluster: boot' 'bind: 127.0.0.1:{port}' \
             'api: {{ http: \"127.0.0.1:{api}\" }}' '{join}' > /etc/cohort/{name}/cohort.yaml"
        ));
    }
    machine.run("systemctl start cohort@a.service cohort@b.service");
    for api in [8311, 8312] {
        machine.wait(&format!("2 alive members on :{api}"), SHORT, || {
            let members = machine.json(&format!(
                "cohort --api 127.0.0.1:{api} --format json members"
            ));
            (alive(&members) == ["a", "b"]).then_some(())
        });
    }
    // The unit gives each instance its own topology file.
    let a_status = machine.json("cohort --api 127.0.0.1:8311 --format json status");
    assert_eq!(a_status["topology"]["path"], "/etc/cohort/a/topology.yaml");
    let a_generation = machine.json("cohort --api 127.0.0.1:8311 --format json status")
        ["generation"]
        .as_u64()
        .unwrap();
    assert_eq!(
        machine.out("stat -c '%U' /var/lib/cohort/a/node-id /var/lib/cohort/b/node-id"),
        "cohort\ncohort"
    );
    // Stopping one is a graceful leave: the other sees it `left` at once.
    machine.run("systemctl stop cohort@b.service");
    machine.wait("b `left` on a", SHORT, || {
        let members = machine.json("cohort --api 127.0.0.1:8311 --format json members");
        (member(&members, "b")["status"] == "left").then_some(())
    });
    // Per-packet chatter is debug: three agents that ran for a while,
    // joined, left, restarted, logged little at the default level.
    let entries = machine
        .out("journalctl -u 'cohort*' -o cat --no-pager SYSLOG_IDENTIFIER=cohort | wc -l")
        .parse::<usize>()
        .unwrap();
    eprintln!("{entries} agent journal entries at the default level");
    assert!(
        entries < 150,
        "{entries} agent entries at the default level"
    );
    clock.done("cohort@a + cohort@b");

    // The exposure systemd itself computes for the installed units.
    for unit in ["cohort.service", "cohort@a.service"] {
        let exposure = machine.out(&format!(
            "systemd-analyze security --no-pager {unit} | tail -n 1"
        ));
        eprintln!("{exposure}");
        assert!(exposure_of(&exposure) <= 2.0, "{exposure}");
    }

    // Upgrade to a higher version: the edited conffile stays, the UUID
    // stays, running agents are restarted and a stopped one stays stopped.
    machine.run(&format!(
        "apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold \
         /var/tmp/{}",
        file_name(&upgrade.path)
    ));
    assert_eq!(
        machine.out("dpkg-query -W -f='${Version}' cohort"),
        upgrade.version
    );
    assert!(
        machine
            .out("cat /etc/cohort/cohort.yaml")
            .contains("# edited by the boot test\nnode: solo\n"),
        "the upgrade lost the edit of /etc/cohort/cohort.yaml"
    );
    let status = machine.wait("solo restarted by the upgrade", SHORT, || {
        let status = machine.try_json("cohort --format json status")?;
        (status["generation"].as_u64()? > generation).then_some(status)
    });
    assert_eq!(
        status["uuid"],
        uuid.as_str(),
        "the upgrade changed the node's UUID"
    );
    machine.wait("a restarted by the upgrade", SHORT, || {
        let status = machine.try_json("cohort --api 127.0.0.1:8311 --format json status")?;
        (status["generation"].as_u64()? > a_generation).then_some(())
    });
    assert_eq!(
        machine.state("cohort@b.service"),
        "inactive",
        "the upgrade started a stopped agent"
    );
    assert_eq!(machine.state("cohort.service"), "active");
    clock.done("upgrade");

    // Purge: every agent stopped, the state, the key and the user gone.
    machine.run("apt-get purge -y cohort");
    assert_eq!(machine.state("cohort.service"), "inactive");
    assert_eq!(machine.state("cohort@a.service"), "inactive");
    assert_eq!(
        machine.out("pgrep -x cohort || true"),
        "",
        "an agent survived the purge"
    );
    for gone in [
        "/var/lib/cohort",
        "/usr/bin/cohort",
        "/etc/cohort/cohort.yaml",
        "/etc/cohort/keys",
    ] {
        machine.run(&format!("test ! -e {gone}"));
    }
    assert_eq!(
        machine.out("getent passwd cohort || true"),
        "",
        "the user survived the purge"
    );
    assert_eq!(
        machine.out("getent group cohort || true"),
        "",
        "the group survived the purge"
    );
    clock.done("purge");
    drop(machine);
    clock.done("halt");
    eprintln!("{}", clock.report());
}

/// Why the test cannot run here, if it cannot.
fn preconditions() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".into());
    }
    if !Path::new("/proc/self/ns/pid").exists() {
        return Err("no namespaces".into());
    }
    let mut missing = Vec::new();
    for tool in ["systemd-nspawn", "nsenter", "tar", "dpkg-deb"] {
        if !on_path(tool) {
            missing.push(tool);
        }
    }
    if !image_path().exists() && !on_path("debootstrap") {
        missing.push("debootstrap (the image is not cached yet)");
    }
    if std::env::var_os("COHORT_NSPAWN_DEB").is_none() && !on_path("cargo") {
        missing.push("cargo (to build the package; or set COHORT_NSPAWN_DEB)");
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

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The .deb under test: COHORT_NSPAWN_DEB, or built by packaging/build.
fn package() -> PathBuf {
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

struct Upgrade {
    path: PathBuf,
    version: String,
}

/// The same package under a higher version (`+upgrade1`): what an
/// upgrade does to conffiles, state and running agents does not depend on
/// what changed in the binary.
fn higher_version(deb: &Path, work: &Path) -> Upgrade {
    let unpacked = work.join("upgrade");
    check(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&unpacked));
    let control_path = unpacked.join("DEBIAN/control");
    let control = fs::read_to_string(&control_path).expect("control");
    let old = control
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("a Version field")
        .to_string();
    let version = format!("{old}+upgrade1");
    fs::write(
        &control_path,
        control.replace(
            &format!("Version: {old}\n"),
            &format!("Version: {version}\n"),
        ),
    )
    .expect("write control");
    let path = work.join(format!("cohort_{version}_amd64.deb"));
    check(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "-b"])
            .arg(&unpacked)
            .arg(&path),
    );
    fs::remove_dir_all(&unpacked).expect("remove the unpacked package");
    Upgrade { path, version }
}

fn image_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("nspawn-cache")
        .join(IMAGE)
}

/// The cached rootfs tarball, made with debootstrap the first time.
fn image() -> PathBuf {
    let image = image_path();
    if image.exists() {
        return image;
    }
    let cache = image.parent().unwrap();
    fs::create_dir_all(cache).expect("cache dir");
    let build = cache.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&build);
    let mirror = std::env::var("COHORT_DEBIAN_MIRROR").unwrap_or(DEFAULT_MIRROR.into());
    eprintln!("building the {SUITE} image with debootstrap from {mirror} (cached afterwards)");
    let built = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
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
    let partial = cache.join(format!("{IMAGE}.partial"));
    check(
        Command::new("tar")
            .args(["--numeric-owner", "-cf"])
            .arg(&partial)
            .arg("-C")
            .arg(&build)
            .arg("."),
    );
    fs::rename(&partial, &image).expect("keep the image");
    fs::remove_dir_all(&build).expect("remove the debootstrap dir");
    image
}

/// A booted container; halted and removed when dropped.
struct Machine {
    name: String,
    root: PathBuf,
    nspawn: Child,
    log: PathBuf,
    /// The container's PID 1 (systemd), as the host sees it.
    leader: u32,
}

impl Machine {
    fn boot(image: &Path, work: &Path, debs: &[&Path]) -> Machine {
        let root = work.join("root");
        fs::create_dir_all(&root).expect("root dir");
        check(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(image)
                .arg("-C")
                .arg(&root),
        );
        for deb in debs {
            // /var/tmp: the container's /tmp is a fresh tmpfs.
            fs::copy(deb, root.join("var/tmp").join(file_name(deb))).expect("copy the .deb");
        }
        let name = format!("cohort-boot-{}", std::process::id());
        let log = work.join("nspawn.log");
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--keep-unit",
                "--register=no",
                "--console=passive",
                "--private-network",
            ])
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
                "container degraded:\n{}",
                machine.out("systemctl --failed --no-pager")
            );
        }
        machine
    }

    /// Runs a shell script inside the container with a clean environment.
    fn sh(&self, script: &str) -> Output {
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
    fn out(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "in the container: `{script}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn run(&self, script: &str) {
        self.out(script);
    }

    fn json(&self, script: &str) -> Value {
        let text = self.out(script);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("`{script}`: {e}:\n{text}"))
    }

    fn try_json(&self, script: &str) -> Option<Value> {
        let output = self.sh(script);
        output.status.success().then_some(())?;
        serde_json::from_slice(&output.stdout).ok()
    }

    /// `systemctl is-active`, which exits non-zero for anything but active.
    fn state(&self, unit: &str) -> String {
        let output = self.sh(&format!("systemctl is-active {unit}"));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    fn show(&self, unit: &str) -> std::collections::HashMap<String, String> {
        self.out(&format!("systemctl show {unit}"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The unit's journal entries, each as journalctl's JSON.
    fn journal(&self, unit: &str) -> Vec<Value> {
        self.out(&format!("journalctl -u {unit} -o json --no-pager"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Polls `probe` until it gives a value, failing at the deadline with
    /// the container's log.
    fn wait<T>(&self, what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
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
                panic!("waited {within:?} for {what}, in vain. Last of the journal:\n{journal}");
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
        let deadline = Instant::now() + Duration::from_secs(30);
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
        // nspawn leaves its propagation dir when /run is not a tmpfs.
        let _ = fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The child of `parent` whose command name is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
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

/// `cohort --format json members` prints the list of members.
fn all_members(members: &Value) -> &[Value] {
    members
        .as_array()
        .or_else(|| members["members"].as_array())
        .map_or(&[], Vec::as_slice)
}

fn member<'a>(members: &'a Value, name: &str) -> &'a Value {
    all_members(members)
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name} in {members}"))
}

fn alive(members: &Value) -> Vec<String> {
    let mut names: Vec<String> = all_members(members)
        .iter()
        .filter(|m| m["status"] == "alive")
        .filter_map(|m| m["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// `→ Overall exposure level for cohort.service: 1.1 OK :-)` → 1.1
fn exposure_of(line: &str) -> f64 {
    line.rsplit_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure figure in `{line}`"))
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn check(command: &mut Command) {
    let output = command.output().expect("run a command");
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Time spent in each phase, printed at the end.
struct Phases {
    started: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        let now = Instant::now();
        Phases {
            started: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.done.push((phase, now - self.last));
        self.last = now;
    }

    fn report(&self) -> String {
        let phases: Vec<String> = self
            .done
            .iter()
            .map(|(p, d)| format!("{p} {:.1}s", d.as_secs_f64()))
            .collect();
        format!(
            "boot test: {:.1}s in all: {}",
            self.started.elapsed().as_secs_f64(),
            phases.join(", ")
        )
    }
}
