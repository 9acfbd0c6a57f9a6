//! `artifact-api`: the upload API, read model and projector.

use artifact_api::app::{AppState, router};
use artifact_api::auth::Tokens;
use artifact_api::completions::Completions;
use artifact_api::readmodel::{StatusTable, follow_status_topic};
use artifact_blob::BlobStore;
use artifact_blob::BlobStoreConfig;
use artifact_kafka::client::producer_config;
use artifact_kafka::codec::AvroCodec;
use artifact_kafka::config::ConnectionConfig;
use artifact_kafka::topics::TopicNames;
use artifact_runtime::telemetry::{Health, health_router, init_logging, metrics_handle};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;

/// The artifact API.
#[derive(Debug, Parser)]
#[command(name = "artifact-api", version, about)]
struct Config {
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    blobs: BlobStoreConfig,
    /// Address to serve the API, health and metrics on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: std::net::SocketAddr,
    /// Bearer tokens accepted on write endpoints, comma-separated. Empty:
    /// writes are open (a warning is logged).
    #[arg(long, env = "API_TOKENS", default_value = "", hide_env_values = true)]
    api_tokens: String,
    /// A file with one token per line, added to API_TOKENS.
    #[arg(long, env = "API_TOKENS_FILE")]
    api_tokens_file: Option<std::path::PathBuf>,
    /// Require a token on reads too.
    #[arg(long, env = "API_PROTECT_READS", default_value_t = false)]
    protect_reads: bool,
    /// Largest upload, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 100 << 20)]
    max_upload_bytes: u64,
    /// Directory of the read-model table's file (created at each start and
    /// unlinked at once; it holds the final snapshot of every artifact).
    #[arg(long, env = "READ_MODEL_DIR", default_value_os_t = std::env::temp_dir())]
    read_model_dir: std::path::PathBuf,
    /// Consumer group of the projector task.
    #[arg(long, env = "PROJECTOR_GROUP", default_value = "artifact-projector")]
    projector_group: String,
    /// How long SIGTERM/SIGINT waits for requests in flight (uploads being
    /// received, moved into place and published) before the process exits
    /// anyway, in milliseconds. New connections are refused meanwhile.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    shutdown_timeout_ms: u64,
}

artifact_runtime::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cfg = Config::parse();
    cfg.conn.validate()?;
    let blobs = BlobStore::from_url(&cfg.blobs.url()?)?;
    let mut tokens = cfg.api_tokens.clone();
    if let Some(f) = &cfg.api_tokens_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("API_TOKENS_FILE {}: {e}", f.display()))?;
        tokens = format!("{tokens},{}", text.lines().collect::<Vec<_>>().join(","));
    }
    let tokens = Tokens::parse(&tokens);
    if tokens.is_empty() {
        tracing::warn!(
            "API_TOKENS is empty: write endpoints are open to anyone who can reach the API"
        );
    }
    let codec = Arc::new(AvroCodec::new(&cfg.conn.schema_registry_url)?);
    let producer = producer_config(&cfg.conn, "artifact-api")
        .set("message.timeout.ms", "10000")
        .create()?;
    let table = Arc::new(StatusTable::create(&cfg.read_model_dir)?);
    let completions = Completions::default();
    let state = AppState {
        names: TopicNames::from_config(&cfg.conn),
        codec: codec.clone(),
        producer,
        blobs,
        table: table.clone(),
        tokens,
        protect_reads: cfg.protect_reads,
        max_upload_bytes: cfg.max_upload_bytes,
        completions: completions.clone(),
    };

    // The recorder is installed before any task records: a metric recorded
    // earlier would go nowhere (the projector registers its failure counter
    // at zero as it starts).
    let metrics = metrics_handle();
    let health = Health::not_ready("restoring the read model from the status topic");
    let read_model = tokio::spawn(follow_status_topic(
        cfg.conn.clone(),
        codec.clone(),
        table.clone(),
    ));
    let projector = tokio::spawn(artifact_api::projector::run_projector(
        cfg.conn.clone(),
        codec.clone(),
        cfg.projector_group.clone(),
        table.clone(),
    ));
    {
        let (health, table) = (health.clone(), table.clone());
        tokio::spawn(async move {
            table.restored().await;
            health.set_ready();
        });
    }

    let app = router(state).merge(health_router(health, metrics, artifact_api::app::api_doc()));
    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve HTTP on {}: {e}", cfg.http_addr))?;
    tracing::info!(addr = %cfg.http_addr, "artifact-api serving");

    // A signal stops accepting connections; requests in flight finish, and
    // so do the upload completions of clients that went away, up to the
    // deadline.
    let deadline = Duration::from_millis(cfg.shutdown_timeout_ms);
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        artifact_runtime::service::shutdown_signal().await;
        tracing::info!(?deadline, "shutting down: finishing the requests in flight");
        let _ = stopping_tx.send(true);
    });
    let drained = async {
        serve.await?;
        completions.idle().await;
        anyhow::Ok(())
    };
    let past_deadline = async {
        if stopping.wait_for(|s| *s).await.is_ok() {
            tokio::time::sleep(deadline).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = drained => {
            r?;
            tracing::info!("shut down");
        }
        r = projector => anyhow::bail!("projector stopped: {:?}", r),
        r = read_model => anyhow::bail!("read model stopped: {:?}", r),
        _ = past_deadline => tracing::warn!(
            ?deadline,
            completions = completions.running(),
            "shut down with requests in flight: SHUTDOWN_TIMEOUT_MS passed"
        ),
    }
    Ok(())
}
