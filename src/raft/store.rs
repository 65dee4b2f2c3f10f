//! The Raft group's durable storage in `data_dir/raft`: the log, the vote,
//! the committed log id and the state machine's snapshot, written so that a
//! kill -9 at any moment loses nothing acknowledged and never leaves a file
//! that cannot be opened.
//!
//! Files in the directory:
//! - `log`: the 8-byte magic `cohlog\0\x01`, then records, each
//!   `[payload length: u32 LE][first 8 bytes of SHA-256(length ‖ payload)][payload]`,
//!   the payload a postcard `Record`: an entry, "truncate from index N"
//!   or "purge up to log id L". Truncate and purge are markers appended
//!   like any record (durable as one append, so a crash leaves them done or
//!   not done, never half done); replaying the records in order rebuilds
//!   the log. When purges leave most of the file dead, it is rewritten
//!   atomically (temp file, fsync, rename) with only the live entries.
//!   A record cut short or failing its checksum at the end of the file is
//!   a write interrupted by a crash: it is cut off at open. One followed by
//!   intact records is damage, not a crash: open refuses, naming the file
//!   and the offset. SHA-256 (truncated) rather than CRC32 because `sha2`
//!   is already a dependency and next to an fsync the hash costs nothing.
//! - `vote`, `committed`, `snapshot`: postcard, each replaced atomically
//!   with [`crate::storage::write_atomic`].
//!
//! The state machine ([`ClusterState`]) is not written on each apply: after
//! a restart it is the snapshot's, and openraft re-applies the log entries
//! after the snapshot's last applied id up to the saved committed id (it
//! asks [`RaftStateMachine::applied_state`] where to start).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    ClusterState, Entry, LogId, Membership, NodeId, Peer, Response, StorageError, TypeConfig, Vote,
};
use crate::storage::{describe, sync_dir, write_atomic};

const LOG_FILE: &str = "log";
const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const SNAPSHOT_FILE: &str = "snapshot";

/// The first bytes of a log file: what it is and its format version.
const LOG_MAGIC: &[u8; 8] = b"cohlog\x00\x01";
/// The format version leading every other file (and the snapshot data
/// sent to other nodes).
const FORMAT: u8 = 1;
/// Length and checksum before each record's payload.
const FRAME_HEADER: usize = 12;
/// No record is larger: a length beyond it is damage, not data.
const MAX_PAYLOAD: usize = 64 << 20;
/// The log is rewritten once it is this large and mostly purged entries.
const COMPACT_MIN_BYTES: u64 = 1 << 20;
const FILE_MODE: u32 = 0o600;

/// Why the store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {}: {}", path.display(), describe(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}: damaged record at byte {offset} ({problem}) with intact records after it: \
         not a write cut short by a crash, so nothing is dropped",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        problem: &'static str,
    },
    #[error("{}: the record at byte {offset} cannot be decoded: {reason}", path.display())]
    Undecodable {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{} is not a cohort raft log (unknown header)", path.display())]
    NotALog { path: PathBuf },
    #[error("cannot decode {}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error("snapshot {id} received cannot be decoded: {reason}")]
    BadSnapshot { id: String, reason: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("an earlier write to {} failed: the log store refuses further writes", path.display())]
    Failed { path: PathBuf },
}

