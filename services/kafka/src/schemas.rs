//! The event schemas (`schemas/*.avsc`, embedded at build time) and their
//! registration in a Confluent-compatible Schema Registry under the
//! TopicNameStrategy (subject `<topic>-value`) with BACKWARD compatibility.

use crate::topics::TopicNames;
use artifact_domain::Stage;
use serde::Deserialize;
use std::time::Duration;

/// One schema file of `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventSchema {
    /// `artifact-created.avsc`
    ArtifactCreated,
    /// `mime-detected.avsc`
    MimeDetected,
    /// `location-verified.avsc`
    LocationVerified,
    /// `parsed.avsc`
    Parsed,
    /// `summarized.avsc`
    Summarized,
    /// `dedup-entry.avsc`
    DedupEntry,
    /// `artifact-status.avsc`
    ArtifactStatus,
    /// `artifact-control.avsc`
    ArtifactControl,
    /// `stage-control.avsc`
    StageControl,
    /// `reprocess-operation.avsc`
    ReprocessOperation,
    /// `webhook-subscription.avsc`
    WebhookSubscription,
}

impl EventSchema {
    /// Every schema.
    pub const ALL: [EventSchema; 11] = [
        EventSchema::ArtifactCreated,
        EventSchema::MimeDetected,
        EventSchema::LocationVerified,
        EventSchema::Parsed,
        EventSchema::Summarized,
        EventSchema::DedupEntry,
        EventSchema::ArtifactStatus,
        EventSchema::StageControl,
        EventSchema::ArtifactControl,
        EventSchema::ReprocessOperation,
        EventSchema::WebhookSubscription,
    ];

    /// The Avro schema text.
    pub fn avsc(self) -> &'static str {
        match self {
            EventSchema::ArtifactCreated => include_str!("../../../schemas/artifact-created.avsc"),
            EventSchema::MimeDetected => include_str!("../../../schemas/mime-detected.avsc"),
            EventSchema::LocationVerified => {
                include_str!("../../../schemas/location-verified.avsc")
            }
            EventSchema::Parsed => include_str!("../../../schemas/parsed.avsc"),
            EventSchema::Summarized => include_str!("../../../schemas/summarized.avsc"),
            EventSchema::DedupEntry => include_str!("../../../schemas/dedup-entry.avsc"),
            EventSchema::ArtifactStatus => include_str!("../../../schemas/artifact-status.avsc"),
            EventSchema::ArtifactControl => {
                include_str!("../../../schemas/artifact-control.avsc")
            }
            EventSchema::StageControl => include_str!("../../../schemas/stage-control.avsc"),
            EventSchema::ReprocessOperation => {
                include_str!("../../../schemas/reprocess-operation.avsc")
            }
            EventSchema::WebhookSubscription => {
                include_str!("../../../schemas/webhook-subscription.avsc")
            }
        }
    }

    /// The outcome schema a stage writes.
    pub fn output_of(stage: Stage) -> EventSchema {
        match stage {
            Stage::MimeDetector => EventSchema::MimeDetected,
            Stage::LocationLogger => EventSchema::LocationVerified,
            Stage::PdfParser => EventSchema::Parsed,
            Stage::Summarizer => EventSchema::Summarized,
        }
    }
}

/// Which schema every topic's values use (retry and DLQ topics carry the
/// original record bytes and have no subject of their own).
pub fn subjects(names: &TopicNames) -> Vec<(String, EventSchema)> {
    let mut v = vec![(names.created(), EventSchema::ArtifactCreated)];
    for s in Stage::ALL {
        v.push((names.output(s), EventSchema::output_of(s)));
        v.push((names.dedup(s), EventSchema::DedupEntry));
    }
    v.push((names.status(), EventSchema::ArtifactStatus));
    v.push((names.artifact_control(), EventSchema::ArtifactControl));
    v.push((names.stage_control(), EventSchema::StageControl));
    v.push((names.operations(), EventSchema::ReprocessOperation));
    v.push((names.webhooks(), EventSchema::WebhookSubscription));
    v.into_iter()
        .map(|(t, s)| (format!("{t}-value"), s))
        .collect()
}

