//! The lag a stage leaves, read from outside the stage, against the real
//! broker:
//!
//! * `artifactctl lag-exporter` keeps exporting `kafka_consumergroup_lag`
//!   after the stage stopped, and the value grows with the input;
//! * KEDA's Kafka scaler's lag (its computation, per partition end offset
//!   minus committed offset, summed, compared with `activationLagThreshold`)
//!   sits at the commit markers when the stage is idle after work, at most
//!   the chart's default threshold (the partition count), and passes it
//!   under load.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace's
//! binaries (`cargo build --workspace --bins`).

use artifact_kafka::client::consumer_config;
use artifact_pipeline_tests::{StageProcess, TestEnv, wait_until};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::path::PathBuf;
use std::time::Duration;

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-stage")).with_file_name(name)
}

fn built(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built (cargo build --workspace --bins)",
        path.display()
    );
    Ok(path)
}

/// A directory of blobs with one text document, and `n` creation events
/// pointing at it (each a new artifact).
fn documents(n: usize) -> anyhow::Result<(PathBuf, Vec<artifact_domain::ArtifactCreated>)> {
    let blobs =
        std::env::temp_dir().join(format!("lag-exporter-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(blobs.join("uploads"))?;
    let doc = blobs.join("uploads/notes.txt");
    std::fs::write(&doc, "Lag is read from the broker, not from the stage.")?;
    let events = (0..n)
        .map(|_| {
            let mut e = TestEnv::created("notes.txt");
            e.storage_location = format!("file://{}", doc.display());
            e.declared_content_type = Some("text/plain".into());
            e
        })
        .collect();
    Ok((blobs, events))
}

/// A stage process in its own group `<prefix>.<stage>`, the name the
/// exporter (started with group prefix `<prefix>.`) reads.
fn start_stage(
    env: &TestEnv,
    stage: &str,
    blobs: &std::path::Path,
) -> anyhow::Result<StageProcess> {
    StageProcess::start(
        env,
        &built(stage)?,
        &[
            ("BLOB_STORE_URL", format!("file://{}", blobs.display())),
            (
                "CONSUMER_GROUP",
                format!("{}.{stage}", env.conn.topic_prefix),
            ),
            ("INSTANCE_ID", format!("lag-{stage}")),
        ],
    )
}

fn start_exporter(env: &TestEnv) -> anyhow::Result<StageProcess> {
    StageProcess::start_args(
        env,
        &built("artifactctl")?,
        &["lag-exporter"],
        &[
            (
                "LAG_EXPORTER_GROUP_PREFIX",
                format!("{}.", env.conn.topic_prefix),
            ),
            ("LAG_EXPORTER_INTERVAL_SECONDS", "1".to_owned()),
            ("LAG_EXPORTER_RATE_WINDOW_SECONDS", "5".to_owned()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lag_is_exported_while_the_stage_is_down_and_grows() -> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(2).await?;
    let (blobs, events) = documents(30)?;
    let group = format!("consumergroup=\"{}.mime-detector\"", env.conn.topic_prefix);
    let input = format!("topic=\"{}\"", env.names.created());
    let mut stage = start_stage(&env, "mime-detector", &blobs)?;
    let exporter = start_exporter(&env)?;

    // The stage works through the first ten: the exporter sees them committed.
    env.produce_created(&events[..10]).await?;
    wait_until(
        "the exporter shows 10 committed, lag 0",
        Duration::from_secs(120),
        || async {
            exporter
                .exported_metric("kafka_consumergroup_current_offset", &[&group, &input])
                .await
                == Some(10.0)
                && exporter
                    .exported_metric("kafka_consumergroup_lag", &[&group, &input])
                    .await
                    == Some(0.0)
        },
    )
    .await?;
    assert!(
        stage.terminate(Duration::from_secs(30)),
        "the stage did not stop cleanly"
    );

    // Stage down: the exporter goes on, and its lag follows the input.
    env.produce_created(&events[10..20]).await?;
    wait_until(
        "lag 10 with the stage down",
        Duration::from_secs(60),
        || async {
            exporter
                .exported_metric("kafka_consumergroup_lag", &[&group, &input])
                .await
                == Some(10.0)
        },
    )
    .await?;
    env.produce_created(&events[20..]).await?;
    wait_until(
        "lag 20 with the stage down",
        Duration::from_secs(60),
        || async {
            exporter
                .exported_metric("kafka_consumergroup_lag", &[&group, &input])
                .await
                == Some(20.0)
        },
    )
    .await?;
    assert_eq!(
        exporter
            .exported_metric("kafka_consumergroup_current_offset", &[&group, &input])
            .await,
        Some(10.0),
        "nothing consumed while the stage is down"
    );
    // The end offsets are the topic's, whatever the group.
    assert_eq!(
        exporter
            .exported_metric("kafka_topic_partition_current_offset", &[&input])
            .await,
        Some(30.0)
    );
    // Nothing consumed over the rate window: lag that never drains.
    wait_until("time to drain +Inf", Duration::from_secs(60), || async {
        exporter
            .exported_metric("artifact_pipeline_time_to_drain_seconds", &[&group])
            .await
            == Some(f64::INFINITY)
    })
    .await?;
    let _ = std::fs::remove_dir_all(&blobs);
    Ok(())
}

/// KEDA's Kafka scaler's lag of `group` on `topic` (kedacore/keda v2.21
/// `pkg/scalers/kafka_scaler.go`, `getLagForPartition` with
/// `offsetResetPolicy: earliest`): per partition the latest offset minus the
/// committed one, or minus the earliest one when nothing is committed;
/// summed. The trigger is active when this is above `activationLagThreshold`.
fn keda_lag(env: &TestEnv, group: &str, topic: &str) -> anyhow::Result<i64> {
    let timeout = Duration::from_secs(10);
    // KEDA reads the latest offsets without read_committed: the high watermark.
    let c: BaseConsumer = consumer_config(&env.conn, "keda-lag", group)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..env.partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let mut total = 0;
    for e in c.committed_offsets(tpl, timeout)?.elements() {
        let (low, high) = c.fetch_watermarks(topic, e.partition(), timeout)?;
        total += match e.offset() {
            Offset::Offset(committed) => high - committed,
            _ => (high - low).max(0),
        };
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread")]
async fn keda_lag_stays_at_the_markers_when_idle_and_passes_the_threshold_under_load()
-> anyhow::Result<()> {
    artifact_pipeline_tests::needs_stack!();
    let env = TestEnv::new(3).await?;
    // The chart's default activationLagThreshold: the partition count.
    let threshold = env.partitions as i64;
    let (blobs, events) = documents(24)?;
    // location-logger reads what mime-detector writes in transactions.
    let group = format!("{}.location-logger", env.conn.topic_prefix);
    let topic = env.names.input(artifact_domain::Stage::LocationLogger);
    let _mime = start_stage(&env, "mime-detector", &blobs)?;
    let mut logger = start_stage(&env, "location-logger", &blobs)?;
    let exporter = start_exporter(&env)?;
    let by_group = format!("consumergroup=\"{group}\"");
    let by_topic = format!("topic=\"{topic}\"");

    // Work, then idle: everything read, only commit markers behind.
    env.produce_created(&events[..12]).await?;
    wait_until(
        "location-logger read all 12",
        Duration::from_secs(120),
        || async {
            exporter
                .exported_metric(
                    "kafka_consumergroup_current_offset",
                    &[&by_group, &by_topic],
                )
                .await
                .unwrap_or(0.0)
                >= 12.0
                && exporter
                    .exported_metric("kafka_consumergroup_lag", &[&by_group, &by_topic])
                    .await
                    == Some(0.0)
        },
    )
    .await?;
    let idle = keda_lag(&env, &group, &topic)?;
    eprintln!("KEDA's lag of the idle stage: {idle} (threshold {threshold})");
    assert!(
        idle > 0,
        "no commit marker behind: threshold 0 would have been right after all"
    );
    assert!(
        idle <= threshold,
        "idle, KEDA's lag {idle} is above the threshold {threshold}: the stage would never scale to zero"
    );

    // Load with the stage down: KEDA's lag passes the threshold.
    assert!(
        logger.terminate(Duration::from_secs(30)),
        "location-logger did not stop cleanly"
    );
    env.produce_created(&events[12..]).await?;
    let mut under_load = 0;
    wait_until(
        "KEDA's lag above the threshold",
        Duration::from_secs(120),
        || {
            let lag = keda_lag(&env, &group, &topic).unwrap_or(0);
            under_load = lag;
            async move { lag > threshold }
        },
    )
    .await?;
    eprintln!("KEDA's lag under load: {under_load} (threshold {threshold})");
    let _ = std::fs::remove_dir_all(&blobs);
    Ok(())
}
