//! Rebalance: two instances of one stage share the partitions; one is
//! stopped mid-stream. Nothing is lost or duplicated, and the survivor
//! restored the dedup state of the partitions it took over: re-sent events
//! that the stopped instance had processed are skipped as duplicates.
//! A batch whose records take longer than the consumer may go unpolled
//! (`max.poll.interval.ms`) is cut short and commits, instead of losing
//! its partitions and starting over.

use artifact_domain::{MimeDetected, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");
const ARTIFACTS: usize = 3_000;

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_instance_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(6).await?;
    let output = env.names.output(Stage::MimeDetector);
    let vars = |id: &str| {
        vec![
            ("INSTANCE_ID", id.to_owned()),
            ("TEST_STAGE_DELAY_MS", "3".to_owned()),
            ("STAGE_CONCURRENCY", "2".to_owned()),
            ("TRANSACTION_MAX_RECORDS", "50".to_owned()),
        ]
    };
    let survivor = StageProcess::start(&env, Path::new(BIN), &vars("survivor"))?;
    let mut leaver = StageProcess::start(&env, Path::new(BIN), &vars("leaver"))?;
    // Both must own partitions before the stream starts.
    wait_until("both instances ready", Duration::from_secs(60), || async {
        survivor.is_ready().await && leaver.is_ready().await
    })
    .await?;
    let restores_before = survivor
        .metric("artifact_stage_restore_seconds_count", &[])
        .await;

    let events: Vec<_> = (0..ARTIFACTS)
        .map(|i| TestEnv::created(&format!("doc-{i}")))
        .collect();
    env.produce_created(&events).await?;
    wait_until("a third processed", Duration::from_secs(120), || async {
        env.read_all(&output).map(|v| v.len()).unwrap_or(0) >= ARTIFACTS / 3
    })
    .await?;
    let processed_by_leaver = leaver.metric("artifact_stage_outcomes_total", &[]).await;
    assert!(
        processed_by_leaver > 0.0,
        "the second instance never got partitions"
    );
    assert!(
        leaver.terminate(Duration::from_secs(30)),
        "graceful shutdown within its deadline"
    );

    wait_until("all processed", Duration::from_secs(240), || async {
        env.read_all(&output).map(|v| v.len()).unwrap_or(0) >= ARTIFACTS
    })
    .await?;
    let restores_after = survivor
        .metric("artifact_stage_restore_seconds_count", &[])
        .await;
    assert!(
        restores_after > restores_before,
        "the survivor restored the dedup state of the partitions it took over"
    );

    // Re-send everything: the survivor now owns all partitions and must
    // skip every event as a duplicate, including those the leaver processed.
    let dup_before = survivor
        .metric("artifact_stage_skipped_total", &["reason=\"duplicate\""])
        .await;
    env.produce_created(&events).await?;
    wait_until(
        "all re-sent events skipped",
        Duration::from_secs(120),
        || async {
            survivor
                .metric("artifact_stage_skipped_total", &["reason=\"duplicate\""])
                .await
                >= dup_before + ARTIFACTS as f64
        },
    )
    .await?;

    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let unique: HashSet<_> = outcomes.iter().map(|o| o.artifact_id).collect();
    assert_eq!(unique.len(), ARTIFACTS, "none missing");
    assert_eq!(outcomes.len(), ARTIFACTS, "none twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_slower_than_the_poll_interval_is_cut_short_and_commits() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    const SLOW: usize = 150;
    let env = TestEnv::new(1).await?;
    let output = env.names.output(Stage::MimeDetector);
    // All in the partition before the stage starts: its first batch takes
    // them all, 15 s of work against a 10 s poll interval.
    let events: Vec<_> = (0..SLOW)
        .map(|i| TestEnv::created(&format!("slow-{i}")))
        .collect();
    env.produce_created(&events).await?;
    let stage = StageProcess::start(
        &env,
        Path::new(BIN),
        &[
            ("INSTANCE_ID", "slow".to_owned()),
            ("TEST_STAGE_DELAY_MS", "100".to_owned()),
            ("STAGE_CONCURRENCY", "1".to_owned()),
            ("PROCESSING_TIMEOUT_MS", "1000".to_owned()),
            ("RETRY_INLINE_ATTEMPTS", "1".to_owned()),
            (
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000,max.poll.interval.ms=10000".to_owned(),
            ),
        ],
    )?;
    wait_until("all processed", Duration::from_secs(90), || async {
        env.read_all(&output).map(|v| v.len()).unwrap_or(0) >= SLOW
    })
    .await?;
    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let unique: HashSet<_> = outcomes.iter().map(|o| o.artifact_id).collect();
    assert_eq!(unique.len(), SLOW, "none missing");
    assert_eq!(outcomes.len(), SLOW, "none twice");
    assert!(
        stage
            .metric("artifact_stage_transaction_commit_seconds_count", &[])
            .await
            >= 2.0,
        "the first batch was cut into several transactions"
    );
    Ok(())
}
