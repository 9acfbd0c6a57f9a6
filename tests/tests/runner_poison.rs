//! A record that kills its stage's process (an abort, an allocation past a
//! memory limit) does not stop its partition: the stage is restarted after
//! each death, as a pod would be, and after `POISON_MAX_CRASHES` deaths on
//! that record alone it fails permanently, naming the deaths, while every
//! other artifact of the same partition completes once.

use artifact_domain::{MimeDetected, Outcome, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");

/// Runs the test stage, restarting it whenever it dies, until every one of
/// `events` has an outcome; returns the outcomes and the deaths.
async fn supervise(
    env: &TestEnv,
    artifacts: usize,
    limit: Option<u64>,
    max_deaths: usize,
) -> anyhow::Result<(Vec<MimeDetected>, usize)> {
    let output = env.names.output(Stage::MimeDetector);
    let vars = [
        ("INSTANCE_ID", "poisoned".to_owned()),
        ("KAFKA_PROPERTIES", "session.timeout.ms=6000".to_owned()),
    ];
    let start = || match limit {
        Some(bytes) => StageProcess::start_limited(env, Path::new(BIN), &vars, bytes),
        None => StageProcess::start(env, Path::new(BIN), &vars),
    };
    let mut stage = start()?;
    let mut deaths = 0;
    loop {
        let mut exited = false;
        wait_until(
            "every artifact's outcome, or the stage's death",
            Duration::from_secs(120),
            || {
                exited = !stage.is_running();
                let done =
                    exited || env.read_all(&output).map(|v| v.len()).unwrap_or(0) >= artifacts;
                async move { done }
            },
        )
        .await?;
        if !exited {
            let outcomes: Vec<MimeDetected> = env.read_decoded(&output).await?;
            return Ok((outcomes, deaths));
        }
        deaths += 1;
        anyhow::ensure!(
            deaths <= max_deaths,
            "the stage died {deaths} times, more than the {max_deaths} the halving allows"
        );
        stage = start()?;
    }
}

async fn a_killing_record_fails_and_its_partition_goes_on(
    behaviour: &str,
    artifacts: usize,
    limit: Option<u64>,
    partitions: usize,
) -> anyhow::Result<()> {
    let env = TestEnv::new(partitions).await?;
    let poisoned = artifacts / 2;
    let events: Vec<_> = (0..artifacts)
        .map(|i| TestEnv::created(if i == poisoned { behaviour } else { "fine" }))
        .collect();
    // With one partition the poison shares it with every other artifact.
    // With more, the last partition holds the poison between two fine
    // records: not the in-flight topic's partition 0, and a range whose
    // halves put the poison second, so the first must not be blamed.
    if partitions == 1 {
        env.produce_created(&events).await?;
    } else {
        let last = partitions as i32 - 1;
        let schema = artifact_kafka::schemas::EventSchema::ArtifactCreated;
        for (i, e) in events.iter().enumerate() {
            let partition = if (poisoned - 1..=poisoned + 1).contains(&i) {
                last
            } else {
                i as i32 % last
            };
            env.produce_one(&env.names.created(), schema, e, Some(partition), &[])
                .await?;
        }
    }
    // POISON_MAX_CRASHES deaths on the record alone, after halving the
    // batch it was in (each halving may cost one more).
    let bound = 3 + (artifacts as f64).log2().ceil() as usize;
    let (outcomes, deaths) = supervise(&env, artifacts, limit, bound).await?;
    assert!(deaths >= 3, "only {deaths} deaths before the record failed");

    let mut per_artifact: HashMap<_, Vec<&MimeDetected>> = HashMap::new();
    for o in &outcomes {
        per_artifact.entry(o.artifact_id).or_default().push(o);
    }
    assert_eq!(per_artifact.len(), artifacts, "an outcome each");
    for (i, e) in events.iter().enumerate() {
        let got = &per_artifact[&e.artifact_id];
        assert_eq!(got.len(), 1, "artifact {i} has {} outcomes", got.len());
        match (&got[0].outcome, i == poisoned) {
            (Outcome::Succeeded, false) => {}
            (Outcome::Failed { reason, .. }, true) => {
                assert!(
                    reason.contains("process ended") && reason.contains("POISON_MAX_CRASHES=3"),
                    "{reason}"
                );
                assert!(
                    got[0].outcome == Outcome::permanent(reason.clone()),
                    "permanent"
                );
            }
            (other, _) => panic!(
                "artifact {i} ({}): {other:?}",
                e.filename.as_deref().unwrap_or("")
            ),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_aborts_the_process_fails_within_the_bound_of_deaths() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    a_killing_record_fails_and_its_partition_goes_on("abort", 24, None, 1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_past_the_memory_limit_fails_within_the_bound_of_deaths() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    a_killing_record_fails_and_its_partition_goes_on("oom", 12, Some(4 << 30), 1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killing_record_on_one_of_four_partitions_fails_within_the_bound_of_deaths()
-> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    a_killing_record_fails_and_its_partition_goes_on("abort", 24, None, 4).await
}
