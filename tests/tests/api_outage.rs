//! Outage at upload time: with the Schema Registry down, an upload is
//! stored but cannot be published, and the client gets 503 saying to retry
//! with the same Idempotency-Key; after the registry is back, that retry
//! completes the same artifact. Runs alone in its binary: it stops the
//! shared registry.

use artifact_domain::ArtifactState;
use artifact_pipeline_tests::pipeline::Pipeline;
use artifact_pipeline_tests::stack;
use std::path::Path;

const BIN_DIR_OF: &str = env!("CARGO_BIN_EXE_test-stage");

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_publish_is_completed_by_a_retry_with_the_same_key() -> anyhow::Result<()> {
    let p = Pipeline::start(Path::new(BIN_DIR_OF).parent().unwrap()).await?;
    let body = b"Uploads survive a registry outage. The retry completes them.".to_vec();

    stack("stop-registry");
    let during = p
        .upload_raw(body.clone(), "text/plain", "outage.txt", Some("outage-key"))
        .await;
    stack("start-registry");
    let during = during?;
    assert_eq!(during.status(), 503);
    assert_eq!(during.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = during.json().await?;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{problem}"
    );
    let stored: Vec<_> = std::fs::read_dir(p.blobs.join("uploads"))?.collect();
    assert_eq!(stored.len(), 1, "the bytes were kept for the retry");

    let id = Pipeline::accepted_id(
        p.upload_raw(body, "text/plain", "outage.txt", Some("outage-key"))
            .await?,
    )
    .await?;
    let v = p.wait_final(&id, 1).await?;
    assert_eq!(v.state, ArtifactState::Completed);
    assert_eq!(
        std::fs::read_dir(p.blobs.join("uploads"))?.count(),
        1,
        "no orphan, no second copy"
    );
    Ok(())
}
