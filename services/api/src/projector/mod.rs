//! The projector: folds every event of every artifact (created and the four
//! outcome topics, with each stage's retries and dead letters) with the
//! domain fold and writes a snapshot to the
//! compacted status topic whenever an artifact's view changes: once for
//! all the events of an artifact that the consumer holds at that moment.
//!
//! It runs as a task of the API rather than as a binary of its own: it needs
//! no state beyond the topics (it re-reads its partitions from the beginning
//! at every start, never committing offsets, and the compacted topics keep
//! that bounded by the number of artifacts), and API replicas split the
//! partitions between them through the consumer group. Topics are
//! co-partitioned, and the range assignor gives one member the same
//! partition number of every topic, so one artifact's events meet in one
//! fold. Writing an unchanged snapshot again is harmless; the table keeps
//! the newest. A snapshot the broker does not take (an outage longer than
//! the producer's `message.timeout.ms`, a record the topic refuses) is
//! written again a second later from the artifact's current fold, until it
//! is delivered: the status topic never stays behind the events for good.
//!
//! A fold is dropped once its generation is settled (final, with every step
//! that led there folded: see `ArtifactStatus::is_settled`) and its last
//! snapshot was delivered; the artifact's settled generation is kept until
//! the API's read-model table holds that snapshot, which then answers for
//! it (`StatusTable::settled_generation`). Later events of that generation
//! are duplicates of folded ones and are skipped, not folded; a newer
//! generation starts a fold again. The projector's memory therefore follows
//! the artifacts in flight, not every artifact ever seen.
//!
//! The projector starts once the table is restored, so at a start it skips
//! the events of every artifact whose settled snapshot is in the status
//! topic, instead of folding them all again and writing their snapshots
//! once more; it folds the others (in flight, or final with a step still
//! to come).
//!
//! The loop's state is one [`Projector`]; each branch of its `select!` is
//! one step: fold a batch (`topics` says which event each record is),
//! take back undelivered snapshots, drop delivered settled folds
//! (`projection`), forget what the table shows; then the changed views are
//! written (`writer`).

mod projection;
mod topics;
mod writer;

use crate::metrics;
use crate::readmodel::StatusTable;
use artifact_domain::{ArtifactId, PipelineEvent};
use artifact_kafka::client::{
    FETCH_QUEUE_BACKOFF_MS, client_config, gather_fetches, ordered_producer_config,
};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::now_ms;
use artifact_kafka::topics::TopicNames;
use artifact_runtime::otel;
use futures::FutureExt;
use projection::{Controlled, Projection};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
pub use topics::{EventKind, EventTopics, Folded, UnknownTopic};
use tracing::{Instrument, Span};
use writer::{Reports, SnapshotWriter, take_back};

/// Most events folded before their snapshots are written.
const MAX_BATCH: usize = 500;

/// How often settled generations the table shows are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(1);

/// Runs the projector for ever.
pub async fn run_projector(
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    group: String,
    table: Arc<StatusTable>,
) -> anyhow::Result<()> {
    if !table.is_restored() {
        tracing::info!("projector waits for the read model's restore");
        table.restored().await;
    }
    let mut p = Projector::start(&conn, codec, &group, table)?;
    tracing::info!(%group, "projector running");
    let mut forget = tokio::time::interval(FORGET_EVERY);
    loop {
        let changed = tokio::select! {
            first = p.consumer.recv() => match first {
                Ok(m) => {
                    let batch = take_held(&p.consumer, m.detach());
                    p.fold_batch(batch).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "projector consumer error");
                    continue;
                }
            },
            Some(ids) = p.undelivered.recv() => take_back(&mut p.writer.written, ids),
            Some(done) = p.settled_delivered.recv() => {
                p.projection.drop_settled(&mut p.writer.written, done);
                HashSet::new()
            }
            _ = forget.tick() => {
                p.projection.forget_shown();
                HashSet::new()
            }
        };
        p.writer
            .write(&p.projection.folds, changed, &p.reports)
            .await?;
        metrics::projection(p.projection.folds.len(), p.projection.settled.len());
    }
}

/// The projector's state: its consumer, what it folded, its writer and
/// the channels the writer reports deliveries on.
struct Projector {
    consumer: StreamConsumer,
    codec: Arc<AvroCodec>,
    topics: EventTopics,
    projection: Projection,
    writer: SnapshotWriter,
    reports: Reports,
    undelivered: UnboundedReceiver<Vec<(ArtifactId, u64)>>,
    settled_delivered: UnboundedReceiver<Vec<(ArtifactId, u64)>>,
    /// When it started: events written before are re-read, not late.
    started_ms: i64,
    /// Its consumer group (a span attribute).
    group: String,
}

