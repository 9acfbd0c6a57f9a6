//! OCR and the formats beside PDF, on real files written at test time by
//! real tools (`scripts/fixtures/make-documents.sh`: ReportLab, poppler,
//! ImageMagick, python-docx, python-pptx, openpyxl, odfpy, Python's email
//! package), with a hostile variant each. If the fixture directory
//! (`$DOCUMENT_FIXTURE_DIR`, else `target/fixtures/documents`) lacks them,
//! the script is run first. Needs `tesseract-ocr tesseract-ocr-eng
//! poppler-utils imagemagick` and `pip install reportlab python-docx
//! python-pptx openpyxl odfpy` (scripts/install-deps).

use pdf_parser::worker::{ParserPool, WorkerSettings};
use pdf_parser::{
    Extracted, Format, Limits, OcrSettings, Office, ParseError, extract, extract_text, word_recall,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = std::env::var_os("DOCUMENT_FIXTURE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/fixtures/documents"));
        let status = Command::new("bash")
            .arg(repo.join("scripts/fixtures/make-documents.sh"))
            .arg(&dir)
            .status()
            .expect("run scripts/fixtures/make-documents.sh");
        assert!(
            status.success(),
            "scripts/fixtures/make-documents.sh failed: run scripts/install-deps"
        );
        dir
    })
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn source() -> String {
    String::from_utf8(read("source.txt")).unwrap()
}

fn run(format: Format, name: &str) -> Result<Extracted, ParseError> {
    extract(
        format,
        &read(name),
        &Limits::default(),
        &OcrSettings::default(),
    )
}

#[test]
fn scans_at_150_to_300_dpi_are_read_by_ocr() {
    for name in ["scan-150.jpg", "scan-200.png", "scan-300.tiff"] {
        let x = run(Format::Image, name).unwrap();
        let recall = word_recall(&x.full_text(), &source());
        eprintln!(
            "{name}: word recall {recall:.3}, confidence {:?}",
            x.ocr_confidence
        );
        assert!(recall >= 0.9, "{name}: recall {recall}: {}", x.full_text());
        assert_eq!(x.ocr_pages, vec![1], "{name}");
        assert_eq!(x.page_count, 1);
        let confidence = x.ocr_confidence.expect("words were recognised");
        assert!((50.0..=100.0).contains(&confidence), "{name}: {confidence}");
    }
}

#[test]
fn a_scanned_pdf_page_is_ocred_and_a_text_page_is_not() {
    let scanned = run(Format::Pdf, "scanned.pdf").unwrap();
    let recall = word_recall(&scanned.full_text(), &source());
    eprintln!("scanned.pdf: word recall {recall:.3}");
    assert!(recall >= 0.9, "recall {recall}: {}", scanned.full_text());
    assert_eq!(scanned.ocr_pages, vec![1]);
    assert!(scanned.ocr_confidence.is_some());

    let text = run(Format::Pdf, "page.pdf").unwrap();
    assert!(text.ocr_pages.is_empty());
    assert_eq!(text.ocr_confidence, None);
    assert!(word_recall(&text.full_text(), &source()) > 0.99);

    let off = OcrSettings {
        languages: String::new(),
        ..OcrSettings::default()
    };
    let without = extract(Format::Pdf, &read("scanned.pdf"), &Limits::default(), &off).unwrap();
    assert!(without.full_text().trim().is_empty(), "no text layer");
    assert!(without.ocr_pages.is_empty());
}

