//! `location-logger`: verifies each artifact's storage location, size and SHA-256.

use artifact_runtime::blob::BlobStore;
use artifact_runtime::config::{BlobStoreConfig, ConnectionConfig};
use artifact_runtime::runner::RunnerConfig;
use artifact_runtime::service::run_stage;
use clap::Parser;
use location_logger::LocationStage;

/// The location-logger stage.
#[derive(Debug, Parser)]
#[command(name = "location-logger", version, about)]
struct Config {
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    runner: RunnerConfig,
    #[command(flatten)]
    blobs: BlobStoreConfig,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9102")]
    http_addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let blobs = BlobStore::from_url(&cfg.blobs.url()?)?;
    run_stage(LocationStage { blobs }, cfg.conn, cfg.runner, cfg.http_addr).await?;
    Ok(())
}
