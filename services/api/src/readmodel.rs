//! The API's local read-model table, built from the compacted status topic:
//! read from the beginning at start (the API is not ready until it reached
//! the end), then kept up to date. Every API instance holds every artifact.

use artifact_domain::{ArtifactId, ArtifactState, StatusView};
use artifact_runtime::codec::AvroCodec;
use artifact_runtime::config::ConnectionConfig;
use artifact_runtime::kafka::{FETCH_QUEUE_BACKOFF_MS, QuietEof, client_config};
use artifact_runtime::topics::{TopicNames, partition_counts};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Snapshots by artifact.
#[derive(Debug, Default)]
pub struct StatusTable {
    rows: RwLock<BTreeMap<ArtifactId, StatusView>>,
    restored: AtomicBool,
}

impl StatusTable {
    /// Keeps the newer of the held and the given snapshot.
    pub fn upsert(&self, v: StatusView) {
        let mut rows = self.rows.write().expect("table lock");
        let newer = rows
            .get(&v.artifact_id)
            .is_none_or(|old| (v.generation, v.updated_at) >= (old.generation, old.updated_at));
        if newer {
            rows.insert(v.artifact_id, v);
        }
    }

    /// One artifact.
    pub fn get(&self, id: ArtifactId) -> Option<StatusView> {
        self.rows.read().expect("table lock").get(&id).cloned()
    }

    /// Up to `limit` artifacts after `cursor` (by id), optionally in one state.
    pub fn list(
        &self,
        state: Option<ArtifactState>,
        cursor: Option<ArtifactId>,
        limit: usize,
    ) -> (Vec<StatusView>, Option<ArtifactId>) {
        let rows = self.rows.read().expect("table lock");
        let start = match cursor {
            Some(c) => std::ops::Bound::Excluded(c),
            None => std::ops::Bound::Unbounded,
        };
        let items: Vec<StatusView> = rows
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, v)| v)
            .filter(|v| state.is_none_or(|s| v.state == s))
            .take(limit + 1)
            .cloned()
            .collect();
        if items.len() > limit {
            let page = items[..limit].to_vec();
            let next = page.last().map(|v| v.artifact_id);
            (page, next)
        } else {
            (items, None)
        }
    }

    /// Whether the table caught up with the topic once.
    pub fn is_restored(&self) -> bool {
        self.restored.load(Ordering::Acquire)
    }

    /// Number of artifacts held.
    pub fn len(&self) -> usize {
        self.rows.read().expect("table lock").len()
    }

    /// Whether no artifact is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads the status topic into `table` for ever.
pub async fn follow_status_topic(
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    table: Arc<StatusTable>,
) -> anyhow::Result<()> {
    let topic = TopicNames::from_config(&conn).status();
    let partitions = loop {
        let conn2 = conn.clone();
        let t = topic.clone();
        let counts = tokio::task::spawn_blocking(move || {
            partition_counts(&conn2, std::slice::from_ref(&t), Duration::from_secs(10))
        })
        .await??;
        match counts.get(&topic) {
            Some(n) => break *n as i32,
            None => {
                tracing::warn!(%topic, "status topic missing; run `artifactctl topics create`");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let consumer: StreamConsumer<QuietEof> = client_config(&conn, "artifact-api-readmodel")
        .set("group.id", "artifact-api-readmodel-unused")
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut at_end: HashSet<i32> = HashSet::new();
    loop {
        match consumer.recv().await {
            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                at_end.insert(p);
                if at_end.len() == partitions as usize && !table.is_restored() {
                    table.restored.store(true, Ordering::Release);
                    tracing::info!(
                        artifacts = table.len(),
                        "read model restored from the status topic"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "status topic read error"),
            Ok(m) => loop {
                match codec.decode::<StatusView>(m.payload()).await {
                    Ok(v) => table.upsert(v),
                    // Registry unavailable: wait, the record is not lost.
                    Err(e) if e.is_retriable() => {
                        tracing::warn!(error = %e, "status record waits for the registry");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, offset = m.offset(), "undecodable status record skipped")
                    }
                }
                break;
            },
        }
    }
}
