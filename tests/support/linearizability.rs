//! A linearizability checker for one register: a replica set's master and
//! its fencing generation, written by `cohort failover promote SET NODE`
//! and read by `cohort leaders --consistent`. A history is what clients
//! saw: each operation with the instants (of the test process) it was
//! invoked and completed at, and its result.
//!
//! # The model and the reduction
//!
//! The register holds `(node, generation)`. A write of `node` that takes
//! effect sets it to `(node, generation + 1)`; a write may also have no
//! effect (promote refuses it, or the compare-and-set on the generation
//! fails). A read returns the value. A write answered with a generation
//! took effect with it; a write refused in a way that says nothing was
//! written had no effect; any other end (an error, a timeout) is an
//! unknown outcome: it may have taken effect at any instant after its
//! invocation (even after it completed), or never.
//!
//! Since every write that takes effect adds one to the generation, the
//! writes of any linearization are ordered by generation, and generation
//! `g` (for every `g` from the initial one + 1 up to the highest one seen)
//! was produced by exactly one write: the write answered with `g`, else an
//! unknown-outcome write. A read of `g` sits between the write of `g` and
//! the write of `g + 1`. So a linearization is a sequence of groups
//!
//! `R(g0), W(g0+1), R(g0+1), W(g0+2), ..., W(gmax), R(gmax)`
//!
//! (reads within a group in any order), and it exists iff (1) every read's
//! value is the value of the write of its generation (or the initial
//! value), and (2) each operation can be given a point within its
//! interval, non-decreasing along the sequence (an unknown-outcome write
//! has no end). (2) is decided greedily: each point as early as allowed,
//! `max(invoke, previous point)`, failing when that is past the
//! operation's completion; earliest placement never hurts what follows.
//! The only choice is which unknown-outcome write fills a generation no
//! answered write took: among writes of the same node the one invoked
//! first is always at least as good, so the search branches only on the
//! node for generations no read saw (with a memo of the earliest point
//! reached per state).
//!
//! This implies, and the checker names them when it finds them first:
//! a read of a generation no write produced (`NeverWritten`), a read of a
//! write invoked after the read completed (`FutureWrite`), a read older
//! than a write that completed, or a read that completed, before it was
//! invoked (`StaleRead`), writes whose generations contradict their
//! real-time order (`WritesOutOfOrder`), a generation handed out twice
//! (`DuplicateGeneration`), two reads of one generation with different
//! nodes (`Conflict`); anything else the search rejects is `NoOrder`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Instant;

/// The register's value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Master {
    pub node: String,
    pub generation: u64,
}

impl fmt::Display for Master {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (generation {})", self.node, self.generation)
    }
}

/// How a write ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// It took effect: the register became `(node, generation)`.
    Written(u64),
    /// It certainly had no effect.
    Refused,
    /// It may have taken effect, at any instant after its invocation.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Promote `node`.
    Write { node: String, outcome: WriteOutcome },
    /// A read that returned `value` (failed reads are not recorded: they
    /// have no effect).
    Read { value: Master },
}

#[derive(Clone, Debug)]
pub struct Op {
    /// Which client thread (for messages only).
    pub client: usize,
    pub invoke: Instant,
    pub complete: Instant,
    pub kind: Kind,
}

impl Op {
    fn generation(&self) -> Option<u64> {
        match &self.kind {
            Kind::Write {
                outcome: WriteOutcome::Written(g),
                ..
            } => Some(*g),
            Kind::Read { value } => Some(value.generation),
            Kind::Write { .. } => None,
        }
    }
}

/// Why a history is not linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    NeverWritten,
    FutureWrite,
    StaleRead,
    WritesOutOfOrder,
    DuplicateGeneration,
    Conflict,
    NoOrder,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub why: Why,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.why, self.message)
    }
}

/// What an accepted history held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub reads: usize,
    pub written: usize,
    pub refused: usize,
    pub unknown: usize,
    /// Unknown-outcome writes the linearization found had taken effect.
    pub unknown_taken: usize,
    /// The generation at the end.
    pub last_generation: u64,
}

