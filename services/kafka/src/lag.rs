//! Consumer lag of the stages' groups, read from the broker alone, so it is
//! there while a stage is down: `artifactctl lag` prints it once,
//! `artifactctl lag-exporter` serves it to Prometheus and the console's
//! stages page shows it.
//!
//! Each stage's group reads its input topic and commits on its retry topic
//! too. Lag of a partition is what a `read_committed` reader starting at the
//! group's committed offset (else at the log start) would still get. The
//! high watermark alone overcounts: a transaction's commit marker takes an
//! offset but is no record, so a group that read everything of a
//! transactionally written partition stays one or more offsets behind. A
//! small gap is therefore read through (see [`PROBE_MAX_GAP`]); a larger
//! one is taken as the offset difference, which counts at most one marker
//! per transaction.

use crate::client::consumer_config;
use crate::config::ConnectionConfig;
use crate::topics::{TopicNames, partition_counts};
use anyhow::Context;
use artifact_domain::Stage;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Gaps up to this many offsets are read through with `read_committed` to
/// count the records in them; idle groups behind only markers sit here.
pub const PROBE_MAX_GAP: i64 = 64;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer group and the topics it commits on.
#[derive(Debug, Clone)]
pub struct GroupTopics {
    pub group: String,
    pub topics: Vec<String>,
}

/// Every stage's group (`<prefix><stage>`) with its input and retry topics.
pub fn stage_groups(conn: &ConnectionConfig, group_prefix: &str) -> Vec<GroupTopics> {
    let names = TopicNames::from_config(conn);
    Stage::ALL
        .iter()
        .map(|&s| GroupTopics {
            group: format!("{group_prefix}{}", s.name()),
            topics: vec![names.input(s), names.retry(s)],
        })
        .collect()
}

/// One partition of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Committed offset (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// Log start offset.
    pub low: i64,
    /// End (high watermark).
    pub high: i64,
    /// Records behind.
    pub lag: i64,
}

/// A group's live consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembers {
    /// The coordinator's word for the group's state.
    pub state: String,
    /// Each member's client id and host.
    pub members: Vec<String>,
}

/// Where a reader of the group starts in a partition, and the offsets up to
/// the end: the committed offset, or the log start with nothing committed
/// (the stages reset to earliest); never below the log start, as records
/// below it are deleted.
pub fn start_and_gap(committed: Option<i64>, low: i64, high: i64) -> (i64, i64) {
    let start = committed.unwrap_or(low).max(low);
    (start, (high - start).max(0))
}

/// Reads committed offsets and ends of a fixed set of groups. Keeps one
/// client per group (it never joins the group: it only reads its offsets).
pub struct LagReader {
    conn: ConnectionConfig,
    groups: Vec<(GroupTopics, BaseConsumer)>,
}

