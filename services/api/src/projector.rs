//! The projector: folds every event of every artifact (created and the four
//! outcome topics) with the domain fold and writes a snapshot to the
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

use crate::readmodel::StatusTable;
use artifact_domain::*;
use artifact_kafka::client::{FETCH_QUEUE_BACKOFF_MS, client_config, ordered_producer_config};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::TopicNames;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Most events folded before their snapshots are written.
const MAX_BATCH: usize = 500;

async fn decode(
    codec: &AvroCodec,
    names: &TopicNames,
    topic: &str,
    payload: Option<&[u8]>,
) -> Result<PipelineEvent, artifact_kafka::codec::CodecError> {
    Ok(if topic == names.created() {
        PipelineEvent::Created(codec.decode(payload).await?)
    } else if topic == names.output(Stage::MimeDetector) {
        PipelineEvent::MimeDetected(codec.decode(payload).await?)
    } else if topic == names.output(Stage::LocationLogger) {
        PipelineEvent::LocationVerified(codec.decode(payload).await?)
    } else if topic == names.output(Stage::PdfParser) {
        PipelineEvent::Parsed(codec.decode(payload).await?)
    } else {
        PipelineEvent::Summarized(codec.decode(payload).await?)
    })
}

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
    let names = TopicNames::from_config(&conn);
    let mut topics = vec![names.created()];
    topics.extend(Stage::ALL.map(|s| names.output(s)));
    let consumer: StreamConsumer = client_config(&conn, "artifact-projector")
        .set("group.id", &group)
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "range")
        .create()?;
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;
    let mut writer = SnapshotWriter {
        producer: ordered_producer_config(&conn, "artifact-projector").create()?,
        codec: codec.clone(),
        topic: names.status(),
        written: HashMap::new(),
    };
    let (undelivered_tx, mut undelivered) = tokio::sync::mpsc::unbounded_channel();
    let (settled_tx, mut settled_delivered) = tokio::sync::mpsc::unbounded_channel();
    let reports = Reports {
        undelivered: undelivered_tx,
        settled: settled_tx,
    };
    // Exported from the start, at zero, so that an alert's increase() sees
    // the first failure.
    metrics::counter!(SNAPSHOT_FAILURES).increment(0);
    metrics::counter!(LATE_EVENTS).increment(0);
    metrics::counter!(EVENTS).increment(0);
    metrics::counter!(SNAPSHOTS).increment(0);
    metrics::gauge!(FOLDS).set(0.0);
    metrics::gauge!(SETTLED).set(0.0);
    let started_ms = now_ms();
    let mut projection = Projection::with_table(table);
    let mut forget = tokio::time::interval(FORGET_EVERY);
    tracing::info!(%group, "projector running");
    loop {
        let changed = tokio::select! {
            first = consumer.recv() => {
                let batch = match first {
                    Ok(m) => take_held(&consumer, m.detach()),
                    Err(e) => {
                        tracing::warn!(error = %e, "projector consumer error");
                        continue;
                    }
                };
                fold_batch(&codec, &names, &mut projection, batch, started_ms).await
            }
            Some(ids) = undelivered.recv() => take_back(&mut writer.written, ids),
            Some(done) = settled_delivered.recv() => {
                projection.drop_settled(&mut writer.written, done);
                HashSet::new()
            }
            _ = forget.tick() => {
                projection.forget_shown();
                HashSet::new()
            }
        };
        writer.write(&projection.folds, changed, &reports).await?;
        metrics::gauge!(FOLDS).set(projection.folds.len() as f64);
        metrics::gauge!(SETTLED).set(projection.settled.len() as f64);
    }
}

/// Counter of events written since the projector started for a generation
/// already settled: skipped, not folded.
const LATE_EVENTS: &str = "artifact_api_projector_late_events_total";

/// Counter of the events the projector read and decoded.
const EVENTS: &str = "artifact_api_projector_events_total";

/// Counter of the status snapshots written.
const SNAPSHOTS: &str = "artifact_api_status_snapshots_total";

/// Gauge of the artifacts the projector holds a fold for.
const FOLDS: &str = "artifact_api_projector_folds";

/// Gauge of the settled generations the projector holds until the table
/// shows them.
const SETTLED: &str = "artifact_api_projector_settled";

/// How often settled generations the table shows are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(1);

/// What the projector knows: the folds of artifacts still moving, and the
/// settled generation of those whose fold was dropped, until the table
/// holds their settled snapshot.
#[derive(Default)]
struct Projection {
    folds: HashMap<ArtifactId, ArtifactStatus>,
    settled: HashMap<ArtifactId, Generation>,
    table: Option<Arc<StatusTable>>,
}

