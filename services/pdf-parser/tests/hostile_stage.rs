//! Hostile PDFs through the pdf-parser stage (its `StageLogic`, reading
//! from a real file blob store, parsing in real worker processes of the
//! pdf-parser binary): a valid PDF with one huge array, one with an object
//! stream that inflates to almost 64 MiB, and one nested thousands deep.
//! lopdf builds every object when it loads a file, so the first two cost
//! gigabytes in whatever process parses them. Asserted: each fails
//! permanently with a reason naming the limit it hit; the stage's own peak
//! resident set grows by little more than the document; no worker's peak
//! exceeds the worker limit; and the stage parses a normal PDF afterwards.
//!
//! One test in this binary, so the peaks measured are its alone.

use artifact_domain::{
    ArtifactContext, ArtifactId, Generation, LocationCheck, LocationVerified, Outcome,
};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{RecordContext, StageError, StageLogic};
use lopdf::{Dictionary, Stream};
use pdf_parser::Limits;
use pdf_parser::stage::ParseStage;
use pdf_parser::worker::{ParserPool, WorkerSettings};
use std::path::PathBuf;
use std::time::Duration;

/// Address space of a worker in this test.
const WORKER_LIMIT: u64 = 512 << 20;

/// A PDF of one page showing `Hello from page one`, with `extra`
/// objects (their bodies, numbered from 6) and, if given, `pages_extra`
/// inside the page tree's dictionary.
fn pdf(extra: &[Vec<u8>], pages_extra: &[u8]) -> Vec<u8> {
    let content = b"BT /F1 12 Tf 72 700 Td (Hello from page one) Tj ET";
    let mut pages = b"<< /Type /Pages /Kids [3 0 R] /Count 1 ".to_vec();
    pages.extend_from_slice(pages_extra);
    pages.extend_from_slice(b" >>");
    let mut stream = format!("<< /Length {} >>\nstream\n", content.len()).into_bytes();
    stream.extend_from_slice(content);
    stream.extend_from_slice(b"\nendstream");
    let mut objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        pages,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
          /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_vec(),
        stream,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_vec(),
    ];
    objects.extend(extra.iter().cloned());
    let mut out = b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = vec![];
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// An array of `n` zeros.
fn zeros(n: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    body.extend_from_slice(&b"0 ".repeat(n));
    body.push(b']');
    body
}

/// An object stream holding one object, an array of zeros that takes
/// `bytes` bytes, Flate-compressed (to some 60 kB for 64 MiB).
fn inflating_object_stream(bytes: usize) -> Vec<u8> {
    let mut content = b"100 0 ".to_vec();
    let first = content.len();
    content.extend_from_slice(&zeros(bytes / 2 - 8));
    let mut dict = Dictionary::new();
    dict.set("Type", "ObjStm");
    dict.set("N", 1);
    dict.set("First", first as i64);
    let mut stream = Stream::new(dict, content);
    stream.compress().expect("compress");
    let mut body = format!(
        "<< /Type /ObjStm /N 1 /First {first} /Filter /FlateDecode /Length {} >>\nstream\n",
        stream.content.len()
    )
    .into_bytes();
    body.extend_from_slice(&stream.content);
    body.extend_from_slice(b"\nendstream");
    body
}

fn peak_rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// Peak resident set of the waited-for children (the workers), in bytes.
fn children_peak_rss() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss as u64 * 1024
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
}

fn input(location: String, size: usize) -> LocationVerified {
    LocationVerified {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: location.clone(),
            declared_content_type: Some("application/pdf".into()),
            filename: None,
            detected_content_type: Some("application/pdf".into()),
            size_bytes: Some(size as i64),
            sha256: None,
            text_location: None,
        },
        outcome: Outcome::Succeeded,
        result: Some(LocationCheck {
            resolved_location: location,
            size_bytes: size as i64,
            sha256: String::new(),
        }),
        processed_at: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pdfs_fail_within_the_worker_limit_and_the_stage_goes_on() {
    let root: PathBuf = std::env::temp_dir().join(format!("pdf-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    let stage = ParseStage {
        blobs: blobs.clone(),
        limits: Limits::default(),
        timeout: Duration::from_secs(120),
        parser: ParserPool::new(WorkerSettings {
            program: env!("CARGO_BIN_EXE_pdf-parser").into(),
            workers: 1,
            memory_limit: WORKER_LIMIT,
            ocr: pdf_parser::OcrSettings::default(),
        }),
        max_page_texts: 1000,
    };
    let ctx = RecordContext {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        attempt: 1,
        traceparent: String::new(),
    };
    let cases = [
        // 8 million integers in a 16 MB file.
        Case {
            name: "huge-array",
            bytes: pdf(&[zeros(8 << 20)], b""),
        },
        // A 60 kB file whose one object stream inflates to almost 64 MiB
        // (lopdf's cap on a stream it decompresses while loading).
        Case {
            name: "inflating-object-stream",
            bytes: pdf(&[inflating_object_stream((64 << 20) - 4096)], b""),
        },
        // The page tree's dictionary holds arrays nested 100 000 deep.
        Case {
            name: "deep-nesting",
            bytes: pdf(
                &[],
                &[
                    b"/Deep ".as_slice(),
                    &b"[".repeat(100_000),
                    &b"]".repeat(100_000),
                ]
                .concat(),
            ),
        },
    ];
    for case in &cases {
        let location = blobs.location(&format!("{}.pdf", case.name));
        blobs.put(&location, &case.bytes).await.unwrap();
        let input = input(location, case.bytes.len());
        std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident set");
        let start = peak_rss_kib("VmRSS:");
        let result = stage.process(&input, &ctx).await;
        let growth = (peak_rss_kib("VmHWM:").saturating_sub(start) << 10) as usize;
        let reason = match result {
            Err(StageError::Permanent(reason)) => reason,
            other => panic!("{}: expected a permanent failure, got {other:?}", case.name),
        };
        eprintln!(
            "{}: {} bytes, the stage's peak grew by {} MiB: {reason}",
            case.name,
            case.bytes.len(),
            growth >> 20
        );
        assert!(
            growth < case.bytes.len() + (64 << 20),
            "{}: the stage's peak resident set grew by {growth} bytes",
            case.name
        );
        if case.name == "deep-nesting" {
            assert!(reason.contains("damaged"), "{}: {reason}", case.name);
        } else {
            assert!(
                reason.contains(&format!(
                    "limit of {WORKER_LIMIT} bytes (PARSE_WORKER_MEMORY_BYTES)"
                )),
                "{}: {reason}",
                case.name
            );
        }
    }
    let workers_peak = children_peak_rss();
    eprintln!("workers' peak resident set: {} MiB", workers_peak >> 20);
    assert!(
        workers_peak <= WORKER_LIMIT,
        "a worker reached {workers_peak} bytes"
    );

    let normal = pdf(&[], b"");
    let location = blobs.location("normal.pdf");
    blobs.put(&location, &normal).await.unwrap();
    let parsed = stage
        .process(&input(location, normal.len()), &ctx)
        .await
        .expect("a normal PDF parses after the hostile ones");
    assert_eq!(parsed.outcome, Outcome::Succeeded);
    let result = parsed.result.unwrap();
    assert_eq!(result.page_count, Some(1));
    assert_eq!(result.preview, "Hello from page one");
    std::fs::remove_dir_all(&root).unwrap();
}
