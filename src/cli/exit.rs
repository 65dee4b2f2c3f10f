//! The exit statuses of `cohort`, defined once: scripts (and the Ansible
//! role) tell "the answer is no" from "there was nobody to ask".

use std::process::ExitCode;

use super::client::CallError;

/// What a command's exit status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: done, the answer is yes.
    Ok = 0,
    /// 1: the answer is no, or the command failed: an apply aborted, a
    /// file with problems, a route without a master, a refusal by the
    /// agent, a wait that timed out, an agent that could not start.
    No = 1,
    /// 2: the command line is wrong (clap's own status for usage errors).
    Usage = 2,
    /// 3: the agent API cannot be reached: no agent there, not up yet, or
    /// no answer within the deadline.
    Unreachable = 3,
    /// 4: the agent refused access: the API token is missing or wrong.
    Unauthorized = 4,
}

impl Exit {
    /// The status for a command's error.
    pub fn of_error(e: &anyhow::Error) -> Exit {
        match e.downcast_ref::<CallError>() {
            Some(CallError::Unreachable { .. } | CallError::Deadline { .. }) => Exit::Unreachable,
            Some(CallError::Unauthorized { .. }) => Exit::Unauthorized,
            _ => Exit::No,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// The end of every `--help`: the statuses every command shares (what
/// `exit_status!` appends).
#[cfg(test)]
const COMMON: &str = "  \
2  usage error: an unknown option, a missing or malformed argument
  3  the agent API cannot be reached: no agent, not up yet, or no answer in time
  4  the agent refused access: the API token (--token-file) is missing or wrong";

/// `cohort --help`'s whole table.
pub const HELP: &str = "\
Exit status:
  0  success: done, or the answer is yes
  1  the answer is no, or the command failed: an apply aborted, a file with
     problems, a route without a master, a refusal by the agent, a wait that
     timed out, an agent that could not start
  2  usage error: an unknown option, a missing or malformed argument
  3  the agent API cannot be reached: no agent, not up yet, or no answer in time
  4  the agent refused access: the API token (--token-file) is missing or wrong";

/// A command's `Exit status:` section: its own meanings of 0 and 1 (as
/// literal lines), then the statuses every command shares.
macro_rules! exit_status {
    ($($line:literal),* $(,)?) => {
        concat!(
            "Exit status:\n",
            $("  ", $line, "\n",)*
            "  2  usage error: an unknown option, a missing or malformed argument\n",
            "  3  the agent API cannot be reached: no agent, not up yet, or no answer in time\n",
            "  4  the agent refused access: the API token (--token-file) is missing or wrong"
        )
    };
}
pub(crate) use exit_status;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_help_ends_with_the_common_statuses() {
        const ONE: &str = exit_status!("0  yes", "1  no");
        assert!(ONE.starts_with("Exit status:\n  0  yes\n  1  no\n  2  usage error"));
        assert!(ONE.ends_with(COMMON), "{ONE}");
        assert!(HELP.ends_with(COMMON), "{HELP}");
    }

    #[test]
    fn errors_map_to_their_statuses() {
        let unreachable: anyhow::Error = CallError::Unreachable {
            endpoint: super::super::client::Endpoint::Tcp("127.0.0.1:1".parse().unwrap()),
            cause: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
        .into();
        assert_eq!(Exit::of_error(&unreachable), Exit::Unreachable);
        let refused: anyhow::Error = CallError::Api {
            status: hyper::StatusCode::BAD_REQUEST,
            error: crate::api::ApiError {
                code: "rejected".into(),
                message: "no".into(),
            },
        }
        .into();
        assert_eq!(Exit::of_error(&refused), Exit::No);
        // Context on top keeps the kind.
        let wrapped = unreachable.context("reading the status");
        assert_eq!(Exit::of_error(&wrapped), Exit::Unreachable);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("other")), Exit::No);
    }
}
