//! Restoring one partition's dedup state from the dedup topic, to the end
//! of everything written when the restore began.
//!
//! A `read_committed` reader sees the end of a partition at its last stable
//! offset, the first offset of a transaction still open. Reading only to
//! there would miss the entries of a batch the previous owner is still
//! committing, and the new owner would process that batch's duplicates
//! again. So the target is the high watermark when the restore begins: the
//! restore first waits until the last stable offset has reached it (every
//! transaction written below it committed or aborted), then reads to the
//! end. It has no deadline: it goes on until done, reporting its progress,
//! and after an error (broker or registry away) it resumes where it was.

use super::Restored;
use artifact_domain::dedup::DedupEntry;
use artifact_domain::{ArtifactId, Generation};
use artifact_kafka::client::{FETCH_QUEUE_BACKOFF_MS, QuietEof, client_config, consumer_config};
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::config::ConnectionConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Why one attempt of a restore stopped; the restore tries again.
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
}

/// How far a restore has come, shared with whoever reports it.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Records read so far.
    pub records: AtomicU64,
    /// Offsets left before the target (an estimate: transaction markers
    /// and aborted records count too); -1 until the target is known.
    pub remaining: AtomicI64,
    /// Waiting for transactions below the target to finish.
    pub waiting: AtomicBool,
    /// Why the last interrupted attempt was (a registry or broker outage).
    pub interrupted: std::sync::Mutex<Option<String>>,
}

impl RestoreProgress {
    fn set_interrupted(&self, why: String) {
        *self.interrupted.lock().expect("progress lock") = Some(why);
    }

    /// Why the last interrupted attempt was, if one was.
    pub fn interrupted(&self) -> Option<String> {
        self.interrupted.lock().expect("progress lock").clone()
    }
}

/// What a restore reads, and how far it read.
struct Reading<'a> {
    conn: &'a ConnectionConfig,
    codec: &'a AvroCodec,
    topic: &'a str,
    partition: i32,
    expire_before_ms: Option<i64>,
    progress: &'a RestoreProgress,
    /// What was read so far.
    out: Restored,
    /// Keys whose last entry so far was processed before the expiry:
    /// entries are appended as they are processed, so a key's last is its
    /// newest.
    expired: HashSet<ArtifactId>,
    /// The offset to read from next.
    next: i64,
    /// The high watermark when the restore began.
    target: Option<i64>,
}

/// Reads one partition of a dedup topic from the beginning to the high
/// watermark it has when the call begins, and returns the newest
/// generation per artifact, leaving out those whose newest entry was
/// processed before `expire_before_ms` (epoch milliseconds). Errors are
/// logged and the read resumes after a pause; only `cancelled` ends it
/// early (with `None`).
pub async fn restore_partition(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    topic: &str,
    partition: i32,
    expire_before_ms: Option<i64>,
    progress: &RestoreProgress,
    cancelled: &AtomicBool,
) -> Option<Restored> {
    progress.remaining.store(-1, Ordering::Relaxed);
    let mut reading = Reading {
        conn,
        codec,
        topic,
        partition,
        expire_before_ms,
        progress,
        out: Restored::default(),
        expired: HashSet::new(),
        next: 0,
        target: None,
    };
    let mut failures = 0u32;
    loop {
        match reading.attempt(cancelled).await {
            Ok(true) => return Some(reading.finish()),
            Ok(false) => return None,
            Err(e) => {
                failures += 1;
                progress.set_interrupted(e.to_string());
                tracing::warn!(error = %e, partition, next = reading.next, failures, "dedup restore interrupted; resuming");
                tokio::time::sleep(crate::retry::jittered(
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                    failures,
                ))
                .await;
            }
        }
        if cancelled.load(Ordering::Relaxed) {
            return None;
        }
    }
}

