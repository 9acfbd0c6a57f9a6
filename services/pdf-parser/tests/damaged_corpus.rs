//! Real damaged PDFs through pdf-parser's extraction as the stage runs it
//! (in its parse workers, under their memory and time limits): the corpus
//! of `scripts/fixtures/damaged-pdfs.sh` (PDFs from the test suites of
//! pypdf and pdf-parse, and damaged copies of them; sources and licences
//! in its README). Every file gets exactly one outcome, a text or a parse
//! error; no worker dies (no abort, stack overflow or out-of-memory) and
//! none runs out of time.
//!
//! The corpus is fetched into `$DAMAGED_PDF_DIR`, else
//! `target/fixtures/damaged-pdf`, when missing (pip and npm reach their
//! registries).

use pdf_parser::worker::{ParserPool, PoolError, WorkerSettings};
use pdf_parser::{Limits, ParseError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Time per file: generous, since the largest files have hundreds of pages
/// and a debug build parses several times slower than a release build.
const TIMEOUT: Duration = Duration::from_secs(60);

fn corpus() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("DAMAGED_PDF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/fixtures/damaged-pdf"));
    let status = Command::new("bash")
        .arg(repo.join("scripts/fixtures/damaged-pdfs.sh"))
        .arg(&dir)
        .status()
        .expect("run scripts/fixtures/damaged-pdfs.sh");
    assert!(
        status.success(),
        "scripts/fixtures/damaged-pdfs.sh failed (it needs pip and npm)"
    );
    dir
}

fn pdfs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            pdfs(&path, out);
        } else if path.extension().is_some_and(|x| x == "pdf") {
            out.push(path);
        }
    }
}

/// An outcome's kind, for the summary.
fn kind(result: &Result<pdf_parser::Extracted, PoolError>) -> String {
    match result {
        Ok(x) if x.word_count() > 0 => "text".into(),
        Ok(_) => "no text".into(),
        Err(PoolError::Parse(e)) => match e {
            ParseError::Encrypted => "encrypted".into(),
            ParseError::Malformed(_) => "malformed".into(),
            ParseError::TooLarge { .. } => "too large".into(),
            ParseError::TooManyPages { .. } => "too many pages".into(),
            ParseError::Empty => "empty".into(),
            ParseError::TooMuchContent { .. } => "too much content".into(),
            ParseError::Timeout => "TIMEOUT".into(),
            ParseError::OutOfMemory { .. } => "OUT OF MEMORY".into(),
            ParseError::WorkerDied(_) => "WORKER DIED".into(),
            // Not made for PDFs.
            e @ (ParseError::BadDocument(_)
            | ParseError::ZipBomb { .. }
            | ParseError::ArchiveTooLarge { .. }
            | ParseError::ImageTooLarge { .. }
            | ParseError::Ocr(_)) => format!("UNEXPECTED: {e}"),
        },
        Err(PoolError::Start(_)) => "WORKER NOT STARTED".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damaged_pdf_gets_one_outcome_and_no_worker_dies() {
    let dir = corpus();
    let mut files = Vec::new();
    pdfs(&dir, &mut files);
    files.sort();
    assert!(
        files.len() >= 400,
        "only {} files in {}",
        files.len(),
        dir.display()
    );
    let pool = Arc::new(ParserPool::new(WorkerSettings {
        program: env!("CARGO_BIN_EXE_pdf-parser").into(),
        workers: 2,
        memory_limit: 1 << 30,
        // What lopdf makes of damaged files, not what OCR does.
        ocr: pdf_parser::OcrSettings {
            languages: String::new(),
            ..Default::default()
        },
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for path in files.clone() {
        let pool = pool.clone();
        tasks.spawn(async move {
            let bytes = std::fs::read(&path).unwrap();
            let result = pool.extract_pdf(&bytes, &Limits::default(), TIMEOUT).await;
            (path, result)
        });
    }
    let mut outcomes = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (path, result) = joined.expect("no task panics");
        assert!(
            outcomes.insert(path, result).is_none(),
            "a file got two outcomes"
        );
    }
    assert_eq!(outcomes.len(), files.len(), "every file gets an outcome");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for (path, result) in &outcomes {
        let kind = kind(result);
        if kind.chars().all(|c| !c.is_lowercase()) {
            bad.push(format!("{}: {kind}: {result:?}", path.display()));
        }
        *counts.entry(kind).or_default() += 1;
    }
    eprintln!("{} files: {counts:?}", files.len());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
