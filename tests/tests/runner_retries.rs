//! Retries against the real broker: a failure that heals is retried until it
//! succeeds (in process, or through the retry topic), one that never heals
//! becomes `failed(permanent)` after the configured deliveries while other
//! artifacts of the same partition complete meanwhile, and a pending retry
//! survives a kill -9 of the stage and its partition moving to another
//! instance and back. Processed retry records are deleted from
//! the retry topic, pending ones stay. A batch whose stage cannot make its
//! writes durable before the commit is not committed, and is read again
//! until it can. A record too large to write (an outcome, or the copy of
//! an input in a dead letter) does not hold up its partition: the outcome
//! becomes a permanent failure that says why, the letter keeps the
//! headers without the bytes.

use artifact_domain::{MimeDetected, Outcome, Stage};
use artifact_pipeline_tests::{StageProcess, TestEnv, header, wait_until};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");

async fn outputs(env: &TestEnv) -> Vec<MimeDetected> {
    env.read_decoded(&env.names.output(Stage::MimeDetector))
        .await
        .expect("outputs decode")
}

/// Waits up to `secs` s for `n` outcomes, then checks there are no more:
/// one each.
async fn one_outcome_each(env: &TestEnv, n: usize, secs: u64) -> anyhow::Result<Vec<MimeDetected>> {
    wait_until(
        "an outcome for every artifact",
        Duration::from_secs(secs),
        || async { outputs(env).await.len() >= n },
    )
    .await?;
    let out = outputs(env).await;
    assert_eq!(out.len(), n, "one outcome each: {out:?}");
    Ok(out)
}

/// Waits until the `deleted` processed records of the retry topic (one
/// partition) are gone: nothing is left to read, and the topic starts past
/// them. (Each record is followed by its transaction's commit marker, which
/// is not a record.)
async fn retries_deleted(env: &TestEnv, deleted: i64) -> anyhow::Result<()> {
    let topic = env.names.retry(Stage::MimeDetector);
    wait_until(
        "the processed retry records deleted",
        Duration::from_secs(60),
        || async {
            env.read_all(&topic).is_ok_and(|v| v.is_empty())
                && env
                    .watermarks(&topic, 0)
                    .is_ok_and(|(low, _)| low >= deleted)
        },
    )
    .await
}

