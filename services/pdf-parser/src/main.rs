//! `pdf-parser`: extracts page count, metadata and text from PDFs, images
//! (OCR), office documents, EPUB, HTML, e-mail and text files.

use artifact_runtime::service::StageArgs;
use clap::Parser;
use pdf_parser::stage::ParseStage;
use pdf_parser::worker::{ParserPool, WorkerSettings, serve_if_worker};
use pdf_parser::{Limits, OcrSettings};
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
    /// Most times an entry of a DOCX, ODT, PPTX, XLSX or EPUB may inflate
    /// its compressed size; more is refused as a zip bomb.
    #[arg(long, env = "PARSE_MAX_ZIP_RATIO", default_value_t = 100)]
    max_zip_ratio: u64,
    /// Tesseract languages for OCR (`eng`, `eng+deu`…); empty turns OCR
    /// off (images are then skipped).
    #[arg(long, env = "PARSE_OCR_LANGUAGES", default_value = "eng")]
    ocr_languages: String,
    /// A PDF page with fewer characters of text is OCRed.
    #[arg(long, env = "PARSE_OCR_MIN_PAGE_CHARS", default_value_t = 20)]
    ocr_min_page_chars: usize,
    /// PDF pages OCRed at most per document.
    #[arg(long, env = "PARSE_OCR_MAX_PAGES", default_value_t = 50)]
    ocr_max_pages: usize,
    /// Pages (slides, sheets, chapters) whose text is also written as its
    /// own blob, the first ones; 0 writes none.
    #[arg(long, env = "PARSE_MAX_PAGE_TEXTS", default_value_t = 1000)]
    max_page_texts: usize,
    /// Resolution PDF pages are rendered at for OCR, in dots per inch.
    #[arg(long, env = "PARSE_OCR_DPI", default_value_t = 300, value_parser = clap::value_parser!(u32).range(50..=1200))]
    ocr_dpi: u32,
    /// Images with more pixels are refused before OCR.
    #[arg(long, env = "PARSE_OCR_MAX_PIXELS", default_value_t = 40_000_000)]
    ocr_max_pixels: u64,
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
    let ocr = OcrSettings {
        languages: cfg.ocr_languages.trim().to_owned(),
        min_page_chars: cfg.ocr_min_page_chars,
        max_pages: cfg.ocr_max_pages,
        dpi: cfg.ocr_dpi,
        max_image_pixels: cfg.ocr_max_pixels,
    };
    if !ocr.languages.is_empty() {
        pdf_parser::ocr::check_installed(&ocr).map_err(anyhow::Error::msg)?;
    }
    let blobs = cfg.stage.blob_store()?;
    let stage = ParseStage {
        blobs,
        limits: Limits {
            max_bytes: cfg.max_bytes,
            max_pages: cfg.max_pages,
            max_chars: cfg.max_chars,
            max_content_bytes: cfg.max_content_bytes,
            max_zip_ratio: cfg.max_zip_ratio,
            deadline: None,
        },
        timeout: Duration::from_millis(cfg.timeout_ms),
        parser: ParserPool::new(WorkerSettings::this_program(
            cfg.workers.into(),
            cfg.worker_memory_bytes,
            ocr,
        )?),
        max_page_texts: cfg.max_page_texts,
    };
    cfg.stage.run(stage, cfg.http_addr).await?;
    Ok(())
}
