//! Every reader of the pipeline reads only committed records: records a
//! transaction wrote and then aborted are in the log, and a stage (its
//! input and its dedup restore), the API's projector and its read model
//! must act as if they were not there.

use artifact_domain::dedup::DedupEntry;
use artifact_domain::outcome::OutcomeStatus;
use artifact_domain::{ArtifactStatus, Generation, MimeDetected, PipelineEvent, Stage};
use artifact_kafka::client::producer_config;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::chaos::unread;
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");

/// Writes `records` (topic, key, payload) in one transaction, every one
/// acknowledged (so in the log), and aborts it.
async fn write_aborted(env: &TestEnv, records: &[(String, String, Vec<u8>)]) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(&env.conn, "aborter")
        .set(
            "transactional.id",
            format!("aborter-{}", uuid::Uuid::new_v4()),
        )
        .create()?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;
    producer.begin_transaction()?;
    for (topic, key, payload) in records {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .partition(0),
                timeout,
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    producer.abort_transaction(timeout)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stage_skips_aborted_inputs_and_aborted_dedup_entries() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let created = env.names.created();
    let dedup = env.names.dedup(Stage::MimeDetector);
    let aborted_input = TestEnv::created("aborted-input");
    let [b, c] = [TestEnv::created("b"), TestEnv::created("c")];
    // Had the restore read it, this entry would mark b as processed.
    let entry = DedupEntry {
        artifact_id: b.artifact_id,
        generation: Generation::FIRST,
        outcome_status: OutcomeStatus::Succeeded,
        processed_at: artifact_kafka::now_ms(),
    };
    write_aborted(
        &env,
        &[
            (
                created.clone(),
                aborted_input.artifact_id.to_string(),
                env.codec
                    .encode(&created, EventSchema::ArtifactCreated, &aborted_input)
                    .await?,
            ),
            (
                dedup.clone(),
                b.artifact_id.to_string(),
                env.codec
                    .encode(&dedup, EventSchema::DedupEntry, &entry)
                    .await?,
            ),
        ],
    )
    .await?;
    env.produce_created(&[b.clone(), c.clone()]).await?;

    let _stage = StageProcess::start(
        &env,
        Path::new(BIN),
        &[("INSTANCE_ID", "read-committed".to_owned())],
    )?;
    let output = env.names.output(Stage::MimeDetector);
    wait_until("b and c processed", Duration::from_secs(90), || async {
        env.read_all(&output).is_ok_and(|v| v.len() >= 2)
    })
    .await?;
    // The group's offset is past every record, the aborted one included.
    let group = env.stage_group();
    wait_until(
        "the stage at the end of its input",
        Duration::from_secs(60),
        || async {
            unread(&env.conn, &group, std::slice::from_ref(&created), 1).is_ok_and(|u| u.is_empty())
        },
    )
    .await?;
    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let ids: BTreeSet<_> = outcomes.iter().map(|o| o.artifact_id).collect();
    assert_eq!(ids, BTreeSet::from([b.artifact_id, c.artifact_id]));
    assert_eq!(outcomes.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_projector_and_the_read_model_skip_aborted_records() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let created = env.names.created();
    let status = env.names.status();
    let folded = TestEnv::created("aborted-creation");
    let restored = TestEnv::created("aborted-snapshot");
    let snapshot = ArtifactStatus::fold([PipelineEvent::Created(restored.clone())])
        .expect("one event")
        .view();
    write_aborted(
        &env,
        &[
            (
                created.clone(),
                folded.artifact_id.to_string(),
                env.codec
                    .encode(&created, EventSchema::ArtifactCreated, &folded)
                    .await?,
            ),
            (
                status.clone(),
                restored.artifact_id.to_string(),
                env.codec
                    .encode(&status, EventSchema::ArtifactStatus, &snapshot)
                    .await?,
            ),
        ],
    )
    .await?;
    let committed = TestEnv::created("committed");
    env.produce_created(std::slice::from_ref(&committed))
        .await?;

    let blobs = std::env::temp_dir().join(format!("rc-{}", uuid::Uuid::new_v4().simple()));
    let group = format!("{}.projector", env.conn.topic_prefix);
    let api = StageProcess::start(
        &env,
        &Path::new(BIN).with_file_name("artifact-api"),
        &[
            ("BLOB_STORE_URL", format!("file://{}", blobs.display())),
            ("API_TOKENS", "t".to_owned()),
            ("PROJECTOR_GROUP", group.clone()),
        ],
    )?;
    let status_of = |id: String| {
        let url = format!("{}/v1/artifacts/{id}", api.http);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth("t")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // One partition: the committed creation comes after the aborted one,
    // and its snapshot after the aborted snapshot (and after the one the
    // projector would have written for the aborted creation), so once it
    // is known, both aborted records were read past.
    wait_until(
        "the committed artifact known",
        Duration::from_secs(90),
        || async { status_of(committed.artifact_id.to_string()).await == 200 },
    )
    .await?;
    assert_eq!(status_of(folded.artifact_id.to_string()).await, 404);
    assert_eq!(status_of(restored.artifact_id.to_string()).await, 404);
    let _ = std::fs::remove_dir_all(&blobs);
    Ok(())
}
