//! The fault campaign's parts other than the campaign itself (`chaos`
//! binary): where a partition's leader and a transactional id's coordinator
//! are, whether the cluster is whole again, what a consumer group has not
//! read, and the final check, which folds the topics as a `read_committed`
//! reader sees them and compares the API's read model with the fold.

use crate::TestEnv;
use anyhow::Context;
use artifact_domain::{
    ArtifactCreated, ArtifactId, ArtifactState, ArtifactStatus, Generation, LocationVerified,
    MimeDetected, Outcome, Parsed, PipelineEvent, Stage, StatusView, Summarized,
};
use artifact_kafka::client::{QuietEof, client_config, consumer_config};
use artifact_kafka::config::ConnectionConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Java's `String.hashCode` (over UTF-16 code units, wrapping), which the
/// broker uses to place a transactional id.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of `__transaction_state` whose leader coordinates
/// `transactional_id` (Kafka's `Utils.abs(hashCode) % partitions`, where
/// `Utils.abs(i32::MIN)` is 0).
pub fn transaction_state_partition(transactional_id: &str, partitions: i32) -> i32 {
    let h = java_string_hash(transactional_id);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions
}

/// What the cluster's metadata says of its health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Live brokers (registered and unfenced), by node id.
    pub brokers: BTreeSet<i32>,
    /// Partitions (of every topic, internal ones too) whose in-sync
    /// replicas are fewer than their replicas.
    pub under_replicated: usize,
    /// Partitions without a leader.
    pub offline: usize,
}

impl ClusterView {
    /// Every one of `brokers` brokers is up and every replica in sync.
    pub fn is_whole(&self, brokers: usize) -> bool {
        self.brokers.len() == brokers && self.under_replicated == 0 && self.offline == 0
    }
}

fn metadata_client(conn: &ConnectionConfig) -> anyhow::Result<BaseConsumer> {
    Ok(client_config(conn, "chaos-metadata").create()?)
}

/// The cluster's brokers and replica health, from one metadata request.
pub fn cluster_view(conn: &ConnectionConfig) -> anyhow::Result<ClusterView> {
    let md = metadata_client(conn)?.fetch_metadata(None, Duration::from_secs(10))?;
    let mut view = ClusterView {
        brokers: md.brokers().iter().map(|b| b.id()).collect(),
        under_replicated: 0,
        offline: 0,
    };
    for t in md.topics() {
        for p in t.partitions() {
            if p.isr().len() < p.replicas().len() {
                view.under_replicated += 1;
            }
            if p.leader() < 0 {
                view.offline += 1;
            }
        }
    }
    Ok(view)
}

/// The broker leading `topic`'s `partition`, if it has a leader.
pub fn partition_leader(
    conn: &ConnectionConfig,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Option<i32>> {
    let md = metadata_client(conn)?.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .filter(|l| *l >= 0))
}

/// The broker coordinating `transactional_id`: the leader of its
/// `__transaction_state` partition.
pub fn transaction_coordinator(
    conn: &ConnectionConfig,
    transactional_id: &str,
) -> anyhow::Result<Option<i32>> {
    let topic = "__transaction_state";
    let md = metadata_client(conn)?.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    let n = i32::try_from(t.partitions().len())?;
    if n == 0 {
        return Ok(None);
    }
    let p = transaction_state_partition(transactional_id, n);
    Ok(t.partitions()
        .iter()
        .find(|x| x.id() == p)
        .map(|x| x.leader())
        .filter(|l| *l >= 0))
}

/// Records of one partition a consumer group has not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (`None`: nothing committed).
    pub committed: Option<i64>,
    /// Records a `read_committed` reader finds from there to the end
    /// (transaction markers and aborted records are not records).
    pub records: usize,
}

