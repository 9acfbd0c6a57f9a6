//! One batch: decode, dedup, process, and commit in one transaction.

use super::producer::StageProducer;
use super::{Delayed, Delivery, Item, Source, StageRunner, commit_offsets};
use crate::dedup::Tombstones;
use crate::retry;
use crate::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use artifact_domain::events::StageEvent;
use artifact_domain::outcome::OutcomeRecord;
use artifact_domain::{ArtifactId, DedupDecision, Generation, Outcome, decide};
use artifact_kafka::client::header;
use artifact_kafka::codec::TopicWriter;
use artifact_kafka::headers;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::trace::TRACEPARENT;
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, ConsumerContext, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Why a batch did not commit.
#[derive(Debug)]
pub(crate) enum BatchError {
    /// Worth another try after a pause (registry or broker unavailable,
    /// aborted transaction). Nothing of the batch was committed.
    Transient(String),
    /// The producer cannot go on (fenced, fatal transaction error).
    Fatal(String),
}

/// What the runner does with one decoded record.
enum Plan<I> {
    DeadLetter(String),
    Skip(&'static str),
    Process(I),
}

/// How processing ended after in-process retries.
enum Done<R> {
    Ok(Processed<R>),
    Permanent(String),
    Retriable(String),
}

/// A record to produce in the batch's transaction.
struct Out {
    topic: Arc<str>,
    /// Always the input record's partition number: every record of one
    /// artifact stays on one partition number across topics, whichever
    /// partitioner put it on the input topic.
    partition: i32,
    key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    payload: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    kind: &'static str,
}

impl Out {
    /// What librdkafka counts against `message.max.bytes`, or a little
    /// more: key, value and headers with a few bytes of framing each, and
    /// the record's own overhead (librdkafka adds 36 bytes).
    fn size(&self) -> usize {
        record_size(
            self.key.as_ref().map_or(0, Vec::len),
            self.payload.as_ref().map_or(0, Vec::len),
            &self.headers,
        )
    }
}

/// [`Out::size`] of a record with a key and value of these lengths.
fn record_size(key: usize, payload: usize, headers: &[(&str, String)]) -> usize {
    64 + key
        + payload
        + headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

fn txn_error(what: &str, e: KafkaError) -> BatchError {
    let fatal = matches!(&e, KafkaError::Transaction(r) if r.is_fatal());
    let msg = format!("{what}: {e}");
    if fatal {
        BatchError::Fatal(msg)
    } else {
        BatchError::Transient(msg)
    }
}

/// A batch decoded, deduplicated, processed and encoded: the records of its
/// transaction, and what becomes true once it commits.
pub(crate) struct Prepared {
    /// The number of leading items the batch covers: all of them, unless
    /// its time to start records ran out (`StageRunner::start_budget`);
    /// the items after these are read again for the next batch.
    pub covered: usize,
    /// Records skipped, by reason: counted once the batch commits.
    skipped: HashMap<&'static str, u64>,
    outs: Vec<Out>,
    /// Processed `(partition, artifact, generation)`s with an outcome.
    recorded: Vec<(i32, ArtifactId, Generation)>,
    outcome_labels: Vec<&'static str>,
}

/// A batch whose transaction is committing on a blocking thread while the
/// loop prepares the next one.
pub(crate) struct InFlight {
    pub items: Vec<Item>,
    /// Processed generations with an outcome, by key: the next batch is
    /// decided against these too, and the dedup state records them once
    /// the transaction committed.
    pub generations: HashMap<(i32, ArtifactId), Generation>,
    /// The tombstones of expired dedup entries the transaction writes:
    /// taken back if it fails.
    pub tombstones: Tombstones,
    outcome_labels: Vec<&'static str>,
    skipped: HashMap<&'static str, u64>,
    produced: Vec<&'static str>,
    handle: tokio::task::JoinHandle<Result<f64, BatchError>>,
    /// The commit's result, once `finished` saw it.
    result: Option<Result<f64, BatchError>>,
}

impl InFlight {
    /// Waits for the commit to finish (cancel-safe).
    pub async fn finished(&mut self) {
        if self.result.is_none() {
            let res = (&mut self.handle).await;
            self.result = Some(res.unwrap_or_else(|e| {
                Err(BatchError::Transient(format!("commit task failed: {e}")))
            }));
        }
    }
}

/// Marks a transaction in flight. A revocation waits for it to finish, so
/// that no offsets of a partition are committed after it changed hands.
#[derive(Debug, Default)]
pub(crate) struct TxnGate {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl TxnGate {
    fn enter(self: &Arc<Self>) -> GateGuard {
        *self.busy.lock().expect("gate lock") = true;
        GateGuard(self.clone())
    }

    /// Blocks until no transaction is in flight, or `timeout` passed.
    pub fn wait_idle(&self, timeout: Duration) {
        let busy = self.busy.lock().expect("gate lock");
        let (_busy, res) = self
            .idle
            .wait_timeout_while(busy, timeout, |b| *b)
            .expect("gate lock");
        if res.timed_out() {
            tracing::warn!(
                ?timeout,
                "a transaction was still in flight at a revocation"
            );
        }
    }
}

/// Leaves the gate when dropped (also on a panic of the commit).
struct GateGuard(Arc<TxnGate>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().expect("gate lock") = false;
        self.0.idle.notify_all();
    }
}

impl<S: StageLogic> StageRunner<S> {
    /// Decodes, deduplicates (against the restored state, the batch still
    /// in flight, and earlier records of this batch), processes and encodes
    /// a batch, after the `tombstones` of expired dedup entries
    /// (`DedupState::take_tombstones`). Nothing is produced yet.
    pub(crate) async fn prepare(
        &self,
        dedup: &crate::dedup::DedupState,
        in_flight: Option<&HashMap<(i32, ArtifactId), Generation>>,
        items: &[Item],
        tombstones: &[(i32, ArtifactId)],
    ) -> Result<Prepared, BatchError> {
        let stage = S::STAGE;
        let name = stage.name();
        let t0 = Instant::now();

        // 1. Decode and decide.
        let mut pending: HashMap<(i32, ArtifactId), Generation> = HashMap::new();
        let mut plans: Vec<Plan<S::Input>> = Vec::with_capacity(items.len());
        for it in items {
            let plan = match self.codec.decode::<S::Input>(it.msg.payload()).await {
                Err(e) if e.is_retriable() => return Err(BatchError::Transient(e.to_string())),
                Err(e) => Plan::DeadLetter(e.to_string()),
                Ok(input) => {
                    let p = it.msg.partition();
                    let (id, generation) = (input.artifact_id(), input.generation());
                    let last = dedup
                        .last(p, id)
                        .max(pending.get(&(p, id)).copied())
                        .max(in_flight.and_then(|f| f.get(&(p, id)).copied()));
                    if input
                        .upstream_outcome()
                        .is_some_and(|o| !o.lets_pipeline_continue())
                    {
                        Plan::Skip("upstream_failed")
                    } else {
                        match decide(last, generation) {
                            DedupDecision::Duplicate => Plan::Skip("duplicate"),
                            DedupDecision::Stale => Plan::Skip("stale"),
                            DedupDecision::Process => {
                                pending.insert((p, id), generation);
                                Plan::Process(input)
                            }
                        }
                    }
                }
            };
            plans.push(plan);
        }
        let t_decoded = t0.elapsed();
        // 2. Process concurrently.
        let work: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| matches!(p, Plan::Process(_)).then_some(i))
            .collect();
        let plans_ref = &plans;
        let processing_time =
            &metrics::histogram!("artifact_stage_processing_seconds", "stage" => name);
        let mut done: Vec<Option<(Done<S::Result>, String)>> = Vec::new();
        done.resize_with(items.len(), || None);
        // The consumer is not polled while the batch is processed: records
        // are started (in order, a first round of `concurrency` whatever
        // the time) only while the start budget lasts, and the batch then
        // ends before the first record not started.
        let start_until = t0 + self.start_budget;
        let started = AtomicUsize::new(0);
        let concurrency = self.cfg.concurrency;
        let mut finished = futures::stream::iter(work.iter().copied())
            .take_while(|_| {
                futures::future::ready(
                    started.load(Ordering::Relaxed) < concurrency || Instant::now() < start_until,
                )
            })
            .map(|i| {
                started.fetch_add(1, Ordering::Relaxed);
                i
            })
            .map(|i| async move {
                let Plan::Process(input) = &plans_ref[i] else {
                    unreachable!("work holds processed items only")
                };
                let it = &items[i];
                let tp = artifact_kafka::trace::child_value(header(&it.msg, TRACEPARENT));
                let span = tracing::info_span!(
                    "record",
                    stage = name,
                    artifact_id = %input.artifact_id(),
                    generation = %input.generation(),
                    topic = it.msg.topic(),
                    partition = it.msg.partition(),
                    offset = it.msg.offset(),
                    traceparent = %tp,
                );
                let d = self
                    .process_with_retries(input, it, tp, processing_time)
                    .instrument(span)
                    .await;
                (i, d)
            })
            .buffer_unordered(self.cfg.concurrency);
        while let Some((i, d)) = finished.next().await {
            done[i] = Some(d);
        }
        drop(finished);
        let started = started.into_inner();
        let covered = work.get(started).copied().unwrap_or(items.len());
        if covered < items.len() {
            tracing::warn!(
                stage = name,
                started,
                left = items.len() - covered,
                budget_ms = self.start_budget.as_millis() as u64,
                "batch cut short: its records took longer than the consumer may go unpolled; the rest is read again"
            );
            plans.truncate(covered);
        }
        if done.iter().any(Option::is_some) {
            let started = Instant::now();
            let settled = self.logic.before_commit().await;
            metrics::histogram!("artifact_stage_before_commit_seconds", "stage" => name)
                .record(started.elapsed().as_secs_f64());
            settled.map_err(|e| {
                BatchError::Transient(format!("making the batch's writes durable: {e}"))
            })?;
        }

        let t_processed = t0.elapsed();
        // 3. Build the records of the transaction.
        let policy = self.cfg.retry_policy();
        let topics = &self.topics;
        // Looked up when the batch first needs them.
        let mut output_writer: Option<TopicWriter> = None;
        let mut dedup_writer: Option<TopicWriter> = None;
        // An outcome and a dedup record per item at most.
        let mut outs: Vec<Out> = Vec::with_capacity(2 * items.len() + tombstones.len());
        // Tombstones first: a key processed again in this batch keeps the
        // entry written after its tombstone.
        for &(p, id) in tombstones {
            outs.push(Out {
                topic: topics.dedup.clone(),
                partition: p,
                key: Some(id.to_string().into_bytes()),
                payload: None,
                headers: vec![],
                kind: "tombstone",
            });
        }
        let mut recorded: Vec<(i32, ArtifactId, Generation)> = Vec::new();
        let mut outcome_labels: Vec<&'static str> = Vec::new();
        let mut skipped: HashMap<&'static str, u64> = HashMap::new();
        for (i, plan) in plans.into_iter().enumerate() {
            let it = &items[i];
            let p = it.msg.partition();
            let key = it.msg.key().map(<[u8]>::to_vec);
            match plan {
                Plan::Skip(reason) => *skipped.entry(reason).or_default() += 1,
                Plan::DeadLetter(err) => {
                    tracing::warn!(stage = name, topic = it.msg.topic(), partition = p, offset = it.msg.offset(), error = %err, "undecodable record sent to the dead-letter topic");
                    outs.push(self.dead_letter(it, "undecodable", &err));
                }
                Plan::Process(input) => {
                    let (d, tp) = done[i].take().expect("every processed item has a result");
                    let (id, generation) = (input.artifact_id(), input.generation());
                    let outcome_event = match d {
                        Done::Ok(processed) => Some(StageEvent {
                            artifact_id: id,
                            generation,
                            context: processed.context,
                            outcome: processed.outcome,
                            result: processed.result,
                            processed_at: now_ms(),
                        }),
                        Done::Permanent(reason) => Some(self.failed(&input, reason)),
                        Done::Retriable(reason)
                            if it.delivery < policy.max_deliveries
                                && self.fits_as_copy(it, &reason) =>
                        {
                            let next = it.delivery + 1;
                            let not_before =
                                now_ms() + policy.topic_delay_for(next).as_millis() as i64;
                            let mut headers = self.source_headers(it, "retriable", &reason);
                            headers.push((headers::ATTEMPT, next.to_string()));
                            headers.push((headers::NOT_BEFORE, not_before.to_string()));
                            tracing::info!(stage = name, artifact_id = %id, %generation, delivery = next, not_before, error = %reason, "scheduled a delayed retry");
                            outs.push(Out {
                                topic: topics.retry.clone(),
                                partition: p,
                                key,
                                payload: Some(it.msg.payload().unwrap_or_default().to_vec()),
                                headers,
                                kind: "retry",
                            });
                            None
                        }
                        Done::Retriable(reason) if it.delivery < policy.max_deliveries => {
                            Some(self.failed(
                                &input,
                                format!(
                                    "cannot be retried: the record is too large to copy to the retry topic ({reason})"
                                ),
                            ))
                        }
                        Done::Retriable(reason) => Some(self.failed(
                            &input,
                            format!("gave up after {} deliveries: {reason}", it.delivery),
                        )),
                    };
                    let Some(mut event) = outcome_event else {
                        continue;
                    };
                    let writer = self
                        .writer_once(
                            &mut output_writer,
                            &topics.output,
                            EventSchema::output_of(stage),
                        )
                        .await?;
                    let key = id.to_string().into_bytes();
                    let mut output = Out {
                        topic: topics.output.clone(),
                        partition: p,
                        key: Some(key.clone()),
                        payload: Some(encoded(writer, &topics.output, &event)?),
                        headers: vec![(TRACEPARENT, tp)],
                        kind: "output",
                    };
                    if output.size() > self.max_record_bytes {
                        // An outcome the producer would refuse would fail
                        // every transaction it is in, for good: it becomes
                        // a permanent failure that says why.
                        let reason = format!(
                            "its outcome is a record of {} bytes, more than the {} a record may have (message.max.bytes)",
                            output.size(),
                            self.max_record_bytes
                        );
                        tracing::warn!(stage = name, artifact_id = %id, %generation, error = %reason, "outcome too large");
                        event = self.failed(&input, reason);
                        output.payload = Some(encoded(writer, &topics.output, &event)?);
                        if output.size() > self.max_record_bytes {
                            // Even its context is too large: a dead letter.
                            let reason = format!(
                                "the input's context alone makes an outcome of {} bytes, more than the {} a record may have (message.max.bytes)",
                                output.size(),
                                self.max_record_bytes
                            );
                            outs.push(self.dead_letter(it, "oversized", &reason));
                            continue;
                        }
                    }
                    outcome_labels.push(event.outcome.label());
                    let status = OutcomeRecord::from(event.outcome.clone()).status;
                    outs.push(output);
                    let entry = artifact_domain::dedup::DedupEntry {
                        artifact_id: id,
                        generation,
                        outcome_status: status,
                        processed_at: event.processed_at,
                    };
                    let writer = self
                        .writer_once(&mut dedup_writer, &topics.dedup, EventSchema::DedupEntry)
                        .await?;
                    let payload = encoded(writer, &topics.dedup, &entry)?;
                    outs.push(Out {
                        topic: topics.dedup.clone(),
                        partition: p,
                        key: Some(key),
                        payload: Some(payload),
                        headers: vec![],
                        kind: "dedup",
                    });
                    recorded.push((p, id, generation));
                }
            }
        }

        tracing::trace!(
            records = items.len(),
            produced = outs.len(),
            decode_ms = t_decoded.as_secs_f64() * 1e3,
            process_ms = (t_processed - t_decoded).as_secs_f64() * 1e3,
            encode_ms = (t0.elapsed() - t_processed).as_secs_f64() * 1e3,
            "batch prepared"
        );
        Ok(Prepared {
            covered,
            skipped,
            outs,
            recorded,
            outcome_labels,
        })
    }

    /// Starts committing a prepared batch on a blocking thread: in
    /// exactly-once mode one transaction with its records and offsets; in
    /// at-least-once mode its records, acknowledged (the loop commits the
    /// offsets when it settles the batch).
    pub(crate) fn start_commit<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        producer: &StageProducer,
        gate: &Arc<TxnGate>,
        prepared: Prepared,
        items: Vec<Item>,
        tombstones: Tombstones,
    ) -> Result<InFlight, (BatchError, Vec<Item>, Tombstones)> {
        let exactly_once = self.cfg.delivery == Delivery::ExactlyOnce;
        let group = match consumer.group_metadata() {
            _ if !exactly_once => None,
            Some(g) => Some(g),
            None => {
                let e = BatchError::Transient("no consumer group metadata yet".into());
                return Err((e, items, tombstones));
            }
        };
        let Prepared {
            covered: _,
            skipped,
            outs,
            recorded,
            outcome_labels,
        } = prepared;
        let produced = outs.iter().map(|o| o.kind).collect();
        // Within a batch a key's generations only grow, so the last wins.
        let generations = recorded
            .into_iter()
            .map(|(p, id, g)| ((p, id), g))
            .collect();
        let offsets = commit_offsets(&items);
        let producer = producer.clone();
        let abort_pending = self.abort_pending.clone();
        let guard = gate.enter();
        let handle = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let started = Instant::now();
            commit_blocking(&producer, &outs, offsets, group.as_ref(), &abort_pending)
                .map(|()| started.elapsed().as_secs_f64())
        });
        Ok(InFlight {
            items,
            generations,
            tombstones,
            outcome_labels,
            skipped,
            produced,
            handle,
            result: None,
        })
    }

    /// Waits for an in-flight batch and applies its result: on success the
    /// dedup state and the counters follow (and, at least once, the offsets
    /// are committed), and the retry offsets it committed are returned. On
    /// failure nothing of the batch was committed and its items come back
    /// to be read again.
    pub(crate) async fn settle<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        dedup: &mut crate::dedup::DedupState,
        flight: InFlight,
    ) -> Result<Vec<(i32, i64)>, (BatchError, Vec<Item>)> {
        let name = S::STAGE.name();
        let mut flight = flight;
        flight.finished().await;
        let InFlight {
            items,
            generations,
            tombstones,
            outcome_labels,
            skipped,
            produced,
            result,
            ..
        } = flight;
        let secs = match result.expect("finished sets the result") {
            Ok(secs) => secs,
            Err(e) => {
                dedup.return_tombstones(tombstones);
                return Err((e, items));
            }
        };
        // (A batch of tombstones alone has no offsets to commit.)
        if self.cfg.delivery == Delivery::AtLeastOnce && !items.is_empty() {
            let offsets = commit_offsets(&items);
            if let Err(e) = tokio::task::block_in_place(|| {
                consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            }) {
                return Err((BatchError::Transient(format!("commit offsets: {e}")), items));
            }
        }
        metrics::histogram!("artifact_stage_transaction_commit_seconds", "stage" => name)
            .record(secs);
        tracing::debug!(
            records = items.len(),
            produced = produced.len(),
            commit_ms = secs * 1e3,
            "batch committed"
        );
        // The transaction committed: the state follows.
        for ((p, id), generation) in generations {
            dedup.record(p, id, generation);
        }
        let mut by_kind: HashMap<&'static str, u64> = HashMap::new();
        for kind in produced {
            *by_kind.entry(kind).or_default() += 1;
        }
        for (kind, n) in by_kind {
            metrics::counter!("artifact_stage_records_produced_total", "stage" => name, "kind" => kind)
                .increment(n);
            if kind == "dlq" {
                metrics::counter!("artifact_stage_dlq_records_total", "stage" => name).increment(n);
            }
            if kind == "retry" {
                metrics::counter!("artifact_stage_retries_total", "stage" => name, "kind" => "topic")
                    .increment(n);
            }
        }
        for (reason, n) in skipped {
            metrics::counter!("artifact_stage_skipped_total", "stage" => name, "reason" => reason)
                .increment(n);
        }
        let retried = items.iter().filter(|it| it.source == Source::Retry).count() as u64;
        for (source, n) in [("input", items.len() as u64 - retried), ("retry", retried)] {
            if n > 0 {
                metrics::counter!("artifact_stage_records_consumed_total", "stage" => name, "source" => source)
                    .increment(n);
            }
        }
        let mut by_outcome: HashMap<&'static str, u64> = HashMap::new();
        for l in outcome_labels {
            *by_outcome.entry(l).or_default() += 1;
        }
        for (l, n) in by_outcome {
            metrics::counter!("artifact_stage_outcomes_total", "stage" => name, "outcome" => l)
                .increment(n);
        }
        Ok(items
            .iter()
            .filter(|it| it.source == Source::Retry)
            .map(|it| (it.msg.partition(), it.msg.offset() + 1))
            .collect())
    }

    /// The writer held in `slot`, looked up on first use.
    async fn writer_once<'a>(
        &self,
        slot: &'a mut Option<TopicWriter>,
        topic: &str,
        schema: EventSchema,
    ) -> Result<&'a TopicWriter, BatchError> {
        if slot.is_none() {
            let writer = self.codec.writer(topic, schema).await.map_err(|e| {
                if e.is_retriable() {
                    BatchError::Transient(e.to_string())
                } else {
                    BatchError::Fatal(format!("cannot encode for {topic}: {e}"))
                }
            })?;
            *slot = Some(writer);
        }
        Ok(slot.as_ref().expect("set above"))
    }

    fn failed(&self, input: &S::Input, reason: String) -> StageEvent<S::Result> {
        StageEvent {
            artifact_id: input.artifact_id(),
            generation: input.generation(),
            context: input.context(),
            outcome: Outcome::permanent(reason),
            result: None,
            processed_at: now_ms(),
        }
    }

    /// Whether `it`'s bytes, with the headers of a retry, fit in a record.
    fn fits_as_copy(&self, it: &Item, err: &str) -> bool {
        let size = record_size(
            it.msg.key().map_or(0, <[u8]>::len),
            it.msg.payload().map_or(0, <[u8]>::len),
            &self.source_headers(it, "retriable", err),
        );
        // Room for the attempt and not-before headers.
        size + 64 <= self.max_record_bytes
    }

    /// `it` as a dead letter: its key, bytes and headers naming the error
    /// and where it came from. Bytes that would make the letter larger
    /// than a record may be are left out (`x-payload-omitted` gives their
    /// size); the record stays where the headers say.
    fn dead_letter(&self, it: &Item, kind: &str, err: &str) -> Out {
        let mut letter = Out {
            topic: self.topics.dlq.clone(),
            partition: it.msg.partition(),
            key: it.msg.key().map(<[u8]>::to_vec),
            payload: Some(it.msg.payload().unwrap_or_default().to_vec()),
            headers: self.source_headers(it, kind, err),
            kind: "dlq",
        };
        if letter.size() > self.max_record_bytes {
            let omitted = letter.payload.take().map_or(0, |p| p.len());
            letter
                .headers
                .push((headers::PAYLOAD_OMITTED, omitted.to_string()));
        }
        letter
    }

    fn source_headers(&self, it: &Item, kind: &str, err: &str) -> Vec<(&'static str, String)> {
        let (topic, partition, offset) = match it.source {
            // A retry record keeps naming where the record first came from.
            Source::Retry => (
                header(&it.msg, headers::SOURCE_TOPIC)
                    .unwrap_or(it.msg.topic())
                    .to_owned(),
                header(&it.msg, headers::SOURCE_PARTITION)
                    .map_or(it.msg.partition().to_string(), str::to_owned),
                header(&it.msg, headers::SOURCE_OFFSET)
                    .map_or(it.msg.offset().to_string(), str::to_owned),
            ),
            Source::Input => (
                it.msg.topic().to_owned(),
                it.msg.partition().to_string(),
                it.msg.offset().to_string(),
            ),
        };
        let mut h = vec![
            (headers::ERROR, err.to_owned()),
            (headers::ERROR_KIND, kind.to_owned()),
            (headers::SOURCE_TOPIC, topic),
            (headers::SOURCE_PARTITION, partition),
            (headers::SOURCE_OFFSET, offset),
            (headers::STAGE, S::STAGE.name().to_owned()),
        ];
        if let Some(tp) = header(&it.msg, TRACEPARENT) {
            h.push((TRACEPARENT, tp.to_owned()));
        }
        h
    }

    async fn process_with_retries(
        &self,
        input: &S::Input,
        it: &Item,
        traceparent: String,
        processing_time: &metrics::Histogram,
    ) -> (Done<S::Result>, String) {
        let name = S::STAGE.name();
        let policy = self.cfg.retry_policy();
        let limit = Duration::from_millis(self.cfg.processing_timeout_ms);
        let mut last = String::new();
        let mut ctx = RecordContext {
            topic: it.msg.topic().to_owned(),
            partition: it.msg.partition(),
            offset: it.msg.offset(),
            attempt: 0,
            traceparent,
        };
        for attempt in 1..=policy.inline_attempts {
            ctx.attempt = it
                .delivery
                .saturating_sub(1)
                .saturating_mul(policy.inline_attempts)
                .saturating_add(attempt);
            let started = Instant::now();
            let fut = std::panic::AssertUnwindSafe(self.logic.process(input, &ctx)).catch_unwind();
            let res = tokio::time::timeout(limit, fut).await;
            processing_time.record(started.elapsed().as_secs_f64());
            match res {
                Ok(Ok(Ok(p))) => return (Done::Ok(p), ctx.traceparent),
                Ok(Ok(Err(StageError::Permanent(r)))) => {
                    tracing::info!(error = %r, "permanent failure");
                    return (Done::Permanent(r), ctx.traceparent);
                }
                Ok(Ok(Err(StageError::Retriable(r)))) => last = r,
                Ok(Err(panic)) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(panic = %what, "stage panicked");
                    return (
                        Done::Permanent(format!("stage panicked: {what}")),
                        ctx.traceparent,
                    );
                }
                Err(_) => last = format!("processing took longer than {limit:?}"),
            }
            tracing::info!(attempt, error = %last, "retriable failure");
            if attempt < policy.inline_attempts {
                metrics::counter!("artifact_stage_retries_total", "stage" => name, "kind" => "inline").increment(1);
                tokio::time::sleep(retry::jittered(
                    policy.inline_backoff,
                    policy.inline_backoff_max,
                    attempt,
                ))
                .await;
            }
        }
        (Done::Retriable(last), ctx.traceparent)
    }
}

