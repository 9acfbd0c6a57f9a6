//! The exactly-once stage runner: consume, transform, produce.
//!
//! Delivery guarantee (default `exactly-once`): for every input record, a
//! `read_committed` reader of the stage's topics sees exactly one committed
//! outcome per `(artifact_id, generation)`, whatever crashes happen. Each
//! batch of input records is handled in one Kafka transaction holding its
//! outcome events, the dedup-state updates, retry and dead-letter records,
//! and the consumed offsets (`send_offsets_to_transaction` with the group
//! metadata, so a fenced zombie cannot commit). A crash before the commit
//! aborts the transaction and the batch is read again; the dedup state,
//! restored from the compacted dedup topic before a partition's first record
//! is processed, skips what was already committed.
//!
//! The loop, per batch:
//! 1. collect up to N records or T milliseconds from the input topic and the
//!    due records of the retry topic (the owner of input partition `p` also
//!    owns retry partition `p`);
//! 2. decode; undecodable records become dead letters;
//! 3. skip duplicates and stale generations (keyed dedup state), and inputs
//!    whose previous stage failed;
//! 4. process the rest concurrently, each bounded in time, with in-process
//!    retries; still-retriable failures go to the retry topic with a
//!    not-before time, until the delivery limit makes them permanent;
//! 5. commit everything in one transaction; on a transient failure abort,
//!    rewind to the batch's first offsets, back off and report not-ready.
//!
//! Retry records below the committed retry offsets are deleted in the
//! background (`purge`): the retry topic keeps the pending ones for good.

mod batch;
pub mod config;
mod context;
mod pace;
mod producer;
mod purge;

pub use config::{Delivery, RunnerConfig, RunnerConfigError};

use crate::codec::AvroCodec;
use crate::config::ConnectionConfig;
use crate::dedup::{DedupState, restore_partition};
use crate::kafka::{FETCH_QUEUE_BACKOFF_MS, consumer_config, header, producer_config};
use crate::now_ms;
use crate::retry;
use crate::stage::StageLogic;
use crate::telemetry::Health;
use crate::topics::{TopicNames, partition_counts};
use context::{Assignment, StageContext};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most tombstones of expired dedup entries a transaction of `records`
/// input records writes. A rotation expires a retention's worth of keys at
/// once; written a few per record, they spread over the traffic that
/// follows instead of swelling a few transactions (and every hop's latency).
/// An idle stage writes them in transactions of their own, of
/// `max_tombstones(TRANSACTION_MAX_RECORDS)` at most.
fn max_tombstones(records: usize) -> usize {
    2 * records + 100
}

/// The runner stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The stage's topics are missing (may be created shortly).
    #[error("{0}")]
    TopicsMissing(String),
    /// The stage's topics do not have one partition count.
    #[error("{0}")]
    NotCoPartitioned(String),
    /// A Kafka client could not be created or failed fatally (e.g. fenced by
    /// a newer instance with the same transactional id).
    #[error("fatal Kafka error: {0}")]
    Fatal(String),
}

/// Where a collected record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    Input,
    Retry,
}

/// A collected record.
pub(crate) struct Item {
    pub msg: OwnedMessage,
    pub source: Source,
    /// 1 for the first delivery; from the `x-attempt` header on retries.
    pub delivery: u32,
    /// Assignment epoch when collected.
    pub epoch: u64,
}

impl Item {
    /// A record of the input topic, on its first delivery.
    fn input(msg: OwnedMessage, epoch: u64) -> Self {
        Item {
            msg,
            source: Source::Input,
            delivery: 1,
            epoch,
        }
    }
}

/// A retry record held until its not-before time.
struct Delayed {
    item: Item,
    not_before_ms: i64,
}

/// The topics a stage writes to.
pub(crate) struct StageTopics {
    pub output: Arc<str>,
    pub dedup: Arc<str>,
    pub retry: Arc<str>,
    pub dlq: Arc<str>,
}

impl StageTopics {
    fn new(names: &TopicNames, stage: artifact_domain::Stage) -> Self {
        StageTopics {
            output: names.output(stage).into(),
            dedup: names.dedup(stage).into(),
            retry: names.retry(stage).into(),
            dlq: names.dlq(stage).into(),
        }
    }
}

