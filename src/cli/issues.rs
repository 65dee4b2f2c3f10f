//! `cohort issues`: what is wrong in the cluster now, through the node's
//! API (`GET /v1/issues`): every node's list merged, or with `--local`
//! this node's own.

use std::process::ExitCode;
use std::time::SystemTime;

use super::client::{Client, Target};
use super::exit::{exit_status, Exit};
use super::output::{self, Style, Table};
use super::OutputFormat;
use crate::api::{Issue, IssueLevel, Issues};
use crate::config::HumanDuration;

pub const ISSUES_HELP: &str = concat!(
    "\
The node asked merges its own list with every alive member's (each asked \
for at most 1s): one row per kind and subject, critical first, then the \
oldest. NODE is the node that reports it (`+N`: N more report it too); \
SINCE is how long ago it began. Nodes that did not answer are named on \
stderr. Kinds: config-mismatch, catching-up, member-suspect, member-dead, \
member-unreachable, no-leader, no-quorum, no-master, clock-skew, \
topology-rejected, data-dir-unwritable, disk-full, undecryptable-packets \
(see docs/issues.md). --format json prints the agent's answer (with \
--level critical, only the critical issues).

",
    exit_status!(
        "0  no issues (at --level critical: no critical issue)",
        "1  at least one issue is listed"
    )
);

/// `cohort issues`'s options.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct IssuesArgs {
    /// Only this node's own list: the other nodes are not asked.
    #[arg(long)]
    pub local: bool,
    /// List only issues at this level or worse (`critical`: what needs an
    /// operator now).
    #[arg(long, value_enum, default_value_t = LevelArg::Warning, value_name = "LEVEL")]
    pub level: LevelArg,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelArg {
    /// Every issue.
    #[default]
    Warning,
    /// Critical issues only.
    Critical,
}

impl LevelArg {
    fn admits(self, level: IssueLevel) -> bool {
        match self {
            LevelArg::Warning => true,
            LevelArg::Critical => level == IssueLevel::Critical,
        }
    }
}

pub fn issues(api: &Target, format: OutputFormat, args: &IssuesArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(api)?;
    let path = if args.local {
        "/v1/issues?local"
    } else {
        "/v1/issues"
    };
    let listed = match format {
        OutputFormat::Json => {
            // As the agent sent it: fields a newer agent adds are kept.
            let mut value: serde_json::Value = client.get(path)?;
            let answer: Issues = serde_json::from_value(value.clone())?;
            if let Some(list) = value
                .get_mut("issues")
                .and_then(serde_json::Value::as_array_mut)
            {
                list.retain(|i| {
                    serde_json::from_value::<Issue>(i.clone())
                        .map_or(true, |i| args.level.admits(i.level))
                });
            }
            output::print_json(&value)?;
            count(&answer, args.level)
        }
        OutputFormat::Text => {
            let answer: Issues = client.get(path)?;
            let now_ms = crate::api::unix_ms(SystemTime::now());
            print!("{}", render(&answer, args.level, now_ms, Style::current()));
            if !answer.unanswered.is_empty() {
                eprintln!(
                    "warning: {} of {} nodes answered; no answer from {}",
                    answer.nodes_answered,
                    answer.nodes_asked,
                    answer.unanswered.join(", ")
                );
            }
            count(&answer, args.level)
        }
    };
    Ok(if listed == 0 { Exit::Ok } else { Exit::No }.into())
}

fn count(answer: &Issues, level: LevelArg) -> usize {
    answer
        .issues
        .iter()
        .filter(|i| level.admits(i.level))
        .count()
}

/// How long ago `since_ms` was, for people: `42s ago`, `3m12s ago`.
fn ago(since_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(since_ms) / 1000;
    format!("{} ago", HumanDuration::from_secs(secs))
}

fn render(answer: &Issues, level: LevelArg, now_ms: u64, style: Style) -> String {
    let shown: Vec<&Issue> = answer
        .issues
        .iter()
        .filter(|i| level.admits(i.level))
        .collect();
    if shown.is_empty() {
        let what = match level {
            LevelArg::Warning => "no issues",
            LevelArg::Critical => "no critical issues",
        };
        return format!(
            "{what} ({} of {} nodes answered)\n",
            answer.nodes_answered, answer.nodes_asked
        );
    }
    let mut table = Table::new(&["LEVEL", "NODE", "KIND", "SUBJECT", "SINCE", "MESSAGE"]);
    for issue in shown {
        let node = match issue.reported_by.len() {
            0 | 1 => issue.node.clone(),
            n => format!("{} +{}", issue.node, n - 1),
        };
        table.row([
            issue.level.to_string(),
            node,
            issue.kind.to_string(),
            issue.subject.clone(),
            ago(issue.since_ms, now_ms),
            issue.message.clone(),
        ]);
    }
    table.render(style)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IssueKind;

    fn issue(kind: IssueKind, level: IssueLevel, node: &str, subject: &str, since: u64) -> Issue {
        Issue::new(
            kind,
            level,
            node,
            subject,
            format!("about {subject}"),
            since,
        )
    }

    fn answer() -> Issues {
        let mut dead = issue(
            IssueKind::MemberDead,
            IssueLevel::Critical,
            "n1",
            "n3",
            10_000,
        );
        dead.reported_by = vec!["n1".into(), "n2".into(), "n4".into()];
        Issues {
            issues: vec![
                dead,
                issue(
                    IssueKind::ClockSkew,
                    IssueLevel::Warning,
                    "n2",
                    "n4",
                    70_000,
                ),
            ],
            nodes_asked: 4,
            nodes_answered: 3,
            unanswered: vec!["n3".into()],
        }
    }

    #[test]
    fn issues_are_an_aligned_table() {
        let text = render(&answer(), LevelArg::Warning, 202_000, Style::PLAIN);
        assert_eq!(
            text,
            "LEVEL     NODE   KIND         SUBJECT  SINCE      MESSAGE\n\
             critical  n1 +2  member-dead  n3       3m12s ago  about n3\n\
             warning   n2     clock-skew   n4       2m12s ago  about n4\n"
        );
    }

    #[test]
    fn the_level_filters_and_an_empty_list_says_so() {
        let text = render(&answer(), LevelArg::Critical, 202_000, Style::PLAIN);
        assert!(text.contains("member-dead"), "{text}");
        assert!(!text.contains("clock-skew"), "{text}");
        assert_eq!(count(&answer(), LevelArg::Critical), 1);
        assert_eq!(count(&answer(), LevelArg::Warning), 2);
        let mut calm = answer();
        calm.issues.retain(|i| i.level == IssueLevel::Warning);
        assert_eq!(
            render(&calm, LevelArg::Critical, 0, Style::PLAIN),
            "no critical issues (3 of 4 nodes answered)\n"
        );
        calm.issues.clear();
        assert_eq!(
            render(&calm, LevelArg::Warning, 0, Style::PLAIN),
            "no issues (3 of 4 nodes answered)\n"
        );
    }

    #[test]
    fn ages_are_human_durations() {
        assert_eq!(ago(1_000, 43_500), "42s ago");
        assert_eq!(ago(5_000, 1_000), "0s ago");
    }
}
