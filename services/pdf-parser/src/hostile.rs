//! Hostile PDFs, built in code with lopdf, against the bounds of
//! extraction: text budget, work budget, deadline, huge operations.

use crate::layout::DocumentText;
use crate::work::Work;
use crate::{Limits, ParseError, extract_pdf};
use lopdf::{Dictionary, Document, Object, ObjectId, Stream, dictionary};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A PDF under construction: pages with Helvetica as `/F1` and the forms
/// given to each.
struct Pdf {
    doc: Document,
    pages_id: ObjectId,
    font_id: ObjectId,
    kids: Vec<Object>,
}

impl Pdf {
    fn new() -> Self {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
            "Encoding" => "WinAnsiEncoding",
        });
        Pdf {
            doc,
            pages_id,
            font_id,
            kids: Vec::new(),
        }
    }

    /// A Flate-compressed stream.
    fn stream(dict: Dictionary, content: Vec<u8>) -> Stream {
        let mut stream = Stream::new(dict, content);
        stream.compress().unwrap();
        stream
    }

    /// A form XObject drawing `content` with `/F1`.
    fn form(&mut self, content: Vec<u8>) -> ObjectId {
        let resources = dictionary! { "Font" => dictionary! { "F1" => self.font_id } };
        let dict = dictionary! {
            "Type" => "XObject", "Subtype" => "Form", "Resources" => resources,
            "BBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        };
        self.doc.add_object(Self::stream(dict, content))
    }

    /// A page of `content`, with `/F1` (or `font` instead) and the forms
    /// `forms` by name.
    fn page_with(&mut self, content: Vec<u8>, font: Option<Object>, forms: &[(&str, ObjectId)]) {
        let mut xobjects = Dictionary::new();
        for &(name, id) in forms {
            xobjects.set(name, id);
        }
        let font = font.unwrap_or(Object::Reference(self.font_id));
        let resources =
            dictionary! { "Font" => dictionary! { "F1" => font }, "XObject" => xobjects };
        let content_id = self
            .doc
            .add_object(Self::stream(Dictionary::new(), content));
        let page_id = self.doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => self.pages_id, "Contents" => content_id,
            "Resources" => resources,
        });
        self.kids.push(page_id.into());
    }

    fn page(&mut self, content: impl Into<Vec<u8>>, forms: &[(&str, ObjectId)]) {
        self.page_with(content.into(), None, forms);
    }

    fn bytes(mut self) -> Vec<u8> {
        let count = self.kids.len() as i64;
        self.doc.objects.insert(
            self.pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages", "Kids" => self.kids, "Count" => count,
                "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
            }),
        );
        let catalog_id = self
            .doc
            .add_object(dictionary! { "Type" => "Catalog", "Pages" => self.pages_id });
        self.doc.trailer.set("Root", catalog_id);
        let mut out = Vec::new();
        self.doc.save_to(&mut out).unwrap();
        out
    }
}

/// `Do` of the form `/Fm`, `times` times.
fn draws(times: usize) -> Vec<u8> {
    b"/Fm Do\n".repeat(times)
}

/// Text of the first page, read with the budget `max_chars`.
fn first_page_text(bytes: &[u8], max_chars: usize) -> String {
    let doc = Document::load_mem(bytes).unwrap();
    let page = *doc.get_pages().values().next().unwrap();
    let mut reader = DocumentText::new(&doc, Work::new(&Limits::default()));
    reader.page_text(page, max_chars).unwrap()
}

#[test]
fn a_page_stops_growing_once_past_the_char_budget() {
    let mut pdf = Pdf::new();
    let string = "x".repeat(4000);
    let form = pdf.form(format!("BT /F1 1 Tf 0 0 Td ({string}) Tj ET").into_bytes());
    // Two million characters, were the page read to its end.
    pdf.page(draws(500), &[("Fm", form)]);
    let bytes = pdf.bytes();
    let text = first_page_text(&bytes, 1000);
    assert!(
        text.chars().count() <= 1001,
        "read {} characters",
        text.chars().count()
    );
    let limits = Limits {
        max_chars: 1000,
        ..Limits::default()
    };
    let x = extract_pdf(&bytes, &limits).unwrap();
    assert_eq!(x.full_text(), "x".repeat(1000));
    assert!(x.truncated);
}