/// Runs one stage.
pub struct StageRunner<S: StageLogic> {
    pub(crate) logic: Arc<S>,
    pub(crate) conn: ConnectionConfig,
    pub(crate) cfg: RunnerConfig,
    pub(crate) names: TopicNames,
    /// The topics the stage writes, named once.
    pub(crate) topics: StageTopics,
    pub(crate) codec: Arc<AvroCodec>,
    pub(crate) health: Health,
    pub(crate) group: String,
    /// An abort that did not finish (e.g. it timed out while the broker was
    /// away): librdkafka requires the same call again before anything else.
    pub(crate) abort_pending: Arc<std::sync::atomic::AtomicBool>,
    /// The consumers' `max.poll.interval.ms`: the operator's, else the
    /// runner's (`RunnerConfig::max_poll_interval`).
    pub(crate) max_poll_interval: Duration,
    /// How long a batch may start records (`RunnerConfig::start_budget`).
    pub(crate) start_budget: Duration,
    /// The largest record the producer writes (`message.max.bytes`).
    pub(crate) max_record_bytes: usize,
}

impl<S: StageLogic> StageRunner<S> {
    /// A runner for `logic`.
    pub fn new(
        logic: S,
        conn: ConnectionConfig,
        cfg: RunnerConfig,
        health: Health,
    ) -> Result<Self, RunnerError> {
        let codec = AvroCodec::new(&conn.schema_registry_url)
            .map_err(|e| RunnerError::Fatal(e.to_string()))?;
        let group = cfg
            .consumer_group
            .clone()
            .unwrap_or_else(|| S::STAGE.name().to_owned());
        let names = TopicNames::from_config(&conn);
        let property = |name: &str| -> Result<Option<u64>, RunnerError> {
            let Some((_, v)) = conn
                .kafka_properties
                .0
                .iter()
                .rev()
                .find(|(k, _)| k == name)
            else {
                return Ok(None);
            };
            v.parse().map(Some).map_err(|_| {
                RunnerError::Fatal(format!("KAFKA_PROPERTIES {name}={v} is not a whole number"))
            })
        };
        let max_poll_interval = property("max.poll.interval.ms")?
            .map_or_else(|| cfg.max_poll_interval(), Duration::from_millis);
        // librdkafka's default.
        let max_record_bytes = property("message.max.bytes")?.unwrap_or(1_000_000) as usize;
        let start_budget = cfg.start_budget(max_poll_interval);
        if start_budget.is_zero() {
            tracing::warn!(
                max_poll_interval_ms = max_poll_interval.as_millis() as u64,
                worst_record_ms = cfg.worst_record_time().as_millis() as u64,
                "max.poll.interval.ms is shorter than one record's worst time \
                 (PROCESSING_TIMEOUT_MS times RETRY_INLINE_ATTEMPTS): a batch \
                 starts one record per concurrent slot and may still outlive it"
            );
        }
        Ok(StageRunner {
            logic: Arc::new(logic),
            topics: StageTopics::new(&names, S::STAGE),
            names,
            conn,
            cfg,
            codec: Arc::new(codec),
            health,
            group,
            abort_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            max_poll_interval,
            start_budget,
            max_record_bytes,
        })
    }

    /// A record from the retry topic joins the batch when due and nothing of
    /// its partition is held; otherwise it is held, in order, and its
    /// partition paused until the head is due.
    fn on_retry_record(
        &self,
        msg: OwnedMessage,
        epoch: u64,
        retry_consumer: &StreamConsumer,
        delayed: &mut BTreeMap<i32, VecDeque<Delayed>>,
        items: &mut Vec<Item>,
    ) {
        // A retry record is at least the second delivery; a header that
        // says otherwise (or nothing readable) counts as the second.
        let delivery = header(&msg, retry::ATTEMPT)
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(2, |d| d.clamp(2, 1_000_000));
        let not_before_ms = header(&msg, retry::NOT_BEFORE)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let p = msg.partition();
        let item = Item {
            msg,
            source: Source::Retry,
            delivery,
            epoch,
        };
        let queue = delayed.entry(p).or_default();
        if queue.is_empty() && not_before_ms <= now_ms() {
            items.push(item);
            return;
        }
        if queue.is_empty() {
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition(&self.topics.retry, p);
            let _ = retry_consumer.pause(&tpl);
        }
        queue.push_back(Delayed {
            item,
            not_before_ms,
        });
    }