/// What `group` has not read of `topics`: every partition with a record a
/// `read_committed` reader finds after the group's committed offset.
pub fn unread(
    conn: &ConnectionConfig,
    group: &str,
    topics: &[String],
    partitions: usize,
) -> anyhow::Result<Vec<Backlog>> {
    let timeout = Duration::from_secs(10);
    let committed_client: BaseConsumer = consumer_config(conn, "chaos-lag", group).create()?;
    let mut out = vec![];
    for topic in topics {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition(topic, p);
        }
        let committed = committed_client
            .committed_offsets(tpl, timeout)
            .with_context(|| format!("committed offsets of {group} on {topic}"))?;
        let starts: BTreeMap<i32, Option<i64>> = committed
            .elements()
            .iter()
            .map(|e| {
                let o = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                (e.partition(), o)
            })
            .collect();
        let counts = count_records_from(conn, topic, &starts)?;
        for (p, committed) in starts {
            let records = counts.get(&p).copied().unwrap_or_default();
            if records > 0 {
                out.push(Backlog {
                    group: group.to_owned(),
                    topic: topic.clone(),
                    partition: p,
                    committed,
                    records,
                });
            }
        }
    }
    Ok(out)
}

/// Records a `read_committed` reader finds in each partition from its
/// offset (`None`: the beginning) to the end.
fn count_records_from(
    conn: &ConnectionConfig,
    topic: &str,
    starts: &BTreeMap<i32, Option<i64>>,
) -> anyhow::Result<BTreeMap<i32, usize>> {
    let group = format!("chaos-count-{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer<QuietEof> = consumer_config(conn, "chaos-count", &group)
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in starts {
        tpl.add_partition_offset(topic, *p, o.map_or(Offset::Beginning, Offset::Offset))?;
    }
    consumer.assign(&tpl)?;
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    let mut eof = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while eof.len() < starts.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading {topic} did not reach the end within 60 s"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                eof.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                eof.remove(&m.partition());
                *counts.entry(m.partition()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

/// What kind of document an artifact was, and so how it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A valid PDF: completed with a summary.
    Pdf,
    /// Plain text: completed with a summary.
    Text,
    /// A PNG image: completed, pdf-parser (OCR off in the campaign) and
    /// summarizer skipped.
    Image,
    /// A truncated PDF: failed at pdf-parser.
    Corrupt,
}

impl Kind {
    /// Every kind, in the order the campaign sends them.
    pub const ALL: [Kind; 4] = [Kind::Pdf, Kind::Text, Kind::Image, Kind::Corrupt];

    /// Why `v`, the artifact's final status, is not how this kind ends.
    pub fn wrong_end(self, v: &StatusView) -> Option<String> {
        let skipped = |s: Stage| {
            v.timeline
                .iter()
                .any(|r| r.stage == s && matches!(r.outcome, Outcome::Skipped { .. }))
        };
        let ok = match self {
            Kind::Pdf | Kind::Text => {
                v.state == ArtifactState::Completed
                    && v.summary.as_deref().is_some_and(|s| !s.is_empty())
            }
            Kind::Image => {
                v.state == ArtifactState::Completed
                    && skipped(Stage::PdfParser)
                    && skipped(Stage::Summarizer)
            }
            Kind::Corrupt => {
                v.state == ArtifactState::Failed && v.failed_stage == Some(Stage::PdfParser)
            }
        };
        (!ok).then(|| {
            format!(
                "a {self:?} ended {:?} (failed stage {:?}: {:?})",
                v.state, v.failed_stage, v.failure_reason
            )
        })
    }
}

/// How an artifact entered the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Uploaded through the API.
    Api,
    /// Written to `<prefix>.created` by an external producer.
    External,
}

/// An artifact the campaign sent.
#[derive(Debug, Clone, Serialize)]
pub struct Sent {
    /// Its id.
    pub id: ArtifactId,
    /// What it is.
    pub kind: Kind,
    /// How it came in.
    pub via: Via,
}

/// One finding of the check.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The artifact (or record key).
    pub id: String,
    /// What is wrong.
    pub what: String,
}

