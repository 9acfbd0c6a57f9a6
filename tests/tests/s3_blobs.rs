//! The services on an `s3://` blob store: the local stack's S3Proxy
//! (`deploy/local/stack up`), a fresh prefix of its bucket per test, the
//! real binaries as processes against the real broker and registry.
//!
//! * location-logger alone, fed `MimeDetected` events: it stats and digests
//!   objects in its prefix, refuses other buckets, escapes and schemes at
//!   once, retries a missing object until it appears, and gives up on one
//!   that never does.
//! * The whole pipeline with artifact-api: an upload is staged as a
//!   multipart upload, moved to `uploads/<id>`, parsed to a text object and
//!   summarized; the text is served by the API; idempotency-key retries,
//!   conflicts and oversized uploads leave no staged objects behind.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).

use artifact_domain::*;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::pipeline::{MAX_UPLOAD, Pipeline, fixtures};
use artifact_pipeline_tests::s3::S3Prefix;
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use rdkafka::message::Message;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(BIN_DIR_OF).with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built (cargo build --workspace --bins)",
        path.display()
    );
    Ok(path)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// mime-detector's outcome for a blob, as location-logger reads it.
fn detected(location: String, size: Option<i64>, sha: Option<String>) -> MimeDetected {
    StageEvent {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: location,
            declared_content_type: Some("text/plain".into()),
            filename: Some("notes.txt".into()),
            detected_content_type: Some("text/plain".into()),
            size_bytes: size,
            sha256: sha,
            text_location: None,
        },
        outcome: Outcome::Succeeded,
        result: Some(MimeDetection {
            detected_content_type: "text/plain".into(),
            declared_content_type: Some("text/plain".into()),
            agrees: true,
            method: "text:utf-8".into(),
        }),
        processed_at: 1,
    }
}

async fn produce_detected(env: &TestEnv, events: &[MimeDetected]) -> anyhow::Result<()> {
    let topic = env.names.output(Stage::MimeDetector);
    env.produce_events(&topic, EventSchema::MimeDetected, events)
        .await
}

async fn verified(env: &TestEnv) -> anyhow::Result<HashMap<ArtifactId, LocationVerified>> {
    Ok(env
        .read_decoded::<LocationVerified>(&env.names.output(Stage::LocationLogger))
        .await?
        .into_iter()
        .map(|e| (e.artifact_id, e))
        .collect())
}

