//! The parse worker pool against workers that die or misbehave (small
//! shell scripts standing in for a worker that a document crashed) and
//! against the real pdf-parser binary: every failure is an error for that
//! document alone, and the pool starts a new worker for the next.

use pdf_parser::worker::{ParserPool, PoolError, WorkerSettings};
use pdf_parser::{Limits, ParseError};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

/// An executable script in a fresh directory.
fn script(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdf-worker-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("worker.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn pool(program: PathBuf) -> ParserPool {
    ParserPool::new(WorkerSettings {
        program,
        workers: 1,
        memory_limit: 256 << 20,
        ocr: pdf_parser::OcrSettings::default(),
    })
}

fn pdf() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hello.pdf");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn parse(pool: &ParserPool, timeout: Duration) -> Result<pdf_parser::Extracted, PoolError> {
    pool.extract_pdf(&pdf(), &Limits::default(), timeout).await
}

fn died(result: Result<pdf_parser::Extracted, PoolError>) -> String {
    match result {
        Err(PoolError::Parse(ParseError::WorkerDied(why))) => why,
        other => panic!("expected a dead worker, got {other:?}"),
    }
}

#[tokio::test]
async fn an_abort_is_a_failure_of_that_document() {
    let pool = pool(script("abort", "kill -ABRT $$"));
    let why = died(parse(&pool, Duration::from_secs(30)).await);
    assert!(why.contains("SIGABRT"), "{why}");
    // And again: a new worker each time, no stuck pool.
    let why = died(parse(&pool, Duration::from_secs(30)).await);
    assert!(why.contains("SIGABRT"), "{why}");
}

#[tokio::test]
async fn a_stack_overflow_and_an_allocation_failure_are_named() {
    let overflow = pool(script(
        "overflow",
        "echo \"thread 'pdf-parse-worker' has overflowed its stack\" >&2\n\
         echo 'fatal runtime error: stack overflow' >&2\nkill -ABRT $$",
    ));
    let why = died(parse(&overflow, Duration::from_secs(30)).await);
    assert!(why.contains("stack of 64 MiB overflowed"), "{why}");
    let oom = pool(script(
        "oom",
        "echo 'memory allocation of 1048576 bytes failed' >&2\nkill -ABRT $$",
    ));
    assert_eq!(
        parse(&oom, Duration::from_secs(30)).await,
        Err(PoolError::Parse(ParseError::OutOfMemory {
            limit: 256 << 20
        }))
    );
}

#[tokio::test]
async fn a_worker_that_does_not_answer_is_killed_at_the_time_limit() {
    let pool = pool(script("silent", "exec sleep 600"));
    assert_eq!(
        parse(&pool, Duration::from_millis(200)).await,
        Err(PoolError::Parse(ParseError::Timeout))
    );
}

#[tokio::test]
async fn an_answer_that_is_not_one_is_refused() {
    // `cat` sends the request back: its first bytes claim a short answer.
    let pool = pool(script("echo", "exec cat"));
    let why = died(parse(&pool, Duration::from_secs(30)).await);
    assert!(why.contains("unreadable"), "{why}");
}

#[tokio::test]
async fn a_missing_program_is_not_the_documents_fault() {
    let pool = pool(PathBuf::from("/nonexistent/pdf-parser"));
    assert!(matches!(
        parse(&pool, Duration::from_secs(30)).await,
        Err(PoolError::Start(_))
    ));
}

#[tokio::test]
async fn the_real_worker_parses_one_document_after_another() {
    let pool = pool(env!("CARGO_BIN_EXE_pdf-parser").into());
    for _ in 0..3 {
        let x = parse(&pool, Duration::from_secs(60)).await.unwrap();
        assert_eq!(x.page_count, 1);
        assert_eq!(x.full_text(), "Hello from a worker");
    }
    assert_eq!(
        pool.extract_pdf(
            b"%PDF-1.4\n garbage",
            &Limits::default(),
            Duration::from_secs(60)
        )
        .await
        .map_err(|e| e.to_string().contains("damaged")),
        Err(true)
    );
    assert_eq!(
        pool.extract_pdf(b"", &Limits::default(), Duration::from_secs(60))
            .await,
        Err(PoolError::Parse(ParseError::Empty))
    );
}

#[tokio::test]
async fn a_killed_worker_leaves_no_temporary_files() {
    let pool = pool(script(
        "tmpdir",
        "head -c 4096 /dev/zero > \"$TMPDIR/page.png\"\necho \"tmp=$TMPDIR\" >&2\nkill -KILL $$",
    ));
    let why = died(parse(&pool, Duration::from_secs(30)).await);
    let dir = why
        .rsplit("tmp=")
        .next()
        .filter(|d| d.starts_with('/'))
        .unwrap_or_else(|| panic!("the worker's TMPDIR: {why}"));
    assert!(
        dir.contains("pdf-parser-worker-"),
        "a directory of its own: {dir}"
    );
    assert!(
        !std::path::Path::new(dir).exists(),
        "{dir} is removed with the worker"
    );
}