/// Produces a batch's records and, in exactly-once mode (`group` given),
/// commits them with the consumed offsets in one transaction. Runs on a
/// blocking thread: librdkafka's transaction calls block.
fn commit_blocking(
    producer: &StageProducer,
    outs: &[Out],
    offsets: TopicPartitionList,
    group: Option<&ConsumerGroupMetadata>,
    abort_pending: &AtomicBool,
) -> Result<(), BatchError> {
    let timeout = Duration::from_secs(30);
    if group.is_some() {
        if abort_pending.load(Ordering::Acquire) {
            producer
                .abort_transaction(timeout)
                .map_err(|e| txn_error("finishing an earlier abort", e))?;
            abort_pending.store(false, Ordering::Release);
        }
        producer
            .begin_transaction()
            .map_err(|e| txn_error("begin transaction", e))?;
    }
    let t0 = Instant::now();
    let result = (|| {
        let deliveries = producer.context();
        deliveries.begin();
        for o in outs {
            send(producer, o)?;
        }
        let t_sent = t0.elapsed();
        let Some(group) = group else {
            // At least once: every record acknowledged before the offsets move.
            return deliveries
                .wait_all(timeout)
                .map_err(|e| BatchError::Transient(format!("delivery: {e}")));
        };
        // The offsets go out while the records are being acknowledged. The
        // commit waits for every record and fails if any failed.
        producer
            .send_offsets_to_transaction(&offsets, group, timeout)
            .map_err(|e| txn_error("send offsets to transaction", e))?;
        let t_offsets = t0.elapsed();
        commit_transaction(producer, timeout)?;
        tracing::trace!(
            send_ms = t_sent.as_secs_f64() * 1e3,
            offsets_ms = (t_offsets - t_sent).as_secs_f64() * 1e3,
            commit_ms = (t0.elapsed() - t_offsets).as_secs_f64() * 1e3,
            "transaction phases"
        );
        Ok(())
    })();
    let Err(e) = result else { return Ok(()) };
    if group.is_some()
        && let Err(abort) = producer.abort_transaction(timeout)
    {
        match txn_error("abort transaction", abort) {
            BatchError::Fatal(f) => return Err(BatchError::Fatal(f)),
            // Not finished (the broker is away): call it again first next
            // time, as librdkafka requires.
            BatchError::Transient(_) => abort_pending.store(true, Ordering::Release),
        }
    }
    Err(e)
}