/// The store's error as openraft takes it (which stops the Raft node).
fn storage_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: &StoreError) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens (creating if need be) the store in `dir`. `fsync: false` skips
/// every fsync: only for the in-process simulator, whose "crashes" drop the
/// Raft instance but never the page cache.
pub fn open(dir: &Path, fsync: bool) -> Result<(LogStore, StateMachineStore), StoreError> {
    let existed = dir.is_dir();
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    if fsync && !existed {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(io_error("sync", parent))?;
        }
    }
    remove_temp_files(dir)?;

    let log = LogInner::open(&dir.join(LOG_FILE), fsync)?;
    let vote: Option<Vote> = read_small(&dir.join(VOTE_FILE))?.flatten();
    let committed: Option<LogId> = read_small(&dir.join(COMMITTED_FILE))?.flatten();
    let log_store = LogStore {
        log: Arc::new(Mutex::new(log)),
        dir: dir.to_path_buf(),
        fsync,
        vote,
        committed,
        commit_index: CommitIndex::default(),
    };
    log_store.commit_index.set(committed);

    let snapshot_path = dir.join(SNAPSHOT_FILE);
    let current: Option<StoredSnapshot> =
        read_small::<(SnapshotMeta<NodeId, Peer>, Vec<u8>)>(&snapshot_path)?
            .map(|(meta, data)| StoredSnapshot { meta, data });
    let (state, last_applied, membership) = match &current {
        Some(s) => {
            let payload = decode_snapshot(&s.data).map_err(|reason| StoreError::BadFile {
                path: snapshot_path.clone(),
                reason,
            })?;
            (
                payload.state,
                s.meta.last_log_id,
                s.meta.last_membership.clone(),
            )
        }
        None => Default::default(),
    };
    // Snapshot ids end with a counter: carry on from the loaded one so an
    // id is never reused by this directory.
    let seq = current
        .as_ref()
        .and_then(|s| s.meta.snapshot_id.rsplit('-').next()?.parse::<u64>().ok())
        .map_or(0, |n| n + 1);
    let state = Arc::new(state);
    let (applied, _) = watch::channel(Applied {
        state: state.clone(),
        last_applied,
        membership: membership.clone(),
    });
    let sm = StateMachineStore {
        state,
        last_applied,
        membership,
        snapshots: Arc::new(SnapshotSlot {
            path: snapshot_path,
            fsync,
            current: Mutex::new(current),
            seq: AtomicU64::new(seq),
        }),
        applied,
    };
    info!(
        dir = %dir.display(),
        last_applied = ?sm.last_applied.map(|l| l.index),
        "raft store opened"
    );
    Ok((log_store, sm))
}

/// Temp files of atomic writes a crash interrupted.
fn remove_temp_files(dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        if entry.file_name().to_string_lossy().contains(".tmp.") {
            let path = entry.path();
            debug!(path = %path.display(), "removing an interrupted write");
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
    }
    Ok(())
}

/// Replaces `path` whole: atomically and durably, or (no fsync) only
/// atomically, which is all a process that does not crash needs.
fn write_file(path: &Path, bytes: &[u8], fsync: bool) -> Result<(), StoreError> {
    let result = if fsync {
        write_atomic(path, bytes, FILE_MODE)
    } else {
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp.nosync");
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, path))
    };
    result.map_err(io_error("write", path))
}

fn write_small<T: Serialize>(
    path: &Path,
    value: &T,
    what: &'static str,
    fsync: bool,
) -> Result<(), StoreError> {
    let bytes = postcard::to_allocvec(&(FORMAT, value)).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })?;
    write_file(path, &bytes, fsync)
}

/// The value in `path`, None if there is no such file.
fn read_small<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    let bad = |reason: String| StoreError::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let (format, value): (u8, T) = postcard::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
    if format != FORMAT {
        return Err(bad(format!("unknown format version {format}")));
    }
    Ok(Some(value))
}

// ---------------------------------------------------------------------------
// The log

/// One record of the log file. Generic so that an entry is written from a
/// reference and read back owned (postcard encodes both alike).
#[derive(Serialize, Deserialize)]
enum Record<E> {
    Entry(E),
    /// Entries from this index on are gone.
    Truncate {
        since: u64,
    },
    /// Entries up to this log id (included) are gone: a snapshot has them.
    Purge {
        upto: LogId,
    },
}

fn checksum(len: &[u8; 4], payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::new()
        .chain_update(len)
        .chain_update(payload)
        .finalize();
    let mut sum = [0; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

/// Appends `record`, framed, to `out`; returns the framed size.
fn frame<E: Serialize>(record: &Record<E>, out: &mut Vec<u8>) -> Result<u64, StoreError> {
    let payload = postcard::to_allocvec(record).map_err(|e| StoreError::Encode {
        what: "a log record",
        reason: e.to_string(),
    })?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_PAYLOAD)
        .ok_or_else(|| StoreError::Encode {
            what: "a log record",
            reason: format!("{} bytes is more than a record holds", payload.len()),
        })?
        .to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(&len, &payload));
    out.extend_from_slice(&payload);
    Ok((FRAME_HEADER + payload.len()) as u64)
}

/// The payload of the record starting at `at`, or why there is none.
fn parse_frame(bytes: &[u8], at: usize) -> Result<&[u8], &'static str> {
    let rest = bytes.get(at..).unwrap_or_default();
    if rest.len() < FRAME_HEADER {
        return Err("incomplete header");
    }
    let len_bytes = [rest[0], rest[1], rest[2], rest[3]];
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Err("impossible length");
    }
    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Err("incomplete record");
    };
    if rest[4..FRAME_HEADER] != checksum(&len_bytes, payload) {
        return Err("checksum mismatch");
    }
    Ok(payload)
}

