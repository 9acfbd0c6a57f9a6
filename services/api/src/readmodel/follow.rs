//! The read model's Kafka follower: reads the compacted status topic from
//! the beginning at start into the table (the API is not ready until it
//! reached the end of every partition), then keeps the table up to date.
//! It never commits offsets: every start reads the topic again.

use crate::metrics;
use crate::readmodel::StatusTable;
use artifact_domain::{ArtifactId, StatusView};
use artifact_kafka::client::{FETCH_QUEUE_BACKOFF_MS, QuietEof, client_config, gather_fetches};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::{TopicNames, partition_counts};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Records written to the table at once, at most.
const BATCH: usize = 256;

/// Reads the status topic into `table` for ever.
pub async fn follow_status_topic(
    conn: ConnectionConfig,
    codec: Arc<AvroCodec>,
    table: Arc<StatusTable>,
) -> anyhow::Result<()> {
    let topic = TopicNames::from_config(&conn).status();
    let (partitions, empty) = find_partitions(&conn, &topic).await?;
    let consumer = assign_from_beginning(&conn, &topic, partitions)?;
    let mut follower = Follower {
        table,
        codec,
        partitions: partitions as usize,
        // An empty partition is read to its end already: its end-of-partition
        // event would only come once a fetch waited out `fetch.wait.max.ms`.
        at_end: empty,
        restore_records: 0,
    };
    loop {
        follower.note_restored();
        let (views, erased) = follower.next_batch(&consumer).await;
        follower.write(views).await;
        if let Some(id) = erased {
            follower.table.remove(id);
        }
    }
}

/// The status topic's partition count and its empty partitions, once the
/// topic exists.
async fn find_partitions(
    conn: &ConnectionConfig,
    topic: &str,
) -> anyhow::Result<(i32, HashSet<i32>)> {
    loop {
        let (conn2, t) = (conn.clone(), topic.to_owned());
        let found = tokio::task::spawn_blocking(move || {
            let counts =
                partition_counts(&conn2, std::slice::from_ref(&t), Duration::from_secs(10))?;
            let n = counts.get(&t).copied();
            let empty = n
                .map(|n| empty_partitions(&conn2, &t, n as i32))
                .unwrap_or_default();
            Ok::<_, artifact_kafka::client::KafkaError>((n, empty))
        })
        .await??;
        match found {
            (Some(n), empty) => return Ok((n as i32, empty)),
            (None, _) => {
                tracing::warn!(%topic, "status topic missing; run `artifactctl topics create`");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// A consumer assigned every partition of `topic` from its beginning.
fn assign_from_beginning(
    conn: &ConnectionConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<StreamConsumer<QuietEof>> {
    let consumer: StreamConsumer<QuietEof> =
        gather_fetches(&mut client_config(conn, "artifact-api-readmodel"))
            .set("group.id", "artifact-api-readmodel-unused")
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The follower's state: the table, and how far the restore has come.
struct Follower {
    table: Arc<StatusTable>,
    codec: Arc<AvroCodec>,
    partitions: usize,
    /// Partitions read to their end at least once.
    at_end: HashSet<i32>,
    /// Status records read until the restore is done.
    restore_records: u64,
}

impl Follower {
    /// Marks the table restored once every partition was read to its end.
    fn note_restored(&self) {
        let table = &self.table;
        if self.at_end.len() == self.partitions && !table.is_restored() {
            table.mark_restored();
            tracing::info!(
                records = self.restore_records,
                artifacts = table.len(),
                in_flight = table.in_flight(),
                file_bytes = table.file_bytes(),
                "read model restored from the status topic"
            );
        }
    }

    /// The next record and what the client already holds besides, up to
    /// [`BATCH`] snapshots, and the artifact of a tombstone that ends the
    /// batch (to be removed after the snapshots before it).
    async fn next_batch(
        &mut self,
        consumer: &StreamConsumer<QuietEof>,
    ) -> (Vec<StatusView>, Option<ArtifactId>) {
        let mut views: Vec<StatusView> = Vec::new();
        let mut next = Some(consumer.recv().await);
        while let Some(received) = next.take() {
            match received {
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    self.at_end.insert(p);
                }
                Err(e) => tracing::warn!(error = %e, "status topic read error"),
                Ok(m) if m.payload().is_none() => {
                    // An erased artifact's tombstone.
                    let id = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok())
                        .and_then(|k| k.parse::<ArtifactId>().ok());
                    if id.is_some() {
                        return (views, id);
                    }
                }
                Ok(m) => {
                    if let Some(v) = decode_status(&self.codec, &m).await {
                        views.push(v);
                    }
                }
            }
            if views.len() < BATCH {
                next = consumer.recv().now_or_never();
            }
        }
        (views, None)
    }

    /// Writes snapshots to the table, again and again until the file takes
    /// them (a full disk, say): the table falls behind the topic, nothing is
    /// lost. (A write is an append of a few kilobytes: it runs on the task.)
    async fn write(&mut self, views: Vec<StatusView>) {
        if views.is_empty() {
            return;
        }
        if !self.table.is_restored() {
            self.restore_records += views.len() as u64;
        }
        while let Err(e) = self.table.upsert(&views) {
            tracing::warn!(error = %e, "read-model write failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        metrics::read_model(self.table.file_bytes(), self.table.in_flight());
    }
}

/// The partitions of `topic` without a record to read (their first and end
/// offsets are equal, as read by a `read_committed` consumer). A partition
/// whose offsets cannot be looked up is left out: it is read to its end.
fn empty_partitions(conn: &ConnectionConfig, topic: &str, partitions: i32) -> HashSet<i32> {
    let consumer: Result<rdkafka::consumer::BaseConsumer, _> =
        client_config(conn, "artifact-api-readmodel")
            .set("isolation.level", "read_committed")
            .create();
    let Ok(consumer) = consumer else {
        return HashSet::new();
    };
    (0..partitions)
        .filter(|&p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .is_ok_and(|(low, high)| low == high)
        })
        .collect()
}

/// A status record's snapshot; `None` (logged) if it can never decode.
async fn decode_status(codec: &AvroCodec, m: &BorrowedMessage<'_>) -> Option<StatusView> {
    loop {
        match codec.decode::<StatusView>(m.payload()).await {
            Ok(v) => return Some(v),
            // Registry unavailable: wait, the record is not lost.
            Err(e) if e.is_retriable() => {
                tracing::warn!(error = %e, "status record waits for the registry");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, offset = m.offset(), "undecodable status record skipped");
                return None;
            }
        }
    }
}
