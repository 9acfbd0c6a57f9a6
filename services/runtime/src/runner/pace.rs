//! Transaction pacing: when a stage is busy, a batch closes no sooner than
//! the linger after the previous one closed, so the stage commits at most
//! one transaction per linger however its records trickle in. Every
//! transaction costs the broker about twenty requests (a produce and a
//! verification per partition, the offsets, the end, the markers) whatever
//! it holds.
//!
//! Busy means the stage's recent input rate brings at least two records per
//! linger. Below that, pacing would hold most records back for a batch of
//! one, so a record at low load never waits. A stage whose last batch took
//! longer than the linger to process (pdf-parser under load) does not wait
//! either: waiting would leave it idle.

use std::time::{Duration, Instant};

/// Time constant of the input-rate estimate: batches of the last few
/// hundred milliseconds count, a quiet spell longer than that resets it.
const TAU_SECS: f64 = 0.25;

/// Records per linger from which a stage counts as busy.
const BUSY_RECORDS: f64 = 2.0;

#[derive(Debug)]
pub(crate) struct Pacer {
    linger: Duration,
    /// Input records per second, a moving average over time.
    rate: f64,
    last_closed: Option<Instant>,
    last_prepare: Duration,
}

impl Pacer {
    pub(crate) fn new(linger: Duration) -> Self {
        Self {
            linger,
            rate: 0.0,
            last_closed: None,
            last_prepare: Duration::MAX,
        }
    }

    /// When the batch being collected may close: `now` unless the stage is
    /// busy, else the linger after the previous close (or `now`, if later).
    pub(crate) fn close_at(&self, now: Instant) -> Instant {
        match self.last_closed {
            Some(closed) if self.busy() && self.last_prepare < self.linger => {
                (closed + self.linger).max(now)
            }
            _ => now,
        }
    }

    /// A batch of `records` closed at `now`.
    pub(crate) fn closed(&mut self, now: Instant, records: usize) {
        if let Some(prev) = self.last_closed {
            let secs = now
                .saturating_duration_since(prev)
                .max(Duration::from_millis(1))
                .as_secs_f64();
            let rate = records as f64 / secs;
            let weight = 1.0 - (-secs / TAU_SECS).exp();
            self.rate = weight * rate + (1.0 - weight) * self.rate;
        }
        self.last_closed = Some(now);
    }

    /// The last batch took `took` to process.
    pub(crate) fn processed(&mut self, took: Duration) {
        self.last_prepare = took;
    }

    fn busy(&self) -> bool {
        self.rate * self.linger.as_secs_f64() >= BUSY_RECORDS
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;
    use std::time::{Duration, Instant};

    const LINGER: Duration = Duration::from_millis(25);
    const FAST: Duration = Duration::from_millis(2);

    /// A pacer that has seen `batches` batches of `records`, `every` apart,
    /// each processed in `took`; returns it and the last close.
    fn fed(records: usize, every: Duration, batches: u32, took: Duration) -> (Pacer, Instant) {
        let mut p = Pacer::new(LINGER);
        let mut t = Instant::now();
        for _ in 0..batches {
            t += every;
            p.closed(t, records);
            p.processed(took);
        }
        (p, t)
    }

    #[test]
    fn a_busy_stage_closes_a_batch_a_linger_after_the_previous_one() {
        // 340 records/s: 8-9 records per 25 ms.
        let (p, closed) = fed(8, LINGER, 20, FAST);
        let now = closed + Duration::from_millis(5);
        assert_eq!(p.close_at(now), closed + LINGER);
        // Later than the linger already: at once.
        let late = closed + Duration::from_millis(40);
        assert_eq!(p.close_at(late), late);
    }

    #[test]
    fn a_busy_stage_stays_paced_through_a_batch_of_one() {
        let (mut p, closed) = fed(8, LINGER, 20, FAST);
        p.closed(closed + LINGER, 1);
        let now = closed + LINGER + Duration::from_millis(3);
        assert_eq!(p.close_at(now), closed + LINGER + LINGER);
    }

    #[test]
    fn records_at_low_load_never_wait() {
        // 50 records/s, one every 20 ms: 1.25 per linger.
        let (p, closed) = fed(1, Duration::from_millis(20), 50, FAST);
        let now = closed + Duration::from_millis(5);
        assert_eq!(p.close_at(now), now);
        // The first batch ever.
        let fresh = Pacer::new(LINGER);
        assert_eq!(fresh.close_at(now), now);
    }

    #[test]
    fn a_quiet_spell_ends_the_pacing() {
        let (mut p, closed) = fed(8, LINGER, 20, FAST);
        let after = closed + Duration::from_secs(10);
        p.closed(after, 1);
        p.closed(after + Duration::from_secs(1), 1);
        let now = after + Duration::from_secs(1) + Duration::from_millis(5);
        assert_eq!(p.close_at(now), now);
    }

    #[test]
    fn slow_processing_or_no_linger_never_waits() {
        let (p, closed) = fed(8, LINGER, 20, Duration::from_millis(30));
        let now = closed + Duration::from_millis(5);
        assert_eq!(p.close_at(now), now);
        let mut p = Pacer::new(Duration::ZERO);
        let t = Instant::now();
        for i in 1..20 {
            p.closed(t + Duration::from_millis(i), 8);
            p.processed(FAST);
        }
        let now = t + Duration::from_millis(25);
        assert_eq!(p.close_at(now), now);
    }
}