/// A Schema Registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer (connection refused, timeout).
    #[error(
        "Schema Registry at {url} did not answer: {source}. Is it running (deploy/local/stack status)?"
    )]
    Unreachable {
        /// The registry URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The new schema breaks compatibility with the registered versions.
    #[error(
        "schema for subject {subject} is not {level}-compatible with the registered versions: {detail}. \
         Add new fields with a default, do not remove fields without one, do not change types"
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// The compatibility level in force.
        level: &'static str,
        /// The registry's explanation.
        detail: String,
    },
    /// Any other error answer.
    #[error("Schema Registry answered {status} to {what} for subject {subject}: {body}")]
    Rejected {
        /// What was attempted.
        what: &'static str,
        /// The subject.
        subject: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
}

/// A minimal client of the Confluent Schema Registry REST API for
/// administration (registration and compatibility); encoding and decoding go
/// through `schema_registry_converter` in [`crate::codec`].
#[derive(Debug, Clone)]
pub struct RegistryAdmin {
    url: String,
    http: reqwest::Client,
}

/// A schema registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject.
    pub subject: String,
    /// The schema id the registry assigned (or already had).
    pub id: u32,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl RegistryAdmin {
    /// A client for the registry at `url` (the Confluent API base).
    pub fn new(url: &str) -> Self {
        RegistryAdmin {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("a reqwest client with a timeout builds"),
        }
    }

    fn unreachable(&self) -> impl FnOnce(reqwest::Error) -> RegistryError + '_ {
        move |source| RegistryError::Unreachable {
            url: self.url.clone(),
            source,
        }
    }

    /// Sets a subject's compatibility level (e.g. `BACKWARD`).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let resp = self
            .http
            .put(format!("{}/config/{subject}", self.url))
            .header("Content-Type", CONTENT_TYPE)
            .json(&serde_json::json!({ "compatibility": level }))
            .send()
            .await
            .map_err(self.unreachable())?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(());
        }
        Err(RegistryError::Rejected {
            what: "setting compatibility",
            subject: subject.to_owned(),
            status,
            body: resp.text().await.unwrap_or_default(),
        })
    }

    /// Registers `schema` (Avro JSON) under `subject`; returns its id. Idempotent:
    /// an identical schema gets its existing id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<Registered, RegistryError> {
        let resp = self
            .http
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("Content-Type", CONTENT_TYPE)
            .json(&serde_json::json!({ "schema": schema, "schemaType": "AVRO" }))
            .send()
            .await
            .map_err(self.unreachable())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        match status {
            200..=299 => {
                let id: IdAnswer =
                    serde_json::from_str(&body).map_err(|e| RegistryError::Rejected {
                        what: "registering (unreadable answer)",
                        subject: subject.to_owned(),
                        status,
                        body: format!("{e}: {body}"),
                    })?;
                Ok(Registered {
                    subject: subject.to_owned(),
                    id: id.id,
                })
            }
            409 => Err(RegistryError::Incompatible {
                subject: subject.to_owned(),
                level: "BACKWARD",
                detail: body,
            }),
            _ => Err(RegistryError::Rejected {
                what: "registering",
                subject: subject.to_owned(),
                status,
                body,
            }),
        }
    }

    /// Registers `schema` under `subject` and sets BACKWARD compatibility on it.
    pub async fn register_backward(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Registered, RegistryError> {
        // Set the level first when the subject exists, so the new version is
        // checked under it; a fresh subject gets it right after its first version.
        let preset = self.set_compatibility(subject, "BACKWARD").await;
        let registered = self.register(subject, schema).await?;
        if preset.is_err() {
            self.set_compatibility(subject, "BACKWARD").await?;
        }
        Ok(registered)
    }

    /// Registers every schema of the catalogue under its topic's subject.
    pub async fn register_all(&self, names: &TopicNames) -> Result<Vec<Registered>, RegistryError> {
        let mut out = vec![];
        for (subject, schema) in subjects(names) {
            out.push(self.register_backward(&subject, schema.avsc()).await?);
        }
        Ok(out)
    }

    /// Answers whether the registry is reachable (`GET /subjects`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let resp = self
            .http
            .get(format!("{}/subjects", self.url))
            .send()
            .await
            .map_err(self.unreachable())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(RegistryError::Rejected {
                what: "listing subjects",
                subject: String::new(),
                status: resp.status().as_u16(),
                body: resp.text().await.unwrap_or_default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;

    #[test]
    fn every_schema_parses() {
        for s in EventSchema::ALL {
            Schema::parse_str(s.avsc()).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        }
    }

    #[test]
    fn every_field_is_documented() {
        fn check(v: &serde_json::Value, path: &str) {
            match v {
                serde_json::Value::Object(m) => {
                    if m.get("type").and_then(|t| t.as_str()) == Some("record") {
                        for f in m["fields"].as_array().unwrap() {
                            let name = f["name"].as_str().unwrap();
                            assert!(f.get("doc").is_some(), "{path}.{name} has no doc");
                            check(&f["type"], &format!("{path}.{name}"));
                        }
                    } else {
                        for (_, x) in m {
                            check(x, path);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| check(x, path)),
                _ => {}
            }
        }
        for s in EventSchema::ALL {
            check(&serde_json::from_str(s.avsc()).unwrap(), &format!("{s:?}"));
        }
    }

    /// The shared records (Outcome, ArtifactContext) are inlined in each
    /// schema; they must be the same everywhere.
    #[test]
    fn shared_records_are_identical_across_schemas() {
        fn find<'a>(v: &'a serde_json::Value, name: &str, out: &mut Vec<&'a serde_json::Value>) {
            match v {
                serde_json::Value::Object(m) => {
                    if m.get("name").and_then(|n| n.as_str()) == Some(name)
                        && m.contains_key("type")
                        && m.get("fields").is_some()
                    {
                        out.push(v);
                    }
                    m.values().for_each(|x| find(x, name, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| find(x, name, out)),
                _ => {}
            }
        }
        for shared in ["Outcome", "ArtifactContext"] {
            let docs: Vec<serde_json::Value> = EventSchema::ALL
                .iter()
                .map(|s| serde_json::from_str(s.avsc()).unwrap())
                .collect();
            let mut found = vec![];
            for d in &docs {
                find(d, shared, &mut found);
            }
            assert!(found.len() >= 5, "{shared} found {} times", found.len());
            assert!(
                found.windows(2).all(|w| w[0] == w[1]),
                "{shared} differs between schemas"
            );
        }
    }

    #[test]
    fn subjects_follow_the_topic_name_strategy() {
        let subs = subjects(&TopicNames::new("artifact"));
        assert!(subs.contains(&(
            "artifact.created-value".into(),
            EventSchema::ArtifactCreated
        )));
        assert!(subs.contains(&("artifact.parsed-value".into(), EventSchema::Parsed)));
        assert!(subs.contains(&(
            "artifact.summarizer.dedup-value".into(),
            EventSchema::DedupEntry
        )));
        assert!(subs.contains(&(
            "artifact.artifact-control-value".into(),
            EventSchema::ArtifactControl
        )));
        assert!(subs.contains(&(
            "artifact.stage-control-value".into(),
            EventSchema::StageControl
        )));
        assert!(subs.contains(&(
            "artifact.operations-value".into(),
            EventSchema::ReprocessOperation
        )));
        assert_eq!(subs.len(), 1 + 4 + 4 + 1 + 1 + 1 + 1 + 1);
    }
}
