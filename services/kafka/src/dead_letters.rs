//! A stage's dead-letter topic: reading its letters with how far replays
//! got, and writing letters back to where they came from. `artifactctl dlq`
//! and the console's dead-letters page share it, and so one replay
//! position: the consumer group `<prefix>.artifactctl.dlq-replay.<stage>`.

use crate::client::{consumer_config, producer_config};
use crate::config::ConnectionConfig;
use crate::headers;
use crate::topics::{TopicNames, partition_counts};
use anyhow::Context;
use artifact_domain::Stage;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

/// A stage's dead letters, and how far `dlq replay` got in each partition.
pub struct DeadLetters {
    /// Every record of the dead-letter topic, in partition order.
    pub letters: Vec<OwnedMessage>,
    /// Per partition, the offset before which every letter was replayed.
    pub replayed_before: BTreeMap<i32, i64>,
}

impl DeadLetters {
    /// Whether `dlq replay` already wrote this letter back.
    pub fn is_replayed(&self, m: &OwnedMessage) -> bool {
        self.replayed_before
            .get(&m.partition())
            .is_some_and(|before| m.offset() < *before)
    }

    /// The letters no `dlq replay` wrote back yet.
    pub fn waiting(&self) -> impl Iterator<Item = &OwnedMessage> {
        self.letters.iter().filter(|m| !self.is_replayed(m))
    }
}

/// A client of the consumer group whose committed offsets mark, in each
/// partition of a stage's dead-letter topic, the letters replayed so far.
pub fn replay_group_client(conn: &ConnectionConfig, stage: Stage) -> rdkafka::ClientConfig {
    consumer_config(
        conn,
        "artifactctl-dlq",
        &format!(
            "{}.artifactctl.dlq-replay.{}",
            conn.topic_prefix,
            stage.name()
        ),
    )
}

/// Every record of a stage's dead-letter topic, with the replay position.
pub fn read_dlq(conn: &ConnectionConfig, stage: Stage) -> anyhow::Result<DeadLetters> {
    read_letters(conn, stage, None, Duration::from_secs(60))
}

/// The newest `limit` letters of a stage's dead-letter topic, newest first,
/// with the replay position: reads at most the last `limit` offsets of each
/// partition, within `within`.
pub fn read_recent(
    conn: &ConnectionConfig,
    stage: Stage,
    limit: usize,
    within: Duration,
) -> anyhow::Result<DeadLetters> {
    let mut dead = read_letters(conn, stage, Some(limit as i64), within)?;
    dead.letters
        .sort_by_key(|m| std::cmp::Reverse((m.timestamp().to_millis().unwrap_or(0), m.offset())));
    dead.letters.truncate(limit);
    Ok(dead)
}

/// The letters from each partition's start, or from `tail` offsets before
/// its end, until every partition is read to its end or `within` passed.
fn read_letters(
    conn: &ConnectionConfig,
    stage: Stage,
    tail: Option<i64>,
    within: Duration,
) -> anyhow::Result<DeadLetters> {
    let topic = TopicNames::from_config(conn).dlq(stage);
    let timeout = Duration::from_secs(10).min(within);
    let n = *partition_counts(conn, std::slice::from_ref(&topic), timeout)?
        .get(&topic)
        .with_context(|| format!("topic {topic} does not exist"))?;
    let consumer: BaseConsumer<crate::lag::ProbeContext> = replay_group_client(conn, stage)
        .set("enable.partition.eof", "true")
        .create_with_context(crate::lag::ProbeContext)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        let from = match tail {
            None => Offset::Beginning,
            Some(t) => {
                let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
                Offset::Offset((high - t).max(low))
            }
        };
        tpl.add_partition_offset(&topic, p, from)?;
    }
    let replayed_before = consumer
        .committed_offsets(tpl.clone(), timeout)
        .context("reading how far earlier replays got")?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    consumer.assign(&tpl)?;
    let mut letters = vec![];
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + within;
    while at_end.len() < n && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => letters.push(m.detach()),
            None => {}
        }
    }
    Ok(DeadLetters {
        letters,
        replayed_before,
    })
}

