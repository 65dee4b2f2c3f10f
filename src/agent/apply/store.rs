//! The 2PC state on disk, in `DATA_DIR/twophase/`:
//!
//! * `state.bin`: `DurableState` (postcard, behind a format tag) with the
//!   committed and staged texts left out, and the hashes of the last
//!   versions this node's commits replaced (`ApplyStore::replaced`);
//! * `committed-V.yaml`: the text of committed version V;
//! * `staged-SEQ-COORDINATOR.yaml`: the text of the staged proposal.
//!
//! Every file is written with `storage::write_atomic` (temp, fsync,
//! rename, fsync of the directory). A text is written before the
//! `state.bin` that names it, and files `state.bin` no longer names are
//! removed after it, so a crash at any point leaves a `state.bin` whose
//! texts are all on disk. A missing directory (or `state.bin`) is a fresh
//! node: version 0, no txn.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::{describe, write_atomic};
use crate::twophase::{ConfigHash, DurableState, Record, TxnId, Version};

use crate::agent::topology_watch::config_hash;

/// The subdirectory of the data dir.
pub const DIR: &str = "twophase";
const STATE: &str = "state.bin";
/// Bumped when the layout of `state.bin` changes; format 2 (no
/// `replaced`) is still read.
const FORMAT: u32 = 3;
/// How many replaced versions' hashes are kept: enough for a topology
/// file that failed to follow several versions in a row.
const REPLACED_KEPT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {}", path.display(), describe(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    state: DurableState,
    replaced: Vec<ConfigHash>,
}

/// The durable state of one node's coordinator and participant.
#[derive(Debug)]
pub struct ApplyStore {
    dir: PathBuf,
    state: DurableState,
    replaced: Vec<ConfigHash>,
}

impl ApplyStore {
    /// Loads `data_dir/twophase/`, or starts fresh when there is none.
    pub fn open(data_dir: &Path) -> Result<ApplyStore, StoreError> {
        let dir = data_dir.join(DIR);
        let path = dir.join(STATE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ApplyStore {
                    dir,
                    state: DurableState::default(),
                    replaced: Vec::new(),
                })
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let corrupt = |why: String| StoreError::Corrupt {
            path: path.clone(),
            why,
        };
        let not_state = |e: postcard::Error| corrupt(format!("not a 2PC state file: {e}"));
        let (format, rest) = postcard::take_from_bytes::<u32>(&bytes).map_err(not_state)?;
        let (mut state, replaced) = match format {
            FORMAT => {
                let on_disk: OnDisk = postcard::from_bytes(&bytes).map_err(not_state)?;
                (on_disk.state, on_disk.replaced)
            }
            // Format 2: the state right after the tag, nothing replaced.
            2 => (postcard::from_bytes(rest).map_err(not_state)?, Vec::new()),
            other => {
                return Err(corrupt(format!(
                    "format {other} is not one this agent reads (2 or {FORMAT})"
                )))
            }
        };
        let committed = &mut state.participant.committed;
        if committed.version > Version(0) {
            let file = dir.join(committed_name(committed.version));
            committed.text = read_text(&file)?;
            if config_hash(committed.text.as_bytes()) != committed.hash {
                return Err(StoreError::Corrupt {
                    path: file,
                    why: format!("does not match the hash of version {}", committed.version),
                });
            }
        }
        if let Some(staged) = state.participant.staged.as_mut() {
            let file = dir.join(staged_name(staged.proposal.txn));
            staged.proposal.text = read_text(&file)?;
        }
        Ok(ApplyStore {
            dir,
            state,
            replaced,
        })
    }