fn by_name<'a>(out: &'a [MimeDetected], name: &str) -> Vec<&'a MimeDetected> {
    out.iter()
        .filter(|e| e.context.filename.as_deref() == Some(name))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_topic_heals_gives_up_and_never_blocks_the_partition() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    // One partition: every artifact shares it.
    let env = TestEnv::new(1).await?;
    let stage = StageProcess::start(
        &env,
        Path::new(BIN),
        &[
            ("RETRY_INLINE_ATTEMPTS", "1".into()),
            ("RETRY_DELAY_MS", "300".into()),
            ("RETRY_MAX_DELIVERIES", "4".into()),
        ],
    )?;
    let heals = TestEnv::created("fail-until-3");
    let never = TestEnv::created("fail-always");
    let permanent = TestEnv::created("permanent");
    let panics = TestEnv::created("panic");
    let others: Vec<_> = (0..5)
        .map(|i| TestEnv::created(&format!("ok-{i}")))
        .collect();
    env.produce_created(&[heals.clone(), never.clone(), permanent, panics])
        .await?;
    env.produce_created(&others).await?;

    let out = one_outcome_each(&env, 9, 90).await?;

    let h = by_name(&out, "fail-until-3");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].outcome, Outcome::Succeeded);
    assert_eq!(h[0].result.as_ref().unwrap().method, "test:attempt-3");

    let n = by_name(&out, "fail-always");
    assert_eq!(n.len(), 1);
    assert!(n[0].outcome.is_permanent_failure());
    assert!(
        n[0].outcome
            .reason()
            .unwrap()
            .contains("gave up after 4 deliveries"),
        "{:?}",
        n[0].outcome
    );

    let p = by_name(&out, "permanent");
    assert_eq!(p[0].outcome, Outcome::permanent("bad input"));
    let x = by_name(&out, "panic");
    assert!(
        x[0].outcome.reason().unwrap().contains("stage panicked"),
        "{:?}",
        x[0].outcome
    );

    // The healthy artifacts, produced after the failing ones, completed
    // before the never-healing one gave up: the partition did not wait.
    let pos = |name: &str| {
        out.iter()
            .position(|e| e.context.filename.as_deref() == Some(name))
            .unwrap()
    };
    for i in 0..5 {
        assert!(pos(&format!("ok-{i}")) < pos("fail-always"));
        assert!(pos(&format!("ok-{i}")) < pos("fail-until-3"));
    }

    // The retry topic took deliveries 2..=4 of the never-healing one and
    // 2..=3 of the healing one; each was processed, so the stage deletes
    // them from the topic (which keeps its records for good otherwise).
    assert_eq!(
        stage
            .metric("artifact_stage_retries_total", &["kind=\"topic\""])
            .await,
        5.0
    );
    retries_deleted(&env, 5).await
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_retries_heal_without_the_retry_topic() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let _stage = StageProcess::start(
        &env,
        Path::new(BIN),
        &[("RETRY_INLINE_ATTEMPTS", "3".into())],
    )?;
    env.produce_created(&[TestEnv::created("fail-until-3")])
        .await?;
    wait_until("the outcome", Duration::from_secs(60), || async {
        !outputs(&env).await.is_empty()
    })
    .await?;
    let out = outputs(&env).await;
    assert_eq!(out[0].outcome, Outcome::Succeeded);
    assert_eq!(out[0].result.as_ref().unwrap().method, "test:attempt-3");
    assert!(
        env.read_all(&env.names.retry(Stage::MimeDetector))?
            .is_empty()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_retry_survives_a_kill_9() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let vars = [
        ("RETRY_INLINE_ATTEMPTS", "1".to_owned()),
        ("RETRY_DELAY_MS", "4000".to_owned()),
        ("INSTANCE_ID", "retry-restart".to_owned()),
    ];
    let mut stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    env.produce_created(&[TestEnv::created("fail-until-2")])
        .await?;
    let retry_topic = env.names.retry(Stage::MimeDetector);
    wait_until("the retry record", Duration::from_secs(60), || async {
        env.read_all(&retry_topic).is_ok_and(|v| !v.is_empty())
    })
    .await?;
    assert!(outputs(&env).await.is_empty(), "not yet due");
    // Pending, it stays on the topic, with its delivery, due time and error.
    let pending = env.read_all(&retry_topic)?;
    assert_eq!(pending.len(), 1);
    assert_eq!(header(&pending[0], "x-attempt").as_deref(), Some("2"));
    assert!(header(&pending[0], "x-not-before").is_some());
    assert!(header(&pending[0], "x-error").is_some());
    stage.kill9();
    let _stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    wait_until("the healed outcome", Duration::from_secs(60), || async {
        !outputs(&env).await.is_empty()
    })
    .await?;
    let out = outputs(&env).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::Succeeded);
    assert_eq!(out[0].result.as_ref().unwrap().method, "test:attempt-2");
    // Processed by the restarted stage, it is deleted from the topic.
    retries_deleted(&env, 1).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_commits_only_after_its_writes_are_durable() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let hold = std::env::temp_dir().join(format!("hold-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&hold, b"")?;
    let stage = StageProcess::start(
        &env,
        Path::new(BIN),
        &[("TEST_STAGE_HOLD_COMMITS_WHILE", hold.display().to_string())],
    )?;
    let names: Vec<String> = (0..5).map(|i| format!("ok-{i}")).collect();
    let events: Vec<_> = names.iter().map(|n| TestEnv::created(n)).collect();
    env.produce_created(&events).await?;
    wait_until("two failed batches", Duration::from_secs(60), || async {
        stage
            .metric("artifact_stage_batch_failures_total", &[])
            .await
            >= 2.0
    })
    .await?;
    assert!(
        outputs(&env).await.is_empty(),
        "nothing is committed while the writes cannot be made durable"
    );
    assert!(
        !stage.is_ready().await,
        "a failing batch makes the stage unready"
    );
    std::fs::remove_file(&hold)?;
    let out = one_outcome_each(&env, names.len(), 60).await?;
    for n in &names {
        assert_eq!(by_name(&out, n).len(), 1, "{n}");
        assert_eq!(by_name(&out, n)[0].outcome, Outcome::Succeeded);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn held_retries_are_processed_after_their_partition_comes_back() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(2).await?;
    let vars = |id: &str| {
        vec![
            ("INSTANCE_ID", id.to_owned()),
            ("RETRY_INLINE_ATTEMPTS", "1".to_owned()),
            // Long enough that the retries are still held by the first
            // instance when the second one joins, and not yet due while
            // the second one owns their partition.
            ("RETRY_DELAY_MS", "12000".to_owned()),
        ]
    };
    let stays = StageProcess::start(&env, Path::new(BIN), &vars("stays"))?;
    wait_until("the first instance ready", Duration::from_secs(60), || {
        stays.is_ready()
    })
    .await?;
    let events: Vec<_> = (0..8).map(|_| TestEnv::created("fail-until-2")).collect();
    env.produce_created(&events).await?;
    let retry_topic = env.names.retry(Stage::MimeDetector);
    wait_until(
        "every artifact's first failure on the retry topic",
        Duration::from_secs(60),
        || async {
            env.read_all(&retry_topic)
                .is_ok_and(|v| v.len() >= events.len())
        },
    )
    .await?;
    let partitions: std::collections::HashSet<i32> = env
        .read_all(&retry_topic)?
        .iter()
        .map(rdkafka::Message::partition)
        .collect();
    assert_eq!(partitions.len(), 2, "retries held on both partitions");

    // A second instance takes one partition (with the retries the first
    // one held there) and leaves before they are due; the partition goes
    // back to the first instance.
    let mut visits = StageProcess::start(&env, Path::new(BIN), &vars("visits"))?;
    wait_until(
        "the second instance owns a partition",
        Duration::from_secs(60),
        || visits.is_ready(),
    )
    .await?;
    assert!(
        visits.terminate(Duration::from_secs(30)),
        "graceful shutdown within its deadline"
    );

    let out = one_outcome_each(&env, events.len(), 90).await?;
    for o in &out {
        assert_eq!(o.outcome, Outcome::Succeeded, "{o:?}");
        assert_eq!(o.result.as_ref().unwrap().method, "test:attempt-2");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn records_too_large_to_write_do_not_hold_up_the_partition() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let _stage = StageProcess::start(&env, Path::new(BIN), &[])?;
    let oversized = TestEnv::created("oversized");
    env.produce_created(std::slice::from_ref(&oversized))
        .await?;
    // Not Avro, and so large that its dead letter, with the error headers,
    // would be over the producer's 1 000 000 bytes.
    let garbage = vec![0xffu8; 999_900];
    env.produce_raw(&env.names.created(), "garbage", &garbage)
        .await?;
    let after: Vec<_> = (0..3)
        .map(|i| TestEnv::created(&format!("after-{i}")))
        .collect();
    env.produce_created(&after).await?;

    let out = one_outcome_each(&env, 4, 60).await?;
    let o = by_name(&out, "oversized");
    assert!(o[0].outcome.is_permanent_failure(), "{:?}", o[0].outcome);
    let reason = o[0].outcome.reason().unwrap();
    assert!(reason.contains("message.max.bytes"), "{reason}");
    for i in 0..3 {
        assert_eq!(
            by_name(&out, &format!("after-{i}"))[0].outcome,
            Outcome::Succeeded
        );
    }

    let dlq = env.names.dlq(Stage::MimeDetector);
    wait_until("the dead letter", Duration::from_secs(30), || async {
        env.read_all(&dlq).is_ok_and(|v| !v.is_empty())
    })
    .await?;
    let letters = env.read_all(&dlq)?;
    assert_eq!(letters.len(), 1);
    assert!(rdkafka::Message::payload(&letters[0]).is_none());
    assert_eq!(
        header(&letters[0], "x-payload-omitted").as_deref(),
        Some("999900")
    );
    assert_eq!(
        header(&letters[0], "x-source-topic").as_deref(),
        Some(env.names.created().as_str())
    );
    Ok(())
}
