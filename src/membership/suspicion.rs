//! Lifeguard's dynamic suspicion timeout: a suspicion starts long and
//! shrinks towards the minimum as distinct members confirm it, so a lone
//! slow accuser cannot kill a healthy node but a real failure is fast.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::member::NodeId;

/// One running suspicion of one member.
#[derive(Clone, Debug, PartialEq)]
pub struct Suspicion {
    started: Instant,
    min: Duration,
    max: Duration,
    /// Confirmations that bring the timeout down to the minimum.
    expected: u32,
    confirmers: BTreeSet<NodeId>,
}

impl Suspicion {
    pub fn new(started: Instant, min: Duration, max: Duration, expected: u32, by: NodeId) -> Self {
        Suspicion {
            started,
            min,
            max: max.max(min),
            expected,
            confirmers: BTreeSet::from([by]),
        }
    }

    /// Minimum suspicion for a cluster of `n` members (memberlist's
    /// formula: multiplier × max(1, log10 n) × period).
    pub fn min_timeout(multiplier: u32, n: usize, period: Duration) -> Duration {
        let scale = (n.max(1) as f64).log10().max(1.0);
        period.mul_f64(f64::from(multiplier) * scale)
    }

    /// Records a confirmation; true if it came from someone new (and so
    /// the deadline moved earlier).
    pub fn confirm(&mut self, by: NodeId) -> bool {
        // The first accuser does not count; beyond `expected` nothing moves.
        if self.confirmers.len() > self.expected as usize {
            return false;
        }
        self.confirmers.insert(by)
    }

    pub fn confirmations(&self) -> u32 {
        u32::try_from(self.confirmers.len().saturating_sub(1)).unwrap_or(u32::MAX)
    }

    /// max − (max − min)·log(c+1)/log(k+1), never below min.
    pub fn timeout(&self) -> Duration {
        if self.expected == 0 {
            return self.min;
        }
        let c = f64::from(self.confirmations());
        let k = f64::from(self.expected);
        let fraction = ((c + 1.0).ln() / (k + 1.0).ln()).clamp(0.0, 1.0);
        let span = self.max.saturating_sub(self.min);
        self.max
            .saturating_sub(span.mul_f64(fraction))
            .max(self.min)
    }

    pub fn deadline(&self) -> Instant {
        self.started + self.timeout()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(n: u128) -> NodeId {
        NodeId(Uuid::from_u128(n))
    }

    #[test]
    fn timeout_shrinks_with_distinct_confirmations_only() {
        let start = Instant::now();
        let min = Duration::from_secs(5);
        let mut s = Suspicion::new(start, min, min * 6, 2, id(1));
        assert_eq!(s.timeout(), min * 6);
        assert!(!s.confirm(id(1)), "the accuser does not confirm itself");
        assert!(s.confirm(id(2)));
        let after_one = s.timeout();
        assert!(after_one < min * 6 && after_one > min, "{after_one:?}");
        assert!(!s.confirm(id(2)));
        assert!(s.confirm(id(3)));
        assert_eq!(s.timeout(), min);
        assert!(!s.confirm(id(4)), "nothing moves past the expected count");
        assert_eq!(s.deadline(), start + min);
    }

    #[test]
    fn min_timeout_grows_with_log_n() {
        let p = Duration::from_secs(1);
        assert_eq!(Suspicion::min_timeout(4, 3, p), Duration::from_secs(4));
        let at_1000 = Suspicion::min_timeout(4, 1000, p);
        assert!(at_1000.abs_diff(Duration::from_secs(12)) < Duration::from_millis(1));
    }
}
