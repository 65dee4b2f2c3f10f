//! The `cohort` command. Flags are defined once here and generate `--help`,
//! shell completions and the man page; each command's work lives in the
//! library, and errors become one line for people at this edge.

mod client;
mod dev;
mod exit;
mod issues;
mod members;
mod output;
mod raft;
mod route;
mod topology;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::agent::{self, AgentOptions};
use crate::api::{self, Status};
use crate::config::{self, ConfigError, FileKind, LogFormat};

use exit::{exit_status, Exit};
use output::{key_values, ColorChoice, Style};

const AGENT_HELP: &str = "\
Exit status:
  0  stopped cleanly (SIGTERM, SIGINT)
  1  could not start: a bad node config, a taken port, a locked or unusable data dir
  2  usage error: an unknown option, a missing or malformed argument";

const VALIDATE_HELP: &str = "\
--format json prints {file, kind, ok, problems} on stdout instead.

Exit status:
  0  the file is good
  1  the file has problems, or cannot be read
  2  usage error: an unknown option, a missing or malformed argument";

const STATUS_HELP: &str = concat!(
    "--format json prints the agent's answer (GET /v1/status).\n\n",
    exit_status!("0  success", "1  the answer could not be read")
);

const MEMBERS_HELP: &str = concat!(
    "--format json prints the members shown, one object each.\n\n",
    exit_status!(
        "0  success",
        "1  fewer than N members alive within --timeout (--wait-alive)"
    )
);

const WRITE_HELP: &str = concat!(
    "Prints the agent's answer in one line; --format json prints it as {message}.\n\n",
    exit_status!("0  done", "1  refused by the agent")
);

const EVENT_HELP: &str = concat!(
    "The whole event must fit in one gossip packet (about 1 KiB of payload with the \
default max_packet_size of 1400): send a reference (a URL, a version) rather than \
the data. Prints the agent's answer in one line; --format json prints it as \
{message}.\n\n",
    exit_status!(
        "0  sent",
        "1  refused: a bad name, too large, too many in flight"
    )
);

