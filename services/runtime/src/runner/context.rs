//! The input consumer's context: it records partition assignments and
//! revocations for the runner (which restores dedup state before touching a
//! newly assigned partition), mirrors them onto the retry-topic consumer so
//! the owner of input partition `p` also owns retry partition `p`, and turns
//! librdkafka statistics into the consumer-lag gauge.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
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
    /// Held while a batch's transaction commits.
    pub(crate) gate: Arc<super::commit::TxnGate>,
    pub(crate) group: String,
    pub(crate) input_topic: String,
    pub(crate) retry_topic: String,
    pub(crate) assignment: Arc<Mutex<Assignment>>,
    pub(crate) retry_consumer: Arc<OnceLock<Arc<StreamConsumer>>>,
    /// Set while the stage holds its input back: librdkafka learns a
    /// partition's end only from fetches, so the loop reports the input
    /// topic's lag itself then ([`super::control`]).
    pub(crate) held: std::sync::atomic::AtomicBool,
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
    /// Reads only what the lag gauge needs from librdkafka's statistics JSON
    /// (its full schema changes between librdkafka versions).
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            tracing::warn!("unreadable librdkafka statistics");
            return;
        };
        let Some(topics) = stats.get("topics").and_then(|t| t.as_object()) else {
            return;
        };
        let held = self.held.load(std::sync::atomic::Ordering::Relaxed);
        for (topic, t) in topics {
            if held && *topic == self.input_topic {
                continue;
            }
            let Some(partitions) = t.get("partitions").and_then(|p| p.as_object()) else {
                continue;
            };
            for (partition, p) in partitions {
                let num = |k: &str| p.get(k).and_then(|v| v.as_i64()).unwrap_or(-1);
                let assigned = p.get("fetch_state").and_then(|f| f.as_str()) != Some("none");
                // librdkafka's own `consumer_lag` is -1 when offsets are
                // committed through transactions, and offsets alone count
                // transaction markers as records. Lag is therefore what is
                // not fetched yet (last stable offset minus the fetch
                // position, which moves past markers) plus what is fetched
                // but not yet handed to the stage.
                let Some(behind) = lag(num("ls_offset"), num("next_offset")) else {
                    continue;
                };
                let lag = behind + num("fetchq_cnt").max(0);
                if partition.starts_with('-') || !assigned {
                    continue;
                }
                metrics::gauge!(
                    crate::stage_metrics::CONSUMER_LAG.0,
                    "consumer_group" => self.group.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.clone(),
                )
                .set(lag as f64);
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
            // The batch in flight may hold offsets of these partitions: let
            // it commit or abort before they change hands.
            self.gate.wait_idle(super::commit::COMMIT_MAX);
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
            if let Some(rc) = self.retry_consumer.get() {
                let tpl = self.retry_tpl(&parts, Offset::Stored);
                if let Err(e) = rc.incremental_assign(&tpl) {
                    tracing::warn!(error = %e, "assigning retry partitions failed");
                }
                // A retry partition this instance owned before may still be
                // paused for the retries it held then (librdkafka keeps an
                // application's pause across unassign and assign); those
                // were dropped at the revocation and are read again now.
                if let Err(e) = rc.resume(&tpl) {
                    tracing::warn!(error = %e, "resuming retry partitions failed");
                }
            }
            let mut a = self.assignment.lock().expect("assignment lock");
            for p in parts {
                a.owned.insert(p);
                a.to_restore.insert(p);
            }
        }
    }
}

/// Records behind: the end of the partition minus the position, when both
/// are known (an empty partition has no lag whatever the position).
pub(super) fn lag(end: i64, position: i64) -> Option<i64> {
    match (end, position) {
        (e, _) if e < 0 => None,
        (0, _) => Some(0),
        (_, p) if p < 0 => None,
        (e, p) => Some((e - p).max(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::lag;

    #[test]
    fn lag_needs_both_ends_known() {
        assert_eq!(lag(10, 4), Some(6));
        assert_eq!(lag(10, 10), Some(0));
        assert_eq!(lag(10, 12), Some(0));
        assert_eq!(lag(0, -1001), Some(0));
        assert_eq!(lag(10, -1001), None);
        assert_eq!(lag(-1001, 3), None);
    }
}
