//! Records read back from the stage's retry topic. A record joins a batch
//! once its not-before time has come and nothing earlier of its partition
//! is held; otherwise it is held, in order, and its partition of the retry
//! topic is paused until the head is due, so a partition's pending retries
//! are not all read into memory. Every pause and resume is here.

use super::item::{Item, Source};
use artifact_kafka::client::header;
use artifact_kafka::headers;
use artifact_kafka::now_ms;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// A retry record held until its not-before time.
struct Held {
    item: Item,
    not_before_ms: i64,
}

/// The retry topic's consumer and the records it holds back.
pub(crate) struct RetryQueue {
    consumer: Arc<StreamConsumer>,
    topic: String,
    /// Held records per partition, oldest first; a partition with held
    /// records is paused.
    held: BTreeMap<i32, VecDeque<Held>>,
}

impl RetryQueue {
    pub fn new(consumer: Arc<StreamConsumer>, topic: String) -> Self {
        RetryQueue {
            consumer,
            topic,
            held: BTreeMap::new(),
        }
    }

    pub fn consumer(&self) -> &StreamConsumer {
        &self.consumer
    }

    /// A record read from the retry topic: into `batch` if it is due and
    /// nothing of its partition is held, else held.
    pub fn on_record(&mut self, msg: OwnedMessage, epoch: u64, batch: &mut Vec<Item>) {
        let (delivery, not_before_ms) = retry_headers(&msg);
        let p = msg.partition();
        let item = Item {
            msg,
            source: Source::Retry,
            delivery,
            epoch,
        };
        match self.held.get_mut(&p) {
            Some(queue) => queue.push_back(Held {
                item,
                not_before_ms,
            }),
            None if not_before_ms <= now_ms() => batch.push(item),
            None => {
                self.pause(p);
                self.held.insert(
                    p,
                    VecDeque::from([Held {
                        item,
                        not_before_ms,
                    }]),
                );
            }
        }
    }

    /// Moves the held records that are due into `batch`, in order per
    /// partition, while it has fewer than `max` records; a partition whose
    /// held records all left is read again.
    pub fn take_due(&mut self, batch: &mut Vec<Item>, max: usize) {
        let now = now_ms();
        let mut emptied = Vec::new();
        for (p, queue) in self.held.iter_mut() {
            while batch.len() < max && queue.front().is_some_and(|h| h.not_before_ms <= now) {
                batch.push(queue.pop_front().expect("front exists").item);
            }
            if queue.is_empty() {
                emptied.push(*p);
            }
        }
        for p in emptied {
            self.held.remove(&p);
            self.resume(p);
        }
    }

    /// Partition `p` was revoked at epoch `at`: the records held from
    /// before are read again by its owner from the committed offset. Any
    /// read since were read after it came back to this instance (a
    /// revocation and an assignment within one collection): they are ours,
    /// and the consumer's position is past them, so they stay held.
    pub fn revoked(&mut self, p: i32, at: u64) {
        let Some(queue) = self.held.get_mut(&p) else {
            return;
        };
        queue.retain(|h| h.item.epoch >= at);
        if queue.is_empty() {
            self.held.remove(&p);
        } else {
            // Held again: read no further until its head is due.
            self.pause(p);
        }
    }

    /// Puts the consumer back at `offset` of partition `p`; the records
    /// held after it are read again too.
    pub fn rewind(&mut self, p: i32, offset: i64) {
        self.held.remove(&p);
        self.resume(p);
        if let Err(e) = self.consumer.seek(
            &self.topic,
            p,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            tracing::warn!(topic = %self.topic, partition = p, offset, error = %e, "rewind failed");
        }
    }

    /// Pauses the `owned` partitions for a held stage, or resumes those
    /// not holding records until they are due.
    pub fn hold(&self, owned: &std::collections::BTreeSet<i32>, hold: bool) {
        for p in owned {
            if hold {
                self.pause(*p);
            } else if !self.held.contains_key(p) {
                self.resume(*p);
            }
        }
    }

    fn pause(&self, p: i32) {
        let _ = self.consumer.pause(&self.partition(p));
    }

    fn resume(&self, p: i32) {
        let _ = self.consumer.resume(&self.partition(p));
    }

    fn partition(&self, p: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition(&self.topic, p);
        tpl
    }
}

/// A retry record's delivery number and not-before time. A retry record
/// is at least the second delivery; a header that says otherwise (or
/// nothing readable) counts as the second.
fn retry_headers(msg: &OwnedMessage) -> (u32, i64) {
    let delivery = header(msg, headers::ATTEMPT)
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(2, |d| d.clamp(2, 1_000_000));
    let not_before_ms = header(msg, headers::NOT_BEFORE)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (delivery, not_before_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, Timestamp};

    fn with_headers(pairs: &[(&str, &str)]) -> OwnedMessage {
        let mut h = OwnedHeaders::new();
        for (k, v) in pairs {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        OwnedMessage::new(
            None,
            None,
            "t.retry".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(h),
        )
    }

    #[test]
    fn a_retry_is_at_least_the_second_delivery() {
        assert_eq!(retry_headers(&with_headers(&[])), (2, 0));
        assert_eq!(retry_headers(&with_headers(&[("x-attempt", "0")])).0, 2);
        assert_eq!(retry_headers(&with_headers(&[("x-attempt", "x")])).0, 2);
        assert_eq!(retry_headers(&with_headers(&[("x-attempt", "3")])).0, 3);
        assert_eq!(
            retry_headers(&with_headers(&[("x-attempt", "4294967295")])).0,
            1_000_000
        );
        assert_eq!(
            retry_headers(&with_headers(&[("x-not-before", "1234")])).1,
            1234
        );
    }
}
