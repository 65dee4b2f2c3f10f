//! A chaos schedule is a pure function of its seed: the same seed gives the
//! same fault steps at the same offsets, on any machine and any run, so a
//! failing seed replays (only the real timing differs). The generator has
//! its own small RNG (SplitMix64) rather than the `rand` crate, whose
//! streams may change between releases and would silently change what an
//! old seed means.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// SplitMix64 (Steele, Lea, Flood 2014): a few lines, full period, good
/// enough to pick faults.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        let span = hi - lo + 1;
        if span == 0 {
            return self.next_u64();
        }
        // The modulo bias is below 2^-40 for the spans used here.
        lo + self.next_u64() % span
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.range(0, i as u64) as usize;
            items.swap(i, j);
        }
    }

    /// `count` distinct indexes of `0..n`, sorted.
    pub fn subset(&mut self, n: usize, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        self.shuffle(&mut all);
        let mut some = all[..count.min(n)].to_vec();
        some.sort_unstable();
        some
    }
}

/// How big and how long: the short mode (CI) or the long mode (on demand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// 5 nodes, 30 s, one fault of each kind.
    Short,
    /// 5–9 nodes, 45–120 s, 6–14 faults.
    Long,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Short => "short",
            Profile::Long => "long",
        }
    }

    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "short" => Some(Profile::Short),
            "long" => Some(Profile::Long),
            _ => None,
        }
    }
}

/// Link impairments of one host, both directions, as `tc netem` names
/// them. Every packet is first lost with `loss_pct`, else sent once more
/// with `duplicate_pct`; each copy is delayed `delay_ms` ± `jitter_ms`,
/// except `reorder_pct` of them, which go at once (and so overtake the
/// delayed ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Netem {
    pub loss_pct: u8,
    pub delay_ms: u32,
    pub jitter_ms: u32,
    pub duplicate_pct: u8,
    pub reorder_pct: u8,
}

impl fmt::Display for Netem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.loss_pct > 0 {
            parts.push(format!("loss {}%", self.loss_pct));
        }
        if self.delay_ms > 0 {
            parts.push(format!("delay {}ms ±{}ms", self.delay_ms, self.jitter_ms));
        }
        if self.duplicate_pct > 0 {
            parts.push(format!("duplicate {}%", self.duplicate_pct));
        }
        if self.reorder_pct > 0 {
            parts.push(format!("reorder {}%", self.reorder_pct));
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// The kinds of fault, for choosing them and counting them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Netem,
    Partition,
    OneWay,
    Kill,
    Stop,
    DiskFull,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Netem,
        Kind::Partition,
        Kind::OneWay,
        Kind::Kill,
        Kind::Stop,
        Kind::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Netem => "netem",
            Kind::Partition => "partition",
            Kind::OneWay => "one_way_partition",
            Kind::Kill => "sigkill_restart",
            Kind::Stop => "sigstop_sigcont",
            Kind::DiskFull => "disk_full",
        }
    }
}

/// One thing the runner does to the hosts. Hosts are indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Impair these hosts' links (replacing nothing: none of them is
    /// impaired yet).
    Netem {
        hosts: Vec<usize>,
        netem: Netem,
    },
    /// Their links are clean again.
    ClearNetem {
        hosts: Vec<usize>,
    },
    /// `side` and the others cannot hear each other, both ways.
    Partition {
        side: Vec<usize>,
    },
    /// Packets from `from` never reach `to`; `from` still hears `to`.
    OneWay {
        from: Vec<usize>,
        to: Vec<usize>,
    },
    /// Every partition is gone.
    HealPartition,
    /// SIGKILL to the agent.
    Kill(usize),
    /// The agent started again on its data dir.
    Restart(usize),
    SigStop(usize),
    SigCont(usize),
    /// The agent's data dir (a small tmpfs) filled by the test.
    FillDisk(usize),
    /// The test's filler file removed.
    FreeDisk(usize),
}

