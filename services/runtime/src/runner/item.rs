//! A record the runner collected, and what follows from a batch of them:
//! the offsets that commit it.

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;

/// Where a collected record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    Input,
    Retry,
}

impl Source {
    /// The metric label of records from this source.
    pub fn label(self) -> &'static str {
        match self {
            Source::Input => "input",
            Source::Retry => "retry",
        }
    }
}

/// A collected record.
#[derive(Debug)]
pub(crate) struct Item {
    pub msg: OwnedMessage,
    pub source: Source,
    /// 1 for the first delivery; from the `x-attempt` header on retries.
    pub delivery: u32,
    /// Assignment epoch when collected.
    pub epoch: u64,
}

impl Item {
    /// A record of the input topic, on its first delivery.
    pub fn input(msg: OwnedMessage, epoch: u64) -> Self {
        Item {
            msg,
            source: Source::Input,
            delivery: 1,
            epoch,
        }
    }

    pub fn partition(&self) -> i32 {
        self.msg.partition()
    }

    pub fn offset(&self) -> i64 {
        self.msg.offset()
    }
}

/// Per-partition offsets to commit for a batch: the highest offset + 1.
pub(crate) fn commit_offsets(items: &[Item]) -> TopicPartitionList {
    let mut next: HashMap<(&str, i32), i64> = HashMap::new();
    for it in items {
        let o = it.msg.offset() + 1;
        next.entry((it.msg.topic(), it.msg.partition()))
            .and_modify(|v| *v = (*v).max(o))
            .or_insert(o);
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in next {
        let _ = tpl.add_partition_offset(t, p, Offset::Offset(o));
    }
    tpl
}

/// The first offset of each `(topic, partition, source)` in `items`: where
/// a rewind puts the consumers back.
pub(crate) fn first_offsets(items: &[Item]) -> HashMap<(&str, i32, Source), i64> {
    let mut first: HashMap<(&str, i32, Source), i64> = HashMap::new();
    for it in items {
        let o = it.msg.offset();
        first
            .entry((it.msg.topic(), it.msg.partition(), it.source))
            .and_modify(|v| *v = (*v).min(o))
            .or_insert(o);
    }
    first
}
