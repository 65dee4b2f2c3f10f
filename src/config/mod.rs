//! Config files: the node config (`cohort.yaml`, this agent's settings) and
//! the topology (`topology.yaml`, the cluster's desired shape). Both are
//! parsed into typed models and validated; every problem is reported as
//! `FILE:LINE:COLUMN: what is wrong`, pointing at the offending key.

mod diagnostic;
pub mod diff;
mod duration;
mod node;
mod topology;
mod yaml;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics, Pos};
pub use duration::{DurationError, HumanDuration};
pub use node::{
    ApiConfig, ApiSocket, DiscoveryConfig, EventHandler, GossipConfig, JoinTarget, LogConfig,
    LogFormat, MulticastConfig, NodeConfig, DEFAULT_API, DEFAULT_API_SOCKET, DEFAULT_CONFIG_PATH,
    DEFAULT_PORT, MAX_SOCKET_PATH,
};
pub use topology::{
    Election, FailoverMode, NodeSpec, ReplicaSet, RoleSpec, Topology, BUILTIN_ROLES,
};
pub use yaml::OrderedMap;

/// Why a config could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {}", path.display(), crate::storage::describe(source))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
}

/// Which kind of file `cohort validate` checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Node,
    Topology,
}

/// Checks one file as `cohort validate` does: every problem found, or none.
pub fn validate_file(kind: FileKind, path: &Path) -> Result<(), ConfigError> {
    match kind {
        FileKind::Node => NodeConfig::load(path, NodeConfig::defaults()).map(drop),
        FileKind::Topology => Topology::load(path).map(drop),
    }
}

pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let text = String::from_utf8_lossy(valid);
        let line = text.matches('\n').count() as u64 + 1;
        let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u64 + 1;
        ConfigError::Invalid(Diagnostics::one(Diagnostic::new(
            path,
            Pos { line, column },
            "the file is not valid UTF-8",
        )))
    })
}

/// What a node, replica set, role or cluster may be called: it appears in
/// paths, unit names, metrics labels and logs, so keep it plain.
pub(crate) const NAME_RULE: &str =
    "use 1 to 63 letters, digits, `-`, `_` or `.`, starting with a letter or digit";

pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