/// Collects a history from several threads.
#[derive(Default)]
pub struct Recorder {
    ops: std::sync::Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn describe(i: usize, op: &Op, base: Instant) -> String {
    let ms = |t: Instant| t.saturating_duration_since(base).as_millis();
    let what = match &op.kind {
        Kind::Write { node, outcome } => format!("write {node} -> {outcome:?}"),
        Kind::Read { value } => format!("read -> {value}"),
    };
    format!(
        "op #{i} (client {}, {}..{} ms): {what}",
        op.client,
        ms(op.invoke),
        ms(op.complete)
    )
}

fn violation(why: Why, message: String) -> Violation {
    Violation { why, message }
}

/// Accepts `ops` iff they have a linearization starting from `initial`.
pub fn check(initial: &Master, ops: &[Op]) -> Result<Summary, Violation> {
    let Some(base) = ops.iter().map(|o| o.invoke).min() else {
        return Ok(Summary {
            last_generation: initial.generation,
            ..Summary::default()
        });
    };
    let d = |i: usize| describe(i, &ops[i], base);
    let g0 = initial.generation;
    let mut summary = Summary::default();

    // Writes answered with a generation, and unknown-outcome writes by node
    // (each list in invocation order).
    let mut written: BTreeMap<u64, usize> = BTreeMap::new();
    let mut unknown: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut reads: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        assert!(
            op.invoke <= op.complete,
            "{}: completed before invoked",
            d(i)
        );
        match &op.kind {
            Kind::Write { outcome, node } => match outcome {
                WriteOutcome::Written(g) => {
                    summary.written += 1;
                    if *g <= g0 {
                        return Err(violation(
                            Why::DuplicateGeneration,
                            format!("{}: generation {g} was the initial value's or older", d(i)),
                        ));
                    }
                    if let Some(first) = written.insert(*g, i) {
                        return Err(violation(
                            Why::DuplicateGeneration,
                            format!("{} and {} both took generation {g}", d(first), d(i)),
                        ));
                    }
                }
                WriteOutcome::Refused => summary.refused += 1,
                WriteOutcome::Unknown => {
                    summary.unknown += 1;
                    unknown.entry(node.as_str()).or_default().push(i);
                }
            },
            Kind::Read { value } => {
                summary.reads += 1;
                reads.entry(value.generation).or_default().push(i);
            }
        }
    }
    for list in unknown.values_mut() {
        list.sort_by_key(|&i| ops[i].invoke);
    }
    let node_of = |i: usize| match &ops[i].kind {
        Kind::Write { node, .. } => node.as_str(),
        Kind::Read { value } => value.node.as_str(),
    };

