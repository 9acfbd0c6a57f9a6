//! OCR with Tesseract, and PDF pages rendered for it with poppler's
//! `pdftoppm`, both run as programs (the CLI, not a binding).
//!
//! Why the CLI: each run is a child of the parse worker, so it inherits
//! the worker's address-space limit, is killed at the document's deadline
//! and, should leptonica or Tesseract crash on a hostile image, takes only
//! itself down; Debian's packages are all it needs (a binding would add
//! libtesseract-dev, clang for bindgen and C code inside the worker).
//! Its `tsv` output gives each word's confidence.

use crate::{Extracted, Limits, ParseError, plain};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use wait_timeout::ChildExt;

/// How OCR is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrSettings {
    /// Tesseract's language list (`-l`), e.g. `eng` or `eng+deu`.
    pub languages: String,
    /// A PDF page with fewer characters of text than this is OCRed.
    pub min_page_chars: usize,
    /// PDF pages OCRed at most per document; further pages keep their
    /// own text.
    pub max_pages: usize,
    /// Resolution PDF pages are rendered at, in dots per inch.
    pub dpi: u32,
    /// Images with more pixels (width × height, first frame) are refused
    /// before they are decoded.
    pub max_image_pixels: u64,
}

impl Default for OcrSettings {
    fn default() -> Self {
        OcrSettings {
            languages: "eng".into(),
            min_page_chars: 20,
            max_pages: 50,
            dpi: 300,
            max_image_pixels: 40_000_000,
        }
    }
}

/// Bytes of a program's output read at most: Tesseract's TSV of a dense
/// page is some 100 kB.
const MAX_OUTPUT: usize = 64 << 20;

/// Checks, at start, that the programs and languages are installed; the
/// error names what to install.
pub fn check_installed(settings: &OcrSettings) -> Result<(), String> {
    let out = Command::new("tesseract")
        .arg("--list-langs")
        .output()
        .map_err(|e| format!("cannot run tesseract ({e}): apt-get install tesseract-ocr"))?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let have: Vec<&str> = listed.lines().skip(1).map(str::trim).collect();
    for lang in settings.languages.split('+') {
        if !have.contains(&lang) {
            return Err(format!(
                "tesseract has no language {lang:?} (PARSE_OCR_LANGUAGES): install tesseract-ocr-{lang}"
            ));
        }
    }
    Command::new("pdftoppm")
        .arg("-v")
        .output()
        .map_err(|e| format!("cannot run pdftoppm ({e}): apt-get install poppler-utils"))?;
    Ok(())
}

/// Text recognised on one or more pages, with its words' mean confidence.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recognised {
    /// Text per page, lines separated by `\n`, paragraphs by a blank line.
    pub pages: Vec<String>,
    /// Sum of the words' confidences (0–100) and their number.
    pub confidence_sum: f64,
    pub words: usize,
}

/// The text of an image (PNG, JPEG, TIFF; every page of a multi-page
/// TIFF), within `limits`.
pub(crate) fn image(
    bytes: &[u8],
    limits: &Limits,
    settings: &OcrSettings,
) -> Result<Extracted, ParseError> {
    let size = imagesize::blob_size(bytes)
        .map_err(|e| ParseError::BadDocument(format!("not a readable image: {e}")))?;
    let pixels = size.width as u64 * size.height as u64;
    if pixels > settings.max_image_pixels {
        return Err(ParseError::ImageTooLarge {
            width: size.width as u64,
            height: size.height as u64,
            limit: settings.max_image_pixels,
        });
    }
    let dir = tempfile::tempdir().map_err(|e| ParseError::Ocr(format!("temporary dir: {e}")))?;
    let path = dir.path().join("image");
    std::fs::write(&path, bytes).map_err(|e| ParseError::Ocr(format!("temporary file: {e}")))?;
    let found = tesseract(&path, limits, settings)?;
    let mut x = Extracted {
        page_count: found.pages.len(),
        ocr_pages: (1..=found.pages.len()).collect(),
        ocr_confidence: mean(found.confidence_sum, found.words),
        ..Extracted::text(found.pages)
    };
    x.truncated = plain::truncate_pages(&mut x.pages, limits.max_chars);
    Ok(x)
}

/// OCRs the pages of `x` (extracted from the PDF `bytes`) with fewer than
/// [`OcrSettings::min_page_chars`] characters, up to
/// [`OcrSettings::max_pages`] of them, replacing a page's text by what was
/// recognised when that is longer. A page that cannot be rendered or
/// recognised is left as it was and not listed as OCRed.
pub(crate) fn pdf_pages(
    bytes: &[u8],
    x: &mut Extracted,
    limits: &Limits,
    settings: &OcrSettings,
) -> Result<(), ParseError> {
    let wanted: Vec<usize> = x
        .pages
        .iter()
        .enumerate()
        .filter(|(_, p)| p.trim().chars().count() < settings.min_page_chars)
        .map(|(i, _)| i)
        .take(settings.max_pages)
        .collect();
    if wanted.is_empty() || x.truncated {
        return Ok(());
    }
    let dir = tempfile::tempdir().map_err(|e| ParseError::Ocr(format!("temporary dir: {e}")))?;
    let pdf = dir.path().join("document.pdf");
    std::fs::write(&pdf, bytes).map_err(|e| ParseError::Ocr(format!("temporary file: {e}")))?;
    let (mut sum, mut words) = (0.0, 0);
    for i in wanted {
        let number = (i + 1).to_string();
        let root = dir.path().join("page");
        let rendered = run(
            Command::new("pdftoppm")
                .args([
                    "-r",
                    &settings.dpi.to_string(),
                    "-gray",
                    "-png",
                    "-singlefile",
                ])
                .args(["-f", &number, "-l", &number])
                .arg(&pdf)
                .arg(&root),
            limits.deadline,
        );
        // A page poppler cannot render keeps the text lopdf found; only
        // running out of time ends the document.
        let found =
            match rendered.and_then(|_| tesseract(&root.with_extension("png"), limits, settings)) {
                Ok(found) => found,
                Err(ParseError::Ocr(_)) => continue,
                Err(e) => return Err(e),
            };
        let text = found.pages.join("\n");
        if text.trim().chars().count() > x.pages[i].trim().chars().count() {
            x.pages[i] = text;
        }
        x.ocr_pages.push(i + 1);
        sum += found.confidence_sum;
        words += found.words;
    }
    x.ocr_confidence = mean(sum, words);
    x.truncated = plain::truncate_pages(&mut x.pages, limits.max_chars);
    Ok(())
}

