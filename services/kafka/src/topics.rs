//! The topic catalogue of the design and its idempotent creation.
//!
//! Every pipeline topic has the same partition count, so one artifact stays on
//! the same partition number across all of them (co-partitioning); creation
//! refuses to go on when existing topics disagree.

use crate::client::{KafkaError, admin_client};
use crate::config::ConnectionConfig;
use artifact_domain::Stage;
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a topic is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Keep the latest record per key (event log, state, read model).
    Compact,
    /// Delete by age (retry and dead-letter queues).
    Delete,
}

impl Cleanup {
    /// The `cleanup.policy` value.
    pub fn policy(self) -> &'static str {
        match self {
            Cleanup::Compact => "compact",
            Cleanup::Delete => "delete",
        }
    }
}

/// How long, by default, the active segment of a compacted topic stays
/// open: one hour. The log cleaner never compacts the active segment, and
/// the broker's default (`log.roll.ms`, 7 days, or 1 GiB) would leave a
/// quiet topic's last days uncompacted: every restore (dedup state, the
/// read model's table) would read them record by record.
pub const DEFAULT_COMPACTED_SEGMENT_MS: u64 = 3_600_000;

/// How long the active segment of a stage's in-flight topic stays open, at
/// most: one minute. Every restore reads that topic's partition 0 whole,
/// and a busy stage writes a record per batch, each of which is out of
/// date once the instance's next one is written.
pub const INFLIGHT_SEGMENT_MS: u64 = 60_000;

/// One topic of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full topic name.
    pub name: String,
    /// Cleanup policy.
    pub cleanup: Cleanup,
    /// `segment.ms` set at creation (compacted topics), or the broker's
    /// default.
    pub segment_ms: Option<u64>,
    /// `retention.ms` set at creation (dead-letter topics: -1, for good),
    /// or the broker's default.
    pub retention_ms: Option<i64>,
}

impl TopicSpec {
    /// The topic-level configuration the pipeline sets when it creates the
    /// topic.
    pub fn configs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("cleanup.policy", self.cleanup.policy().to_owned())];
        if let Some(ms) = self.segment_ms {
            v.push(("segment.ms", ms.to_string()));
        }
        if let Some(ms) = self.retention_ms {
            v.push(("retention.ms", ms.to_string()));
        }
        v
    }
}

/// How long dead letters are kept by default: for good (`-1`). A record a
/// stage could not decode is kept until an operator replays or deletes it,
/// not dropped by the broker's 7-day default while nobody looked.
pub const DEFAULT_DLQ_RETENTION_MS: i64 = -1;

/// How long retry records are kept: for good (`-1`), so a delayed retry
/// survives any stop of its stage. A stage deletes the retry records below
/// the offsets it has committed (`DeleteRecords`), so the topic holds the
/// retries still pending, not every retry ever made.
pub const RETRY_RETENTION_MS: i64 = -1;

/// The `min.insync.replicas` of a topic with `replication` replicas:
/// `min(2, replication)`. With `acks=all` a write is then acknowledged once
/// two replicas have it, so one broker lost loses nothing, and with three
/// replicas one broker may be down without stopping writes. A topic with
/// one replica gets 1, whatever the broker's default, so it stays writable.
pub fn min_insync_replicas(replication: i32) -> i32 {
    replication.min(2)
}

/// Sets `retention.ms` of every dead-letter topic of `specs` to `ms`.
pub fn set_dlq_retention_ms(specs: &mut [TopicSpec], ms: i64) {
    for s in specs.iter_mut().filter(|s| s.name.ends_with(".dlq")) {
        s.retention_ms = Some(ms);
    }
}

/// Sets `segment.ms` of every compacted topic of `specs` to `ms`, that of
/// the in-flight topics to at most [`INFLIGHT_SEGMENT_MS`].
pub fn set_compacted_segment_ms(specs: &mut [TopicSpec], ms: u64) {
    for s in specs.iter_mut().filter(|s| s.cleanup == Cleanup::Compact) {
        s.segment_ms = Some(if s.name.ends_with(".inflight") {
            ms.min(INFLIGHT_SEGMENT_MS)
        } else {
            ms
        });
    }
}

