//! Text extraction on the real-world PDF corpus (scripts/fixtures/pdf-corpus.tsv):
//! word recall, reading order and pages per second of pdf-parser
//! (`extract_pdf`, the text layer, no OCR), `pdftotext` (poppler, default
//! reading-order mode), lopdf's `Document::extract_text`, and with the
//! `competitors` feature the `pdf-extract` and `pdf_oxide` crates, in one
//! run. References: `pdftotext -raw` (content-stream order) and
//! `pdftotext -layout` (physical layout). Method: docs/PDF-QUALITY.md.
//!
//! ```text
//! scripts/fixtures/fetch-pdf-corpus.sh
//! cargo run --release -p artifact-pdf-bench --bin bench-pdf-corpus -- [--corpus DIR] [--rounds N] [--only NAME,NAME]
//! ```

use artifact_pdf_bench::{Entry, manifest};
use pdf_parser::{Limits, extract_pdf, order_parts, word_recall};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One extractor's text of a document, a string per page, or why it failed.
type Pages = Result<Vec<String>, String>;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Extractor {
    Ours,
    Pdftotext,
    Lopdf,
    #[cfg(feature = "competitors")]
    PdfExtract,
    #[cfg(feature = "competitors")]
    PdfOxide,
}

const EXTRACTORS: &[Extractor] = &[
    Extractor::Ours,
    Extractor::Pdftotext,
    Extractor::Lopdf,
    #[cfg(feature = "competitors")]
    Extractor::PdfExtract,
    #[cfg(feature = "competitors")]
    Extractor::PdfOxide,
];

impl Extractor {
    fn name(self) -> &'static str {
        match self {
            Extractor::Ours => "pdf-parser",
            Extractor::Pdftotext => "pdftotext",
            Extractor::Lopdf => "lopdf extract_text",
            #[cfg(feature = "competitors")]
            Extractor::PdfExtract => "pdf-extract 0.12",
            #[cfg(feature = "competitors")]
            Extractor::PdfOxide => "pdf_oxide 0.3",
        }
    }

    fn run(self, path: &Path, bytes: &[u8]) -> Pages {
        match self {
            Extractor::Ours => extract_pdf(bytes, &Limits::default())
                .map(|x| x.pages)
                .map_err(|e| e.to_string()),
            Extractor::Pdftotext => pdftotext(path, None),
            Extractor::Lopdf => caught(|| {
                let doc = lopdf::Document::load_mem(bytes).map_err(|e| e.to_string())?;
                Ok(doc
                    .get_pages()
                    .keys()
                    .map(|&n| doc.extract_text(&[n]).unwrap_or_default())
                    .collect())
            }),
            #[cfg(feature = "competitors")]
            Extractor::PdfExtract => caught(|| {
                pdf_extract::extract_text_from_mem_by_pages(bytes).map_err(|e| e.to_string())
            }),
            #[cfg(feature = "competitors")]
            Extractor::PdfOxide => caught(|| {
                let doc = pdf_oxide::PdfDocument::from_bytes(bytes.to_vec())
                    .map_err(|e| e.to_string())?;
                let count = doc.page_count().map_err(|e| e.to_string())?;
                Ok((0..count)
                    .map(|i| doc.extract_text(i).unwrap_or_default())
                    .collect())
            }),
        }
    }
}

/// Runs an extractor that may panic on input it does not expect.
fn caught(f: impl FnOnce() -> Pages) -> Pages {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err("panicked".into()))
}

