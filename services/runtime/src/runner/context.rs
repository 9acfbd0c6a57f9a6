//! The input consumer's context: it records partition assignments and
//! revocations for the runner (which restores dedup state before touching a
//! newly assigned partition), mirrors them onto the retry-topic consumer so
//! the owner of input partition `p` also owns retry partition `p`, and turns
//! librdkafka statistics into the consumer-lag gauge.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

/// Assignment changes seen by the callbacks, taken by the runner loop.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Input partitions currently owned.
    pub owned: BTreeSet<i32>,
    /// Newly assigned partitions whose dedup state is not restored yet.
    pub to_restore: BTreeSet<i32>,
    /// Partitions revoked since the loop last looked.
    pub revoked: BTreeSet<i32>,
    /// Counts revocations; a record collected at an earlier epoch than its
    /// partition's last revocation is stale and must not be processed.
    pub epoch: u64,
    /// The epoch of each partition's last revocation.
    pub revoked_at: std::collections::HashMap<i32, u64>,
}

impl Assignment {
    /// Whether a record of `partition` collected at `epoch` is still ours.
    pub fn is_current(&self, partition: i32, epoch: u64) -> bool {
        self.owned.contains(&partition)
            && self.revoked_at.get(&partition).is_none_or(|r| *r <= epoch)
    }
}

/// The context of the input consumer.
pub struct StageContext {
    pub(crate) group: String,
    pub(crate) input_topic: String,
    pub(crate) retry_topic: String,
    pub(crate) assignment: Arc<Mutex<Assignment>>,
    pub(crate) retry_consumer: Arc<OnceLock<Arc<StreamConsumer>>>,
}

impl StageContext {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.input_topic)
            .map(|e| e.partition())
            .collect()
    }

    fn retry_tpl(&self, parts: &[i32], offset: Offset) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            // Offset::Stored: start from the group's committed offset.
            let _ = tpl.add_partition_offset(&self.retry_topic, *p, offset);
        }
        tpl
    }
}

impl ClientContext for StageContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        "artifact_pipeline_consumer_lag",
                        "consumer_group" => self.group.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string(),
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = self.partitions_of(tpl);
            if parts.is_empty() {
                return;
            }
            tracing::info!(?parts, "partitions revoked");
            if let Some(rc) = self.retry_consumer.get()
                && let Err(e) = rc.incremental_unassign(&self.retry_tpl(&parts, Offset::Invalid))
            {
                tracing::warn!(error = %e, "unassigning retry partitions failed");
            }
            let mut a = self.assignment.lock().expect("assignment lock");
            a.epoch += 1;
            let epoch = a.epoch;
            for p in parts {
                a.owned.remove(&p);
                a.to_restore.remove(&p);
                a.revoked.insert(p);
                a.revoked_at.insert(p, epoch);
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = self.partitions_of(tpl);
            if parts.is_empty() {
                return;
            }
            tracing::info!(?parts, "partitions assigned");
            if let Some(rc) = self.retry_consumer.get()
                && let Err(e) = rc.incremental_assign(&self.retry_tpl(&parts, Offset::Stored))
            {
                tracing::warn!(error = %e, "assigning retry partitions failed");
            }
            let mut a = self.assignment.lock().expect("assignment lock");
            for p in parts {
                a.owned.insert(p);
                a.to_restore.insert(p);
            }
        }
    }
}