/// Topic names under a prefix (default `artifact`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    /// Names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        TopicNames {
            prefix: prefix.into(),
        }
    }

    /// Names from a connection config's prefix.
    pub fn from_config(conn: &ConnectionConfig) -> Self {
        Self::new(conn.topic_prefix.clone())
    }

    /// `<prefix>.created`: ArtifactCreated events.
    pub fn created(&self) -> String {
        format!("{}.created", self.prefix)
    }

    /// The topic a stage reads.
    pub fn input(&self, stage: Stage) -> String {
        format!("{}.{}", self.prefix, stage.input_event())
    }

    /// The topic a stage writes its outcomes to.
    pub fn output(&self, stage: Stage) -> String {
        format!("{}.{}", self.prefix, stage.output_event())
    }

    /// `<prefix>.status`: read-model snapshots.
    pub fn status(&self) -> String {
        format!("{}.status", self.prefix)
    }

    /// `<prefix>.artifact-control`: operators' cancels and erasures, keyed
    /// by artifact id; every stage replica and the projector follow it.
    pub fn artifact_control(&self) -> String {
        format!("{}.artifact-control", self.prefix)
    }

    /// `<prefix>.operations`: bulk reprocess operations and their
    /// progress, keyed by operation id; artifact-api records and runs them.
    pub fn operations(&self) -> String {
        format!("{}.operations", self.prefix)
    }

    /// `<prefix>.webhooks`: webhook subscriptions, keyed by subscription
    /// id; every API replica follows it.
    pub fn webhooks(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    /// A stage's keyed dedup state.
    pub fn dedup(&self, stage: Stage) -> String {
        format!("{}.{}.dedup", self.prefix, stage.name())
    }

    /// A stage's delayed retries.
    pub fn retry(&self, stage: Stage) -> String {
        format!("{}.{}.retry", self.prefix, stage.name())
    }

    /// A stage's dead letters.
    pub fn dlq(&self, stage: Stage) -> String {
        format!("{}.{}.dlq", self.prefix, stage.name())
    }

    /// A stage's batches in flight, one record per source topic and
    /// partition: what a stage that died was processing.
    pub fn inflight(&self, stage: Stage) -> String {
        format!("{}.{}.inflight", self.prefix, stage.name())
    }

    /// `<prefix>.stage-control`: operators' pauses of stages and breakers'
    /// reports, keyed by stage (`crate::stage_control`).
    pub fn stage_control(&self) -> String {
        format!("{}.stage-control", self.prefix)
    }

    /// Every topic of the design with its cleanup policy and, for compacted
    /// topics, [`DEFAULT_COMPACTED_SEGMENT_MS`], for retry topics
    /// [`RETRY_RETENTION_MS`], for dead-letter topics
    /// [`DEFAULT_DLQ_RETENTION_MS`].
    pub fn catalogue(&self) -> Vec<TopicSpec> {
        let compact = |name| TopicSpec {
            name,
            cleanup: Cleanup::Compact,
            segment_ms: Some(DEFAULT_COMPACTED_SEGMENT_MS),
            retention_ms: None,
        };
        let delete = |name, retention_ms| TopicSpec {
            name,
            cleanup: Cleanup::Delete,
            segment_ms: None,
            retention_ms,
        };
        let mut v = vec![compact(self.created())];
        v.extend(Stage::ALL.map(|s| compact(self.output(s))));
        v.push(compact(self.status()));
        v.push(compact(self.artifact_control()));
        v.push(compact(self.stage_control()));
        v.push(compact(self.operations()));
        v.push(compact(self.webhooks()));
        for s in Stage::ALL {
            v.push(compact(self.dedup(s)));
            v.push(delete(self.retry(s), Some(RETRY_RETENTION_MS)));
            v.push(delete(self.dlq(s), Some(DEFAULT_DLQ_RETENTION_MS)));
            v.push(TopicSpec {
                segment_ms: Some(INFLIGHT_SEGMENT_MS),
                ..compact(self.inflight(s))
            });
        }
        v
    }
}