    // (1) Every read's value was written, and not after the read.
    for (&g, list) in &reads {
        for &r in list {
            let read = &ops[r];
            let node = node_of(r);
            if g < g0 {
                return Err(violation(
                    Why::StaleRead,
                    format!("{}: older than the initial value {initial}", d(r)),
                ));
            }
            if g == g0 {
                if node != initial.node {
                    return Err(violation(
                        Why::NeverWritten,
                        format!("{}: the initial value is {initial}", d(r)),
                    ));
                }
                continue;
            }
            match written.get(&g) {
                Some(&w) if node_of(w) != node => {
                    return Err(violation(
                        Why::NeverWritten,
                        format!("{}: generation {g} was written by {}", d(r), d(w)),
                    ));
                }
                Some(&w) if ops[w].invoke > read.complete => {
                    return Err(violation(
                        Why::FutureWrite,
                        format!(
                            "{}: its value was written by {}, invoked after the read completed",
                            d(r),
                            d(w)
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    let candidates = unknown.get(node).map_or(&[][..], |v| v.as_slice());
                    if candidates.is_empty() {
                        return Err(violation(
                            Why::NeverWritten,
                            format!("{}: no write of {node} took generation {g}, and none of {node} has an unknown outcome", d(r)),
                        ));
                    }
                    if candidates.iter().all(|&w| ops[w].invoke > read.complete) {
                        return Err(violation(
                            Why::FutureWrite,
                            format!("{}: the only writes of {node} that may have taken generation {g} were invoked after the read completed (first: {})", d(r), d(candidates[0])),
                        ));
                    }
                }
            }
            if let Some(&other) = list.iter().find(|&&o| node_of(o) != node) {
                return Err(violation(
                    Why::Conflict,
                    format!(
                        "{} and {} read generation {g} with different masters",
                        d(r),
                        d(other)
                    ),
                ));
            }
        }
    }

    // Real-time order: nothing may go back to a generation older than
    // one that was answered (written or read) before it was invoked.
    let mut answered: Vec<(Instant, u64, usize)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| Some((o.complete, o.generation()?, i)))
        .collect();
    answered.sort();
    // best[k]: the op with the highest generation among answered[..=k].
    let mut best: Vec<usize> = Vec::with_capacity(answered.len());
    for (k, &(_, g, _)) in answered.iter().enumerate() {
        let keep = k > 0 && answered[best[k - 1]].1 >= g;
        best.push(if keep { best[k - 1] } else { k });
    }
    for (i, op) in ops.iter().enumerate() {
        let Some(g) = op.generation() else { continue };
        let before = answered.partition_point(|&(t, _, _)| t < op.invoke);
        if before == 0 {
            continue;
        }
        let (_, newest, j) = answered[best[before - 1]];
        let is_read = matches!(op.kind, Kind::Read { .. });
        if is_read && newest > g {
            return Err(violation(
                Why::StaleRead,
                format!("{}: {} completed before it was invoked", d(i), d(j)),
            ));
        }
        if !is_read && newest >= g {
            let why = match ops[j].kind {
                Kind::Read { .. } => Why::FutureWrite,
                Kind::Write { .. } => Why::WritesOutOfOrder,
            };
            return Err(violation(
                why,
                format!("{}: {} completed before it was invoked", d(i), d(j)),
            ));
        }
    }

    // (2) The sequence of groups, points placed greedily.
    let gmax = written
        .keys()
        .chain(reads.keys())
        .copied()
        .max()
        .unwrap_or(g0)
        .max(g0);
    let slots: Vec<Slot> = (g0 + 1..=gmax)
        .map(|g| match written.get(&g) {
            Some(&w) => Slot::Known(w),
            None => Slot::Gap(
                reads
                    .get(&g)
                    .and_then(|l| l.first())
                    .map(|&r| node_of(r).to_string()),
            ),
        })
        .collect();
    let gaps = slots.iter().filter(|s| matches!(s, Slot::Gap(_))).count();
    if gaps > summary.unknown {
        return Err(violation(
            Why::NoOrder,
            format!(
                "{gaps} generations between {g0} and {gmax} were taken by no answered write, and only {} writes have an unknown outcome",
                summary.unknown
            ),
        ));
    }
    let classes: Vec<(&str, &[usize])> = unknown.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let mut search = Search {
        ops,
        g0,
        slots: &slots,
        reads: &reads,
        classes: &classes,
        memo: HashMap::new(),
        furthest: (0, String::new()),
        steps: 0,
    };
    let start = search.place_reads(g0, base).map_err(|why| {
        violation(
            Why::NoOrder,
            format!("the reads of the initial value: {why}"),
        )
    })?;
    let mut used = vec![0; classes.len()];
    if !search.run(0, start, &mut used) {
        let (slot, why) = search.furthest.clone();
        return Err(violation(
            Why::NoOrder,
            format!(
                "no linearization: stuck at generation {}: {why}",
                g0 + 1 + slot as u64
            ),
        ));
    }
    summary.unknown_taken = gaps;
    summary.last_generation = gmax;
    Ok(summary)
}

enum Slot {
    /// The answered write of this generation.
    Known(usize),
    /// No answered write: an unknown-outcome write of this node (any node
    /// when no read saw the generation).
    Gap(Option<String>),
}

struct Search<'a> {
    ops: &'a [Op],
    g0: u64,
    slots: &'a [Slot],
    reads: &'a BTreeMap<u64, Vec<usize>>,
    /// Unknown-outcome writes by node, each in invocation order.
    classes: &'a [(&'a str, &'a [usize])],
    /// (slot, writes used per class) → the earliest point it was reached
    /// at; reaching it again no earlier cannot do better.
    memo: HashMap<(usize, Vec<usize>), Instant>,
    /// The deepest slot reached and why it failed, for the message.
    furthest: (usize, String),
    steps: u64,
}

/// The search gives up (and says so) beyond this many steps.
const MAX_STEPS: u64 = 10_000_000;

impl Search<'_> {
    /// Places the reads of generation `g` after `cur`: the new point.
    fn place_reads(&self, g: u64, cur: Instant) -> Result<Instant, String> {
        let mut next = cur;
        for &r in self.reads.get(&g).map_or(&[][..], |v| v.as_slice()) {
            let op = &self.ops[r];
            let at = op.invoke.max(cur);
            if at > op.complete {
                return Err(format!(
                    "a read of generation {g} (client {}) completed before the write of generation {g} could have taken effect",
                    op.client
                ));
            }
            next = next.max(at);
        }
        Ok(next)
    }

