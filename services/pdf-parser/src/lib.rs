//! Text extraction for pdf-parser: PDFs (through lopdf, with our own
//! layout-aware reading of content streams, and OCR of pages with too
//! little text), images (OCR with Tesseract), HTML, DOCX, ODT, PPTX,
//! XLSX/ODS, EPUB, e-mail and plain text in any charset; [`extract`]
//! picks by [`Format`].
//!
//! - [`extract_pdf`]: pages, page count and Info metadata of a PDF, within
//!   [`Limits`]. Encrypted PDFs open when their user password is empty.
//!   Hostile input cannot panic the caller, overflow its stack, or make
//!   it build text, font tables or operations without bound; its work is
//!   bounded by [`Limits::max_content_bytes`] and stops at
//!   [`Limits::deadline`] (loading the file with lopdf excepted). See the
//!   `document`, `layout`, `content`, `fonts` and `work` modules.
//! - [`extract_text`]: text/plain and text/markdown bytes normalised to
//!   UTF-8; [`extract_plain`] the same within [`Limits::max_chars`].
//!
//! [`worker`] runs [`extract_pdf`] in worker processes under a memory
//! limit; the rest is pure logic: no I/O, no async. Every error is permanent
//! ([`ParseError::is_permanent`]): the same bytes fail the same way (a
//! timeout, given no more time).

mod content;
mod document;
mod error;
mod fonts;
#[cfg(test)]
mod hostile;
mod layout;
pub mod ocr;
mod office;
mod plain;
mod recall;
pub mod stage;
mod web;
mod wire;
mod work;
pub mod worker;
mod zipped;

pub use document::{PARSER_STACK, large_stack_thread};
pub use error::ParseError;
pub use ocr::OcrSettings;
pub use office::Office;
pub use plain::extract_text;
pub use recall::{order_parts, order_similarity, word_recall, words};
use std::time::Instant;

/// Bounds on the work done for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Larger inputs fail with [`ParseError::TooLarge`]. Default 100 MiB.
    pub max_bytes: usize,
    /// PDFs with more pages fail with [`ParseError::TooManyPages`].
    /// Default 1000.
    pub max_pages: usize,
    /// Text beyond this many characters (form feeds between pages included)
    /// is dropped and [`Extracted::truncated`] set; a page stops being read
    /// once it has more. Default 10 million.
    pub max_chars: usize,
    /// Most bytes of decompressed content one PDF may cost: every page's
    /// content, every form each time it is drawn, every font's CMap and
    /// program; more fails with [`ParseError::TooMuchContent`]. Default
    /// [`DEFAULT_MAX_CONTENT_BYTES`].
    pub max_content_bytes: usize,
    /// Most times an entry of a zip-based document (DOCX, ODT, PPTX, XLSX,
    /// EPUB) may inflate its compressed size; more fails with
    /// [`ParseError::ZipBomb`]. Default 100.
    pub max_zip_ratio: u64,
    /// When extraction gives up with [`ParseError::Timeout`]; `None` for
    /// no deadline. Checked while pages are read, so a parse whose caller
    /// stopped waiting stops too; loading the file (lopdf) is not
    /// interrupted. Default `None`.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 100 << 20,
            max_pages: 1000,
            max_chars: 10_000_000,
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
            max_zip_ratio: 100,
            deadline: None,
        }
    }
}

/// Default of [`Limits::max_content_bytes`]: 1 GiB. Text pages
/// decompress to some 5–50 kB, but a drawing or a letterhead form drawn on
/// each of 1000 pages can come to hundreds of megabytes, and forms are
/// charged each time they are drawn. Content is read at about 20 MB/s
/// (lopdf's parser dominates), so within the stage the deadline
/// (`PARSE_TIMEOUT_MS`) ends such work first; this bounds the work of a
/// caller that sets no deadline.
pub const DEFAULT_MAX_CONTENT_BYTES: usize = 1 << 30;

/// The PDF's document information dictionary, each entry as written (dates
/// stay in PDF form, e.g. `D:20240102030405Z`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `/Title`.
    pub title: Option<String>,
    /// `/Author`.
    pub author: Option<String>,
    /// `/Creator`: the application that made the original document.
    pub creator: Option<String>,
    /// `/Producer`: the application that wrote the PDF.
    pub producer: Option<String>,
    /// `/CreationDate`.
    pub creation_date: Option<String>,
    /// `/ModDate`.
    pub modification_date: Option<String>,
}