/// cohort: a cluster agent with SWIM membership, Raft leadership and
/// two-phase topology apply.
#[derive(Debug, Parser)]
#[command(name = "cohort", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// The agent API to talk to over TCP (host:port; or COHORT_API)
    /// [default: the unix socket /run/cohort/api.sock when it exists, else
    /// 127.0.0.1:8300].
    #[arg(long, global = true, value_name = "ADDR", conflicts_with = "socket")]
    pub api: Option<SocketAddr>,

    /// The agent's unix socket (or COHORT_SOCKET): no token needed, the
    /// file's permissions decide (root and the group cohort). cohort@NAME
    /// serves /run/cohort/NAME/api.sock.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// A file holding the agent's API token, sent as `Authorization:
    /// Bearer`: needed over TCP for writes, and for every read but
    /// /v1/health of an agent listening beyond loopback.
    #[arg(long, global = true, env = "COHORT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Output of every command that answers: text for people, or JSON on
    /// stdout (`monitor`: one object a line); errors stay on stderr.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// Colour status words: `auto` when stdout is a terminal and NO_COLOR
    /// is unset.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: one node of the cluster.
    #[command(after_help = AGENT_HELP)]
    Agent(AgentArgs),
    /// Show this node's identity and state.
    #[command(after_help = STATUS_HELP)]
    Status,
    /// Apply a topology to the whole cluster through two-phase commit: it
    /// is committed on every node or on none.
    #[command(after_help = topology::APPLY_HELP)]
    Apply(topology::ApplyArgs),
    /// Show the committed topology, or compare a file with it (`cohort
    /// topology diff FILE`).
    #[command(after_help = topology::TOPOLOGY_HELP)]
    Topology(topology::TopologyArgs),
    /// Show the Raft leader and term, this node's role, the voters and
    /// learners, and each replica set's master with its fencing generation.
    #[command(after_help = raft::LEADERS_HELP)]
    Leaders(raft::ReadArgs),
    /// The Raft group: list its peers (`cohort raft peers`), hand the
    /// leadership to another node (`cohort raft transfer-leader NODE`).
    Raft {
        #[command(subcommand)]
        action: raft::RaftAction,
    },
    /// Replica-set failover by hand: `cohort failover promote REPLICASET
    /// NODE` makes NODE the set's master.
    Failover {
        #[command(subcommand)]
        action: raft::FailoverAction,
    },
    /// Show which replica set a key belongs to (weighted rendezvous
    /// hashing) and the address of that set's master now.
    #[command(after_help = route::ROUTE_HELP)]
    Route {
        /// The key, any text.
        key: String,
    },
    /// Show what is wrong in the cluster now: every node's issues (dead or
    /// suspect members, no leader or quorum, a set without a master,
    /// config mismatch, clock skew, disk trouble, ...), merged.
    #[command(after_help = issues::ISSUES_HELP)]
    Issues(issues::IssuesArgs),
    /// List the members this node knows, with their status and incarnation.
    #[command(after_help = MEMBERS_HELP)]
    Members(MembersArgs),
    /// Stream the node's events as they happen: members, user events, the
    /// cluster state, applies, leaders and masters (Ctrl-C to stop).
    #[command(after_help = members::MONITOR_HELP)]
    Monitor(members::MonitorArgs),
    /// Probe a new address and join the cluster through it.
    #[command(after_help = WRITE_HELP)]
    Join {
        /// host:port of a member.
        address: String,
    },
    /// Leave the cluster gracefully: peers mark this node `left` at once.
    #[command(after_help = WRITE_HELP)]
    Leave,
    /// Send a user event to every node: each delivers it once, to `monitor`
    /// streams and to the handlers of its node config (`events.handlers`).
    #[command(after_help = EVENT_HELP)]
    Event {
        /// Event name: letters, digits, '-', '_' and '.'.
        name: String,
        /// The payload; `-` reads it from stdin (any bytes). Empty if absent.
        payload: Option<String>,
    },
    /// Check a node config or topology file: `FILE: ok` on stdout when good, else every problem on stderr as FILE:LINE:COLUMN: message.
    #[command(after_help = VALIDATE_HELP)]
    Validate {
        #[arg(value_enum)]
        kind: ValidateKind,
        /// The file to check.
        file: PathBuf,
    },
    /// Run a real local cluster of N agent processes on loopback (Ctrl-C stops them all).
    Dev(dev::DevArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Manpage,
}

#[derive(Debug, clap::Args)]
pub struct MembersArgs {
    /// Show only members with these statuses.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub status: Vec<MemberStatusArg>,
    /// Wait until at least this many members are alive, then show them.
    #[arg(long, value_name = "N")]
    pub wait_alive: Option<usize>,
    /// How long --wait-alive may wait.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub timeout: crate::config::HumanDuration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MemberStatusArg {
    Alive,
    Suspect,
    Dead,
    Left,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValidateKind {
    /// A node config (cohort.yaml).
    Node,
    /// A topology (topology.yaml).
    Topology,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Node config file [default: /etc/cohort/cohort.yaml; none with --dev].
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Development defaults: one node on 127.0.0.1:3301, state under the temp dir, no key file.
    #[arg(long)]
    pub dev: bool,
    /// This node's name (overrides the config).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Gossip/rpc address (overrides the config).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Data dir (overrides the config).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The topology file this node watches and rewrites (overrides the
    /// config's `topology`).
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// HTTP API address (overrides the config).
    #[arg(long, value_name = "ADDR")]
    pub api_http: Option<SocketAddr>,
    /// The API's unix socket (overrides the config's api.socket; cohort@NAME
    /// passes /run/cohort/NAME/api.sock).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or e.g. cohort=debug,info.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Auto,
    Text,
    Json,
    Journald,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> LogFormat {
        match f {
            LogFormatArg::Auto => LogFormat::Auto,
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Journald => LogFormat::Journald,
        }
    }
}

/// Runs one command line; the process exits with what it returns.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Agent(_) | Command::Dev(_)) {
        // `cohort members | head` should end quietly like any Unix tool,
        // not panic on a closed pipe. The agent keeps SIGPIPE ignored.
        // SAFETY: called before any other thread exists.
        let _ = unsafe {
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            )
        };
    }
    Style::install(cli.color);
    let target = client::Target {
        api: cli.api,
        socket: cli.socket.clone(),
        token_file: cli.token_file.clone(),
    };
    let result = match cli.command {
        Command::Agent(args) => return run_agent(args),
        Command::Validate { kind, file } => return validate(kind, &file, cli.format),
        Command::Status => status(&target, cli.format),
        Command::Apply(args) => return report(topology::apply(&target, cli.format, &args)),
        Command::Topology(args) => {
            return report(match args.action {
                None | Some(topology::TopologyAction::Show) => topology::show(&target, cli.format),
                Some(topology::TopologyAction::Diff { file }) => {
                    topology::diff(&target, cli.format, file.as_deref())
                }
            })
        }
        Command::Leaders(args) => raft::leaders(&target, cli.format, &args),
        Command::Raft { action } => raft::raft(&target, cli.format, action),
        Command::Failover { action } => raft::failover(&target, cli.format, action),
        Command::Route { key } => return report(route::route(&target, cli.format, &key)),
        Command::Issues(args) => return report(issues::issues(&target, cli.format, &args)),
        Command::Members(args) => members::list(&target, cli.format, &args),
        Command::Monitor(args) => return report(members::monitor(&target, cli.format, &args)),
        Command::Join { address } => members::write(
            &target,
            cli.format,
            "/v1/join",
            &api::JoinRequest { address },
        ),
        Command::Leave => members::write(&target, cli.format, "/v1/leave", &serde_json::json!({})),
        Command::Event { name, payload } => members::send_event(&target, cli.format, name, payload),
        Command::Dev(args) => dev::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cohort", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("cannot write the man page"),
    };
    report(result.map(|()| ExitCode::SUCCESS))
}