    /// The state as it is on disk.
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    /// The hashes of the last committed versions that later ones replaced
    /// on this node, oldest first. A topology file found at start with
    /// one of them is a rewrite the agent did not finish (killed between
    /// the store and the file, or the file's write failed), not an edit.
    pub fn replaced(&self) -> &[ConfigHash] {
        &self.replaced
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies `record` and makes it durable before returning. On an error
    /// nothing changed (a text file the new state would name may be left,
    /// unnamed): the caller may persist the same record again.
    pub fn persist(&mut self, record: &Record) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        next.apply(record);
        let replaced = self.replaced_by(&next);
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        // Texts first: `state.bin` never names a file that is not there.
        if let Some(staged) = &next.participant.staged {
            let changed = self
                .state
                .participant
                .staged
                .as_ref()
                .map(|s| s.proposal.txn)
                != Some(staged.proposal.txn);
            if changed {
                self.write(
                    &staged_name(staged.proposal.txn),
                    staged.proposal.text.as_bytes(),
                )?;
            }
        }
        let committed = &next.participant.committed;
        if committed.version != self.state.participant.committed.version
            && committed.version > Version(0)
        {
            self.write(
                &committed_name(committed.version),
                committed.text.as_bytes(),
            )?;
        }
        // The step takes effect here, once every file it names is on
        // disk: a failure before leaves the old state (in memory too), and
        // the same record persisted again writes every file again.
        self.write_state(&next, &replaced)?;
        self.state = next;
        self.replaced = replaced;
        self.remove_unnamed();
        Ok(())
    }

    /// `replaced` once `next` is the state: with the committed version it
    /// replaces, if it does, and without the one it commits (a version
    /// that brings an old text back).
    fn replaced_by(&self, next: &DurableState) -> Vec<ConfigHash> {
        let (old, new) = (
            &self.state.participant.committed,
            &next.participant.committed,
        );
        let mut replaced = self.replaced.clone();
        if new.version != old.version && old.version > Version(0) {
            replaced.retain(|h| *h != old.hash && *h != new.hash);
            replaced.push(old.hash);
            let over = replaced.len().saturating_sub(REPLACED_KEPT);
            replaced.drain(..over);
        }
        replaced
    }

    /// Writes `state.bin` again as it is: whether the disk takes a write
    /// after one failed (the durable state stays what it was).
    pub fn rewrite(&self) -> Result<(), StoreError> {
        fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        self.write_state(&self.state, &self.replaced)
    }

    fn write_state(&self, state: &DurableState, replaced: &[ConfigHash]) -> Result<(), StoreError> {
        let mut slim = state.clone();
        slim.participant.committed.text.clear();
        if let Some(staged) = slim.participant.staged.as_mut() {
            staged.proposal.text.clear();
        }
        let bytes = postcard::to_allocvec(&OnDisk {
            format: FORMAT,
            state: slim,
            replaced: replaced.to_vec(),
        })
        .map_err(|e| StoreError::Corrupt {
            path: self.dir.join(STATE),
            why: format!("cannot encode: {e}"),
        })?;
        self.write(STATE, &bytes)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        write_atomic(&path, bytes, 0o600).map_err(|source| StoreError::Io {
            action: "write",
            path,
            source,
        })
    }

