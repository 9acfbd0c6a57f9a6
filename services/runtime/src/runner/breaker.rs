//! The circuit breaker: when more than `BREAKER_THRESHOLD` of the last
//! `BREAKER_WINDOW` processing attempts failed retriably (the stage's
//! dependency — LLM, blob store, registry — is failing), the breaker opens:
//! the stage holds back new input and, after a growing backoff, lets one
//! record through as a probe. A probe that does not fail retriably closes
//! it. Attempts that end while it is open are not counted as deliveries:
//! the runner reads their records again instead of writing retries or
//! failures for them ([`super::batch`]). The failures must come from at
//! least [`MIN_FAILING_RECORDS`] records: one record that fails again and
//! again is that record's problem, and its deliveries run out as usual.
//! A probe whose record fails on its own would keep an open breaker open
//! after the dependency recovered, so the next probe avoids the last failed
//! probe's partition when the batch offers another, and a record that
//! failed [`PROBES_PER_RECORD`] probes in a row has that attempt counted as
//! a delivery (not its last), which moves it to the retry topic.
//! Pure logic: time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many different records the failures of a window must come from
/// (at most the window) for the breaker to open.
pub(crate) const MIN_FAILING_RECORDS: usize = 3;

/// Failed probes in a row of one record after which its failure counts as
/// a delivery.
pub(crate) const PROBES_PER_RECORD: u32 = 3;

/// How one processing attempt ended, as the breaker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The dependency answered: a success, or a permanent failure of the
    /// input itself.
    Answered,
    /// A retriable failure (or a timeout) of the record `record` (its
    /// artifact id), with its error.
    Failed { record: String, error: String },
}

/// What the breaker is configured with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BreakerConfig {
    /// Attempts looked at; 0 turns the breaker off.
    pub window: usize,
    /// The share of failed attempts in a full window above which it opens.
    pub threshold: f64,
    /// The first wait before a probe; doubles after each failed probe.
    pub probe_backoff: Duration,
    /// The longest wait before a probe.
    pub probe_backoff_max: Duration,
}

/// A change of state, to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Opened, for this cause (the last failure's error).
    Opened(String),
    /// Closed again.
    Closed,
}

#[derive(Debug)]
enum State {
    /// Recent attempts, oldest first: the failing record's id, or `None`
    /// for an answer.
    Closed {
        recent: VecDeque<Option<String>>,
        failures: usize,
    },
    Open {
        cause: String,
        /// Failed probes so far.
        probes: u32,
        /// When the next probe may start.
        next_probe: Instant,
        /// A probe was let through and has not ended.
        probing: bool,
        /// The record of the last failed probe, and its failed probes in a
        /// row.
        failed_probe: Option<(String, u32)>,
    },
}

