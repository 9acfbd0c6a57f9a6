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
//! The loop ([`stage_loop`]), per batch, each step a function of its own:
//! 1. collect up to N records or T milliseconds from the input topic and the
//!    due records of the retry topic (`collect`; the owner of input
//!    partition `p` also owns retry partition `p`, [`retries`]);
//! 2. apply assignment changes: forget revoked partitions, restore newly
//!    assigned ones (`apply_assignment`, `restore`), and keep only records
//!    of partitions owned and restored (`keep_owned`);
//! 3. decode and plan: dead letters, duplicates, stale generations and
//!    inputs whose previous stage failed ([`plan`]);
//! 4. process the rest concurrently, each bounded in time, with in-process
//!    retries ([`process`]);
//! 5. build the transaction's records: outcomes, dedup updates, retry
//!    copies, dead letters ([`records`]);
//! 6. commit everything in one transaction on a blocking thread while the
//!    next batch is prepared ([`commit`]); on a transient failure rewind to
//!    the batch's first offsets, back off and report not-ready.
//!
//! Retry records below the committed retry offsets are deleted in the
//! background ([`purge`]): the retry topic keeps the pending ones for good.
//!
//! Before collecting, the loop asks [`control`] whether input may be read:
//! an operator's pause or an open circuit breaker ([`breaker`]) holds it
//! back.

mod batch;
mod breaker;
mod collect;
mod commit;
pub mod config;
mod context;
mod control;
mod item;
mod pace;
mod plan;
mod poison;
mod process;
mod producer;
mod purge;
mod records;
mod restores;
mod retries;
mod setup;
mod stage_loop;
#[cfg(test)]
mod testing;

pub use config::{Delivery, RunnerConfig, RunnerConfigError};

use crate::control::ArtifactControls;
use crate::stage::StageLogic;
use crate::telemetry::Health;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::{TopicNames, partition_counts};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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

/// Runs one stage: what it is configured with, shared by the steps of its
/// loop.
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
    /// Operators' cancels and erasures (`crate::control`).
    pub(crate) controls: ArtifactControls,
    /// The circuit breaker of this replica.
    pub(crate) breaker: control::SharedBreaker,
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
        let breaker = control::SharedBreaker::new(cfg.breaker());
        Ok(StageRunner {
            logic: Arc::new(logic),
            topics: StageTopics::new(&names, S::STAGE),
            names,
            conn,
            cfg,
            breaker,
            codec: Arc::new(codec),
            health,
            group,
            abort_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            max_poll_interval,
            start_budget,
            max_record_bytes,
            controls: ArtifactControls::none(),
        })
    }

    /// Runs until `shutdown` turns true, then finishes the open batch and
    /// leaves the group.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) -> Result<(), RunnerError> {
        self.wait_for_topics(&shutdown).await?;
        self.follow_controls(&shutdown).await?;
        let clients = self.clients(&shutdown).await?;
        stage_loop::StageLoop::new(&self, clients, shutdown)
            .run()
            .await
    }

    /// Follows the artifact-control topic and waits until it is read to
    /// its end, so no input of an artifact cancelled or erased before the
    /// start is processed.
    async fn follow_controls(
        &mut self,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        self.health
            .set_not_ready("reading the artifact-control topic");
        self.controls = ArtifactControls::follow(self.conn.clone(), self.codec.clone());
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = self.controls.caught_up() => Ok(()),
            _ = shutdown.wait_for(|s| *s) => Err(RunnerError::Fatal("stopped while reading the artifact-control topic".into())),
        }
    }

    /// Waits for the stage's topics to exist (they may be created shortly
    /// after the stage starts), up to a few tries.
    async fn wait_for_topics(&self, shutdown: &watch::Receiver<bool>) -> Result<(), RunnerError> {
        self.health.set_not_ready("checking topics");
        let mut backoff = 1;
        loop {
            match self.check_topics() {
                Ok(_) => return Ok(()),
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
            self.names.inflight(stage),
            self.names.artifact_control(),
        ];
        // Followed, not co-partitioned: it only needs to exist.
        let control = self.names.stage_control();
        let counts = partition_counts(
            &self.conn,
            &[topics.as_slice(), std::slice::from_ref(&control)].concat(),
            Duration::from_secs(30),
        )
        .map_err(|e| RunnerError::TopicsMissing(e.to_string()))?;
        let missing: Vec<&String> = topics
            .iter()
            .chain([&control])
            .filter(|t| !counts.contains_key(*t))
            .collect();
        if !missing.is_empty() {
            return Err(RunnerError::TopicsMissing(format!(
                "topics {missing:?} do not exist; create them with `artifactctl topics create`"
            )));
        }
        let input = counts[&topics[0]];
        let differ: Vec<String> = counts
            .iter()
            .filter(|(t, n)| **n != input && **t != control)
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
}
