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
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[path = "support/nspawn.rs"]
mod nspawn;

use nspawn::{check, file_name, Machine, Network, Phases, SHORT, SYSTEMD_IMAGE};

/// The unit's WatchdogSec= is 15 s; SIGABRT, then RestartSec=2s.
const WATCHDOG_RESTART: Duration = Duration::from_secs(60);

#[test]
fn the_package_runs_under_a_real_systemd() {
    if let Err(reason) = nspawn::preconditions(&SYSTEMD_IMAGE, &[]) {
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
    let mut clock = Phases::new("boot test");
    let work = tempfile::Builder::new()
        .prefix("nspawn-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");

    let deb = nspawn::package();
    let upgrade = higher_version(&deb, work.path());
    clock.done("package");
    let image = nspawn::image(&SYSTEMD_IMAGE);
    clock.done("image");

    let machine = Machine::boot(
        &image,
        work.path(),
        "boot",
        Network::Private,
        &[&deb, &upgrade.path],
    );
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
    // The API's socket: root and the group cohort write there without a
    // token (the CLI above went through it: it is the default when it
    // exists); over TCP a write needs the token, which this node lacks.
    assert_eq!(
        machine.out("stat -c '%a %U %G' /run/cohort /run/cohort/api.sock"),
        "750 cohort cohort\n660 cohort cohort"
    );
    machine.run("cohort event boot-socket");
    let tcp = machine.sh("cohort --api 127.0.0.1:8300 event boot-tcp");
    assert_eq!(tcp.status.code(), Some(4), "{tcp:?}");
    assert!(
        String::from_utf8_lossy(&tcp.stderr)
            .contains("use its unix socket (cohort --socket /run/cohort/api.sock)"),
        "{tcp:?}"
    );
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
    // The unit gives each instance its own topology file and API socket.
    let a_status = machine.json("cohort --api 127.0.0.1:8311 --format json status");
    assert_eq!(a_status["topology"]["path"], "/etc/cohort/a/topology.yaml");
    for name in ["a", "b"] {
        let status = machine.json(&format!(
            "cohort --socket /run/cohort/{name}/api.sock --format json status"
        ));
        assert_eq!(status["node"], name);
    }
    assert_eq!(
        machine.out("stat -c '%a %U %G' /run/cohort/a/api.sock"),
        "660 cohort cohort"
    );
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
    // Restarting cohort.service left the instance's socket where it was.
    let a_socket = machine.json("cohort --socket /run/cohort/a/api.sock --format json status");
    assert_eq!(a_socket["node"], "a");
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