impl Action {
    /// The kind of fault this step begins, if it begins one.
    pub fn begins(&self) -> Option<Kind> {
        match self {
            Action::Netem { .. } => Some(Kind::Netem),
            Action::Partition { .. } => Some(Kind::Partition),
            Action::OneWay { .. } => Some(Kind::OneWay),
            Action::Kill(_) => Some(Kind::Kill),
            Action::SigStop(_) => Some(Kind::Stop),
            Action::FillDisk(_) => Some(Kind::DiskFull),
            _ => None,
        }
    }
}

fn names(hosts: &[usize]) -> String {
    let names: Vec<String> = hosts.iter().map(|h| format!("n{}", h + 1)).collect();
    names.join(",")
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Netem { hosts, netem } => write!(f, "netem {} on {}", netem, names(hosts)),
            Action::ClearNetem { hosts } => write!(f, "clear netem on {}", names(hosts)),
            Action::Partition { side } => write!(f, "partition {} | rest", names(side)),
            Action::OneWay { from, to } => {
                write!(f, "one-way: {} do not hear {}", names(to), names(from))
            }
            Action::HealPartition => write!(f, "heal partition"),
            Action::Kill(h) => write!(f, "SIGKILL n{}", h + 1),
            Action::Restart(h) => write!(f, "restart n{}", h + 1),
            Action::SigStop(h) => write!(f, "SIGSTOP n{}", h + 1),
            Action::SigCont(h) => write!(f, "SIGCONT n{}", h + 1),
            Action::FillDisk(h) => write!(f, "fill the disk of n{}", h + 1),
            Action::FreeDisk(h) => write!(f, "free the disk of n{}", h + 1),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Milliseconds after the schedule starts.
    pub at_ms: u64,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub profile: Profile,
    pub nodes: usize,
    /// Every fault has ended by then.
    pub length_ms: u64,
    /// In time order.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Faults begun, by kind.
    pub fn faults(&self) -> BTreeMap<Kind, usize> {
        let mut count = BTreeMap::new();
        for step in &self.steps {
            if let Some(kind) = step.action.begins() {
                *count.entry(kind).or_insert(0) += 1;
            }
        }
        count
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule {:#x} ({}, {} nodes, {:.1} s):",
            self.seed,
            self.profile.name(),
            self.nodes,
            self.length_ms as f64 / 1000.0
        )?;
        for step in &self.steps {
            writeln!(f, "  {:>6.1}s  {}", step.at_ms as f64 / 1000.0, step.action)?;
        }
        Ok(())
    }
}

/// A fault while it is being placed: what it holds, from when to when.
#[derive(Clone, Debug)]
struct Fault {
    kind: Kind,
    start: u64,
    end: u64,
    /// Hosts whose process (kill, stop), link (netem) or disk it holds.
    hosts: Vec<usize>,
    begin: Action,
    finish: Action,
}