/// What `ensure_topics` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicReport {
    /// Topics created now.
    pub created: Vec<String>,
    /// Topics that existed with the right partition count, replication,
    /// policy and `min.insync.replicas`.
    pub existing: Vec<String>,
}

/// Why topics could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// Kafka refused or could not be reached.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Existing topics break co-partitioning.
    #[error(
        "existing topics do not have {expected} partitions, so artifacts would not stay on one partition number across topics: {}. \
         Recreate them with {expected} partitions, or run with --partitions matching the existing topics",
        mismatches.iter().map(|(t, n)| format!("{t} has {n}")).collect::<Vec<_>>().join(", ")
    )]
    PartitionMismatch {
        /// Requested partition count.
        expected: usize,
        /// Topic name and its partition count.
        mismatches: Vec<(String, usize)>,
    },
    /// Existing topics have another replication factor than asked for.
    #[error(
        "existing topics do not have replication factor {expected}: {}. \
         Change it with kafka-reassign-partitions, or run with --replication-factor matching the existing topics",
        mismatches.iter().map(|(t, n)| format!("{t} has {n}")).collect::<Vec<_>>().join(", ")
    )]
    ReplicationMismatch {
        /// Requested replication factor.
        expected: i32,
        /// Topic name and its replication factor (the fewest replicas of
        /// any of its partitions).
        mismatches: Vec<(String, usize)>,
    },
    /// Existing topics have another `min.insync.replicas` than
    /// [`min_insync_replicas`] of the replication factor.
    #[error(
        "existing topics have the wrong min.insync.replicas: {}. \
         It must be {expected}, min(2, replication factor): change it with kafka-configs --alter --add-config min.insync.replicas={expected}",
        mismatches.iter().map(|(t, got)| format!("{t} has {got}")).collect::<Vec<_>>().join(", ")
    )]
    MinInsyncMismatch {
        /// The wanted value.
        expected: i32,
        /// Topic and its value.
        mismatches: Vec<(String, String)>,
    },
    /// Existing topics have another cleanup policy than the design's.
    #[error(
        "existing topics have the wrong cleanup.policy: {}. Change it with kafka-configs or recreate them",
        mismatches.iter().map(|(t, want, got)| format!("{t} is {got:?}, must be {want:?}")).collect::<Vec<_>>().join(", ")
    )]
    PolicyMismatch {
        /// Topic, wanted policy, actual policy.
        mismatches: Vec<(String, String, String)>,
    },
    /// Kafka refused to create a topic.
    #[error("creating topic {topic} failed: {reason}")]
    CreateFailed {
        /// The topic.
        topic: String,
        /// Kafka's answer.
        reason: String,
    },
}

/// How an existing topic is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    /// Its partition count.
    pub partitions: usize,
    /// Its replication factor: the fewest replicas of any partition.
    pub replication: usize,
}