    /// Removes text files `state.bin` does not name (best effort: a file
    /// left behind only takes space).
    fn remove_unnamed(&self) {
        let keep_committed = committed_name(self.state.participant.committed.version);
        let keep_staged = self
            .state
            .participant
            .staged
            .as_ref()
            .map(|s| staged_name(s.proposal.txn));
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = (name.starts_with("committed-") || name.starts_with("staged-"))
                && name.ends_with(".yaml");
            if ours && name != keep_committed && Some(name) != keep_staged.as_deref() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn committed_name(version: Version) -> String {
    format!("committed-{version}.yaml")
}

fn staged_name(txn: TxnId) -> String {
    format!("staged-{}-{}.yaml", txn.seq, txn.coordinator)
}

fn read_text(path: &Path) -> Result<String, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        why: "not valid UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twophase::{NodeId, Prepare, Proposal};
    use std::time::Duration;
    use uuid::Uuid;

    fn txn(seq: u64) -> TxnId {
        TxnId {
            coordinator: NodeId(Uuid::from_u128(7)),
            seq,
        }
    }

    fn staged(seq: u64, base: u64, text: &str) -> Record {
        Record::Staged(Prepare {
            proposal: Proposal {
                txn: txn(seq),
                base: Version(base),
                version: Version(base + 1),
                text: text.into(),
                hash: config_hash(text.as_bytes()),
            },
            participants: vec![txn(seq).coordinator],
            lease: Duration::from_secs(5),
            log: crate::twophase::DecisionLog::Replicated,
        })
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_missing_dir_is_a_fresh_node() {
        let data = tempfile::tempdir().unwrap();
        let store = ApplyStore::open(data.path()).unwrap();
        assert_eq!(store.state(), &DurableState::default());
        assert!(
            !data.path().join(DIR).exists(),
            "nothing written by opening"
        );
    }

    #[test]
    fn every_record_survives_a_reopen_with_its_texts() {
        let data = tempfile::tempdir().unwrap();
        let mut store = ApplyStore::open(data.path()).unwrap();
        let records = [
            Record::Started {
                txn: txn(0),
                started: crate::twophase::Started {
                    version: Version(1),
                    hash: crate::twophase::ConfigHash([1; 32]),
                    participants: vec![txn(0).coordinator],
                    log: crate::twophase::DecisionLog::Replicated,
                },
            },
            staged(0, 0, "cluster: a # one\n"),
        ];
        for record in &records {
            store.persist(record).unwrap();
            let reopened = ApplyStore::open(data.path()).unwrap();
            assert_eq!(reopened.state(), store.state());
        }
        assert_eq!(
            names(store.dir()),
            [
                "staged-0-00000000-0000-0000-0000-000000000007.yaml",
                "state.bin"
            ]
        );
        for record in [
            Record::Decided {
                txn: txn(0),
                decision: crate::twophase::Decision::Commit,
            },
            Record::Committed { txn: txn(0) },
            Record::Finished { txn: txn(0) },
        ] {
            store.persist(&record).unwrap();
            assert_eq!(
                ApplyStore::open(data.path()).unwrap().state(),
                store.state()
            );
        }
        let state = ApplyStore::open(data.path()).unwrap().state().clone();
        assert_eq!(state.participant.committed.version, Version(1));
        assert_eq!(state.participant.committed.text, "cluster: a # one\n");
        assert_eq!(state.coordinator.next_seq, 1);
        assert_eq!(names(store.dir()), ["committed-1.yaml", "state.bin"]);

        store.persist(&staged(5, 1, "cluster: b\n")).unwrap();
        store
            .persist(&Record::Aborted {
                txn: txn(5),
                version: Version(2),
            })
            .unwrap();
        let reopened = ApplyStore::open(data.path()).unwrap();
        assert_eq!(reopened.state(), store.state());
        assert_eq!(reopened.state().participant.staged, None);
        assert_eq!(names(store.dir()), ["committed-1.yaml", "state.bin"]);
    }

    #[test]
    fn a_failed_persist_changes_nothing_and_the_same_record_completes_it() {
        let data = tempfile::tempdir().unwrap();
        let mut store = ApplyStore::open(data.path()).unwrap();
        store.persist(&staged(0, 0, "cluster: a\n")).unwrap();
        let before = store.state().clone();
        // The committed text cannot be written (a directory in its way
        // stands for a full disk; root ignores permissions).
        let blocker = store.dir().join("committed-1.yaml");
        fs::create_dir(&blocker).unwrap();
        let commit = Record::Committed { txn: txn(0) };
        let err = store.persist(&commit).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert_eq!(store.state(), &before, "in memory");
        assert_eq!(ApplyStore::open(data.path()).unwrap().state(), &before);
        // Writes work again: the same record, once more.
        fs::remove_dir(&blocker).unwrap();
        store.rewrite().unwrap();
        assert_eq!(ApplyStore::open(data.path()).unwrap().state(), &before);
        store.persist(&commit).unwrap();
        let after = ApplyStore::open(data.path()).unwrap().state().clone();
        assert_eq!(&after, store.state());
        assert_eq!(after.participant.committed.version, Version(1));
        assert_eq!(after.participant.committed.text, "cluster: a\n");
        assert_eq!(names(store.dir()), ["committed-1.yaml", "state.bin"]);
    }

    #[test]
    fn a_damaged_state_file_is_an_error_not_a_fresh_start() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join(DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE), b"\xff\xff\xff\xff\xff").unwrap();
        let err = ApplyStore::open(data.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    /// Stages `text` as version `base + 1` (txn `seq`) and commits it.
    fn commit(store: &mut ApplyStore, seq: u64, base: u64, text: &str) {
        store.persist(&staged(seq, base, text)).unwrap();
        store.persist(&Record::Committed { txn: txn(seq) }).unwrap();
    }

    fn hash(text: &str) -> ConfigHash {
        config_hash(text.as_bytes())
    }

    #[test]
    fn the_versions_a_commit_replaced_are_kept_newest_last_and_bounded() {
        let data = tempfile::tempdir().unwrap();
        let mut store = ApplyStore::open(data.path()).unwrap();
        commit(&mut store, 0, 0, "cluster: a\n");
        assert!(store.replaced().is_empty(), "version 1 replaced nothing");
        commit(&mut store, 1, 1, "cluster: b\n");
        assert_eq!(store.replaced(), [hash("cluster: a\n")]);
        // Back to a's text: a is committed again, so no longer replaced.
        commit(&mut store, 2, 2, "cluster: a\n");
        assert_eq!(store.replaced(), [hash("cluster: b\n")]);
        assert_eq!(
            ApplyStore::open(data.path()).unwrap().replaced(),
            store.replaced()
        );
        // A staged change that aborts replaces nothing.
        store.persist(&staged(3, 3, "cluster: c\n")).unwrap();
        store
            .persist(&Record::Aborted {
                txn: txn(3),
                version: Version(4),
            })
            .unwrap();
        assert_eq!(store.replaced(), [hash("cluster: b\n")]);
        for v in 3..3 + REPLACED_KEPT as u64 + 4 {
            commit(&mut store, v + 1, v, &format!("cluster: v{}\n", v + 1));
        }
        let last = 3 + REPLACED_KEPT as u64 + 3;
        let expected: Vec<ConfigHash> = (last + 1 - REPLACED_KEPT as u64..=last)
            .map(|v| hash(&format!("cluster: v{v}\n")))
            .collect();
        assert_eq!(store.replaced(), expected);
        assert_eq!(ApplyStore::open(data.path()).unwrap().replaced(), expected);
    }

    #[test]
    fn a_state_file_of_format_2_is_read_with_nothing_replaced() {
        let data = tempfile::tempdir().unwrap();
        let mut store = ApplyStore::open(data.path()).unwrap();
        commit(&mut store, 0, 0, "cluster: a\n");
        commit(&mut store, 1, 1, "cluster: b\n");
        let mut slim = store.state().clone();
        slim.participant.committed.text.clear();
        fs::write(
            store.dir().join(STATE),
            postcard::to_allocvec(&(2u32, slim)).unwrap(),
        )
        .unwrap();
        let reopened = ApplyStore::open(data.path()).unwrap();
        assert_eq!(reopened.state(), store.state());
        assert!(reopened.replaced().is_empty());
        fs::write(
            store.dir().join(STATE),
            postcard::to_allocvec(&(9u32, store.state().clone())).unwrap(),
        )
        .unwrap();
        let err = ApplyStore::open(data.path()).unwrap_err().to_string();
        assert!(
            err.contains("format 9 is not one this agent reads"),
            "{err}"
        );
    }
}