impl Projection {
    fn with_table(table: Arc<StatusTable>) -> Self {
        Self {
            table: Some(table),
            ..Self::default()
        }
    }

    /// The settled generation known for an artifact without a fold.
    fn settled_generation(&self, id: ArtifactId) -> Option<Generation> {
        self.settled
            .get(&id)
            .copied()
            .or_else(|| self.table.as_ref()?.settled_generation(id))
    }

    /// Folds one event and returns the artifact's fold, or `None` for an
    /// event of a generation at or below a settled one without a fold: a
    /// duplicate of an event folded before, not folded again.
    fn apply(&mut self, event: PipelineEvent) -> Option<&ArtifactStatus> {
        let id = event.artifact_id();
        if !self.folds.contains_key(&id) {
            if self
                .settled_generation(id)
                .is_some_and(|settled| event.generation() <= settled)
            {
                return None;
            }
            self.settled.remove(&id);
        }
        let status = self
            .folds
            .entry(id)
            .or_insert_with(|| ArtifactStatus::empty(id, event.generation()));
        status.apply(event);
        Some(status)
    }

    /// Forgets the settled generations the table now holds a settled
    /// snapshot of (at that generation or a newer one).
    fn forget_shown(&mut self) {
        let Some(table) = &self.table else { return };
        self.settled
            .retain(|id, g| table.settled_generation(*id).is_none_or(|shown| shown < *g));
    }

    /// Drops the folds of `delivered` snapshots that are settled and still
    /// the last written for their artifact (an artifact written again since
    /// has that write's own report to come).
    fn drop_settled(
        &mut self,
        written: &mut HashMap<ArtifactId, u64>,
        delivered: Vec<(ArtifactId, u64)>,
    ) {
        for (id, fingerprint) in delivered {
            let settled = self.folds.get(&id).filter(|f| f.is_settled());
            if let Some(fold) = settled
                && written.get(&id) == Some(&fingerprint)
            {
                self.settled.insert(id, fold.generation());
                self.folds.remove(&id);
                written.remove(&id);
            }
        }
    }
}

/// Where the delivery of written snapshots is reported back: those not
/// delivered (to be written again) and the delivered ones of settled folds
/// (to be dropped).
struct Reports {
    undelivered: UnboundedSender<Vec<(ArtifactId, u64)>>,
    settled: UnboundedSender<Vec<(ArtifactId, u64)>>,
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

/// Folds a batch into `folds`; returns the artifacts it touched.
async fn fold_batch(
    codec: &AvroCodec,
    names: &TopicNames,
    projection: &mut Projection,
    batch: Vec<OwnedMessage>,
    started_ms: i64,
) -> HashSet<ArtifactId> {
    let mut changed = HashSet::new();
    for m in batch {
        let event = loop {
            match decode(codec, names, m.topic(), m.payload()).await {
                Ok(e) => break Some(e),
                Err(e) if e.is_retriable() => {
                    tracing::warn!(error = %e, "projector waits for the registry");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic = m.topic(), offset = m.offset(), "undecodable event skipped by the projector");
                    break None;
                }
            }
        };
        let Some(event) = event else { continue };
        metrics::counter!(EVENTS).increment(1);
        let id = event.artifact_id();
        let timed_before = projection
            .folds
            .get(&id)
            .is_some_and(|s| s.completion_ms().is_some());
        let Some(status) = projection.apply(event) else {
            // Written before the start: re-read, not late.
            if m.timestamp().to_millis().is_none_or(|t| t >= started_ms) {
                metrics::counter!(LATE_EVENTS).increment(1);
            }
            continue;
        };
        if !timed_before
            && let Some(ms) = status.completion_ms()
            && status.updated_at().is_some_and(|t| t >= started_ms)
        {
            metrics::histogram!("artifact_pipeline_end_to_end_seconds").record(ms as f64 / 1000.0);
        }
        changed.insert(id);
    }
    changed
}

/// Writes status snapshots and remembers, per artifact, a fingerprint of
/// the last one written (not the snapshot itself: the fold and the read
/// model's table already hold an artifact's data).
struct SnapshotWriter {
    producer: FutureProducer,
    codec: Arc<AvroCodec>,
    topic: String,
    written: HashMap<ArtifactId, u64>,
}

/// Counter of status snapshots that were not delivered.
const SNAPSHOT_FAILURES: &str = "artifact_api_status_snapshot_failures_total";

/// How long a snapshot that was not delivered waits before it is written
/// again.
const RESEND_AFTER: Duration = Duration::from_secs(1);