/// librdkafka's `rd_kafka_commit_transaction`, called directly. rdkafka's
/// wrapper flushes first by polling the delivery-report queue in 100 ms
/// steps; the producer's polling thread serves that queue, so the wrapper
/// could wait out a whole step after the last acknowledgement. librdkafka's
/// commit flushes by itself, in 10 ms steps.
///
/// A retriable failure (the records not all acknowledged, or no answer to
/// `EndTxn`, within `timeout`) leaves the commit under way in librdkafka:
/// the transaction may yet commit, and librdkafka refuses any other
/// transactional call (an abort answers `_CONFLICT`) until the commit is
/// called again. So it is called again until it succeeds or fails for good
/// (an abortable or fatal error); returning earlier would rewind records
/// whose outputs may still commit.
fn commit_transaction(producer: &StageProducer, timeout: Duration) -> Result<(), BatchError> {
    let started = Instant::now();
    let mut attempt = 1u32;
    loop {
        match commit_once(producer, timeout) {
            Ok(()) => return Ok(()),
            Err(Commit::Retriable(message)) if started.elapsed() >= COMMIT_GIVE_UP => {
                // Neither committed nor aborted, and nothing else may be
                // called: the process stops, and the instance that starts
                // next fences the transactional id, which settles it.
                return Err(BatchError::Fatal(format!(
                    "{message}; the commit did not finish within {COMMIT_GIVE_UP:?}, stopping so that a restart settles the transaction"
                )));
            }
            Err(Commit::Retriable(message)) => {
                tracing::warn!(attempt, error = %message, "transaction commit not finished; finishing it");
                attempt += 1;
            }
            Err(Commit::Failed(e)) => return Err(e),
        }
    }
}

