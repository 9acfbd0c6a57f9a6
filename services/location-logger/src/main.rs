//! `location-logger`: verifies each artifact's storage location, size and SHA-256.

use artifact_runtime::service::StageArgs;
use clap::Parser;
use location_logger::LocationStage;

/// The location-logger stage.
#[derive(Debug, Parser)]
#[command(name = "location-logger", version, about)]
struct Config {
    #[command(flatten)]
    stage: StageArgs,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9102")]
    http_addr: std::net::SocketAddr,
}

artifact_runtime::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let blobs = cfg.stage.blob_store()?;
    cfg.stage
        .run(LocationStage { blobs }, cfg.http_addr)
        .await?;
    Ok(())
}