/// `pdftotext [mode] file -`, split into pages at form feeds.
fn pdftotext(path: &Path, mode: Option<&str>) -> Pages {
    let out = Command::new("pdftotext")
        .args(mode)
        .args(["-enc", "UTF-8"])
        .arg(path)
        .arg("-")
        .output()
        .map_err(|e| format!("pdftotext: {e} (apt-get install poppler-utils)"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pages: Vec<String> = text.split('\u{c}').map(str::to_owned).collect();
    // pdftotext ends every page, the last one too, with a form feed.
    if pages.last().is_some_and(|p| p.is_empty()) {
        pages.pop();
    }
    Ok(pages)
}

/// Reading order of a document: Σ 2·LCS / Σ (|ours| + |reference|) over its
/// pages, page i against page i (a missing page is empty).
fn order(ours: &[String], reference: &[String]) -> f64 {
    let n = ours.len().max(reference.len());
    let (mut common, mut total) = (0, 0);
    for i in 0..n {
        let page = |p: &[String]| p.get(i).cloned().unwrap_or_default();
        let (c, t) = order_parts(&page(ours), &page(reference));
        common += c;
        total += t;
    }
    if total == 0 {
        1.0
    } else {
        common as f64 / total as f64
    }
}

#[derive(Default, Clone, Copy)]
struct Score {
    recall: f64,
    order_raw: f64,
    order_layout: f64,
}

fn main() {
    // Parse as pdf-parser does: on a thread with the parser's stack.
    std::thread::Builder::new()
        .stack_size(pdf_parser::PARSER_STACK)
        .spawn(|| {
            pdf_parser::large_stack_thread();
            run();
        })
        .expect("start the bench thread")
        .join()
        .expect("the bench ends without panicking");
}

fn run() {
    let mut args = std::env::args().skip(1);
    let mut corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pdf-corpus/pdf");
    let mut rounds = 3;
    let mut only: Option<Vec<String>> = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--corpus" => corpus = PathBuf::from(value()),
            "--rounds" => rounds = value().parse().expect("--rounds N"),
            "--only" => only = Some(value().split(',').map(str::to_owned).collect()),
            _ => panic!("unknown argument {arg}; see the doc comment of this file"),
        }
    }
    let entries: Vec<Entry> = manifest()
        .expect("scripts/fixtures/pdf-corpus.tsv")
        .into_iter()
        .filter(|e| only.as_ref().is_none_or(|o| o.contains(&e.name)))
        .collect();
    // A competitor's panic is counted as its failure, not printed.
    std::panic::set_hook(Box::new(|_| {}));

    let mut docs = Vec::new();
    for entry in &entries {
        let path = corpus.join(format!("{}.pdf", entry.name));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/fixtures/fetch-pdf-corpus.sh first",
                path.display()
            )
        });
        let raw = pdftotext(&path, Some("-raw")).expect("pdftotext -raw");
        let layout = pdftotext(&path, Some("-layout")).expect("pdftotext -layout");
        docs.push((entry, path, bytes, raw, layout));
    }
    let total_pages: usize = docs.iter().map(|d| d.3.len()).sum();

    let mut scores: BTreeMap<Extractor, Vec<Score>> = BTreeMap::new();
    let mut failures: BTreeMap<Extractor, Vec<String>> = BTreeMap::new();
    let mut times: BTreeMap<Extractor, Duration> = BTreeMap::new();
    for &x in EXTRACTORS {
        for (entry, path, bytes, raw, layout) in &docs {
            let mut pages = Err(String::new());
            for _ in 0..rounds.max(1) {
                let start = Instant::now();
                pages = x.run(path, bytes);
                *times.entry(x).or_default() += start.elapsed();
            }
            let pages = pages.unwrap_or_else(|e| {
                failures
                    .entry(x)
                    .or_default()
                    .push(format!("{}: {}", entry.name, first_line(&e)));
                Vec::new()
            });
            scores.entry(x).or_default().push(Score {
                recall: word_recall(&pages.join("\n"), &raw.join("\n")),
                order_raw: order(&pages, raw),
                order_layout: order(&pages, layout),
            });
        }
    }

    println!("| file | kind | pages | words (raw) | {} |", {
        EXTRACTORS
            .iter()
            .map(|x| x.name())
            .collect::<Vec<_>>()
            .join(" | ")
    });
    println!(
        "| --- | --- | ---: | ---: |{}",
        " ---: |".repeat(EXTRACTORS.len())
    );
    for (i, (entry, _, _, raw, _)) in docs.iter().enumerate() {
        let words: usize = raw.iter().map(|p| pdf_parser::words(p).len()).sum();
        let cells: Vec<String> = EXTRACTORS
            .iter()
            .map(|x| {
                let s = scores[x][i];
                format!("{:.2} / {:.2}", s.recall, s.order_raw)
            })
            .collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            entry.name,
            entry.kind,
            raw.len(),
            words,
            cells.join(" | ")
        );
    }
    println!("\ncells: word recall / order against pdftotext -raw\n");

    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        k.dedup();
        k
    };
    println!(
        "| extractor | recall | order (raw) | order (layout) | {} | failed | pages/s |",
        kinds
            .iter()
            .map(|k| format!("order (raw), {k}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "| --- | ---: | ---: | ---: |{} ---: | ---: |",
        " ---: |".repeat(kinds.len())
    );
    for &x in EXTRACTORS {
        let s = &scores[&x];
        let mean = |f: fn(&Score) -> f64| s.iter().map(f).sum::<f64>() / s.len().max(1) as f64;
        let per_kind: Vec<String> = kinds
            .iter()
            .map(|k| {
                let of_kind: Vec<f64> = docs
                    .iter()
                    .zip(s)
                    .filter(|(d, _)| d.0.kind == *k)
                    .map(|(_, s)| s.order_raw)
                    .collect();
                format!(
                    "{:.3}",
                    of_kind.iter().sum::<f64>() / of_kind.len().max(1) as f64
                )
            })
            .collect();
        let seconds = times[&x].as_secs_f64();
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.0} |",
            x.name(),
            mean(|s| s.recall),
            mean(|s| s.order_raw),
            mean(|s| s.order_layout),
            per_kind.join(" | "),
            failures.get(&x).map_or(0, Vec::len),
            (total_pages * rounds.max(1)) as f64 / seconds
        );
    }
    println!(
        "\n{} files, {total_pages} pages, {rounds} rounds; means over files",
        docs.len()
    );
    for (x, failed) in &failures {
        for f in failed {
            println!("failed: {}: {f}", x.name());
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}
