//! When a node stands for election: our timer, not openraft's (no I/O; the
//! tokio side is [`super::elector`]).
//!
//! openraft 0.9 draws a node's random timeout once, when the instance
//! starts, and keeps it for the instance's life. A group that loses its
//! leader has lost the node with the shortest draw more often than not
//! (it won the last election for having it), so the survivors stand late,
//! election after election; and two nodes whose draws are close stay close,
//! term after term. etcd draws again at every term, and so does this timer:
//! in each term a node waits `lease + draw` after it last heard from a
//! leader, `draw` uniform in `[min, max)` and new for the term.
//!
//! The lease is openraft's own (`election_timeout_max`): a follower that
//! heard from a leader refuses votes until it runs out, so standing before
//! then could never win.

use std::time::{Duration, Instant};

use openraft::ServerState;
use rand_08::Rng;

/// The timeouts of a group, from its openraft settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimeouts {
    /// How long a follower that heard from a leader refuses votes.
    pub lease: Duration,
    /// The random part, drawn from `[min, max)` in each term.
    pub min: Duration,
    pub max: Duration,
}

impl ElectionTimeouts {
    pub fn of(config: &openraft::Config) -> ElectionTimeouts {
        ElectionTimeouts {
            lease: Duration::from_millis(config.election_timeout_max),
            min: Duration::from_millis(config.election_timeout_min),
            max: Duration::from_millis(config.election_timeout_max),
        }
    }
}

/// What a node heard that puts its election off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    /// A leader's AppendEntries or InstallSnapshot, accepted: the node
    /// waits the lease out, then its draw.
    Leader,
    /// It granted a vote: the candidate gets a draw's time to win.
    VoteGranted,
}

/// One node's election timer.
#[derive(Clone, Debug)]
pub struct ElectionTimer {
    timeouts: ElectionTimeouts,
    /// The term this node was last seen in, and the draw made for it.
    term: u64,
    draw: Duration,
    /// The wait counts from here...
    since: Instant,
    /// ...and includes the lease when this is a leader's contact.
    lease: bool,
    /// A leader has no election timer.
    leading: bool,
}

impl ElectionTimer {
    /// A node that starts (in `term`, from its store) waits as if it had
    /// just heard from a leader: one may be leading, and its followers
    /// would refuse the votes anyway.
    pub fn new(
        timeouts: ElectionTimeouts,
        term: u64,
        now: Instant,
        rng: &mut impl Rng,
    ) -> ElectionTimer {
        let mut timer = ElectionTimer {
            timeouts,
            term,
            draw: Duration::ZERO,
            since: now,
            lease: true,
            leading: false,
        };
        timer.draw = timer.draw(rng);
        timer
    }

    fn draw(&self, rng: &mut impl Rng) -> Duration {
        let ElectionTimeouts { min, max, .. } = self.timeouts;
        if max <= min {
            return min;
        }
        min + (max - min).mul_f64(rng.gen_range(0.0..1.0))
    }

    /// The node's term and role as openraft reports them. A new term gets
    /// a new draw, counted from now, as etcd does: someone just stood (this
    /// node, or one it heard from) and gets a draw's time to win. That
    /// matters more than it looks: openraft reports the term the moment
    /// this node grants a vote, before the vote is on disk and answered; a
    /// timer that ran out in that gap used to stand against the candidate
    /// it had just voted for, and a leader of one millisecond stepped down
    /// (the 7-second failovers of the first run of this timer).
    pub fn observe(&mut self, term: u64, state: ServerState, now: Instant, rng: &mut impl Rng) {
        let was_leading = self.leading;
        self.leading = state == ServerState::Leader;
        if term != self.term {
            self.term = term;
            self.draw = self.draw(rng);
            self.since = now;
            self.lease = false;
        }
        // A leader that steps down has just heard from itself.
        if was_leading && !self.leading {
            self.since = now;
            self.lease = true;
        }
    }

    pub fn heard(&mut self, contact: Contact, at: Instant) {
        if at >= self.since {
            self.since = at;
            self.lease = contact == Contact::Leader;
        }
    }

