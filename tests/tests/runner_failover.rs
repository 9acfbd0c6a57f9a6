//! Commit after revocation: instance A is held between sending its offsets
//! and committing (a test hook of debug builds), loses its partitions to
//! instance B meanwhile, and commits only once B has them. B's restore of
//! the dedup state waits for A's open transaction, so when the events of
//! A's batch arrive again B skips them: a `read_committed` reader sees
//! exactly one outcome per (artifact, generation).

use artifact_domain::{MimeDetected, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");
const ARTIFACTS: usize = 20;

/// `/readyz`'s status and reason.
async fn readiness(stage: &StageProcess) -> (bool, String) {
    match reqwest::get(format!("{}/readyz", stage.http)).await {
        Ok(r) => (r.status().is_success(), r.text().await.unwrap_or_default()),
        Err(e) => (false, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_after_its_partitions_moved_duplicates_nothing() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(2).await?;
    let output = env.names.output(Stage::MimeDetector);
    let hold = std::env::temp_dir().join(format!("hold-{}", uuid::Uuid::new_v4().simple()));
    let held = hold.with_extension("held");
    std::fs::write(&hold, b"")?;

    let a = StageProcess::start(
        &env,
        Path::new(BIN),
        &[
            ("INSTANCE_ID", "a".to_owned()),
            ("RUNNER_TEST_HOLD_COMMIT", hold.display().to_string()),
            // Stuck in its revocation (which waits for the held commit),
            // A leaves the group after this long and B takes over.
            (
                "KAFKA_PROPERTIES",
                "session.timeout.ms=6000,max.poll.interval.ms=10000".to_owned(),
            ),
        ],
    )?;
    wait_until("A ready", Duration::from_secs(60), || async {
        a.is_ready().await
    })
    .await?;
    let events: Vec<_> = (0..ARTIFACTS)
        .map(|i| TestEnv::created(&format!("doc-{i}")))
        .collect();
    env.produce_created(&events).await?;
    wait_until("A's commit held", Duration::from_secs(60), || async {
        held.exists()
    })
    .await?;

    let b = StageProcess::start(&env, Path::new(BIN), &[("INSTANCE_ID", "b".to_owned())])?;
    // B has the partitions once it restores them: done already if it read
    // only to the last stable offset, waiting if it reads to the end.
    wait_until(
        "B restoring behind A's open transaction, or ready",
        Duration::from_secs(90),
        || async {
            let (ready, reason) = readiness(&b).await;
            ready || reason.contains("waiting for an open transaction")
        },
    )
    .await?;
    std::fs::remove_file(&hold)?;

    let all_once = || async {
        let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await.unwrap_or_default();
        outcomes.len() >= ARTIFACTS
    };
    wait_until(
        "every artifact processed",
        Duration::from_secs(120),
        all_once,
    )
    .await?;
    wait_until("B ready", Duration::from_secs(60), || async {
        b.is_ready().await
    })
    .await?;

    // The same events again: whichever instance has a partition now must
    // skip them all.
    env.produce_created(&events).await?;
    let input = env.names.created();
    wait_until(
        "the re-sent events committed",
        Duration::from_secs(120),
        || async { env.group_caught_up(&input).unwrap_or(false) },
    )
    .await?;

    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let mut per_key: HashMap<_, usize> = HashMap::new();
    for o in &outcomes {
        *per_key.entry((o.artifact_id, o.generation)).or_default() += 1;
    }
    assert_eq!(per_key.len(), ARTIFACTS, "none missing");
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "outcomes written twice: {twice:?}");
    drop(a);
    let _ = std::fs::remove_file(&held);
    Ok(())
}
