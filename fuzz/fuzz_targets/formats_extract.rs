//! pdf-parser's readers beside PDF (text in any charset, HTML, DOCX, ODT,
//! PPTX, spreadsheets, EPUB, e-mail) on arbitrary bytes: no panic, no
//! hang, and what comes out keeps the limits. The first byte picks the
//! format; scripts/fuzz seeds each with the test documents. Images are left
//! out: their OCR runs Tesseract as a process per input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pdf_parser::{Format, Limits, OcrSettings, extract};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let formats: Vec<Format> = Format::ALL
        .into_iter()
        .filter(|f| !matches!(f, Format::Pdf | Format::Image))
        .collect();
    let format = formats[usize::from(pick) % formats.len()];
    let limits = Limits {
        max_pages: 64,
        max_chars: 200_000,
        deadline: Instant::now().checked_add(Duration::from_secs(5)),
        ..Limits::default()
    };
    let ocr = OcrSettings {
        languages: String::new(),
        ..OcrSettings::default()
    };
    if let Ok(x) = extract(format, bytes, &limits, &ocr) {
        assert!(
            x.pages.len() <= limits.max_pages,
            "{format:?}: {} pages",
            x.pages.len()
        );
        let chars = x.full_text().chars().count();
        assert!(chars <= limits.max_chars, "{format:?}: {chars} characters");
        let _ = x.word_count();
    }
});