    /// Checks that the stage's topics exist with one partition count.
    fn check_topics(&self) -> Result<usize, RunnerError> {
        let stage = S::STAGE;
        let topics = vec![
            self.names.input(stage),
            self.names.output(stage),
            self.names.dedup(stage),
            self.names.retry(stage),
            self.names.dlq(stage),
        ];
        let counts = partition_counts(&self.conn, &topics, Duration::from_secs(30))
            .map_err(|e| RunnerError::TopicsMissing(e.to_string()))?;
        let missing: Vec<&String> = topics.iter().filter(|t| !counts.contains_key(*t)).collect();
        if !missing.is_empty() {
            return Err(RunnerError::TopicsMissing(format!(
                "topics {missing:?} do not exist; create them with `artifactctl topics create`"
            )));
        }
        let input = counts[&topics[0]];
        let differ: Vec<String> = counts
            .iter()
            .filter(|(_, n)| **n != input)
            .map(|(t, n)| format!("{t} has {n}"))
            .collect();
        if !differ.is_empty() {
            return Err(RunnerError::NotCoPartitioned(format!(
                "input topic {} has {input} partitions but {}; the dedup state of partition p lives in \
                 partition p of the dedup topic, so all of a stage's topics need the same count",
                topics[0],
                differ.join(", ")
            )));
        }
        Ok(input)
    }