    /// When to stand, unless something is heard first; never on a leader.
    pub fn deadline(&self) -> Option<Instant> {
        if self.leading {
            return None;
        }
        let lease = if self.lease {
            self.timeouts.lease
        } else {
            Duration::ZERO
        };
        Some(self.since + lease + self.draw)
    }

    /// The node stood (or may not, and let the moment pass): if no new
    /// term follows, it tries again a draw later.
    pub fn fired(&mut self, now: Instant) {
        self.since = now;
        self.lease = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_08::rngs::SmallRng;
    use rand_08::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    fn timeouts() -> ElectionTimeouts {
        // T = 1 s: lease 700 ms, draws in [200, 700).
        ElectionTimeouts::of(&crate::raft::driver::raft_config(Duration::from_secs(1)))
    }

    fn after(timer: &ElectionTimer, from: Instant) -> Duration {
        timer.deadline().expect("a deadline") - from
    }

    #[test]
    fn waits_the_lease_and_a_draw_after_a_leader_and_a_draw_after_a_vote() {
        let mut rng = SmallRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut timer = ElectionTimer::new(timeouts(), 3, t0, &mut rng);
        timer.observe(3, ServerState::Follower, t0, &mut rng);
        let wait = after(&timer, t0);
        assert!((900 * MS..1400 * MS).contains(&wait), "{wait:?}");
        let t1 = t0 + 100 * MS;
        timer.heard(Contact::Leader, t1);
        assert_eq!(after(&timer, t1), wait, "the same draw within a term");
        let t2 = t1 + 100 * MS;
        timer.heard(Contact::VoteGranted, t2);
        assert_eq!(after(&timer, t2), wait - 700 * MS, "no lease after a vote");
        timer.heard(Contact::Leader, t1);
        assert_eq!(
            after(&timer, t2),
            wait - 700 * MS,
            "an older contact is ignored"
        );
    }

    #[test]
    fn every_term_draws_again_from_the_moment_it_is_seen() {
        let mut rng = SmallRng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut timer = ElectionTimer::new(timeouts(), 0, t0, &mut rng);
        let waits: std::collections::BTreeSet<Duration> = (1..=20)
            .map(|term| {
                timer.observe(term, ServerState::Follower, t0, &mut rng);
                after(&timer, t0)
            })
            .collect();
        assert!(waits.len() > 15, "draws repeat: {waits:?}");
        assert!(waits.iter().all(|w| (200 * MS..700 * MS).contains(w)));
        // Seen again in the same term: no new draw.
        let last = after(&timer, t0);
        timer.observe(20, ServerState::Follower, t0, &mut rng);
        assert_eq!(after(&timer, t0), last);
        // A vote granted just before the timer ran out puts it off.
        let t1 = t0 + 690 * MS;
        timer.observe(21, ServerState::Follower, t1, &mut rng);
        assert!(after(&timer, t1) >= 200 * MS);
    }

    #[test]
    fn a_candidate_retries_after_a_draw_and_a_leader_never_stands() {
        let mut rng = SmallRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut timer = ElectionTimer::new(timeouts(), 4, t0, &mut rng);
        let stood = t0 + 1200 * MS;
        timer.fired(stood);
        timer.observe(5, ServerState::Candidate, stood, &mut rng);
        let retry = after(&timer, stood);
        assert!((200 * MS..700 * MS).contains(&retry), "{retry:?}");
        timer.observe(5, ServerState::Leader, stood, &mut rng);
        assert_eq!(timer.deadline(), None);
        // Deposed: it heard from a leader (itself) last.
        let down = stood + 5000 * MS;
        timer.observe(6, ServerState::Follower, down, &mut rng);
        let wait = after(&timer, down);
        assert!((900 * MS..1400 * MS).contains(&wait), "{wait:?}");
        // A follower that sees a new term gives its candidate a draw.
        timer.observe(7, ServerState::Follower, down, &mut rng);
        let wait = after(&timer, down);
        assert!((200 * MS..700 * MS).contains(&wait), "{wait:?}");
    }
}