/// The exit status of a command (see `exit::Exit`); its error as one line
/// on stderr, or as `FILE:LINE:COLUMN: message` lines when a file has
/// problems.
fn report(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ConfigError>() {
                Some(ConfigError::Invalid(diagnostics)) => eprintln!("{diagnostics}"),
                _ => eprintln!("cohort: {e:#}"),
            }
            Exit::of_error(&e).into()
        }
    }
}

fn run_agent(args: AgentArgs) -> ExitCode {
    let options = AgentOptions {
        config: args.config,
        dev: args.dev,
        node: args.node,
        bind: args.bind,
        data_dir: args.data_dir,
        topology: args.topology,
        api_http: args.api_http,
        api_socket: args.api_socket,
        log_level: args.log_level,
        log_format: args.log_format.map(Into::into),
    };
    match agent::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_diagnostics() => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cohort: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Problems go to stderr one a line, so `validate:` in Ansible and editors
/// can show them; a good file prints `FILE: ok` on stdout. With `--format
/// json`, `{file, kind, ok, problems}` on stdout either way.
fn validate(kind: ValidateKind, file: &std::path::Path, format: OutputFormat) -> ExitCode {
    let (file_kind, name) = match kind {
        ValidateKind::Node => (FileKind::Node, "node"),
        ValidateKind::Topology => (FileKind::Topology, "topology"),
    };
    let problems: Vec<String> = match config::validate_file(file_kind, file) {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(diagnostics)) => diagnostics
            .to_string()
            .lines()
            .map(str::to_string)
            .collect(),
        Err(e) => vec![format!("cohort: {e}")],
    };
    let exit = if problems.is_empty() {
        Exit::Ok
    } else {
        Exit::No
    };
    match format {
        OutputFormat::Json => {
            let answer = serde_json::json!({
                "file": file.display().to_string(),
                "kind": name,
                "ok": problems.is_empty(),
                "problems": problems,
            });
            if let Err(e) = output::print_json(&answer) {
                eprintln!("cohort: {e}");
                return Exit::No.into();
            }
        }
        OutputFormat::Text if problems.is_empty() => println!("{}: ok", file.display()),
        OutputFormat::Text => eprintln!("{}", problems.join("\n")),
    }
    exit.into()
}

fn status(api: &client::Target, format: OutputFormat) -> anyhow::Result<()> {
    let client = client::Client::new(api)?;
    match format {
        // As the agent sent it: fields a newer agent adds are not lost.
        OutputFormat::Json => output::print_json(&client.get::<serde_json::Value>("/v1/status")?)?,
        OutputFormat::Text => print!(
            "{}",
            render_status(&client.get::<Status>("/v1/status")?, Style::current())
        ),
    }
    Ok(())
}

