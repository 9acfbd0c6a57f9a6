//! Transaction pacing: when a stage is busy, a batch closes no sooner than
//! a window after the previous one closed, so the stage commits at most one
//! transaction per window however its records trickle in. Every
//! transaction costs the broker about twenty requests (a produce and a
//! verification per partition, the offsets, the end, the markers) whatever
//! it holds.
//!
//! The window is `TRANSACTION_LINGER_MS`, or longer at lower rates when
//! `TRANSACTION_LINGER_MAX_MS` allows: long enough for
//! `TRANSACTION_TARGET_RECORDS` records at the recent input rate, up to that
//! bound. Transactions then follow the latency the operator grants each
//! stage rather than the input rate.
//!
//! Busy means the stage's recent input rate brings at least two records per
//! window. Below that, pacing would hold most records back for a batch of
//! one, so a record at low load never waits. A stage whose last batch took
//! longer than the window to process (pdf-parser under load) does not wait
//! either: waiting would leave it idle.

use std::time::{Duration, Instant};

/// Time constant of the input-rate estimate: batches of the last few
/// hundred milliseconds count, a quiet spell longer than that resets it.
const TAU_SECS: f64 = 0.25;

/// Records per window from which a stage counts as busy.
const BUSY_RECORDS: f64 = 2.0;

/// How a busy stage paces its transactions.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// The shortest window.
    pub linger: Duration,
    /// The longest window; equal to `linger`, the window never grows.
    pub linger_max: Duration,
    /// Records a window aims to collect at the recent input rate.
    pub target_records: u32,
}

impl Pacing {
    /// A fixed window.
    #[cfg(test)]
    pub(crate) fn fixed(linger: Duration) -> Self {
        Self {
            linger,
            linger_max: linger,
            target_records: 0,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Pacer {
    pacing: Pacing,
    /// Input records per second, a moving average over time.
    rate: f64,
    last_closed: Option<Instant>,
    last_prepare: Duration,
}

impl Pacer {
    pub(crate) fn new(pacing: Pacing) -> Self {
        Self {
            pacing,
            rate: 0.0,
            last_closed: None,
            last_prepare: Duration::MAX,
        }
    }

    /// When the batch being collected may close: `now` unless the stage is
    /// busy, else the window after the previous close (or `now`, if later).
    pub(crate) fn close_at(&self, now: Instant) -> Instant {
        let window = self.window();
        match self.last_closed {
            Some(closed) if self.busy(window) && self.last_prepare < window => {
                (closed + window).max(now)
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

    /// The window at the recent input rate: long enough for the target
    /// number of records, within the bounds.
    fn window(&self) -> Duration {
        let Pacing {
            linger,
            linger_max,
            target_records,
        } = self.pacing;
        if linger_max <= linger || target_records == 0 || self.rate <= 0.0 {
            return linger;
        }
        let for_target = Duration::from_secs_f64(f64::from(target_records) / self.rate);
        for_target.clamp(linger, linger_max)
    }

    fn busy(&self, window: Duration) -> bool {
        self.rate * window.as_secs_f64() >= BUSY_RECORDS
    }
}

#[cfg(test)]
mod tests {
    use super::{Pacer, Pacing};
    use std::time::{Duration, Instant};

    const LINGER: Duration = Duration::from_millis(25);
    const FAST: Duration = Duration::from_millis(2);

    /// A pacer that has seen `batches` batches of `records`, `every` apart,
    /// each processed in `took`; returns it and the last close.
    fn fed(records: usize, every: Duration, batches: u32, took: Duration) -> (Pacer, Instant) {
        let mut p = Pacer::new(Pacing::fixed(LINGER));
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
        let fresh = Pacer::new(Pacing::fixed(LINGER));
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
        let mut p = Pacer::new(Pacing::fixed(Duration::ZERO));
        let t = Instant::now();
        for i in 1..20 {
            p.closed(t + Duration::from_millis(i), 8);
            p.processed(FAST);
        }
        let now = t + Duration::from_millis(25);
        assert_eq!(p.close_at(now), now);
    }

    /// Batches of `records` every `every`, processed fast, under `pacing`.
    fn fed_with(pacing: Pacing, records: usize, every: Duration) -> (Pacer, Instant) {
        let mut p = Pacer::new(pacing);
        let mut t = Instant::now();
        for _ in 0..40 {
            t += every;
            p.closed(t, records);
            p.processed(FAST);
        }
        (p, t)
    }

    const GROWING: Pacing = Pacing {
        linger: LINGER,
        linger_max: Duration::from_millis(100),
        target_records: 10,
    };

    #[test]
    fn the_window_grows_at_lower_rates_up_to_the_max() {
        // 100 records/s: ten records take 100 ms, the max.
        let (p, closed) = fed_with(GROWING, 3, Duration::from_millis(30));
        let now = closed + Duration::from_millis(5);
        assert_eq!(p.close_at(now), closed + Duration::from_millis(100));
        // 200 records/s: ten records take 50 ms.
        let (p, closed) = fed_with(GROWING, 5, Duration::from_millis(25));
        let at = p.close_at(closed).duration_since(closed);
        assert!(
            (Duration::from_millis(45)..=Duration::from_millis(55)).contains(&at),
            "{at:?}"
        );
        // 1 000 records/s: ten records take 10 ms, below the linger.
        let (p, closed) = fed_with(GROWING, 25, LINGER);
        assert_eq!(p.close_at(closed), closed + LINGER);
    }

    #[test]
    fn a_longer_window_makes_a_slower_stage_busy() {
        // 40 records/s: one per 25 ms linger is not busy, four per 100 ms is.
        let (fixed, closed) = fed_with(Pacing::fixed(LINGER), 1, LINGER);
        let now = closed + Duration::from_millis(5);
        assert_eq!(fixed.close_at(now), now);
        let (grown, closed) = fed_with(GROWING, 1, LINGER);
        assert_eq!(grown.close_at(now), closed + Duration::from_millis(100));
        // 5 records/s: not even two per 100 ms.
        let (slow, closed) = fed_with(GROWING, 1, Duration::from_millis(200));
        let now = closed + Duration::from_millis(5);
        assert_eq!(slow.close_at(now), now);
    }

    #[test]
    fn no_target_keeps_the_window_fixed() {
        let pacing = Pacing {
            target_records: 0,
            ..GROWING
        };
        let (p, closed) = fed_with(pacing, 3, Duration::from_millis(30));
        assert_eq!(p.close_at(closed), closed + LINGER);
    }
}