/// What a log file holds: its intact records (with their framed sizes),
/// and where a torn tail starts, if it has one.
struct Scanned {
    records: Vec<(Record<Entry>, u64)>,
    torn: Option<(u64, &'static str)>,
}

fn scan(path: &Path, bytes: &[u8]) -> Result<Scanned, StoreError> {
    let mut records = Vec::new();
    let mut at = LOG_MAGIC.len();
    while at < bytes.len() {
        match parse_frame(bytes, at) {
            Ok(payload) => {
                let record =
                    postcard::from_bytes(payload).map_err(|e| StoreError::Undecodable {
                        path: path.to_path_buf(),
                        offset: at as u64,
                        reason: e.to_string(),
                    })?;
                let size = FRAME_HEADER + payload.len();
                records.push((record, size as u64));
                at += size;
            }
            Err(problem) => {
                // A crash cuts the last write short; it cannot make a bad
                // record with intact ones after it. Any offset where an
                // intact record starts (8 checksum bytes matching by chance
                // is not a concern) means damage in the middle.
                if (at + 1..bytes.len()).any(|later| parse_frame(bytes, later).is_ok()) {
                    return Err(StoreError::Corrupt {
                        path: path.to_path_buf(),
                        offset: at as u64,
                        problem,
                    });
                }
                return Ok(Scanned {
                    records,
                    torn: Some((at as u64, problem)),
                });
            }
        }
    }
    Ok(Scanned {
        records,
        torn: None,
    })
}

struct Stored {
    entry: Entry,
    /// Its framed size in the file, to know when compaction pays.
    bytes: u64,
}

/// The log, in memory and in its file; shared by the store and its readers.
struct LogInner {
    path: PathBuf,
    file: File,
    /// The file's length: everything before it is intact records.
    len: u64,
    fsync: bool,
    entries: BTreeMap<u64, Stored>,
    /// The framed size of `entries`.
    live_bytes: u64,
    last_purged: Option<LogId>,
    compact_min: u64,
    /// A write failed: whether the file still ends with intact records is
    /// unknown (an fsync error may have dropped pages), so nothing more is
    /// written until a reopen checks it.
    failed: bool,
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .append(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_error("open", path))
}

impl LogInner {
    fn open(path: &Path, fsync: bool) -> Result<LogInner, StoreError> {
        let mut bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("read", path)(e)),
        };
        if bytes.len() < LOG_MAGIC.len() {
            if !LOG_MAGIC.starts_with(&bytes) {
                return Err(StoreError::NotALog {
                    path: path.to_path_buf(),
                });
            }
            // New, or its creation was cut short (the header is written
            // atomically, so only by something outside this code).
            if !bytes.is_empty() {
                warn!(path = %path.display(), "raft log header incomplete: rewriting it");
            }
            write_file(path, LOG_MAGIC, fsync)?;
            bytes = LOG_MAGIC.to_vec();
        } else if !bytes.starts_with(LOG_MAGIC) {
            return Err(StoreError::NotALog {
                path: path.to_path_buf(),
            });
        }
        let scanned = scan(path, &bytes)?;
        let file = open_append(path)?;
        let mut len = bytes.len() as u64;
        if let Some((offset, problem)) = scanned.torn {
            warn!(
                path = %path.display(),
                offset,
                dropped_bytes = len - offset,
                "raft log ends with a record cut short by a crash ({problem}): cutting it off"
            );
            file.set_len(offset).map_err(io_error("truncate", path))?;
            if fsync {
                file.sync_all().map_err(io_error("sync", path))?;
            }
            len = offset;
        }
        let mut log = LogInner {
            path: path.to_path_buf(),
            file,
            len,
            fsync,
            entries: BTreeMap::new(),
            live_bytes: 0,
            last_purged: None,
            compact_min: COMPACT_MIN_BYTES,
            failed: false,
        };
        for (record, bytes) in scanned.records {
            log.replay(record, bytes);
        }
        Ok(log)
    }

    /// Applies one record to the in-memory log.
    fn replay(&mut self, record: Record<Entry>, bytes: u64) {
        match record {
            Record::Entry(entry) => {
                let index = entry.log_id.index;
                self.live_bytes += bytes;
                if let Some(old) = self.entries.insert(index, Stored { entry, bytes }) {
                    self.live_bytes -= old.bytes;
                }
            }
            Record::Truncate { since } => {
                let gone = self.entries.split_off(&since);
                self.live_bytes -= gone.values().map(|s| s.bytes).sum::<u64>();
            }
            Record::Purge { upto } => {
                let kept = self.entries.split_off(&upto.index.saturating_add(1));
                let gone = std::mem::replace(&mut self.entries, kept);
                self.live_bytes -= gone.values().map(|s| s.bytes).sum::<u64>();
                self.last_purged = self.last_purged.max(Some(upto));
            }
        }
    }

    /// Appends framed records and makes them durable.
    fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Failed {
                path: self.path.clone(),
            });
        }
        let result = self.file.write_all(buf).and_then(|()| {
            if self.fsync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Records appended after a partial one would make it damage
                // in the middle at the next open: cut it off, and write no
                // more here.
                let _ = self.file.set_len(self.len);
                self.failed = true;
                Err(io_error("append to", &self.path)(source))
            }
        }
    }

    fn append(&mut self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        let mut framed = Vec::new();
        for entry in entries {
            let bytes = frame(&Record::Entry(&entry), &mut buf)?;
            framed.push((entry, bytes));
        }
        if framed.is_empty() {
            return Ok(());
        }
        self.write(&buf)?;
        for (entry, bytes) in framed {
            self.replay(Record::Entry(entry), bytes);
        }
        Ok(())
    }

    fn truncate(&mut self, since: u64) -> Result<(), StoreError> {
        let record = Record::<&Entry>::Truncate { since };
        let mut buf = Vec::new();
        frame(&record, &mut buf)?;
        self.write(&buf)?;
        self.replay(Record::Truncate { since }, 0);
        Ok(())
    }

    fn purge(&mut self, upto: LogId) -> Result<(), StoreError> {
        if self.last_purged >= Some(upto) {
            return Ok(());
        }
        let mut buf = Vec::new();
        frame(&Record::<&Entry>::Purge { upto }, &mut buf)?;
        self.write(&buf)?;
        self.replay(Record::Purge { upto }, 0);
        let live = LOG_MAGIC.len() as u64 + self.live_bytes;
        if self.len >= self.compact_min && self.len > 2 * live {
            self.compact();
        }
        Ok(())
    }

    /// Rewrites the file with only the live entries. The purge marker is
    /// already durable in the old file, so the old and the new file mean
    /// the same: a crash, or a failure here, at any point is harmless.
    fn compact(&mut self) {
        let before = self.len;
        let mut buf = LOG_MAGIC.to_vec();
        let built = (|| {
            if let Some(upto) = self.last_purged {
                frame(&Record::<&Entry>::Purge { upto }, &mut buf)?;
            }
            for stored in self.entries.values() {
                frame(&Record::Entry(&stored.entry), &mut buf)?;
            }
            write_file(&self.path, &buf, self.fsync)
        })();
        if let Err(e) = built {
            warn!("cannot compact the raft log: {e}");
        }
        // Whichever file is in place now (old or new), append to it.
        let reopened = open_append(&self.path).and_then(|file| {
            let len = file
                .metadata()
                .map_err(io_error("inspect", &self.path))?
                .len();
            Ok((file, len))
        });
        match reopened {
            Ok((file, len)) => {
                self.file = file;
                self.len = len;
                debug!(before, after = len, "raft log compacted");
            }
            Err(e) => {
                warn!("cannot reopen the raft log after compacting: {e}");
                self.failed = true;
            }
        }
    }

    fn entries_in<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        self.entries
            .range(range)
            .map(|(_, s)| s.entry.clone())
            .collect()
    }
}

