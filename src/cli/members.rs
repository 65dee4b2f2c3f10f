//! `cohort members`, `monitor`, `join`, `leave` and `event`: the membership
//! commands, all through the node's API.

use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::bail;
use nix::sys::signal::{SigSet, Signal};

use super::client::{CallError, Client, Target};
use super::exit::{exit_status, Exit};
use super::output::{self, Cell, Style, Table};
use super::{MemberStatusArg, MembersArgs, OutputFormat};
use crate::api::{ApiEvent, Done, MemberInfo, Members, Status};

pub const MONITOR_HELP: &str = concat!(
    "Each event is one line: the time it happened on the node (RFC 3339, UTC), \
its kind, its subject and what happened. Kinds: member-joined, member-status, \
member-address, member-payload, member-incarnation, member-forgotten, user, \
cluster-state, apply-committed, apply-aborted, leader-changed, master-changed, \
issue-raised, issue-cleared, lagged (this reader missed events) and \
agent-stopping. --format json prints each event as the agent sent it, one JSON \
object a line. When the agent stops or restarts, a notice goes to stderr and \
the stream is taken up again once the agent is back; Ctrl-C ends it.

",
    exit_status!(
        "0  stopped with Ctrl-C (SIGINT) or SIGTERM",
        "1  the agent refused the stream"
    )
);

/// `cohort monitor`'s options.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct MonitorArgs {
    /// Show only events whose kind starts with KIND (`member` shows every
    /// member-* event); repeat it, or separate kinds with commas. `lagged`
    /// always shows.
    #[arg(long, value_name = "KIND", value_delimiter = ',')]
    pub kind: Vec<String>,
}

pub fn list(api: &Target, format: OutputFormat, args: &MembersArgs) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let deadline = Instant::now() + args.timeout.0;
    let view: Members = loop {
        // A wait also outlasts an agent that is still starting.
        let view: Members = match args.wait_alive {
            Some(_) => client.get_when_up("/v1/members", deadline)?,
            None => client.get("/v1/members")?,
        };
        let Some(wanted) = args.wait_alive else {
            break view;
        };
        let alive = view.members.iter().filter(|m| m.status == "alive").count();
        if alive >= wanted {
            break view;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {alive} of {wanted} members alive after {}",
                args.timeout
            );
        }
        // Polling the local API: membership has no "wait for N" to block on.
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let shown: Vec<&MemberInfo> = view
        .members
        .iter()
        .filter(|m| {
            args.status.is_empty() || args.status.iter().any(|s| status_name(*s) == m.status)
        })
        .collect();
    match format {
        OutputFormat::Json => output::print_json(&shown)?,
        OutputFormat::Text => {
            print!("{}", render_table(&shown, Style::current()));
            for warning in &view.gossip.warnings {
                eprintln!("warning: {warning}");
            }
        }
    }
    Ok(())
}

fn status_name(status: MemberStatusArg) -> &'static str {
    match status {
        MemberStatusArg::Alive => "alive",
        MemberStatusArg::Suspect => "suspect",
        MemberStatusArg::Dead => "dead",
        MemberStatusArg::Left => "left",
    }
}

/// An aligned table, statuses coloured; the last change as an age ("12s
/// ago").
pub fn render_table(members: &[&MemberInfo], style: Style) -> String {
    let now = crate::api::unix_ms(std::time::SystemTime::now());
    let mut table = Table::new(&[
        "NAME",
        "ADDRESS",
        "STATUS",
        "INCARNATION",
        "REPLICASET",
        "ROLES",
        "SINCE",
    ]);
    for m in members {
        table.row([
            Cell::plain(m.name.as_str()),
            Cell::plain(m.address.as_str()),
            Cell::status(m.status.as_str()),
            Cell::plain(format!("{}.{}", m.generation, m.version)),
            Cell::plain(m.replicaset.as_deref().unwrap_or("-")),
            Cell::plain(if m.roles.is_empty() {
                "-".to_string()
            } else {
                m.roles.join(",")
            }),
            Cell::plain(format!(
                "{} ago",
                crate::config::HumanDuration::from_secs(now.saturating_sub(m.since_ms) / 1000)
            )),
        ]);
    }
    table.render(style)
}

/// `cohort monitor`: follows the node's events until Ctrl-C (exit 0),
/// taking the stream up again whenever the agent stops or restarts.
pub fn monitor(api: &Target, format: OutputFormat, args: &MonitorArgs) -> anyhow::Result<ExitCode> {
    // The stream blocks in the client; the signals are taken here instead,
    // by a thread that waits for them: blocked before the reader thread
    // starts, so it inherits the mask and only `wait` sees them.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGUSR1] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|e| anyhow::anyhow!("cannot take Ctrl-C over: {e}"))?;
    let (done_tx, done) = std::sync::mpsc::channel();
    let (api, args) = (api.clone(), args.clone());
    std::thread::spawn(move || {
        let _ = done_tx.send(follow_events(&api, format, &args));
        // Wakes the waiting thread: the stream ended by itself.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), Signal::SIGUSR1);
    });
    loop {
        match signals.wait() {
            Ok(Signal::SIGUSR1) => {
                if let Ok(result) = done.try_recv() {
                    return result.map(|()| ExitCode::SUCCESS);
                }
            }
            Ok(_) => return Ok(ExitCode::SUCCESS),
            Err(e) => bail!("waiting for Ctrl-C failed: {e}"),
        }
    }
}

