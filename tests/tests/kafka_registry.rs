//! Against the real local Schema Registry (deploy/local/stack up): every
//! event round-trips through the Confluent wire format, registration is
//! idempotent, and BACKWARD compatibility is enforced by the registry.

use artifact_domain::dedup::DedupEntry;
use artifact_domain::outcome::OutcomeStatus;
use artifact_domain::*;
use artifact_kafka::codec::{AvroCodec, CodecError};
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::schemas::{EventSchema, RegistryAdmin, RegistryError};
use artifact_kafka::topics::TopicNames;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fn conn() -> ConnectionConfig {
    ConnectionConfig::local(&format!("t{}", uuid::Uuid::new_v4().simple()))
}

fn context() -> ArtifactContext {
    ArtifactContext {
        storage_location: "file:///data/blobs/a/b".into(),
        declared_content_type: Some("application/pdf".into()),
        filename: Some("report.pdf".into()),
        detected_content_type: Some("application/pdf".into()),
        size_bytes: Some(4096),
        sha256: Some("ab".repeat(32)),
        text_location: None,
    }
}

async fn round_trip<T>(codec: &AvroCodec, topic: &str, schema: EventSchema, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let writer = codec.writer(topic, schema).await.unwrap();
    let bytes = writer.encode(value).unwrap();
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    // The codec's one-pass writer wrote it, the bytes apache-avro writes.
    assert!(writer.writes_directly(), "{schema:?} left to apache-avro");
    let parsed = apache_avro::Schema::parse_str(schema.avsc()).unwrap();
    let reference = apache_avro::writer::datum::GenericDatumWriter::builder(&parsed)
        .build()
        .unwrap()
        .write_ser_to_vec(value)
        .unwrap();
    assert_eq!(
        &bytes[5..],
        reference,
        "{schema:?}: not apache-avro's bytes"
    );
    let back: T = codec.decode(Some(&bytes)).await.unwrap();
    assert_eq!(&back, value, "{schema:?} did not round-trip");
}

fn stage_event<R>(result: Option<R>, outcome: Outcome) -> StageEvent<R> {
    StageEvent {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::new(3).unwrap(),
        context: context(),
        outcome,
        result,
        processed_at: 1_764_000_000_123,
    }
}

#[tokio::test]
async fn every_event_round_trips_through_the_registry() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let names = TopicNames::from_config(&conn);
    let codec = AvroCodec::new(&conn.schema_registry_url).unwrap();

    let created = ArtifactCreated {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        storage_location: "file:///data/blobs/x".into(),
        declared_content_type: None,
        filename: Some("naïve – 文書.pdf".into()),
        size_bytes: Some(0),
        sha256: None,
        created_at: 1_764_000_000_000,
    };
    round_trip(
        &codec,
        &names.created(),
        EventSchema::ArtifactCreated,
        &created,
    )
    .await;

    let mime = stage_event(
        Some(MimeDetection {
            detected_content_type: "application/pdf".into(),
            declared_content_type: None,
            agrees: false,
            method: "magic:pdf".into(),
        }),
        Outcome::Succeeded,
    );
    round_trip(
        &codec,
        &names.output(Stage::MimeDetector),
        EventSchema::MimeDetected,
        &mime,
    )
    .await;

    let loc: LocationVerified = stage_event(None, Outcome::retriable("blob not found yet"));
    round_trip(
        &codec,
        &names.output(Stage::LocationLogger),
        EventSchema::LocationVerified,
        &loc,
    )
    .await;
    let loc = stage_event(
        Some(LocationCheck {
            resolved_location: "/data/blobs/x".into(),
            size_bytes: 4096,
            sha256: "cd".repeat(32),
        }),
        Outcome::Succeeded,
    );
    round_trip(
        &codec,
        &names.output(Stage::LocationLogger),
        EventSchema::LocationVerified,
        &loc,
    )
    .await;

    let parsed = stage_event(
        Some(ParseResult {
            text_location: "file:///data/blobs/t".into(),
            page_count: Some(12),
            word_count: 3456,
            char_count: 20_000,
            preview: "Introduction\nThis report".into(),
            title: Some("Report".into()),
            author: None,
            creator: Some("LaTeX".into()),
            producer: Some("pdfTeX-1.40".into()),
            creation_date: Some("D:20240101120000Z".into()),
            modification_date: None,
            ocr_pages: vec![2, 3],
            ocr_confidence: Some(91),
            pages: vec![PageText {
                number: 2,
                char_count: 1800,
                ocr: true,
                text_location: "file:///data/blobs/t.p2.txt".into(),
            }],
        }),
        Outcome::Succeeded,
    );
    round_trip(
        &codec,
        &names.output(Stage::PdfParser),
        EventSchema::Parsed,
        &parsed,
    )
    .await;
    let skipped: Parsed = stage_event(None, Outcome::skipped("image/png is not parseable"));
    round_trip(
        &codec,
        &names.output(Stage::PdfParser),
        EventSchema::Parsed,
        &skipped,
    )
    .await;

    let summarized = stage_event(
        Some(SummaryResult {
            method: "extractive".into(),
            summary: "A short summary.".into(),
        }),
        Outcome::Succeeded,
    );
    round_trip(
        &codec,
        &names.output(Stage::Summarizer),
        EventSchema::Summarized,
        &summarized,
    )
    .await;
    let failed: Summarized = stage_event(None, Outcome::permanent("text blob missing"));
    round_trip(
        &codec,
        &names.output(Stage::Summarizer),
        EventSchema::Summarized,
        &failed,
    )
    .await;

    for status in [
        OutcomeStatus::Succeeded,
        OutcomeStatus::Skipped,
        OutcomeStatus::Failed,
    ] {
        let entry = DedupEntry {
            artifact_id: ArtifactId::new_random(),
            generation: Generation::new(7).unwrap(),
            outcome_status: status,
            processed_at: 1_764_000_000_456,
        };
        round_trip(
            &codec,
            &names.dedup(Stage::PdfParser),
            EventSchema::DedupEntry,
            &entry,
        )
        .await;
    }
}

