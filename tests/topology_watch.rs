//! The topology file watcher against real files in a temp dir: every way
//! operators and their tools rewrite a file is seen exactly once, equal
//! contents are not reported again, bursts are debounced, and a missing
//! file or directory is survived.
//!
//! The watcher runs on its own worker thread, as in the agent. No test
//! sleeps to synchronise. "Exactly one change" is checked by
//! writing a sentinel after the change and requiring that the very next
//! message is the sentinel; "no change" by waiting until the watcher has
//! read the file again (its read counter) and checking the channel is
//! empty, then requiring that the next message is a later real change.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use cohort::agent::topology_watch::{
    config_hash, Backend, FileChange, TopologyWatcher, WatchOptions,
};
use tokio::sync::mpsc::{self, error::TryRecvError};

const DEADLINE: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    path: PathBuf,
    watcher: TopologyWatcher,
    rx: mpsc::Receiver<FileChange>,
}

/// A watcher on `DIR/topology.yaml`, holding `initial` if given, with the
/// default 300 ms of quiet.
async fn start(initial: Option<&str>) -> Fixture {
    start_with(initial, WatchOptions::default()).await
}

async fn start_with(initial: Option<&str>, options: WatchOptions) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let path = dir.join("topology.yaml");
    if let Some(text) = initial {
        fs::write(&path, text).unwrap();
    }
    let (watcher, rx) = TopologyWatcher::spawn_with(path.clone(), options);
    let mut fixture = Fixture {
        _dir: tmp,
        dir,
        path,
        watcher,
        rx,
    };
    // The first message is the state at spawn.
    let first = fixture.next().await;
    match initial {
        Some(text) => assert_eq!(content(first), text),
        None => assert_eq!(first, FileChange::Missing),
    }
    fixture.settled(1).await;
    fixture
}

impl Fixture {
    async fn next(&mut self) -> FileChange {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no change within {DEADLINE:?}"))
            .expect("the watcher stopped")
    }

