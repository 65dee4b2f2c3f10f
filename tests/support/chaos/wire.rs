//! A host's link to the bridge as a userspace wire: a TAP device `eth0` in
//! the host's namespace, a TAP device on the hub's bridge, and a thread of
//! the test that carries every Ethernet frame between them, impairing it
//! as `tc netem` would (loss, delay with jitter, duplication, reordering)
//! while a `Netem` is set. It stands in for a veth pair with `netem` on it
//! because sch_netem is often not in the kernel (the development VMs have
//! no CONFIG_NET_SCH_NETEM and no modules), while TUN almost always is.
//! The devices go away when the wire is dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::schedule::{Netem, Rng};
use super::sys;

/// Frames held back at once, per wire, beyond which more are dropped
/// (netem's default limit is 1,000 packets).
const HELD_MAX: usize = 10_000;

/// What a wire did to the frames it carried while impaired.
#[derive(Debug, Default)]
pub struct WireStats {
    pub frames: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub delayed: AtomicU64,
    pub reordered: AtomicU64,
}

struct Shared {
    netem: Mutex<Option<Netem>>,
    stop: AtomicBool,
    stats: WireStats,
}

pub struct Wire {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    /// From the host to the bridge.
    Up,
    /// From the bridge to the host.
    Down,
}

impl Wire {
    /// The devices: `eth0` in namespace `host`, `hub_dev` in namespace
    /// `hub` (neither configured nor up), and the thread that joins them.
    pub fn new(host: &str, hub: &str, hub_dev: &str, seed: u64) -> io::Result<Wire> {
        let host_tap = sys::tap(host, "eth0")?;
        let hub_tap = sys::tap(hub, hub_dev)?;
        let shared = Arc::new(Shared {
            netem: Mutex::new(None),
            stop: AtomicBool::new(false),
            stats: WireStats::default(),
        });
        let carried = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("wire-{host}"))
            .spawn(move || carry(&carried, &host_tap, &hub_tap, Rng::new(seed)))?;
        Ok(Wire {
            shared,
            thread: Some(thread),
        })
    }

    /// Impairs the link from now on (`None`: a clean wire; frames held
    /// back still go at their time).
    pub fn set(&self, netem: Option<Netem>) {
        *self.shared.netem.lock().unwrap_or_else(|p| p.into_inner()) = netem;
    }

    pub fn stats(&self) -> &WireStats {
        &self.shared.stats
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A frame held back until `due`; `seq` keeps equal times in arrival order.
type Held = Reverse<(Instant, u64, Dir, Vec<u8>)>;

fn carry(shared: &Shared, host: &File, hub: &File, mut rng: Rng) {
    let mut held: BinaryHeap<Held> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    let send = |dir: Dir, frame: &[u8]| {
        let mut to = match dir {
            Dir::Up => hub,
            Dir::Down => host,
        };
        // A frame the kernel refuses (device going down) is a lost frame.
        let _ = to.write(frame);
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        while held.peek().is_some_and(|Reverse(h)| h.0 <= now) {
            if let Some(Reverse((_, _, dir, frame))) = held.pop() {
                send(dir, &frame);
            }
        }
        let wait = held
            .peek()
            .map(|Reverse(h)| h.0.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(50))
            .min(Duration::from_millis(50));
        let (up, down) = match sys::readable(host, hub, wait) {
            Ok(ready) => ready,
            Err(e) => {
                eprintln!("chaos wire: poll failed, the wire stops: {e}");
                return;
            }
        };
        for (ready, dir, mut from) in [(up, Dir::Up, host), (down, Dir::Down, hub)] {
            if !ready {
                continue;
            }
            let len = match from.read(&mut buf) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !shared.stop.load(Ordering::SeqCst) {
                        eprintln!("chaos wire: read failed, the wire stops: {e}");
                    }
                    return;
                }
            };
            let frame = &buf[..len];
            let netem = *shared.netem.lock().unwrap_or_else(|p| p.into_inner());
            let Some(netem) = netem else {
                send(dir, frame);
                continue;
            };
            let stats = &shared.stats;
            stats.frames.fetch_add(1, Ordering::Relaxed);
            if rng.percent(netem.loss_pct.into()) {
                stats.lost.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let copies = if rng.percent(netem.duplicate_pct.into()) {
                stats.duplicated.fetch_add(1, Ordering::Relaxed);
                2
            } else {
                1
            };
            for _ in 0..copies {
                if netem.delay_ms == 0 {
                    send(dir, frame);
                } else if rng.percent(netem.reorder_pct.into()) {
                    stats.reordered.fetch_add(1, Ordering::Relaxed);
                    send(dir, frame);
                } else if held.len() < HELD_MAX {
                    let (d, j) = (netem.delay_ms as u64, netem.jitter_ms as u64);
                    let ms = rng.range(d.saturating_sub(j), d + j);
                    seq += 1;
                    held.push(Reverse((
                        Instant::now() + Duration::from_millis(ms),
                        seq,
                        dir,
                        frame.to_vec(),
                    )));
                    stats.delayed.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