/// The durable Raft log, vote and committed id.
pub struct LogStore {
    log: Arc<Mutex<LogInner>>,
    dir: PathBuf,
    fsync: bool,
    vote: Option<Vote>,
    committed: Option<LogId>,
    commit_index: CommitIndex,
}

/// The committed log index as openraft last saved it, readable by the
/// driver while openraft owns the store (openraft 0.9's metrics carry the
/// applied index only).
#[derive(Clone, Debug, Default)]
pub struct CommitIndex(Arc<std::sync::atomic::AtomicU64>);

impl CommitIndex {
    /// `None` before anything is known to be committed.
    pub fn get(&self) -> Option<u64> {
        // Stored as index + 1, so that 0 means none.
        self.0
            .load(std::sync::atomic::Ordering::Relaxed)
            .checked_sub(1)
    }

    fn set(&self, committed: Option<LogId>) {
        let stored = committed.map_or(0, |id| id.index + 1);
        self.0.store(stored, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads the log for replication while the store appends (a clone shares
/// the same log).
#[derive(Clone)]
pub struct LogReader {
    log: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// A handle on the committed index that outlives handing the store to
    /// openraft.
    pub fn commit_index(&self) -> CommitIndex {
        self.commit_index.clone()
    }

    fn write_vote(&mut self, vote: &Vote) -> Result<(), StoreError> {
        write_small(
            &self.dir.join(VOTE_FILE),
            &Some(*vote),
            "the vote",
            self.fsync,
        )?;
        self.vote = Some(*vote);
        Ok(())
    }

    #[cfg(test)]
    fn set_compact_min(&self, bytes: u64) {
        lock(&self.log).compact_min = bytes;
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.log).entries_in(range))
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.log).entries_in(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = lock(&self.log);
        let last = log.entries.values().next_back().map(|s| s.entry.log_id);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last.or(log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            log: self.log.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_vote(vote)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Write, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if committed == self.committed {
            return Ok(());
        }
        let path = self.dir.join(COMMITTED_FILE);
        write_small(&path, &committed, "the committed log id", self.fsync)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.committed = committed;
        self.commit_index.set(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Written and fsynced before returning (inline: the log is small and
        // the simulator's paused clock wants no blocking threads).
        lock(&self.log)
            .append(entries)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.log)
            .truncate(log_id.index)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.log)
            .purge(log_id)
            .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))
    }
}

// ---------------------------------------------------------------------------
// The state machine

/// What the state machine has applied, published after each batch.
#[derive(Clone, Debug)]
pub struct Applied {
    pub state: Arc<ClusterState>,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

/// A snapshot's data: the state and where in the log it stands. Generic to
/// be written from references and read back owned.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload<S, L, M> {
    state: S,
    last_applied: L,
    membership: M,
}

type OwnedPayload = SnapshotPayload<ClusterState, Option<LogId>, Membership>;

fn decode_snapshot(data: &[u8]) -> Result<OwnedPayload, String> {
    let (format, payload): (u8, OwnedPayload) =
        postcard::from_bytes(data).map_err(|e| e.to_string())?;
    if format != FORMAT {
        return Err(format!("unknown snapshot format version {format}"));
    }
    Ok(payload)
}

struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Peer>,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// The current snapshot, in memory and in the `snapshot` file (kept the
/// same under one lock), shared by the state machine and its builders.
struct SnapshotSlot {
    path: PathBuf,
    fsync: bool,
    current: Mutex<Option<StoredSnapshot>>,
    seq: AtomicU64,
}

impl SnapshotSlot {
    /// Makes `snapshot` current unless `only_if_newer` and the current one
    /// is newer (a build racing an install).
    fn store(&self, snapshot: StoredSnapshot, only_if_newer: bool) -> Result<(), StoreError> {
        let mut current = lock(&self.current);
        if only_if_newer
            && current
                .as_ref()
                .is_some_and(|c| c.meta.last_log_id > snapshot.meta.last_log_id)
        {
            return Ok(());
        }
        let file = (&snapshot.meta, &snapshot.data);
        write_small(&self.path, &file, "a snapshot", self.fsync)?;
        *current = Some(snapshot);
        Ok(())
    }
}

/// The replicated [`ClusterState`] as openraft applies entries to it.
pub struct StateMachineStore {
    state: Arc<ClusterState>,
    last_applied: Option<LogId>,
    membership: Membership,
    snapshots: Arc<SnapshotSlot>,
    applied: watch::Sender<Applied>,
}

impl StateMachineStore {
    /// What is applied now, and after every later batch.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    fn publish(&self) {
        self.applied.send_replace(Applied {
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        });
    }
}

