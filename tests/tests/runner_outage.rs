//! Outage: the Schema Registry is stopped mid-stream and a stage starts
//! cold (nothing cached) while it is down. The stage reports not-ready, waits
//! and retries; once the registry is back every artifact has exactly one
//! outcome. Runs alone in its binary: it stops the shared registry.

use artifact_domain::{MimeDetected, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, stack, wait_until};
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");
const ARTIFACTS: usize = 500;

#[tokio::test(flavor = "multi_thread")]
async fn registry_outage_loses_nothing() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(3).await?;
    let output = env.names.output(Stage::MimeDetector);
    let vars = [
        ("INSTANCE_ID", "outage".to_owned()),
        ("TEST_STAGE_DELAY_MS", "5".to_owned()),
        ("STAGE_CONCURRENCY", "1".to_owned()),
    ];
    let events: Vec<_> = (0..ARTIFACTS)
        .map(|i| TestEnv::created(&format!("doc-{i}")))
        .collect();
    env.produce_created(&events).await?;
    let mut stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    wait_until("some processed", Duration::from_secs(60), || async {
        env.read_all(&output)
            .map(|v| !v.is_empty())
            .unwrap_or(false)
    })
    .await?;

    stack("stop-registry");
    // A cold instance: its codec has no schema cached.
    stage.kill9();
    let stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    let result = async {
        // Once it owns partitions it cannot restore or decode: not ready,
        // and the reason names the registry.
        wait_until(
            "not ready because of the registry",
            Duration::from_secs(60),
            || async {
                match reqwest::get(format!("{}/readyz", stage.http)).await {
                    Ok(r) => {
                        r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                            && r.text().await.is_ok_and(|t| t.contains("registry"))
                    }
                    Err(_) => false,
                }
            },
        )
        .await?;
        let during = env.read_all(&output)?.len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        anyhow::ensure!(
            env.read_all(&output)?.len() == during,
            "nothing is processed without the registry"
        );
        anyhow::Ok(())
    }
    .await;
    stack("start-registry");
    result?;

    wait_until(
        "all processed after the outage",
        Duration::from_secs(180),
        || async { env.read_all(&output).map(|v| v.len()).unwrap_or(0) >= ARTIFACTS },
    )
    .await?;
    wait_until("ready again", Duration::from_secs(30), || stage.is_ready()).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let unique: HashSet<_> = outcomes.iter().map(|o| o.artifact_id).collect();
    assert_eq!(unique.len(), ARTIFACTS, "none missing");
    assert_eq!(outcomes.len(), ARTIFACTS, "none twice");
    Ok(())
}
