//! A new generation that starts at a later stage: the outcomes the earlier
//! stages wrote for the artifact's generation before, read from their
//! compacted topics (the latest record of each key), and their copies for
//! the new generation. Each copy carries the `x-restart-from` header, so
//! the stage that reads it skips it unless it is the one to start; the
//! projector folds them like any event, so the new generation's timeline
//! shows the carried-over outcomes.

use artifact_domain::{
    ArtifactCreated, ArtifactId, Generation, LocationVerified, MimeDetected, Parsed, Stage,
};
use artifact_kafka::client::{QuietEof, client_config};
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::TopicNames;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The events a restart at a later stage copies, of one artifact's
/// generation before.
#[derive(Debug, Default, Clone)]
pub(super) struct Sources {
    created: Option<ArtifactCreated>,
    mime: Option<MimeDetected>,
    location: Option<LocationVerified>,
    parsed: Option<Parsed>,
}

/// One copy to write, to its topic.
pub(super) struct CopyRecord {
    pub topic: String,
    pub value: CopyValue,
}

/// A copied event, for its schema.
pub(super) enum CopyValue {
    Created(ArtifactCreated),
    Mime(MimeDetected),
    Location(LocationVerified),
    Parsed(Parsed),
}

impl CopyValue {
    /// The Avro bytes of the value, for `topic`.
    pub(super) async fn encode(
        &self,
        codec: &AvroCodec,
        topic: &str,
    ) -> Result<Vec<u8>, CodecError> {
        match self {
            CopyValue::Created(v) => codec.encode(topic, EventSchema::ArtifactCreated, v).await,
            CopyValue::Mime(v) => codec.encode(topic, EventSchema::MimeDetected, v).await,
            CopyValue::Location(v) => codec.encode(topic, EventSchema::LocationVerified, v).await,
            CopyValue::Parsed(v) => codec.encode(topic, EventSchema::Parsed, v).await,
        }
    }
}

impl Sources {
    /// The copies for `generation`, starting at `from`, in stage order (the
    /// input of `from` last); `None` if an event is missing.
    pub(super) fn copies(
        &self,
        names: &TopicNames,
        from: Stage,
        generation: Generation,
        now: i64,
    ) -> Option<Vec<CopyRecord>> {
        let mut created = self.created.clone()?;
        created.generation = generation;
        created.created_at = now;
        let mut out = vec![CopyRecord {
            topic: names.created(),
            value: CopyValue::Created(created),
        }];
        for stage in &Stage::ALL[..from.index()] {
            let value = match stage {
                Stage::MimeDetector => CopyValue::Mime(renumbered(self.mime.as_ref()?, generation)),
                Stage::LocationLogger => {
                    CopyValue::Location(renumbered(self.location.as_ref()?, generation))
                }
                Stage::PdfParser => {
                    CopyValue::Parsed(renumbered(self.parsed.as_ref()?, generation))
                }
                Stage::Summarizer => return None,
            };
            out.push(CopyRecord {
                topic: names.output(*stage),
                value,
            });
        }
        Some(out)
    }
}

fn renumbered<R: Clone>(
    e: &artifact_domain::StageEvent<R>,
    generation: Generation,
) -> artifact_domain::StageEvent<R> {
    let mut e = e.clone();
    e.generation = generation;
    e
}

/// The earlier outcomes of each artifact's generation in `wanted`, for a
/// start at `from`: one pass over the created topic and each earlier
/// stage's outcome topic, keeping the records of the wanted keys and
/// generations.
pub(super) async fn read(
    conn: &ConnectionConfig,
    codec: &AvroCodec,
    names: &TopicNames,
    wanted: &HashMap<ArtifactId, Generation>,
    from: Stage,
) -> Result<HashMap<ArtifactId, Sources>, String> {
    let mut out: HashMap<ArtifactId, Sources> = HashMap::new();
    let keys: HashSet<String> = wanted.keys().map(ToString::to_string).collect();
    let mut topics = vec![(names.created(), None)];
    for s in &Stage::ALL[..from.index()] {
        topics.push((names.output(*s), Some(*s)));
    }
    for (topic, stage) in topics {
        let (c, t, k) = (conn.clone(), topic.clone(), keys.clone());
        let records = tokio::task::spawn_blocking(move || scan(&c, &t, &k))
            .await
            .map_err(|e| e.to_string())??;
        for payload in records {
            let p = Some(payload.as_slice());
            let e = |e: artifact_kafka::codec::CodecError| format!("{topic}: {e}");
            match stage {
                None => {
                    let c: ArtifactCreated = codec.decode(p).await.map_err(e)?;
                    if wanted.get(&c.artifact_id) == Some(&c.generation) {
                        let id = c.artifact_id;
                        out.entry(id).or_default().created = Some(c);
                    }
                }
                Some(Stage::MimeDetector) => {
                    let m: MimeDetected = codec.decode(p).await.map_err(e)?;
                    if wanted.get(&m.artifact_id) == Some(&m.generation) {
                        let id = m.artifact_id;
                        out.entry(id).or_default().mime = Some(m);
                    }
                }
                Some(Stage::LocationLogger) => {
                    let l: LocationVerified = codec.decode(p).await.map_err(e)?;
                    if wanted.get(&l.artifact_id) == Some(&l.generation) {
                        let id = l.artifact_id;
                        out.entry(id).or_default().location = Some(l);
                    }
                }
                Some(Stage::PdfParser) => {
                    let r: Parsed = codec.decode(p).await.map_err(e)?;
                    if wanted.get(&r.artifact_id) == Some(&r.generation) {
                        let id = r.artifact_id;
                        out.entry(id).or_default().parsed = Some(r);
                    }
                }
                Some(Stage::Summarizer) => {}
            }
        }
    }
    Ok(out)
}

/// The values of `keys`' records in `topic`, each partition read from the
/// beginning to the high watermark it had at the start (committed records
/// only).
fn scan(
    conn: &ConnectionConfig,
    topic: &str,
    keys: &HashSet<String>,
) -> Result<Vec<Vec<u8>>, String> {
    let ends = super::high_watermarks(conn, topic)?;
    let consumer: BaseConsumer<QuietEof> = client_config(conn, "artifact-api-reprocess")
        .set("group.id", "artifact-reprocess-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create_with_context(QuietEof)
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    let mut behind: HashSet<i32> = HashSet::new();
    for (&p, &end) in &ends {
        if end > 0 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            behind.insert(p);
        }
    }
    if behind.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !behind.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{topic} was not read to its end within 600 s"));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                behind.remove(&p);
            }
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(m)) => {
                let wanted = m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .is_some_and(|k| keys.contains(k));
                if wanted && let Some(v) = m.payload() {
                    out.push(v.to_vec());
                }
            }
        }
    }
    Ok(out)
}