/// Builds a snapshot of the state as it was when openraft asked for the
/// builder (applies go on meanwhile).
pub struct SnapshotBuilder {
    state: Arc<ClusterState>,
    last_applied: Option<LogId>,
    membership: Membership,
    snapshots: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let seq = self.snapshots.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
            None => format!("0-none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let payload = SnapshotPayload {
            state: &*self.state,
            last_applied: &self.last_applied,
            membership: &self.membership,
        };
        let failed = |e: &StoreError| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(e)).into()
        };
        let data = postcard::to_allocvec(&(FORMAT, payload))
            .map_err(|e| StoreError::Encode {
                what: "a snapshot",
                reason: e.to_string(),
            })
            .map_err(|e| failed(&e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let snapshot = stored.to_snapshot();
        self.snapshots.store(stored, true).map_err(|e| failed(&e))?;
        debug!(id = %meta.snapshot_id, "raft snapshot built");
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let state = Arc::make_mut(&mut self.state);
        let mut responses = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            self.last_applied = Some(log_id);
            let response = match entry.payload {
                EntryPayload::Normal(command) => state.apply(&command),
                // A new leader's first entry; it names itself with a
                // `Command::Leader` of its own (a log id has no node).
                EntryPayload::Blank => Response::Done,
                EntryPayload::Membership(membership) => {
                    self.membership = Membership::new(Some(log_id), membership);
                    Response::Done
                }
            };
            responses.push(response);
        }
        if !responses.is_empty() {
            self.publish();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Peer>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let failed = |e: &StoreError| -> StorageError {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(e)).into()
        };
        let data = snapshot.into_inner();
        let payload = decode_snapshot(&data)
            .map_err(|reason| StoreError::BadSnapshot {
                id: meta.snapshot_id.clone(),
                reason,
            })
            .map_err(|e| failed(&e))?;
        // Durable before openraft goes on to purge the log it replaces.
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.snapshots
            .store(stored, false)
            .map_err(|e| failed(&e))?;
        self.state = Arc::new(payload.state);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish();
        info!(id = %meta.snapshot_id, "raft snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(lock(&self.snapshots.current)
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}

#[cfg(test)]
mod tests {
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::CommittedLeaderId;
    use tempfile::TempDir;

    use super::*;
    use crate::raft::{Command, Master};
    use crate::twophase::{ConfigHash, Decision, TxnId, Version};

    fn node(n: u64) -> NodeId {
        NodeId::from(n)
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, NodeId::default()), index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn appoint(term: u64, index: u64, set: &str, expect: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::AppointMaster {
                set: set.into(),
                node: format!("node-{index}"),
                expect,
                reason: "test".into(),
            }),
        }
    }

    fn voters(term: u64, index: u64, ids: &[u64]) -> Entry {
        let ids = ids.iter().map(|n| node(*n)).collect();
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Membership(openraft::Membership::new(vec![ids], None)),
        }
    }

    fn decide(term: u64, index: u64, seq: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::RecordDecision {
                txn: TxnId {
                    coordinator: node(1),
                    seq,
                },
                decision: Decision::Commit,
                installs: Some((Version(seq), ConfigHash([seq as u8; 32]))),
            }),
        }
    }

    async fn entries(log: &mut LogStore) -> Vec<Entry> {
        log.try_get_log_entries(..).await.unwrap()
    }

    fn open_err(dir: &Path) -> StoreError {
        match open(dir, true) {
            Ok(_) => panic!("{} opened", dir.display()),
            Err(e) => e,
        }
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir()
                .map_err(|e| StorageError::from(StorageIOError::write(AnyError::new(&e))))?;
            let (log, sm) = open(dir.path(), true)
                .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() {
        Suite::<TypeConfig, LogStore, StateMachineStore, Builder, TempDir>::test_all(Builder)
            .unwrap();
    }

    #[tokio::test]
    async fn vote_committed_entries_purge_and_truncate_survive_reopen() {
        // Without fsync (the simulator) too: only durability differs.
        for fsync in [true, false] {
            reopen_keeps_everything(fsync).await;
        }
    }

    async fn reopen_keeps_everything(fsync: bool) {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, _) = open(dir.path(), fsync).unwrap();
            log.save_vote(&Vote::new_committed(3, node(1)))
                .await
                .unwrap();
            log.save_committed(Some(log_id(3, 4))).await.unwrap();
            log.blocking_append((1..=8).map(|i| appoint(3, i, "s1", i - 1)))
                .await
                .unwrap();
            log.truncate(log_id(3, 7)).await.unwrap();
            log.purge(log_id(3, 2)).await.unwrap();
            log.blocking_append([blank(4, 7)]).await.unwrap();
        }
        let (mut log, _) = open(dir.path(), fsync).unwrap();
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, node(1)))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 4)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 2)));
        assert_eq!(state.last_log_id, Some(log_id(4, 7)));
        let want: Vec<Entry> = (3..=6)
            .map(|i| appoint(3, i, "s1", i - 1))
            .chain([blank(4, 7)])
            .collect();
        assert_eq!(entries(&mut log).await, want);
        let mut reader = log.get_log_reader().await;
        log.blocking_append([blank(4, 8)]).await.unwrap();
        assert_eq!(
            reader.try_get_log_entries(6..).await.unwrap(),
            [want[3].clone(), want[4].clone(), blank(4, 8)],
            "a reader sees what the store appends later"
        );
        assert_eq!(file_names(dir.path()), ["committed", "log", "vote"]);
    }

    #[tokio::test]
    async fn a_mostly_purged_log_is_rewritten_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let (mut log, _) = open(dir.path(), true).unwrap();
            log.set_compact_min(0);
            log.blocking_append((1..=20).map(|i| appoint(1, i, "s1", i - 1)))
                .await
                .unwrap();
            let before = fs::metadata(&path).unwrap().len();
            log.purge(log_id(1, 15)).await.unwrap();
            let after = fs::metadata(&path).unwrap().len();
            assert!(after < before / 2, "{before} bytes before, {after} after");
            log.blocking_append([blank(2, 21)]).await.unwrap();
        }
        let (mut log, _) = open(dir.path(), true).unwrap();
        let want: Vec<Entry> = (16..=20)
            .map(|i| appoint(1, i, "s1", i - 1))
            .chain([blank(2, 21)])
            .collect();
        assert_eq!(entries(&mut log).await, want);
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(1, 15))
        );
        // Purged beyond the last entry (a snapshot installed from ahead).
        log.set_compact_min(0);
        log.purge(log_id(3, 30)).await.unwrap();
        drop(log);
        let (mut log, _) = open(dir.path(), true).unwrap();
        assert_eq!(entries(&mut log).await, []);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(3, 30)));
        assert_eq!(state.last_log_id, Some(log_id(3, 30)));
        assert_eq!(file_names(dir.path()), ["log"]);
    }

    /// One step of [`scripted_log`]: the file's length after it and what the
    /// log holds then.
    struct Step {
        len: u64,
        entries: Vec<Entry>,
        purged: Option<LogId>,
    }

    /// A log written one record at a time (entries, a truncate, a purge),
    /// with what it holds after each record.
    async fn scripted_log(dir: &Path) -> Vec<Step> {
        let (mut log, _) = open(dir, true).unwrap();
        let path = dir.join(LOG_FILE);
        let mut steps = vec![Step {
            len: LOG_MAGIC.len() as u64,
            entries: Vec::new(),
            purged: None,
        }];
        let mut step = |entries: &[Entry], purged: Option<LogId>| {
            steps.push(Step {
                len: fs::metadata(&path).unwrap().len(),
                entries: entries.to_vec(),
                purged,
            })
        };
        let mut want = Vec::new();
        for i in 1..=6 {
            let entry = if i % 3 == 0 {
                decide(1, i, i)
            } else {
                appoint(1, i, "s1", i - 1)
            };
            log.blocking_append([entry.clone()]).await.unwrap();
            want.push(entry);
            step(&want, None);
        }
        log.truncate(log_id(1, 5)).await.unwrap();
        want.truncate(4);
        step(&want, None);
        log.blocking_append([blank(2, 5)]).await.unwrap();
        want.push(blank(2, 5));
        step(&want, None);
        log.purge(log_id(1, 2)).await.unwrap();
        want.drain(..2);
        step(&want, Some(log_id(1, 2)));
        log.blocking_append([voters(2, 6, &[1, 2])]).await.unwrap();
        want.push(voters(2, 6, &[1, 2]));
        step(&want, Some(log_id(1, 2)));
        steps
    }

    #[tokio::test]
    async fn a_log_cut_at_any_byte_opens_with_its_complete_records() {
        let source = tempfile::tempdir().unwrap();
        let steps = scripted_log(source.path()).await;
        let bytes = fs::read(source.path().join(LOG_FILE)).unwrap();
        assert_eq!(steps.last().unwrap().len, bytes.len() as u64);
        for len in 0..=bytes.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(LOG_FILE);
            fs::write(&path, &bytes[..len]).unwrap();
            let (mut log, _) =
                open(dir.path(), true).unwrap_or_else(|e| panic!("cut at {len}: {e}"));
            let step = steps
                .iter()
                .rev()
                .find(|s| s.len <= len as u64)
                .unwrap_or(&steps[0]);
            assert_eq!(entries(&mut log).await, step.entries, "cut at {len}");
            let state = log.get_log_state().await.unwrap();
            assert_eq!(state.last_purged_log_id, step.purged, "cut at {len}");
            assert_eq!(fs::metadata(&path).unwrap().len(), step.len, "cut at {len}");

            let next = state.last_log_id.map_or(1, |l| l.index + 1);
            log.blocking_append([appoint(9, next, "s9", 0)])
                .await
                .unwrap();
            drop(log);
            let (mut log, _) = open(dir.path(), true).unwrap();
            let mut want = step.entries.clone();
            want.push(appoint(9, next, "s9", 0));
            assert_eq!(entries(&mut log).await, want, "cut at {len}, appended");
        }
    }

    #[tokio::test]
    async fn damage_in_the_last_record_cuts_it_in_the_middle_refuses() {
        let source = tempfile::tempdir().unwrap();
        let steps = scripted_log(source.path()).await;
        let bytes = fs::read(source.path().join(LOG_FILE)).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 0x40;
        fs::write(&path, &damaged).unwrap();
        let (mut log, _) = open(dir.path(), true).unwrap();
        let before_last = &steps[steps.len() - 2];
        assert_eq!(entries(&mut log).await, before_last.entries);
        assert_eq!(fs::metadata(&path).unwrap().len(), before_last.len);
        drop(log);

        // The third record: a flipped payload byte, then a flipped length.
        let start = steps[2].len as usize;
        for at in [start + FRAME_HEADER + 1, start + 3] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(LOG_FILE);
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            fs::write(&path, &damaged).unwrap();
            let e = open_err(dir.path());
            assert!(
                matches!(&e, StoreError::Corrupt { path: p, offset, .. } if *p == path && *offset == start as u64),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(&format!("byte {start}")), "{text}");
            assert_eq!(
                fs::read(&path).unwrap(),
                damaged,
                "a damaged log is left as it is"
            );
        }

        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(LOG_FILE), b"not a log at all").unwrap();
        assert!(matches!(open_err(dir.path()), StoreError::NotALog { .. }));
    }

    #[tokio::test]
    async fn snapshots_survive_reopen_and_install_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, mut sm) = open(dir.path(), true).unwrap();
        let mut applied = sm.subscribe();
        log.save_vote(&Vote::new_committed(2, node(7)))
            .await
            .unwrap();
        let responses = sm
            .apply([
                voters(1, 1, &[7]),
                blank(2, 2),
                appoint(2, 3, "s1", 0),
                decide(2, 4, 1),
            ])
            .await
            .unwrap();
        assert_eq!(
            responses,
            [
                Response::Done,
                Response::Done,
                Response::Appointed(Master {
                    node: "node-3".into(),
                    generation: 1,
                    reason: "test".into()
                }),
                Response::Decided(Decision::Commit),
            ]
        );
        assert!(applied.has_changed().unwrap());
        let now = applied.borrow_and_update().clone();
        assert_eq!(now.last_applied, Some(log_id(2, 4)));
        assert_eq!(now.state.master("s1").map(|m| m.generation), Some(1));
        assert_eq!(now.membership.log_id(), &Some(log_id(1, 1)));

        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(2, 4)));
        assert_eq!(built.meta.last_membership, now.membership);
        // Applied after the snapshot: after a restart openraft re-applies it
        // from the log.
        sm.apply([appoint(2, 5, "s2", 0)]).await.unwrap();
        assert!(applied.borrow().state.master("s2").is_some());
        log.save_vote(&Vote::new(4, node(9))).await.unwrap();
        drop((log, sm));

        let (_log, mut sm) = open(dir.path(), true).unwrap();
        assert_eq!(
            sm.applied_state().await.unwrap(),
            (Some(log_id(2, 4)), now.membership.clone())
        );
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        assert_eq!(*sm.subscribe().borrow().state, *now.state);
        let again = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_ne!(again.meta.snapshot_id, built.meta.snapshot_id);
        sm.apply([appoint(2, 5, "s2", 0), blank(3, 6)])
            .await
            .unwrap();
        assert!(sm.subscribe().borrow().state.master("s2").is_some());

        let other = tempfile::tempdir().unwrap();
        {
            let (_log, mut sm) = open(other.path(), true).unwrap();
            let mut data = sm.begin_receiving_snapshot().await.unwrap();
            *data = *current.snapshot;
            sm.install_snapshot(&current.meta, data).await.unwrap();
            assert_eq!(*sm.subscribe().borrow().state, *now.state);
            assert_eq!(
                sm.applied_state().await.unwrap(),
                (Some(log_id(2, 4)), now.membership.clone())
            );
        }
        let (_log, mut sm) = open(other.path(), true).unwrap();
        assert_eq!(*sm.subscribe().borrow().state, *now.state);
        let installed = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(installed.meta, current.meta);
    }
}
