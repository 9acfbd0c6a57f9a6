//! Purging processed retry records. A retry topic keeps its records for good
//! (`topics::RETRY_RETENTION_MS`), so a delayed retry survives any stop of
//! its stage; in exchange the stage deletes (`DeleteRecords`) the records
//! below the retry offsets it has committed: those were processed in a
//! committed batch, whichever instance owns the partition now. The topic
//! then holds the retries still pending, not every retry ever made.

use artifact_kafka::config::ConnectionConfig;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most one purge per this interval (the first one at once).
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Per partition, the committed retry offset still to purge up to.
pub(crate) struct RetryPurge {
    /// Where the admin client connects (`None`: offsets are only recorded,
    /// as the unit tests do).
    conn: Option<ConnectionConfig>,
    /// Created for the first purge: most stages never retry.
    admin: Option<Arc<AdminClient<DefaultClientContext>>>,
    topic: String,
    pending: BTreeMap<i32, i64>,
    last: Option<Instant>,
    running: Option<tokio::task::JoinHandle<Vec<(i32, i64)>>>,
}

impl RetryPurge {
    pub fn new(topic: String, conn: Option<ConnectionConfig>) -> Self {
        Self {
            conn,
            admin: None,
            topic,
            pending: BTreeMap::new(),
            last: None,
            running: None,
        }
    }

    /// A batch committed these `(partition, next offset)`s of the retry
    /// topic.
    pub fn committed(&mut self, offsets: impl IntoIterator<Item = (i32, i64)>) {
        for (p, o) in offsets {
            let c = self.pending.entry(p).or_insert(o);
            *c = (*c).max(o);
        }
    }

    /// Records deleted up to these `(partition, offset)`s: a partition is
    /// left pending only if committed past that since.
    fn deleted(&mut self, done: Vec<(i32, i64)>) {
        for (p, o) in done {
            if self.pending.get(&p).is_some_and(|&c| c <= o) {
                self.pending.remove(&p);
            }
        }
    }

    /// The partitions to purge, with the offset to purge up to.
    fn behind(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &self.pending {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o));
        }
        tpl
    }

    /// Starts a purge in the background if one is due: none running, the
    /// interval passed, and records committed past the last purge. Never
    /// waits for the broker.
    pub fn poll(&mut self) {
        if let Some(h) = &self.running {
            if !h.is_finished() {
                return;
            }
            let h = self.running.take().expect("checked above");
            if let Some(Ok(done)) = h.now_or_never() {
                self.deleted(done);
            }
        }
        if self.pending.is_empty() || self.last.is_some_and(|t| t.elapsed() < PURGE_EVERY) {
            return;
        }
        let Some(conn) = &self.conn else { return };
        self.last = Some(Instant::now());
        if self.admin.is_none() {
            match artifact_kafka::client::admin_client(conn) {
                Ok(a) => self.admin = Some(Arc::new(a)),
                Err(e) => {
                    tracing::warn!(error = %e, "processed retry records not deleted; trying again later");
                    return;
                }
            }
        }
        let admin = self.admin.clone().expect("created above");
        let tpl = self.behind();
        self.running = Some(tokio::spawn(async move {
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let mut done = Vec::new();
            match admin.delete_records(&tpl, &opts).await {
                Ok(result) => {
                    for e in result.elements() {
                        match e.error() {
                            Ok(()) => {
                                let asked = tpl
                                    .find_partition(e.topic(), e.partition())
                                    .and_then(|x| x.offset().to_raw());
                                if let Some(o) = asked {
                                    done.push((e.partition(), o));
                                }
                            }
                            Err(err) => tracing::warn!(
                                topic = e.topic(),
                                partition = e.partition(),
                                error = %err,
                                "processed retry records not deleted; trying again later"
                            ),
                        }
                    }
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "processed retry records not deleted; trying again later"
                ),
            }
            done
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partitions_committed_past_their_last_purge_are_purged() {
        let mut p = RetryPurge::new("t.retry".into(), None);
        assert_eq!(p.behind().count(), 0, "nothing committed");
        p.committed([(0, 5), (1, 3), (0, 4)]);
        let offsets = |tpl: TopicPartitionList| -> Vec<(i32, i64)> {
            tpl.elements()
                .iter()
                .map(|e| (e.partition(), e.offset().to_raw().unwrap()))
                .collect()
        };
        assert_eq!(offsets(p.behind()), vec![(0, 5), (1, 3)]);
        p.deleted(vec![(0, 5)]);
        assert_eq!(offsets(p.behind()), vec![(1, 3)]);
        p.committed([(0, 7)]);
        assert_eq!(offsets(p.behind()), vec![(0, 7), (1, 3)]);
        // Committed past a purge while it ran: still pending after it.
        p.deleted(vec![(0, 6), (1, 3)]);
        assert_eq!(offsets(p.behind()), vec![(0, 7)]);
    }
}
