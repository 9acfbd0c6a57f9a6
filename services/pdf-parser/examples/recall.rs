//! Quality and speed of our PDF text extraction against poppler's
//! `pdftotext`, over the generated text fixtures.
//!
//! For every `*.pdf` under the fixture directory: our text (in process) and
//! `pdftotext`'s (one subprocess per file), word recall of ours against
//! theirs, and pages per second for both over the same files in one run.
//! For comparison, the recall of lopdf's own `Document::extract_text`.
//! Ours parses as the pdf-parser service does: in a parse worker process
//! (this program started again, kept between documents, 1 GiB of address
//! space), or with `--in-process` in place on a thread with the parser's
//! stack, which is what the workers do inside.
//!
//! ```text
//! scripts/fixtures/make-pdfs.sh
//! cargo run --release -p pdf-parser --example recall -- [FIXTURE_TEXT_DIR] [--rounds N] [--in-process]
//! ```

use pdf_parser::worker::{ParserPool, WorkerSettings, serve_if_worker};
use pdf_parser::{Extracted, Limits, extract_pdf, word_recall};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    serve_if_worker();
    // Parse as pdf-parser does: in place, on a thread with the parser's
    // stack, not on a thread started per document.
    std::thread::Builder::new()
        .stack_size(pdf_parser::PARSER_STACK)
        .spawn(|| {
            pdf_parser::large_stack_thread();
            run();
        })
        .expect("start the parsing thread")
        .join()
        .expect("the run ends without panicking");
}

fn run() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 5;
    if let Some(i) = args.iter().position(|a| a == "--rounds") {
        rounds = args[i + 1].parse().expect("--rounds N");
        args.drain(i..i + 2);
    }
    let in_process = args.iter().any(|a| a == "--in-process");
    args.retain(|a| a != "--in-process");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the worker pool");
    let pool = ParserPool::new(
        WorkerSettings::this_program(1, 1 << 30, pdf_parser::OcrSettings::default())
            .expect("this program's path"),
    );
    let timeout = Duration::from_secs(60);
    let extract = |bytes: &[u8], limits: &Limits| -> Extracted {
        if in_process {
            extract_pdf(bytes, limits).expect("our extraction")
        } else {
            runtime
                .block_on(pool.extract_pdf(bytes, limits, timeout))
                .expect("our extraction")
        }
    };
    let dir = args.first().map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var("FIXTURE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fixtures/pdf")
            });
        base.join("text")
    });
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/fixtures/make-pdfs.sh first",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pdf"))
        .collect();
    files.sort();

    let limits = Limits::default();
    let (mut ours_time, mut theirs_time) = (Duration::ZERO, Duration::ZERO);
    let mut total_pages = 0;
    let mut by_producer: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    println!(
        "| file | pages | words (pdftotext) | words (ours) | recall (ours) | recall (lopdf extract_text) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut naive_all = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).expect("read fixture");
        let mut ours = None;
        let mut theirs = String::new();
        for _ in 0..rounds {
            let start = Instant::now();
            ours = Some(extract(&bytes, &limits));
            ours_time += start.elapsed();
            let start = Instant::now();
            let out = Command::new("pdftotext")
                .args(["-enc", "UTF-8"])
                .arg(file)
                .arg("-")
                .output()
                .expect("run pdftotext (apt-get install poppler-utils)");
            theirs_time += start.elapsed();
            theirs = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let ours = ours.expect("at least one round");
        total_pages += ours.page_count * rounds;
        let recall = word_recall(&ours.full_text(), &theirs);
        let naive = lopdf::Document::load_mem(&bytes)
            .and_then(|d| d.extract_text(&(1..=ours.page_count as u32).collect::<Vec<_>>()))
            .unwrap_or_default();
        let naive_recall = word_recall(&naive, &theirs);
        naive_all.push(naive_recall);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let producer = name.split('-').next().unwrap_or("").to_string();
        by_producer.entry(producer).or_default().push(recall);
        println!(
            "| {name} | {} | {} | {} | {recall:.4} | {naive_recall:.4} |",
            ours.page_count,
            theirs.split_whitespace().count(),
            ours.word_count()
        );
    }
    let all: Vec<f64> = by_producer.values().flatten().copied().collect();
    println!("\n| producer | files | mean recall |");
    println!("| --- | ---: | ---: |");
    for (producer, recalls) in &by_producer {
        println!(
            "| {producer} | {} | {:.4} |",
            recalls.len(),
            recalls.iter().sum::<f64>() / recalls.len() as f64
        );
    }
    println!(
        "\nmean word recall: {:.4} over {} files (lopdf extract_text: {:.4})",
        all.iter().sum::<f64>() / all.len().max(1) as f64,
        all.len(),
        naive_all.iter().sum::<f64>() / naive_all.len().max(1) as f64
    );
    let rate = |d: Duration| total_pages as f64 / d.as_secs_f64();
    println!(
        "speed over {total_pages} pages ({rounds} rounds): ours {:.0} pages/s ({:.1} ms total), pdftotext {:.0} pages/s ({:.1} ms total)",
        rate(ours_time),
        ours_time.as_secs_f64() * 1000.0,
        rate(theirs_time),
        theirs_time.as_secs_f64() * 1000.0
    );
}