#[tokio::test]
async fn garbage_and_unknown_schema_ids_are_undecodable_not_retriable() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let codec = AvroCodec::new(&conn.schema_registry_url).unwrap();
    for bytes in [
        b"hello world".to_vec(),
        vec![0, 0x7f, 0xff, 0xff, 0xf0, 1, 2, 3],
        vec![0, 0],
    ] {
        let err = codec
            .decode::<ArtifactCreated>(Some(&bytes))
            .await
            .unwrap_err();
        assert!(
            matches!(err, CodecError::Undecodable(_)),
            "{bytes:?}: {err:?}"
        );
        assert!(!err.is_retriable());
    }
    let err = codec.decode::<ArtifactCreated>(None).await.unwrap_err();
    assert!(matches!(err, CodecError::Undecodable(_)));
}

#[tokio::test]
async fn a_record_of_another_event_type_does_not_decode_as_this_one() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let names = TopicNames::from_config(&conn);
    let codec = AvroCodec::new(&conn.schema_registry_url).unwrap();
    let summary = SummaryResult {
        method: "extractive".into(),
        summary: "x".into(),
    };
    let ev = stage_event(Some(summary), Outcome::Succeeded);
    let bytes = codec
        .encode(
            &names.output(Stage::Summarizer),
            EventSchema::Summarized,
            &ev,
        )
        .await
        .unwrap();
    let err = codec
        .decode::<ArtifactCreated>(Some(&bytes))
        .await
        .unwrap_err();
    assert!(matches!(err, CodecError::Undecodable(_)), "{err:?}");
}

#[tokio::test]
async fn register_all_is_idempotent() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let names = TopicNames::from_config(&conn);
    let admin = RegistryAdmin::new(&conn.schema_registry_url);
    let first = admin.register_all(&names).await.unwrap();
    let second = admin.register_all(&names).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(
        first.len(),
        14,
        "created, 4 outcomes, 4 dedup, status, stage-control, artifact-control, operations, webhooks"
    );
}