/// The check's findings; empty lists mean exactly once held.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Artifacts sent.
    pub artifacts: usize,
    /// Outcome records read per stage.
    pub outcomes: BTreeMap<String, usize>,
    /// Outcome records beyond the first for a (stage, artifact, generation).
    pub duplicates: Vec<Finding>,
    /// Outcomes missing: a stage that must have reported did not, or the
    /// artifact's creation is not in the topic.
    pub losses: Vec<Finding>,
    /// Outcomes where the chain had ended (none may be there).
    pub extra: Vec<Finding>,
    /// Final states that are not how the artifact's kind ends.
    pub wrong_ends: Vec<Finding>,
    /// Artifacts whose status in the API differs from the fold of the
    /// topics (or that the API does not know).
    pub api_mismatches: Vec<Finding>,
    /// Dead letters not sent on purpose, or sent ones missing or doubled.
    pub dead_letters: Vec<Finding>,
    /// Events of artifacts the campaign did not send.
    pub strangers: Vec<Finding>,
    /// Topics without the replication the campaign asked for.
    pub topics: Vec<Finding>,
}

impl CheckReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.duplicates.is_empty()
            && self.losses.is_empty()
            && self.extra.is_empty()
            && self.wrong_ends.is_empty()
            && self.api_mismatches.is_empty()
            && self.dead_letters.is_empty()
            && self.strangers.is_empty()
            && self.topics.is_empty()
    }
}

/// Every committed event of the pipeline topics, decoded, by artifact, and
/// the count of outcome records per (stage, artifact, generation).
struct Events {
    by_artifact: HashMap<ArtifactId, Vec<PipelineEvent>>,
    outcome_counts: HashMap<(Stage, ArtifactId, Generation), usize>,
    outcomes: BTreeMap<String, usize>,
    /// Keys of `<prefix>.created` records that are not `ArtifactCreated`.
    undecodable_created: Vec<String>,
}

async fn read_events(env: &TestEnv) -> anyhow::Result<Events> {
    let mut ev = Events {
        by_artifact: HashMap::new(),
        outcome_counts: HashMap::new(),
        outcomes: BTreeMap::new(),
        undecodable_created: vec![],
    };
    for m in env.read_all(&env.names.created())? {
        match env.codec.decode::<ArtifactCreated>(m.payload()).await {
            Ok(c) => ev
                .by_artifact
                .entry(c.artifact_id)
                .or_default()
                .push(PipelineEvent::Created(c)),
            Err(_) => ev.undecodable_created.push(
                m.key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
            ),
        }
    }
    for stage in Stage::ALL {
        let topic = env.names.output(stage);
        let records = env.read_all(&topic)?;
        ev.outcomes.insert(stage.name().to_owned(), records.len());
        for m in records {
            let p = m.payload();
            let e = match stage {
                Stage::MimeDetector => {
                    PipelineEvent::MimeDetected(env.codec.decode::<MimeDetected>(p).await?)
                }
                Stage::LocationLogger => {
                    PipelineEvent::LocationVerified(env.codec.decode::<LocationVerified>(p).await?)
                }
                Stage::PdfParser => PipelineEvent::Parsed(env.codec.decode::<Parsed>(p).await?),
                Stage::Summarizer => {
                    PipelineEvent::Summarized(env.codec.decode::<Summarized>(p).await?)
                }
            };
            *ev.outcome_counts
                .entry((stage, e.artifact_id(), e.generation()))
                .or_default() += 1;
            ev.by_artifact.entry(e.artifact_id()).or_default().push(e);
        }
    }
    Ok(ev)
}

/// The last stage that reports for a generation in `state` (failed at
/// `failed`): every stage up to it reports once, none after it.
fn last_reporting(state: ArtifactState, failed: Option<Stage>) -> Option<Stage> {
    match (state, failed) {
        (ArtifactState::Completed, _) => Some(Stage::Summarizer),
        (ArtifactState::Failed, Some(s)) => Some(s),
        _ => None,
    }
}