    /// Waits until the watcher has completed `reads` reads; every change
    /// they found is in the channel by then.
    async fn settled(&self, reads: u64) {
        let deadline = Instant::now() + DEADLINE;
        while self.watcher.stats().reads < reads {
            assert!(
                Instant::now() < deadline,
                "the watcher did not read the file {reads} times within {DEADLINE:?}: {:?}",
                self.watcher.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next message is `expected`, and nothing else comes before a
    /// later write (the sentinel) is reported.
    async fn exactly_one(&mut self, expected: &str) {
        assert_eq!(content(self.next().await), expected);
        let sentinel = format!("sentinel after {expected:?}\n");
        fs::write(&self.path, &sentinel).unwrap();
        assert_eq!(
            content(self.next().await),
            sentinel,
            "a second change came before the sentinel"
        );
    }
}

fn content(change: FileChange) -> String {
    match change {
        FileChange::Content {
            text,
            hash,
            read_at,
        } => {
            assert_eq!(hash, config_hash(text.as_bytes()));
            assert!(read_at <= SystemTime::now());
            text
        }
        other => panic!("expected the file's content, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_is_seen_once() {
    let mut f = start(Some("one\n")).await;
    assert!(!f.watcher.stats().polling, "inotify must work here");
    fs::write(&f.path, "two\n").unwrap();
    f.exactly_one("two\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_file_and_rename_is_seen_once() {
    let mut f = start(Some("one\n")).await;
    let tmp = f.dir.join(".topology.yaml.tmp");
    let mut file = fs::File::create(&tmp).unwrap();
    file.write_all(b"two\n").unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::rename(&tmp, &f.path).unwrap();
    f.exactly_one("two\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_create_is_seen_once() {
    let mut f = start(Some("one\n")).await;
    fs::remove_file(&f.path).unwrap();
    fs::write(&f.path, "two\n").unwrap();
    f.exactly_one("two\n").await;
}

/// vim (`backupcopy=no`, `writebackup`): probes the directory with a file
/// named 4913, renames the original to `topology.yaml~`, writes a new
/// file, and deletes the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vim_backup_and_write_is_seen_once() {
    let mut f = start(Some("one\n")).await;
    let probe = f.dir.join("4913");
    fs::write(&probe, "").unwrap();
    fs::remove_file(&probe).unwrap();
    let backup = f.dir.join("topology.yaml~");
    fs::rename(&f.path, &backup).unwrap();
    let mut file = fs::File::create(&f.path).unwrap();
    file.write_all(b"two\n").unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::remove_file(&backup).unwrap();
    f.exactly_one("two\n").await;
}

/// GNU `sed -i` writes `sedXXXXXX` in the same directory and renames it
/// over the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_in_place_is_seen_once() {
    let mut f = start(Some("port: 8080\n")).await;
    let status = Command::new("sed")
        .arg("-i")
        .arg("s/8080/8081/")
        .arg(&f.path)
        .status()
        .expect("sed runs");
    assert!(status.success());
    f.exactly_one("port: 8081\n").await;
}

/// Ansible's `copy`/`template` (`atomic_move`): `mkstemp(prefix=".ansible_tmp",
/// dir=dest_dir, suffix=dest_name)`, content, mode, then `rename` over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_atomic_move_is_seen_once() {
    let mut f = start(Some("one\n")).await;
    // Ansible closes mkstemp's descriptor first: no write is open on the
    // file once it has its final name, so only the rename tells.
    let tmp = tempfile::Builder::new()
        .prefix(".ansible_tmp")
        .suffix("topology.yaml")
        .tempfile_in(&f.dir)
        .unwrap()
        .into_temp_path();
    fs::write(&tmp, "two\n").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    tmp.persist(&f.path).unwrap();
    f.exactly_one("two\n").await;
}

/// The file is a symlink through `..data`, swapped atomically
/// (a Kubernetes ConfigMap volume): no event names the file itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swap_is_seen_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::create_dir(dir.join("..v1")).unwrap();
    fs::write(dir.join("..v1/topology.yaml"), "one\n").unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/topology.yaml", dir.join("topology.yaml")).unwrap();
    let path = dir.join("topology.yaml");
    let (watcher, rx) = TopologyWatcher::spawn(path.clone(), QUIET);
    let mut f = Fixture {
        dir: dir.to_path_buf(),
        path,
        watcher,
        rx,
        _dir: tmp,
    };
    assert_eq!(content(f.next().await), "one\n");
    f.settled(1).await;

    fs::create_dir(f.dir.join("..v2")).unwrap();
    fs::write(f.dir.join("..v2/topology.yaml"), "two\n").unwrap();
    std::os::unix::fs::symlink("..v2", f.dir.join("..data_tmp")).unwrap();
    fs::rename(f.dir.join("..data_tmp"), f.dir.join("..data")).unwrap();
    fs::remove_dir_all(f.dir.join("..v1")).unwrap();
    assert_eq!(content(f.next().await), "two\n");
    // The sentinel replaces the link with a plain file (a write through
    // the link would land in `..v2/`, a directory not watched).
    fs::remove_file(&f.path).unwrap();
    fs::write(&f.path, "sentinel\n").unwrap();
    assert_eq!(content(f.next().await), "sentinel\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_rewrites_and_touches_report_nothing() {
    let mut f = start(Some("same\n")).await;
    let reads = f.watcher.stats().reads;

    // Every way of producing the same bytes again.
    fs::write(&f.path, "same\n").unwrap();
    let tmp = f.dir.join("topology.yaml.new");
    fs::write(&tmp, "same\n").unwrap();
    fs::rename(&tmp, &f.path).unwrap();
    fs::File::options()
        .write(true)
        .open(&f.path)
        .unwrap()
        .set_modified(SystemTime::now())
        .unwrap();
    fs::set_permissions(&f.path, fs::Permissions::from_mode(0o600)).unwrap();

    // The watcher read the file after all that...
    f.settled(reads + 1).await;
    // ...and reported nothing.
    assert_eq!(f.rx.try_recv(), Err(TryRecvError::Empty));
    // And the next thing it reports is a real change.
    fs::write(&f.path, "different\n").unwrap();
    assert_eq!(content(f.next().await), "different\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_is_read_once_with_the_last_content() {
    let mut f = start(Some("v-start\n")).await;
    let options = WatchOptions::default();

    // 20 writes 5 ms apart (the pace is the input, not a wait for the
    // watcher), while the watcher runs on the other worker: a watcher that
    // read at the first event would see the middle of the burst.
    let began = Instant::now();
    for i in 0..20 {
        fs::write(&f.path, format!("v{i}\n")).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let burst = began.elapsed();

    // A read needs `quiet` without events or `max_delay` since the burst
    // began, so a burst lasting `burst` gives at most this many reads;
    // written back to back (a few ms) that is exactly one.
    let bound = 1
        + (burst.as_nanos() / options.quiet.as_nanos()) as usize
        + (burst.as_nanos() / options.max_delay.as_nanos()) as usize;
    let mut seen = Vec::new();
    loop {
        let text = content(f.next().await);
        let i: usize = text
            .strip_prefix('v')
            .and_then(|t| t.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("a torn or foreign read: {text:?}"));
        assert!(
            seen.last().is_none_or(|&last| i > last),
            "{seen:?} then {i}"
        );
        seen.push(i);
        if i == 19 {
            break;
        }
    }
    assert!(
        seen.len() <= bound,
        "{} reports {seen:?} for a burst of {burst:?} (at most {bound})",
        seen.len()
    );
    fs::write(&f.path, "sentinel\n").unwrap();
    assert_eq!(content(f.next().await), "sentinel\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_without_pause_is_still_read() {
    let options = WatchOptions {
        max_delay: Duration::from_secs(1),
        ..WatchOptions::default()
    };
    let mut f = start_with(Some("w-start\n"), options).await;

    // The writer's pace (every 50 ms) is the input here, not a way to wait
    // for the watcher. A report of `w{k}` means the read began after write
    // k ended and before write k+1 began; if that gap is under `quiet`,
    // only `max_delay` can have started the read. A longer gap (the
    // machine stalled the writer) proves nothing, so the test goes on.
    let began = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut writes: Vec<(Instant, Instant)> = Vec::new();
    loop {
        tokio::select! {
            change = f.rx.recv() => {
                let arrived = Instant::now();
                let text = content(change.expect("running"));
                let k: Option<usize> = text
                    .strip_prefix('w')
                    .and_then(|t| t.trim_end().parse().ok());
                if let Some(k) = k {
                    let (_, ended) = writes[k];
                    let next_began = writes.get(k + 1).map_or(arrived, |&(b, _)| b);
                    if next_began.duration_since(ended) < QUIET {
                        break;
                    }
                }
            }
            _ = pace.tick() => {
                assert!(
                    began.elapsed() < DEADLINE,
                    "not read within {DEADLINE:?} while being rewritten every 50 ms"
                );
                let start = Instant::now();
                fs::write(&f.path, format!("w{}\n", writes.len())).unwrap();
                writes.push((start, Instant::now()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_reports_missing_and_recreation_the_content() {
    let mut f = start(Some("one\n")).await;
    fs::remove_file(&f.path).unwrap();
    assert_eq!(f.next().await, FileChange::Missing);
    fs::write(&f.path, "two\n").unwrap();
    f.exactly_one("two\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_absent_at_start_is_reported_when_created() {
    let mut f = start(None).await;
    fs::write(&f.path, "hello\n").unwrap();
    f.exactly_one("hello\n").await;
}

fn quick_poll() -> WatchOptions {
    WatchOptions {
        poll_interval: Duration::from_millis(100),
        ..WatchOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_absent_at_start_is_watched_once_it_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("conf");
    let path = dir.join("topology.yaml");
    let (watcher, rx) = TopologyWatcher::spawn_with(path.clone(), quick_poll());
    let mut f = Fixture {
        dir: dir.clone(),
        path,
        watcher,
        rx,
        _dir: tmp,
    };
    assert_eq!(f.next().await, FileChange::Missing);

    fs::create_dir(&f.dir).unwrap();
    fs::write(&f.path, "hello\n").unwrap();
    // The sentinel in `exactly_one` is seen through the new watch: the
    // safety read is 30 s away.
    f.exactly_one("hello\n").await;
    assert!(!f.watcher.stats().polling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_removed_and_recreated_is_watched_again() {
    let mut f = start_with(Some("one\n"), quick_poll()).await;
    fs::remove_dir_all(&f.dir).unwrap();
    assert_eq!(f.next().await, FileChange::Missing);

    fs::create_dir(&f.dir).unwrap();
    fs::write(&f.path, "two\n").unwrap();
    f.exactly_one("two\n").await;
    assert!(!f.watcher.stats().polling);
}

/// The directory is moved away and a new one made in its place within one
/// debounce: it is never seen absent, and the new one must be watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_replaced_by_another_is_watched_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("conf");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("topology.yaml");
    fs::write(&path, "one\n").unwrap();
    let (watcher, rx) = TopologyWatcher::spawn(path.clone(), QUIET);
    let mut f = Fixture {
        dir,
        path,
        watcher,
        rx,
        _dir: tmp,
    };
    assert_eq!(content(f.next().await), "one\n");

    fs::rename(&f.dir, f.dir.with_file_name("conf.old")).unwrap();
    fs::create_dir(&f.dir).unwrap();
    fs::write(&f.path, "two\n").unwrap();
    // The sentinel is written into the new directory: seen only if the new
    // directory is watched (the safety read is 30 s away).
    f.exactly_one("two\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_are_unreadable_with_a_position() {
    let mut f = start(Some("one\n")).await;
    fs::write(&f.path, b"cluster: c\n\xff\n").unwrap();
    match f.next().await {
        FileChange::Unreadable { reason } => {
            let prefix = format!("{}:2:1: ", f.path.display());
            assert!(reason.starts_with(&prefix), "{reason}");
        }
        other => panic!("expected Unreadable, got {other:?}"),
    }
    fs::write(&f.path, "two\n").unwrap();
    f.exactly_one("two\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_sees_changes_without_a_backend() {
    let options = WatchOptions {
        backend: Backend::Poll,
        quiet: Duration::from_millis(100),
        poll_interval: Duration::from_millis(100),
        ..WatchOptions::default()
    };
    let mut f = start_with(Some("one\n"), options).await;
    assert!(f.watcher.stats().polling);

    fs::write(&f.path, "two\n").unwrap();
    assert_eq!(content(f.next().await), "two\n");
    let tmp = f.dir.join("t");
    fs::write(&tmp, "three\n").unwrap();
    fs::rename(&tmp, &f.path).unwrap();
    assert_eq!(content(f.next().await), "three\n");

    // Reads go on without events; an unchanged file is not reported.
    let reads = f.watcher.stats().reads;
    f.settled(reads + 3).await;
    assert_eq!(f.rx.try_recv(), Err(TryRecvError::Empty));

    fs::remove_file(&f.path).unwrap();
    assert_eq!(f.next().await, FileChange::Missing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_watcher_stops_it() {
    let mut f = start(Some("one\n")).await;
    drop(f.watcher);
    let end = tokio::time::timeout(DEADLINE, f.rx.recv())
        .await
        .expect("the channel closes once the watcher is dropped");
    assert_eq!(end, None);
}