/// The agent behind the API now: its name and generation (a new
/// generation is a restart).
fn whoami(client: &Client) -> anyhow::Result<(String, u64)> {
    let status: Status = client.get("/v1/status")?;
    Ok((status.node, status.generation))
}

/// The stream, again and again; returns only on a failure that waiting
/// cannot mend: no agent at the first call, a refusal, output that cannot
/// be written.
fn follow_events(api: &Target, format: OutputFormat, args: &MonitorArgs) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let endpoint = api.endpoint()?;
    let style = Style::current();
    // The first call must work: a wrong address fails at once.
    let mut agent = whoami(&client)?;
    loop {
        let mut printing: Option<anyhow::Error> = None;
        let ended = client.follow("/v1/events", |data| {
            match render_data(data, format, &args.kind, style) {
                Ok(Some(line)) => println!("{line}"),
                Ok(None) => {}
                Err(e) => {
                    printing = Some(anyhow::anyhow!("cannot show an event: {e:#}"));
                    bail!("stopped");
                }
            }
            Ok(())
        });
        if let Some(e) = printing {
            return Err(e);
        }
        match ended {
            Ok(()) => eprintln!(
                "cohort: {} at {endpoint} ended the event stream; following it again once the agent answers (Ctrl-C to stop)",
                agent.0
            ),
            Err(e) if gives_up(&e) => return Err(e),
            Err(e) => eprintln!(
                "cohort: {e:#}; following the events again once the agent answers (Ctrl-C to stop)"
            ),
        }
        let mut pause = Duration::from_millis(250);
        let mut said = String::new();
        let back = loop {
            match whoami(&client) {
                Ok(back) => break back,
                Err(e) if gives_up(&e) => return Err(e),
                Err(e) => {
                    // Once per kind of trouble; "not there" is the expected one.
                    let why = format!("{e:#}");
                    if Exit::of_error(&e) != Exit::Unreachable && why != said {
                        eprintln!("cohort: {why}; trying again");
                        said = why;
                    }
                    // Polling: a stopped agent has nothing to wait on.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        };
        if back.1 == agent.1 {
            eprintln!("cohort: following {} at {endpoint} again", back.0);
        } else {
            eprintln!(
                "cohort: {} at {endpoint} restarted (generation {}); following its events",
                back.0, back.1
            );
        }
        agent = back;
    }
}

/// A failure waiting does not mend: the agent refuses us (the stream or
/// our token). Anything else (no agent, a broken connection, an agent
/// still starting) is waited out.
fn gives_up(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<CallError>(),
        Some(CallError::Api { .. } | CallError::Unauthorized { .. })
    )
}

/// Whether an event of `kind` passes `--kind`.
fn wanted(kind: &str, kinds: &[String]) -> bool {
    kinds.is_empty() || kind == "lagged" || kinds.iter().any(|k| kind.starts_with(k.as_str()))
}

/// The line `cohort monitor` prints for one `data:` of the stream, if the
/// filter lets it through.
fn render_data(
    data: &str,
    format: OutputFormat,
    kinds: &[String],
    style: Style,
) -> anyhow::Result<Option<String>> {
    match format {
        // As the agent sent it: fields a newer agent adds are not lost.
        OutputFormat::Json => {
            let event: serde_json::Value = serde_json::from_str(data)?;
            let kind = event["kind"].as_str().unwrap_or("");
            Ok(wanted(kind, kinds).then(|| data.to_string()))
        }
        OutputFormat::Text => {
            let event: ApiEvent = serde_json::from_str(data)?;
            Ok(wanted(&event.kind, kinds).then(|| render_event(&event, style)))
        }
    }
}

/// Widths of the kind and subject columns: the longest kind, and a common
/// node name; longer subjects push the detail right.
const KIND_WIDTH: usize = "member-incarnation".len();
const SUBJECT_WIDTH: usize = 12;

/// `TIME  KIND  SUBJECT  DETAIL[: PAYLOAD]`, the status words coloured.
pub fn render_event(event: &ApiEvent, style: Style) -> String {
    let at = crate::api::rfc3339(UNIX_EPOCH + Duration::from_millis(event.at_ms));
    let payload = match (&event.payload, &event.payload_base64) {
        (Some(text), _) if !text.is_empty() => format!(": {text}"),
        (None, Some(encoded)) => format!(": base64 {encoded}"),
        _ => String::new(),
    };
    let pad = |text: &str, width: usize| " ".repeat(width.saturating_sub(text.chars().count()));
    let subject = match event.kind.as_str() {
        "cluster-state" => style.status(&event.subject),
        _ => event.subject.clone(),
    };
    let line = format!(
        "{at}  {kind}{}  {subject}{}  {detail}{payload}",
        pad(&event.kind, KIND_WIDTH),
        pad(&event.subject, SUBJECT_WIDTH),
        kind = event.kind,
        detail = style.statuses_in(&event.detail),
    );
    line.trim_end().to_string()
}

/// A write that has nothing more to say than the agent's message; with
/// `--format json`, the agent's answer.
pub fn write(
    api: &Target,
    format: OutputFormat,
    path: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let done: Done = Client::new(api)?.post(path, body)?;
    match format {
        OutputFormat::Json => output::print_json(&done)?,
        OutputFormat::Text => println!("{}", done.message),
    }
    Ok(())
}

/// `cohort event NAME [PAYLOAD|-]`.
pub fn send_event(
    api: &Target,
    format: OutputFormat,
    name: String,
    payload: Option<String>,
) -> anyhow::Result<()> {
    use base64::Engine as _;
    use std::io::Read as _;
    let mut request = crate::api::UserEventRequest {
        name,
        ..Default::default()
    };
    match payload.as_deref() {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| anyhow::anyhow!("cannot read the payload from stdin: {e}"))?;
            request.payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        Some(text) => request.payload = Some(text.to_string()),
        None => {}
    }
    write(api, format, "/v1/events", &request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, subject: &str, detail: &str) -> ApiEvent {
        ApiEvent {
            at_ms: 1_795_420_666_175,
            ..ApiEvent::now(kind, subject.into(), None, detail.into())
        }
    }

    #[test]
    fn events_are_aligned_lines_with_their_time() {
        let lines = [
            render_event(&event("member-status", "n2", "alive -> dead"), Style::PLAIN),
            render_event(
                &event("cluster-state", "up", "3 of 3 nodes alive"),
                Style::PLAIN,
            ),
            render_event(&event("agent-stopping", "n1", ""), Style::PLAIN),
        ];
        assert_eq!(
            lines[0],
            "2026-11-23T07:57:46.175Z  member-status       n2            alive -> dead"
        );
        assert_eq!(
            lines[1],
            "2026-11-23T07:57:46.175Z  cluster-state       up            3 of 3 nodes alive"
        );
        assert_eq!(lines[2], "2026-11-23T07:57:46.175Z  agent-stopping      n1");
        let user = ApiEvent {
            payload: Some("v42".into()),
            ..event("user", "deploy", "from n1, 3 bytes")
        };
        assert!(render_event(&user, Style::PLAIN).ends_with("deploy        from n1, 3 bytes: v42"));
        let coloured = render_event(&event("member-status", "n2", "alive -> dead"), Style::COLOR);
        assert!(
            coloured.ends_with("\x1b[32malive\x1b[0m -> \x1b[31mdead\x1b[0m"),
            "{coloured:?}"
        );
    }

    #[test]
    fn kinds_filter_by_prefix_and_lagged_always_shows() {
        let kinds = vec!["member".to_string(), "cluster-state".to_string()];
        assert!(wanted("member-status", &kinds));
        assert!(wanted("member-joined", &kinds));
        assert!(wanted("cluster-state", &kinds));
        assert!(wanted("lagged", &kinds));
        assert!(!wanted("user", &kinds));
        assert!(wanted("user", &[]));
    }

    #[test]
    fn json_lines_pass_as_the_agent_sent_them() {
        let data = r#"{"at_ms":1,"kind":"user","subject":"deploy","uuid":null,"detail":"d","new_field":7}"#;
        assert_eq!(
            render_data(data, OutputFormat::Json, &[], Style::PLAIN).unwrap(),
            Some(data.to_string())
        );
        assert_eq!(
            render_data(data, OutputFormat::Json, &["member".into()], Style::PLAIN).unwrap(),
            None
        );
        let text = render_data(data, OutputFormat::Text, &[], Style::PLAIN)
            .unwrap()
            .unwrap();
        assert!(
            text.ends_with("user                deploy        d"),
            "{text}"
        );
    }

    #[test]
    fn the_members_table_lines_up() {
        let member = |name: &str, status: &str| MemberInfo {
            name: name.into(),
            uuid: uuid::Uuid::nil(),
            address: "127.0.0.1:3301".into(),
            status: status.into(),
            generation: 17,
            version: 2,
            replicaset: Some("s1".into()),
            roles: vec!["http".into(), "storage".into()],
            since_ms: 0,
        };
        let (a, b) = (member("a-long-name", "alive"), member("b", "suspect"));
        let text = render_table(&[&a, &b], Style::PLAIN);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        for column in [
            "ADDRESS",
            "STATUS",
            "INCARNATION",
            "REPLICASET",
            "ROLES",
            "SINCE",
        ] {
            let at = lines[0].find(column).unwrap();
            for line in &lines[1..] {
                assert_ne!(&line[at..at + 1], " ", "{column} in\n{text}");
                assert_eq!(&line[at - 2..at], "  ", "{column} in\n{text}");
            }
        }
        assert!(render_table(&[&a], Style::COLOR).contains("\x1b[32malive\x1b[0m"));
    }
}