/// Checks what the campaign left: every sent artifact (first generation)
/// has exactly one outcome per stage up to where its chain ends and none
/// after, ends as its kind must; the API's status of each equals the fold
/// of its events; the dead-letter topics hold exactly `poison` (keys of
/// records sent to `<prefix>.created` on purpose undecodable), each once;
/// every topic has `replication` replicas and min.insync.replicas of
/// min(2, `replication`). `api` answers an artifact's status.
pub async fn check<F, Fut>(
    env: &TestEnv,
    sent: &[Sent],
    poison: &[String],
    replication: i32,
    api: F,
) -> anyhow::Result<CheckReport>
where
    F: Fn(ArtifactId) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<StatusView>>>,
{
    let mut report = CheckReport {
        artifacts: sent.len(),
        ..Default::default()
    };
    let ev = read_events(env).await?;
    report.outcomes = ev.outcomes.clone();
    let first = Generation::FIRST;
    let finding = |id: &dyn std::fmt::Display, what: String| Finding {
        id: id.to_string(),
        what,
    };
    for s in sent {
        let events = ev.by_artifact.get(&s.id).cloned().unwrap_or_default();
        let Some(status) = ArtifactStatus::fold(events) else {
            report
                .losses
                .push(finding(&s.id, "no event at all in the topics".into()));
            continue;
        };
        if status.created().is_none() {
            report.losses.push(finding(
                &s.id,
                "its ArtifactCreated is not in the topic".into(),
            ));
        }
        let view = status.view();
        let last = last_reporting(view.state, view.failed_stage);
        for stage in Stage::ALL {
            let n = ev
                .outcome_counts
                .get(&(stage, s.id, first))
                .copied()
                .unwrap_or_default();
            let expected = last.is_some_and(|l| stage.index() <= l.index());
            match (expected, n) {
                (true, 1) | (false, 0) => {}
                (true, 0) => report
                    .losses
                    .push(finding(&s.id, format!("no {} outcome", stage.name()))),
                (true, n) => report
                    .duplicates
                    .push(finding(&s.id, format!("{n} {} outcomes", stage.name()))),
                (false, n) => report.extra.push(finding(
                    &s.id,
                    format!("{n} {} outcomes after the chain ended", stage.name()),
                )),
            }
        }
        if last.is_none() {
            report.losses.push(finding(
                &s.id,
                format!("not final: {:?} at {:?}", view.state, view.current_stage),
            ));
        } else if let Some(why) = s.kind.wrong_end(&view) {
            report.wrong_ends.push(finding(&s.id, why));
        }
        match api(s.id).await? {
            Some(v) if outcomes_only(&v) == outcomes_only(&view) => {}
            Some(v) => report.api_mismatches.push(finding(
                &s.id,
                format!(
                    "the API says {:?} at generation {} with {} timeline lines, the fold {:?} with {}",
                    v.state,
                    v.generation,
                    v.timeline.len(),
                    view.state,
                    view.timeline.len()
                ),
            )),
            None => report
                .api_mismatches
                .push(finding(&s.id, "the API does not know it".into())),
        }
    }
    let known: BTreeSet<ArtifactId> = sent.iter().map(|s| s.id).collect();
    for id in ev.by_artifact.keys().filter(|id| !known.contains(id)) {
        report
            .strangers
            .push(finding(id, "events of an artifact not sent".into()));
    }
    let mut poison_left: BTreeMap<&str, usize> = poison.iter().map(|k| (k.as_str(), 0)).collect();
    for key in &ev.undecodable_created {
        match poison_left.get_mut(key.as_str()) {
            Some(n) => *n += 1,
            None => report.strangers.push(finding(
                key,
                "an undecodable creation not sent on purpose".into(),
            )),
        }
    }
    for stage in Stage::ALL {
        let topic = env.names.dlq(stage);
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for m in env.read_all(&topic)? {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            *seen.entry(key).or_default() += 1;
        }
        for (key, n) in &seen {
            let on_purpose = stage == Stage::MimeDetector && poison_left.contains_key(key.as_str());
            if !on_purpose {
                report.dead_letters.push(finding(
                    key,
                    format!("{n} dead letters in {topic}, none sent on purpose"),
                ));
            } else if *n != 1 {
                report.dead_letters.push(finding(
                    key,
                    format!("{n} dead letters in {topic}, one sent"),
                ));
            }
        }
        if stage == Stage::MimeDetector {
            for key in poison_left.keys().filter(|k| !seen.contains_key(**k)) {
                report.dead_letters.push(finding(
                    key,
                    format!("sent undecodable on purpose, not in {topic}"),
                ));
            }
        }
    }
    report.topics = check_topics(env, replication).await?;
    Ok(report)
}