#[test]
fn stopping_a_page_early_keeps_the_text_cutting_it_kept() {
    // Line breaks, a word hyphenated at a line end (joined later, so the
    // hyphen may not be counted as settled), runs of spaces.
    let mut pdf = Pdf::new();
    pdf.page(
        "BT /F1 12 Tf 72 700 Td (Hello   world) Tj 0 -14 Td (li-) Tj 0 -14 Td (brary end) Tj \
         300 0 Td (far) Tj ET",
        &[],
    );
    pdf.page("BT /F1 12 Tf 72 700 Td (second page) Tj ET", &[]);
    let bytes = pdf.bytes();
    let full = extract_pdf(&bytes, &Limits::default()).unwrap().full_text();
    assert_eq!(full, "Hello world\nlibrary end far\u{c}second page");
    let length = full.chars().count();
    for max_chars in 0..=length + 1 {
        let limits = Limits {
            max_chars,
            ..Limits::default()
        };
        let x = extract_pdf(&bytes, &limits).unwrap();
        let expected: String = full.chars().take(max_chars).collect();
        assert_eq!(x.full_text(), expected, "max_chars {max_chars}");
        assert_eq!(x.truncated, max_chars < length, "max_chars {max_chars}");
    }
}

#[test]
fn forms_are_charged_each_time_they_are_drawn() {
    let mut pdf = Pdf::new();
    // One MiB of content, compressed to about a kilobyte.
    let form = pdf.form(vec![b' '; 1 << 20]);
    pdf.page(draws(100), &[("Fm", form)]);
    let bytes = pdf.bytes();
    let limits = Limits {
        max_content_bytes: 50 << 20,
        ..Limits::default()
    };
    assert_eq!(
        extract_pdf(&bytes, &limits),
        Err(ParseError::TooMuchContent { limit: 50 << 20 })
    );
    assert!(extract_pdf(&bytes, &Limits::default()).is_ok());
}

#[test]
fn an_inline_font_is_built_once_per_document() {
    // A ToUnicode CMap of 100 kB (mostly a comment) in a font given inline
    // in the page's resources, selected 50 times.
    let mut cmap = b"%".repeat(100_000);
    cmap.extend_from_slice(b"\n1 beginbfchar <61> <0062> endbfchar\n");
    let mut pdf = Pdf::new();
    let to_unicode = pdf.doc.add_object(Pdf::stream(Dictionary::new(), cmap));
    let font = dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
        "Encoding" => "WinAnsiEncoding", "ToUnicode" => to_unicode,
    };
    let content = "BT /F1 12 Tf 72 700 Td (a) Tj ET\n".repeat(50);
    pdf.page_with(content.into_bytes(), Some(font.into()), &[]);
    let limits = Limits {
        max_content_bytes: 1 << 20,
        ..Limits::default()
    };
    let x = extract_pdf(&pdf.bytes(), &limits).unwrap();
    assert!(x.full_text().starts_with("bb"), "{}", x.full_text());
}

#[test]
fn extraction_stops_at_its_deadline() {
    let mut pdf = Pdf::new();
    // 200 000 operators, drawn 25 times on each of 4 pages: 20 million
    // operators, many seconds in a debug build.
    let form = pdf.form(b"0 0 m 1 1 l\n".repeat(100_000));
    for _ in 0..4 {
        pdf.page(draws(25), &[("Fm", form)]);
    }
    let bytes = pdf.bytes();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let limits = Limits {
            max_content_bytes: usize::MAX,
            deadline: Some(started + Duration::from_millis(50)),
            ..Limits::default()
        };
        let result = extract_pdf(&bytes, &limits);
        let _ = tx.send((result, started.elapsed()));
    });
    let (result, took) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("extraction ignored its deadline (still running after 60 s)");
    assert_eq!(result, Err(ParseError::Timeout));
    assert!(took < Duration::from_secs(10), "stopped after {took:?}");
}