fn mean(sum: f64, n: usize) -> Option<f32> {
    (n > 0).then(|| (sum / n as f64) as f32)
}

fn tesseract(
    image: &Path,
    limits: &Limits,
    settings: &OcrSettings,
) -> Result<Recognised, ParseError> {
    let tsv = run(
        Command::new("tesseract")
            .arg(image)
            .arg("stdout")
            .args(["-l", &settings.languages])
            .arg("tsv")
            // One thread: the stage's parallelism is its workers.
            .env("OMP_THREAD_LIMIT", "1"),
        limits.deadline,
    )?;
    Ok(parse_tsv(&String::from_utf8_lossy(&tsv)))
}

/// Tesseract's TSV (level, page, block, paragraph, line, word, left, top,
/// width, height, confidence, text) as text per page: words of a line
/// joined by spaces, paragraphs separated by a blank line.
pub(crate) fn parse_tsv(tsv: &str) -> Recognised {
    let mut pages: Vec<String> = Vec::new();
    let (mut sum, mut words) = (0.0, 0);
    let mut last: Option<(u32, u32, u32, u32)> = None;
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.splitn(12, '\t').collect();
        let [level, page, block, par, line_no, _, _, _, _, _, conf, text] = cols[..] else {
            continue;
        };
        let num = |s: &str| s.parse::<u32>().unwrap_or(0);
        let (Ok(conf), text) = (conf.parse::<f64>(), text.trim()) else {
            continue;
        };
        let page = num(page).max(1) as usize;
        while pages.len() < page {
            pages.push(String::new());
            last = None;
        }
        if level != "5" || text.is_empty() || conf < 0.0 {
            continue;
        }
        let key = (num(block), num(par), num(line_no), page as u32);
        let out = &mut pages[page - 1];
        match last {
            Some(k) if k == key => out.push(' '),
            Some(k) if (k.0, k.1) == (key.0, key.1) => out.push('\n'),
            Some(_) => out.push_str("\n\n"),
            None => {}
        }
        out.push_str(text);
        last = Some(key);
        sum += conf;
        words += 1;
    }
    if pages.is_empty() {
        pages.push(String::new());
    }
    Recognised {
        pages,
        confidence_sum: sum,
        words,
    }
}

/// Runs a program to its end and returns its stdout; killed at
/// `deadline` ([`ParseError::Timeout`]). It dies with the thread that
/// started it, so a worker killed for its time takes it along.
pub(crate) fn run(cmd: &mut Command, deadline: Option<Instant>) -> Result<Vec<u8>, ParseError> {
    use std::os::unix::process::CommandExt;
    let program = cmd.get_program().to_string_lossy().into_owned();
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ParseError::Ocr(format!("cannot run {program}: {e}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let read = (&mut stdout)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf);
        // Drain the rest so the program is not blocked on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        read.map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 << 10).read_to_end(&mut buf);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        buf
    });
    let waited = match deadline {
        Some(d) => child.wait_timeout(d.saturating_duration_since(Instant::now())),
        None => child.wait().map(Some),
    };
    let status = match waited {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ParseError::Timeout);
        }
    };
    let out = out.join().map_err(|_| ParseError::Ocr("reader".into()))?;
    let err = err.join().unwrap_or_default();
    if !status.success() {
        let err = String::from_utf8_lossy(&err);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(ParseError::Ocr(format!(
            "{program} failed ({status}): {}",
            last.chars().take(300).collect::<String>()
        )));
    }
    let out = out.map_err(|e| ParseError::Ocr(format!("reading {program}'s output: {e}")))?;
    if out.len() > MAX_OUTPUT {
        return Err(ParseError::Ocr(format!(
            "{program} wrote more than {MAX_OUTPUT} bytes"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_becomes_lines_and_paragraphs_with_mean_confidence() {
        let tsv = "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n\
            1\t1\t0\t0\t0\t0\t0\t0\t100\t100\t-1\t\n\
            5\t1\t1\t1\t1\t1\t0\t0\t1\t1\t90\tHello\n\
            5\t1\t1\t1\t1\t2\t0\t0\t1\t1\t80\tworld\n\
            5\t1\t1\t1\t2\t1\t0\t0\t1\t1\t70\tsecond\n\
            5\t1\t2\t1\t1\t1\t0\t0\t1\t1\t60\tnext\n\
            5\t1\t2\t1\t1\t2\t0\t0\t1\t1\t-1\t \n\
            5\t2\t1\t1\t1\t1\t0\t0\t1\t1\t100\tpage2\n";
        let r = parse_tsv(tsv);
        assert_eq!(r.pages, vec!["Hello world\nsecond\n\nnext", "page2"]);
        assert_eq!(r.words, 5);
        assert_eq!(r.confidence_sum, 400.0);
        assert_eq!(parse_tsv("").pages, vec![""]);
    }
}