/// Text extracted from a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// One entry per page (slide, sheet, chapter), in order; lines
    /// separated by `\n`. Fewer entries than `page_count` when the text
    /// was truncated.
    pub pages: Vec<String>,
    /// The document's number of pages: PDFs and images; 0 for the other
    /// formats.
    pub page_count: usize,
    /// The document information dictionary.
    pub metadata: Metadata,
    /// Whether text was dropped to stay within [`Limits::max_chars`].
    pub truncated: bool,
    /// The pages recognised by OCR, numbered from 1.
    pub ocr_pages: Vec<usize>,
    /// The mean confidence (0–100) of the words OCR recognised.
    pub ocr_confidence: Option<f32>,
}

impl Extracted {
    /// `pages` of text, without page count, metadata or OCR.
    pub fn text(pages: Vec<String>) -> Self {
        Extracted {
            pages,
            page_count: 0,
            metadata: Metadata::default(),
            truncated: false,
            ocr_pages: Vec::new(),
            ocr_confidence: None,
        }
    }

    /// All pages' text, pages separated by a form feed (`\u{c}`), as
    /// `pdftotext` does.
    pub fn full_text(&self) -> String {
        self.pages.join("\u{c}")
    }

    /// Number of whitespace-separated words.
    pub fn word_count(&self) -> usize {
        self.pages
            .iter()
            .map(|p| p.split_whitespace().count())
            .sum()
    }

    /// Number of characters (Unicode scalar values) of [`Extracted::full_text`].
    pub fn char_count(&self) -> usize {
        let chars: usize = self.pages.iter().map(|p| p.chars().count()).sum();
        chars + self.pages.len().saturating_sub(1)
    }

    /// The first `n` characters of the text, with runs of whitespace (line
    /// breaks, form feeds) collapsed to single spaces.
    pub fn preview(&self, n: usize) -> String {
        let mut out = String::new();
        let mut count = 0;
        for word in self.pages.iter().flat_map(|p| p.split_whitespace()) {
            for c in (!out.is_empty())
                .then_some(' ')
                .into_iter()
                .chain(word.chars())
            {
                if count == n {
                    return out;
                }
                out.push(c);
                count += 1;
            }
        }
        out
    }
}

/// Extracts the text of a PDF, page by page, with its metadata.
///
/// Errors: [`ParseError::Empty`] for no bytes, [`ParseError::TooLarge`],
/// [`ParseError::TooManyPages`] and [`ParseError::TooMuchContent`] over the
/// limits, [`ParseError::Timeout`] past the deadline,
/// [`ParseError::Encrypted`] when a non-empty user password is needed,
/// [`ParseError::Malformed`] for anything lopdf cannot read (including a
/// panic inside it).
pub fn extract_pdf(bytes: &[u8], limits: &Limits) -> Result<Extracted, ParseError> {
    document::extract_pdf(bytes, limits)
}

/// The text of a text/plain or text/markdown file ([`extract_text`]) as
/// one page (and a page count of 0), cut to [`Limits::max_chars`]
/// characters with [`Extracted::truncated`] set when longer.
pub fn extract_plain(
    bytes: &[u8],
    declared_charset: Option<&str>,
    limits: &Limits,
) -> Result<Extracted, ParseError> {
    let mut text = extract_text(bytes, declared_charset)?;
    let truncated = plain::truncate_chars(&mut text, limits.max_chars);
    Ok(Extracted {
        truncated,
        ..Extracted::text(vec![text])
    })
}

/// The formats pdf-parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/pdf`.
    Pdf,
    /// `text/plain`, `text/markdown`.
    Text,
    /// `text/html`, `application/xhtml+xml`.
    Html,
    /// DOCX, ODT, PPTX, XLSX, ODS, EPUB.
    Office(Office),
    /// `message/rfc822`.
    Email,
    /// `image/png`, `image/jpeg`, `image/tiff`: OCR.
    Image,
}

