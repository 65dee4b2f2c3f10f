//! The node's data dir: created on first start and locked for the life of
//! the process, so two agents never share one identity and state.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data dir {}: {}", path.display(), crate::storage::describe(source))]
    Io { path: PathBuf, source: io::Error },
    #[error("data dir {} is in use by another cohort agent (pid {pid})", path.display())]
    Locked { path: PathBuf, pid: String },
}

/// Held while the agent runs; the lock goes with the process.
pub struct DataDir {
    pub path: PathBuf,
    _lock: Flock<File>,
}

impl DataDir {
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io_err = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(path)
            .map_err(io_err)?;
        let lock_path = path.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let pid = fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(DataDirError::Locked {
                    path: path.to_path_buf(),
                    pid: pid.trim().to_string(),
                });
            }
            Err((_, errno)) => return Err(io_err(io::Error::from(errno))),
        };
        // The pid is only a hint for the message above.
        use std::io::Write;
        lock.set_len(0).map_err(io_err)?;
        write!(lock, "{}", std::process::id()).map_err(io_err)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDir::open(&data).unwrap();
        let err = DataDir::open(&data).err().expect("locked");
        assert!(
            err.to_string().contains("in use by another cohort agent"),
            "{err}"
        );
        drop(first);
        DataDir::open(&data).unwrap();
    }
}