/// Partition counts of the given topics that exist, by name. A topic that
/// was created moments ago may still report an error such as "leader not
/// available"; metadata is asked again until every topic either exists with
/// its partitions or is unknown, or `timeout` passes.
pub fn partition_counts(
    conn: &ConnectionConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, usize>, KafkaError> {
    Ok(topic_layouts(conn, topics, timeout)?
        .into_iter()
        .map(|(t, l)| (t, l.partitions))
        .collect())
}

/// Partition counts and replication factors of the given topics that
/// exist, by name, asked like [`partition_counts`].
pub fn topic_layouts(
    conn: &ConnectionConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, TopicLayout>, KafkaError> {
    let consumer: BaseConsumer = crate::client::client_config(conn, "artifact-admin")
        .create()
        .map_err(KafkaError::Client)?;
    let deadline = std::time::Instant::now() + timeout;
    let mut layouts = BTreeMap::new();
    for name in topics {
        // Asking for one topic by name gets the broker's current answer; a
        // topic created moments ago may answer "leader not available" first.
        loop {
            let md = consumer
                .fetch_metadata(Some(name), timeout)
                .map_err(KafkaError::unreachable(&conn.kafka_bootstrap_servers))?;
            let t = md.topics().iter().find(|t| t.name() == name);
            let settled = match t.map(|t| (t.error(), t.partitions())) {
                None
                | Some((
                    Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART),
                    _,
                )) => true,
                Some((None, parts)) if !parts.is_empty() => {
                    let replication = parts.iter().map(|p| p.replicas().len()).min();
                    layouts.insert(
                        name.clone(),
                        TopicLayout {
                            partitions: parts.len(),
                            replication: replication.unwrap_or_default(),
                        },
                    );
                    true
                }
                _ => false,
            };
            if settled || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(layouts)
}

/// The topics of `layouts` whose partition count or replication factor is
/// not the one asked for, as the error saying so.
fn check_layouts(
    layouts: &BTreeMap<String, TopicLayout>,
    partitions: usize,
    replication: i32,
) -> Result<(), TopicError> {
    let mismatches: Vec<(String, usize)> = layouts
        .iter()
        .filter(|(_, l)| l.partitions != partitions)
        .map(|(t, l)| (t.clone(), l.partitions))
        .collect();
    if !mismatches.is_empty() {
        return Err(TopicError::PartitionMismatch {
            expected: partitions,
            mismatches,
        });
    }
    let mismatches: Vec<(String, usize)> = layouts
        .iter()
        .filter(|(_, l)| i32::try_from(l.replication).ok() != Some(replication))
        .map(|(t, l)| (t.clone(), l.replication))
        .collect();
    if !mismatches.is_empty() {
        return Err(TopicError::ReplicationMismatch {
            expected: replication,
            mismatches,
        });
    }
    Ok(())
}

/// Creates every missing topic in `specs` with `partitions` partitions,
/// `replication` replicas and `min.insync.replicas` of
/// [`min_insync_replicas`], and checks that existing ones have the same.
/// Idempotent.
pub async fn ensure_topics(
    conn: &ConnectionConfig,
    specs: &[TopicSpec],
    partitions: usize,
    replication: i32,
) -> Result<TopicReport, TopicError> {
    let timeout = Duration::from_secs(30);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let existing = topic_layouts(conn, &names, timeout)?;
    check_layouts(&existing, partitions, replication)?;
    let min_insync = min_insync_replicas(replication).to_string();
    let admin = admin_client(conn)?;
    let opts = AdminOptions::new().operation_timeout(Some(timeout));

    let existing_specs: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| existing.contains_key(&s.name))
        .collect();
    check_configs(&admin, &opts, &existing_specs, replication).await?;

    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .collect();
    let configs: Vec<Vec<(&str, String)>> = missing
        .iter()
        .map(|s| {
            let mut c = s.configs();
            c.push(("min.insync.replicas", min_insync.clone()));
            c
        })
        .collect();
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .zip(&configs)
        .map(|(s, configs)| {
            configs.iter().fold(
                NewTopic::new(
                    &s.name,
                    partitions as i32,
                    TopicReplication::Fixed(replication),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let mut report = TopicReport {
        existing: existing.keys().cloned().collect(),
        ..Default::default()
    };
    if new_topics.is_empty() {
        return Ok(report);
    }
    let mut raced = vec![];
    for res in admin
        .create_topics(&new_topics, &opts)
        .await
        .map_err(KafkaError::Admin)?
    {
        match res {
            Ok(t) => report.created.push(t),
            // It exists after all: created by another process just now, or
            // so recently that metadata did not list it yet. Check it below.
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => raced.push(t),
            Err((topic, code)) => {
                return Err(TopicError::CreateFailed {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    if !raced.is_empty() {
        check_layouts(
            &wait_listed(conn, &raced, timeout)?,
            partitions,
            replication,
        )?;
        let raced_specs: Vec<&TopicSpec> =
            specs.iter().filter(|s| raced.contains(&s.name)).collect();
        check_configs(&admin, &opts, &raced_specs, replication).await?;
        report.existing.extend(raced);
    }
    // A topic is created when the controller has it; a broker's metadata
    // may list it a moment later. Whoever asks next (this function again,
    // a stage checking its topics, a producer) must find it.
    if !report.created.is_empty() {
        wait_listed(conn, &report.created, timeout)?;
    }
    Ok(report)
}

/// Checks that existing topics have the design's cleanup policy and
/// `min.insync.replicas` of [`min_insync_replicas`] of `replication`.
async fn check_configs(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    opts: &AdminOptions,
    specs: &[&TopicSpec],
    replication: i32,
) -> Result<(), TopicError> {
    if specs.is_empty() {
        return Ok(());
    }
    let min_insync = min_insync_replicas(replication).to_string();
    let resources: Vec<ResourceSpecifier> = specs
        .iter()
        .map(|s| ResourceSpecifier::Topic(&s.name))
        .collect();
    let described = admin
        .describe_configs(&resources, opts)
        .await
        .map_err(KafkaError::Admin)?;
    let mut bad = vec![];
    let mut bad_insync = vec![];
    for (spec, res) in specs.iter().zip(described) {
        let res = res.map_err(|e| KafkaError::Admin(rdkafka::error::KafkaError::AdminOp(e)))?;
        let value = |k: &str| res.get(k).and_then(|e| e.value.clone()).unwrap_or_default();
        let policy = value("cleanup.policy");
        if policy != spec.cleanup.policy() {
            bad.push((spec.name.clone(), spec.cleanup.policy().to_owned(), policy));
        }
        let insync = value("min.insync.replicas");
        if insync != min_insync {
            bad_insync.push((spec.name.clone(), insync));
        }
    }
    if !bad.is_empty() {
        return Err(TopicError::PolicyMismatch { mismatches: bad });
    }
    if !bad_insync.is_empty() {
        return Err(TopicError::MinInsyncMismatch {
            expected: min_insync_replicas(replication),
            mismatches: bad_insync,
        });
    }
    Ok(())
}

/// Layouts of topics known to exist, waiting until metadata lists every
/// one of them or `timeout` passes.
fn wait_listed(
    conn: &ConnectionConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, TopicLayout>, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let counts = topic_layouts(conn, topics, timeout)?;
        if counts.len() == topics.len() || std::time::Instant::now() >= deadline {
            return Ok(counts);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_every_topic_of_the_design() {
        let t = TopicNames::new("artifact");
        let cat = t.catalogue();
        let names: Vec<&str> = cat.iter().map(|s| s.name.as_str()).collect();
        for n in [
            "artifact.created",
            "artifact.mime-detected",
            "artifact.location-verified",
            "artifact.parsed",
            "artifact.summarized",
            "artifact.status",
            "artifact.artifact-control",
            "artifact.pdf-parser.dedup",
            "artifact.summarizer.retry",
            "artifact.mime-detector.dlq",
            "artifact.location-logger.inflight",
            "artifact.stage-control",
            "artifact.operations",
            "artifact.webhooks",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert_eq!(cat.len(), 10 + 4 * 4);
        for s in &cat {
            let want = if s.name.ends_with(".retry") || s.name.ends_with(".dlq") {
                Cleanup::Delete
            } else {
                Cleanup::Compact
            };
            assert_eq!(s.cleanup, want, "{}", s.name);
        }
    }

    #[test]
    fn compacted_topics_roll_their_segments_within_the_hour() {
        let mut cat = TopicNames::new("artifact").catalogue();
        for s in &cat {
            let segment = s.configs().into_iter().find(|(k, _)| *k == "segment.ms");
            match s.cleanup {
                Cleanup::Compact => {
                    let want = if s.name.ends_with(".inflight") {
                        "60000"
                    } else {
                        "3600000"
                    };
                    assert_eq!(segment, Some(("segment.ms", want.to_owned())), "{}", s.name)
                }
                Cleanup::Delete => assert_eq!(segment, None, "{}", s.name),
            }
            assert!(
                s.configs()
                    .contains(&("cleanup.policy", s.cleanup.policy().to_owned()))
            );
        }
        let mut long = cat.clone();
        set_compacted_segment_ms(&mut cat, 1000);
        assert!(cat.iter().all(|s| match s.cleanup {
            Cleanup::Compact => s.segment_ms == Some(1000),
            Cleanup::Delete => s.segment_ms.is_none(),
        }));
        // A longer roll leaves the in-flight topics at their minute.
        set_compacted_segment_ms(&mut long, 86_400_000);
        for s in long.iter().filter(|s| s.cleanup == Cleanup::Compact) {
            let want = if s.name.ends_with(".inflight") {
                INFLIGHT_SEGMENT_MS
            } else {
                86_400_000
            };
            assert_eq!(s.segment_ms, Some(want), "{}", s.name);
        }
    }

    #[test]
    fn dead_letters_and_retries_are_kept_for_good_and_nothing_else_is_overridden() {
        let mut cat = TopicNames::new("artifact").catalogue();
        for s in &cat {
            let retention = s.configs().into_iter().find(|(k, _)| *k == "retention.ms");
            if s.name.ends_with(".dlq") || s.name.ends_with(".retry") {
                assert_eq!(
                    retention,
                    Some(("retention.ms", "-1".to_owned())),
                    "{}",
                    s.name
                );
            } else {
                assert_eq!(retention, None, "{}", s.name);
            }
        }
        set_dlq_retention_ms(&mut cat, 86_400_000);
        let dlqs = cat.iter().filter(|s| s.retention_ms == Some(86_400_000));
        assert!(dlqs.clone().all(|s| s.name.ends_with(".dlq")));
        assert_eq!(dlqs.count(), 4);
        assert_eq!(cat.iter().filter(|s| s.retention_ms.is_some()).count(), 8);
    }

    #[test]
    fn stages_read_what_the_previous_one_writes() {
        let t = TopicNames::new("p");
        assert_eq!(t.input(Stage::MimeDetector), t.created());
        assert_eq!(t.input(Stage::Summarizer), t.output(Stage::PdfParser));
    }

    #[test]
    fn min_insync_replicas_is_two_unless_there_are_fewer_replicas() {
        assert_eq!(min_insync_replicas(1), 1);
        assert_eq!(min_insync_replicas(2), 2);
        assert_eq!(min_insync_replicas(3), 2);
        assert_eq!(min_insync_replicas(5), 2);
    }

    #[test]
    fn replication_mismatches_are_found_and_named_with_the_fix() {
        let layout = |partitions, replication| TopicLayout {
            partitions,
            replication,
        };
        let mut layouts = BTreeMap::new();
        layouts.insert("artifact.created".to_owned(), layout(6, 3));
        assert!(check_layouts(&layouts, 6, 3).is_ok());
        layouts.insert("artifact.parsed".to_owned(), layout(6, 1));
        let err = check_layouts(&layouts, 6, 3).unwrap_err();
        assert!(
            matches!(&err, TopicError::ReplicationMismatch { expected: 3, mismatches }
                if mismatches == &vec![("artifact.parsed".to_owned(), 1)]),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("artifact.parsed has 1") && msg.contains("--replication-factor"),
            "{msg}"
        );
        // The partition count is checked first: co-partitioning comes before all.
        layouts.insert("artifact.status".to_owned(), layout(3, 3));
        assert!(matches!(
            check_layouts(&layouts, 6, 3),
            Err(TopicError::PartitionMismatch { .. })
        ));
        let msg = TopicError::MinInsyncMismatch {
            expected: 2,
            mismatches: vec![("artifact.created".into(), "1".into())],
        }
        .to_string();
        assert!(
            msg.contains("artifact.created has 1") && msg.contains("min.insync.replicas=2"),
            "{msg}"
        );
    }

    #[test]
    fn mismatch_message_names_topics_and_the_fix() {
        let e = TopicError::PartitionMismatch {
            expected: 6,
            mismatches: vec![("artifact.parsed".into(), 3)],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("artifact.parsed has 3") && msg.contains("--partitions"),
            "{msg}"
        );
    }
}