#[test]
fn office_documents_keep_reading_order() {
    let docx = run(Format::Office(Office::Docx), "document.docx").unwrap();
    let text = docx.full_text();
    eprintln!(
        "document.docx: word recall {:.3}",
        word_recall(&text, &source())
    );
    assert!(text.starts_with("Pipeline notes\n"), "{text}");
    assert!(word_recall(&text, &source()) > 0.99, "{text}");
    assert!(
        text.contains("stage\nparser") || text.contains("stage"),
        "{text}"
    );
    assert!(
        text.find("Every stage").unwrap() < text.find("how confident").unwrap(),
        "{text}"
    );
    assert_eq!(docx.metadata.title.as_deref(), Some("Pipeline notes"));

    let odt = run(Format::Office(Office::Odt), "document.odt").unwrap();
    let text = odt.full_text();
    eprintln!(
        "document.odt: word recall {:.3}",
        word_recall(&text, &source())
    );
    assert!(text.starts_with("Pipeline notes\n"), "{text}");
    assert!(word_recall(&text, &source()) > 0.99, "{text}");

    let pptx = run(Format::Office(Office::Pptx), "slides.pptx").unwrap();
    assert_eq!(pptx.pages.len(), 3);
    for (i, page) in pptx.pages.iter().enumerate() {
        assert!(
            page.starts_with(&format!("Slide {} title\n", i + 1)),
            "{page}"
        );
    }

    // Files slide1..3 hold Alpha, Beta, Gamma; the deck shows Gamma first.
    let reordered = run(Format::Office(Office::Pptx), "reordered.pptx").unwrap();
    assert_eq!(
        reordered.pages,
        vec![
            "Gamma slide\nBody of gamma.",
            "Alpha slide\nBody of alpha.",
            "Beta slide\nBody of beta."
        ]
    );

    let xlsx = run(Format::Office(Office::Spreadsheet), "sheet.xlsx").unwrap();
    assert_eq!(
        xlsx.pages,
        vec![
            "Stages\nstage\ttopic\trecords\nparser\tparsed\t42\nsummarizer\tsummarized\t41",
            "Notes\nharbour lighthouse keeper",
        ]
    );

    let epub = run(Format::Office(Office::Epub), "book.epub").unwrap();
    let chapters = String::from_utf8(read("chapters.txt")).unwrap();
    let chapters: Vec<&str> = chapters.lines().collect();
    assert_eq!(epub.pages.len(), 2);
    // The spine lists the second chapter first.
    assert!(epub.pages[0].contains(chapters[1]), "{:?}", epub.pages);
    assert!(epub.pages[1].contains(chapters[0]), "{:?}", epub.pages);
    assert_eq!(epub.metadata.title.as_deref(), Some("The Lighthouse"));
    assert_eq!(epub.metadata.author.as_deref(), Some("A. Keeper"));
}

#[test]
fn html_keeps_the_article_without_scripts_styles_or_navigation() {
    let x = run(Format::Html, "article.html").unwrap();
    let text = x.full_text();
    eprintln!(
        "article.html: word recall {:.3}",
        word_recall(&text, &source())
    );
    assert!(word_recall(&text, &source()) > 0.99, "{text}");
    for noise in ["SCRIPTWORD", "NAVWORD", "color: red"] {
        assert!(!text.contains(noise), "{noise} in {text}");
    }
    assert_eq!(x.metadata.title.as_deref(), Some("Pipeline notes"));
}

#[test]
fn an_email_has_its_headers_body_and_attachments() {
    let x = run(Format::Email, "message.eml").unwrap();
    let text = x.full_text();
    eprintln!(
        "message.eml: word recall {:.3}",
        word_recall(&text, &source())
    );
    assert!(
        text.contains("From: Ada Keeper <ada@example.org>"),
        "{text}"
    );
    assert!(text.contains("Subject: Weekly pipeline report"), "{text}");
    assert!(word_recall(&text, &source()) > 0.99, "{text}");
    assert!(text.contains("- records.csv (text/csv, "), "{text}");
    assert_eq!(x.metadata.title.as_deref(), Some("Weekly pipeline report"));
}

#[test]
fn text_in_legacy_charsets_declared_or_not() {
    let cases = [
        (
            "latin2.txt",
            "iso-8859-2",
            "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.\n",
        ),
        (
            "sjis.txt",
            "shift_jis",
            "日本語の文章を正しく読めるかどうかを確かめるための文です。\n",
        ),
        (
            "gbk.txt",
            "gbk",
            "这是一个用来检查中文编码是否被正确识别的句子。\n",
        ),
    ];
    for (name, charset, expected) in cases {
        let bytes = read(name);
        assert_eq!(extract_text(&bytes, Some(charset)).unwrap(), expected);
    }
    // Detected without a declaration where the text is long enough to tell.
    for (name, _, expected) in &cases[1..] {
        assert_eq!(
            extract_text(&read(name), None).unwrap(),
            *expected,
            "{name}"
        );
    }
}