impl SnapshotWriter {
    /// Writes the snapshot of each of `ids` whose view differs from the
    /// last one written. Snapshots are not awaited one by one: the producer
    /// (one request in flight) keeps their order per artifact and retries
    /// them until `message.timeout.ms`. A task watches the deliveries: it
    /// reports the delivered snapshots of settled folds (to be dropped) at
    /// once, and the artifacts of undelivered snapshots go back after
    /// [`RESEND_AFTER`], and their current views are written again,
    /// so a snapshot lost to a long broker outage or a rejected write
    /// (a topic's `max.message.bytes`) is not lost for good. A retry may
    /// write a snapshot twice in a row, which the read model takes like one.
    async fn write(
        &mut self,
        folds: &HashMap<ArtifactId, ArtifactStatus>,
        ids: HashSet<ArtifactId>,
        reports: &Reports,
    ) -> anyhow::Result<()> {
        let mut deliveries = Vec::new();
        for id in ids {
            let fold = &folds[&id];
            let view = fold.view();
            let payload = loop {
                match self
                    .codec
                    .encode(&self.topic, EventSchema::ArtifactStatus, &view)
                    .await
                {
                    Ok(p) => break p,
                    Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_secs(1)).await,
                    Err(e) => anyhow::bail!("cannot encode a status snapshot: {e}"),
                }
            };
            let fingerprint = fingerprint(&payload);
            if self.written.get(&id) == Some(&fingerprint) {
                continue;
            }
            let key = id.to_string();
            let delivery = loop {
                let rec = FutureRecord::to(&self.topic).key(&key).payload(&payload);
                match self.producer.send_result(rec) {
                    Ok(d) => break d,
                    Err((e, _)) => {
                        tracing::warn!(error = %e, "status snapshot not queued; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            deliveries.push((id, fingerprint, fold.is_settled(), delivery));
            metrics::counter!(SNAPSHOTS).increment(1);
            self.written.insert(id, fingerprint);
        }
        if !deliveries.is_empty() {
            let undelivered = reports.undelivered.clone();
            let settled_delivered = reports.settled.clone();
            tokio::spawn(async move {
                let (mut failed, mut settled) = (Vec::new(), Vec::new());
                for (id, fingerprint, is_settled, delivery) in deliveries {
                    let error = match delivery.await {
                        Ok(Ok(_)) => {
                            if is_settled {
                                settled.push((id, fingerprint));
                            }
                            continue;
                        }
                        Ok(Err((e, _))) => e.to_string(),
                        Err(_) => "the producer was dropped".to_owned(),
                    };
                    tracing::error!(%id, %error, "a status snapshot was not delivered; it will be written again");
                    metrics::counter!(SNAPSHOT_FAILURES).increment(1);
                    failed.push((id, fingerprint));
                }
                if !settled.is_empty() {
                    let _ = settled_delivered.send(settled);
                }
                if !failed.is_empty() {
                    tokio::time::sleep(RESEND_AFTER).await;
                    let _ = undelivered.send(failed);
                }
            });
        }
        Ok(())
    }
}

/// A 64-bit fingerprint of an encoded snapshot. Two different consecutive
/// snapshots of one artifact share one with probability 2^-64.
fn fingerprint(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// Takes back snapshots that were not delivered: of the `undelivered`, those
/// still the last written for their artifact are removed from `written` and
/// their artifacts returned, to be written again. An artifact written again
/// since has that write's own delivery to report.
fn take_back(
    written: &mut HashMap<ArtifactId, u64>,
    undelivered: Vec<(ArtifactId, u64)>,
) -> HashSet<ArtifactId> {
    let mut ids = HashSet::new();
    for (id, fingerprint) in undelivered {
        if written.get(&id) == Some(&fingerprint) {
            written.remove(&id);
            ids.insert(id);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> ArtifactId {
        uuid::Uuid::from_u128(n).to_string().parse().unwrap()
    }

    #[test]
    fn only_snapshots_still_last_written_are_taken_back() {
        let (rewritten, failed, unknown) = (id(1), id(2), id(3));
        let mut written = HashMap::from([
            (rewritten, fingerprint(b"newer")),
            (failed, fingerprint(b"failed")),
        ]);
        let back = take_back(
            &mut written,
            vec![
                (rewritten, fingerprint(b"older")),
                (failed, fingerprint(b"failed")),
                (failed, fingerprint(b"failed")),
                (unknown, fingerprint(b"x")),
            ],
        );
        assert_eq!(back, HashSet::from([failed]));
        assert_eq!(written.get(&rewritten), Some(&fingerprint(b"newer")));
        assert!(!written.contains_key(&failed), "written again from scratch");
        assert!(!written.contains_key(&unknown));
    }

    fn created(id: ArtifactId, generation: i64) -> PipelineEvent {
        PipelineEvent::Created(ArtifactCreated {
            artifact_id: id,
            generation: Generation::new(generation).unwrap(),
            storage_location: "file:///blobs/x".into(),
            declared_content_type: None,
            filename: None,
            size_bytes: None,
            sha256: None,
            created_at: 1,
        })
    }

    fn failed_at_mime(id: ArtifactId) -> PipelineEvent {
        PipelineEvent::MimeDetected(StageEvent {
            artifact_id: id,
            generation: Generation::FIRST,
            context: ArtifactContext::default(),
            outcome: Outcome::permanent("unreadable"),
            result: None,
            processed_at: 2,
        })
    }

    #[test]
    fn settled_folds_are_dropped_once_their_last_snapshot_is_delivered() {
        let (settled, moving) = (id(1), id(2));
        let mut p = Projection::default();
        for e in [
            created(settled, 1),
            failed_at_mime(settled),
            created(moving, 1),
        ] {
            assert!(p.apply(e).is_some());
        }
        let mut written = HashMap::from([
            (settled, fingerprint(b"final")),
            (moving, fingerprint(b"pending")),
        ]);
        // An older snapshot's delivery, and a fold that is not settled: kept.
        p.drop_settled(
            &mut written,
            vec![
                (settled, fingerprint(b"older")),
                (moving, fingerprint(b"pending")),
            ],
        );
        assert_eq!(p.folds.len(), 2);
        // The settled fold's last snapshot delivered: dropped, its
        // generation kept.
        p.drop_settled(&mut written, vec![(settled, fingerprint(b"final"))]);
        assert!(!p.folds.contains_key(&settled));
        assert!(!written.contains_key(&settled));
        assert_eq!(p.settled.get(&settled), Some(&Generation::FIRST));
        assert!(p.folds.contains_key(&moving));
        // Its events again: not folded, no fold comes back.
        assert!(p.apply(failed_at_mime(settled)).is_none());
        assert!(p.apply(created(settled, 1)).is_none());
        assert!(!p.folds.contains_key(&settled));
        // A new generation folds again.
        let fold = p.apply(created(settled, 2)).expect("a newer generation");
        assert_eq!(fold.generation().get(), 2);
        assert!(!p.settled.contains_key(&settled));
    }

    #[test]
    fn the_table_answers_for_the_settled_generations_it_holds() {
        let table = Arc::new(StatusTable::create(&std::env::temp_dir()).expect("table"));
        let mut p = Projection::with_table(table.clone());
        let (done, unfinished) = (id(1), id(2));
        let fold = p.apply(created(done, 1)).unwrap().clone();
        let mut settled = fold.clone();
        settled.apply(failed_at_mime(done));
        p.apply(failed_at_mime(done)).unwrap();
        let mut written = HashMap::from([(done, fingerprint(b"final"))]);
        p.drop_settled(&mut written, vec![(done, fingerprint(b"final"))]);
        assert_eq!(p.settled.get(&done), Some(&Generation::FIRST));
        // Until the table holds the settled snapshot the projector keeps
        // the generation; then the table answers for it.
        p.forget_shown();
        assert_eq!(p.settled.len(), 1);
        table.upsert(&[fold.view()]).unwrap();
        p.forget_shown();
        assert_eq!(p.settled.len(), 1, "an unsettled snapshot does not answer");
        table.upsert(&[settled.view()]).unwrap();
        p.forget_shown();
        assert!(p.settled.is_empty());
        assert!(p.apply(failed_at_mime(done)).is_none());
        assert!(p.apply(created(done, 1)).is_none());
        assert!(p.folds.is_empty());
        assert_eq!(p.apply(created(done, 2)).unwrap().generation().get(), 2);

        // A final snapshot with a step still to come (mime-detector's
        // failure folded before the creation): its events are folded.
        let mut first = ArtifactStatus::empty(unfinished, Generation::FIRST);
        first.apply(failed_at_mime(unfinished));
        assert!(first.view().state.is_terminal());
        table.upsert(&[first.view()]).unwrap();
        assert!(p.apply(created(unfinished, 1)).is_some());
        let fold = p.apply(failed_at_mime(unfinished)).expect("folded");
        assert!(fold.is_settled());
    }

    #[test]
    fn fingerprints_tell_snapshots_apart() {
        assert_eq!(fingerprint(b"snapshot"), fingerprint(b"snapshot"));
        assert_ne!(fingerprint(b"snapshot"), fingerprint(b"snapshot "));
        assert_ne!(fingerprint(b""), fingerprint(b"\0"));
    }
}