    /// Runs until `shutdown` turns true, then finishes the open batch and
    /// leaves the group.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RunnerError> {
        let stage = S::STAGE;
        let fatal = |e: rdkafka::error::KafkaError| RunnerError::Fatal(e.to_string());
        self.health.set_not_ready("checking topics");
        let mut backoff = 1;
        loop {
            match self.check_topics() {
                Ok(_) => break,
                Err(e) if *shutdown.borrow() => return Err(e),
                Err(e @ RunnerError::NotCoPartitioned(_)) => return Err(e),
                Err(e) if backoff > 5 => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "topics not ready; retrying");
                    self.health.set_not_ready(e.to_string());
                    tokio::time::sleep(Duration::from_secs(backoff)).await;
                    backoff += 1;
                }
            }
        }

        let input_topic = self.names.input(stage);
        let retry_topic = self.names.retry(stage);
        let instance = self.cfg.instance_id();
        let exactly_once = self.cfg.delivery == Delivery::ExactlyOnce;

        let consumer_cfg = |client_id: &str| {
            let mut c = consumer_config(&self.conn, client_id, &self.group);
            c.set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                // A crashed instance's partitions move on after 10 s.
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "3000")
                .set(
                    "max.poll.interval.ms",
                    self.max_poll_interval.as_millis().to_string(),
                )
                .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
            // Operators' KAFKA_PROPERTIES win over these defaults.
            for (k, v) in &self.conn.kafka_properties.0 {
                c.set(k, v);
            }
            c
        };
        let retry_consumer: Arc<StreamConsumer> = Arc::new(
            consumer_cfg(&format!("{}-{instance}-retry", self.group))
                .create()
                .map_err(fatal)?,
        );
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let slot = Arc::new(OnceLock::new());
        let _ = slot.set(retry_consumer.clone());
        let gate = Arc::new(batch::TxnGate::default());
        let context = StageContext {
            gate: gate.clone(),
            group: self.group.clone(),
            input_topic: input_topic.clone(),
            retry_topic: retry_topic.clone(),
            assignment: assignment.clone(),
            retry_consumer: slot,
        };
        let consumer: StreamConsumer<StageContext> =
            consumer_cfg(&format!("{}-{instance}", self.group))
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("statistics.interval.ms", "5000")
                .create_with_context(context)
                .map_err(fatal)?;

        let mut pcfg = producer_config(&self.conn, &format!("{}-{instance}", self.group));
        // A batch's records are all enqueued at once and then waited for,
        // so lingering only delays them: `linger.ms=5` cost every hop about
        // 5 ms more at 100 artifacts/s and bought no throughput (bench-e2e,
        // bench-runner). A transaction begins right after the previous one
        // committed, and the coordinator answers CONCURRENT_TRANSACTIONS
        // until that one's markers are written (a few ms); librdkafka
        // retries the offsets' registration after `retry.backoff.ms`, 100 ms
        // by default.
        pcfg.set("linger.ms", "0").set("retry.backoff.ms", "10");
        if exactly_once {
            pcfg.set("transactional.id", format!("{}-{instance}", self.group))
                .set("transaction.timeout.ms", "30000");
        }
        // Operators' KAFKA_PROPERTIES win over these defaults.
        for (k, v) in &self.conn.kafka_properties.0 {
            pcfg.set(k, v);
        }
        let producer: producer::StageProducer = pcfg
            .create_with_context(producer::Deliveries::default())
            .map_err(fatal)?;
        if exactly_once {
            self.health.set_not_ready("initializing transactions");
            let mut attempt = 1;
            loop {
                let p = producer.clone();
                let res = tokio::task::spawn_blocking(move || {
                    p.init_transactions(Duration::from_secs(30))
                })
                .await
                .map_err(|e| RunnerError::Fatal(e.to_string()))?;
                match res {
                    Ok(()) => break,
                    Err(e) if *shutdown.borrow() => return Err(fatal(e)),
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "init_transactions failed; retrying");
                        self.health.set_not_ready(format!("Kafka unavailable: {e}"));
                        tokio::time::sleep(retry::jittered(
                            Duration::from_millis(500),
                            Duration::from_secs(10),
                            attempt,
                        ))
                        .await;
                        attempt += 1;
                    }
                }
            }
        }
        let mut retry_purge = purge::RetryPurge::new(retry_topic.clone(), Some(self.conn.clone()));
        zero_counters(stage.name());
        consumer.subscribe(&[&input_topic]).map_err(fatal)?;
        tracing::info!(stage = stage.name(), group = %self.group, %input_topic, exactly_once, "stage running");

        let mut dedup = DedupState::new(self.cfg.dedup_retention(), Instant::now());
        let mut delayed: BTreeMap<i32, VecDeque<Delayed>> = BTreeMap::new();
        let mut failures: u32 = 0;
        // The batch whose transaction commits while the next one is
        // collected and processed.
        let mut in_flight: Option<batch::InFlight> = None;
        let max_records = self.cfg.transaction_max_records;
        let window = Duration::from_millis(self.cfg.transaction_max_ms);
        let linger = Duration::from_millis(self.cfg.transaction_linger_ms);
        let mut pacer = pace::Pacer::new(linger);

        while !*shutdown.borrow() {
            // Processed retry records go, in the background (at least every
            // quarter second: an idle wait ends that often).
            retry_purge.poll();
            // Collect a batch: wait (briefly) for a first record, then take
            // what the clients have already buffered, without waiting, up to
            // N records or T ms. Under load batches grow to N by themselves;
            // at low load a record never waits for a batch to fill.
            let mut items: Vec<Item> = Vec::new();
            let idle_until = Instant::now() + Duration::from_millis(250);
            // A record's epoch is read once `recv` has returned it: the
            // rebalance callbacks run inside `recv`, so a record fetched
            // after a revocation and a new assignment within one call
            // carries the new epoch, not the one from before the call.
            let epoch_now = || assignment.lock().expect("assignment lock").epoch;
            while items.is_empty() {
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    // Nothing new: settle the batch in flight meanwhile.
                    _ = async { in_flight.as_mut().expect("guarded").finished().await }, if in_flight.is_some() => {
                        let flight = in_flight.take().expect("guarded");
                        self.settle_or_rewind(&consumer, &retry_consumer, &mut dedup, &mut delayed, &mut retry_purge, flight, Vec::new(), &mut failures, &mut shutdown).await?;
                    }
                    m = consumer.recv() => match m {
                        Ok(m) => items.push(Item::input(m.detach(), epoch_now())),
                        Err(e) => {
                            tracing::warn!(error = %e, "consumer error");
                            self.health.set_not_ready(format!("Kafka consumer error: {e}"));
                        }
                    },
                    m = retry_consumer.recv() => match m {
                        Ok(m) => self.on_retry_record(m.detach(), epoch_now(), &retry_consumer, &mut delayed, &mut items),
                        Err(e) => tracing::warn!(error = %e, "retry consumer error"),
                    },
                    _ = tokio::time::sleep_until(idle_until.into()) => break,
                }
            }
            let batch_until = Instant::now() + window;
            let linger_until = pacer.close_at(Instant::now());
            while !items.is_empty() && items.len() < max_records && Instant::now() < batch_until {
                let mut got = false;
                if let Some(Ok(m)) = consumer.recv().now_or_never() {
                    items.push(Item::input(m.detach(), epoch_now()));
                    got = true;
                }
                if let Some(Ok(m)) = retry_consumer.recv().now_or_never() {
                    self.on_retry_record(
                        m.detach(),
                        epoch_now(),
                        &retry_consumer,
                        &mut delayed,
                        &mut items,
                    );
                    got = true;
                }
                if !got {
                    if Instant::now() >= linger_until {
                        break;
                    }
                    // Lingering: wait for the next record, up to the linger.
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => break,
                        m = consumer.recv() => if let Ok(m) = m {
                            items.push(Item::input(m.detach(), epoch_now()));
                        },
                        m = retry_consumer.recv() => if let Ok(m) = m {
                            self.on_retry_record(m.detach(), epoch_now(), &retry_consumer, &mut delayed, &mut items);
                        },
                        _ = tokio::time::sleep_until(linger_until.into()) => break,
                    }
                }
            }

            if !items.is_empty() {
                pacer.closed(Instant::now(), items.len());
            }

            // Due retries join the batch, in order per partition.
            let now = now_ms();
            for (p, queue) in delayed.iter_mut() {
                while items.len() < max_records
                    && queue.front().is_some_and(|d| d.not_before_ms <= now)
                {
                    let d = queue.pop_front().expect("front exists");
                    items.push(d.item);
                }
                if queue.is_empty() {
                    let mut tpl = TopicPartitionList::new();
                    let _ = tpl.add_partition(&retry_topic, *p);
                    let _ = retry_consumer.resume(&tpl);
                }
            }

            // Apply assignment changes: forget revoked partitions, restore
            // newly assigned ones before any of their records is processed.
            let (revoked, to_restore) = {
                let mut a = assignment.lock().expect("assignment lock");
                let revoked: Vec<(i32, u64)> = std::mem::take(&mut a.revoked)
                    .into_iter()
                    .map(|p| (p, a.revoked_at.get(&p).copied().unwrap_or(a.epoch)))
                    .collect();
                (revoked, a.to_restore.clone())
            };
            for (p, at) in revoked {
                dedup.drop_partition(p);
                // Retries held from before the revocation are read again by
                // the partition's owner from its committed offset. Any read
                // since were read after the partition came back to this
                // instance (a revocation and an assignment within one
                // collection): they are ours, and the retry consumer's
                // position is past them, so they must not be dropped.
                if let Some(queue) = delayed.get_mut(&p) {
                    queue.retain(|d| d.item.epoch >= at);
                    if queue.is_empty() {
                        delayed.remove(&p);
                    } else {
                        // Held again: read no further until its head is due.
                        let mut tpl = TopicPartitionList::new();
                        let _ = tpl.add_partition(&retry_topic, p);
                        let _ = retry_consumer.pause(&tpl);
                    }
                }
            }
            if !to_restore.is_empty() {
                let topic = self.names.dedup(stage);
                self.health.set_not_ready(format!(
                    "restoring dedup state of partitions {to_restore:?}"
                ));
                let timeout = Duration::from_millis(self.cfg.restore_timeout_ms);
                let expire_before_ms = self
                    .cfg
                    .dedup_retention()
                    .map(|r| now_ms() - r.as_millis() as i64);
                // Partitions restore concurrently, each from its own reader.
                let (conn, codec) = (&self.conn, &self.codec);
                let restores = to_restore.iter().map(|p| {
                    let topic = topic.clone();
                    async move {
                        let started = Instant::now();
                        let r =
                            restore_partition(conn, codec, &topic, *p, timeout, expire_before_ms)
                                .await;
                        (*p, r, started.elapsed().as_secs_f64())
                    }
                });
                for (p, result, secs) in futures::future::join_all(restores).await {
                    match result {
                        Ok(r) => {
                            metrics::histogram!("artifact_stage_restore_seconds", "stage" => stage.name())
                                .record(secs);
                            tracing::info!(
                                partition = p,
                                keys = r.entries.len(),
                                expired = r.expired.len(),
                                records = r.records,
                                undecodable = r.undecodable,
                                secs,
                                "dedup state restored"
                            );
                            let mut a = assignment.lock().expect("assignment lock");
                            // Still ours and not revoked meanwhile: install it.
                            if a.owned.contains(&p) && a.to_restore.remove(&p) {
                                dedup.install(p, r);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, partition = p, "dedup restore failed; will retry");
                            self.health.set_not_ready(e.to_string());
                        }
                    }
                }
            }
            let expired = dedup.rotate_if_due(Instant::now());
            if expired > 0 {
                tracing::info!(
                    expired,
                    kept = dedup.len(),
                    "dedup entries older than the retention expired"
                );
                metrics::counter!("artifact_stage_dedup_expired_total", "stage" => stage.name())
                    .increment(expired as u64);
            }
            metrics::gauge!("artifact_stage_dedup_keys", "stage" => stage.name())
                .set(dedup.len() as f64);

            // Keep only records of partitions that are ours and restored;
            // records of a partition still waiting for its restore are read
            // again after it (rewind below).
            let mut rewind_only: Vec<Item> = Vec::new();
            {
                let a = assignment.lock().expect("assignment lock");
                let mut kept = Vec::with_capacity(items.len());
                for it in items {
                    let p = it.msg.partition();
                    if !a.is_current(p, it.epoch) {
                        continue; // revoked: the new owner reads it from the committed offset
                    }
                    if dedup.has_partition(p) {
                        kept.push(it);
                    } else {
                        rewind_only.push(it);
                    }
                }
                items = kept;
            }
            if !rewind_only.is_empty() {
                batch::rewind(&consumer, &retry_consumer, &mut delayed, &rewind_only);
            }
            // Idle, with nothing committing: the tombstones of expired
            // entries go out in a transaction of their own, so neither
            // memory nor the topic waits for traffic to drop them.
            let tombstones_only =
                items.is_empty() && in_flight.is_none() && dedup.pending_tombstones() > 0;
            if items.is_empty() && !tombstones_only {
                let a = assignment.lock().expect("assignment lock");
                if failures == 0 && a.to_restore.is_empty() {
                    if a.owned.is_empty() {
                        self.health.set_not_ready("no partitions assigned");
                    } else {
                        self.health.set_ready();
                    }
                }
                continue;
            }

            let prepare_started = Instant::now();
            let committing = in_flight.as_ref().map(|f| &f.generations);
            let room = max_tombstones(if tombstones_only {
                max_records
            } else {
                items.len()
            });
            let tombstones = dedup.take_tombstones(room, committing);
            let prepared = self.prepare(&dedup, committing, &items, &tombstones).await;
            if let Ok(p) = &prepared
                && p.covered < items.len()
            {
                // Cut short: what it did not start is read again.
                let rest = items.split_off(p.covered);
                batch::rewind(&consumer, &retry_consumer, &mut delayed, &rest);
            }
            if !tombstones_only {
                pacer.processed(prepare_started.elapsed());
            }
            // One transaction at a time: the previous batch settles before
            // this one's starts. If it failed, this batch is read again too.
            if let Some(flight) = in_flight.take() {
                match self
                    .settle_or_rewind(
                        &consumer,
                        &retry_consumer,
                        &mut dedup,
                        &mut delayed,
                        &mut retry_purge,
                        flight,
                        items,
                        &mut failures,
                        &mut shutdown,
                    )
                    .await?
                {
                    Some(back) => items = back,
                    // Read again with the failed one: its tombstones too.
                    None => {
                        dedup.return_tombstones(tombstones);
                        continue;
                    }
                }
            }
            let failed = match prepared {
                Err(e) => Some((e, items, tombstones)),
                Ok(p) => match self.start_commit(&consumer, &producer, &gate, p, items, tombstones)
                {
                    Ok(flight) => {
                        in_flight = Some(flight);
                        None
                    }
                    Err(back) => Some(back),
                },
            };
            if let Some((e, items, tombstones)) = failed {
                dedup.return_tombstones(tombstones);
                // Nothing of this batch was produced.
                self.failed_batch(
                    &consumer,
                    &retry_consumer,
                    &mut delayed,
                    e,
                    &items,
                    &mut failures,
                    &mut shutdown,
                )
                .await?;
            }
        }
        if let Some(flight) = in_flight.take() {
            self.settle_or_rewind(
                &consumer,
                &retry_consumer,
                &mut dedup,
                &mut delayed,
                &mut retry_purge,
                flight,
                Vec::new(),
                &mut failures,
                &mut shutdown,
            )
            .await?;
        }

        tracing::info!(stage = stage.name(), "shutting down: leaving the group");
        self.health.set_not_ready("shutting down");
        consumer.unsubscribe();
        drop(consumer);
        drop(retry_consumer);
        let p = producer.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(5))).await;
        Ok(())
    }
}