impl Format {
    /// The format of a MIME type (its essence, lower case); `None` for
    /// types not read.
    pub fn from_mime(essence: &str) -> Option<Format> {
        Some(match essence {
            "application/pdf" => Format::Pdf,
            "text/plain" | "text/markdown" => Format::Text,
            "text/html" | "application/xhtml+xml" => Format::Html,
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => {
                Format::Office(Office::Docx)
            }
            "application/vnd.oasis.opendocument.text" => Format::Office(Office::Odt),
            "application/vnd.openxmlformats-officedocument.presentationml.presentation" => {
                Format::Office(Office::Pptx)
            }
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            | "application/vnd.oasis.opendocument.spreadsheet" => {
                Format::Office(Office::Spreadsheet)
            }
            "application/epub+zip" => Format::Office(Office::Epub),
            "message/rfc822" => Format::Email,
            "image/png" | "image/jpeg" | "image/tiff" => Format::Image,
            _ => return None,
        })
    }

    /// Whether the format's text comes in pages (PDF and image pages,
    /// slides, sheets, chapters), each worth a text of its own.
    pub fn has_pages(self) -> bool {
        matches!(
            self,
            Format::Pdf
                | Format::Image
                | Format::Office(Office::Pptx | Office::Spreadsheet | Office::Epub)
        )
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Format::Pdf => 0,
            Format::Text => 1,
            Format::Html => 2,
            Format::Office(Office::Docx) => 3,
            Format::Office(Office::Odt) => 4,
            Format::Office(Office::Pptx) => 5,
            Format::Office(Office::Spreadsheet) => 6,
            Format::Office(Office::Epub) => 7,
            Format::Email => 8,
            Format::Image => 9,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.code() == code)
    }

    /// Every format.
    pub const ALL: [Format; 10] = [
        Format::Pdf,
        Format::Text,
        Format::Html,
        Format::Office(Office::Docx),
        Format::Office(Office::Odt),
        Format::Office(Office::Pptx),
        Format::Office(Office::Spreadsheet),
        Format::Office(Office::Epub),
        Format::Email,
        Format::Image,
    ];
}

