//! `summarizer`: writes a summary of each artifact's text, extractive by
//! default or by an OpenAI-compatible endpoint with `SUMMARIZER_BACKEND=llm`.

use anyhow::Context;
use artifact_runtime::service::StageArgs;
use artifact_runtime::telemetry::{init_logging, metrics_handle};
use clap::Parser;
use summarizer::SummaryOptions;
use summarizer::config::BackendArgs;
use summarizer::llm::LlmSummarizer;
use summarizer::stage::{Backend, SummaryStage};

/// The summarizer stage.
#[derive(Debug, Parser)]
#[command(name = "summarizer", version, about)]
struct Config {
    #[command(flatten)]
    stage: StageArgs,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9104")]
    http_addr: std::net::SocketAddr,
    /// Sentences in a summary, at most (extractive backend).
    #[arg(long, env = "SUMMARY_MAX_SENTENCES", default_value_t = 3)]
    max_sentences: usize,
    /// Characters in a summary, at most (both backends).
    #[arg(long, env = "SUMMARY_MAX_CHARS", default_value_t = 600)]
    max_chars: usize,
    /// Largest text read, in bytes.
    #[arg(long, env = "SUMMARY_MAX_TEXT_BYTES", default_value_t = 50 << 20)]
    max_text_bytes: u64,
    /// Which backend writes the summaries, and the LLM backend's settings.
    #[command(flatten)]
    backend: BackendArgs,
}

artifact_runtime::global_allocator!();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    init_logging();
    let llm = cfg
        .backend
        .llm_config(cfg.max_chars, cfg.stage.runner.processing_timeout_ms)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let backend = match llm {
        None => {
            let ignored = cfg.backend.ignored_llm_settings();
            if !ignored.is_empty() {
                tracing::warn!(
                    ?ignored,
                    "LLM settings given but SUMMARIZER_BACKEND=extractive: they are not used"
                );
            }
            Backend::Extractive
        }
        Some(llm) => {
            let llm = LlmSummarizer::new(llm)
                .map_err(anyhow::Error::msg)
                .context("invalid configuration")?;
            tracing::info!(endpoint = %llm.endpoint(), method = %llm.method(), "summaries by an LLM endpoint");
            metrics_handle();
            summarizer::llm_metrics::describe();
            Backend::Llm(Box::new(llm))
        }
    };
    let blobs = cfg.stage.blob_store()?;
    let stage = SummaryStage {
        blobs,
        options: SummaryOptions {
            max_sentences: cfg.max_sentences,
            max_chars: cfg.max_chars,
        },
        max_text_bytes: cfg.max_text_bytes,
        backend,
        attempt_timeout: std::time::Duration::from_millis(cfg.stage.runner.processing_timeout_ms),
    };
    cfg.stage.run(stage, cfg.http_addr).await?;
    Ok(())
}