impl LagReader {
    pub fn new(conn: &ConnectionConfig, groups: Vec<GroupTopics>) -> anyhow::Result<Self> {
        let groups = groups
            .into_iter()
            .map(|g| {
                let c: BaseConsumer =
                    consumer_config(conn, "artifactctl-lag", &g.group).create()?;
                Ok((g, c))
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(LagReader {
            conn: conn.clone(),
            groups,
        })
    }

    /// Every partition of every group's topics. A missing topic is an error.
    pub fn read(&self) -> anyhow::Result<Vec<PartitionLag>> {
        let topics: Vec<String> = self
            .groups
            .iter()
            .flat_map(|(g, _)| g.topics.iter().cloned())
            .collect();
        let counts = partition_counts(&self.conn, &topics, TIMEOUT)?;
        let mut ends: BTreeMap<(String, i32), (i64, i64)> = BTreeMap::new();
        let mut rows = vec![];
        for (g, consumer) in &self.groups {
            let mut tpl = TopicPartitionList::new();
            for t in &g.topics {
                let n = *counts
                    .get(t)
                    .with_context(|| format!("topic {t} does not exist"))?;
                for p in 0..n as i32 {
                    tpl.add_partition(t, p);
                }
            }
            let committed = consumer
                .committed_offsets(tpl, TIMEOUT)
                .with_context(|| format!("reading the committed offsets of {}", g.group))?;
            for e in committed.elements() {
                let key = (e.topic().to_owned(), e.partition());
                let (low, high) = match ends.get(&key) {
                    Some(w) => *w,
                    None => {
                        let w = consumer.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
                        ends.insert(key, w);
                        w
                    }
                };
                let committed = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                let (_, gap) = start_and_gap(committed, low, high);
                rows.push(PartitionLag {
                    group: g.group.clone(),
                    topic: e.topic().to_owned(),
                    partition: e.partition(),
                    committed,
                    low,
                    high,
                    lag: gap,
                });
            }
        }
        self.count_small_gaps(&mut rows)?;
        Ok(rows)
    }

    /// The members of each group (its live consumers: a stage's replicas)
    /// and the group's state as the coordinator tells it (`Stable`,
    /// `Empty`, `PreparingRebalance`...).
    pub fn members(&self) -> anyhow::Result<BTreeMap<String, GroupMembers>> {
        let mut out = BTreeMap::new();
        for (g, consumer) in &self.groups {
            let list = consumer
                .fetch_group_list(Some(&g.group), TIMEOUT)
                .with_context(|| format!("describing the group {}", g.group))?;
            let info = list.groups().iter().find(|i| i.name() == g.group);
            out.insert(
                g.group.clone(),
                GroupMembers {
                    state: info.map_or_else(|| "Dead".to_owned(), |i| i.state().to_owned()),
                    members: info
                        .map(|i| {
                            i.members()
                                .iter()
                                .map(|m| format!("{} ({})", m.client_id(), m.client_host()))
                                .collect()
                        })
                        .unwrap_or_default(),
                },
            );
        }
        Ok(out)
    }

    /// Replaces the lag of each partition with a gap of at most
    /// [`PROBE_MAX_GAP`] by the records a `read_committed` reader gets from
    /// its start to the end read before. A partition not read to its end
    /// within the deadline keeps the offset difference.
    fn count_small_gaps(&self, rows: &mut [PartitionLag]) -> anyhow::Result<()> {
        // One read per partition, from its lowest start; each group counts from its own.
        let mut wanted: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
        for r in rows.iter() {
            let (start, gap) = start_and_gap(r.committed, r.low, r.high);
            if gap > 0 && gap <= PROBE_MAX_GAP {
                wanted
                    .entry((r.topic.clone(), r.partition))
                    .or_default()
                    .push((start, r.high));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        // Per topic (an end-of-partition event names the partition only),
        // read each partition from its lowest start.
        let topics: std::collections::BTreeSet<String> =
            wanted.keys().map(|(t, _)| t.clone()).collect();
        let mut offsets: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
        let mut done = std::collections::BTreeSet::new();
        for topic in topics {
            let mut tpl = TopicPartitionList::new();
            let mut ends = BTreeMap::new();
            for ((t, p), starts) in wanted.iter().filter(|((t, _), _)| *t == topic) {
                let from = starts.iter().map(|s| s.0).min().unwrap_or_default();
                tpl.add_partition_offset(t, *p, Offset::Offset(from))?;
                ends.insert(*p, starts.iter().map(|s| s.1).max().unwrap_or_default());
            }
            // A fresh reader each time: one that reached a partition's end
            // before need not say so again.
            let probe: BaseConsumer<ProbeContext> = consumer_config(
                &self.conn,
                "artifactctl-lag-probe",
                &format!("{}.artifactctl.lag-probe-unused", self.conn.topic_prefix),
            )
            .set("enable.partition.eof", "true")
            .create_with_context(ProbeContext)?;
            probe.assign(&tpl)?;
            let mut finished = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while finished.len() < ends.len() && Instant::now() < deadline {
                match probe.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let end = ends.get(&m.partition()).copied().unwrap_or_default();
                        if m.offset() < end {
                            offsets
                                .entry((topic.clone(), m.partition()))
                                .or_default()
                                .push(m.offset());
                        }
                        if m.offset() + 1 >= end {
                            finished.insert(m.partition());
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        finished.insert(p);
                    }
                    // The offset difference stands for what is not read through.
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, %topic, "counting records behind failed");
                        break;
                    }
                    None => {}
                }
            }
            done.extend(finished.into_iter().map(|p| (topic.clone(), p)));
        }
        for r in rows.iter_mut() {
            let key = (r.topic.clone(), r.partition);
            let (start, gap) = start_and_gap(r.committed, r.low, r.high);
            if gap == 0 || gap > PROBE_MAX_GAP || !done.contains(&key) {
                continue;
            }
            let seen = offsets.get(&key).map(Vec::as_slice).unwrap_or_default();
            r.lag = seen.iter().filter(|&&o| o >= start && o < r.high).count() as i64;
        }
        Ok(())
    }
}

/// The context of a reader that reaches the partitions' ends on purpose
/// (counting records behind, reading dead letters or stage control), which
/// librdkafka also reports as a global error; only other errors are logged.
pub(crate) struct ProbeContext;

impl rdkafka::ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// Records consumed per second by a group over a recent window, from the
/// sum of its committed offsets, and so the time its lag takes to drain.
#[derive(Debug)]
pub struct DrainEstimate {
    window: Duration,
    samples: VecDeque<(Instant, i64)>,
}

impl DrainEstimate {
    pub fn new(window: Duration) -> Self {
        DrainEstimate {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records a sample: the sum of the group's committed offsets at `at`.
    pub fn sample(&mut self, at: Instant, committed_sum: i64) {
        self.samples.push_back((at, committed_sum));
        // Keep the newest sample at or before the window's start, so the
        // rate spans the whole window once there is history.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| at.duration_since(*t) >= self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Offsets committed per second over the window (`None` before two
    /// samples). A committed offset that moved back (a reset) counts as 0.
    pub fn rate(&self) -> Option<f64> {
        let (t0, c0) = self.samples.front()?;
        let (t1, c1) = self.samples.back()?;
        let secs = t1.duration_since(*t0).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        Some(((c1 - c0).max(0) as f64) / secs)
    }

    /// The time the rate spans (`None` before two samples).
    pub fn span(&self) -> Option<Duration> {
        let (t0, _) = self.samples.front()?;
        let (t1, _) = self.samples.back()?;
        (t1 > t0).then(|| t1.duration_since(*t0))
    }

    /// Seconds until `lag` is consumed at the recent rate: 0 with no lag,
    /// +Inf with lag and no consumption (the group is stopped or stuck),
    /// `None` before two samples.
    pub fn time_to_drain(&self, lag: i64) -> Option<f64> {
        if lag <= 0 {
            return Some(0.0);
        }
        let rate = self.rate()?;
        Some(if rate > 0.0 {
            lag as f64 / rate
        } else {
            f64::INFINITY
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_starts_at_the_commit_or_the_log_start() {
        assert_eq!(start_and_gap(Some(10), 0, 12), (10, 2));
        assert_eq!(start_and_gap(None, 4, 12), (4, 8), "nothing committed");
        assert_eq!(start_and_gap(Some(2), 5, 12), (5, 7), "deleted records");
        assert_eq!(start_and_gap(Some(12), 0, 12), (12, 0));
        assert_eq!(start_and_gap(None, 0, 0), (0, 0), "empty partition");
    }

    #[test]
    fn drain_time_is_lag_over_the_recent_rate() {
        let t = Instant::now();
        let mut d = DrainEstimate::new(Duration::from_secs(60));
        assert_eq!(d.time_to_drain(100), None, "no samples");
        assert_eq!(d.time_to_drain(0), Some(0.0));
        d.sample(t, 1000);
        assert_eq!(d.time_to_drain(100), None, "one sample");
        d.sample(t + Duration::from_secs(10), 1100);
        assert_eq!(d.rate(), Some(10.0));
        assert_eq!(d.time_to_drain(500), Some(50.0));
        // Stopped: the sum stays; once the window holds only the stop, +Inf.
        for s in [20, 40, 60, 80] {
            d.sample(t + Duration::from_secs(s), 1100);
        }
        assert_eq!(d.rate(), Some(0.0));
        assert_eq!(d.time_to_drain(500), Some(f64::INFINITY));
        assert_eq!(d.time_to_drain(0), Some(0.0), "nothing to drain");
    }

    #[test]
    fn the_window_keeps_its_span_and_a_reset_is_no_negative_rate() {
        let t = Instant::now();
        let mut d = DrainEstimate::new(Duration::from_secs(30));
        for s in 0..10 {
            d.sample(t + Duration::from_secs(s * 10), s as i64 * 100);
        }
        // From 60 s (the newest sample at or before 90 - 30) to 90 s.
        assert_eq!(d.rate(), Some(10.0));
        d.sample(t + Duration::from_secs(100), 0);
        assert_eq!(d.rate(), Some(0.0));
    }
}