/// Extracts the text of a document of `format` within `limits`, OCRing
/// images and the PDF pages with too little text as `ocr` says (none when
/// its languages are empty). HTML and text bytes must be UTF-8 or carry a
/// byte-order mark. Formats other than PDF with more pages (slides,
/// sheets, chapters) than [`Limits::max_pages`] fail with
/// [`ParseError::TooManyPages`].
pub fn extract(
    format: Format,
    bytes: &[u8],
    limits: &Limits,
    ocr: &OcrSettings,
) -> Result<Extracted, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let x = match format {
        Format::Pdf => {
            let mut x = extract_pdf(bytes, limits)?;
            if !ocr.languages.is_empty() {
                ocr::pdf_pages(bytes, &mut x, limits, ocr)?;
            }
            return Ok(x);
        }
        Format::Text => extract_plain(bytes, None, limits)?,
        Format::Html => web::html(bytes, None, limits)?,
        Format::Office(kind) => office::extract(kind, bytes, limits)?,
        Format::Email => web::email(bytes, limits)?,
        Format::Image if ocr.languages.is_empty() => {
            return Err(ParseError::Ocr(
                "OCR is off (PARSE_OCR_LANGUAGES is empty)".into(),
            ));
        }
        Format::Image => ocr::image(bytes, limits, ocr)?,
    };
    if x.pages.len() > limits.max_pages.max(1) {
        return Err(ParseError::TooManyPages {
            pages: x.pages.len(),
            limit: limits.max_pages,
        });
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lopdf::content::{Content, Operation};
    use lopdf::{Dictionary, Document, Object, Stream, dictionary};

    /// A PDF made with lopdf: one page per entry of `pages`, each a list of
    /// (x, y, text) shown with Helvetica 12.
    fn pdf(pages: &[&[(i64, i64, &str)]], title: Option<&str>) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
            "Encoding" => "WinAnsiEncoding",
        });
        let resources_id =
            doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font_id } });
        let mut kids = vec![];
        for lines in pages {
            let mut operations = vec![];
            for &(x, y, text) in lines.iter() {
                operations.push(Operation::new("BT", vec![]));
                operations.push(Operation::new("Tf", vec!["F1".into(), 12.into()]));
                operations.push(Operation::new("Td", vec![x.into(), y.into()]));
                operations.push(Operation::new("Tj", vec![Object::string_literal(text)]));
                operations.push(Operation::new("ET", vec![]));
            }
            let content = Content { operations };
            let content_id =
                doc.add_object(Stream::new(Dictionary::new(), content.encode().unwrap()));
            let page_id = doc.add_object(dictionary! {
                "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
            });
            kids.push(page_id.into());
        }
        let count = kids.len() as i64;
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages", "Kids" => kids, "Count" => count, "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
        doc.trailer.set("Root", catalog_id);
        if let Some(title) = title {
            let info = doc.add_object(dictionary! {
                "Title" => Object::string_literal(title), "Producer" => Object::string_literal("unit test"),
            });
            doc.trailer.set("Info", info);
        }
        let mut out = Vec::new();
        doc.save_to(&mut out).unwrap();
        out
    }

    #[test]
    fn extracts_pages_lines_and_metadata() {
        let bytes = pdf(
            &[
                &[(72, 700, "Hello world"), (72, 680, "second line")],
                &[(72, 700, "Page two")],
            ],
            Some("A title"),
        );
        let x = extract_pdf(&bytes, &Limits::default()).unwrap();
        assert_eq!(x.page_count, 2);
        assert_eq!(x.pages, vec!["Hello world\nsecond line", "Page two"]);
        assert_eq!(x.full_text(), "Hello world\nsecond line\u{c}Page two");
        assert_eq!(x.word_count(), 6);
        assert_eq!(x.char_count(), x.full_text().chars().count());
        assert_eq!(x.preview(14), "Hello world se");
        assert_eq!(x.metadata.title.as_deref(), Some("A title"));
        assert_eq!(x.metadata.producer.as_deref(), Some("unit test"));
        assert!(!x.truncated);
    }

    #[test]
    fn an_info_entry_is_kept_to_its_first_thousand_characters() {
        let title = "T".repeat(2_000_000);
        let bytes = pdf(&[&[(72, 700, "Body")]], Some(&title));
        let x = extract_pdf(&bytes, &Limits::default()).unwrap();
        let kept = x.metadata.title.unwrap();
        assert_eq!(kept.chars().count(), document::MAX_INFO_CHARS);
        assert!(kept.chars().all(|c| c == 'T'));
    }

    #[test]
    fn separately_placed_words_on_one_line_get_a_space() {
        let bytes = pdf(&[&[(72, 700, "left"), (300, 700, "right")]], None);
        let x = extract_pdf(&bytes, &Limits::default()).unwrap();
        assert_eq!(x.pages, vec!["left right"]);
    }

    #[test]
    fn limits() {
        let bytes = pdf(
            &[
                &[(72, 700, "one")],
                &[(72, 700, "two")],
                &[(72, 700, "three")],
            ],
            None,
        );
        let small = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            extract_pdf(&bytes, &small),
            Err(ParseError::TooLarge { limit: 10, .. })
        ));
        let few = Limits {
            max_pages: 2,
            ..Limits::default()
        };
        assert_eq!(
            extract_pdf(&bytes, &few),
            Err(ParseError::TooManyPages { pages: 3, limit: 2 })
        );
        let short = Limits {
            max_chars: 5,
            ..Limits::default()
        };
        let x = extract_pdf(&bytes, &short).unwrap();
        assert_eq!(x.full_text(), "one\u{c}t");
        assert!(x.truncated);
        assert_eq!(x.page_count, 3);
    }

    #[test]
    fn plain_text_is_cut_to_max_chars_at_a_char_boundary() {
        let short = Limits {
            max_chars: 4,
            ..Limits::default()
        };
        let x = extract_plain("héllo wörld".as_bytes(), None, &short).unwrap();
        assert_eq!(x.pages, vec!["héll"]);
        assert!(x.truncated);
        assert_eq!(x.char_count(), 4);
        assert_eq!(x.page_count, 0);
        let exact = Limits {
            max_chars: 5,
            ..Limits::default()
        };
        let x = extract_plain("héllo".as_bytes(), None, &exact).unwrap();
        assert_eq!(x.pages, vec!["héllo"]);
        assert!(!x.truncated);
        assert_eq!(
            extract_plain(b"", None, &exact),
            Err(ParseError::Empty),
            "empty stays an error"
        );
    }

    #[test]
    fn empty_and_garbage() {
        assert_eq!(extract_pdf(b"", &Limits::default()), Err(ParseError::Empty));
        assert!(matches!(
            extract_pdf(b"%PDF-1.4\n garbage", &Limits::default()),
            Err(ParseError::Malformed(_))
        ));
    }
}
