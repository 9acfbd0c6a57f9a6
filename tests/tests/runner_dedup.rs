//! The stage runner against the real broker and registry: keyed dedup
//! (duplicates and stale generations are skipped and counted) and poison
//! records (dead-lettered with headers naming the error; later records
//! still processed, dead letters replayed to their partition); outcomes on
//! their input's partition number.

use artifact_domain::{Generation, MimeDetected, Outcome};
use artifact_kafka::now_ms;
use artifact_kafka::schemas::EventSchema;
use artifact_pipeline_tests::{StageProcess, TestEnv, header, wait_until};
use rdkafka::Message;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_test-stage");

async fn outputs(env: &TestEnv) -> Vec<MimeDetected> {
    let topic = env.names.output(artifact_domain::Stage::MimeDetector);
    env.read_decoded(&topic).await.expect("outputs decode")
}

/// Waits for one mime-detector outcome per artifact of `expected` (artifact
/// id -> partition its input was written to) and checks that each is on
/// that partition number.
async fn outcomes_on_their_partitions(
    env: &TestEnv,
    expected: &HashMap<String, i32>,
) -> anyhow::Result<()> {
    let topic = env.names.output(artifact_domain::Stage::MimeDetector);
    wait_until(
        "an outcome per artifact",
        Duration::from_secs(60),
        || async { env.read_all(&topic).map(|v| v.len()).unwrap_or(0) >= expected.len() },
    )
    .await?;
    let outs = env.read_all(&topic)?;
    assert_eq!(outs.len(), expected.len());
    for m in &outs {
        let key = std::str::from_utf8(m.key().expect("keyed"))?;
        assert_eq!(
            Some(&m.partition()),
            expected.get(key),
            "the outcome of {key} left its input's partition number"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_and_stale_generations_produce_no_second_outcome() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
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
async fn outcomes_keep_the_partition_number_of_their_input() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    // An external producer may partition by another rule than the key's
    // murmur2 hash: here artifact i goes to partition i % 3 whatever its id.
    // Under murmur2 all twelve would land where written with odds of 3^-12.
    let env = TestEnv::new(3).await?;
    let _stage = StageProcess::start(&env, Path::new(BIN), &[])?;
    let topic = env.names.created();
    let mut written = HashMap::new();
    for i in 0..12i32 {
        let e = TestEnv::created("a.txt");
        let partition = i % 3;
        env.produce_one(
            &topic,
            EventSchema::ArtifactCreated,
            &e,
            Some(partition),
            &[],
        )
        .await?;
        written.insert(e.artifact_id.to_string(), partition);
    }
    outcomes_on_their_partitions(&env, &written).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dlq_and_the_partition_moves_on() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
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

#[tokio::test(flavor = "multi_thread")]
async fn replayed_dead_letters_return_to_their_partition_and_are_processed_once()
-> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    // Dead letters whose cause was fixed (as if the schema their writer used
    // was registered since): valid events in the dead-letter topic with the
    // headers the runner writes, each naming its source partition.
    let env = TestEnv::new(3).await?;
    let stage = StageProcess::start(&env, Path::new(BIN), &[])?;
    let created_topic = env.names.created();
    let dlq_topic = env.names.dlq(artifact_domain::Stage::MimeDetector);
    let mut source = HashMap::new();
    for i in 0..6i32 {
        let e = TestEnv::created("a.txt");
        let partition = i % 3;
        let p = partition.to_string();
        let headers = [
            ("x-error-kind", "undecodable"),
            ("x-error", "schema id not registered"),
            ("x-stage", "mime-detector"),
            ("x-source-topic", created_topic.as_str()),
            ("x-source-partition", p.as_str()),
            ("x-source-offset", "0"),
        ];
        env.produce_one(
            &dlq_topic,
            EventSchema::ArtifactCreated,
            &e,
            Some(partition),
            &headers,
        )
        .await?;
        source.insert(e.artifact_id.to_string(), partition);
    }
    let artifactctl = |args: &[&str]| {
        let bin = Path::new(BIN).with_file_name("artifactctl");
        let out = std::process::Command::new(bin)
            .env("TOPIC_PREFIX", &env.conn.topic_prefix)
            .arg("dlq")
            .args(args)
            .output()
            .expect("artifactctl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = artifactctl(&["list", "mime-detector"]);
    assert!(
        list.contains("6 dead letters in") && list.contains("(6 not replayed)"),
        "{list}"
    );
    let replayed = artifactctl(&["replay", "mime-detector"]);
    assert!(replayed.contains("replayed 6 dead letters"), "{replayed}");

    outcomes_on_their_partitions(&env, &source).await?;
    // A second replay finds nothing new; the list says what was replayed.
    let replayed = artifactctl(&["replay", "mime-detector"]);
    assert!(replayed.contains("replayed 0 dead letters"), "{replayed}");
    let list = artifactctl(&["list", "mime-detector"]);
    assert!(list.contains("(0 not replayed)"), "{list}");
    assert_eq!(list.matches(" replayed key=").count(), 6, "{list}");
    // Replaying every letter again (--all): the dedup state of their
    // partitions knows them, so no second outcome.
    let replayed = artifactctl(&["replay", "mime-detector", "--all"]);
    assert!(replayed.contains("replayed 6 dead letters"), "{replayed}");
    wait_until(
        "six duplicates skipped",
        Duration::from_secs(60),
        || async {
            stage
                .metric("artifact_stage_skipped_total", &["reason=\"duplicate\""])
                .await
                >= 6.0
        },
    )
    .await?;
    let out_topic = env.names.output(artifact_domain::Stage::MimeDetector);
    assert_eq!(env.read_all(&out_topic)?.len(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_context_lag_and_readiness_are_visible() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(2).await?;
    let stage = StageProcess::start(&env, Path::new(BIN), &[])?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    env.produce_created_traced(&TestEnv::created("traced.txt"), &incoming)
        .await?;
    let output = env.names.output(artifact_domain::Stage::MimeDetector);
    wait_until("the outcome", Duration::from_secs(60), || async {
        env.read_all(&output).is_ok_and(|v| !v.is_empty())
    })
    .await?;
    let out = env.read_all(&output)?;
    // Traces are not exported here (no OTEL_EXPORTER_OTLP_ENDPOINT): the
    // context is passed on as it came (tests/tests/traces.rs exports).
    let tp = header(&out[0], "traceparent").expect("outcome carries a traceparent");
    assert_eq!(tp, incoming, "passed on unchanged");

    wait_until("ready", Duration::from_secs(30), || stage.is_ready()).await?;
    // Lag per partition, named and labelled as kafka_exporter users expect.
    let group = format!("consumer_group=\"{}.group\"", env.conn.topic_prefix);
    let topic = format!("topic=\"{}\"", env.names.created());
    wait_until("consumer lag exported", Duration::from_secs(30), || async {
        let text = stage.metrics().await.unwrap_or_default();
        text.lines().any(|l| {
            l.starts_with("artifact_pipeline_consumer_lag{")
                && l.contains(&group)
                && l.contains(&topic)
                && l.contains("partition=\"")
        })
    })
    .await?;
    for name in [
        "artifact_stage_records_consumed_total",
        "artifact_stage_records_produced_total",
        "artifact_stage_outcomes_total",
        "artifact_stage_processing_seconds_bucket",
        "artifact_stage_transaction_commit_seconds_bucket",
        "artifact_stage_before_commit_seconds_bucket",
        "artifact_stage_restore_seconds_bucket",
    ] {
        assert!(
            stage.metric(name, &[]).await > 0.0,
            "{name} missing from /metrics"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_when_topics_are_not_co_partitioned() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let conn = artifact_kafka::config::ConnectionConfig::local(&prefix);
    let names = artifact_kafka::topics::TopicNames::from_config(&conn);
    let (dedup, rest): (Vec<_>, Vec<_>) = names
        .catalogue()
        .into_iter()
        .partition(|t| t.name == names.dedup(artifact_domain::Stage::MimeDetector));
    artifact_kafka::topics::ensure_topics(&conn, &rest, 3, 1).await?;
    artifact_kafka::topics::ensure_topics(&conn, &dedup, 2, 1).await?;
    let out = std::process::Command::new(BIN)
        .env("TOPIC_PREFIX", &prefix)
        .env(
            "HTTP_ADDR",
            format!("127.0.0.1:{}", artifact_pipeline_tests::free_port()),
        )
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has 3 partitions") && err.contains("has 2"),
        "{err}"
    );
    Ok(())
}

/// The mime-detector outcomes of one artifact.
async fn outcomes_of(env: &TestEnv, id: artifact_domain::ArtifactId) -> usize {
    outputs(env)
        .await
        .iter()
        .filter(|e| e.artifact_id == id)
        .count()
}

/// Whether the dedup topic holds a tombstone for `id`.
fn tombstoned(env: &TestEnv, id: artifact_domain::ArtifactId) -> bool {
    let topic = env.names.dedup(artifact_domain::Stage::MimeDetector);
    let key = id.to_string();
    env.read_all(&topic).is_ok_and(|v| {
        v.iter()
            .any(|m| m.key() == Some(key.as_bytes()) && m.payload().is_none())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_entries_expire_after_the_retention_in_memory_and_in_the_topic() -> anyhow::Result<()>
{
    artifact_pipeline_tests::needs_stack!();
    const RETENTION: Duration = Duration::from_secs(2);
    let env = TestEnv::new(1).await?;
    let vars = [("DEDUP_RETENTION_MS", RETENTION.as_millis().to_string())];
    let mut stage = StageProcess::start(&env, Path::new(BIN), &vars)?;

    let a = TestEnv::created("a.txt");
    env.produce_created(std::slice::from_ref(&a)).await?;
    wait_until("a's outcome", Duration::from_secs(60), || async {
        outcomes_of(&env, a.artifact_id).await == 1
    })
    .await?;
    // Within the retention a duplicate is skipped.
    env.produce_created(std::slice::from_ref(&a)).await?;
    wait_until("the duplicate skipped", Duration::from_secs(30), || async {
        stage
            .metric("artifact_stage_skipped_total", &["reason=\"duplicate\""])
            .await
            >= 1.0
    })
    .await?;

    // Between one and two retentions later the entry expires from memory,
    // and the stage, idle, writes its tombstone on its own.
    wait_until("a's entry expired", Duration::from_secs(30), || async {
        stage
            .metric("artifact_stage_dedup_expired_total", &[])
            .await
            >= 1.0
    })
    .await?;
    assert_eq!(stage.metric("artifact_stage_dedup_keys", &[]).await, 0.0);
    wait_until("a's tombstone", Duration::from_secs(60), || async {
        tombstoned(&env, a.artifact_id)
    })
    .await?;
    assert_eq!(outcomes_of(&env, a.artifact_id).await, 1);
    // Past its retention the same event is processed again.
    env.produce_created(std::slice::from_ref(&a)).await?;
    wait_until("a processed again", Duration::from_secs(60), || async {
        outcomes_of(&env, a.artifact_id).await == 2
    })
    .await?;
    assert!(stage.terminate(Duration::from_secs(20)), "stage stopped");

    // b's entry is written by a stage that keeps its entries for good, so
    // it is in the topic when the stage with the retention starts again.
    let keep = [("DEDUP_RETENTION_MS", "0".to_owned())];
    let mut stage = StageProcess::start(&env, Path::new(BIN), &keep)?;
    let b = TestEnv::created("b.txt");
    env.produce_created(std::slice::from_ref(&b)).await?;
    wait_until("b's outcome", Duration::from_secs(60), || async {
        outcomes_of(&env, b.artifact_id).await == 1
    })
    .await?;
    assert!(stage.terminate(Duration::from_secs(20)), "stage stopped");
    assert!(!tombstoned(&env, b.artifact_id));

    // A restart once every entry is older than the retention: the restore
    // leaves them all out, and the idle stage tombstones b.
    let dedup_topic = env.names.dedup(artifact_domain::Stage::MimeDetector);
    wait_until(
        "every dedup entry older than the retention",
        Duration::from_secs(30),
        || async {
            let newest = env.read_all(&dedup_topic).map(|v| {
                v.iter()
                    .filter_map(|m| m.timestamp().to_millis())
                    .max()
                    .unwrap_or(i64::MAX)
            });
            newest.is_ok_and(|t| t + (RETENTION.as_millis() as i64) < now_ms())
        },
    )
    .await?;
    let outputs_before = outputs(&env).await.len();
    let stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    wait_until("the stage ready", Duration::from_secs(60), || async {
        stage.is_ready().await
    })
    .await?;
    assert_eq!(
        stage.metric("artifact_stage_dedup_keys", &[]).await,
        0.0,
        "expired entries were restored"
    );
    wait_until("b's tombstone", Duration::from_secs(60), || async {
        tombstoned(&env, b.artifact_id)
    })
    .await?;
    let c = TestEnv::created("c.txt");
    env.produce_created(std::slice::from_ref(&c)).await?;
    wait_until("c's outcome", Duration::from_secs(60), || async {
        outcomes_of(&env, c.artifact_id).await == 1
    })
    .await?;
    assert_eq!(
        outputs(&env).await.len(),
        outputs_before + 1,
        "c's outcome only"
    );
    assert_eq!(stage.metric("artifact_stage_dedup_keys", &[]).await, 1.0);
    Ok(())
}

/// At least once, an idle stage's tombstones go out without a transaction,
/// and a batch of tombstones alone (no offsets to commit) is not a failure.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stage_tombstones_expired_entries_at_least_once_too() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(1).await?;
    let vars = [
        ("DEDUP_RETENTION_MS", "1000".to_owned()),
        ("DELIVERY", "at-least-once".to_owned()),
    ];
    let stage = StageProcess::start(&env, Path::new(BIN), &vars)?;
    let a = TestEnv::created("a.txt");
    env.produce_created(std::slice::from_ref(&a)).await?;
    wait_until("a's tombstone", Duration::from_secs(60), || async {
        tombstoned(&env, a.artifact_id)
    })
    .await?;
    assert_eq!(outcomes_of(&env, a.artifact_id).await, 1);
    assert_eq!(
        stage
            .metric(
                "artifact_stage_records_produced_total",
                &["kind=\"tombstone\""]
            )
            .await,
        1.0
    );
    assert_eq!(
        stage
            .metric("artifact_stage_batch_failures_total", &[])
            .await,
        0.0
    );
    assert!(stage.is_ready().await);
    Ok(())
}
