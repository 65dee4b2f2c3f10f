//! What the agent knows of its topology file until the apply machinery
//! lands: whether it is there and valid, and if not, every problem as a
//! `FILE:LINE:COLUMN:` line for `cohort status` and the log.

use std::io;
use std::path::Path;

use tracing::{info, warn};

use crate::api::{TopologyFile, TopologyFileState};
use crate::config::{ConfigError, Topology};

/// Reads and validates the file at `path` now; the model too when it is
/// valid, so no caller has to parse the file a second time.
pub fn check(path: &Path) -> (TopologyFile, Option<Topology>) {
    let mut model = None;
    let (state, problems) = match Topology::load(path) {
        Ok(topology) => {
            model = Some(topology);
            (TopologyFileState::Valid, Vec::new())
        }
        Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            (TopologyFileState::Missing, Vec::new())
        }
        Err(e @ ConfigError::Read { .. }) => (TopologyFileState::Unreadable, vec![e.to_string()]),
        Err(ConfigError::Invalid(d)) => (
            TopologyFileState::Invalid,
            d.iter().map(|d| d.to_string()).collect(),
        ),
    };
    let file = TopologyFile {
        path: path.display().to_string(),
        state,
        problems,
        matches_committed: None,
        pending: None,
    };
    (file, model)
}

/// One log line per problem, so each reads like the validator's output.
pub fn report(file: &TopologyFile) {
    match file.state {
        TopologyFileState::Valid => info!(path = %file.path, "topology file is valid"),
        TopologyFileState::Missing => info!(path = %file.path, "no topology file yet"),
        TopologyFileState::Invalid | TopologyFileState::Unreadable => {
            for problem in &file.problems {
                warn!(path = %file.path, "topology file rejected: {problem}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_missing_valid_and_invalid_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.yaml");
        assert_eq!(check(&path).0.state, TopologyFileState::Missing);

        std::fs::write(
            &path,
            "cluster: c\nreplicasets:\n  s:\n    nodes:\n      a: { address: 127.0.0.1:1 }\n",
        )
        .unwrap();
        let (valid, model) = check(&path);
        assert!(model.is_some(), "a valid file comes with its model");
        assert_eq!(
            valid.state,
            TopologyFileState::Valid,
            "{:?}",
            valid.problems
        );

        std::fs::write(&path, "cluster: c\nreplicasets: {}\nbogus: 1\n").unwrap();
        let (invalid, model) = check(&path);
        assert!(model.is_none());
        assert_eq!(invalid.state, TopologyFileState::Invalid);
        assert!(!invalid.problems.is_empty());
        let prefix = format!("{}:", path.display());
        assert!(
            invalid.problems.iter().all(|p| p.starts_with(&prefix)),
            "{:?}",
            invalid.problems
        );
    }
}
