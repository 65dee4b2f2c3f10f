//! Watches the topology file and reports each new content: what triggers an
//! apply with this node as coordinator. The file's directory is watched, not
//! its inode, so editors that write a temp file and rename, `sed -i` and
//! Ansible's atomic moves are all seen; bursts are debounced, the whole file
//! is read once things are quiet, and a content already reported is not
//! reported again.
//!
//! [`TopologyWatcher::spawn`] runs one task on the current tokio runtime.
//! notify's thread only sorts events and wakes the task through a small
//! channel; the task debounces, reads, hashes and sends a [`FileChange`].
//! The first message is the state at spawn (so a file edited while the agent
//! was down is applied at start). The caller compares `hash` with the
//! committed one. Dropping the [`TopologyWatcher`] (or the receiver) stops
//! the task and notify's thread.
//!
//! When the directory is absent the file is reported `Missing` and the
//! directory is looked for every `poll_interval`; when it comes back (or is
//! replaced by another one) it is watched again. When notify's backend
//! cannot be had (inotify limits) or fails, the failure is logged and the
//! file is read every `poll_interval` instead. Even with a working backend
//! the file is read every `rescan_interval`, which catches what inotify
//! cannot see (a symlink into another directory, a network file system).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{self, ConfigError};
use crate::twophase::ConfigHash;

/// The hash every node compares: SHA-256 of the file's bytes, exactly as
/// the operator wrote them (comments and whitespace count).
pub fn config_hash(bytes: &[u8]) -> ConfigHash {
    ConfigHash(Sha256::digest(bytes).into())
}

/// What the watcher saw after a change settled. Only a state different
/// from the last one sent is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// The whole file, read after a quiet period.
    Content {
        text: String,
        hash: ConfigHash,
        read_at: SystemTime,
    },
    /// No file at the path (or no directory to hold it).
    Missing,
    /// The file is there but cannot be had: a permission, an I/O error, or
    /// bytes that are not UTF-8 (then `reason` is `FILE:LINE:COLUMN: ...`).
    Unreadable { reason: String },
}

/// How the watcher learns of changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// notify's recommended backend (inotify on Linux); polling if it fails.
    Notify,
    /// Read the file every `poll_interval`, with no backend at all.
    Poll,
}

/// Tuning; [`WatchOptions::debounced`] gives the usual values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// The file is read once no event came for this long.
    pub quiet: Duration,
    /// ...or this long after the first event of a burst, so that a file
    /// rewritten without pause is still read.
    pub max_delay: Duration,
    /// Reading period when polling, and how often an absent directory is
    /// looked for.
    pub poll_interval: Duration,
    /// A read with no event, as a safety net, while the backend works.
    pub rescan_interval: Duration,
    pub backend: Backend,
}

impl WatchOptions {
    /// `quiet` of quiet, at most 10 × `quiet` after a burst began, polling
    /// every 2 s when needed, a safety read every 30 s.
    pub fn debounced(quiet: Duration) -> Self {
        WatchOptions {
            quiet,
            max_delay: quiet.saturating_mul(10),
            poll_interval: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(30),
            backend: Backend::Notify,
        }
    }
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions::debounced(Duration::from_millis(300))
    }
}

/// What the watcher has done so far, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchStats {
    /// Reads of the file completed; any change a read found was sent
    /// before the count went up.
    pub reads: u64,
    /// Reading every `poll_interval` rather than being told of changes.
    pub polling: bool,
}

