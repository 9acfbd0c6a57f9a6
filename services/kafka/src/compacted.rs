//! Reading a compacted topic as a table: every partition from the
//! beginning, a [`Change::CaughtUp`] once the high watermarks found at
//! open are reached, then every later record as it comes. A record
//! without a value is a tombstone: the reader's table deletes its key.
//!
//! Nothing is committed: each open reads the topic again, so the table a
//! reader builds is the topic's, whatever happened before a restart.

use crate::client::{FETCH_QUEUE_BACKOFF_MS, QuietEof, client_config};
use crate::config::ConnectionConfig;
use crate::topics::partition_counts;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Why the topic cannot be read (open again, after a pause).
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The topic does not exist.
    #[error("topic {0} missing; run `artifactctl topics create`")]
    Missing(String),
    /// Kafka refused or did not answer.
    #[error("reading {topic} failed: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Finding the topic's partitions failed.
    #[error(transparent)]
    Metadata(#[from] crate::client::KafkaError),
}

/// What the reader read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A record: an upsert of its key, or with `value: None`, a tombstone.
    Record {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Its key, if any.
        key: Option<Vec<u8>>,
        /// Its value; `None` deletes the key.
        value: Option<Vec<u8>>,
    },
    /// Every record that was in the topic at open has been returned (sent
    /// once per open).
    CaughtUp,
}

/// A reader of one compacted topic.
pub struct CompactedReader {
    topic: String,
    consumer: StreamConsumer<QuietEof>,
    /// Each partition's high watermark at open.
    ends: HashMap<i32, i64>,
    /// Partitions not yet read to `ends`.
    behind: HashSet<i32>,
    caught_up_sent: bool,
}

impl CompactedReader {
    /// Opens `topic` from the beginning of every partition; `client_id`
    /// names the reader in the broker's logs.
    pub async fn open(
        conn: &ConnectionConfig,
        topic: &str,
        client_id: &str,
    ) -> Result<Self, FollowError> {
        let (c, t, id) = (conn.clone(), topic.to_owned(), client_id.to_owned());
        let ends = tokio::task::spawn_blocking(move || high_watermarks(&c, &t, &id))
            .await
            .expect("the watermark reader does not panic")?;
        let kafka = |source| FollowError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let consumer: StreamConsumer<QuietEof> = client_config(conn, client_id)
            .set("group.id", format!("{client_id}-unused"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .create_with_context(QuietEof)
            .map_err(kafka)?;
        let mut tpl = TopicPartitionList::new();
        for p in ends.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(kafka)?;
        }
        consumer.assign(&tpl).map_err(kafka)?;
        // An empty partition is read to its end already: its end-of-partition
        // event comes only once a fetch waited out `fetch.wait.max.ms`.
        let behind = ends
            .iter()
            .filter(|(_, end)| **end > 0)
            .map(|(p, _)| *p)
            .collect();
        Ok(CompactedReader {
            topic: topic.to_owned(),
            consumer,
            ends,
            behind,
            caught_up_sent: false,
        })
    }

    /// The next record, or [`Change::CaughtUp`] once.
    pub async fn next(&mut self) -> Result<Change, FollowError> {
        loop {
            if self.behind.is_empty() && !self.caught_up_sent {
                self.caught_up_sent = true;
                return Ok(Change::CaughtUp);
            }
            match self.consumer.recv().await {
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    self.behind.remove(&p);
                }
                Err(source) => {
                    return Err(FollowError::Kafka {
                        topic: self.topic.clone(),
                        source,
                    });
                }
                Ok(m) => {
                    let (partition, offset) = (m.partition(), m.offset());
                    if self.ends.get(&partition).is_some_and(|e| offset + 1 >= *e) {
                        self.behind.remove(&partition);
                    }
                    return Ok(Change::Record {
                        partition,
                        offset,
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                    });
                }
            }
        }
    }
}

/// Each partition's high watermark, once the topic exists.
fn high_watermarks(
    conn: &ConnectionConfig,
    topic: &str,
    client_id: &str,
) -> Result<HashMap<i32, i64>, FollowError> {
    let counts = partition_counts(conn, &[topic.to_owned()], Duration::from_secs(10))?;
    let Some(&n) = counts.get(topic) else {
        return Err(FollowError::Missing(topic.to_owned()));
    };
    let kafka = |source| FollowError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let reader: BaseConsumer<QuietEof> = client_config(conn, client_id)
        .create_with_context(QuietEof)
        .map_err(kafka)?;
    (0..n as i32)
        .map(|p| {
            let (_, high) = reader
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(kafka)?;
            Ok((p, high))
        })
        .collect()
}

/// Whether a follower has read its topic to the end the topic had when it
/// started, for those who must wait for that before they act.
#[derive(Debug, Default)]
pub struct CaughtUp {
    done: std::sync::atomic::AtomicBool,
    now: tokio::sync::Notify,
}

impl CaughtUp {
    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until it is.
    pub async fn wait(&self) {
        loop {
            let notified = self.now.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }

    pub fn mark(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.now.notify_waiters();
    }
}