#[tokio::test]
async fn registry_enforces_backward_compatibility() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let admin = RegistryAdmin::new(&conn.schema_registry_url);
    let subject = format!("{}.created-value", conn.topic_prefix);
    let v1 = EventSchema::ArtifactCreated.avsc();
    let first = admin.register_backward(&subject, v1).await.unwrap();

    let mut doc: serde_json::Value = serde_json::from_str(v1).unwrap();
    let fields = doc["fields"].as_array().unwrap().clone();

    // A new field without a default: old records cannot be read with it.
    let mut incompatible = fields.clone();
    incompatible.push(serde_json::json!({"name": "tenant", "type": "string", "doc": "owner"}));
    let mut bad = doc.clone();
    bad["fields"] = incompatible.into();
    let err = admin
        .register_backward(&subject, &bad.to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Incompatible { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&subject) && msg.contains("default"), "{msg}");

    // An optional field with a default: compatible, a new version.
    let mut compatible = fields;
    compatible.push(serde_json::json!({
        "name": "tenant", "type": ["null", "string"], "default": null, "doc": "owner"
    }));
    doc["fields"] = compatible.into();
    let second = admin
        .register_backward(&subject, &doc.to_string())
        .await
        .unwrap();
    assert_ne!(second.id, first.id);
}

/// `parsed.avsc` as it was before OCR (`ocr_pages`, `ocr_confidence`),
/// then before per-page texts (`pages`): the registry takes each next
/// version, today's last, as BACKWARD-compatible.
#[tokio::test]
async fn parsed_schema_is_backward_compatible_with_its_previous_versions() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let admin = RegistryAdmin::new(&conn.schema_registry_url);
    let subject = format!("{}.parsed-history-value", conn.topic_prefix);
    let mut ids = Vec::new();
    for schema in [
        include_str!("data/parsed-v1.avsc"),
        include_str!("data/parsed-v2.avsc"),
        EventSchema::Parsed.avsc(),
    ] {
        ids.push(admin.register_backward(&subject, schema).await.unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "each version is a new one: {ids:?}");
}

/// `artifact-status.avsc` as it was before attempts, dead letters and the
/// history of generations: today's is a BACKWARD-compatible next version.
#[tokio::test]
async fn status_schema_with_attempts_is_backward_compatible_with_its_previous_version() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let admin = RegistryAdmin::new(&conn.schema_registry_url);
    let subject = format!("{}.status-history-value", conn.topic_prefix);
    let before = admin
        .register_backward(&subject, include_str!("data/artifact-status-v1.avsc"))
        .await
        .unwrap();
    let now = admin
        .register_backward(&subject, EventSchema::ArtifactStatus.avsc())
        .await
        .unwrap();
    assert_ne!(now.id, before.id);
}

#[tokio::test]
async fn status_snapshots_round_trip() {
    artifact_pipeline_tests::needs_stack!();
    let conn = conn();
    let names = TopicNames::from_config(&conn);
    let codec = AvroCodec::new(&conn.schema_registry_url).unwrap();
    let id = ArtifactId::new_random();
    let created = ArtifactCreated {
        artifact_id: id,
        generation: Generation::FIRST,
        storage_location: "file:///data/blobs/x".into(),
        declared_content_type: Some("application/pdf".into()),
        filename: Some("r.pdf".into()),
        size_bytes: Some(10),
        sha256: None,
        created_at: 5,
    };
    let mut parsed: Parsed = stage_event(None, Outcome::permanent("corrupt xref"));
    parsed.artifact_id = id;
    parsed.generation = Generation::FIRST;
    let view = ArtifactStatus::fold([
        PipelineEvent::Created(created),
        PipelineEvent::Parsed(parsed),
    ])
    .unwrap()
    .view();
    assert_eq!(view.failed_stage, Some(Stage::PdfParser));
    round_trip(&codec, &names.status(), EventSchema::ArtifactStatus, &view).await;

    // A pending retry, a dead letter and an earlier generation.
    let mut next = ArtifactStatus::empty(id, Generation::FIRST.next());
    next.retry(artifact_domain::RetryScheduled {
        artifact_id: id,
        generation: Generation::FIRST.next(),
        stage: Stage::MimeDetector,
        delivery: 2,
        error: "store unavailable".into(),
        not_before: 90,
        at: 80,
    });
    next.dead_letter(artifact_domain::DeadLetter {
        stage: Stage::PdfParser,
        topic: "t.pdf-parser.dlq".into(),
        partition: 2,
        offset: 41,
        error: "undecodable".into(),
        at: 70,
    });
    next.carry_over(&view);
    let view = next.view();
    assert_eq!(view.next_retry_at, Some(90));
    assert_eq!(view.history.len(), 1);
    round_trip(&codec, &names.status(), EventSchema::ArtifactStatus, &view).await;
}
