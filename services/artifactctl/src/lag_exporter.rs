//! `artifactctl lag-exporter`: serves the stages' consumer lag to
//! Prometheus from a process of its own, so the lag is there while a stage
//! is down. It reads the broker every `--interval` ([`artifact_kafka::lag`]) and
//! exports kafka_exporter's metric names and labels, so dashboards and
//! alerts written for kafka_exporter work unchanged, plus a time-to-drain
//! estimate per group. It only reads: it never joins or commits for a group.

use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::lag::{DrainEstimate, LagReader, PartitionLag, stage_groups};
use artifact_runtime::telemetry::{Health, OpsDoc, health_router, init_logging, metrics_handle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use utoipa::OpenApi;

const LAG: &str = "kafka_consumergroup_lag";
const LAG_SUM: &str = "kafka_consumergroup_lag_sum";
const CURRENT_OFFSET: &str = "kafka_consumergroup_current_offset";
const END_OFFSET: &str = "kafka_topic_partition_current_offset";
const START_OFFSET: &str = "kafka_topic_partition_oldest_offset";
const TIME_TO_DRAIN: &str = "artifact_pipeline_time_to_drain_seconds";
const READ_FAILURES: &str = "artifact_pipeline_lag_read_failures_total";

/// Settings of `artifactctl lag-exporter`.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub rate_window: Duration,
    pub group_prefix: String,
}

fn describe() {
    metrics::describe_gauge!(
        LAG,
        "Records of the partition a read_committed reader of the group has still to read (commit markers not counted)"
    );
    metrics::describe_gauge!(
        LAG_SUM,
        "kafka_consumergroup_lag summed over the topic's partitions"
    );
    metrics::describe_gauge!(
        CURRENT_OFFSET,
        "Offset the group committed in the partition"
    );
    metrics::describe_gauge!(END_OFFSET, "End offset (high watermark) of the partition");
    metrics::describe_gauge!(START_OFFSET, "Log start offset of the partition");
    metrics::describe_gauge!(
        TIME_TO_DRAIN,
        "Seconds until the group's lag is consumed at its rate over the recent window; +Inf with lag and no consumption, 0 with no lag"
    );
    metrics::describe_counter!(
        READ_FAILURES,
        "Reads of offsets from Kafka that failed (the lag series then keep their last value)"
    );
}

/// Sets every gauge from one read, and the groups' drain estimates.
fn publish(rows: &[PartitionLag], estimates: &mut BTreeMap<String, DrainEstimate>, at: Instant) {
    let mut per_group: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut per_topic: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for r in rows {
        let p = r.partition.to_string();
        let labels = [
            ("consumergroup", r.group.clone()),
            ("topic", r.topic.clone()),
            ("partition", p.clone()),
        ];
        metrics::gauge!(LAG, &labels).set(r.lag as f64);
        if let Some(c) = r.committed {
            metrics::gauge!(CURRENT_OFFSET, &labels).set(c as f64);
        }
        let tp = [("topic", r.topic.clone()), ("partition", p)];
        metrics::gauge!(END_OFFSET, &tp).set(r.high as f64);
        metrics::gauge!(START_OFFSET, &tp).set(r.low as f64);
        let g = per_group.entry(&r.group).or_default();
        g.0 += r.lag;
        g.1 += r.committed.unwrap_or(0);
        *per_topic.entry((&r.group, &r.topic)).or_default() += r.lag;
    }
    for ((group, topic), lag) in per_topic {
        metrics::gauge!(LAG_SUM, "consumergroup" => group.to_owned(), "topic" => topic.to_owned())
            .set(lag as f64);
    }
    for (group, (lag, committed)) in per_group {
        let e = estimates.get_mut(group).expect("an estimate per group");
        e.sample(at, committed);
        if let Some(secs) = e.time_to_drain(lag) {
            metrics::gauge!(TIME_TO_DRAIN, "consumergroup" => group.to_owned()).set(secs);
        }
    }
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(conn: ConnectionConfig, cfg: ExporterConfig) -> anyhow::Result<()> {
    init_logging();
    let handle = metrics_handle();
    describe();
    let health = Health::not_ready("no lag read yet");
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (--listen): {e}", cfg.listen))?;
    let mut doc = OpsDoc::openapi();
    doc.info.title = "artifactctl lag-exporter".to_owned();
    doc.info.description = Some(
        "Consumer lag of the artifact pipeline's stages, under kafka_exporter's names.".to_owned(),
    );
    let router = health_router(health.clone(), handle, doc);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let groups = stage_groups(&conn, &cfg.group_prefix);
    let mut estimates: BTreeMap<String, DrainEstimate> = groups
        .iter()
        .map(|g| (g.group.clone(), DrainEstimate::new(cfg.rate_window)))
        .collect();
    tracing::info!(listen = %cfg.listen, interval = ?cfg.interval, groups = ?estimates.keys().collect::<Vec<_>>(), "lag exporter running");
    let mut reader = {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || LagReader::new(&conn, groups)).await??
    };
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = artifact_runtime::service::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut shutdown => return Ok(()),
        }
        let (back, rows) = tokio::task::spawn_blocking(move || {
            let rows = reader.read();
            (reader, rows)
        })
        .await?;
        reader = back;
        match rows {
            Ok(rows) => {
                publish(&rows, &mut estimates, Instant::now());
                health.set_ready();
            }
            Err(e) => {
                metrics::counter!(READ_FAILURES).increment(1);
                tracing::warn!(error = format!("{e:#}"), "reading consumer lag failed");
                health.set_not_ready(format!("reading consumer lag failed: {e:#}"));
            }
        }
    }
}