#[test]
fn hostile_documents_fail_within_bounds() {
    for (format, file, entry) in [
        (Office::Docx, "bomb.docx", "word/document.xml"),
        (Office::Spreadsheet, "bomb.xlsx", "xl/worksheets/sheet1.xml"),
        (Office::Epub, "bomb.epub", "OEBPS/text/c0.xhtml"),
    ] {
        match run(Format::Office(format), file) {
            Err(ParseError::ZipBomb { name, limit, .. }) => {
                assert_eq!(name, entry);
                assert_eq!(limit, 100);
            }
            other => panic!("{file}: {other:?}"),
        }
    }
    let small = Limits {
        max_content_bytes: 1 << 20,
        max_zip_ratio: 10_000,
        ..Limits::default()
    };
    assert_eq!(
        extract(
            Format::Office(Office::Docx),
            &read("bomb.docx"),
            &small,
            &OcrSettings::default()
        )
        .unwrap_err(),
        ParseError::ArchiveTooLarge { limit: 1 << 20 }
    );
    assert_eq!(
        run(Format::Image, "huge.png").unwrap_err(),
        ParseError::ImageTooLarge {
            width: 40_000,
            height: 40_000,
            limit: 40_000_000
        }
    );
    match run(Format::Html, "endless.html") {
        Err(ParseError::BadDocument(why)) => assert!(why.contains("elements"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Tesseract is killed at the deadline.
    let hurried = Limits {
        deadline: Some(Instant::now() + Duration::from_millis(50)),
        ..Limits::default()
    };
    assert_eq!(
        extract(
            Format::Image,
            &read("scan-300.tiff"),
            &hurried,
            &OcrSettings::default()
        )
        .unwrap_err(),
        ParseError::Timeout
    );
    assert!(matches!(
        run(Format::Office(Office::Docx), "article.html"),
        Err(ParseError::BadDocument(_))
    ));
}

#[tokio::test]
async fn worker_processes_ocr_and_refuse_bombs_under_their_memory_limit() {
    let pool = ParserPool::new(WorkerSettings {
        program: env!("CARGO_BIN_EXE_pdf-parser").into(),
        workers: 1,
        memory_limit: 512 << 20,
        ocr: OcrSettings::default(),
    });
    let timeout = Duration::from_secs(120);
    let limits = Limits::default();
    let scan = pool
        .extract(Format::Image, &read("scan-200.png"), &limits, timeout)
        .await
        .unwrap();
    assert!(word_recall(&scan.full_text(), &source()) >= 0.9);
    assert_eq!(scan.ocr_pages, vec![1]);
    let bomb = pool
        .extract(
            Format::Office(Office::Docx),
            &read("bomb.docx"),
            &limits,
            timeout,
        )
        .await
        .unwrap_err();
    assert!(bomb.to_string().contains("zip bomb"), "{bomb}");
    let docx = pool
        .extract(
            Format::Office(Office::Docx),
            &read("document.docx"),
            &limits,
            timeout,
        )
        .await
        .unwrap();
    assert!(word_recall(&docx.full_text(), &source()) > 0.99);
    // Nested 5000 deep: whatever mail-parser makes of it, the worker answers
    // or dies alone, and the next document is read.
    let nested = pool
        .extract(Format::Email, &read("nested.eml"), &limits, timeout)
        .await;
    eprintln!("nested.eml: {:?}", nested.as_ref().map(|x| x.char_count()));
    assert!(
        !matches!(nested, Err(pdf_parser::worker::PoolError::Start(_))),
        "{nested:?}"
    );
    let again = pool
        .extract(Format::Email, &read("message.eml"), &limits, timeout)
        .await
        .unwrap();
    assert!(again.full_text().contains("records.csv"));
}

/// The stage itself (real worker processes, a real file blob store): a
/// scanned image succeeds with its text, the page OCRed and the
/// confidence; a text file is decoded by the charset its upload declared.
#[tokio::test]
async fn the_stage_reads_a_scan_and_a_declared_charset() {
    use artifact_domain::{ArtifactContext, ArtifactId, Generation, LocationVerified, Outcome};
    use artifact_runtime::blob::BlobStore;
    use artifact_runtime::stage::{RecordContext, StageLogic};
    use pdf_parser::stage::ParseStage;

    let root = std::env::temp_dir().join(format!("pdf-formats-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    let stage = ParseStage {
        blobs: blobs.clone(),
        limits: Limits::default(),
        timeout: Duration::from_secs(120),
        parser: ParserPool::new(WorkerSettings {
            program: env!("CARGO_BIN_EXE_pdf-parser").into(),
            workers: 1,
            memory_limit: 512 << 20,
            ocr: OcrSettings::default(),
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
    let input = |location: String, declared: Option<&str>, detected: &str| LocationVerified {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: location,
            declared_content_type: declared.map(str::to_owned),
            filename: None,
            detected_content_type: Some(detected.into()),
            size_bytes: None,
            sha256: None,
            text_location: None,
        },
        outcome: Outcome::Succeeded,
        result: None,
        processed_at: 1,
    };

    let scan = blobs.location("scan.jpg");
    blobs.put(&scan, &read("scan-150.jpg")).await.unwrap();
    let done = stage
        .process(&input(scan, None, "image/jpeg"), &ctx)
        .await
        .unwrap();
    assert_eq!(done.outcome, Outcome::Succeeded);
    let result = done.result.unwrap();
    assert_eq!(result.ocr_pages, vec![1]);
    assert_eq!(result.page_count, Some(1));
    assert!(
        result
            .ocr_confidence
            .is_some_and(|c| (50..=100).contains(&c))
    );
    let text = blobs
        .read_all(&result.text_location, 1 << 20)
        .await
        .unwrap();
    assert!(word_recall(&String::from_utf8(text).unwrap(), &source()) >= 0.9);

    // Three pages, the second a scan: each page's text beside the whole.
    let pages = blobs.location("pages.pdf");
    blobs.put(&pages, &read("pages.pdf")).await.unwrap();
    let done = stage
        .process(&input(pages, None, "application/pdf"), &ctx)
        .await
        .unwrap();
    let result = done.result.unwrap();
    assert_eq!(result.page_count, Some(3));
    assert_eq!(result.ocr_pages, vec![2]);
    let listed: Vec<(i32, bool)> = result.pages.iter().map(|p| (p.number, p.ocr)).collect();
    assert_eq!(listed, vec![(1, false), (2, true), (3, false)]);
    let mut texts = Vec::new();
    for page in &result.pages {
        let text = blobs.read_all(&page.text_location, 1 << 20).await.unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(page.char_count, text.chars().count() as i64);
        texts.push(text);
    }
    assert_eq!(
        texts[0],
        "The first page speaks of harbours and lighthouses."
    );
    assert!(word_recall(&texts[1], &source()) >= 0.9, "{}", texts[1]);
    assert_eq!(
        texts[2],
        "The third page ends the document with a short farewell."
    );
    let whole = blobs
        .read_all(&result.text_location, 1 << 20)
        .await
        .unwrap();
    assert_eq!(String::from_utf8(whole).unwrap(), texts.join("\u{c}"));

    let latin2 = blobs.location("latin2.txt");
    blobs.put(&latin2, &read("latin2.txt")).await.unwrap();
    let declared = Some("text/plain; charset=ISO-8859-2");
    let done = stage
        .process(&input(latin2, declared, "text/plain"), &ctx)
        .await
        .unwrap();
    let result = done.result.unwrap();
    assert!(result.ocr_pages.is_empty());
    assert!(result.pages.is_empty(), "plain text has no pages");
    let text = blobs
        .read_all(&result.text_location, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.\n"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