/// A stage replica's circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    cfg: BreakerConfig,
    state: State,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: closed(),
        }
    }

    /// Why it is open, if it is.
    pub fn open_cause(&self) -> Option<&str> {
        match &self.state {
            State::Open { cause, .. } => Some(cause),
            State::Closed { .. } => None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_cause().is_some()
    }

    /// Counts an attempt that ended at `now`.
    pub fn record(&mut self, attempt: Attempt, now: Instant) -> Option<Transition> {
        if self.cfg.window == 0 {
            return None;
        }
        match (&mut self.state, attempt) {
            (State::Closed { recent, failures }, attempt) => {
                let (record, cause) = match attempt {
                    Attempt::Failed { record, error } => (Some(record), Some(error)),
                    Attempt::Answered => (None, None),
                };
                *failures += usize::from(record.is_some());
                recent.push_back(record);
                if recent.len() > self.cfg.window && recent.pop_front().is_some_and(|r| r.is_some())
                {
                    *failures -= 1;
                }
                let share = *failures as f64 / self.cfg.window as f64;
                let cause = cause?;
                if recent.len() < self.cfg.window || share <= self.cfg.threshold {
                    return None;
                }
                let records: std::collections::HashSet<&String> = recent.iter().flatten().collect();
                if records.len() < MIN_FAILING_RECORDS.min(self.cfg.window) {
                    return None;
                }
                self.state = State::Open {
                    cause: cause.clone(),
                    probes: 0,
                    next_probe: now + self.backoff(1),
                    probing: false,
                    failed_probe: None,
                };
                Some(Transition::Opened(cause))
            }
            // Any answer shows the dependency works again.
            (State::Open { .. }, Attempt::Answered) => {
                self.state = closed();
                Some(Transition::Closed)
            }
            (
                State::Open {
                    probes,
                    next_probe,
                    probing,
                    failed_probe,
                    ..
                },
                Attempt::Failed { record, .. },
            ) => {
                // Failures of records started before it opened say nothing
                // new; only a failed probe pushes the next one further.
                if std::mem::take(probing) {
                    *probes += 1;
                    *next_probe = now + backoff(&self.cfg, *probes + 1);
                    match failed_probe {
                        Some((r, n)) if *r == record => *n += 1,
                        _ => *failed_probe = Some((record, 1)),
                    }
                }
                None
            }
        }
    }

    /// Whether a probe may start now; if so, it is counted as started.
    pub fn take_probe(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Open {
                next_probe,
                probing,
                ..
            } if !*probing && now >= *next_probe => {
                *probing = true;
                true
            }
            _ => false,
        }
    }

    /// The record of the last failed probe, while open: the next probe
    /// prefers another partition's record.
    pub fn last_failed_probe(&self) -> Option<&str> {
        match &self.state {
            State::Open {
                failed_probe: Some((r, _)),
                ..
            } => Some(r),
            _ => None,
        }
    }

    /// The record whose failed probe counts as a delivery: one that failed
    /// [`PROBES_PER_RECORD`] probes in a row.
    pub fn spent_probe(&self) -> Option<&str> {
        match &self.state {
            State::Open {
                failed_probe: Some((r, n)),
                ..
            } if *n >= PROBES_PER_RECORD => Some(r),
            _ => None,
        }
    }

    /// The spent probe's failure was counted as a delivery: its record
    /// has left the partition's head.
    pub fn probe_delivered(&mut self) {
        if let State::Open { failed_probe, .. } = &mut self.state {
            *failed_probe = None;
        }
    }

    /// A probe that was let through but not processed (its record went
    /// back unprocessed): the next may start at once.
    pub fn probe_unused(&mut self) {
        if let State::Open { probing, .. } = &mut self.state {
            *probing = false;
        }
    }

    fn backoff(&self, n: u32) -> Duration {
        backoff(&self.cfg, n)
    }
}

fn closed() -> State {
    State::Closed {
        recent: VecDeque::new(),
        failures: 0,
    }
}

