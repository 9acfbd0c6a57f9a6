//! One batch: decode, dedup, process, and commit in one transaction.

use super::{Delayed, Delivery, Item, Source, StageRunner, commit_offsets};
use crate::kafka::header;
use crate::now_ms;
use crate::retry;
use crate::schemas::EventSchema;
use crate::stage::{Processed, RecordContext, StageError, StageInput, StageLogic};
use crate::trace::{TRACEPARENT, TraceParent};
use artifact_domain::events::StageEvent;
use artifact_domain::outcome::OutcomeRecord;
use artifact_domain::{ArtifactId, DedupDecision, Generation, Outcome, decide};
use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
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
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    kind: &'static str,
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

impl<S: StageLogic> StageRunner<S> {
    pub(crate) async fn handle_batch<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        producer: &FutureProducer,
        dedup: &mut crate::dedup::DedupState,
        items: &[Item],
    ) -> Result<(), BatchError> {
        let stage = S::STAGE;
        let name = stage.name();

        // 1. Decode and decide.
        let mut pending: HashMap<(i32, ArtifactId), Generation> = HashMap::new();
        let mut plans: Vec<Plan<S::Input>> = Vec::with_capacity(items.len());
        for it in items {
            let source = if it.source == Source::Input {
                "input"
            } else {
                "retry"
            };
            metrics::counter!("artifact_stage_records_consumed_total", "stage" => name, "source" => source)
                .increment(1);
            let plan = match self.codec.decode::<S::Input>(it.msg.payload()).await {
                Err(e) if e.is_retriable() => return Err(BatchError::Transient(e.to_string())),
                Err(e) => Plan::DeadLetter(e.to_string()),
                Ok(input) => {
                    let p = it.msg.partition();
                    let (id, generation) = (input.artifact_id(), input.generation());
                    let last = dedup.last(p, id).max(pending.get(&(p, id)).copied());
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
            if let Plan::Skip(reason) = &plan {
                metrics::counter!("artifact_stage_skipped_total", "stage" => name, "reason" => *reason)
                    .increment(1);
            }
            plans.push(plan);
        }

        // 2. Process concurrently.
        let work: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| matches!(p, Plan::Process(_)).then_some(i))
            .collect();
        let plans_ref = &plans;
        let mut done: HashMap<usize, (Done<S::Result>, String)> = futures::stream::iter(work)
            .map(|i| async move {
                let Plan::Process(input) = &plans_ref[i] else {
                    unreachable!("work holds processed items only")
                };
                let it = &items[i];
                let tp = TraceParent::continue_from(header(&it.msg, TRACEPARENT)).to_string();
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
                    .process_with_retries(input, it, &tp)
                    .instrument(span)
                    .await;
                (i, (d, tp))
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;

        // 3. Build the records of the transaction.
        let policy = self.cfg.retry_policy();
        let output_topic = self.names.output(stage);
        let mut outs: Vec<Out> = Vec::new();
        let mut recorded: Vec<(i32, ArtifactId, Generation)> = Vec::new();
        let mut outcome_labels: Vec<&'static str> = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            let it = &items[i];
            let p = it.msg.partition();
            let key = it.msg.key().map(<[u8]>::to_vec);
            match plan {
                Plan::Skip(_) => {}
                Plan::DeadLetter(err) => {
                    tracing::warn!(stage = name, topic = it.msg.topic(), partition = p, offset = it.msg.offset(), error = %err, "undecodable record sent to the dead-letter topic");
                    outs.push(Out {
                        topic: self.names.dlq(stage),
                        partition: Some(p),
                        key,
                        payload: it.msg.payload().unwrap_or_default().to_vec(),
                        headers: self.source_headers(it, "undecodable", &err),
                        kind: "dlq",
                    });
                }
                Plan::Process(input) => {
                    let (d, tp) = done.remove(&i).expect("every processed item has a result");
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
                        Done::Retriable(reason) if it.delivery < policy.max_deliveries => {
                            let next = it.delivery + 1;
                            let not_before =
                                now_ms() + policy.topic_delay_for(next).as_millis() as i64;
                            let mut headers = self.source_headers(it, "retriable", &reason);
                            headers.push((retry::ATTEMPT, next.to_string()));
                            headers.push((retry::NOT_BEFORE, not_before.to_string()));
                            tracing::info!(stage = name, artifact_id = %id, %generation, delivery = next, not_before, error = %reason, "scheduled a delayed retry");
                            metrics::counter!("artifact_stage_retries_total", "stage" => name, "kind" => "topic").increment(1);
                            outs.push(Out {
                                topic: self.names.retry(stage),
                                partition: Some(p),
                                key,
                                payload: it.msg.payload().unwrap_or_default().to_vec(),
                                headers,
                                kind: "retry",
                            });
                            None
                        }
                        Done::Retriable(reason) => Some(self.failed(
                            &input,
                            format!("gave up after {} deliveries: {reason}", it.delivery),
                        )),
                    };
                    let Some(event) = outcome_event else { continue };
                    outcome_labels.push(event.outcome.label());
                    let status = OutcomeRecord::from(event.outcome.clone()).status;
                    let payload = self
                        .encode(&output_topic, EventSchema::output_of(stage), &event)
                        .await?;
                    outs.push(Out {
                        topic: output_topic.clone(),
                        partition: None,
                        key: Some(id.to_string().into_bytes()),
                        payload,
                        headers: vec![(TRACEPARENT, tp)],
                        kind: "output",
                    });
                    let entry = crate::dedup::DedupEntry {
                        artifact_id: id,
                        generation,
                        outcome_status: status,
                        processed_at: event.processed_at,
                    };
                    let dedup_topic = self.names.dedup(stage);
                    let payload = self
                        .encode(&dedup_topic, EventSchema::DedupEntry, &entry)
                        .await?;
                    outs.push(Out {
                        topic: dedup_topic,
                        partition: Some(p),
                        key: Some(id.to_string().into_bytes()),
                        payload,
                        headers: vec![],
                        kind: "dedup",
                    });
                    recorded.push((p, id, generation));
                }
            }
        }

        // 4. Produce and commit.
        let offsets = commit_offsets(items);
        let started = Instant::now();
        self.commit(consumer, producer, &outs, offsets).await?;
        let commit_secs = started.elapsed().as_secs_f64();
        metrics::histogram!("artifact_stage_transaction_commit_seconds", "stage" => name)
            .record(commit_secs);
        tracing::debug!(
            records = items.len(),
            produced = outs.len(),
            commit_secs,
            "batch committed"
        );

        // 5. The transaction committed: the state follows.
        for (p, id, generation) in recorded {
            dedup.record(p, id, generation);
        }
        for o in &outs {
            metrics::counter!("artifact_stage_records_produced_total", "stage" => name, "kind" => o.kind)
                .increment(1);
            if o.kind == "dlq" {
                metrics::counter!("artifact_stage_dlq_records_total", "stage" => name).increment(1);
            }
        }
        for l in outcome_labels {
            metrics::counter!("artifact_stage_outcomes_total", "stage" => name, "outcome" => l)
                .increment(1);
        }
        Ok(())
    }

    async fn encode<T: serde::Serialize>(
        &self,
        topic: &str,
        schema: EventSchema,
        value: &T,
    ) -> Result<Vec<u8>, BatchError> {
        self.codec.encode(topic, schema, value).await.map_err(|e| {
            if e.is_retriable() {
                BatchError::Transient(e.to_string())
            } else {
                BatchError::Fatal(format!("cannot encode for {topic}: {e}"))
            }
        })
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

    fn source_headers(&self, it: &Item, kind: &str, err: &str) -> Vec<(&'static str, String)> {
        let (topic, partition, offset) = match it.source {
            // A retry record keeps naming where the record first came from.
            Source::Retry => (
                header(&it.msg, retry::SOURCE_TOPIC)
                    .unwrap_or(it.msg.topic())
                    .to_owned(),
                header(&it.msg, retry::SOURCE_PARTITION)
                    .map_or(it.msg.partition().to_string(), str::to_owned),
                header(&it.msg, retry::SOURCE_OFFSET)
                    .map_or(it.msg.offset().to_string(), str::to_owned),
            ),
            Source::Input => (
                it.msg.topic().to_owned(),
                it.msg.partition().to_string(),
                it.msg.offset().to_string(),
            ),
        };
        let mut h = vec![
            (retry::ERROR, err.to_owned()),
            (retry::ERROR_KIND, kind.to_owned()),
            (retry::SOURCE_TOPIC, topic),
            (retry::SOURCE_PARTITION, partition),
            (retry::SOURCE_OFFSET, offset),
            (retry::STAGE, S::STAGE.name().to_owned()),
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
        traceparent: &str,
    ) -> Done<S::Result> {
        let name = S::STAGE.name();
        let policy = self.cfg.retry_policy();
        let limit = Duration::from_millis(self.cfg.processing_timeout_ms);
        let mut last = String::new();
        for attempt in 1..=policy.inline_attempts {
            let ctx = RecordContext {
                topic: it.msg.topic().to_owned(),
                partition: it.msg.partition(),
                offset: it.msg.offset(),
                attempt: (it.delivery - 1) * policy.inline_attempts + attempt,
                traceparent: traceparent.to_owned(),
            };
            let started = Instant::now();
            let fut = std::panic::AssertUnwindSafe(self.logic.process(input, &ctx)).catch_unwind();
            let res = tokio::time::timeout(limit, fut).await;
            metrics::histogram!("artifact_stage_processing_seconds", "stage" => name)
                .record(started.elapsed().as_secs_f64());
            match res {
                Ok(Ok(Ok(p))) => return Done::Ok(p),
                Ok(Ok(Err(StageError::Permanent(r)))) => {
                    tracing::info!(error = %r, "permanent failure");
                    return Done::Permanent(r);
                }
                Ok(Ok(Err(StageError::Retriable(r)))) => last = r,
                Ok(Err(panic)) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "unknown panic".into());
                    tracing::error!(panic = %what, "stage panicked");
                    return Done::Permanent(format!("stage panicked: {what}"));
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
        Done::Retriable(last)
    }

    async fn commit<C: ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        producer: &FutureProducer,
        outs: &[Out],
        offsets: TopicPartitionList,
    ) -> Result<(), BatchError> {
        let exactly_once = self.cfg.delivery == Delivery::ExactlyOnce;
        let timeout = Duration::from_secs(30);
        if exactly_once {
            if self.abort_pending.load(Ordering::Acquire) {
                tokio::task::block_in_place(|| producer.abort_transaction(timeout))
                    .map_err(|e| txn_error("finishing an earlier abort", e))?;
                self.abort_pending.store(false, Ordering::Release);
            }
            tokio::task::block_in_place(|| producer.begin_transaction())
                .map_err(|e| txn_error("begin transaction", e))?;
        }
        let result = async {
            let mut deliveries = Vec::with_capacity(outs.len());
            for o in outs {
                let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
                for (k, v) in &o.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v.as_bytes()),
                    });
                }
                let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&o.topic)
                    .payload(o.payload.as_slice())
                    .headers(headers);
                if let Some(k) = &o.key {
                    rec = rec.key(k.as_slice());
                }
                if let Some(p) = o.partition {
                    rec = rec.partition(p);
                }
                match producer.send_result(rec) {
                    Ok(f) => deliveries.push(f),
                    Err((e, _)) => return Err(txn_error("produce", e)),
                }
            }
            // Wait for every acknowledgement before the offsets move: at
            // least once needs it, and in a transaction it names a failed
            // record early and keeps the commit's own flush short.
            for d in deliveries {
                match d.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(txn_error("delivery", e)),
                    Err(_) => return Err(BatchError::Transient("delivery cancelled".into())),
                }
            }
            if exactly_once {
                let meta = consumer.group_metadata().ok_or_else(|| {
                    BatchError::Transient("no consumer group metadata yet".into())
                })?;
                tokio::task::block_in_place(|| {
                    producer.send_offsets_to_transaction(&offsets, &meta, timeout)
                })
                .map_err(|e| txn_error("send offsets to transaction", e))?;
                tokio::task::block_in_place(|| producer.commit_transaction(timeout))
                    .map_err(|e| txn_error("commit transaction", e))?;
            } else {
                tokio::task::block_in_place(|| {
                    consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)
                })
                .map_err(|e| BatchError::Transient(format!("commit offsets: {e}")))?;
            }
            Ok(())
        }
        .await;
        let Err(e) = result else { return Ok(()) };
        if exactly_once
            && let Err(abort) = tokio::task::block_in_place(|| producer.abort_transaction(timeout))
        {
            match txn_error("abort transaction", abort) {
                BatchError::Fatal(f) => return Err(BatchError::Fatal(f)),
                // Not finished (the broker is away): call it again first
                // next time, as librdkafka requires.
                BatchError::Transient(_) => self.abort_pending.store(true, Ordering::Release),
            }
        }
        Err(e)
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