/// Topics of the catalogue without `replication` replicas or without
/// min.insync.replicas = min(2, `replication`) set on them.
async fn check_topics(env: &TestEnv, replication: i32) -> anyhow::Result<Vec<Finding>> {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let names: Vec<String> = env.names.catalogue().into_iter().map(|t| t.name).collect();
    let layouts =
        artifact_kafka::topics::topic_layouts(&env.conn, &names, Duration::from_secs(10))?;
    let mut out = vec![];
    for name in &names {
        match layouts.get(name) {
            Some(l) if i32::try_from(l.replication).ok() == Some(replication) => {}
            Some(l) => out.push(Finding {
                id: name.clone(),
                what: format!("replication factor {}", l.replication),
            }),
            None => out.push(Finding {
                id: name.clone(),
                what: "missing".into(),
            }),
        }
    }
    let admin = artifact_kafka::client::admin_client(&env.conn)?;
    let resources: Vec<ResourceSpecifier> =
        names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
    let want = artifact_kafka::topics::min_insync_replicas(replication).to_string();
    for (name, res) in names.iter().zip(
        admin
            .describe_configs(&resources, &AdminOptions::new())
            .await?,
    ) {
        let res = res?;
        let entry = res.get("min.insync.replicas");
        if entry.and_then(|e| e.value.as_deref()) != Some(want.as_str()) {
            out.push(Finding {
                id: name.clone(),
                what: format!(
                    "min.insync.replicas {:?}, not {want}",
                    entry.and_then(|e| e.value.clone())
                ),
            });
        }
    }
    Ok(out)
}

/// `v` without what the API learns from the retry and dead-letter topics
/// (attempts, errors, pending retries, dead letters) and the history of
/// earlier generations, which a fold of the outcome topics alone lacks.
fn outcomes_only(v: &StatusView) -> StatusView {
    let mut v = v.clone();
    for r in &mut v.timeline {
        r.attempts = None;
        r.last_error = None;
        r.next_retry_at = None;
    }
    v.next_retry_at = None;
    v.dead_letters.clear();
    v.history.clear();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_are_placed_as_the_broker_places_them() {
        // Values of Java's String.hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(java_string_hash("é"), 233);
        // Utils.abs(Integer.MIN_VALUE) is 0.
        assert_eq!(transaction_state_partition("polygenelubricants", 50), 0);
        assert_eq!(transaction_state_partition("hello", 50), 99_162_322 % 50);
        // UTF-16 code units, as Java counts them: a surrogate pair is two.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
        for id in ["a", "stage-0", "chaos.pdf-parser-chaos-pdf-parser-b"] {
            let p = transaction_state_partition(id, 50);
            assert!((0..50).contains(&p), "{id}: {p}");
        }
    }

    #[test]
    fn the_chain_ends_where_it_completed_or_failed() {
        assert_eq!(
            last_reporting(ArtifactState::Completed, None),
            Some(Stage::Summarizer)
        );
        assert_eq!(
            last_reporting(ArtifactState::Failed, Some(Stage::PdfParser)),
            Some(Stage::PdfParser)
        );
        assert_eq!(last_reporting(ArtifactState::InProgress, None), None);
    }
}
