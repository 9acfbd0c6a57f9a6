//! `summarizer`: writes an extractive summary of each artifact's text.

use artifact_runtime::service::StageArgs;
use clap::Parser;
use summarizer::SummaryOptions;
use summarizer::stage::SummaryStage;

/// The summarizer stage.
#[derive(Debug, Parser)]
#[command(name = "summarizer", version, about)]
struct Config {
    #[command(flatten)]
    stage: StageArgs,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9104")]
    http_addr: std::net::SocketAddr,
    /// Sentences in a summary, at most.
    #[arg(long, env = "SUMMARY_MAX_SENTENCES", default_value_t = 3)]
    max_sentences: usize,
    /// Characters in a summary, at most.
    #[arg(long, env = "SUMMARY_MAX_CHARS", default_value_t = 600)]
    max_chars: usize,
    /// Largest text read, in bytes.
    #[arg(long, env = "SUMMARY_MAX_TEXT_BYTES", default_value_t = 50 << 20)]
    max_text_bytes: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let blobs = cfg.stage.blob_store()?;
    let stage = SummaryStage {
        blobs,
        options: SummaryOptions {
            max_sentences: cfg.max_sentences,
            max_chars: cfg.max_chars,
        },
        max_text_bytes: cfg.max_text_bytes,
    };
    cfg.stage.run(stage, cfg.http_addr).await?;
    Ok(())
}
