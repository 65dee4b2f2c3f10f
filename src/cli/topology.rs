//! `cohort apply` and `cohort topology`: commit a topology through the
//! node's API, show the committed one, compare a file with it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hyper::StatusCode;
use serde::Deserialize;

use super::client::{CallError, Client, Target, DEADLINE};
use super::exit::{exit_status, Exit};
use super::output;
use super::OutputFormat;
use crate::api::{ApplyOutcome, ApplyResult, CommittedTopology, NodeReason, Status};
use crate::config::diff::TopologyDiff;
use crate::config::{self, ConfigError, HumanDuration, Topology};

pub const APPLY_HELP: &str = concat!(
    "\
Every node of the old and the new topology validates the text and votes; \
it is committed on all of them or on none. Prints `committed version N (txn T)` \
(with --wait, also whether every node acknowledged it), `unchanged: version N \
is this text already`, or `aborted: ...` with one `  NODE: reason` line per node \
that refused, stayed silent or was not reached. An invalid text prints every \
problem on stderr as FILE:LINE:COLUMN: message. --format json prints the agent's \
answer instead (also when aborted or invalid).

",
    exit_status!(
        "0  committed, or unchanged",
        "1  aborted, invalid, refused by the agent, or no decision within --timeout",
        "   (the apply goes on: `cohort status` shows how it ends)"
    )
);

pub const TOPOLOGY_HELP: &str = concat!(
    "\
Prints the committed text byte for byte; --format json prints {version, hash, \
txn, text} (version 0 and an empty text before the first commit).

",
    exit_status!("0  success", "1  no topology committed yet")
);

pub const DIFF_HELP: &str = concat!(
    "\
Problems in FILE go to stderr as FILE:LINE:COLUMN: message, as with \
`cohort validate topology`. --format json prints the changes as one object of \
lists (nodes_added, nodes_changed, roles_added, ports_changed, ...).

",
    exit_status!(
        "0  FILE is valid, whether or not it differs from the committed topology",
        "1  FILE has problems, or cannot be read"
    )
);

