//! Who this node is across restarts: a UUID made on first start and kept in
//! `data_dir/node-id`, and a generation that grows at every start even if
//! the wall clock stepped back (the last one is persisted before use).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::storage::write_atomic;

const NODE_ID_FILE: &str = "node-id";
const GENERATION_FILE: &str = "generation";

/// A node's identity for the life of its data dir.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct NodeId(pub Uuid);

/// Small numbers as ids, for tests (openraft's storage suite names nodes
/// 0, 1, 2, ...).
impl From<u64> for NodeId {
    fn from(n: u64) -> NodeId {
        NodeId(Uuid::from_u128(u128::from(n)))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {action} {}: {}", path.display(), crate::storage::describe(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is corrupt ({what}); it holds this node's identity: restore it, or delete it to make this a new node", path.display())]
    Corrupt { path: PathBuf, what: String },
}

/// This start's identity: the lasting id and this run's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub id: NodeId,
    /// Start time in µs since the epoch, strictly above every earlier one.
    pub generation: u64,
}

impl Identity {
    /// Loads the node id (making it on first start) and takes the next
    /// generation. `now_us` is the wall clock in µs since the epoch.
    pub fn load_or_create(data_dir: &Path, now_us: u64) -> Result<Identity, IdentityError> {
        let id = load_or_create_id(&data_dir.join(NODE_ID_FILE))?;
        let generation = next_generation(&data_dir.join(GENERATION_FILE), now_us)?;
        Ok(Identity { id, generation })
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str) -> Result<(), IdentityError> {
    write_atomic(path, text.as_bytes(), 0o644).map_err(|source| IdentityError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn load_or_create_id(path: &Path) -> Result<NodeId, IdentityError> {
    if let Some(text) = read_optional(path)? {
        return Uuid::parse_str(text.trim())
            .map(NodeId)
            .map_err(|e| IdentityError::Corrupt {
                path: path.to_path_buf(),
                what: e.to_string(),
            });
    }
    let id = NodeId(Uuid::new_v4());
    write(path, &format!("{id}\n"))?;
    Ok(id)
}

fn next_generation(path: &Path, now_us: u64) -> Result<u64, IdentityError> {
    let last = match read_optional(path)? {
        None => 0,
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|e| IdentityError::Corrupt {
                path: path.to_path_buf(),
                what: e.to_string(),
            })?,
    };
    let generation = now_us.max(last.saturating_add(1));
    // Persisted before anyone hears of it, so the next start is above it.
    write(path, &format!("{generation}\n"))?;
    Ok(generation)
}

/// Microseconds since the Unix epoch by the wall clock.
pub fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_kept_and_generation_grows() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path(), 1_000).unwrap();
        let second = Identity::load_or_create(dir.path(), 2_000).unwrap();
        assert_eq!(first.id, second.id);
        assert_eq!((first.generation, second.generation), (1_000, 2_000));
    }

    #[test]
    fn generation_grows_when_the_clock_steps_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path(), 5_000).unwrap();
        let second = Identity::load_or_create(dir.path(), 10).unwrap();
        let third = Identity::load_or_create(dir.path(), 10).unwrap();
        assert!(first.generation < second.generation);
        assert!(second.generation < third.generation);
    }

    #[test]
    fn a_corrupt_id_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(NODE_ID_FILE), "not a uuid").unwrap();
        let err = Identity::load_or_create(dir.path(), 1).unwrap_err();
        assert!(err.to_string().contains("node-id is corrupt"), "{err}");
    }
}