impl Fault {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// The schedule of `seed` in `profile`.
pub fn generate(seed: u64, profile: Profile) -> Schedule {
    let mut rng = Rng::new(seed);
    let (nodes, length_ms, count) = match profile {
        Profile::Short => (5, 30_000, Kind::ALL.len()),
        Profile::Long => {
            let nodes = rng.range(5, 9) as usize;
            let length = rng.range(45, 120) * 1000;
            (nodes, length, rng.range(6, 14) as usize)
        }
    };
    // Each kind once (shuffled), then any kind, so a short schedule has
    // every kind and a long one has them all too.
    let mut kinds: Vec<Kind> = Kind::ALL.to_vec();
    rng.shuffle(&mut kinds);
    while kinds.len() < count {
        kinds.push(rng.pick(&Kind::ALL));
    }
    let mut placed: Vec<Fault> = Vec::new();
    for kind in kinds {
        // A fault that conflicts with those placed is drawn again, a few
        // times, then left out.
        for _ in 0..20 {
            let fault = draw(&mut rng, kind, nodes, length_ms);
            if fits(&fault, &placed, nodes) {
                placed.push(fault);
                break;
            }
        }
    }
    let mut steps: Vec<Step> = Vec::new();
    for fault in placed {
        steps.push(Step {
            at_ms: fault.start,
            action: fault.begin,
        });
        steps.push(Step {
            at_ms: fault.end,
            action: fault.finish,
        });
    }
    // Stable: at one instant, ends come before beginnings (ends were
    // placed strictly after their own beginning, and `fits` keeps the
    // resources of overlapping faults apart, so at equal times the order
    // of placement is kept).
    steps.sort_by_key(|s| (s.at_ms, s.action.begins().is_some()));
    Schedule {
        seed,
        profile,
        nodes,
        length_ms,
        steps,
    }
}

fn draw(rng: &mut Rng, kind: Kind, nodes: usize, length_ms: u64) -> Fault {
    // Faults last 3–12 s, on a 100 ms grid, and end by the schedule's end.
    let duration = rng.range(30, 120) * 100;
    let start = rng.range(0, (length_ms - duration) / 100) * 100;
    let end = start + duration;
    let minority = (nodes - 1) / 2;
    let one = rng.range(0, nodes as u64 - 1) as usize;
    let (hosts, begin, finish) = match kind {
        Kind::Netem => {
            let count = rng.range(1, nodes as u64) as usize;
            let hosts = rng.subset(nodes, count);
            let netem = draw_netem(rng);
            (
                hosts.clone(),
                Action::Netem {
                    hosts: hosts.clone(),
                    netem,
                },
                Action::ClearNetem { hosts },
            )
        }
        Kind::Partition => {
            let size = rng.range(1, minority as u64) as usize;
            let side = rng.subset(nodes, size);
            (
                Vec::new(),
                Action::Partition { side },
                Action::HealPartition,
            )
        }
        Kind::OneWay => {
            // Either one node goes unheard by some of the others, or some
            // of the others go unheard by it.
            let others: Vec<usize> = (0..nodes).filter(|&h| h != one).collect();
            let count = rng.range(1, others.len() as u64) as usize;
            let mut picked = rng.subset(others.len(), count);
            for p in &mut picked {
                *p = others[*p];
            }
            let (from, to) = if rng.percent(50) {
                (vec![one], picked)
            } else {
                (picked, vec![one])
            };
            (
                Vec::new(),
                Action::OneWay { from, to },
                Action::HealPartition,
            )
        }
        Kind::Kill => (vec![one], Action::Kill(one), Action::Restart(one)),
        Kind::Stop => (vec![one], Action::SigStop(one), Action::SigCont(one)),
        Kind::DiskFull => (vec![one], Action::FillDisk(one), Action::FreeDisk(one)),
    };
    Fault {
        kind,
        start,
        end,
        hosts,
        begin,
        finish,
    }
}

fn draw_netem(rng: &mut Rng) -> Netem {
    let mut netem = Netem::default();
    // One impairment, or all of them at once.
    let which = rng.range(0, 4);
    if which == 0 || which == 4 {
        netem.loss_pct = rng.range(5, 30) as u8;
    }
    if which == 1 || which == 3 || which == 4 {
        netem.delay_ms = rng.range(20, 200) as u32;
        netem.jitter_ms = rng.range(0, netem.delay_ms as u64 / 2) as u32;
    }
    if which == 2 || which == 4 {
        netem.duplicate_pct = rng.range(5, 25) as u8;
    }
    if which == 3 || which == 4 {
        netem.reorder_pct = rng.range(10, 50) as u8;
    }
    netem
}

/// Whether `fault` can run beside those placed: one partition at a time;
/// a host's link, process and disk each in one fault at a time; at most a
/// minority of the nodes killed or stopped at once (a majority down stops
/// every commit, which tells little); and a node is never restarted while
/// its disk is full (it could not start; systemd would retry it, the test
/// does not).
fn fits(fault: &Fault, placed: &[Fault], nodes: usize) -> bool {
    let (start, end) = (fault.start, fault.end);
    let overlapping: Vec<&Fault> = placed.iter().filter(|p| p.overlaps(start, end)).collect();
    let shares = |p: &Fault| p.hosts.iter().any(|h| fault.hosts.contains(h));
    let process = |k: Kind| matches!(k, Kind::Kill | Kind::Stop);
    match fault.kind {
        Kind::Partition | Kind::OneWay => !overlapping
            .iter()
            .any(|p| matches!(p.kind, Kind::Partition | Kind::OneWay)),
        Kind::Netem => !overlapping
            .iter()
            .any(|p| p.kind == Kind::Netem && shares(p)),
        Kind::Kill | Kind::Stop => {
            let down = overlapping.iter().filter(|p| process(p.kind)).count() + 1;
            let restart_on_full_disk = fault.kind == Kind::Kill
                && placed.iter().any(|p| {
                    p.kind == Kind::DiskFull && shares(p) && p.start <= end && end <= p.end
                });
            down <= (nodes - 1) / 2
                && !restart_on_full_disk
                && !overlapping.iter().any(|p| process(p.kind) && shares(p))
        }
        Kind::DiskFull => {
            let restarts_inside = placed
                .iter()
                .any(|p| p.kind == Kind::Kill && shares(p) && start <= p.end && p.end <= end);
            !restarts_inside
                && !overlapping
                    .iter()
                    .any(|p| p.kind == Kind::DiskFull && shares(p))
        }
    }
}

/// Plays `schedule` on a model of the hosts and says what is wrong with
/// it: a step that does not fit the state it finds (killing a dead agent,
/// two partitions, a restart on a full disk, a majority down), steps out
/// of order or beyond the end, or a fault still on at the end.
pub fn check(schedule: &Schedule) -> Result<(), String> {
    let n = schedule.nodes;
    let mut killed = BTreeSet::new();
    let mut stopped = BTreeSet::new();
    let mut full = BTreeSet::new();
    let mut impaired = BTreeSet::new();
    let mut partitioned = false;
    let mut last = 0;
    for step in &schedule.steps {
        let at = step.at_ms;
        let bad = |why: &str| Err(format!("{:.1}s {}: {why}", at as f64 / 1000.0, step.action));
        if at < last || at > schedule.length_ms {
            return bad("out of order or beyond the end");
        }
        last = at;
        let in_range = |hs: &[usize]| !hs.is_empty() && hs.iter().all(|&h| h < n);
        match &step.action {
            Action::Netem { hosts, .. } => {
                if !in_range(hosts) || hosts.iter().any(|h| !impaired.insert(*h)) {
                    return bad("a host impaired twice, or no such host");
                }
            }
            Action::ClearNetem { hosts } => {
                if hosts.iter().any(|h| !impaired.remove(h)) {
                    return bad("a host not impaired");
                }
            }
            Action::Partition { side } => {
                if partitioned || !in_range(side) || side.len() > (n - 1) / 2 {
                    return bad("a second partition, or a side that is not a minority");
                }
                partitioned = true;
            }
            Action::OneWay { from, to } => {
                let disjoint = from.iter().all(|h| !to.contains(h));
                if partitioned || !in_range(from) || !in_range(to) || !disjoint {
                    return bad("a second partition, or sides that overlap");
                }
                partitioned = true;
            }
            Action::HealPartition => {
                if !partitioned {
                    return bad("no partition to heal");
                }
                partitioned = false;
            }
            Action::Kill(h) => {
                if *h >= n || stopped.contains(h) || !killed.insert(*h) {
                    return bad("not a running agent");
                }
            }
            Action::Restart(h) => {
                if full.contains(h) || !killed.remove(h) {
                    return bad("not killed, or its disk is full");
                }
            }
            Action::SigStop(h) => {
                if *h >= n || killed.contains(h) || !stopped.insert(*h) {
                    return bad("not a running agent");
                }
            }
            Action::SigCont(h) => {
                if !stopped.remove(h) {
                    return bad("not stopped");
                }
            }
            Action::FillDisk(h) => {
                if *h >= n || !full.insert(*h) {
                    return bad("full already");
                }
            }
            Action::FreeDisk(h) => {
                if !full.remove(h) {
                    return bad("not full");
                }
            }
        }
        if killed.len() + stopped.len() > (n - 1) / 2 {
            return bad("a majority of the agents down");
        }
    }
    let on = !killed.is_empty()
        || !stopped.is_empty()
        || !full.is_empty()
        || !impaired.is_empty()
        || partitioned;
    if on {
        return Err(format!(
            "faults still on at the end: killed {killed:?}, stopped {stopped:?}, full {full:?}, impaired {impaired:?}, partitioned {partitioned}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_seeds_differ() {
        for profile in [Profile::Short, Profile::Long] {
            for seed in 0..50 {
                assert_eq!(generate(seed, profile), generate(seed, profile));
                assert_ne!(
                    generate(seed, profile).steps,
                    generate(seed + 1, profile).steps,
                    "seeds {seed} and {} ({profile:?})",
                    seed + 1
                );
            }
        }
    }

    #[test]
    fn every_schedule_plays_on_the_model_and_ends_healed() {
        for profile in [Profile::Short, Profile::Long] {
            for seed in 0..2000 {
                let schedule = generate(seed, profile);
                if let Err(e) = check(&schedule) {
                    panic!("{e}\n{schedule}");
                }
            }
        }
    }

    #[test]
    fn the_model_refuses_what_the_runner_could_not_do() {
        let base = Schedule {
            seed: 0,
            profile: Profile::Short,
            nodes: 5,
            length_ms: 10_000,
            steps: Vec::new(),
        };
        let with = |steps: &[(u64, Action)]| Schedule {
            steps: steps
                .iter()
                .map(|(at_ms, action)| Step {
                    at_ms: *at_ms,
                    action: action.clone(),
                })
                .collect(),
            ..base.clone()
        };
        let bad = [
            vec![(0, Action::Kill(1))],
            vec![(0, Action::Kill(1)), (1, Action::Kill(1))],
            vec![
                (0, Action::Kill(1)),
                (1, Action::Kill(2)),
                (2, Action::Kill(3)),
            ],
            vec![
                (0, Action::FillDisk(1)),
                (0, Action::Kill(1)),
                (1, Action::Restart(1)),
            ],
            vec![
                (0, Action::Partition { side: vec![0] }),
                (
                    1,
                    Action::OneWay {
                        from: vec![1],
                        to: vec![2],
                    },
                ),
            ],
            vec![(
                0,
                Action::Partition {
                    side: vec![0, 1, 2],
                },
            )],
            vec![(0, Action::SigCont(0))],
            vec![(20_000, Action::Kill(0)), (20_001, Action::Restart(0))],
        ];
        for steps in bad {
            let schedule = with(&steps);
            assert!(check(&schedule).is_err(), "{schedule}");
        }
        let good = with(&[
            (0, Action::FillDisk(1)),
            (0, Action::Kill(1)),
            (5, Action::FreeDisk(1)),
            (6, Action::Restart(1)),
        ]);
        check(&good).unwrap();
    }

    #[test]
    fn a_short_schedule_has_every_kind_of_fault_and_a_long_one_most() {
        for seed in 0..500 {
            let schedule = generate(seed, Profile::Short);
            assert_eq!(schedule.nodes, 5);
            let kinds = schedule.faults();
            // A kind may find no room beside the others; rarely.
            assert!(kinds.len() >= 4, "{kinds:?}\n{schedule}");
        }
        let mut seen = BTreeMap::new();
        for seed in 0..500 {
            let schedule = generate(seed, Profile::Long);
            assert!((5..=9).contains(&schedule.nodes));
            for (kind, count) in schedule.faults() {
                *seen.entry(kind).or_insert(0) += count;
            }
        }
        assert_eq!(seen.len(), Kind::ALL.len(), "{seen:?}");
        let short_every_kind = (0..500)
            .filter(|&seed| generate(seed, Profile::Short).faults().len() == Kind::ALL.len())
            .count();
        assert!(short_every_kind > 250, "{short_every_kind} of 500");
    }

    #[test]
    fn the_rng_is_uniform_enough_and_stays_in_range() {
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let v = rng.range(3, 12);
            assert!((3..=12).contains(&v));
            counts[(v - 3) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        // The first value of seed 0 is SplitMix64's published one.
        assert_eq!(Rng::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
    }
}
