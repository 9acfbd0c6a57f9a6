//! Preparing one batch: decode, plan, process, build its records. Nothing
//! is produced here; [`super::commit`] commits what this prepares.

use super::StageRunner;
use super::item::Item;
use super::plan::{self, Key, Plan};
use super::poison::{self, Markers};
use super::process::Done;
use super::records::{Built, Disposition, Encode, Records, Writers};
use crate::stage::{StageInput, StageLogic};
use crate::stage_metrics;
use artifact_domain::{ArtifactId, Generation};
use artifact_kafka::codec::TopicWriter;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use rdkafka::error::KafkaError;
use std::time::Instant;

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// Worth another try after a pause (registry or broker unavailable,
    /// aborted transaction). Nothing of the batch was committed.
    Transient(String),
    /// The producer cannot go on (fenced, fatal transaction error).
    Fatal(String),
}

impl BatchError {
    /// A failed transactional call: fatal if librdkafka says so.
    pub fn of_transaction(what: &str, e: KafkaError) -> Self {
        let fatal = matches!(&e, KafkaError::Transaction(r) if r.is_fatal());
        let msg = format!("{what}: {e}");
        if fatal {
            BatchError::Fatal(msg)
        } else {
            BatchError::Transient(msg)
        }
    }
}

/// A batch decoded, planned, processed and encoded: the records of its
/// transaction, and what becomes true once it commits.
pub(crate) struct Prepared {
    /// The number of leading items the batch covers: all of them, unless
    /// its time to start records ran out (`StageRunner::start_budget`);
    /// the items after these are read again for the next batch.
    pub covered: usize,
    pub built: Built,
}

/// What a batch is, for the watch on records that kill the process
/// ([`super::poison`]).
pub(crate) struct Guard<'a> {
    /// Where the batch's ranges are recorded before stage code runs; `None`
    /// with the watch off.
    pub markers: Option<&'a Markers>,
    /// Deaths while processing the batch's records before.
    pub deaths: u32,
    /// Set when the batch is a record that is not processed again: why it
    /// fails.
    pub refuse: Option<String>,
}

