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
//! the newest.

use artifact_domain::*;
use artifact_runtime::codec::AvroCodec;
use artifact_runtime::config::ConnectionConfig;
use artifact_runtime::kafka::{FETCH_QUEUE_BACKOFF_MS, client_config, ordered_producer_config};
use artifact_runtime::now_ms;
use artifact_runtime::schemas::EventSchema;
use artifact_runtime::topics::TopicNames;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Most events folded before their snapshots are written.
const MAX_BATCH: usize = 500;

async fn decode(
    codec: &AvroCodec,
    names: &TopicNames,
    topic: &str,
    payload: Option<&[u8]>,
) -> Result<PipelineEvent, artifact_runtime::codec::CodecError> {
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
) -> anyhow::Result<()> {
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
    let producer: FutureProducer = ordered_producer_config(&conn, "artifact-projector").create()?;
    let status_topic = names.status();
    let started_ms = now_ms();
    let mut folds: HashMap<ArtifactId, ArtifactStatus> = HashMap::new();
    let mut written: HashMap<ArtifactId, StatusView> = HashMap::new();
    tracing::info!(%group, "projector running");
    loop {
        // Everything the consumer already holds is folded before snapshots
        // are written, so an artifact whose events arrive together (a
        // projector catching up, a burst) gets one snapshot, not one per
        // event.
        let mut batch = Vec::new();
        match consumer.recv().await {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "projector consumer error");
                continue;
            }
        }
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
        let mut changed: HashSet<ArtifactId> = HashSet::new();
        for m in batch {
            let event = loop {
                match decode(&codec, &names, m.topic(), m.payload()).await {
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
            let id = event.artifact_id();
            let is_summary = matches!(event, PipelineEvent::Summarized(_));
            let status = folds
                .entry(id)
                .or_insert_with(|| ArtifactStatus::empty(id, event.generation()));
            status.apply(event);
            if is_summary {
                let view = status.view();
                if view.state == ArtifactState::Completed
                    && view.updated_at >= started_ms
                    && let Some(created) = view.created_at
                {
                    metrics::histogram!("artifact_pipeline_end_to_end_seconds")
                        .record((view.updated_at - created).max(0) as f64 / 1000.0);
                }
            }
            changed.insert(id);
        }
        let mut deliveries = Vec::new();
        for id in changed {
            let view = folds[&id].view();
            if written.get(&id) == Some(&view) {
                continue;
            }
            let payload = loop {
                match codec
                    .encode(&status_topic, EventSchema::ArtifactStatus, &view)
                    .await
                {
                    Ok(p) => break p,
                    Err(e) if e.is_retriable() => tokio::time::sleep(Duration::from_secs(1)).await,
                    Err(e) => anyhow::bail!("cannot encode a status snapshot: {e}"),
                }
            };
            let key = id.to_string();
            // Snapshots are not awaited one by one: the producer (one
            // request in flight) keeps their order per artifact and retries
            // them; a failure is logged. A retry may write a snapshot twice
            // in a row, which the read model takes like one.
            let delivery = loop {
                let rec = FutureRecord::to(&status_topic).key(&key).payload(&payload);
                match producer.send_result(rec) {
                    Ok(d) => break d,
                    Err((e, _)) => {
                        tracing::warn!(error = %e, "status snapshot not queued; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            };
            deliveries.push(delivery);
            metrics::counter!("artifact_api_status_snapshots_total").increment(1);
            written.insert(id, view);
        }
        if !deliveries.is_empty() {
            tokio::spawn(async move {
                for delivery in deliveries {
                    if let Ok(Err((e, _))) = delivery.await {
                        tracing::error!(error = %e, "a status snapshot was not delivered");
                    }
                }
            });
        }
    }
}
