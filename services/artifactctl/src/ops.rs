//! Kafka-side operations: producing `ArtifactCreated` as an external producer
//! would. The dead-letter topics are `artifact_kafka::dead_letters`.

use anyhow::Context;
use artifact_domain::{ArtifactCreated, ArtifactId, Generation};
use artifact_kafka::client::producer_config;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::schemas::EventSchema;
use artifact_kafka::topics::TopicNames;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// Writes one `ArtifactCreated` straight to `<prefix>.created`.
pub async fn produce(conn: &ConnectionConfig, event: &ArtifactCreated) -> anyhow::Result<()> {
    let topic = TopicNames::from_config(conn).created();
    let codec = AvroCodec::new(&conn.schema_registry_url)?;
    let payload = codec
        .encode(&topic, EventSchema::ArtifactCreated, event)
        .await?;
    let producer: FutureProducer = producer_config(conn, "artifactctl").create()?;
    let key = event.artifact_id.to_string();
    producer
        .send(
            FutureRecord::to(&topic).key(&key).payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("producing to {topic}"))?;
    Ok(())
}

/// A new external event.
pub fn external_event(
    location: &str,
    content_type: Option<String>,
    filename: Option<String>,
) -> ArtifactCreated {
    ArtifactCreated {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        storage_location: location.to_owned(),
        declared_content_type: content_type,
        filename,
        size_bytes: None,
        sha256: None,
        created_at: artifact_kafka::now_ms(),
    }
}
