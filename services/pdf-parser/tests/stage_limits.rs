//! pdf-parser's stage refuses a file over `PARSE_MAX_BYTES` with a reason
//! naming the setting: before reading it when location-logger verified its
//! size, and by cutting the read at the limit when its size is not known.

use artifact_domain::{ArtifactContext, ArtifactId, Generation, LocationVerified, Outcome};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{RecordContext, StageError, StageLogic};
use pdf_parser::Limits;
use pdf_parser::stage::ParseStage;
use pdf_parser::worker::{ParserPool, WorkerSettings};
use std::time::Duration;

fn input(location: String, size: Option<i64>) -> LocationVerified {
    LocationVerified {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: location,
            declared_content_type: None,
            filename: None,
            detected_content_type: Some("application/pdf".into()),
            size_bytes: size,
            sha256: None,
            text_location: None,
        },
        outcome: Outcome::Succeeded,
        result: None,
        processed_at: 1,
    }
}

#[tokio::test]
async fn a_file_over_max_bytes_is_refused_naming_the_setting() {
    let root = std::env::temp_dir().join(format!("pdf-limits-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    let stage = ParseStage {
        blobs: blobs.clone(),
        limits: Limits {
            max_bytes: 1000,
            ..Limits::default()
        },
        timeout: Duration::from_secs(60),
        parser: ParserPool::new(WorkerSettings {
            program: env!("CARGO_BIN_EXE_pdf-parser").into(),
            workers: 1,
            memory_limit: 512 << 20,
            ocr: pdf_parser::OcrSettings::default(),
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
    // Never written: refused from the verified size alone, without a read.
    let unread = blobs.location("never-written.pdf");
    assert_eq!(
        stage.process(&input(unread, Some(1001)), &ctx).await,
        Err(StageError::Permanent(
            "the file has 1001 bytes, over the limit of 1000 (PARSE_MAX_BYTES); raise the \
             limit or split the file"
                .into()
        ))
    );
    // A size not known: the read stops at the limit.
    let large = blobs.location("large.pdf");
    blobs.put(&large, &vec![b' '; 5000]).await.unwrap();
    assert_eq!(
        stage.process(&input(large, None), &ctx).await,
        Err(StageError::Permanent(
            "the file is larger than the limit of 1000 bytes (PARSE_MAX_BYTES); raise the \
             limit or split the file"
                .into()
        ))
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// A PDF of `pages` pages, page `n` reading `Page n` (lopdf, Helvetica).
fn pdf_of_pages(pages: usize) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
    });
    let resources = doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font } });
    let kids: Vec<Object> = (1..=pages)
        .map(|n| {
            let operations = vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 12.into()]),
                Operation::new("Td", vec![72.into(), 700.into()]),
                Operation::new("Tj", vec![Object::string_literal(format!("Page {n}"))]),
                Operation::new("ET", vec![]),
            ];
            let content = Content { operations }.encode().unwrap();
            let content = doc.add_object(Stream::new(dictionary! {}, content));
            doc.add_object(dictionary! {
                "Type" => "Page", "Parent" => pages_id, "Contents" => content,
            })
            .into()
        })
        .collect();
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages", "Kids" => kids, "Count" => pages as i64,
            "Resources" => resources,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut out = Vec::new();
    doc.save_to(&mut out).unwrap();
    out
}

/// Past `max_page_texts` pages only the whole text holds a page; erasing
/// the artifact deletes the page texts written.
#[tokio::test]
async fn page_texts_stop_at_their_cap_and_go_with_the_artifact() {
    let root = std::env::temp_dir().join(format!("pdf-pages-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    let stage = ParseStage {
        blobs: blobs.clone(),
        limits: Limits::default(),
        timeout: Duration::from_secs(60),
        parser: ParserPool::new(WorkerSettings {
            program: env!("CARGO_BIN_EXE_pdf-parser").into(),
            workers: 1,
            memory_limit: 512 << 20,
            ocr: pdf_parser::OcrSettings {
                languages: String::new(),
                ..pdf_parser::OcrSettings::default()
            },
        }),
        max_page_texts: 2,
    };
    let ctx = RecordContext {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        attempt: 1,
        traceparent: String::new(),
    };
    let location = blobs.location("four.pdf");
    blobs.put(&location, &pdf_of_pages(4)).await.unwrap();
    let done = stage.process(&input(location, None), &ctx).await.unwrap();
    let result = done.result.unwrap();
    assert_eq!(result.page_count, Some(4));
    let numbers: Vec<i32> = result.pages.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 2]);
    for page in &result.pages {
        let text = blobs.read_all(&page.text_location, 1000).await.unwrap();
        assert_eq!(text, format!("Page {}", page.number).as_bytes());
        assert!(!page.ocr);
    }
    let third = artifact_domain::page_text_location(&result.text_location, 3);
    assert!(!blobs.exists(&third).await.unwrap());

    stage.discard(&done.context).await;
    assert!(!blobs.exists(&result.text_location).await.unwrap());
    for page in &result.pages {
        assert!(!blobs.exists(&page.text_location).await.unwrap());
    }
    std::fs::remove_dir_all(&root).unwrap();
}