    fn fail(&mut self, slot: usize, why: String) -> bool {
        if slot >= self.furthest.0 {
            self.furthest = (slot, why);
        }
        false
    }

    /// Places slots `slot..` after `cur`; true when all fit.
    fn run(&mut self, mut slot: usize, mut cur: Instant, used: &mut Vec<usize>) -> bool {
        loop {
            self.steps += 1;
            assert!(
                self.steps < MAX_STEPS,
                "the linearizability search is too large (more than {MAX_STEPS} steps)"
            );
            let Some(what) = self.slots.get(slot) else {
                return true;
            };
            let g = self.g0 + 1 + slot as u64;
            let write = match what {
                Slot::Known(w) => *w,
                Slot::Gap(Some(node)) => {
                    let Some(class) = self.classes.iter().position(|(n, _)| n == node) else {
                        return self.fail(slot, format!("no write of {node} is left for it"));
                    };
                    let Some(&w) = self.classes[class].1.get(used[class]) else {
                        return self.fail(
                            slot,
                            format!("every unknown-outcome write of {node} is used by an earlier generation"),
                        );
                    };
                    used[class] += 1;
                    let ok = self.place(slot, g, w, cur, used);
                    used[class] -= 1;
                    return ok;
                }
                Slot::Gap(None) => {
                    if let Some(&seen) = self.memo.get(&(slot, used.clone())) {
                        if seen <= cur {
                            return false;
                        }
                    }
                    self.memo.insert((slot, used.clone()), cur);
                    for class in 0..self.classes.len() {
                        let Some(&w) = self.classes[class].1.get(used[class]) else {
                            continue;
                        };
                        used[class] += 1;
                        let ok = self.place(slot, g, w, cur, used);
                        used[class] -= 1;
                        if ok {
                            return true;
                        }
                    }
                    return self.fail(slot, "no unknown-outcome write is left for it".into());
                }
            };
            // An answered write: no choice, go on without recursing.
            let op = &self.ops[write];
            let at = op.invoke.max(cur);
            if at > op.complete {
                return self.fail(
                    slot,
                    format!(
                        "its write (client {}) completed before the generations under it could have been taken",
                        op.client
                    ),
                );
            }
            match self.place_reads(g, at) {
                Ok(next) => cur = next,
                Err(why) => return self.fail(slot, why),
            }
            slot += 1;
        }
    }