/// The running watcher; dropping it stops it.
#[derive(Debug)]
pub struct TopologyWatcher {
    path: PathBuf,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TopologyWatcher {
    /// Watches `path`, reading it after `debounce` of quiet. Must be called
    /// within a tokio runtime.
    pub fn spawn(
        path: PathBuf,
        debounce: Duration,
    ) -> (TopologyWatcher, mpsc::Receiver<FileChange>) {
        Self::spawn_with(path, WatchOptions::debounced(debounce))
    }

    pub fn spawn_with(
        path: PathBuf,
        options: WatchOptions,
    ) -> (TopologyWatcher, mpsc::Receiver<FileChange>) {
        let (watcher, changes, _raw) = Self::start(path, options);
        (watcher, changes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> WatchStats {
        WatchStats {
            reads: self.shared.reads.load(Ordering::Acquire),
            polling: self.shared.polling.load(Ordering::Acquire),
        }
    }

    fn start(
        path: PathBuf,
        options: WatchOptions,
    ) -> (
        TopologyWatcher,
        mpsc::Receiver<FileChange>,
        mpsc::Sender<Raw>,
    ) {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().unwrap_or(path.as_os_str()).to_os_string();
        let shared = Arc::new(Shared {
            reads: AtomicU64::new(0),
            polling: AtomicBool::new(options.backend == Backend::Poll),
            follow_all: AtomicBool::new(false),
        });
        // One pending wake-up is enough (every read reads the whole file),
        // so a full channel just drops the event.
        let (raw_tx, raw_rx) = mpsc::channel(16);
        let (out, changes) = mpsc::channel(16);
        let task = Task {
            path: path.clone(),
            dir,
            name,
            options,
            watcher: None,
            watched: None,
            dir_absent: false,
            debounce: Debouncer::new(options.quiet, options.max_delay),
            next_scan: Instant::now(),
            last: None,
            raw_tx: raw_tx.clone(),
            raw_rx,
            out,
            shared: shared.clone(),
        };
        let task = tokio::spawn(task.run());
        (TopologyWatcher { path, shared, task }, changes, raw_tx)
    }
}

impl Drop for TopologyWatcher {
    fn drop(&mut self) {
        // The task owns notify's watcher: aborting it drops the watcher,
        // which ends notify's thread.
        self.task.abort();
    }
}

#[derive(Debug)]
struct Shared {
    reads: AtomicU64,
    polling: AtomicBool,
    /// The path is a symlink: any event in the directory may change what
    /// it points at (Kubernetes swaps a `..data` link), so all count.
    follow_all: AtomicBool,
}

/// From notify's thread to the task.
#[derive(Debug)]
enum Raw {
    Touched,
    Failed(String),
}

/// Identity of the watched directory: a directory replaced by another one
/// of the same name needs a new watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirId {
    dev: u64,
    ino: u64,
}

/// What a read found, as far as "did it change" goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Content(ConfigHash),
    Missing,
    Unreadable(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    /// After a quiet period, or the first read: a change is sent.
    Settled,
    /// A periodic read: a change starts a debounce instead, so a file
    /// caught half-written is read again once it is quiet.
    Probe,
}

/// A burst of events → one deadline: `quiet` after the last event, but no
/// later than `max_delay` after the first.
#[derive(Debug)]
struct Debouncer {
    quiet: Duration,
    max_delay: Duration,
    burst: Option<(Instant, Instant)>,
}

impl Debouncer {
    fn new(quiet: Duration, max_delay: Duration) -> Self {
        Debouncer {
            quiet,
            max_delay,
            burst: None,
        }
    }

    fn touch(&mut self, now: Instant) {
        let first = self.burst.map_or(now, |(first, _)| first);
        self.burst = Some((first, now));
    }

    fn deadline(&self) -> Option<Instant> {
        self.burst
            .map(|(first, last)| (last + self.quiet).min(first + self.max_delay))
    }

    fn clear(&mut self) {
        self.burst = None;
    }
}

struct Task {
    path: PathBuf,
    dir: PathBuf,
    name: OsString,
    options: WatchOptions,
    watcher: Option<RecommendedWatcher>,
    /// The directory the backend watches now.
    watched: Option<DirId>,
    dir_absent: bool,
    debounce: Debouncer,
    next_scan: Instant,
    /// The last state sent.
    last: Option<Seen>,
    raw_tx: mpsc::Sender<Raw>,
    raw_rx: mpsc::Receiver<Raw>,
    out: mpsc::Sender<FileChange>,
    shared: Arc<Shared>,
}

impl Task {
    async fn run(mut self) {
        if !self.scan(Scan::Settled).await {
            return;
        }
        loop {
            let now = Instant::now();
            let wake = match self.debounce.deadline() {
                Some(deadline) if deadline <= now => {
                    self.debounce.clear();
                    if !self.scan(Scan::Settled).await {
                        return;
                    }
                    continue;
                }
                Some(deadline) => deadline,
                // A periodic read waits while a burst settles.
                None if self.next_scan <= now => {
                    if !self.scan(Scan::Probe).await {
                        return;
                    }
                    continue;
                }
                None => self.next_scan,
            };
            tokio::select! {
                _ = self.out.closed() => return,
                raw = self.raw_rx.recv() => match raw {
                    Some(Raw::Touched) => self.debounce.touch(Instant::now()),
                    Some(Raw::Failed(reason)) => self.fall_back(&reason),
                    // The task holds a sender itself.
                    None => return,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn polling(&self) -> bool {
        self.shared.polling.load(Ordering::Acquire)
    }

    /// Makes sure the directory is watched, reads the file, and sends what
    /// changed. False when nobody listens any more.
    async fn scan(&mut self, scan: Scan) -> bool {
        self.ensure_watch().await;
        let path = self.path.clone();
        let (reading, is_symlink) = match tokio::task::spawn_blocking(move || read(&path)).await {
            Ok(result) => result,
            Err(e) => (
                Reading::Unreadable(format!("cannot read {}: {e}", self.path.display())),
                false,
            ),
        };
        self.shared.follow_all.store(is_symlink, Ordering::Release);
        let seen = reading.seen();
        if self.last.as_ref() != Some(&seen) {
            if scan == Scan::Probe {
                debug!(path = %self.path.display(), "topology file changed; reading it again once quiet");
                self.debounce.touch(Instant::now());
            } else {
                self.last = Some(seen);
                let change = reading.into_change();
                match &change {
                    FileChange::Content { hash, .. } => {
                        info!(path = %self.path.display(), %hash, "topology file read")
                    }
                    FileChange::Missing => {
                        info!(path = %self.path.display(), "topology file is missing")
                    }
                    FileChange::Unreadable { reason } => {
                        warn!(path = %self.path.display(), "topology file unreadable: {reason}")
                    }
                }
                if self.out.send(change).await.is_err() {
                    return false;
                }
            }
        }
        self.shared.reads.fetch_add(1, Ordering::AcqRel);
        let period = if self.polling() || self.watched.is_none() {
            self.options.poll_interval
        } else {
            self.options.rescan_interval
        };
        self.next_scan = Instant::now() + period;
        true
    }

    /// Watches the directory if it exists and is not watched yet, or was
    /// replaced by another one since.
    async fn ensure_watch(&mut self) {
        if self.polling() {
            return;
        }
        let dir = self.dir.clone();
        let id = tokio::task::spawn_blocking(move || dir_id(&dir))
            .await
            .unwrap_or(None);
        if id.is_some() && id == self.watched {
            return;
        }
        if self.watched.take().is_some() {
            if let Some(watcher) = self.watcher.as_mut() {
                // Already gone when the directory was deleted.
                let _ = watcher.unwatch(&self.dir);
            }
        }
        let Some(id) = id else {
            if !self.dir_absent {
                self.dir_absent = true;
                info!(
                    dir = %self.dir.display(),
                    "the topology file's directory does not exist; looking for it every {:?}",
                    self.options.poll_interval
                );
            }
            return;
        };
        if self.watcher.is_none() {
            let handler = handler(
                self.name.clone(),
                self.dir.clone(),
                self.shared.clone(),
                self.raw_tx.clone(),
            );
            match RecommendedWatcher::new(handler, notify::Config::default()) {
                Ok(watcher) => self.watcher = Some(watcher),
                Err(e) => {
                    self.fall_back(&e.to_string());
                    return;
                }
            }
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        match watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched = Some(id);
                if self.dir_absent {
                    self.dir_absent = false;
                    info!(dir = %self.dir.display(), "watching the topology file's directory again");
                }
            }
            // Gone between the stat and the watch: looked for again later.
            Err(e) if is_not_found(&e) => {}
            Err(e) => self.fall_back(&e.to_string()),
        }
    }

    /// The backend is unusable: poll from now on (until restart).
    fn fall_back(&mut self, reason: &str) {
        if self.polling() {
            return;
        }
        warn!(
            dir = %self.dir.display(),
            "cannot watch the topology file for changes ({reason}); reading it every {:?} instead",
            self.options.poll_interval
        );
        self.shared.polling.store(true, Ordering::Release);
        self.watcher = None;
        self.watched = None;
        // Whatever the backend missed is read once things are quiet.
        self.debounce.touch(Instant::now());
    }
}

fn is_not_found(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

fn dir_id(dir: &Path) -> Option<DirId> {
    let meta = std::fs::metadata(dir).ok()?;
    meta.is_dir().then(|| DirId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Runs on notify's thread: keeps only what may change the file.
fn handler(
    name: OsString,
    dir: PathBuf,
    shared: Arc<Shared>,
    raw: mpsc::Sender<Raw>,
) -> impl FnMut(notify::Result<Event>) + Send + 'static {
    move |event| {
        let message = match event {
            Ok(event) => {
                let follow_all = shared.follow_all.load(Ordering::Acquire);
                if !relevant(&event, &name, &dir, follow_all) {
                    return;
                }
                Raw::Touched
            }
            Err(e) => Raw::Failed(e.to_string()),
        };
        let _ = raw.try_send(message);
    }
}

fn relevant(event: &Event, name: &OsStr, dir: &Path, follow_all: bool) -> bool {
    // Opening and reading change nothing, and our own reads would wake us
    // up forever; a close after writing ends a write.
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return false;
        }
    }
    event.need_rescan()
        || follow_all
        || event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name) || p == dir)
}

enum Reading {
    Content(String),
    Missing,
    Unreadable(String),
}

impl Reading {
    fn seen(&self) -> Seen {
        match self {
            Reading::Content(text) => Seen::Content(config_hash(text.as_bytes())),
            Reading::Missing => Seen::Missing,
            Reading::Unreadable(reason) => Seen::Unreadable(reason.clone()),
        }
    }

    fn into_change(self) -> FileChange {
        match self {
            Reading::Content(text) => FileChange::Content {
                hash: config_hash(text.as_bytes()),
                text,
                read_at: SystemTime::now(),
            },
            Reading::Missing => FileChange::Missing,
            Reading::Unreadable(reason) => FileChange::Unreadable { reason },
        }
    }
}

/// The whole file, with the validator's own messages (a UTF-8 error is a
/// `FILE:LINE:COLUMN:` line); and whether the path is a symlink.
fn read(path: &Path) -> (Reading, bool) {
    let is_symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let reading = match config::read_file(path) {
        Ok(text) => Reading::Content(text),
        Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Reading::Missing
        }
        Err(e) => Reading::Unreadable(e.to_string()),
    };
    (reading, is_symlink)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hash_is_sha256() {
        // FIPS 180-4 examples.
        assert_eq!(
            config_hash(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            config_hash(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            config_hash(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").to_hex(),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn a_burst_settles_after_quiet_or_max_delay() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut d = Debouncer::new(ms(300), ms(1000));
        assert_eq!(d.deadline(), None, "no event, no read");

        d.touch(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(300)));
        d.touch(t0 + ms(100));
        assert_eq!(d.deadline(), Some(t0 + ms(400)), "each event pushes it");

        // A writer that never pauses for 300 ms is read 1 s after it began.
        for step in 2..20 {
            d.touch(t0 + ms(step * 100));
        }
        assert_eq!(d.deadline(), Some(t0 + ms(1000)));

        d.clear();
        assert_eq!(d.deadline(), None);
        d.touch(t0 + ms(2000));
        assert_eq!(
            d.deadline(),
            Some(t0 + ms(2300)),
            "a new burst starts its own max delay"
        );
    }

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_events_that_may_change_the_file_count() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let name = OsStr::new("topology.yaml");
        let dir = Path::new("/etc/cohort");
        let ours = "/etc/cohort/topology.yaml";

        assert!(relevant(
            &event(EventKind::Modify(ModifyKind::Name(RenameMode::To)), ours),
            name,
            dir,
            false
        ));
        assert!(relevant(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                ours
            ),
            name,
            dir,
            false
        ));
        assert!(
            !relevant(
                &event(EventKind::Access(AccessKind::Open(AccessMode::Any)), ours),
                name,
                dir,
                false
            ),
            "our own reads must not wake us"
        );
        assert!(!relevant(
            &event(
                EventKind::Create(CreateKind::File),
                "/etc/cohort/cohort.yaml"
            ),
            name,
            dir,
            false
        ));
        assert!(
            relevant(
                &event(EventKind::Create(CreateKind::File), "/etc/cohort/..data"),
                name,
                dir,
                true
            ),
            "a symlinked file may change with any entry"
        );
        assert!(
            relevant(
                &event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    "/etc/cohort"
                ),
                name,
                dir,
                false
            ),
            "the directory itself moved"
        );
        assert!(relevant(
            &Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan),
            name,
            dir,
            false
        ));
    }

    async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn next(rx: &mut mpsc::Receiver<FileChange>) -> FileChange {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a change within 10 s")
            .expect("the watcher is running")
    }

    fn text(change: FileChange) -> String {
        match change {
            FileChange::Content { text, .. } => text,
            other => panic!("expected content, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failing_backend_falls_back_to_polling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.yaml");
        std::fs::write(&path, "one\n").unwrap();
        let mut options = WatchOptions::debounced(Duration::from_millis(50));
        options.poll_interval = Duration::from_millis(50);
        let (watcher, mut rx, raw) = TopologyWatcher::start(path.clone(), options);
        assert_eq!(text(next(&mut rx).await), "one\n");
        assert!(!watcher.stats().polling, "inotify works here");

        raw.send(Raw::Failed("inotify read failed".into()))
            .await
            .unwrap();
        until("the fall-back", || watcher.stats().polling.then_some(())).await;
        // Polling reads with no event at all.
        let reads = watcher.stats().reads;
        until("reads by polling", || {
            (watcher.stats().reads >= reads + 3).then_some(())
        })
        .await;

        std::fs::write(&path, "two\n").unwrap();
        assert_eq!(text(next(&mut rx).await), "two\n");
    }

    #[tokio::test]
    async fn dropping_the_receiver_ends_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.yaml");
        let (watcher, rx) = TopologyWatcher::spawn(path, Duration::from_millis(50));
        drop(rx);
        until("the task's end", || {
            watcher.task.is_finished().then_some(())
        })
        .await;
    }
}