fn permanent_reason(e: &LocationVerified) -> &str {
    match &e.outcome {
        Outcome::Failed {
            kind: FailureKind::Permanent,
            reason,
        } => reason,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn location_logger_verifies_objects_in_its_prefix_only() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(2).await?;
    let s3 = S3Prefix::fresh("location-logger");
    let neighbour = S3Prefix::fresh("neighbour");
    let mut vars = s3.vars();
    vars.extend([
        ("RETRY_INLINE_ATTEMPTS", "1".to_owned()),
        ("RETRY_MAX_DELIVERIES", "4".to_owned()),
        ("RETRY_DELAY_MS", "1000".to_owned()),
    ]);
    let mut stage = StageProcess::start(&env, &bin("location-logger")?, &vars)?;

    let text = b"Objects are read as a stream and hashed on the way.".to_vec();
    let present = s3.store.location("uploads/notes.txt");
    s3.store.put(&present, &text).await?;
    let theirs = neighbour.store.location("uploads/notes.txt");
    neighbour.store.put(&theirs, &text).await?;
    let their_prefix = neighbour.url.rsplit('/').next().unwrap();

    let ok = detected(
        present.clone(),
        Some(text.len() as i64),
        Some(sha256(&text)),
    );
    let mismatch = detected(present.clone(), None, Some(sha256(b"other bytes")));
    let missing = detected(s3.store.location("uploads/never-written"), None, None);
    let late_location = s3.store.location("uploads/late.txt");
    let late = detected(late_location.clone(), Some(text.len() as i64), None);
    let other_prefix = detected(theirs.clone(), None, None);
    let escape = detected(
        format!("{}/../{their_prefix}/uploads/notes.txt", s3.url),
        None,
        None,
    );
    let other_bucket = detected("s3://another-bucket/uploads/notes.txt".into(), None, None);
    let file = detected("file:///etc/hostname".into(), None, None);
    produce_detected(
        &env,
        &[
            ok.clone(),
            mismatch.clone(),
            missing.clone(),
            late.clone(),
            other_prefix.clone(),
            escape.clone(),
            other_bucket.clone(),
            file.clone(),
        ],
    )
    .await?;

    // The late object appears once its first attempt has failed and been
    // sent to the retry topic.
    let retry_topic = env.names.retry(Stage::LocationLogger);
    let late_key = late.artifact_id.to_string();
    wait_until(
        "the late object's record in the retry topic",
        Duration::from_secs(60),
        || async {
            env.read_all(&retry_topic)
                .is_ok_and(|records| records.iter().any(|m| m.key() == Some(late_key.as_bytes())))
        },
    )
    .await?;
    s3.store.put(&late_location, &text).await?;

    let all = [
        &ok,
        &mismatch,
        &missing,
        &late,
        &other_prefix,
        &escape,
        &other_bucket,
        &file,
    ];
    wait_until(
        "an outcome for every event",
        Duration::from_secs(90),
        || async {
            verified(&env)
                .await
                .is_ok_and(|v| all.iter().all(|e| v.contains_key(&e.artifact_id)))
        },
    )
    .await?;
    let v = verified(&env).await?;

    let got = &v[&ok.artifact_id];
    assert_eq!(got.outcome, Outcome::Succeeded);
    let check = got.result.as_ref().expect("a check");
    assert_eq!(check.resolved_location, present);
    assert_eq!(check.size_bytes, text.len() as i64);
    assert_eq!(check.sha256, sha256(&text));
    assert_eq!(got.context.sha256.as_deref(), Some(sha256(&text).as_str()));

    assert!(permanent_reason(&v[&mismatch.artifact_id]).contains("SHA-256"));

    let got = &v[&late.artifact_id];
    assert_eq!(got.outcome, Outcome::Succeeded, "{:?}", got.outcome);
    assert_eq!(got.result.as_ref().unwrap().sha256, sha256(&text));

    let reason = permanent_reason(&v[&missing.artifact_id]);
    assert!(
        reason.contains("gave up after 4 deliveries") && reason.contains("no blob"),
        "{reason}"
    );

    for e in [&other_prefix, &escape, &other_bucket] {
        let reason = permanent_reason(&v[&e.artifact_id]);
        assert!(
            reason.contains("outside the storage root") && !reason.contains("gave up"),
            "{}: {reason}",
            e.context.storage_location
        );
    }
    let reason = permanent_reason(&v[&file.artifact_id]);
    assert!(
        reason.contains("unsupported storage location")
            && reason.contains(&format!("serves s3:// locations under {}", s3.url)),
        "{reason}"
    );

    // Refused locations are not retried (their reasons above say nothing
    // of giving up): the retry topic took the missing object's deliveries
    // 2..=4 and the late one's, and deletes each once it is processed.
    let retries = stage
        .metric("artifact_stage_retries_total", &["kind=\"topic\""])
        .await;
    assert!(retries >= 4.0, "{retries} records sent to the retry topic");
    wait_until(
        "the processed retry records deleted",
        Duration::from_secs(60),
        || async { env.read_all(&retry_topic).is_ok_and(|v| v.is_empty()) },
    )
    .await?;
    assert!(stage.is_running(), "location-logger did not crash");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_parsed_and_served_from_s3() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let fx = fixtures();
    let bin_dir = Path::new(BIN_DIR_OF).parent().unwrap();
    bin("artifact-api")?;
    let p = Pipeline::start_s3(bin_dir).await?;
    let s3 = p.s3.as_ref().expect("an s3 pipeline");
    let pdf_path = fx.join("text/reportlab-3.pdf");
    let pdf = std::fs::read(&pdf_path)?;

    let id = Pipeline::accepted_id(
        p.upload_raw(
            pdf.clone(),
            "application/pdf",
            "report.pdf",
            Some("s3-key-1"),
        )
        .await?,
    )
    .await?;
    let v = p.wait_final(&id, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed, "{v:?}");
    assert_eq!(
        v.context.storage_location,
        s3.store.location(&format!("uploads/{id}"))
    );
    assert_eq!(v.context.size_bytes, Some(pdf.len() as i64));
    assert_eq!(v.context.sha256.as_deref(), Some(sha256(&pdf).as_str()));
    assert!(v.page_count.unwrap() >= 2);
    assert!(v.summary.as_deref().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        s3.store.digest(&v.context.storage_location).await?.sha256,
        sha256(&pdf),
        "the object holds the uploaded bytes"
    );

    // The text pdf-parser wrote is an object under the prefix, and the API
    // serves it.
    let text_location = v.context.text_location.clone().expect("a text location");
    assert_eq!(
        text_location,
        s3.store
            .location(&format!("texts/{}/{id}-1.txt", &id.to_string()[..2]))
    );
    let stored = String::from_utf8(s3.store.read_all(&text_location, 1 << 20).await?)?;
    assert!(stored.split_whitespace().count() > 100, "{stored}");
    let served = p
        .http
        .get(p.url(&format!("/v1/artifacts/{id}/text")))
        .send()
        .await?;
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await?, stored);

    // The same key and bytes again: the same artifact. Other bytes: 409.
    let again = Pipeline::accepted_id(
        p.upload_raw(
            pdf.clone(),
            "application/pdf",
            "report.pdf",
            Some("s3-key-1"),
        )
        .await?,
    )
    .await?;
    assert_eq!(again, id);
    let conflict = p
        .upload_raw(
            b"other bytes".to_vec(),
            "text/plain",
            "other.txt",
            Some("s3-key-1"),
        )
        .await?;
    assert_eq!(conflict.status(), 409);
    assert_eq!(
        s3.store.digest(&v.context.storage_location).await?.sha256,
        sha256(&pdf),
        "a conflicting upload does not replace the object"
    );
    // Over the limit by less than the API's Content-Length slack: refused
    // while streaming, with the multipart upload already begun.
    let too_big = p
        .upload_raw(
            vec![b'x'; MAX_UPLOAD as usize + 1000],
            "text/plain",
            "big.txt",
            None,
        )
        .await?;
    assert_eq!(too_big.status(), 413);

    // Nothing staged is left, and only the one upload is in place.
    assert_eq!(s3.list("tmp").await?, Vec::<String>::new());
    assert_eq!(
        s3.list("uploads").await?,
        vec![v.context.storage_location.clone()]
    );
    Ok(())
}
