//! Lifeguard's local health: a node that misses acks and nacks it should
//! have received is probably the slow one, so it stretches its own probe
//! interval and timeouts instead of accusing healthy peers.

/// Score 0 (healthy) ..= max; timeouts are multiplied by score + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalHealth {
    score: u32,
    max: u32,
}

impl LocalHealth {
    pub fn new(max: u32) -> Self {
        LocalHealth { score: 0, max }
    }

    pub fn score(&self) -> u32 {
        self.score
    }

    /// Factor for the probe interval and the ack timeout.
    pub fn multiplier(&self) -> u32 {
        self.score + 1
    }

    /// Evidence we are unhealthy (a probe failed although no helper said it
    /// could not reach the target either, or we were suspected).
    pub fn worsen(&mut self, by: u32) {
        self.score = self.score.saturating_add(by).min(self.max);
    }

    /// A probe answered in time.
    pub fn improve(&mut self) {
        self.score = self.score.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_bounded_both_ways() {
        let mut health = LocalHealth::new(8);
        health.improve();
        assert_eq!(health.multiplier(), 1);
        health.worsen(5);
        health.worsen(5);
        assert_eq!(health.score(), 8);
        assert_eq!(health.multiplier(), 9);
        health.improve();
        assert_eq!(health.score(), 7);
    }
}