/// How long a retriable commit is called again before the stage stops.
const COMMIT_GIVE_UP: Duration = Duration::from_secs(120);

/// How one call of `rd_kafka_commit_transaction` failed.
enum Commit {
    /// The commit goes on in the background; call it again.
    Retriable(String),
    /// Abort (transient) or stop (fatal).
    Failed(BatchError),
}

fn commit_once(producer: &StageProducer, timeout: Duration) -> Result<(), Commit> {
    use rdkafka::bindings as rd;
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the live producer's, borrowed for the call.
    let err = unsafe { rd::rd_kafka_commit_transaction(producer.client().native_ptr(), millis) };
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: `err` is a non-null error object returned to us; it is read
    // and then destroyed exactly once.
    let (message, fatal, retriable, abortable) = unsafe {
        let message = std::ffi::CStr::from_ptr(rd::rd_kafka_error_string(err))
            .to_string_lossy()
            .into_owned();
        let fatal = rd::rd_kafka_error_is_fatal(err) != 0;
        let retriable = rd::rd_kafka_error_is_retriable(err) != 0;
        let abortable = rd::rd_kafka_error_txn_requires_abort(err) != 0;
        rd::rd_kafka_error_destroy(err);
        (message, fatal, retriable, abortable)
    };
    let message = format!("commit transaction: {message}");
    Err(if fatal {
        Commit::Failed(BatchError::Fatal(message))
    } else if retriable && !abortable {
        Commit::Retriable(message)
    } else {
        Commit::Failed(BatchError::Transient(message))
    })
}