#[test]
fn an_operation_of_millions_of_operands_is_not_built() {
    // Two million operands without an operator: 240 MB of lopdf objects
    // if read as one operation. The stream is read up to it.
    let mut content = b"BT /F1 12 Tf 72 700 Td (before) Tj ET\n".to_vec();
    content.extend_from_slice(&b"0 ".repeat(2_000_000));
    content.extend_from_slice(b"\nBT /F1 12 Tf 72 680 Td (after) Tj ET");
    let mut pdf = Pdf::new();
    pdf.page(content, &[]);
    assert_eq!(first_page_text(&pdf.bytes(), usize::MAX), "before");
}

/// A page reading "Label" with widget annotations whose appearances read
/// "Value" (placed at its rectangle), "Hidden" (flag 2) and a form that
/// draws itself; `stale` sets the form's NeedAppearances.
fn page_with_annotations(stale: bool) -> Vec<u8> {
    let mut pdf = Pdf::new();
    let value = pdf.form(b"BT /F1 10 Tf 2 2 Td (Value) Tj ET".to_vec());
    let hidden = pdf.form(b"BT /F1 10 Tf 2 2 Td (Hidden) Tj ET".to_vec());
    let looping = pdf.doc.new_object_id();
    let resources = dictionary! { "XObject" => dictionary! { "Me" => looping } };
    let dict = dictionary! {
        "Type" => "XObject", "Subtype" => "Form", "Resources" => resources,
        "BBox" => vec![0.into(), 0.into(), 10.into(), 10.into()],
    };
    pdf.doc.objects.insert(
        looping,
        Object::Stream(Pdf::stream(dict, b"/Me Do".to_vec())),
    );
    pdf.page(b"BT /F1 10 Tf 50 700 Td (Label) Tj ET".to_vec(), &[]);
    let widget = |rect: [i64; 4], flags: i64, ap: ObjectId| {
        dictionary! {
            "Type" => "Annot", "Subtype" => "Widget", "F" => flags,
            "Rect" => rect.iter().map(|&v| v.into()).collect::<Vec<Object>>(),
            "AP" => dictionary! { "N" => ap },
        }
    };
    let annots: Vec<Object> = [
        widget([100, 500, 200, 520], 4, value),
        widget([100, 400, 200, 420], 2, hidden),
        widget([100, 300, 200, 320], 4, looping),
    ]
    .into_iter()
    .map(|a| pdf.doc.add_object(a).into())
    .collect();
    let page_id = pdf.kids[0].as_reference().unwrap();
    pdf.doc
        .get_dictionary_mut(page_id)
        .unwrap()
        .set("Annots", annots);
    let form = pdf
        .doc
        .add_object(dictionary! { "Fields" => vec![], "NeedAppearances" => stale });
    let mut out = Vec::new();
    let catalog = dictionary! { "Type" => "Catalog", "Pages" => pdf.pages_id, "AcroForm" => form };
    let count = pdf.kids.len() as i64;
    pdf.doc.objects.insert(
        pdf.pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages", "Kids" => pdf.kids.clone(), "Count" => count,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = pdf.doc.add_object(catalog);
    pdf.doc.trailer.set("Root", catalog_id);
    pdf.doc.save_to(&mut out).unwrap();
    out
}

#[test]
fn annotation_appearances_are_read_after_the_page_unless_hidden_or_stale() {
    let text = first_page_text(&page_with_annotations(false), 1000);
    assert_eq!(text, "Label\nValue");
    let text = first_page_text(&page_with_annotations(true), 1000);
    assert_eq!(text, "Label");
}
