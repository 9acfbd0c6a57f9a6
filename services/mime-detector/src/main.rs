//! `mime-detector`: detects each artifact's real MIME type from its bytes.

use artifact_runtime::service::StageArgs;
use clap::Parser;
use mime_detector::stage::MimeStage;

/// The mime-detector stage.
#[derive(Debug, Parser)]
#[command(name = "mime-detector", version, about)]
struct Config {
    #[command(flatten)]
    stage: StageArgs,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9101")]
    http_addr: std::net::SocketAddr,
}

artifact_runtime::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let blobs = cfg.stage.blob_store()?;
    cfg.stage.run(MimeStage { blobs }, cfg.http_addr).await?;
    Ok(())
}
