//! The stage's producer: librdkafka's delivery reports counted in one
//! place, not a future per record. In exactly-once mode the transaction's
//! commit fails if any of its records failed, so no report is waited for;
//! in at-least-once mode a batch waits until every one of its records is
//! acknowledged, and fails if any was not.

use rdkafka::ClientContext;
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The producer every stage instance writes with.
pub(crate) type StageProducer = ThreadedProducer<Deliveries>;

/// Records enqueued and not yet reported, and the first failure reported
/// since the last [`Deliveries::begin`].
#[derive(Debug, Default)]
struct Tally {
    outstanding: u64,
    failure: Option<String>,
}

/// Counts delivery reports (the producer's context).
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    tally: Mutex<Tally>,
    settled: Condvar,
}

impl Deliveries {
    /// Forgets earlier failures: a new batch starts. Only one batch is
    /// produced at a time.
    pub fn begin(&self) {
        self.tally.lock().expect("tally lock").failure = None;
    }

    /// One record is about to be enqueued.
    pub fn enqueuing(&self) {
        self.tally.lock().expect("tally lock").outstanding += 1;
    }

    /// The record announced by [`Deliveries::enqueuing`] was not enqueued.
    pub fn not_enqueued(&self) {
        self.report(None);
    }

    /// Waits until every enqueued record was reported, up to `timeout`.
    /// Returns the first failure since [`Deliveries::begin`], or an error
    /// naming the records still unreported at the deadline.
    pub fn wait_all(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut tally = self.tally.lock().expect("tally lock");
        while tally.outstanding > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} records not acknowledged within {timeout:?}",
                    tally.outstanding
                ));
            }
            tally = self
                .settled
                .wait_timeout(tally, left)
                .expect("tally lock")
                .0;
        }
        match tally.failure.take() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn report(&self, failure: Option<String>) {
        let mut tally = self.tally.lock().expect("tally lock");
        tally.outstanding = tally.outstanding.saturating_sub(1);
        if tally.failure.is_none() {
            tally.failure = failure;
        }
        if tally.outstanding == 0 {
            self.settled.notify_all();
        }
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.report(result.as_ref().err().map(|(e, _)| e.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_for_every_report_and_keeps_the_first_failure() {
        let d = Arc::new(Deliveries::default());
        d.begin();
        for _ in 0..3 {
            d.enqueuing();
        }
        let reporter = {
            let d = d.clone();
            std::thread::spawn(move || {
                d.report(None);
                d.report(Some("first".into()));
                d.report(Some("second".into()));
            })
        };
        assert_eq!(d.wait_all(Duration::from_secs(10)), Err("first".into()));
        reporter.join().unwrap();
        // A new batch starts clean.
        d.begin();
        d.enqueuing();
        d.report(None);
        assert_eq!(d.wait_all(Duration::from_secs(10)), Ok(()));
    }

    #[test]
    fn a_missing_report_is_an_error_at_the_deadline() {
        let d = Deliveries::default();
        d.begin();
        d.enqueuing();
        d.enqueuing();
        d.not_enqueued();
        let err = d.wait_all(Duration::from_millis(20)).unwrap_err();
        assert!(err.contains("1 records not acknowledged"), "{err}");
    }
}
