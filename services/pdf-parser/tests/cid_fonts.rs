//! CID fonts without ToUnicode: the text of their glyphs comes from
//! Adobe's character collection (poppler-data's cidToUnicode tables), as
//! in pdftotext.
//!
//! `data/platex-sample.pdf` is `sample.pdf` of the platexcheat package
//! (MIT licence, TeX Live 2022, Debian's texlive-lang-japanese
//! 2022.20230122-1): pLaTeX through dvipdfmx, its Japanese text in
//! embedded CID-keyed CFF fonts (Adobe-Japan1, Identity-H) without
//! ToUnicode. Needs `apt-get install poppler-data poppler-utils`.

use pdf_parser::{Limits, extract_pdf, word_recall};
use std::path::Path;
use std::process::Command;

#[test]
fn japanese_text_of_cid_fonts_without_to_unicode_is_read() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/platex-sample.pdf");
    let bytes = std::fs::read(&path).unwrap();
    let ours = extract_pdf(&bytes, &Limits::default()).unwrap().full_text();
    let out = Command::new("pdftotext")
        .args(["-enc", "UTF-8"])
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (apt-get install poppler-utils)");
    let reference = String::from_utf8(out.stdout).unwrap();
    assert!(
        reference.contains("便利に"),
        "pdftotext lacks poppler-data?"
    );
    for phrase in ["をもっと便利に", "有益なサイト", "日本語情報の宝庫"] {
        assert!(ours.contains(phrase), "no {phrase:?} in {ours}");
    }
    let recall = word_recall(&ours, &reference);
    assert!(recall > 0.97, "recall {recall} against pdftotext");
}
