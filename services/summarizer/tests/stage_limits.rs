//! The summarizer's stage refuses a text over `SUMMARY_MAX_TEXT_BYTES`
//! with a reason naming the setting, and summarizes one within it.

use artifact_domain::{
    ArtifactContext, ArtifactId, Generation, Outcome, ParseResult, Parsed, SummaryResult,
};
use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{RecordContext, StageError, StageLogic};
use summarizer::SummaryOptions;
use summarizer::stage::{Backend, SummaryStage};

fn parsed(text_location: String) -> Parsed {
    Parsed {
        artifact_id: ArtifactId::new_random(),
        generation: Generation::FIRST,
        context: ArtifactContext {
            storage_location: "file:///unused".into(),
            declared_content_type: None,
            filename: None,
            detected_content_type: Some("text/plain".into()),
            size_bytes: None,
            sha256: None,
            text_location: Some(text_location.clone()),
        },
        outcome: Outcome::Succeeded,
        result: Some(ParseResult::text_only(text_location, 0, 0)),
        processed_at: 1,
    }
}

#[tokio::test]
async fn a_text_over_max_text_bytes_is_refused_naming_the_setting() {
    let root = std::env::temp_dir().join(format!("summary-limits-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    let stage = SummaryStage {
        blobs: blobs.clone(),
        options: SummaryOptions::default(),
        max_text_bytes: 100,
        backend: Backend::Extractive,
        attempt_timeout: std::time::Duration::from_secs(60),
    };
    let ctx = RecordContext {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        attempt: 1,
        traceparent: String::new(),
    };
    let long = blobs.location("long.txt");
    blobs
        .put(&long, "Words. ".repeat(20).as_bytes())
        .await
        .unwrap();
    assert_eq!(
        stage.process(&parsed(long), &ctx).await,
        Err(StageError::Permanent(
            "the extracted text is larger than the limit of 100 bytes (SUMMARY_MAX_TEXT_BYTES); \
             raise the limit or lower pdf-parser's PARSE_MAX_CHARS"
                .into()
        ))
    );
    let short = blobs.location("short.txt");
    blobs.put(&short, b"A short text. It fits.").await.unwrap();
    let done = stage.process(&parsed(short), &ctx).await.unwrap();
    assert_eq!(
        done.result,
        Some(SummaryResult {
            method: "extractive".into(),
            summary: "A short text. It fits.".into()
        })
    );
    std::fs::remove_dir_all(&root).unwrap();
}
