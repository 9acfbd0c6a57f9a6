//! Exactly once under crashes: 10 000 artifacts (plus re-sent duplicates)
//! through a stage process that is `kill -9`ed at random moments and
//! restarted; a `read_committed` reader of its output sees exactly one
//! committed outcome per (artifact_id, generation): none missing, none twice.

use artifact_domain::{MimeDetected, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");
const ARTIFACTS: usize = 10_000;
const KILLS: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn every_artifact_has_exactly_one_outcome_despite_kill_9() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(3).await?;
    let events: Vec<_> = (0..ARTIFACTS)
        .map(|i| TestEnv::created(&format!("doc-{i}")))
        .collect();
    env.produce_created(&events).await?;
    // Re-sent events, as an at-least-once upstream producer would.
    env.produce_created(&events[..500]).await?;

    let vars = [
        ("INSTANCE_ID", "crash-test".to_owned()),
        ("TEST_STAGE_DELAY_MS", "2".to_owned()),
        ("STAGE_CONCURRENCY", "4".to_owned()),
        ("TRANSACTION_MAX_RECORDS", "100".to_owned()),
    ];
    let output = env.names.output(Stage::MimeDetector);
    let mut stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "not done within 600 s: {seen} outcomes"
        );
        if kills < KILLS {
            // Let it make some progress, then kill it somewhere mid-batch.
            let wait = rand::rng().random_range(1500..4000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            stage.kill9();
            kills += 1;
            seen = env.read_all(&output)?.len();
            assert!(
                seen < ARTIFACTS,
                "the stage finished before kill {kills}; slow it down"
            );
            stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        seen = env.read_all(&output)?.len();
        if seen >= ARTIFACTS {
            // Give a straggler the chance to show up as a duplicate.
            tokio::time::sleep(Duration::from_secs(3)).await;
            break;
        }
        assert!(stage.is_running(), "the stage process died on its own");
    }

    let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
    let mut per_key: HashMap<(String, u32), usize> = HashMap::new();
    for o in &outcomes {
        *per_key
            .entry((o.artifact_id.to_string(), o.generation.get()))
            .or_default() += 1;
    }
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} outcomes committed more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let missing = events
        .iter()
        .filter(|e| !per_key.contains_key(&(e.artifact_id.to_string(), 1)))
        .count();
    assert_eq!(missing, 0, "{missing} artifacts have no outcome");
    assert_eq!(outcomes.len(), ARTIFACTS);
    assert_eq!(kills, KILLS);
    Ok(())
}
