//! Outage: the Kafka broker is stopped mid-stream (data kept) and started
//! again. The stage reports not-ready while it cannot reach the broker,
//! keeps running, and once the broker is back every artifact has exactly
//! one outcome. Runs alone in its binary: it stops the shared broker.

use artifact_domain::{MimeDetected, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, stack, wait_until};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");
const ARTIFACTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(3).await?;
    let output = env.names.output(Stage::MimeDetector);
    let events: Vec<_> = (0..ARTIFACTS)
        .map(|i| TestEnv::created(&format!("doc-{i}")))
        .collect();
    env.produce_created(&events).await?;
    let mut stage = StageProcess::start(
        &env,
        Path::new(BIN),
        &[
            ("INSTANCE_ID", "kafka-outage".to_owned()),
            ("TEST_STAGE_DELAY_MS", "10".to_owned()),
            ("STAGE_CONCURRENCY", "1".to_owned()),
        ],
    )?;
    wait_until("some processed", Duration::from_secs(60), || async {
        env.read_all(&output)
            .map(|v| !v.is_empty())
            .unwrap_or(false)
    })
    .await?;

    stack("stop-kafka");
    let during = async {
        wait_until(
            "not ready without the broker",
            Duration::from_secs(90),
            || async {
                reqwest::get(format!("{}/readyz", stage.http))
                    .await
                    .is_ok_and(|r| r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE)
            },
        )
        .await?;
        anyhow::ensure!(stage.is_running(), "the stage must wait, not exit");
        anyhow::Ok(())
    }
    .await;
    stack("start-kafka");
    during?;

    wait_until(
        "all processed after the outage",
        Duration::from_secs(240),
        || async { env.read_all(&output).map(|v| v.len()).unwrap_or(0) >= ARTIFACTS },
    )
    .await?;
    wait_until("ready again", Duration::from_secs(60), || stage.is_ready()).await?;
    assert!(stage.is_running());
    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let unique: HashSet<_> = outcomes.iter().map(|o| o.artifact_id).collect();
    assert_eq!(unique.len(), ARTIFACTS, "none missing");
    assert_eq!(outcomes.len(), ARTIFACTS, "none twice");
    Ok(())
}
