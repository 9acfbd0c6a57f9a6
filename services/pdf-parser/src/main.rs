//! `pdf-parser`: extracts page count, metadata and text from PDFs and text files.

use artifact_runtime::service::StageArgs;
use clap::Parser;
use pdf_parser::Limits;
use pdf_parser::stage::ParseStage;
use pdf_parser::worker::{ParserPool, WorkerSettings, serve_if_worker};
use std::time::Duration;

artifact_runtime::global_allocator!();

/// The pdf-parser stage.
#[derive(Debug, Parser)]
#[command(name = "pdf-parser", version, about)]
struct Config {
    #[command(flatten)]
    stage: StageArgs,
    /// Health and metrics address.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9103")]
    http_addr: std::net::SocketAddr,
    /// Largest document parsed, in bytes.
    #[arg(long, env = "PARSE_MAX_BYTES", default_value_t = 100 << 20)]
    max_bytes: usize,
    /// Most pages parsed; longer PDFs fail permanently.
    #[arg(long, env = "PARSE_MAX_PAGES", default_value_t = 1000)]
    max_pages: usize,
    /// Text kept per document, in characters; the rest is dropped.
    #[arg(long, env = "PARSE_MAX_CHARS", default_value_t = 10_000_000)]
    max_chars: usize,
    /// Most bytes of decompressed content per PDF (page content, forms
    /// each time drawn, fonts); more fails permanently.
    #[arg(long, env = "PARSE_MAX_CONTENT_BYTES", default_value_t = pdf_parser::DEFAULT_MAX_CONTENT_BYTES)]
    max_content_bytes: usize,
    /// Time limit per document, in milliseconds, from when a parse worker
    /// takes it.
    #[arg(long, env = "PARSE_TIMEOUT_MS", default_value_t = 20_000)]
    timeout_ms: u64,
    /// Parse worker processes at most: PDFs parsed at once.
    #[arg(long, env = "PARSE_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
    /// Address space of each parse worker (RLIMIT_AS), in bytes; a PDF
    /// that needs more fails permanently.
    #[arg(long, env = "PARSE_WORKER_MEMORY_BYTES", default_value_t = 1 << 30)]
    worker_memory_bytes: u64,
}

fn main() -> anyhow::Result<()> {
    // This binary is also its own parse worker (see pdf_parser::worker).
    serve_if_worker();
    let cfg = Config::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let blobs = cfg.stage.blob_store()?;
    let stage = ParseStage {
        blobs,
        limits: Limits {
            max_bytes: cfg.max_bytes,
            max_pages: cfg.max_pages,
            max_chars: cfg.max_chars,
            max_content_bytes: cfg.max_content_bytes,
            deadline: None,
        },
        timeout: Duration::from_millis(cfg.timeout_ms),
        parser: ParserPool::new(WorkerSettings::this_program(
            cfg.workers.into(),
            cfg.worker_memory_bytes,
        )?),
    };
    cfg.stage.run(stage, cfg.http_addr).await?;
    Ok(())
}
