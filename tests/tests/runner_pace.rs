//! The latency budget: with `TRANSACTION_LINGER_MAX_MS` and
//! `TRANSACTION_TARGET_RECORDS`, a stage fed a steady trickle commits one
//! transaction per window, grown until it holds the target number of
//! records, instead of one per record; every record still has exactly one
//! outcome.

use artifact_domain::{MimeDetected, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");
const RECORDS: usize = 150;

#[tokio::test(flavor = "multi_thread")]
async fn a_trickle_commits_in_windows_grown_to_the_target() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let vars = [
        ("INSTANCE_ID", "paced".to_owned()),
        ("TRANSACTION_MAX_MS", "1000".to_owned()),
        ("TRANSACTION_LINGER_MAX_MS", "400".to_owned()),
        ("TRANSACTION_TARGET_RECORDS", "20".to_owned()),
    ];
    let stage = StageProcess::start(&env, Path::new(BIN), &vars)?;

    // 25 records a second: a window of 20 records would be 800 ms, so it
    // stops at the 400 ms bound, about 10 records each. Without the budget
    // each record is a transaction of its own.
    let events: Vec<_> = (0..RECORDS)
        .map(|i| TestEnv::created(&format!("trickle-{i}")))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    for e in &events {
        tick.tick().await;
        env.produce_created(std::slice::from_ref(e)).await?;
    }
    let output = env.names.output(Stage::MimeDetector);
    wait_until("an outcome each", Duration::from_secs(60), || async {
        env.read_all(&output).is_ok_and(|v| v.len() >= RECORDS)
    })
    .await?;

    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let mut per_artifact: HashMap<_, usize> = HashMap::new();
    for o in &outcomes {
        *per_artifact.entry(o.artifact_id).or_default() += 1;
    }
    let sent: HashSet<_> = events.iter().map(|e| e.artifact_id).collect();
    assert_eq!(per_artifact.keys().copied().collect::<HashSet<_>>(), sent);
    assert!(per_artifact.values().all(|&n| n == 1), "{per_artifact:?}");

    let transactions = stage
        .metric("artifact_stage_transaction_commit_seconds_count", &[])
        .await;
    assert!(
        transactions > 0.0 && transactions <= (RECORDS / 3) as f64,
        "{transactions} transactions for {RECORDS} records"
    );
    Ok(())
}