/// The wait before probe `n` (n ≥ 1).
fn backoff(cfg: &BreakerConfig, n: u32) -> Duration {
    crate::retry::exponential(cfg.probe_backoff, cfg.probe_backoff_max, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window: usize, threshold: f64) -> BreakerConfig {
        BreakerConfig {
            window,
            threshold,
            probe_backoff: Duration::from_secs(1),
            probe_backoff_max: Duration::from_secs(8),
        }
    }

    /// A failure of record `n`.
    fn failed(n: usize) -> Attempt {
        failed_record(&format!("record-{n}"))
    }

    fn failed_record(record: &str) -> Attempt {
        Attempt::Failed {
            record: record.into(),
            error: "LLM answered 503".into(),
        }
    }

    #[test]
    fn opens_only_with_a_full_window_over_the_threshold() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(4, 0.5));
        for i in 100..103 {
            assert_eq!(b.record(failed(i), now), None, "window not full yet");
        }
        assert_eq!(
            b.record(failed(2), now),
            Some(Transition::Opened("LLM answered 503".into()))
        );
        assert_eq!(b.open_cause(), Some("LLM answered 503"));

        // Exactly the threshold (2 of 4) is not over it.
        let mut b = Breaker::new(cfg(4, 0.5));
        for a in [failed(3), Attempt::Answered, failed(4), Attempt::Answered] {
            assert_eq!(b.record(a, now), None);
        }
        // The oldest (a failure) leaves the window as a success comes in.
        assert_eq!(b.record(Attempt::Answered, now), None);
        assert_eq!(b.record(failed(5), now), None, "2 failures of 4");
        assert_eq!(b.record(failed(6), now), None, "2 failures of 4");
        assert_eq!(
            b.record(failed(7), now),
            Some(Transition::Opened("LLM answered 503".into())),
            "3 failures of the last 4"
        );
    }

    #[test]
    fn one_record_failing_again_and_again_does_not_open_it() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(4, 0.5));
        for _ in 0..20 {
            assert_eq!(b.record(failed_record("poison"), now), None);
        }
        assert_eq!(b.record(failed_record("other"), now), None, "two records");
        assert_eq!(
            b.record(failed_record("third"), now),
            Some(Transition::Opened("LLM answered 503".into())),
            "three records fail"
        );
    }

    #[test]
    fn successes_keep_it_closed() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(3, 0.5));
        for i in 0..30 {
            let a = if i % 3 == 0 {
                failed(i)
            } else {
                Attempt::Answered
            };
            assert_eq!(b.record(a, now), None);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn a_window_of_zero_turns_it_off() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg(0, 0.0));
        for _ in 0..100 {
            assert_eq!(b.record(failed(8), now), None);
        }
        assert!(!b.take_probe(now));
    }

    #[test]
    fn probes_one_at_a_time_with_a_growing_backoff_and_closes_on_an_answer() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(2, 0.0));
        assert_eq!(b.record(failed(9), t0), None);
        assert!(b.record(failed(10), t0).is_some());
        assert!(!b.take_probe(t0), "first probe after the backoff");
        // A record started before it opened fails: the probe is not delayed.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.record(failed(11), t1), None);
        assert!(b.take_probe(t1));
        assert!(!b.take_probe(t1), "one probe at a time");
        // A probe whose record was not processed: the next goes at once.
        b.probe_unused();
        assert!(b.take_probe(t1));
        // The probe fails: the next waits twice as long.
        assert_eq!(b.record(failed(12), t1), None);
        assert!(!b.take_probe(t1 + Duration::from_millis(1999)));
        let t2 = t1 + Duration::from_secs(2);
        assert!(b.take_probe(t2));
        assert_eq!(b.record(failed(13), t2), None);
        // Capped at the maximum.
        let mut t = t2;
        for _ in 0..10 {
            t += Duration::from_secs(8);
            assert!(b.take_probe(t));
            assert_eq!(b.record(failed(14), t), None);
        }
        t += Duration::from_secs(8);
        assert!(b.take_probe(t));
        assert_eq!(b.record(Attempt::Answered, t), Some(Transition::Closed));
        assert!(!b.is_open());
        assert_eq!(
            b.record(failed(15), t),
            None,
            "the window starts empty again"
        );
    }

    #[test]
    fn a_record_failing_probe_after_probe_is_spent() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg(2, 0.0));
        b.record(failed(1), t0);
        b.record(failed(2), t0);
        assert!(b.is_open());
        assert_eq!(b.last_failed_probe(), None, "no probe yet");
        let mut t = t0;
        for n in 1..=PROBES_PER_RECORD {
            t += Duration::from_secs(8);
            assert!(b.take_probe(t));
            assert_eq!(b.spent_probe(), None, "{n} failed probes so far");
            b.record(failed_record("stuck"), t);
            assert_eq!(b.last_failed_probe(), Some("stuck"));
        }
        assert_eq!(b.spent_probe(), Some("stuck"));
        // Failures of records that were no probe change nothing.
        b.record(failed_record("other"), t);
        assert_eq!(b.spent_probe(), Some("stuck"));
        b.probe_delivered();
        assert_eq!(b.spent_probe(), None);
        assert_eq!(b.last_failed_probe(), None);
        // Another record's failed probe starts a new count.
        t += Duration::from_secs(8);
        assert!(b.take_probe(t));
        b.record(failed_record("stuck"), t);
        t += Duration::from_secs(8);
        assert!(b.take_probe(t));
        b.record(failed_record("next"), t);
        assert_eq!(b.last_failed_probe(), Some("next"));
        assert_eq!(b.spent_probe(), None);
        assert!(b.is_open(), "failed probes keep it open");
    }
}