/// Records that every letter of `letters` was replayed: the next
/// `dlq replay` starts after them.
pub fn mark_replayed(
    conn: &ConnectionConfig,
    stage: Stage,
    letters: &[&OwnedMessage],
) -> anyhow::Result<()> {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for m in letters {
        let n = next.entry(m.partition()).or_default();
        *n = (*n).max(m.offset() + 1);
    }
    if next.is_empty() {
        return Ok(());
    }
    let topic = TopicNames::from_config(conn).dlq(stage);
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next {
        tpl.add_partition_offset(&topic, p, Offset::Offset(o))?;
    }
    let consumer: BaseConsumer = replay_group_client(conn, stage).create()?;
    consumer
        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .context("recording the replay position")?;
    Ok(())
}

/// A header as text.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    crate::client::header(m, name).map(str::to_owned)
}

/// Why a dead letter cannot be written back, if it cannot: it does not
/// name its source topic, or its bytes were left out (too large to copy;
/// the record is still at its source offset unless compaction removed it).
pub fn not_replayable(m: &OwnedMessage) -> Option<String> {
    if let Some(size) = header(m, headers::PAYLOAD_OMITTED) {
        return Some(format!(
            "its {size} bytes were too large to keep in the letter; the record is at {}/{}@{}",
            header(m, headers::SOURCE_TOPIC).unwrap_or_default(),
            header(m, headers::SOURCE_PARTITION).unwrap_or_default(),
            header(m, headers::SOURCE_OFFSET).unwrap_or_default(),
        ));
    }
    if header(m, headers::SOURCE_TOPIC).is_none() {
        return Some(format!("it has no {} header", headers::SOURCE_TOPIC));
    }
    None
}

/// Produces dead letters back to the topic and partition they came from
/// (their key, value and trace header), e.g. after the schema they need was
/// registered. The partition is kept so the stage's dedup state for the
/// artifact, which lives with that partition, sees the record again.
/// Letters that cannot be written back ([`not_replayable`]) are skipped.
/// Returns how many were written back.
pub async fn replay(conn: &ConnectionConfig, letters: &[&OwnedMessage]) -> anyhow::Result<usize> {
    let producer: FutureProducer = producer_config(conn, "artifactctl-replay").create()?;
    let mut n = 0;
    for m in letters {
        if not_replayable(m).is_some() {
            continue;
        }
        let Some(topic) = header(m, headers::SOURCE_TOPIC) else {
            continue;
        };
        let mut headers = OwnedHeaders::new();
        if let Some(tp) = header(m, "traceparent") {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(&tp),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic)
            .payload(m.payload().unwrap_or_default())
            .headers(headers);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        let partition = header(m, headers::SOURCE_PARTITION).and_then(|p| p.parse().ok());
        rec = rec.partition(partition.unwrap_or(m.partition()));
        producer
            .send(rec, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::Headers;

    fn letter(headers: &[(&str, &str)]) -> OwnedMessage {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        assert_eq!(h.count(), headers.len());
        OwnedMessage::new(
            None,
            Some(b"k".to_vec()),
            "artifact.mime-detector.dlq".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(h),
        )
    }

    #[test]
    fn letters_without_their_bytes_or_source_are_not_replayed() {
        let source = [
            (headers::SOURCE_TOPIC, "artifact.created"),
            (headers::SOURCE_PARTITION, "2"),
            (headers::SOURCE_OFFSET, "41"),
        ];
        assert_eq!(not_replayable(&letter(&source)), None);
        let mut omitted = source.to_vec();
        omitted.push((headers::PAYLOAD_OMITTED, "999900"));
        let why = not_replayable(&letter(&omitted)).unwrap();
        assert!(why.contains("999900 bytes"), "{why}");
        assert!(why.contains("artifact.created/2@41"), "{why}");
        let why = not_replayable(&letter(&[])).unwrap();
        assert!(why.contains(headers::SOURCE_TOPIC), "{why}");
    }
}