impl Projector {
    /// Subscribes to the event topics in `group` and makes the writer.
    fn start(
        conn: &ConnectionConfig,
        codec: Arc<AvroCodec>,
        group: &str,
        table: Arc<StatusTable>,
    ) -> anyhow::Result<Self> {
        let names = TopicNames::from_config(conn);
        let topics = EventTopics::new(&names);
        // Thirteen topics' partitions in one fetch session.
        let consumer: StreamConsumer =
            gather_fetches(&mut client_config(conn, "artifact-projector"))
                .set("group.id", group)
                .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("auto.offset.reset", "earliest")
                .set("partition.assignment.strategy", "range")
                .create()?;
        consumer.subscribe(&topics.names())?;
        let writer = SnapshotWriter {
            producer: ordered_producer_config(conn, "artifact-projector").create()?,
            codec: codec.clone(),
            topic: names.status(),
            written: HashMap::new(),
        };
        let (undelivered_tx, undelivered) = unbounded_channel();
        let (settled_tx, settled_delivered) = unbounded_channel();
        Ok(Projector {
            consumer,
            codec,
            topics,
            projection: Projection::with_table(table),
            writer,
            reports: Reports {
                undelivered: undelivered_tx,
                settled: settled_tx,
            },
            undelivered,
            settled_delivered,
            started_ms: now_ms(),
            group: group.to_owned(),
        })
    }

    /// Folds a batch; returns the artifacts it touched. Each record's fold
    /// is a span, a child of the record's trace context, when traces are
    /// exported.
    async fn fold_batch(&mut self, batch: Vec<OwnedMessage>) -> HashSet<ArtifactId> {
        let mut changed = HashSet::new();
        for m in batch {
            let letter = matches!(self.topics.kind(m.topic()), Ok(EventKind::DeadLetter(_)));
            if m.payload().is_none() && !letter {
                // A tombstone of an erased artifact's event (a dead letter
                // may have left its too large payload out).
                continue;
            }
            let span = if otel::enabled() {
                let span = tracing::info_span!(
                    "fold",
                    otel.name = tracing::field::Empty,
                    otel.kind = tracing::field::Empty,
                );
                otel::consume(&span, "fold", &self.group, &m);
                span
            } else {
                Span::none()
            };
            let event = match self.decode(&m).instrument(span.clone()).await {
                Some(Folded::Event(event)) => *event,
                Some(Folded::Control(control)) => {
                    let id = control.artifact_id;
                    match self.projection.control(control) {
                        Controlled::Nothing => {}
                        Controlled::Changed => {
                            changed.insert(id);
                        }
                        Controlled::Erased => {
                            changed.remove(&id);
                            self.writer.erase(id);
                        }
                    }
                    continue;
                }
                Some(Folded::Retry(r)) => {
                    let id = r.artifact_id;
                    if self.projection.retry(r).is_some() {
                        changed.insert(id);
                    }
                    continue;
                }
                Some(Folded::DeadLetter(id, letter)) => {
                    if self.projection.dead_letter(id, letter) {
                        changed.insert(id);
                    }
                    continue;
                }
                None => {
                    metrics::skipped_event();
                    continue;
                }
            };
            if let Some(id) = span.in_scope(|| self.fold(&m, event)) {
                changed.insert(id);
            }
        }
        changed
    }

    /// Folds one record's event; the artifact, when its view changed.
    fn fold(&mut self, m: &OwnedMessage, event: PipelineEvent) -> Option<ArtifactId> {
        metrics::projector_event();
        let id = event.artifact_id();
        let timed_before = self
            .projection
            .folds
            .get(&id)
            .is_some_and(|s| s.completion_ms().is_some());
        let Some(status) = self.projection.apply(event) else {
            // Written before the start: re-read, not late.
            if m.timestamp()
                .to_millis()
                .is_none_or(|t| t >= self.started_ms)
            {
                metrics::late_event();
            }
            return None;
        };
        if !timed_before
            && let Some(ms) = status.completion_ms()
            && status.updated_at().is_some_and(|t| t >= self.started_ms)
        {
            metrics::end_to_end(ms as f64 / 1000.0);
        }
        Some(id)
    }

    /// The record's event, waiting out a registry outage; `None` (logged)
    /// for a record of a topic the table does not name, or one that can
    /// never decode.
    async fn decode(&self, m: &OwnedMessage) -> Option<Folded> {
        let kind = match self.topics.kind(m.topic()) {
            Ok(kind) => kind,
            Err(e) => {
                tracing::warn!(error = %e, offset = m.offset(), "record skipped by the projector");
                return None;
            }
        };
        loop {
            match topics::decode_record(&self.codec, kind, m).await {
                Ok(e) => return e,
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, "projector waits for the registry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = m.topic(), offset = m.offset(), "undecodable event skipped by the projector");
                    return None;
                }
            }
        }
    }
}

/// `first` and everything else the consumer already holds, up to
/// [`MAX_BATCH`] records: an artifact whose events arrive together (a
/// projector catching up, a burst) then gets one snapshot, not one per event.
fn take_held(consumer: &StreamConsumer, first: OwnedMessage) -> Vec<OwnedMessage> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match consumer.recv().now_or_never() {
            Some(Ok(m)) => batch.push(m.detach()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "projector consumer error");
                break;
            }
            None => break,
        }
    }
    batch
}