fn render_status(s: &Status, style: Style) -> String {
    let state = serde_json::to_value(s.topology.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    // A file that cannot be read is not compared, whatever the agent says.
    let readable = !matches!(
        s.topology.state,
        api::TopologyFileState::Missing | api::TopologyFileState::Unreadable
    );
    let committed = match (
        s.topology.matches_committed.filter(|_| readable),
        &s.topology.pending,
    ) {
        (Some(true), _) => ", matches committed".to_string(),
        (Some(false), Some(pending)) => format!(", differs from committed: {pending}"),
        (Some(false), None) => ", differs from committed".to_string(),
        (None, _) => String::new(),
    };
    let mut topology = format!("{} ({state}{committed})", s.topology.path);
    for problem in &s.topology.problems {
        topology.push_str("\n  ");
        topology.push_str(problem);
    }
    let raft_rows = s.raft.as_ref().map(raft::status_rows).unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![
        ("node", s.node.clone()),
        ("uuid", s.uuid.to_string()),
        ("generation", s.generation.to_string()),
        ("cluster", s.cluster.clone()),
    ];
    if let Some(cluster) = &s.cluster_state {
        rows.push((
            "cluster state",
            format!(
                "{} ({})",
                style.status(cluster.state.as_str()),
                agent::cluster_state::describe(cluster)
            ),
        ));
    }
    rows.extend([("bind", s.bind.clone()), ("advertise", s.advertise.clone())]);
    match &s.apply {
        Some(apply) => rows.extend(apply_rows(apply)),
        None => rows.push((
            "config version",
            s.config_version
                .map_or("none (no apply yet)".into(), |v| v.to_string()),
        )),
    }
    rows.extend(raft_rows.iter().map(|(k, v)| (k.as_str(), v.clone())));
    rows.extend([
        ("topology file", topology),
        ("data dir", s.data_dir.clone()),
        ("started", s.started_at.clone()),
        (
            "uptime",
            crate::config::HumanDuration::from_secs(s.uptime_seconds).to_string(),
        ),
        ("pid", s.pid.to_string()),
        ("version", s.version.clone()),
    ]);
    rows.extend(s.warnings.iter().map(|w| ("warning", w.clone())));
    key_values(&rows)
}

/// The two-phase commit side of `cohort status`.
fn apply_rows(apply: &api::ApplyState) -> Vec<(&'static str, String)> {
    let at = |ms: u64| api::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    let mut rows = vec![(
        "config version",
        if apply.version == 0 {
            "none (no apply yet)".to_string()
        } else {
            let hash: String = apply.hash.chars().take(12).collect();
            format!("{} ({hash})", apply.version)
        },
    )];
    let mut lock = apply.lock.clone();
    if let Some(seconds) = apply.waiting_seconds {
        lock.push_str(&format!(
            " for {}",
            crate::config::HumanDuration::from_secs(seconds)
        ));
    }
    rows.push(("apply lock", lock));
    if !apply.coordinating.is_empty() {
        rows.push(("coordinating", apply.coordinating.join(", ")));
    }
    if let Some(last) = &apply.last {
        rows.push((
            "last apply",
            format!("{} (at {})", last.summary, at(last.at_ms)),
        ));
    }
    if let Some(install) = &apply.install {
        let result = match &install.error {
            None => "ok".to_string(),
            Some(error) => format!("error: {error}"),
        };
        rows.push((
            "last install",
            format!(
                "version {}, {result} (at {})",
                install.version,
                at(install.at_ms)
            ),
        ));
    }
    rows.extend(apply.kept_edits.iter().map(|e| ("kept edit", e.clone())));
    if let Some(stopped) = &apply.stopped {
        rows.push(("apply stopped", stopped.clone()));
    }
    if let Some(failing) = &apply.disk_error {
        rows.push(("2PC writes failing", failing.clone()));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn sample_status() -> Status {
        Status {
            node: "n1".into(),
            uuid: uuid::Uuid::nil(),
            generation: 7,
            cluster: "dev".into(),
            bind: "127.0.0.1:3311".into(),
            advertise: "127.0.0.1:3311".into(),
            data_dir: "/tmp/d".into(),
            pid: 42,
            config_version: None,
            topology: api::TopologyFile {
                path: "/tmp/t.yaml".into(),
                state: api::TopologyFileState::Invalid,
                problems: vec!["/tmp/t.yaml:1:1: the file is empty".into()],
                matches_committed: None,
                pending: None,
            },
            apply: None,
            raft: None,
            cluster_state: None,
            started_at: "2026-11-23T07:57:46.175Z".into(),
            started_at_ms: 0,
            uptime_seconds: 61,
            version: "0.1.0".into(),
            warnings: vec!["UDP seems blocked: 60 gossip datagrams sent".into()],
        }
    }

    /// Every row's value starts in the same column.
    fn assert_aligned(text: &str) {
        let value_column = "config version  ".len();
        for line in text.lines().filter(|l| !l.starts_with("  ")) {
            let bytes = line.as_bytes();
            assert!(
                bytes[value_column - 2..value_column] == *b"  ",
                "{line:?} in\n{text}"
            );
            assert_ne!(bytes[value_column], b' ', "{line:?} in\n{text}");
        }
    }

    #[test]
    fn status_text_is_aligned_key_value_lines() {
        let status = sample_status();
        let text = render_status(&status, Style::PLAIN);
        assert_aligned(&text);
        assert!(text.contains(
            "topology file   /tmp/t.yaml (invalid)\n  /tmp/t.yaml:1:1: the file is empty\n"
        ));
        assert!(text.contains("config version  none (no apply yet)\n"));
        assert!(text.ends_with("warning         UDP seems blocked: 60 gossip datagrams sent\n"));
    }

    fn apply_state() -> api::ApplyState {
        api::ApplyState {
            version: 7,
            hash: "0123456789abcdef".repeat(4),
            lock: "waiting for the decision of txn n2-9 from node n2".into(),
            waiting_seconds: Some(42),
            coordinating: vec!["n1-3".into(), "n1-4".into()],
            last: Some(api::LastApplyInfo {
                at_ms: 1_795_420_666_175,
                txn: Some("n1-3".into()),
                committed: Some(7),
                took_ms: None,
                summary: "committed version 7 (txn n1-3)".into(),
            }),
            install: Some(api::InstallInfo {
                version: 7,
                at_ms: 1_795_420_667_000,
                error: None,
            }),
            kept_edits: vec![
                "/var/lib/cohort/kept/topology.yaml.1".into(),
                "/var/lib/cohort/kept/topology.yaml.2".into(),
            ],
            stopped: Some("cannot write /var/lib/cohort/apply: disk full".into()),
            disk_error: None,
        }
    }

    #[test]
    fn status_text_shows_the_apply_state() {
        let mut status = sample_status();
        status.config_version = Some(7);
        status.apply = Some(apply_state());
        let text = render_status(&status, Style::PLAIN);
        assert_aligned(&text);
        assert!(
            text.contains("config version  7 (0123456789ab)\n"),
            "{text}"
        );
        assert!(!text.contains("0123456789abc"), "{text}");
        assert!(
            text.contains(
                "apply lock      waiting for the decision of txn n2-9 from node n2 for 42s\n"
            ),
            "{text}"
        );
        assert!(text.contains("coordinating    n1-3, n1-4\n"), "{text}");
        assert!(
            text.contains(
                "last apply      committed version 7 (txn n1-3) (at 2026-11-23T07:57:46.175Z)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("last install    version 7, ok (at 2026-11-23T07:57:47.000Z)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "kept edit       /var/lib/cohort/kept/topology.yaml.1\n\
                 kept edit       /var/lib/cohort/kept/topology.yaml.2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("apply stopped   cannot write /var/lib/cohort/apply: disk full\n"),
            "{text}"
        );
        assert_eq!(text.matches("config version").count(), 1, "{text}");
    }

    #[test]
    fn status_text_shows_the_raft_group() {
        let peer = |n: u128, name: &str| api::RaftPeer {
            name: name.into(),
            id: uuid::Uuid::from_u128(n),
            addr: format!("127.0.0.1:331{n}"),
        };
        let master = |node: &str, generation| api::MasterInfo {
            node: node.into(),
            generation,
            reason: "operator".into(),
        };
        let mut status = sample_status();
        status.apply = Some(apply_state());
        status.raft = Some(api::Leaders {
            node: "n1".into(),
            failover_mode: "raft".into(),
            role: "follower".into(),
            term: 4,
            leader: Some(peer(2, "n2")),
            voters: vec![peer(1, "n1"), peer(2, "n2"), peer(3, "n3")],
            learners: vec![peer(4, "n4")],
            commit_index: Some(17),
            applied_index: Some(17),
            masters: [
                ("s1".into(), master("n3", 2)),
                ("s2".into(), master("n4", 1)),
            ]
            .into(),
            note: Some("n3 has not answered for 12s".into()),
            ..Default::default()
        });
        let text = render_status(&status, Style::PLAIN);
        assert_aligned(&text);
        assert!(
            text.contains(
                "apply stopped   cannot write /var/lib/cohort/apply: disk full\n\
                 raft            follower, term 4, leader n2\n\
                 voters          n1, n2, n3\n\
                 master s1       n3 (generation 2)\n\
                 master s2       n4 (generation 1)\n\
                 raft note       n3 has not answered for 12s\n\
                 topology file   "
            ),
            "{text}"
        );

        status.raft.as_mut().unwrap().leader = None;
        status.raft.as_mut().unwrap().note = None;
        let text = render_status(&status, Style::PLAIN);
        assert!(
            text.contains("raft            follower, term 4, no leader\n"),
            "{text}"
        );
        assert!(!text.contains("raft note"), "{text}");

        status.raft = None;
        let text = render_status(&status, Style::PLAIN);
        for absent in ["raft", "voters", "master "] {
            assert!(!text.contains(absent), "{absent:?} in\n{text}");
        }
    }

    #[test]
    fn status_text_leaves_out_what_the_apply_state_does_not_have() {
        let mut status = sample_status();
        status.apply = Some(api::ApplyState {
            version: 0,
            lock: "no apply in progress".into(),
            install: Some(api::InstallInfo {
                version: 3,
                at_ms: 0,
                error: Some("role http: port 80 in use".into()),
            }),
            ..Default::default()
        });
        let text = render_status(&status, Style::PLAIN);
        assert_aligned(&text);
        assert!(
            text.contains("config version  none (no apply yet)\n"),
            "{text}"
        );
        assert!(
            text.contains("apply lock      no apply in progress\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "last install    version 3, error: role http: port 80 in use (at 1970-01-01T00:00:00.000Z)\n"
            ),
            "{text}"
        );
        for absent in [
            "coordinating",
            "last apply",
            "kept edit",
            "apply stopped",
            " for ",
        ] {
            assert!(!text.contains(absent), "{absent:?} in\n{text}");
        }
    }

    #[test]
    fn status_text_without_apply_state_shows_the_config_version() {
        let mut status = sample_status();
        status.config_version = Some(3);
        let text = render_status(&status, Style::PLAIN);
        assert!(text.contains("config version  3\n"), "{text}");
        assert!(!text.contains("apply lock"), "{text}");
    }

    #[test]
    fn status_text_says_whether_the_topology_file_is_committed() {
        let mut status = sample_status();
        status.topology.state = api::TopologyFileState::Valid;
        status.topology.problems.clear();
        status.topology.matches_committed = Some(true);
        assert!(render_status(&status, Style::PLAIN)
            .contains("topology file   /tmp/t.yaml (valid, matches committed)\n"));
        status.topology.matches_committed = Some(false);
        status.topology.pending = Some("aborted: n2 refused".into());
        assert!(render_status(&status, Style::PLAIN).contains(
            "topology file   /tmp/t.yaml (valid, differs from committed: aborted: n2 refused)\n"
        ));
        status.topology.pending = None;
        assert!(render_status(&status, Style::PLAIN)
            .contains("topology file   /tmp/t.yaml (valid, differs from committed)\n"));
        status.topology.matches_committed = None;
        assert!(
            render_status(&status, Style::PLAIN).contains("topology file   /tmp/t.yaml (valid)\n")
        );
        status.topology.state = api::TopologyFileState::Missing;
        status.topology.matches_committed = Some(false);
        assert!(render_status(&status, Style::PLAIN)
            .contains("topology file   /tmp/t.yaml (missing)\n"));
        status.topology.state = api::TopologyFileState::Invalid;
        status.topology.pending = Some("rejected: 1 problem".into());
        assert!(render_status(&status, Style::PLAIN).contains(
            "topology file   /tmp/t.yaml (invalid, differs from committed: rejected: 1 problem)\n"
        ));
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cohort").chain(args.iter().copied()))
    }

    #[test]
    fn apply_takes_an_optional_file_wait_and_a_timeout() {
        let cli = parse(&["apply"]).unwrap();
        let Command::Apply(args) = cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(args.file, None);
        assert!(!args.wait);
        assert_eq!(args.timeout, crate::config::HumanDuration::from_secs(60));
        assert_eq!(cli.format, OutputFormat::Text);

        let cli = parse(&[
            "apply",
            "t.yaml",
            "--wait",
            "--timeout",
            "1m30s",
            "--format",
            "json",
        ])
        .unwrap();
        let Command::Apply(args) = cli.command else {
            panic!("{cli:?}");
        };
        assert_eq!(args.file, Some(PathBuf::from("t.yaml")));
        assert!(args.wait);
        assert_eq!(args.timeout, crate::config::HumanDuration::from_secs(90));
        assert_eq!(cli.format, OutputFormat::Json);

        assert!(parse(&["apply", "--timeout", "soon"]).is_err());
        assert!(parse(&["apply", "a.yaml", "b.yaml"]).is_err());
    }

    #[test]
    fn route_takes_one_key() {
        let Command::Route { key } = parse(&["route", "user:42"]).unwrap().command else {
            panic!();
        };
        assert_eq!(key, "user:42");
        assert!(parse(&["--format", "json", "route", ""]).is_ok());
        assert!(parse(&["route"]).is_err());
        assert!(parse(&["route", "a", "b"]).is_err());
    }

    #[test]
    fn topology_shows_by_default_and_diffs_a_file() {
        let action = |args: &[&str]| match parse(args).unwrap().command {
            Command::Topology(args) => args.action,
            other => panic!("{other:?}"),
        };
        assert_eq!(action(&["topology"]), None);
        assert_eq!(
            action(&["topology", "show"]),
            Some(topology::TopologyAction::Show)
        );
        assert_eq!(
            action(&["topology", "diff", "t.yaml"]),
            Some(topology::TopologyAction::Diff {
                file: Some(PathBuf::from("t.yaml"))
            })
        );
        assert_eq!(
            action(&["--format", "json", "topology", "diff"]),
            Some(topology::TopologyAction::Diff { file: None })
        );
        assert!(parse(&["topology", "t.yaml"]).is_err());
        assert!(parse(&["topology", "diff", "a", "b"]).is_err());
    }

    #[test]
    fn the_raft_commands_take_their_names_and_consistent() {
        let command = |args: &[&str]| parse(args).unwrap().command;
        let Command::Leaders(args) = command(&["leaders"]) else {
            panic!();
        };
        assert!(!args.consistent);
        let Command::Leaders(args) = command(&["leaders", "--consistent"]) else {
            panic!();
        };
        assert!(args.consistent);
        let Command::Raft { action } = command(&["raft", "peers", "--consistent"]) else {
            panic!();
        };
        assert_eq!(
            action,
            raft::RaftAction::Peers(raft::ReadArgs { consistent: true })
        );
        let Command::Raft { action } = command(&["raft", "transfer-leader", "n2"]) else {
            panic!();
        };
        assert_eq!(
            action,
            raft::RaftAction::TransferLeader { node: "n2".into() }
        );
        let Command::Failover { action } = command(&["failover", "promote", "s1", "n3"]) else {
            panic!();
        };
        assert_eq!(
            action,
            raft::FailoverAction::Promote {
                replicaset: "s1".into(),
                node: "n3".into()
            }
        );
        assert!(parse(&["raft"]).is_err());
        assert!(parse(&["raft", "transfer-leader"]).is_err());
        assert!(parse(&["failover", "promote", "s1"]).is_err());
        assert!(parse(&["leaders", "n1"]).is_err());
    }
}
