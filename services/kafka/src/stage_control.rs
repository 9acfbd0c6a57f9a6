//! The values of `<prefix>.stage-control` (`schemas/stage-control.avsc`), a
//! compacted topic: the record keyed by a stage's name is the operator's
//! pause or resume of that stage, followed by every replica; a record keyed
//! `<stage>/<instance>` is one replica's circuit breaker saying it opened
//! or closed, for `artifactctl stage status` and the console; [`write`]
//! and [`read`] are the operator's side.

use crate::client::{consumer_config, producer_config};
use crate::codec::AvroCodec;
use crate::config::ConnectionConfig;
use crate::now_ms;
use crate::schemas::EventSchema;
use crate::topics::{TopicNames, partition_counts};
use anyhow::Context;
use artifact_domain::Stage;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `cause` of an operator's record.
pub const OPERATOR: &str = "operator";
/// `cause` of a breaker's record.
pub const BREAKER: &str = "breaker";

/// One record's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageControl {
    /// The stage's name.
    pub stage: String,
    /// Whether new input is held back.
    pub paused: bool,
    /// [`OPERATOR`] or [`BREAKER`].
    pub cause: String,
    /// Why, in words.
    pub reason: Option<String>,
    /// The replica of a breaker's record.
    pub instance: Option<String>,
    /// When it was written (epoch milliseconds).
    pub updated_at: i64,
}

impl StageControl {
    /// The record key: the stage's name for the operator's record,
    /// `<stage>/<instance>` for a breaker's.
    pub fn key(&self) -> String {
        match &self.instance {
            Some(i) => format!("{}/{i}", self.stage),
            None => self.stage.clone(),
        }
    }
}

/// Writes the operator's record for `stage`.
pub async fn write(
    conn: &ConnectionConfig,
    stage: Stage,
    paused: bool,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let topic = TopicNames::from_config(conn).stage_control();
    let value = StageControl {
        stage: stage.name().to_owned(),
        paused,
        cause: OPERATOR.to_owned(),
        reason,
        instance: None,
        updated_at: now_ms(),
    };
    let codec = AvroCodec::new(&conn.schema_registry_url)?;
    let payload = codec
        .encode(&topic, EventSchema::StageControl, &value)
        .await?;
    let producer: FutureProducer = producer_config(conn, "artifactctl").create()?;
    producer
        .send(
            FutureRecord::to(&topic).key(&value.key()).payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("writing to {topic}"))?;
    Ok(())
}

/// The newest record per key of the stage-control topic.
pub async fn read(conn: &ConnectionConfig) -> anyhow::Result<BTreeMap<String, StageControl>> {
    let c = conn.clone();
    let messages = tokio::task::spawn_blocking(move || read_raw(&c)).await??;
    let codec = AvroCodec::new(&conn.schema_registry_url)?;
    let mut out = BTreeMap::new();
    for m in messages {
        let Some(key) = m.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
            continue;
        };
        match m.payload() {
            None => {
                out.remove(&key);
            }
            Some(bytes) => {
                let v: StageControl = codec
                    .decode(Some(bytes))
                    .await
                    .with_context(|| format!("decoding the stage-control record {key}"))?;
                out.insert(key, v);
            }
        }
    }
    Ok(out)
}

/// Every record of the stage-control topic, to its end now.
fn read_raw(conn: &ConnectionConfig) -> anyhow::Result<Vec<OwnedMessage>> {
    let topic = TopicNames::from_config(conn).stage_control();
    let timeout = Duration::from_secs(10);
    let n = *partition_counts(conn, std::slice::from_ref(&topic), timeout)?
        .get(&topic)
        .with_context(|| {
            format!("topic {topic} does not exist; create it with `artifactctl topics create`")
        })?;
    let consumer: BaseConsumer<crate::lag::ProbeContext> =
        consumer_config(conn, "artifactctl", "artifactctl-unused")
            .set("enable.partition.eof", "true")
            .create_with_context(crate::lag::ProbeContext)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut messages = vec![];
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while at_end.len() < n {
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("{topic} not read to its end within 60 s");
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => messages.push(m.detach()),
            None => {}
        }
    }
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operators_record_is_keyed_by_stage_and_a_breakers_by_replica() {
        let mut c = StageControl {
            stage: "summarizer".into(),
            paused: true,
            cause: OPERATOR.into(),
            reason: None,
            instance: None,
            updated_at: 1,
        };
        assert_eq!(c.key(), "summarizer");
        c.instance = Some("summarizer-0".into());
        assert_eq!(c.key(), "summarizer/summarizer-0");
    }
}
