//! pdf-parser against real PDFs made at test time by real tools.
//!
//! The fixtures come from `scripts/fixtures/make-pdfs.sh` (ReportLab, fpdf2,
//! groff and enscript through Ghostscript, pdfTeX, qpdf, and hand-written
//! broken files). If the fixture directory (`$FIXTURE_DIR`, else
//! `target/fixtures/pdf`) lacks them, the script is run first; it needs
//! `apt-get install poppler-utils ghostscript qpdf groff enscript
//! fonts-dejavu-core texlive-latex-base` and `pip install reportlab fpdf2`.

use pdf_parser::{Limits, ParseError, extract_pdf, word_recall};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::var_os("FIXTURE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/fixtures/pdf"));
        let status = Command::new("bash")
            .arg(repo.join("scripts/fixtures/make-pdfs.sh"))
            .arg(&dir)
            .status()
            .expect("run scripts/fixtures/make-pdfs.sh");
        assert!(
            status.success(),
            "scripts/fixtures/make-pdfs.sh failed: install its tools (apt-get install poppler-utils \
             ghostscript qpdf groff enscript fonts-dejavu-core texlive-latex-base; pip install reportlab fpdf2)"
        );
        dir
    })
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pdftotext(path: &Path) -> String {
    let out = Command::new("pdftotext")
        .args(["-enc", "UTF-8"])
        .arg(path)
        .arg("-")
        .output()
        .expect("run pdftotext (apt-get install poppler-utils)");
    assert!(
        out.status.success(),
        "pdftotext failed on {}",
        path.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text_pdfs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join("text"))
        .expect("fixture text dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pdf"))
        .collect();
    files.sort();
    files
}

#[test]
fn text_pdfs_from_several_producers_match_pdftotext() {
    let files = text_pdfs();
    let mut producers = std::collections::BTreeSet::new();
    for path in &files {
        let x = extract_pdf(&std::fs::read(path).unwrap(), &Limits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reference = pdftotext(path);
        let recall = word_recall(&x.full_text(), &reference);
        assert!(
            recall >= 0.97,
            "{}: word recall {recall:.4} < 0.97",
            path.display()
        );
        // pdftotext ends every page with a form feed.
        assert_eq!(
            x.page_count,
            reference.matches('\u{c}').count(),
            "{}",
            path.display()
        );
        assert!(x.page_count >= 2, "{}: multi-page", path.display());
        producers.extend(x.metadata.producer);
    }
    assert!(producers.len() >= 3, "producers: {producers:?}");
}

#[test]
fn metadata_is_read() {
    let x = extract_pdf(&read("text/reportlab-1.pdf"), &Limits::default()).unwrap();
    assert_eq!(x.metadata.title.as_deref(), Some("Streams and Storage"));
    assert_eq!(x.metadata.author.as_deref(), Some("Fixture Author"));
    assert!(x.metadata.producer.unwrap().contains("ReportLab"));
    assert!(x.metadata.creation_date.is_some());
    let x = extract_pdf(&read("text/fpdf2-1.pdf"), &Limits::default()).unwrap();
    assert_eq!(x.metadata.title.as_deref(), Some("Streams and Storage"));
    assert!(
        x.metadata
            .creation_date
            .unwrap()
            .starts_with("D:20240102030405")
    );
}

#[test]
fn user_password_means_encrypted() {
    let result = extract_pdf(&read("encrypted-user-password.pdf"), &Limits::default());
    assert_eq!(result, Err(ParseError::Encrypted));
}

#[test]
fn empty_user_password_opens() {
    for (encrypted, plain) in [
        ("encrypted-empty-user-password.pdf", "text/reportlab-1.pdf"),
        (
            "encrypted-empty-user-password-aes256.pdf",
            "text/fpdf2-1.pdf",
        ),
    ] {
        let x = extract_pdf(&read(encrypted), &Limits::default())
            .unwrap_or_else(|e| panic!("{encrypted}: {e}"));
        let original = extract_pdf(&read(plain), &Limits::default()).unwrap();
        let recall = word_recall(&x.full_text(), &original.full_text());
        assert!(recall >= 0.99, "{encrypted}: recall {recall}");
        assert_eq!(
            x.metadata.title, original.metadata.title,
            "{encrypted}: Info strings decrypted"
        );
    }
}

#[test]
fn page_limit() {
    let bytes = read("huge-2000-pages.pdf");
    assert_eq!(
        extract_pdf(&bytes, &Limits::default()),
        Err(ParseError::TooManyPages {
            pages: 2000,
            limit: 1000
        })
    );
    let limits = Limits {
        max_pages: 2000,
        ..Limits::default()
    };
    let x = extract_pdf(&bytes, &limits).unwrap();
    assert_eq!(x.page_count, 2000);
    assert_eq!(x.pages[1999], "Page 2000 of a very long document.");
}

#[test]
fn broken_files_fail_cleanly() {
    let limits = Limits::default();
    assert!(matches!(
        extract_pdf(&read("malformed/garbage.pdf"), &limits),
        Err(ParseError::Malformed(_))
    ));
    // Half a file: lopdf may recover some objects; either way no panic.
    match extract_pdf(&read("malformed/truncated.pdf"), &limits) {
        Ok(_) | Err(ParseError::Malformed(_)) => {}
        Err(e) => panic!("truncated: {e}"),
    }
    let cyclic = extract_pdf(&read("malformed/cyclic-pages.pdf"), &limits).unwrap();
    assert_eq!(cyclic.page_count, 2, "each page once");
    assert!(cyclic.full_text().contains("cyclic tree page one"));
    assert!(cyclic.full_text().contains("cyclic tree page two"));
    // 20 000 levels deep: walked without recursion.
    let deep = extract_pdf(&read("malformed/deep-pages.pdf"), &limits).unwrap();
    assert_eq!(deep.pages, vec!["deep tree leaf"]);
    let form = extract_pdf(&read("malformed/recursive-form.pdf"), &limits).unwrap();
    assert!(
        form.full_text().starts_with("recursive form"),
        "{}",
        form.full_text()
    );
}

/// Every broken file, and damaged copies of the good ones, within a
/// deadline: no panic escapes and nothing hangs.
#[test]
fn no_input_panics_or_hangs() {
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(fixtures().join("malformed")).unwrap() {
        let path = entry.unwrap().path();
        inputs.push((path.display().to_string(), std::fs::read(&path).unwrap()));
    }
    for path in text_pdfs() {
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        for cut in [
            7,
            100,
            bytes.len() / 3,
            bytes.len() * 2 / 3,
            bytes.len() - 10,
        ] {
            inputs.push((format!("{name} cut at {cut}"), bytes[..cut].to_vec()));
        }
        // Deterministic byte damage spread over the file.
        let mut damaged = bytes.clone();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..50 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % damaged.len() as u64) as usize;
            damaged[at] = (state >> 32) as u8;
        }
        inputs.push((format!("{name} damaged"), damaged));
    }
    let count = inputs.len();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (name, bytes) in inputs {
            let result = extract_pdf(&bytes, &Limits::default());
            if tx.send((name, result.map(|x| x.page_count))).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    for _ in 0..count {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((_name, Ok(_) | Err(_))) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("extraction hung (over 120 s for {count} inputs)")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("a panic escaped extract_pdf"),
        }
    }
}