/// How long the client waits beyond the `--timeout` it gave the agent, so
/// the agent's own answer at its timeout is what the operator sees.
const CLIENT_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The topology to apply [default: this node's topology file, the path
    /// `cohort status` shows, read here: run on the node].
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Return only when every node has acknowledged the decision (each has
    /// the new version committed and in its topology file), not as soon as
    /// it is decided.
    #[arg(long)]
    pub wait: bool,
    /// How long the agent may take to decide (with --wait: and to hear
    /// every node acknowledge). At the timeout the apply is not cancelled:
    /// it goes on, and `cohort status` shows how it ended.
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub timeout: HumanDuration,
}

#[derive(Debug, clap::Args)]
pub struct TopologyArgs {
    #[command(subcommand)]
    pub action: Option<TopologyAction>,
}

#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
pub enum TopologyAction {
    /// Print the committed topology byte for byte as it was applied (the
    /// default); --format json prints its version, hash and txn too.
    #[command(after_help = TOPOLOGY_HELP)]
    Show,
    /// Show what applying FILE would change: one change per line against
    /// the committed topology, `no change` when there is none.
    #[command(after_help = DIFF_HELP)]
    Diff {
        /// The topology to compare [default: this node's topology file, the
        /// path `cohort status` shows].
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

/// `cohort apply [FILE] [--wait] [--timeout DURATION]`.
pub fn apply(api: &Target, format: OutputFormat, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(api)?;
    let (path, text) = read_topology(&client, args.file.as_deref())?;
    let query = format!("/v1/topology?wait={}&timeout={}", args.wait, args.timeout);
    let deadline = client_deadline(args.timeout);
    let reply = client
        .put_text::<serde_json::Value>(
            &query,
            &text,
            deadline,
            &[StatusCode::CONFLICT, StatusCode::UNPROCESSABLE_ENTITY],
        )
        .map_err(|e| explain_apply_failure(e, &path))?;
    let result = ApplyResult::deserialize(&reply.body)
        .context("the answer to PUT /v1/topology is not what this cohort expects")?;
    match format {
        OutputFormat::Json => output::print_json(&reply.body)?,
        OutputFormat::Text => {
            let rendered = render_apply(&result, args.wait, &path);
            print!("{}", rendered.stdout);
            eprint!("{}", rendered.stderr);
        }
    }
    // The status and the outcome agree with a sound agent; both must say yes.
    Ok(exit_code(reply.status.is_success() && succeeded(&result)))
}

/// The deadline of the PUT: past the agent's own timeout, so its answer at
/// the timeout arrives rather than the client giving up first.
fn client_deadline(timeout: HumanDuration) -> Duration {
    timeout.0.saturating_add(CLIENT_MARGIN).max(DEADLINE)
}

/// A timeout does not cancel an apply: say so, and where to look.
fn explain_apply_failure(e: anyhow::Error, path: &Path) -> anyhow::Error {
    let timed_out = match e.downcast_ref::<CallError>() {
        Some(CallError::Api { status, error }) => {
            error.code == "timeout" || *status == StatusCode::GATEWAY_TIMEOUT
        }
        Some(CallError::Deadline { .. }) => true,
        Some(CallError::Unauthorized { .. } | CallError::Unreachable { .. }) | None => false,
    };
    if timed_out {
        anyhow!(
            "{e:#}; the apply of {} goes on without this command: `cohort status` shows how it ends",
            path.display()
        )
    } else {
        e
    }
}

fn succeeded(result: &ApplyResult) -> bool {
    matches!(
        result.outcome,
        ApplyOutcome::Committed | ApplyOutcome::Unchanged
    )
}

fn exit_code(ok: bool) -> ExitCode {
    if ok { Exit::Ok } else { Exit::No }.into()
}

/// What `cohort apply` prints for an answer, on stdout and on stderr.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub stdout: String,
    pub stderr: String,
}

/// `path` is the file the text came from: the agent names the text its own
/// way in problems, the operator knows it by this name.
pub fn render_apply(r: &ApplyResult, wait: bool, path: &Path) -> Rendered {
    let mut out = Rendered::default();
    let version = r.version.map_or_else(|| "?".to_string(), |v| v.to_string());
    let txn = r
        .txn
        .as_deref()
        .map_or_else(String::new, |t| match t.strip_prefix("txn ") {
            Some(_) => format!(" ({t})"),
            None => format!(" (txn {t})"),
        });
    match r.outcome {
        ApplyOutcome::Committed => {
            let _ = writeln!(out.stdout, "committed version {version}{txn}");
            match r.finished {
                Some(true) => {
                    let _ = writeln!(out.stdout, "every node acknowledged it: each has it committed and in its topology file (roles: see `cohort status` on each node)");
                }
                Some(false) => {
                    let _ = writeln!(
                        out.stdout,
                        "not every node acknowledged it before the timeout: the others install it when they answer (see `cohort status`)"
                    );
                }
                None if wait => {
                    let _ = writeln!(
                        out.stdout,
                        "the agent did not say whether every node acknowledged it"
                    );
                }
                None => {}
            }
            node_lines(&mut out.stdout, r);
        }
        ApplyOutcome::Unchanged => {
            let _ = writeln!(
                out.stdout,
                "unchanged: version {version} is this text already"
            );
        }
        ApplyOutcome::Aborted => {
            let message = r.message.trim();
            let message = message
                .strip_prefix("aborted:")
                .or_else(|| message.strip_prefix("aborted"))
                .map_or(message, str::trim_start);
            let first = if message.is_empty() {
                format!("version {version}{txn} was not committed")
            } else {
                message.to_string()
            };
            let _ = writeln!(out.stdout, "aborted: {first}");
            node_lines(&mut out.stdout, r);
        }
        ApplyOutcome::Invalid => {
            if r.problems.is_empty() {
                let _ = writeln!(out.stderr, "invalid: {}", r.message);
            }
            for problem in &r.problems {
                let _ = writeln!(out.stderr, "{}", relabel(problem, path));
            }
        }
    }
    out
}

/// `LABEL:LINE:COLUMN: message` as `PATH:LINE:COLUMN: message`; other
/// text as it is.
fn relabel(problem: &str, path: &Path) -> String {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for (start, _) in problem.match_indices(':') {
        let mut parts = problem[start + 1..].splitn(3, ':');
        if let (Some(line), Some(column), Some(message)) =
            (parts.next(), parts.next(), parts.next())
        {
            if digits(line) && digits(column) && message.starts_with(' ') {
                return format!("{}{}", path.display(), &problem[start..]);
            }
        }
    }
    problem.to_string()
}

/// `  NODE: reason` for every node that refused, stayed silent or was not
/// reached.
fn node_lines(out: &mut String, r: &ApplyResult) {
    for NodeReason { node, reason } in &r.reasons {
        let _ = writeln!(out, "  {node}: {reason}");
    }
    for node in &r.silent {
        let _ = writeln!(out, "  {node}: silent: its vote never came");
    }
    for NodeReason { node, reason } in &r.not_reached {
        let _ = writeln!(
            out,
            "  {node}: not reached ({reason}): it catches up when it returns"
        );
    }
}

/// `cohort topology [show]`.
pub fn show(api: &Target, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let client = Client::new(api)?;
    let value: serde_json::Value = client.get("/v1/topology")?;
    let committed = CommittedTopology::deserialize(&value)
        .context("the answer to GET /v1/topology is not what this cohort expects")?;
    match format {
        OutputFormat::Json => output::print_json(&value)?,
        OutputFormat::Text if committed.version > 0 => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(committed.text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write the topology")?;
        }
        OutputFormat::Text => {}
    }
    if committed.version == 0 {
        eprintln!("cohort: no topology committed yet (`cohort apply FILE` commits one)");
        return Ok(Exit::No.into());
    }
    Ok(Exit::Ok.into())
}

/// `cohort topology diff [FILE]`.
pub fn diff(api: &Target, format: OutputFormat, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let client = Client::new(api)?;
    let (path, text) = read_topology(&client, file)?;
    let new = match Topology::parse(&text, &path) {
        Ok(topology) => topology,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return Ok(Exit::No.into());
        }
    };
    let committed: CommittedTopology = client.get("/v1/topology")?;
    let old = committed_topology(&committed)?;
    let diff = TopologyDiff::between(old.as_ref(), &new);
    match format {
        OutputFormat::Json => output::print_json(&diff)?,
        OutputFormat::Text => {
            let text = diff.to_string();
            if text.ends_with('\n') {
                print!("{text}");
            } else {
                println!("{text}");
            }
        }
    }
    Ok(Exit::Ok.into())
}

/// The committed topology parsed; none before the first apply.
fn committed_topology(committed: &CommittedTopology) -> anyhow::Result<Option<Topology>> {
    if committed.version == 0 {
        return Ok(None);
    }
    let label = PathBuf::from(format!("<committed version {}>", committed.version));
    Topology::parse(&committed.text, &label)
        .map(Some)
        .map_err(|diagnostics| {
            anyhow!(
                "the committed topology (version {}) does not parse with this cohort {}:\n{diagnostics}",
                committed.version,
                env!("CARGO_PKG_VERSION")
            )
        })
}

/// The topology file to work on, and its text: FILE, or this node's
/// topology file as the agent reports it (read here, so run on the node).
fn read_topology(client: &Client, file: Option<&Path>) -> anyhow::Result<(PathBuf, String)> {
    let (path, from_status) = match file {
        Some(path) => (path.to_path_buf(), false),
        None => {
            let status: Status = client.get("/v1/status")?;
            (PathBuf::from(status.topology.path), true)
        }
    };
    match config::read_file(&path) {
        Ok(text) => Ok((path, text)),
        Err(e @ ConfigError::Read { .. }) if from_status => bail!(
            "{e} (the node's topology file, as `cohort status` shows it: when the agent runs on another machine, name FILE)"
        ),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(outcome: ApplyOutcome) -> ApplyResult {
        ApplyResult {
            version: Some(4),
            txn: Some("n1-7".into()),
            hash: Some("ab".repeat(32)),
            ..ApplyResult::new(outcome)
        }
    }

    fn reason(node: &str, reason: &str) -> NodeReason {
        NodeReason {
            node: node.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn committed_names_the_version_and_the_txn() {
        let r = result(ApplyOutcome::Committed);
        let rendered = render_apply(&r, false, Path::new("/t.yaml"));
        assert_eq!(rendered.stdout, "committed version 4 (txn n1-7)\n");
        assert_eq!(rendered.stderr, "");
        assert!(succeeded(&r));
    }

    #[test]
    fn committed_with_wait_says_whether_every_node_acknowledged() {
        let mut r = result(ApplyOutcome::Committed);
        r.finished = Some(true);
        assert_eq!(
            render_apply(&r, true, Path::new("/t.yaml")).stdout,
            "committed version 4 (txn n1-7)\nevery node acknowledged it: each has it committed and in its topology file (roles: see `cohort status` on each node)\n"
        );
        r.finished = Some(false);
        r.not_reached = vec![reason("n5", "dead")];
        let text = render_apply(&r, true, Path::new("/t.yaml")).stdout;
        assert!(
            text.starts_with("committed version 4 (txn n1-7)\nnot every node acknowledged it"),
            "{text}"
        );
        assert!(
            text.ends_with("\n  n5: not reached (dead): it catches up when it returns\n"),
            "{text}"
        );
        assert!(succeeded(&r));
    }

    #[test]
    fn unchanged_names_the_version() {
        let r = result(ApplyOutcome::Unchanged);
        assert_eq!(
            render_apply(&r, true, Path::new("/t.yaml")),
            Rendered {
                stdout: "unchanged: version 4 is this text already\n".into(),
                stderr: String::new(),
            }
        );
        assert!(succeeded(&r));
    }

    #[test]
    fn aborted_lists_every_node_with_its_reason() {
        let mut r = result(ApplyOutcome::Aborted);
        r.message = "aborted: n2 refused; n3 silent".into();
        r.reasons = vec![reason("n2", "127.0.0.1:8080 is in use")];
        r.silent = vec!["n3".into()];
        r.not_reached = vec![reason("n4", "left")];
        let rendered = render_apply(&r, false, Path::new("/t.yaml"));
        assert_eq!(
            rendered.stdout,
            "aborted: n2 refused; n3 silent\n\
             \x20 n2: 127.0.0.1:8080 is in use\n\
             \x20 n3: silent: its vote never came\n\
             \x20 n4: not reached (left): it catches up when it returns\n"
        );
        assert_eq!(rendered.stderr, "");
        assert!(!succeeded(&r));
    }

    #[test]
    fn aborted_without_a_message_names_the_txn() {
        let r = result(ApplyOutcome::Aborted);
        assert_eq!(
            render_apply(&r, false, Path::new("/t.yaml")).stdout,
            "aborted: version 4 (txn n1-7) was not committed\n"
        );
    }

    #[test]
    fn invalid_prints_every_problem_on_stderr() {
        let mut r = result(ApplyOutcome::Invalid);
        r.version = None;
        r.txn = None;
        r.message = "2 problems".into();
        r.problems = vec![
            "topology.yaml:3:5: unknown field `nodez`".into(),
            "<request>:9:1: replica set `r2` has no nodes".into(),
        ];
        let rendered = render_apply(&r, false, Path::new("/t.yaml"));
        assert_eq!(rendered.stdout, "");
        assert_eq!(
            rendered.stderr,
            "/t.yaml:3:5: unknown field `nodez`\n/t.yaml:9:1: replica set `r2` has no nodes\n"
        );
        assert!(!succeeded(&r));
        r.problems.clear();
        assert_eq!(
            render_apply(&r, false, Path::new("/t.yaml")).stderr,
            "invalid: 2 problems\n"
        );
    }

    #[test]
    fn problems_name_the_operators_file() {
        let path = Path::new("/etc/cohort/new.yaml");
        assert_eq!(
            relabel("topology.yaml:4:5: unknown field `rolez`", path),
            "/etc/cohort/new.yaml:4:5: unknown field `rolez`"
        );
        assert_eq!(
            relabel("C:/x y.yaml:12:30: a: b", path),
            "/etc/cohort/new.yaml:12:30: a: b"
        );
        assert_eq!(
            relabel("the text is empty: nothing to apply", path),
            "the text is empty: nothing to apply"
        );
        assert_eq!(relabel("a:1:x: no", path), "a:1:x: no");
    }

    #[test]
    fn a_txn_named_in_words_is_not_named_twice() {
        let mut r = result(ApplyOutcome::Committed);
        r.txn = Some("txn 0 from node n1".into());
        assert_eq!(
            render_apply(&r, false, Path::new("/t.yaml")).stdout,
            "committed version 4 (txn 0 from node n1)\n"
        );
    }

    #[test]
    fn the_answers_of_the_agent_decode_as_apply_results() {
        let aborted = r#"{"outcome":"aborted","version":5,"txn":"t","reasons":[{"node":"n2","reason":"no"}],"message":"aborted","extra":1}"#;
        let r: ApplyResult = serde_json::from_str(aborted).unwrap();
        assert_eq!(r.outcome, ApplyOutcome::Aborted);
        assert_eq!(r.reasons, vec![reason("n2", "no")]);
    }

    #[test]
    fn the_client_waits_past_the_agents_timeout() {
        assert_eq!(
            client_deadline(HumanDuration::from_secs(60)),
            Duration::from_secs(70)
        );
        assert_eq!(client_deadline(HumanDuration::from_secs(1)), DEADLINE);
        assert!(client_deadline(HumanDuration::from_secs(30)) > Duration::from_secs(30));
    }

    #[test]
    fn a_timeout_says_the_apply_goes_on() {
        let e: anyhow::Error = CallError::Api {
            status: StatusCode::GATEWAY_TIMEOUT,
            error: crate::api::ApiError {
                code: "timeout".into(),
                message: "no decision within 30s".into(),
            },
        }
        .into();
        let text = format!("{:#}", explain_apply_failure(e, Path::new("/t.yaml")));
        assert!(
            text.starts_with("no decision within 30s (timeout); "),
            "{text}"
        );
        assert!(text.contains("goes on"), "{text}");
        assert!(text.contains("cohort status"), "{text}");
        let other = explain_apply_failure(anyhow!("cannot reach"), Path::new("/t.yaml"));
        assert_eq!(format!("{other:#}"), "cannot reach");
    }

    #[test]
    fn the_committed_topology_is_none_before_the_first_apply() {
        let committed = CommittedTopology {
            version: 0,
            hash: String::new(),
            txn: None,
            text: String::new(),
        };
        assert!(committed_topology(&committed).unwrap().is_none());
        let broken = CommittedTopology {
            version: 3,
            text: "cluster: [".into(),
            ..committed
        };
        let e = committed_topology(&broken).unwrap_err().to_string();
        assert!(e.contains("version 3"), "{e}");
    }
}
