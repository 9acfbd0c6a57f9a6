//! Collecting a batch: wait (briefly) for a first record, then take what
//! the clients have already buffered, without waiting, up to N records or
//! T ms. Under load batches grow to N by themselves; at low load a record
//! never waits for a batch to fill, except that a busy stage's batch closes
//! no sooner than the linger after the previous one ([`super::pace`]). The
//! batch in flight settles while the loop waits for a first record.

use super::RunnerError;
use super::item::Item;
use super::stage_loop::StageLoop;
use crate::stage::StageLogic;
use futures::FutureExt;
use std::time::{Duration, Instant};

/// How long a collection waits for a first record before the loop goes
/// round (purging retries, restoring, reporting readiness).
const IDLE_WAIT: Duration = Duration::from_millis(250);

impl<S: StageLogic> StageLoop<'_, S> {
    /// Collects a batch (maybe empty); the due retries held earlier join
    /// it, in order per partition.
    pub(super) async fn collect(&mut self) -> Result<Vec<Item>, RunnerError> {
        let mut items = Vec::new();
        self.first_records(&mut items).await?;
        self.more_records(&mut items).await;
        if !items.is_empty() {
            self.pacer.closed(Instant::now(), items.len());
        }
        self.retries
            .take_due(&mut items, self.runner.cfg.transaction_max_records);
        Ok(items)
    }

    /// The assignment epoch, read once `recv` has returned a record: the
    /// rebalance callbacks run inside `recv`, so a record fetched after a
    /// revocation and a new assignment within one call carries the new
    /// epoch, not the one from before the call.
    fn epoch(&self) -> u64 {
        self.assignment().epoch
    }

    /// Waits up to [`IDLE_WAIT`] for a first record, settling the batch in
    /// flight meanwhile.
    async fn first_records(&mut self, items: &mut Vec<Item>) -> Result<(), RunnerError> {
        let idle_until = Instant::now() + IDLE_WAIT;
        while items.is_empty() {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                _ = async { self.in_flight.as_mut().expect("guarded").finished().await }, if self.in_flight.is_some() => {
                    let flight = self.in_flight.take().expect("guarded");
                    self.settle_or_rewind(flight, Vec::new()).await?;
                }
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        let msg = m.detach();
                        items.push(Item::input(msg, self.epoch()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        self.runner.health.set_not_ready(format!("Kafka consumer error: {e}"));
                    }
                },
                m = self.retries.consumer().recv() => match m {
                    Ok(m) => {
                        let msg = m.detach();
                        let epoch = self.epoch();
                        self.retries.on_record(msg, epoch, items);
                    }
                    Err(e) => tracing::warn!(error = %e, "retry consumer error"),
                },
                _ = tokio::time::sleep_until(idle_until.into()) => break,
            }
        }
        Ok(())
    }

    /// Takes what is buffered, up to `TRANSACTION_MAX_RECORDS` or
    /// `TRANSACTION_MAX_MS` after the first record, lingering for the next
    /// record while the pacer holds the batch open.
    async fn more_records(&mut self, items: &mut Vec<Item>) {
        let max_records = self.runner.cfg.transaction_max_records;
        let batch_until =
            Instant::now() + Duration::from_millis(self.runner.cfg.transaction_max_ms);
        let linger_until = self.pacer.close_at(Instant::now());
        while !items.is_empty() && items.len() < max_records && Instant::now() < batch_until {
            let mut got = false;
            if let Some(Ok(m)) = self.consumer.recv().now_or_never() {
                let msg = m.detach();
                items.push(Item::input(msg, self.epoch()));
                got = true;
            }
            if let Some(Ok(m)) = self.retries.consumer().recv().now_or_never() {
                let msg = m.detach();
                let epoch = self.epoch();
                self.retries.on_record(msg, epoch, items);
                got = true;
            }
            if got {
                continue;
            }
            if Instant::now() >= linger_until {
                break;
            }
            // Lingering: wait for the next record, up to the linger.
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                m = self.consumer.recv() => if let Ok(m) = m {
                    let msg = m.detach();
                    items.push(Item::input(msg, self.epoch()));
                },
                m = self.retries.consumer().recv() => if let Ok(m) = m {
                    let msg = m.detach();
                    let epoch = self.epoch();
                    self.retries.on_record(msg, epoch, items);
                },
                _ = tokio::time::sleep_until(linger_until.into()) => break,
            }
        }
    }
}