/// `value` encoded for `topic`; a value that does not fit its schema is a
/// bug the runner cannot get past.
fn encoded<T: serde::Serialize>(
    writer: &TopicWriter,
    topic: &str,
    value: &T,
) -> Result<Vec<u8>, BatchError> {
    writer
        .encode(value)
        .map_err(|e| BatchError::Fatal(format!("cannot encode for {topic}: {e}")))
}

/// Enqueues one record, waiting while the producer's queue is full.
fn send(producer: &StageProducer, o: &Out) -> Result<(), BatchError> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&o.topic);
    if let Some(payload) = &o.payload {
        rec = rec.payload(payload.as_slice());
    }
    if !o.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
        for (k, v) in &o.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        rec = rec.headers(headers);
    }
    if let Some(k) = &o.key {
        rec = rec.key(k.as_slice());
    }
    rec = rec.partition(o.partition);
    let deadline = Instant::now() + Duration::from_secs(30);
    let deliveries = producer.context();
    loop {
        deliveries.enqueuing();
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                if Instant::now() < deadline =>
            {
                deliveries.not_enqueued();
                // librdkafka's queue drains as the broker acknowledges.
                std::thread::sleep(Duration::from_millis(5));
                rec = r;
            }
            Err((e, _)) => {
                deliveries.not_enqueued();
                return Err(txn_error("produce", e));
            }
        }
    }
}

