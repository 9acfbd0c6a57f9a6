//! `artifact-api`: the upload API, read model and projector.

use artifact_api::config::Config;
use artifact_api::http::completions::Completions;
use artifact_api::http::limits::UploadSlots;
use artifact_api::http::{AppState, api_doc, router, server};
use artifact_api::readmodel::{StatusTable, follow_status_topic};
use artifact_blob::BlobStore;
use artifact_kafka::client::producer_config;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::topics::TopicNames;
use artifact_runtime::telemetry::{Health, health_router, init_logging, metrics_handle};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

artifact_runtime::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cfg = Config::parse();
    cfg.conn.validate()?;
    let state = app_state(&cfg)?;
    let (codec, table) = (state.codec.clone(), state.table.clone());
    tokio::spawn(state.pipeline.steps().clone().follow(table.clone()));
    let completions = state.completions.clone();

    // The recorder is installed before any task records: a metric recorded
    // earlier would go nowhere.
    let metrics = metrics_handle();
    artifact_api::metrics::describe();
    let health = Health::not_ready("restoring the read model from the status topic");
    let read_model = tokio::spawn(follow_status_topic(
        cfg.conn.clone(),
        codec.clone(),
        table.clone(),
    ));
    let projector = tokio::spawn(artifact_api::projector::run_projector(
        cfg.conn.clone(),
        codec,
        cfg.projector_group.clone(),
        table.clone(),
    ));
    let executor = Arc::new(artifact_api::reprocess::executor::Executor {
        conn: cfg.conn.clone(),
        codec: state.codec.clone(),
        names: state.names.clone(),
        producer: state.producer.clone(),
        table: state.table.clone(),
        ops: state.operations.clone(),
        starts_per_second: cfg.reprocess_starts_per_second,
        restarts: artifact_api::reprocess::executor::Restarts::new(
            cfg.conn.clone(),
            &cfg.reprocess_group,
        ),
    });
    let reprocess = tokio::spawn(artifact_api::reprocess::executor::run_executor(
        executor,
        cfg.reprocess_group.clone(),
    ));
    let deliverer = artifact_api::webhooks::delivery::Deliverer::new(
        state.webhooks.subscriptions.clone(),
        cfg.webhook_delivery()?,
    )?;
    let webhooks = tokio::spawn(artifact_api::webhooks::delivery::run_delivery(
        cfg.conn.clone(),
        state.codec.clone(),
        cfg.webhook_group.clone(),
        deliverer,
    ));
    {
        let health = health.clone();
        tokio::spawn(async move {
            table.restored().await;
            health.set_ready();
        });
    }

    let header_timeout = state.limits.header_timeout;
    let app = router(state).merge(health_router(health, metrics, api_doc()));
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve HTTP on {}: {e}", cfg.http_addr))?;
    tracing::info!(addr = %cfg.http_addr, "artifact-api serving");

    // A signal stops accepting connections; requests in flight finish, and
    // so do the upload completions of clients that went away, up to the
    // deadline.
    let deadline = Duration::from_millis(cfg.shutdown_timeout_ms);
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let serve = server::serve(listener, app, header_timeout, async move {
        artifact_runtime::service::shutdown_signal().await;
        tracing::info!(?deadline, "shutting down: finishing the requests in flight");
        let _ = stopping_tx.send(true);
    });
    let drained = async {
        serve.await;
        completions.idle().await;
    };
    let past_deadline = async {
        if stopping.wait_for(|s| *s).await.is_ok() {
            tokio::time::sleep(deadline).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!("shut down"),
        r = projector => anyhow::bail!("projector stopped: {:?}", r),
        r = read_model => anyhow::bail!("read model stopped: {:?}", r),
        r = reprocess => anyhow::bail!("reprocess executor stopped: {:?}", r),
        r = webhooks => anyhow::bail!("webhook deliveries stopped: {:?}", r),
        _ = past_deadline => tracing::warn!(
            ?deadline,
            completions = completions.running(),
            "shut down with requests in flight: SHUTDOWN_TIMEOUT_MS passed"
        ),
    }
    artifact_runtime::otel::shutdown();
    Ok(())
}

/// What the handlers share, from the configuration; refuses to start
/// without tokens unless anonymity is asked for explicitly.
fn app_state(cfg: &Config) -> anyhow::Result<AppState> {
    let access = cfg.access()?;
    if access.is_anonymous() {
        tracing::warn!(
            "API_ALLOW_ANONYMOUS=true: anyone who can reach the API may upload, reprocess and read"
        );
    }
    let limits = cfg.limits()?;
    let delivery = cfg.webhook_delivery()?;
    let producer = producer_config(&cfg.conn, "artifact-api")
        .set("message.timeout.ms", "10000")
        .create()?;
    let codec = Arc::new(AvroCodec::new(&cfg.conn.schema_registry_url)?);
    Ok(AppState {
        names: TopicNames::from_config(&cfg.conn),
        controls: artifact_runtime::control::ArtifactControls::follow(
            cfg.conn.clone(),
            codec.clone(),
        ),
        operations: artifact_api::reprocess::Operations::follow(cfg.conn.clone(), codec.clone())
            .with_max_artifacts(cfg.reprocess_max_artifacts),
        webhooks: artifact_api::webhooks::Webhooks {
            subscriptions: artifact_api::webhooks::Subscriptions::follow(
                cfg.conn.clone(),
                codec.clone(),
            ),
            policy: delivery.policy,
        },
        codec,
        producer,
        blobs: BlobStore::from_url(&cfg.blobs.url()?)?,
        table: Arc::new(StatusTable::create(&cfg.read_model_dir)?),
        access,
        uploads: UploadSlots::new(limits.concurrent_uploads),
        streams: artifact_api::http::events::StreamSlots::new(limits.event_streams),
        limits,
        completions: Completions::default(),
        pipeline: Arc::new(artifact_api::ui::stages::PipelineView::new(
            cfg.conn.clone(),
            cfg.console_stage_group_prefix.clone(),
            Duration::from_millis(cfg.console_kafka_timeout_ms),
        )),
    })
}
