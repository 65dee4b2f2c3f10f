//! The `cohort` command. Flags are defined once here and generate `--help`,
//! shell completions and the man page; each command's work lives in the
//! library, and errors become one line for people at this edge.

mod client;
mod dev;
mod members;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::agent::{self, AgentOptions};
use crate::api::{self, Status};
use crate::config::{self, ConfigError, FileKind, LogFormat, DEFAULT_API};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  failure: the check found problems, the agent could not start, or the API could not be reached
  2  usage error";

/// cohort: a cluster agent with SWIM membership, Raft leadership and
/// two-phase topology apply.
#[derive(Debug, Parser)]
#[command(name = "cohort", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// The agent API to talk to (host:port).
    #[arg(long, global = true, env = "COHORT_API", default_value_t = DEFAULT_API, value_name = "ADDR")]
    pub api: SocketAddr,

    /// Output of read commands.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

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
    #[command(after_help = EXIT_CODES)]
    Agent(AgentArgs),
    /// Show this node's identity and state.
    Status,
    /// List the members this node knows, with their status and incarnation.
    Members(MembersArgs),
    /// Stream membership and user events as they happen (Ctrl-C to stop).
    Monitor,
    /// Probe a new address and join the cluster through it.
    Join {
        /// host:port of a member.
        address: String,
    },
    /// Leave the cluster gracefully: peers mark this node `left` at once.
    Leave,
    /// Send a user event to every node: each delivers it once, to `monitor`
    /// streams and to the handlers of its node config (`events.handlers`).
    #[command(
        after_help = "The whole event must fit in one gossip packet (about 1 KiB of payload with the default max_packet_size of 1400): send a reference (a URL, a version) rather than the data."
    )]
    Event {
        /// Event name: letters, digits, '-', '_' and '.'.
        name: String,
        /// The payload; `-` reads it from stdin (any bytes). Empty if absent.
        payload: Option<String>,
    },
    /// Check a node config or topology file: `FILE: ok` on stdout when good, else every problem on stderr as FILE:LINE:COLUMN: message.
    #[command(after_help = EXIT_CODES)]
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
    /// HTTP API address (overrides the config).
    #[arg(long, value_name = "ADDR")]
    pub api_http: Option<SocketAddr>,
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
    let result = match cli.command {
        Command::Agent(args) => return run_agent(args),
        Command::Validate { kind, file } => return validate(kind, &file),
        Command::Status => status(cli.api, cli.format),
        Command::Members(args) => members::list(cli.api, cli.format, &args),
        Command::Monitor => members::monitor(cli.api, cli.format),
        Command::Join { address } => {
            members::write(cli.api, "/v1/join", &api::JoinRequest { address })
        }
        Command::Leave => members::write(cli.api, "/v1/leave", &serde_json::json!({})),
        Command::Event { name, payload } => members::send_event(cli.api, name, payload),
        Command::Dev(args) => dev::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "cohort", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("cannot write the man page"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cohort: {e:#}");
            ExitCode::FAILURE
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
        api_http: args.api_http,
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
/// can show them; a good file prints `FILE: ok` on stdout.
fn validate(kind: ValidateKind, file: &std::path::Path) -> ExitCode {
    let kind = match kind {
        ValidateKind::Node => FileKind::Node,
        ValidateKind::Topology => FileKind::Topology,
    };
    match config::validate_file(kind, file) {
        Ok(()) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cohort: {e}");
            ExitCode::FAILURE
        }
    }
}

fn status(api: SocketAddr, format: OutputFormat) -> anyhow::Result<()> {
    let client = client::Client::new(api)?;
    match format {
        // As the agent sent it: fields a newer agent adds are not lost.
        OutputFormat::Json => {
            let status: serde_json::Value = client.get("/v1/status")?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        OutputFormat::Text => print!("{}", render_status(&client.get::<Status>("/v1/status")?)),
    }
    Ok(())
}

fn render_status(s: &Status) -> String {
    let state = serde_json::to_value(s.topology.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut topology = format!("{} ({state})", s.topology.path);
    for problem in &s.topology.problems {
        topology.push_str("\n  ");
        topology.push_str(problem);
    }
    let rows = [
        ("node", s.node.clone()),
        ("uuid", s.uuid.to_string()),
        ("generation", s.generation.to_string()),
        ("cluster", s.cluster.clone()),
        ("bind", s.bind.clone()),
        ("advertise", s.advertise.clone()),
        (
            "config version",
            s.config_version
                .map_or("none (no apply yet)".into(), |v| v.to_string()),
        ),
        ("topology file", topology),
        ("data dir", s.data_dir.clone()),
        ("started", s.started_at.clone()),
        (
            "uptime",
            crate::config::HumanDuration::from_secs(s.uptime_seconds).to_string(),
        ),
        ("pid", s.pid.to_string()),
        ("version", s.version.clone()),
    ];
    let rows = rows
        .into_iter()
        .chain(s.warnings.iter().map(|w| ("warning", w.clone())));
    let rows: Vec<(&str, String)> = rows.collect();
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_text_is_aligned_key_value_lines() {
        let status = Status {
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
            started_at: "2026-11-23T07:57:46.175Z".into(),
            started_at_ms: 0,
            uptime_seconds: 61,
            version: "0.1.0".into(),
            warnings: vec!["UDP seems blocked: 60 gossip datagrams sent".into()],
        };
        let text = render_status(&status);
        let value_column = "config version  ".len();
        for line in text.lines().filter(|l| !l.starts_with("  ")) {
            let bytes = line.as_bytes();
            assert!(
                bytes[value_column - 2..value_column] == *b"  ",
                "{line:?} in\n{text}"
            );
            assert_ne!(bytes[value_column], b' ', "{line:?} in\n{text}");
        }
        assert!(text.contains(
            "topology file   /tmp/t.yaml (invalid)\n  /tmp/t.yaml:1:1: the file is empty\n"
        ));
        assert!(text.contains("config version  none (no apply yet)\n"));
        assert!(text.ends_with("warning         UDP seems blocked: 60 gossip datagrams sent\n"));
    }
}
