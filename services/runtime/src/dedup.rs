//! Keyed dedup state: for every artifact, the newest generation a stage
//! processed. Kept in memory per partition, written to the stage's compacted
//! `<prefix>.<stage>.dedup` topic in the same transaction as the outcome, and
//! restored from the same-numbered partition of that topic before any input
//! of a newly assigned partition is processed.

use crate::codec::{AvroCodec, CodecError};
use crate::config::ConnectionConfig;
use crate::kafka::QuietEof;
use crate::kafka::client_config;
use artifact_domain::outcome::OutcomeStatus;
use artifact_domain::{ArtifactId, DedupDecision, Generation, decide};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The value of a dedup-topic record (`schemas/dedup-entry.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    /// The artifact; also the record key.
    pub artifact_id: ArtifactId,
    /// The newest generation processed.
    pub generation: Generation,
    /// The kind of outcome emitted for it.
    pub outcome_status: OutcomeStatus,
    /// When it was processed (epoch milliseconds).
    pub processed_at: i64,
}

/// Dedup state of the partitions an instance owns.
#[derive(Debug, Default)]
pub struct DedupState {
    partitions: HashMap<i32, HashMap<ArtifactId, Generation>>,
}

impl DedupState {
    /// Whether a partition's state was restored.
    pub fn has_partition(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Installs a restored partition.
    pub fn install(&mut self, partition: i32, entries: HashMap<ArtifactId, Generation>) {
        self.partitions.insert(partition, entries);
    }

    /// Forgets a partition (revoked).
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Partitions held.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// The newest generation processed for an artifact.
    pub fn last(&self, partition: i32, id: ArtifactId) -> Option<Generation> {
        self.partitions.get(&partition)?.get(&id).copied()
    }

    /// Decides on an incoming generation.
    pub fn decide(&self, partition: i32, id: ArtifactId, generation: Generation) -> DedupDecision {
        decide(self.last(partition, id), generation)
    }

    /// Records a processed generation (after its transaction committed).
    /// A partition not held (revoked meanwhile, or not restored yet) is left
    /// alone: its state comes from the dedup topic when it is assigned.
    pub fn record(&mut self, partition: i32, id: ArtifactId, generation: Generation) {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return;
        };
        let slot = p.entry(id).or_insert(generation);
        if generation > *slot {
            *slot = generation;
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Restoring a partition failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Kafka could not be read.
    #[error("reading dedup topic {topic} partition {partition}: {source}")]
    Kafka {
        /// The dedup topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The client error.
        source: KafkaError,
    },
    /// A record could not be decoded for a transient reason (registry down).
    #[error("decoding dedup topic {topic}: {source}")]
    Codec {
        /// The dedup topic.
        topic: String,
        /// The codec error.
        source: CodecError,
    },
    /// The partition was not read to its end in time.
    #[error("restoring dedup topic {topic} partition {partition} took longer than {timeout:?}")]
    Timeout {
        /// The dedup topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The limit.
        timeout: Duration,
    },
}

/// What a restore read.
#[derive(Debug, Default)]
pub struct Restored {
    /// The newest generation per artifact.
    pub entries: HashMap<ArtifactId, Generation>,
    /// Records read.
    pub records: u64,
    /// Records that did not decode (skipped; counted).
    pub undecodable: u64,
}

/// Reads one partition of a dedup topic from the beginning to its end
/// (`read_committed`: up to the last stable offset) and returns the newest
/// generation per artifact.
pub async fn restore_partition(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Restored, RestoreError> {
    let kafka = |source| RestoreError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let consumer: BaseConsumer<QuietEof> = client_config(conn, "dedup-restore")
        .set("group.id", "dedup-restore-unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        // Reaching the end is the goal: do not let the broker hold fetches.
        .set("fetch.wait.max.ms", "10")
        .set(
            "fetch.queue.backoff.ms",
            crate::kafka::FETCH_QUEUE_BACKOFF_MS,
        )
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "52428800")
        .create_with_context(QuietEof)
        .map_err(kafka)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(kafka)?;
    consumer.assign(&tpl).map_err(kafka)?;

    let deadline = Instant::now() + timeout;
    let mut out = Restored::default();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(1024);
    loop {
        if Instant::now() >= deadline {
            return Err(RestoreError::Timeout {
                topic: topic.to_owned(),
                partition,
                timeout,
            });
        }
        // Drain what the client has buffered without yielding between records.
        let mut eof = false;
        while batch.len() < 4096 {
            match consumer.poll(Duration::from_millis(if batch.is_empty() {
                100
            } else {
                0
            })) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    eof = true;
                    break;
                }
                Some(Err(e)) => return Err(kafka(e)),
                Some(Ok(m)) => match m.payload() {
                    Some(p) => batch.push(p.to_vec()),
                    None => out.records += 1, // tombstone: nothing to keep
                },
            }
        }
        for bytes in batch.drain(..) {
            out.records += 1;
            match codec.decode::<DedupEntry>(Some(&bytes)).await {
                Ok(e) => {
                    let slot = out.entries.entry(e.artifact_id).or_insert(e.generation);
                    if e.generation > *slot {
                        *slot = e.generation;
                    }
                }
                Err(e) if e.is_retriable() => {
                    return Err(RestoreError::Codec {
                        topic: topic.to_owned(),
                        source: e,
                    });
                }
                Err(_) => out.undecodable += 1,
            }
        }
        if eof {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: i64) -> Generation {
        Generation::new(n).unwrap()
    }

    #[test]
    fn decisions_follow_recorded_generations_per_partition() {
        let mut s = DedupState::default();
        let id = ArtifactId::new_random();
        s.install(0, HashMap::new());
        assert_eq!(s.decide(0, id, g(1)), DedupDecision::Process);
        s.record(0, id, g(1));
        assert_eq!(s.decide(0, id, g(1)), DedupDecision::Duplicate);
        assert_eq!(s.decide(0, id, g(2)), DedupDecision::Process);
        s.record(0, id, g(2));
        assert_eq!(s.decide(0, id, g(1)), DedupDecision::Stale);
        // Recording an older generation never moves the state back.
        s.record(0, id, g(1));
        assert_eq!(s.last(0, id), Some(g(2)));
        // Another partition knows nothing of it.
        assert_eq!(s.decide(1, id, g(1)), DedupDecision::Process);
        s.drop_partition(0);
        assert_eq!(s.last(0, id), None);
        assert!(s.is_empty());
        // A partition not held (revoked) does not come back by recording.
        s.record(0, id, g(3));
        assert!(!s.has_partition(0));
        assert!(s.is_empty());
    }
}
