//! The entry point every stage binary calls: logging, the health and metrics
//! server, signal handling with a shutdown deadline, and the runner.

use crate::blob::BlobStore;
use crate::blob::BlobStoreConfig;
use crate::runner::{RunnerConfig, StageRunner};
use crate::stage::StageLogic;
use crate::telemetry::{Health, OpsDoc, health_router, init_logging, metrics_handle};
use artifact_kafka::config::ConnectionConfig;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;
use utoipa::OpenApi;

/// Why a stage service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The HTTP address could not be bound.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The runner stopped.
    #[error(transparent)]
    Runner(#[from] crate::runner::RunnerError),
    /// Shutdown took longer than allowed.
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

/// What every stage binary is configured with besides its own settings:
/// where Kafka, the registry and the blobs are, and how the runner behaves.
/// Each binary adds its own `HTTP_ADDR` (their defaults differ, so that all
/// stages run side by side on one machine).
#[derive(Debug, Clone, clap::Args)]
pub struct StageArgs {
    /// Kafka, registry, topic prefix.
    #[command(flatten)]
    pub conn: ConnectionConfig,
    /// Batching, retries, delivery, shutdown.
    #[command(flatten)]
    pub runner: RunnerConfig,
    /// The blob store root.
    #[command(flatten)]
    pub blobs: BlobStoreConfig,
}

impl StageArgs {
    /// The configured blob store.
    pub fn blob_store(&self) -> Result<BlobStore, ServiceError> {
        let url = self
            .blobs
            .url()
            .map_err(|e| ServiceError::Config(e.to_string()))?;
        BlobStore::from_url(&url).map_err(|e| ServiceError::Config(e.to_string()))
    }

    /// Runs `logic` with these settings until SIGTERM/SIGINT.
    pub async fn run<S: StageLogic>(
        self,
        logic: S,
        http_addr: SocketAddr,
    ) -> Result<(), ServiceError> {
        run_stage(logic, self.conn, self.runner, http_addr).await
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs a stage until SIGTERM/SIGINT.
pub async fn run_stage<S: StageLogic>(
    logic: S,
    conn: ConnectionConfig,
    runner: RunnerConfig,
    http_addr: SocketAddr,
) -> Result<(), ServiceError> {
    init_logging();
    conn.validate()
        .map_err(|e| ServiceError::Config(e.to_string()))?;
    runner
        .validate()
        .map_err(|e| ServiceError::Config(e.to_string()))?;
    let health = Health::not_ready("starting");
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| ServiceError::Http {
            addr: http_addr,
            source,
        })?;
    let mut doc = OpsDoc::openapi();
    doc.info.title = S::STAGE.name().to_owned();
    doc.info.description = Some(format!(
        "Health, readiness and metrics of the {} stage of artifact-pipeline.",
        S::STAGE.name()
    ));
    let router = health_router(health.clone(), metrics_handle(), doc);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let deadline = Duration::from_millis(runner.shutdown_timeout_ms);
    let (tx, rx) = watch::channel(false);
    let mut task = tokio::spawn(StageRunner::new(logic, conn, runner, health)?.run(rx));
    let ended = tokio::select! {
        res = &mut task => Ok(res),
        _ = shutdown_signal() => {
            tracing::info!(?deadline, "shutdown requested");
            let _ = tx.send(true);
            tokio::time::timeout(deadline, task).await
        }
    };
    crate::otel::shutdown();
    match ended {
        Ok(res) => res
            .map_err(|e| ServiceError::Config(format!("runner task: {e}")))?
            .map_err(Into::into),
        Err(_) => Err(ServiceError::ShutdownTimeout(deadline)),
    }
}
