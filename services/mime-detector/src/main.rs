//! `mime-detector`: detects each artifact's real MIME type from its bytes.

use artifact_runtime::blob::BlobStore;
use artifact_runtime::config::{BlobStoreConfig, ConnectionConfig};
use artifact_runtime::runner::RunnerConfig;
use artifact_runtime::service::run_stage;
use clap::Parser;
use mime_detector::stage::MimeStage;

/// The mime-detector stage.
#[derive(Debug, Parser)]
#[command(name = "mime-detector", version, about)]
struct Config {
    #[command(flatten)]
    conn: ConnectionConfig,
    #[command(flatten)]
    runner: RunnerConfig,
    #[command(flatten)]
    blobs: BlobStoreConfig,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9101")]
    http_addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let blobs = BlobStore::from_url(&cfg.blobs.url()?)?;
    run_stage(MimeStage { blobs }, cfg.conn, cfg.runner, cfg.http_addr).await?;
    Ok(())
}
