//! The extractive summarizer's blocking work stops at the attempt's time
//! limit instead of running on in its thread after the runner gave the
//! attempt up.

use artifact_domain::{ArtifactId, Outcome};
mod common;

use artifact_runtime::blob::BlobStore;
use artifact_runtime::stage::{StageError, StageLogic};
use common::{parsed, record};
use std::time::Duration;
use summarizer::SummaryOptions;
use summarizer::stage::{Backend, SummaryStage};

#[tokio::test]
async fn the_extractive_work_stops_at_the_attempts_time_limit() {
    let root =
        std::env::temp_dir().join(format!("summarizer-deadline-{}", ArtifactId::new_random()));
    std::fs::create_dir_all(&root).unwrap();
    let blobs = BlobStore::from_url(&format!("file://{}", root.display())).unwrap();
    // 2 000 sentences sharing their words: a full similarity graph, whose
    // ranking takes far longer than a millisecond.
    let long: String = (0..2000)
        .map(|i| {
            format!(
                "Sentence {i} tells of solar panels and wind turbines number {}. ",
                i % 37
            )
        })
        .collect();
    let location = blobs.location("texts/long.txt");
    blobs.put(&location, long.as_bytes()).await.unwrap();
    let short = blobs.location("texts/short.txt");
    blobs
        .put(
            &short,
            b"Solar panels convert sunlight. Wind turbines convert wind.",
        )
        .await
        .unwrap();
    let stage = |attempt_timeout| SummaryStage {
        blobs: blobs.clone(),
        options: SummaryOptions::default(),
        max_text_bytes: 1 << 20,
        backend: Backend::Extractive,
        attempt_timeout,
    };

    // `process` returns once the blocking task has: the work itself stopped.
    let err = stage(Duration::from_millis(1))
        .process(&parsed(Some(location)), &record())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StageError::Retriable(
            "the extractive summary was stopped at the attempt's time limit of 1 ms \
             (PROCESSING_TIMEOUT_MS)"
                .into()
        )
    );

    let done = stage(Duration::from_secs(60))
        .process(&parsed(Some(short)), &record())
        .await
        .unwrap();
    assert_eq!(done.outcome, Outcome::Succeeded);
    std::fs::remove_dir_all(&root).unwrap();
}
