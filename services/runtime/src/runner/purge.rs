//! Purging processed retry records. A retry topic keeps its records for good
//! (`topics::RETRY_RETENTION_MS`), so a delayed retry survives any stop of
//! its stage; in exchange the stage deletes (`DeleteRecords`) the records
//! below the retry offsets it has committed: those were processed in a
//! committed batch, whichever instance owns the partition now. The topic
//! then holds the retries still pending, not every retry ever made.

use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most one purge per this interval (the first one at once).
pub(crate) const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Per partition: the retry offsets committed, and those purged up to.
pub(crate) struct RetryPurge {
    admin: Option<Arc<AdminClient<DefaultClientContext>>>,
    topic: String,
    committed: BTreeMap<i32, i64>,
    purged: BTreeMap<i32, i64>,
    last: Option<Instant>,
    running: Option<tokio::task::JoinHandle<BTreeMap<i32, i64>>>,
}

impl RetryPurge {
    /// Purges `topic` through `admin` (`None`: records committed offsets
    /// only, as the unit tests do).
    pub fn new(topic: String, admin: Option<Arc<AdminClient<DefaultClientContext>>>) -> Self {
        Self {
            admin,
            topic,
            committed: BTreeMap::new(),
            purged: BTreeMap::new(),
            last: None,
            running: None,
        }
    }

    /// A batch committed these `(partition, next offset)`s of the retry
    /// topic.
    pub fn committed(&mut self, offsets: impl IntoIterator<Item = (i32, i64)>) {
        for (p, o) in offsets {
            let c = self.committed.entry(p).or_insert(o);
            *c = (*c).max(o);
        }
    }

    /// The partitions whose committed offset is past what was purged.
    fn behind(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &self.committed {
            if self.purged.get(&p).is_none_or(|&done| done < o) {
                let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o));
            }
        }
        tpl
    }

    /// Starts a purge in the background if one is due: none running, the
    /// interval passed, and records committed past the last purge. Never
    /// waits for the broker.
    pub fn poll(&mut self) {
        let Some(admin) = self.admin.clone() else {
            return;
        };
        if let Some(h) = &self.running {
            if !h.is_finished() {
                return;
            }
            let h = self.running.take().expect("checked above");
            if let Some(Ok(done)) = h.now_or_never() {
                for (p, o) in done {
                    let d = self.purged.entry(p).or_insert(o);
                    *d = (*d).max(o);
                }
            }
        }
        if self.last.is_some_and(|t| t.elapsed() < PURGE_EVERY) {
            return;
        }
        let tpl = self.behind();
        if tpl.count() == 0 {
            return;
        }
        self.last = Some(Instant::now());
        self.running = Some(tokio::spawn(async move {
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
            let mut done = BTreeMap::new();
            match admin.delete_records(&tpl, &opts).await {
                Ok(result) => {
                    for e in result.elements() {
                        match e.error() {
                            Ok(()) => {
                                let asked = tpl
                                    .find_partition(e.topic(), e.partition())
                                    .and_then(|x| x.offset().to_raw());
                                if let Some(o) = asked {
                                    done.insert(e.partition(), o);
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
        p.purged.insert(0, 5);
        assert_eq!(offsets(p.behind()), vec![(1, 3)]);
        p.committed([(0, 7)]);
        assert_eq!(offsets(p.behind()), vec![(0, 7), (1, 3)]);
    }
}