impl<S: StageLogic> StageRunner<S> {
    /// Decodes, plans (against the restored dedup state through `seen`,
    /// and earlier records of this batch), records what it will process
    /// (`guard`), processes and encodes a batch, after the `tombstones` of
    /// expired dedup entries (`DedupState::take_tombstones`) and those of
    /// erased artifacts' outcomes and dedup entries (`erasures`).
    pub(crate) async fn prepare(
        &self,
        items: &[Item],
        seen: impl Fn(Key) -> Option<Generation>,
        tombstones: &[(i32, ArtifactId)],
        erasures: &[(i32, ArtifactId)],
        guard: Guard<'_>,
    ) -> Result<Prepared, BatchError> {
        let t0 = Instant::now();
        let decoded = plan::decode::<S::Input>(&self.codec, items)
            .await
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        let controls = &self.controls;
        let mut plans = plan::plan(items, decoded, seen, |id, generation| {
            controls.skip(id, generation)
        });
        plans = plan::skip_restarted_later(items, plans, S::STAGE);
        if let Some(reason) = &guard.refuse {
            plans = plan::refuse(plans, reason);
        }
        if let Some(markers) = guard.markers
            && plans.iter().any(|p| matches!(p, Plan::Process(_)))
        {
            markers.mark(&poison::ranges(items, guard.deaths)).await?;
        }
        let t_decoded = t0.elapsed();
        let (done, mut covered) = self.process(items, &plans, t0 + self.start_budget).await;
        if self.breaker.is_open() {
            // Attempts that failed once the breaker opened are no
            // deliveries, but a spent probe's (not its last): from the
            // first, the batch is read again later.
            let spent = self.breaker.spent_probe();
            let max_deliveries = self.cfg.retry_policy().max_deliveries;
            let counts = |i: usize| {
                matches!(&plans[i], Plan::Process(input)
                    if spent.as_deref() == Some(&*input.artifact_id().to_string()))
                    && items[i].delivery < max_deliveries
            };
            let failed =
                |i: usize| matches!(&done[i], Some(a) if matches!(a.done, Done::Retriable(_)));
            if let Some(first) = (0..done.len()).find(|&i| failed(i) && !counts(i)) {
                covered = covered.min(first);
            }
            if (0..covered.min(done.len())).any(|i| failed(i) && counts(i)) {
                tracing::info!(
                    artifact_id = spent.as_deref().unwrap_or_default(),
                    "a record failed the breaker's probe {} times in a row: the attempt counts as a delivery",
                    super::breaker::PROBES_PER_RECORD
                );
                self.breaker.probe_delivered();
            }
        }
        plans.truncate(covered);
        if done.iter().any(Option::is_some) {
            self.before_commit().await?;
        }
        let t_processed = t0.elapsed();
        let records = Records {
            stage: S::STAGE,
            topics: &self.topics,
            policy: self.cfg.retry_policy(),
            max_record_bytes: self.max_record_bytes,
            now_ms: now_ms(),
        };
        let mut dispositions = records.dispositions(&items[..covered], plans, done);
        // Erased while it was processed: nothing of it is written, and
        // the stage deletes the blobs it wrote for it.
        for d in &mut dispositions {
            if let Disposition::Outcome { input, event, .. } = d
                && self.controls.is_erased(input.artifact_id())
            {
                tracing::info!(artifact_id = %event.artifact_id, generation = %event.generation, "outcome of an erased artifact dropped");
                self.logic.discard(&event.context).await;
                *d = Disposition::Skip("erased");
            }
        }
        let built = if dispositions.iter().any(Disposition::is_outcome) {
            let writers = self.writers().await?;
            records.build(items, dispositions, tombstones, &writers)
        } else {
            records.build(items, dispositions, tombstones, &NoOutcomes)
        }
        .map(|mut built| {
            for &(p, id) in erasures {
                built.outs.extend(records.erasure(p, id));
            }
            built
        })?;
        tracing::trace!(
            records = items.len(),
            produced = built.outs.len(),
            decode_ms = t_decoded.as_secs_f64() * 1e3,
            process_ms = (t_processed - t_decoded).as_secs_f64() * 1e3,
            encode_ms = (t0.elapsed() - t_processed).as_secs_f64() * 1e3,
            "batch prepared"
        );
        Ok(Prepared { covered, built })
    }

    /// The stage's `before_commit`, once for the batch: a stage that wrote
    /// without waiting for the disk makes its writes durable.
    async fn before_commit(&self) -> Result<(), BatchError> {
        let started = Instant::now();
        let settled = self.logic.before_commit().await;
        stage_metrics::before_commit_time(S::STAGE.name(), started.elapsed());
        settled
            .map_err(|e| BatchError::Transient(format!("making the batch's writes durable: {e}")))
    }

    /// The writers of the output and dedup topics (the registry is asked
    /// once per topic, then the codec keeps them).
    async fn writers(&self) -> Result<Writers<'_>, BatchError> {
        let output = self
            .writer(&self.topics.output, EventSchema::output_of(S::STAGE))
            .await?;
        let dedup = self
            .writer(&self.topics.dedup, EventSchema::DedupEntry)
            .await?;
        Ok(Writers {
            topics: &self.topics,
            output,
            dedup,
        })
    }

    async fn writer(&self, topic: &str, schema: EventSchema) -> Result<TopicWriter, BatchError> {
        self.codec.writer(topic, schema).await.map_err(|e| {
            if e.is_retriable() {
                BatchError::Transient(e.to_string())
            } else {
                BatchError::Fatal(format!("cannot encode for {topic}: {e}"))
            }
        })
    }
}

/// The encoder of a batch without outcomes, which encodes nothing.
struct NoOutcomes;

impl<R> Encode<R> for NoOutcomes {
    fn outcome(&self, _: &artifact_domain::events::StageEvent<R>) -> Result<Vec<u8>, BatchError> {
        unreachable!("a batch without outcomes encodes none")
    }
    fn dedup(&self, _: &artifact_domain::dedup::DedupEntry) -> Result<Vec<u8>, BatchError> {
        unreachable!("a batch without outcomes encodes none")
    }
}
