//! The stage runner against the real broker and registry: keyed dedup
//! (duplicates and stale generations are skipped and counted) and poison
//! records (dead-lettered with headers naming the error; later records
//! still processed).

use artifact_domain::{Generation, MimeDetected, Outcome};
use artifact_pipeline_tests::{StageProcess, TestEnv, header, wait_until};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");

async fn outputs(env: &TestEnv) -> Vec<MimeDetected> {
    let topic = env.names.output(artifact_domain::Stage::MimeDetector);
    env.read_decoded(&topic).await.expect("outputs decode")
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_stale_generations_produce_no_second_outcome() -> anyhow::Result<()> {
    let env = TestEnv::new(3).await?;
    let stage = StageProcess::start(&env, Path::new(BIN), &[])?;

    let first = TestEnv::created("a.txt");
    // The same event three times: one outcome.
    env.produce_created(&[first.clone(), first.clone(), first.clone()])
        .await?;
    // Generation 2 after 1: a second outcome.
    let mut second = first.clone();
    second.generation = Generation::new(2)?;
    env.produce_created(&[second]).await?;
    wait_until("two outcomes", Duration::from_secs(60), || async {
        outputs(&env).await.len() >= 2
    })
    .await?;
    // Generation 1 after 2: stale, skipped and counted.
    env.produce_created(std::slice::from_ref(&first)).await?;
    wait_until("stale skip counted", Duration::from_secs(30), || async {
        stage
            .metric("artifact_stage_skipped_total", &["reason=\"stale\""])
            .await
            >= 1.0
    })
    .await?;
    assert_eq!(
        stage
            .metric("artifact_stage_skipped_total", &["reason=\"duplicate\""])
            .await,
        2.0,
        "two of the three identical events are duplicates"
    );

    let out = outputs(&env).await;
    let gens: Vec<u32> = out.iter().map(|e| e.generation.get()).collect();
    assert_eq!(
        gens,
        vec![1, 2],
        "exactly one outcome per generation, in order"
    );
    assert!(
        out.iter()
            .all(|e| e.artifact_id == first.artifact_id && e.outcome == Outcome::Succeeded)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dlq_and_the_partition_moves_on() -> anyhow::Result<()> {
    let env = TestEnv::new(1).await?;
    let stage = StageProcess::start(&env, Path::new(BIN), &[])?;
    let topic = env.names.created();

    let before = TestEnv::created("before.txt");
    let after = TestEnv::created("after.txt");
    env.produce_created(std::slice::from_ref(&before)).await?;
    let garbage: Vec<u8> = (0..64).map(|_| rand::random::<u8>() | 1).collect();
    env.produce_raw(&topic, "garbage-key", &garbage).await?;
    // Confluent framing with a schema id the registry never issued.
    env.produce_raw(&topic, "unknown-id", &[0, 0x7f, 0xff, 0xff, 0x01, 2, 4])
        .await?;
    env.produce_created(std::slice::from_ref(&after)).await?;

    wait_until(
        "both valid records processed",
        Duration::from_secs(60),
        || async { outputs(&env).await.len() >= 2 },
    )
    .await?;
    let dlq_topic = env.names.dlq(artifact_domain::Stage::MimeDetector);
    wait_until("two dead letters", Duration::from_secs(30), || async {
        env.read_all(&dlq_topic).map(|v| v.len()).unwrap_or(0) >= 2
    })
    .await?;

    let dlq = env.read_all(&dlq_topic)?;
    assert_eq!(dlq.len(), 2);
    assert_eq!(rdkafka::Message::payload(&dlq[0]), Some(garbage.as_slice()));
    for m in &dlq {
        assert_eq!(header(m, "x-error-kind").as_deref(), Some("undecodable"));
        assert_eq!(header(m, "x-source-topic").as_deref(), Some(topic.as_str()));
        assert_eq!(header(m, "x-source-partition").as_deref(), Some("0"));
        assert_eq!(header(m, "x-stage").as_deref(), Some("mime-detector"));
        assert!(header(m, "x-source-offset").is_some_and(|o| o.parse::<i64>().is_ok()));
        assert!(header(m, "x-error").is_some_and(|e| !e.is_empty()));
    }
    let ids: Vec<_> = outputs(&env).await.iter().map(|e| e.artifact_id).collect();
    assert_eq!(ids, vec![before.artifact_id, after.artifact_id]);
    assert_eq!(
        stage.metric("artifact_stage_dlq_records_total", &[]).await,
        2.0
    );
    Ok(())
}