/// Puts the consumers back at the first offset of each partition in `items`,
/// so those records are read again (nothing of them was committed).
pub(crate) fn rewind<C: ConsumerContext + 'static>(
    consumer: &StreamConsumer<C>,
    retry_consumer: &StreamConsumer,
    delayed: &mut BTreeMap<i32, VecDeque<Delayed>>,
    items: &[Item],
) {
    let mut first: HashMap<(String, i32, Source), i64> = HashMap::new();
    for it in items {
        let k = (it.msg.topic().to_owned(), it.msg.partition(), it.source);
        let o = it.msg.offset();
        first.entry(k).and_modify(|v| *v = (*v).min(o)).or_insert(o);
    }
    for ((topic, p, source), offset) in first {
        let res = match source {
            Source::Input => {
                consumer.seek(&topic, p, Offset::Offset(offset), Duration::from_secs(5))
            }
            Source::Retry => {
                // Held retries of this partition come after it: read them again too.
                delayed.remove(&p);
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition(&topic, p);
                let _ = retry_consumer.resume(&tpl);
                retry_consumer.seek(&topic, p, Offset::Offset(offset), Duration::from_secs(5))
            }
        };
        if let Err(e) = res {
            tracing::warn!(%topic, partition = p, offset, error = %e, "rewind failed");
        }
    }
}
