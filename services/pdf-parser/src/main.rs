//! `pdf-parser`: extracts page count, metadata and text from PDFs and text files.

use artifact_runtime::service::StageArgs;
use clap::Parser;
use pdf_parser::Limits;
use pdf_parser::stage::ParseStage;
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
    /// Time limit per document, in milliseconds.
    #[arg(long, env = "PARSE_TIMEOUT_MS", default_value_t = 20_000)]
    timeout_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    // Every thread of the runtime, the blocking ones that parse included,
    // gets the parser's large stack, so a PDF is parsed on the thread that
    // takes it. The stack is address space: only the pages a parse touches
    // become memory.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(pdf_parser::PARSER_STACK)
        .on_thread_start(pdf_parser::large_stack_thread)
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
    };
    cfg.stage.run(stage, cfg.http_addr).await?;
    Ok(())
}