impl<S: StageLogic> StageRunner<S> {
    /// Settles the batch in flight. On success returns `next` (the batch
    /// prepared meanwhile) to be committed; on failure rewinds both batches
    /// (nothing of either was committed), pauses, and returns `None`.
    #[allow(clippy::too_many_arguments)]
    async fn settle_or_rewind<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        retry_consumer: &StreamConsumer,
        dedup: &mut DedupState,
        delayed: &mut BTreeMap<i32, VecDeque<Delayed>>,
        retry_purge: &mut purge::RetryPurge,
        flight: batch::InFlight,
        next: Vec<Item>,
        failures: &mut u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Vec<Item>>, RunnerError> {
        match self.settle(consumer, dedup, flight).await {
            Ok(retried) => {
                retry_purge.committed(retried);
                *failures = 0;
                self.health.set_ready();
                Ok(Some(next))
            }
            Err((e, mut items)) => {
                items.extend(next);
                self.failed_batch(
                    consumer,
                    retry_consumer,
                    delayed,
                    e,
                    &items,
                    failures,
                    shutdown,
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// A batch did not commit: fatal errors end the runner; otherwise its
    /// records are read again after a pause that grows with each failure.
    #[allow(clippy::too_many_arguments)]
    async fn failed_batch<C: rdkafka::consumer::ConsumerContext + 'static>(
        &self,
        consumer: &StreamConsumer<C>,
        retry_consumer: &StreamConsumer,
        delayed: &mut BTreeMap<i32, VecDeque<Delayed>>,
        error: batch::BatchError,
        items: &[Item],
        failures: &mut u32,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        let e = match error {
            batch::BatchError::Fatal(e) => {
                self.health.set_not_ready(e.clone());
                return Err(RunnerError::Fatal(e));
            }
            batch::BatchError::Transient(e) => e,
        };
        *failures += 1;
        tracing::warn!(error = %e, failures = *failures, "batch failed; rewinding and retrying");
        metrics::counter!("artifact_stage_batch_failures_total", "stage" => S::STAGE.name())
            .increment(1);
        self.health.set_not_ready(e);
        batch::rewind(consumer, retry_consumer, delayed, items);
        let pause = retry::jittered(
            Duration::from_millis(200),
            Duration::from_secs(5),
            *failures,
        );
        tokio::select! {
            _ = shutdown.changed() => {},
            _ = tokio::time::sleep(pause) => {},
        }
        Ok(())
    }
}

/// Exports every counter series at zero from the start, so a rate or an
/// increase sees the first event after a restart (a series that appears
/// with its first increment has no earlier sample to compare with).
fn zero_counters(stage: &'static str) {
    for source in ["input", "retry"] {
        metrics::counter!("artifact_stage_records_consumed_total", "stage" => stage, "source" => source).absolute(0);
    }
    for kind in ["output", "dedup", "tombstone", "retry", "dlq"] {
        metrics::counter!("artifact_stage_records_produced_total", "stage" => stage, "kind" => kind).absolute(0);
    }
    for reason in ["duplicate", "stale", "upstream_failed"] {
        metrics::counter!("artifact_stage_skipped_total", "stage" => stage, "reason" => reason)
            .absolute(0);
    }
    for outcome in [
        "succeeded",
        "skipped",
        "failed_retriable",
        "failed_permanent",
    ] {
        metrics::counter!("artifact_stage_outcomes_total", "stage" => stage, "outcome" => outcome)
            .absolute(0);
    }
    for kind in ["inline", "topic"] {
        metrics::counter!("artifact_stage_retries_total", "stage" => stage, "kind" => kind)
            .absolute(0);
    }
    metrics::counter!("artifact_stage_dlq_records_total", "stage" => stage).absolute(0);
    metrics::counter!("artifact_stage_dedup_expired_total", "stage" => stage).absolute(0);
    metrics::counter!("artifact_stage_batch_failures_total", "stage" => stage).absolute(0);
}

/// Per-partition offsets to commit for a batch: the highest offset + 1.
pub(crate) fn commit_offsets(items: &[Item]) -> TopicPartitionList {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for it in items {
        let k = (it.msg.topic().to_owned(), it.msg.partition());
        let o = it.msg.offset() + 1;
        next.entry(k).and_modify(|v| *v = (*v).max(o)).or_insert(o);
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in next {
        let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
    }
    tpl
}
