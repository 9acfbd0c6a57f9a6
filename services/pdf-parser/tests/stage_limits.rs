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
