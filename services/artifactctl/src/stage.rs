//! `artifactctl stage pause|resume|status`: the operator's records in the
//! compacted `<prefix>.stage-control` topic, which every replica of a stage
//! follows, and the breakers' reports written there by the replicas.

use anyhow::Context;
use artifact_domain::Stage;
use artifact_kafka::client::{consumer_config, producer_config};
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::stage_control::{OPERATOR, StageControl};
use artifact_kafka::topics::{TopicNames, partition_counts};
use clap::Subcommand;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Pauses a stage on every replica: it keeps its partitions and stays
    /// ready, finishes what it has started and reads no new input.
    Pause {
        /// mime-detector, location-logger, pdf-parser or summarizer.
        stage: Stage,
        /// Why, shown by `stage status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resumes a paused stage; it works off the backlog.
    Resume {
        /// mime-detector, location-logger, pdf-parser or summarizer.
        stage: Stage,
    },
    /// Shows whether each stage is paused by the operator and which
    /// replicas' circuit breakers are open, with the cause.
    Status,
}

/// Runs a `stage` subcommand.
pub async fn run(conn: &ConnectionConfig, command: StageCommand) -> anyhow::Result<()> {
    match command {
        StageCommand::Pause { stage, reason } => {
            write(conn, stage, true, reason).await?;
            println!("{stage} paused");
        }
        StageCommand::Resume { stage } => {
            write(conn, stage, false, None).await?;
            println!("{stage} resumed");
        }
        StageCommand::Status => {
            let records = read(conn).await?;
            print!("{}", status_table(&records));
        }
    }
    Ok(())
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
    let consumer: BaseConsumer = consumer_config(conn, "artifactctl", "artifactctl-unused")
        .set("enable.partition.eof", "true")
        .create()?;
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

/// One line per stage: running or paused by the operator (with the reason),
/// then one line per replica whose breaker reported it opened.
pub fn status_table(records: &BTreeMap<String, StageControl>) -> String {
    let mut out = format!(
        "{:<16} {:<8} {:<9} {}\n",
        "STAGE", "STATE", "CAUSE", "REASON"
    );
    for stage in Stage::ALL {
        let name = stage.name();
        let operator = records.get(name).filter(|c| c.paused);
        let (state, cause, reason) = match operator {
            Some(c) => ("paused", OPERATOR, c.reason.clone().unwrap_or_default()),
            None => ("running", "", String::new()),
        };
        out.push_str(&format!("{name:<16} {state:<8} {cause:<9} {reason}\n"));
        for c in records
            .values()
            .filter(|c| c.stage == name && c.instance.is_some() && c.paused)
        {
            out.push_str(&format!(
                "{:<16} {:<8} {:<9} {} (replica {})\n",
                "",
                "tripped",
                c.cause,
                c.reason.as_deref().unwrap_or(""),
                c.instance.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stage: &str, paused: bool, instance: Option<&str>, reason: &str) -> StageControl {
        StageControl {
            stage: stage.into(),
            paused,
            cause: if instance.is_some() {
                "breaker"
            } else {
                OPERATOR
            }
            .into(),
            reason: Some(reason.into()),
            instance: instance.map(str::to_owned),
            updated_at: 1,
        }
    }

    #[test]
    fn status_shows_operator_pauses_and_open_breakers() {
        let mut r = BTreeMap::new();
        for c in [
            record("summarizer", true, None, "LLM provider maintenance"),
            record("pdf-parser", false, None, ""),
            record("summarizer", true, Some("summarizer-1"), "LLM answered 503"),
            record("summarizer", false, Some("summarizer-0"), ""),
        ] {
            r.insert(c.key(), c);
        }
        let t = status_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + 4 + 1, "{t}");
        let summarizer = lines
            .iter()
            .position(|l| l.starts_with("summarizer"))
            .unwrap();
        assert!(lines[summarizer].contains("paused"), "{t}");
        assert!(
            lines[summarizer].contains("LLM provider maintenance"),
            "{t}"
        );
        assert!(lines[summarizer + 1].contains("tripped"), "{t}");
        assert!(lines[summarizer + 1].contains("summarizer-1"), "{t}");
        assert!(
            !t.contains("summarizer-0"),
            "a closed breaker is not shown: {t}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("pdf-parser") && l.contains("running")),
            "{t}"
        );
    }
}