    /// Places unknown-outcome write `w` as the write of slot `slot`, its
    /// reads, and the rest.
    fn place(
        &mut self,
        slot: usize,
        g: u64,
        w: usize,
        cur: Instant,
        used: &mut Vec<usize>,
    ) -> bool {
        let at = self.ops[w].invoke.max(cur);
        match self.place_reads(g, at) {
            Ok(next) => self.run(slot + 1, next, used),
            Err(why) => self.fail(slot, why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Histories written as `(client, from_ms, to_ms, kind)`.
    struct H {
        base: Instant,
        ops: Vec<Op>,
    }

    impl H {
        fn new() -> H {
            H {
                base: Instant::now(),
                ops: Vec::new(),
            }
        }

        fn op(mut self, client: usize, from: u64, to: u64, kind: Kind) -> H {
            self.ops.push(Op {
                client,
                invoke: self.base + Duration::from_millis(from),
                complete: self.base + Duration::from_millis(to),
                kind,
            });
            self
        }

        fn write(self, client: usize, from: u64, to: u64, node: &str, outcome: WriteOutcome) -> H {
            self.op(
                client,
                from,
                to,
                Kind::Write {
                    node: node.into(),
                    outcome,
                },
            )
        }

        fn ok(self, client: usize, from: u64, to: u64, node: &str, g: u64) -> H {
            self.write(client, from, to, node, WriteOutcome::Written(g))
        }

        fn unknown(self, client: usize, from: u64, to: u64, node: &str) -> H {
            self.write(client, from, to, node, WriteOutcome::Unknown)
        }

        fn read(self, client: usize, from: u64, to: u64, node: &str, g: u64) -> H {
            self.op(client, from, to, Kind::Read { value: m(node, g) })
        }

        fn check(&self) -> Result<Summary, Violation> {
            check(&m("a", 1), &self.ops)
        }

        fn rejected(&self) -> Why {
            match self.check() {
                Ok(s) => panic!("accepted: {s:?}"),
                Err(v) => {
                    eprintln!("rejected as expected: {v}");
                    v.why
                }
            }
        }
    }

    fn m(node: &str, generation: u64) -> Master {
        Master {
            node: node.into(),
            generation,
        }
    }

    #[test]
    fn an_empty_history_and_reads_of_the_initial_value_are_accepted() {
        assert!(H::new().check().is_ok());
        let h = H::new().read(0, 0, 10, "a", 1).read(1, 5, 20, "a", 1);
        assert_eq!(h.check().unwrap().reads, 2);
    }

    #[test]
    fn sequential_and_concurrent_writes_with_reads_are_accepted() {
        // Sequential.
        let h = H::new()
            .ok(0, 0, 10, "b", 2)
            .read(1, 11, 20, "b", 2)
            .ok(0, 21, 30, "c", 3)
            .read(1, 31, 40, "c", 3);
        assert_eq!(h.check().unwrap().last_generation, 3);
        // Reads overlapping a write may see the old or the new value, even
        // old after new as long as neither completed before the other
        // was invoked.
        let h = H::new()
            .ok(0, 0, 100, "b", 2)
            .read(1, 10, 20, "a", 1)
            .read(2, 15, 40, "b", 2)
            .read(3, 30, 60, "a", 1);
        assert!(h.check().is_ok(), "{:?}", h.check());
        // But once a read of the new value completed, a later read cannot
        // see the old one, the write still running or not.
        let h = H::new()
            .ok(0, 0, 100, "b", 2)
            .read(1, 10, 20, "b", 2)
            .read(2, 30, 40, "a", 1);
        assert_eq!(h.rejected(), Why::StaleRead);
        // Concurrent writes may be ordered either way (by generation).
        let h = H::new()
            .ok(0, 0, 50, "b", 3)
            .ok(1, 10, 40, "c", 2)
            .read(2, 60, 70, "b", 3);
        assert!(h.check().is_ok(), "{:?}", h.check());
    }

    #[test]
    fn a_stale_read_is_rejected() {
        let h = H::new().ok(0, 0, 10, "b", 2).read(1, 20, 30, "a", 1);
        assert_eq!(h.rejected(), Why::StaleRead);
        // Older than another read that completed before it.
        let h = H::new()
            .ok(0, 0, 100, "b", 2)
            .read(1, 10, 20, "b", 2)
            .read(2, 30, 40, "a", 1);
        assert_eq!(h.rejected(), Why::StaleRead);
        // Older than the initial value.
        let h = H::new().read(0, 0, 10, "z", 0);
        assert_eq!(h.rejected(), Why::StaleRead);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected() {
        // Generation 2 was written with b, not c.
        let h = H::new().ok(0, 0, 10, "b", 2).read(1, 20, 30, "c", 2);
        assert_eq!(h.rejected(), Why::NeverWritten);
        // Nobody wrote generation 2 (no write at all).
        let h = H::new().read(1, 20, 30, "b", 2);
        assert_eq!(h.rejected(), Why::NeverWritten);
        // The initial value is a's.
        let h = H::new().read(1, 20, 30, "b", 1);
        assert_eq!(h.rejected(), Why::NeverWritten);
        // Only a refused write of b.
        let h = H::new()
            .write(0, 0, 10, "b", WriteOutcome::Refused)
            .read(1, 20, 30, "b", 2);
        assert_eq!(h.rejected(), Why::NeverWritten);
        // Two reads of one generation with different nodes.
        let h = H::new()
            .unknown(0, 0, 10, "b")
            .unknown(0, 11, 12, "c")
            .read(1, 20, 30, "b", 2)
            .read(2, 20, 30, "c", 2);
        assert_eq!(h.rejected(), Why::Conflict);
    }

    #[test]
    fn a_read_of_a_future_write_is_rejected() {
        let h = H::new().read(1, 0, 10, "b", 2).ok(0, 20, 30, "b", 2);
        assert_eq!(h.rejected(), Why::FutureWrite);
        // The same with an unknown-outcome write.
        let h = H::new().read(1, 0, 10, "b", 2).unknown(0, 20, 30, "b");
        assert_eq!(h.rejected(), Why::FutureWrite);
        // A write answered after a read of its generation completed
        // before the write was invoked.
        let h = H::new()
            .unknown(0, 0, 5, "b")
            .read(1, 6, 10, "b", 2)
            .ok(2, 20, 30, "b", 2);
        assert_eq!(h.rejected(), Why::FutureWrite);
    }

    #[test]
    fn writes_against_their_real_time_order_are_rejected() {
        let h = H::new().ok(0, 0, 10, "b", 3).ok(1, 20, 30, "c", 2);
        assert!(matches!(h.rejected(), Why::WritesOutOfOrder | Why::NoOrder));
        let h = H::new().ok(0, 0, 10, "b", 2).ok(1, 20, 30, "c", 2);
        assert_eq!(h.rejected(), Why::DuplicateGeneration);
    }

    #[test]
    fn unknown_outcome_writes_may_take_effect_or_not() {
        // Not taken: nobody saw it.
        let h = H::new()
            .unknown(0, 0, 10, "b")
            .read(1, 20, 30, "a", 1)
            .ok(2, 40, 50, "c", 2)
            .read(1, 60, 70, "c", 2);
        let s = h.check().unwrap();
        assert_eq!((s.unknown, s.unknown_taken), (1, 0));
        // Taken, seen by a read long after it "failed".
        let h = H::new()
            .unknown(0, 0, 10, "b")
            .read(1, 20, 30, "a", 1)
            .read(1, 40, 50, "b", 2);
        let s = h.check().unwrap();
        assert_eq!((s.unknown, s.unknown_taken), (1, 1));
        // Taken, seen by nobody, but an answered write got the next
        // generation: it filled the gap.
        let h = H::new()
            .unknown(0, 0, 10, "b")
            .ok(1, 20, 30, "c", 3)
            .read(2, 40, 50, "c", 3);
        let s = h.check().unwrap();
        assert_eq!((s.unknown, s.unknown_taken), (1, 1));
        // A gap no unknown write can fill: generation 2 is missing.
        let h = H::new().ok(1, 20, 30, "c", 3);
        assert_eq!(h.rejected(), Why::NoOrder);
        // The gap's write must be invoked before the write above it
        // completed.
        let h = H::new().ok(1, 0, 10, "c", 3).unknown(0, 20, 30, "b");
        assert_eq!(h.rejected(), Why::NoOrder);
    }

    #[test]
    fn the_search_picks_the_right_unknown_write_for_a_gap() {
        // Generation 2 (nobody read it) and 3 (read as c) both need an
        // unknown write; only one write of c exists, so generation 2 must
        // take b's even though c's was invoked first.
        let h = H::new()
            .unknown(0, 0, 5, "c")
            .unknown(1, 10, 15, "b")
            .ok(2, 20, 30, "d", 4)
            .read(3, 16, 40, "c", 3);
        let s = h.check().unwrap();
        assert_eq!(s.unknown_taken, 2);
        // Order matters: c must come after b here (b's write of 2 before
        // c's of 3), so a read of c that completed before b was invoked is
        // impossible.
        let h = H::new()
            .unknown(0, 0, 5, "c")
            .read(3, 6, 8, "c", 3)
            .unknown(1, 10, 15, "b");
        assert_eq!(h.rejected(), Why::NoOrder);
    }
}