impl Reading<'_> {
    fn kafka(&self) -> impl Fn(KafkaError) -> RestoreError + '_ {
        move |source| RestoreError::Kafka {
            topic: self.topic.to_owned(),
            partition: self.partition,
            source,
        }
    }

    /// One attempt: from `next` to the target. `Ok(false)` if cancelled.
    async fn attempt(&mut self, cancelled: &AtomicBool) -> Result<bool, RestoreError> {
        let consumer: StreamConsumer<QuietEof> =
            consumer_config(self.conn, "dedup-restore", "dedup-restore-unused")
                .set("enable.partition.eof", "true")
                // Reaching the end is the goal: do not let the broker hold fetches.
                .set("fetch.wait.max.ms", "10")
                .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
                .set("fetch.max.bytes", "52428800")
                .set("max.partition.fetch.bytes", "52428800")
                .create_with_context(QuietEof)
                .map_err(self.kafka())?;
        let target = match self.target {
            Some(t) => t,
            None => {
                let t = self.high_watermark()?;
                self.target = Some(t);
                t
            }
        };
        if !self.wait_until_stable(&consumer, target, cancelled).await? {
            return Ok(false);
        }
        if self.next >= target {
            return Ok(true);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(self.next))
            .map_err(self.kafka())?;
        consumer.assign(&tpl).map_err(self.kafka())?;
        // Every transaction below the target has finished: the first end
        // of the partition this reader sees lies at or past it.
        loop {
            let got = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await;
            if cancelled.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match got {
                Err(_) => continue,
                Ok(Err(KafkaError::PartitionEOF(_))) => return Ok(true),
                Ok(Err(e)) => return Err(self.kafka()(e)),
                Ok(Ok(msg)) => {
                    let (offset, key, value) = (
                        msg.offset(),
                        msg.key().map(<[u8]>::to_vec),
                        msg.payload().map(<[u8]>::to_vec),
                    );
                    drop(msg);
                    self.apply(key, value).await?;
                    self.next = offset + 1;
                    self.progress.records.fetch_add(1, Ordering::Relaxed);
                    self.progress
                        .remaining
                        .store((target - self.next).max(0), Ordering::Relaxed);
                }
            }
        }
    }

    /// The partition's high watermark now, as a reader of everything
    /// written (`read_uncommitted`) sees it.
    fn high_watermark(&self) -> Result<i64, RestoreError> {
        let reader: rdkafka::consumer::BaseConsumer<QuietEof> =
            client_config(self.conn, "dedup-restore")
                .set("isolation.level", "read_uncommitted")
                .create_with_context(QuietEof)
                .map_err(self.kafka())?;
        let (_, high) = reader
            .fetch_watermarks(self.topic, self.partition, Duration::from_secs(10))
            .map_err(self.kafka())?;
        Ok(high)
    }

    /// Waits until the last stable offset (what a `read_committed` reader
    /// may read up to) has reached `target`. `Ok(false)` if cancelled.
    async fn wait_until_stable(
        &self,
        consumer: &StreamConsumer<QuietEof>,
        target: i64,
        cancelled: &AtomicBool,
    ) -> Result<bool, RestoreError> {
        loop {
            let (_, stable) = consumer
                .fetch_watermarks(self.topic, self.partition, Duration::from_secs(10))
                .map_err(self.kafka())?;
            if stable >= target {
                self.progress.waiting.store(false, Ordering::Relaxed);
                return Ok(true);
            }
            if !self.progress.waiting.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    partition = self.partition,
                    stable,
                    target,
                    "dedup restore waiting for an open transaction to finish"
                );
            }
            if cancelled.load(Ordering::Relaxed) {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies one record: an entry, or a tombstone.
    async fn apply(
        &mut self,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Result<(), RestoreError> {
        let Some(bytes) = value else {
            // A tombstone: the key's entry was removed.
            let id = key
                .and_then(|k| String::from_utf8(k).ok())
                .and_then(|k| k.parse::<ArtifactId>().ok());
            if let Some(id) = id {
                self.expired.remove(&id);
                self.out.entries.remove(&id);
            }
            self.out.records += 1;
            return Ok(());
        };
        match self.codec.decode::<DedupEntry>(Some(&bytes)).await {
            Ok(e) => self.entry(e.artifact_id, e.generation, e.processed_at),
            Err(e) if e.is_retriable() => {
                return Err(RestoreError::Codec {
                    topic: self.topic.to_owned(),
                    source: e,
                });
            }
            Err(_) => self.out.undecodable += 1,
        }
        self.out.records += 1;
        Ok(())
    }

    fn entry(&mut self, id: ArtifactId, generation: Generation, processed_at: i64) {
        let slot = self.out.entries.entry(id).or_insert(generation);
        *slot = (*slot).max(generation);
        if self
            .expire_before_ms
            .is_some_and(|before| processed_at < before)
        {
            self.expired.insert(id);
        } else {
            self.expired.remove(&id);
        }
    }

    /// The newest generation per artifact not expired, and the expired keys.
    fn finish(mut self) -> Restored {
        for id in &self.expired {
            self.out.entries.remove(id);
        }
        if self.expired.len() > self.out.entries.len() {
            self.out.entries.shrink_to_fit();
        }
        self.out.expired = self.expired.into_iter().collect();
        self.progress.remaining.store(0, Ordering::Relaxed);
        self.out
    }
}
